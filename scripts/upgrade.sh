#!/usr/bin/env bash
# scripts/upgrade.sh: zero-downtime upgrade of a running lmgate (Pingora's graceful upgrade).
#
#   scripts/upgrade.sh [--config FILE] [--pid PID | --pid-file FILE] [--bin PATH]
#                      [--daemon] [--log FILE] [--upgrade-sock PATH] [--timeout SECS]
#
# The dance:
#   1. `lmgate check` validates the config and allow-list; a bad one stops here, the running
#      gateway untouched.
#   2. The new binary starts with `--upgrade` and the same config. It first rebuilds the
#      spend of limited keys from this month's usage records (about 5 s per GB of them;
#      this script waits up to 120 s for it), then waits (about 6 s at most) on
#      server.upgrade_sock for the old process's sockets.
#   3. Once that socket exists, SIGQUIT goes to the old process, which hands over its
#      listening sockets. Both accept for 5 s (hard-coded in Pingora), then the old one stops
#      accepting, drains its in-flight requests (server.drain_timeout_seconds) and its
#      keep-alive connections (each next request answered with `Connection: close`; idle
#      ones closed after a 2 s grace), flushes its usage records and exits. Connections
#      queued in the listen backlog are not lost: the socket itself now belongs to the new
#      process too.
#   4. This script waits for the old process to exit and prints `new pid N`.
#
# Which process: --pid, else the pid in --pid-file, else in server.pid_file
# (default /tmp/lmgate.pid). Pingora writes the pid file only when it runs as a daemon (-d);
# a gateway in the foreground needs --pid. --daemon starts the new process with -d as well
# (what the systemd unit in contrib/ does); its pid is then read from the pid file.
#
# Paths come from, in order: the option, the LMGATE_SERVER__* environment variable, the
# `server:` block of the config (block-style YAML, one key per line), the built-in default:
#   server.upgrade_sock  /tmp/lmgate_upgrade.sock
#   server.pid_file      /tmp/lmgate.pid
#   server.drain_timeout_seconds  30
#
# Logs of the new process: --log FILE (`--log -`: this script's own stdout and stderr, e.g.
# the journal under systemd), else the old process's stdout when it can be reopened
# through /proc (a file or a pipe; not a socket), else this script's stdout and stderr.
#
# Exit status 0 when the old process has exited and the new one runs; 1 with a message
# on stderr otherwise.
set -euo pipefail

config=conf/lmgate.yaml
pid=
pid_file=
bin=
daemon=0
log=
sock=
timeout=

die() {
  echo "upgrade.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=${2:?}; shift 2 ;;
    --pid) pid=${2:?}; shift 2 ;;
    --pid-file) pid_file=${2:?}; shift 2 ;;
    --bin) bin=${2:?}; shift 2 ;;
    --daemon|-d) daemon=1; shift ;;
    --log) log=${2:?}; shift 2 ;;
    --upgrade-sock) sock=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "upgrade.sh: unknown argument $1" >&2; usage ;;
  esac
done

# The value of `server.<key>` in the config: block-style YAML only (`server:` then indented
# `key: value` lines). Flow style or anchors are not read: pass the option instead.
server_key() {
  [ -r "$config" ] || return 0
  awk -v key="$1" '
    /^[^[:space:]#]/ { in_server = ($0 ~ /^server:[[:space:]]*(#.*)?$/) ; next }
    in_server && $1 == key":" {
      v = $2; gsub(/^["'\'']|["'\'']$/, "", v); print v; exit
    }' "$config"
}

setting() { # env var, config key, default
  local v=${!1:-}
  [ -n "$v" ] || v=$(server_key "$2")
  [ -n "$v" ] || v=$3
  printf '%s\n' "$v"
}

alive() { # running and not a zombie
  local state
  [ -r "/proc/$1/stat" ] || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Wait up to $1 seconds (in 50 ms steps) for the command in the remaining arguments.
wait_for() {
  local secs=$1
  shift
  local steps=$((secs * 20))
  while [ "$steps" -gt 0 ]; do
    if "$@"; then return 0; fi
    sleep 0.05
    steps=$((steps - 1))
  done
  return 1
}

[ -n "$bin" ] || bin=$(command -v lmgate || true)
[ -n "$bin" ] || { [ -x target/release/lmgate ] && bin=target/release/lmgate; } || true
[ -n "$bin" ] && [ -x "$bin" ] || die "no lmgate binary: pass --bin PATH"
[ -r "$config" ] || die "cannot read config $config"

sock=${sock:-$(setting LMGATE_SERVER__UPGRADE_SOCK upgrade_sock /tmp/lmgate_upgrade.sock)}
pid_file=${pid_file:-$(setting LMGATE_SERVER__PID_FILE pid_file /tmp/lmgate.pid)}
drain=$(setting LMGATE_SERVER__DRAIN_TIMEOUT_SECONDS drain_timeout_seconds 30)
case "$drain" in *[!0-9]*|'') die "server.drain_timeout_seconds is not a number: $drain" ;; esac
# Pingora's 5 s hand-over window + the drain + time for the final flush.
timeout=${timeout:-$((5 + drain + 10))}

# 1. Which process, and is it running?
if [ -z "$pid" ]; then
  [ -r "$pid_file" ] || die "no --pid and no pid file $pid_file (Pingora writes it only with -d)"
  pid=$(tr -dc '0-9' <"$pid_file")
  [ -n "$pid" ] || die "pid file $pid_file holds no pid"
fi
case "$pid" in *[!0-9]*|'') die "not a pid: $pid" ;; esac
alive "$pid" || die "process $pid is not running"
if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q lmgate; then
  echo "upgrade.sh: warning: process $pid does not look like lmgate: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" >&2
fi

# 2. Validate before touching anything.
if ! check_out=$("$bin" --config "$config" check 2>&1); then
  printf '%s\n' "$check_out" >&2
  die "config $config does not validate; process $pid left running"
fi

# A socket left over from an earlier attempt must not pass for the new process's: the new
# process unlinks it and binds its own, which has another inode and change time.
stale_sock=
if [ -e "$sock" ]; then
  stale_sock=$(stat -c '%i %z' "$sock" 2>/dev/null || true)
  echo "upgrade.sh: warning: $sock exists (another upgrade under way, or left over); the new process replaces it" >&2
fi

# 3. Start the new process, detached from this shell's session so it outlives it.
if [ -z "$log" ] && [ -w "/proc/$pid/fd/1" ] && { : >>"/proc/$pid/fd/1"; } 2>/dev/null; then
  log=/proc/$pid/fd/1
fi
log=${log:--}
args=(--config "$config" --upgrade)
[ "$daemon" = 1 ] && args+=(--daemon)
old_pid_file_pid=
[ -r "$pid_file" ] && old_pid_file_pid=$(tr -dc '0-9' <"$pid_file" || true)
detach=()
if command -v setsid >/dev/null 2>&1; then detach=(setsid); else detach=(nohup); fi
start=$(date +%s.%N)
if [ "$log" = - ]; then
  log="this script's output"
  "${detach[@]}" "$bin" "${args[@]}" </dev/null &
else
  "${detach[@]}" "$bin" "${args[@]}" </dev/null >>"$log" 2>&1 &
fi
launcher=$!

new_sock() { [ -S "$sock" ] && [ "$(stat -c '%i %z' "$sock" 2>/dev/null)" != "$stale_sock" ]; }
sock_ready() { new_sock || ! alive "$launcher"; }
# The new process opens the socket after its start-up work (the spend rebuild reads this
# month's records: ~5 s per GB), so this wait is long; the old process serves meanwhile.
wait_for 120 sock_ready || true
if ! new_sock; then
  if alive "$launcher"; then
    kill "$launcher" 2>/dev/null || true
    die "new process $launcher did not listen on $sock within 120 s (log: $log); process $pid left running"
  fi
  st=0
  wait "$launcher" || st=$?
  die "new process exited with status $st before taking over (log: $log); process $pid left running"
fi

# 4. Hand over. From here on the old process stops after 5 s whatever happens.
kill -QUIT "$pid" || die "cannot signal process $pid"
sock_taken() { [ ! -e "$sock" ] || ! alive "$launcher"; }
if ! wait_for 15 sock_taken || [ -e "$sock" ]; then
  die "new process did not take the sockets from $pid (log: $log); the old process stops accepting in 5 s: check now"
fi

# The new process's pid: the launcher itself, or with --daemon the daemon it forked.
new_pid=$launcher
if [ "$daemon" = 1 ]; then
  st=0
  wait "$launcher" || st=$?
  [ "$st" = 0 ] || die "daemon launcher exited with status $st (log: $log)"
  new_pid_written() {
    local p
    p=$(tr -dc '0-9' <"$pid_file" 2>/dev/null || true)
    [ -n "$p" ] && [ "$p" != "$old_pid_file_pid" ] && [ "$p" != "$pid" ] && alive "$p"
  }
  wait_for 10 new_pid_written || die "no new pid in $pid_file (log: $log)"
  new_pid=$(tr -dc '0-9' <"$pid_file")
fi
alive "$new_pid" || die "new process $new_pid exited after taking the sockets (log: $log)"

old_gone() { ! alive "$pid"; }
wait_for "$timeout" old_gone || die "old process $pid still running after ${timeout}s (new pid $new_pid)"
alive "$new_pid" || die "new process $new_pid exited (log: $log)"
"$bin" --config "$config" healthcheck >/dev/null || die "new process $new_pid runs but /healthz does not answer 200 (log: $log)"

took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "upgraded: old pid $pid exited ${took}s after the new process started"
echo "new pid $new_pid"
