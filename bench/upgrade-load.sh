#!/usr/bin/env bash
# bench/upgrade-load.sh: wrk at full load through three graceful upgrades and a final
# SIGTERM (with server.shutdown_delay_seconds), counting what a client that never retries
# sees. See "Upgrade and stop under load" in bench/README.md.
#
# For each connection count in CONNS and each mode in MODES:
#   1. start LMGate (release binary) in front of an nginx mock that answers every POST with
#      the bench's 760-byte chat completion and echoes the upstream path in `X-Req`;
#   2. run wrk for DURATION seconds (mode `keepalive`: all connections keep-alive; mode
#      `mixed`: half of them keep-alive, half `Connection: close`, i.e. one connection per
#      request);
#   3. upgrade at each second of UPGRADE_AT (new process with --upgrade, then SIGQUIT to the
#      old one, as scripts/upgrade.sh does; an old process may still be draining when the
#      next upgrade starts), and send SIGTERM at TERM_AT, DELAY seconds of shutdown delay
#      covering the end of the load (a balancer stops sending during the delay);
#   4. wait for every gateway process to exit, then count wrk's socket errors and non-2xx
#      answers, the processes' exit statuses, /healthz during the delay (must be 503), and
#      match every answered request with its usage record (EXACT=1: each request has its
#      own path; EXACT=0: counts only, less work for wrk).
#
# Pass: 0 socket errors, 0 non-2xx, every exit status 0, /healthz 503 during the delay, and
# exactly one record (status 200, usage exact) per answered request. Requests that were in
# flight when wrk stopped (at most one per connection) have a record too and are listed.
#
# Loopback only; every wait is bounded; a trap stops every process this script started.
# Parameters (environment):
#   CONNS       "32 256"            wrk connections
#   MODES       "keepalive mixed"
#   DURATION    14                  seconds of load
#   UPGRADE_AT  "1 3 5"             seconds into the load at which each upgrade starts (the
#                                   last old process accepts for 5 s more: before TERM_AT)
#   TERM_AT     11                  second at which SIGTERM goes to the current process
#   DELAY       5                   server.shutdown_delay_seconds (0: no delay, the listener
#                                   closes under the load: expect connect errors)
#   THREADS     2                   server.threads
#   EXACT       1                   per-request matching of answers and records
#   BENCH_LMGATE_BIN  target/release/lmgate
#   P_GATEWAY   18190, P_MOCK 18191 (loopback ports)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=${CONNS:-"32 256"}
MODES=${MODES:-"keepalive mixed"}
DURATION=${DURATION:-14}
UPGRADE_AT=${UPGRADE_AT:-"1 3 5"}
TERM_AT=${TERM_AT:-11}
DELAY=${DELAY:-5}
THREADS=${THREADS:-2}
EXACT=${EXACT:-1}
LMGATE=${BENCH_LMGATE_BIN:-$ROOT/target/release/lmgate}
P_GATEWAY=${P_GATEWAY:-18190}
P_MOCK=${P_MOCK:-18191}
DRAIN_TIMEOUT=20
export BENCH_KEY=sk-proj-BenchKey0000000000000000000000000000000000000001

WORK=$(mktemp -d /tmp/lmgate-upgrade-load.XXXXXX)
PIDS=()
log() { printf '[upgrade-load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  sleep 0.2
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in wrk nginx python3 curl; do
  command -v "$tool" >/dev/null || {
    log "$tool is missing (apt-get install -y wrk nginx python3 curl)"
    exit 2
  }
done
[ -x "$LMGATE" ] || {
  log "no binary at $LMGATE: build it (cargo build --release) or set BENCH_LMGATE_BIN"
  exit 2
}

# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------

# shellcheck source=bench/bodies.sh
. "$ROOT"/bench/bodies.sh
write_bodies "$WORK"/www
python3 "$ROOT"/bench/allowlist.py "$WORK"/allowlist.csv "$BENCH_KEY"
mkdir -p "$WORK"/nginx/logs
# `return` answers any method (a static file would be 405 to a POST); the body has no `'`.
cat >"$WORK"/nginx/nginx.conf <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
user root;
worker_rlimit_nofile 20000;
error_log logs/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $WORK/tmp-body;
  proxy_temp_path $WORK/tmp-proxy;
  fastcgi_temp_path $WORK/tmp-fcgi;
  uwsgi_temp_path $WORK/tmp-uwsgi;
  scgi_temp_path $WORK/tmp-scgi;
  server {
    listen 127.0.0.1:$P_MOCK;
    location /v1/chat/completions/ {
      default_type application/json;
      add_header X-Req \$uri always;
      return 200 '$(cat "$WORK"/www/chat.json)';
    }
  }
}
EOF

write_config() { # -> $WORK/lmgate.yaml
  local delay_line=
  [ "$DELAY" -gt 0 ] && delay_line="  shutdown_delay_seconds: $DELAY"
  cat >"$WORK"/lmgate.yaml <<EOF
server:
  host: 127.0.0.1
  port: $P_GATEWAY
  threads: $THREADS
  drain_timeout_seconds: $DRAIN_TIMEOUT
$delay_line
  upgrade_sock: $WORK/upgrade.sock
  pid_file: $WORK/lmgate.pid
auth:
  allowlist_path: $WORK/allowlist.csv
stats:
  output_path: $WORK/stats/stats.jsonl
logging:
  level: info
providers:
  openai:
    upstream: http://127.0.0.1:$P_MOCK
  anthropic: { enabled: false }
  google: { enabled: false }
  gemini: { enabled: false }
  bedrock: { enabled: false }
EOF
}

# ------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------

now() { date +%s.%N; }
sleep_until() { # T0 SECONDS: sleep until T0 + SECONDS
  local left
  left=$(awk -v t0="$1" -v s="$2" -v n="$(now)" 'BEGIN { d = t0 + s - n; print (d > 0 ? d : 0) }')
  sleep "$left"
}
wait_for() { # SECONDS COMMAND...: poll every 20 ms, bounded
  local steps=$(($1 * 50))
  shift
  while [ "$steps" -gt 0 ]; do
    "$@" && return 0
    sleep 0.02
    steps=$((steps - 1))
  done
  return 1
}
healthz() { curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$P_GATEWAY/healthz" || true; }
healthy() { [ "$(healthz)" = 200 ]; }
alive() { kill -0 "$1" 2>/dev/null; }

GATEWAYS=() # every gateway process of the current run, for the exit statuses
start_gateway() {
  rm -rf "$WORK"/stats "$WORK"/upgrade.sock
  mkdir -p "$WORK"/stats
  : >"$WORK"/lmgate.log
  env -u RUST_LOG "$LMGATE" --config "$WORK"/lmgate.yaml >>"$WORK"/lmgate.log 2>&1 &
  CURRENT=$!
  PIDS+=("$CURRENT")
  GATEWAYS=("$CURRENT")
  wait_for 10 healthy || {
    tail -20 "$WORK"/lmgate.log >&2
    return 1
  }
}

sock_ready() { [ -S "$WORK"/upgrade.sock ] || ! alive "$1"; }
sock_taken() { [ ! -e "$WORK"/upgrade.sock ]; }
upgrade() { # the dance of scripts/upgrade.sh, without waiting for the old process to exit
  local old=$CURRENT new
  env -u RUST_LOG "$LMGATE" --config "$WORK"/lmgate.yaml --upgrade >>"$WORK"/lmgate.log 2>&1 &
  new=$!
  PIDS+=("$new")
  GATEWAYS+=("$new")
  wait_for 10 sock_ready "$new" && alive "$new" || {
    log "new process did not listen on the upgrade socket"
    return 1
  }
  kill -QUIT "$old"
  wait_for 10 sock_taken || {
    log "new process did not take the sockets"
    return 1
  }
  CURRENT=$new
}

# ------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------

SUMMARY=$WORK/summary.tsv
: >"$SUMMARY"
FAILED=0

run() { # CONNS MODE
  local conns=$1 mode=$2 t0 wrk_pids=() tags=() health_during_delay=- rc
  log "run: $conns connections, $mode, ${DURATION}s, upgrades at ${UPGRADE_AT}s, SIGTERM at ${TERM_AT}s, delay ${DELAY}s"
  write_config
  rm -f "$WORK"/answered-*
  start_gateway
  local url="http://127.0.0.1:$P_GATEWAY/openai/v1/chat/completions"
  if [ "$mode" = mixed ]; then
    tags=(k c)
  else
    tags=(k)
  fi
  local share=$((conns / ${#tags[@]})) tag
  t0=$(now)
  for tag in "${tags[@]}"; do
    local extra=()
    [ "$tag" = c ] && extra=(-H "Connection: close")
    wrk -t1 -c"$share" -d"${DURATION}s" --timeout 10s "${extra[@]}" -s "$ROOT"/bench/upgrade-load.lua "$url" \
      -- "$tag" "$WORK/answered-$tag" "$EXACT" >"$WORK/wrk-$tag.out" 2>&1 &
    wrk_pids+=($!)
    PIDS+=($!)
  done
  local at
  for at in $UPGRADE_AT; do
    sleep_until "$t0" "$at"
    upgrade
  done
  sleep_until "$t0" "$TERM_AT"
  kill -TERM "$CURRENT"
  if [ "$DELAY" -gt 0 ]; then
    sleep 0.3
    health_during_delay=$(healthz)
  fi
  for pid in "${wrk_pids[@]}"; do
    wait "$pid" || log "wrk exited with status $?"
  done
  # Every gateway process must exit, and exit 0.
  local statuses=() pid
  for pid in "${GATEWAYS[@]}"; do
    if wait_for $((DELAY + DRAIN_TIMEOUT + 15)) bash -c "! kill -0 $pid 2>/dev/null"; then
      rc=0
      wait "$pid" || rc=$?
      statuses+=("$rc")
    else
      statuses+=(hung)
      kill -9 "$pid" 2>/dev/null || true
    fi
  done

  local answered=0 errors=0 non2xx=0 out err_line
  for tag in "${tags[@]}"; do
    out=$WORK/wrk-$tag.out
    answered=$((answered + $(awk '/requests in/ {print $1}' "$out")))
    non2xx=$((non2xx + $(awk '/Non-2xx/ { s += $NF } END { print s + 0 }' "$out")))
    err_line=$(grep 'Socket errors' "$out" || true)
    if [ -n "$err_line" ]; then
      log "wrk ($tag): $err_line"
      errors=$((errors + $(awk '/Socket errors/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i } END { print s + 0 }' "$out")))
    fi
  done
  log "gateway exit statuses: ${statuses[*]}; /healthz during the delay: $health_during_delay"
  grep -E "draining|idle keep-alive|cut|shutdown complete|stats flushed|dropped" "$WORK"/lmgate.log | sed 's/^/    /' >&2 || true

  local verdict
  verdict=$(python3 - "$WORK" "$EXACT" "$conns" "$answered" "${tags[@]}" <<'PY'
import glob, json, os, sys
work, exact, conns, answered = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
tags = sys.argv[5:]
records = []
for f in glob.glob(os.path.join(work, "stats", "stats.jsonl*")):
    if f.endswith(".lock"):
        continue
    with open(f, "rb") as fh:
        for line in fh:
            if line.strip():
                records.append(json.loads(line))
def ok(r):
    return r.get("status") == 200 and r.get("error_type") is None and r.get("usage_status") == "exact"
out = {"records": len(records)}
if exact:
    ids = []
    for t in tags:
        p = os.path.join(work, "answered-" + t)
        if os.path.exists(p):
            ids += [l.strip() for l in open(p) if l.strip()]
    by_id = {}
    for r in records:
        by_id.setdefault(r.get("endpoint", "").rsplit("/", 1)[-1], []).append(r)
    answered_ids = set(ids)
    out["ids"] = len(ids)
    out["repeated_ids"] = len(ids) - len(answered_ids)
    out["missing"] = sum(1 for i in answered_ids if i not in by_id)
    out["duplicates"] = sum(len(v) - 1 for v in by_id.values() if len(v) > 1)
    out["wrong"] = sum(1 for i in answered_ids if i in by_id and not ok(by_id[i][0]))
    extra = [v[0] for i, v in by_id.items() if i not in answered_ids]
    out["unanswered_records"] = len(extra)
    kinds = {}
    for r in extra:
        k = "%s/%s" % (r.get("status"), r.get("error_type"))
        kinds[k] = kinds.get(k, 0) + 1
    out["unanswered_kinds"] = kinds
    good = (out["ids"] == answered and out["missing"] == 0 and out["duplicates"] == 0
            and out["wrong"] == 0 and out["repeated_ids"] == 0 and len(extra) <= conns)
else:
    n_ok = sum(1 for r in records if ok(r))
    out["ok_records"] = n_ok
    good = answered <= n_ok <= answered + conns and len(records) - n_ok <= conns
out["pass"] = good
print(json.dumps(out, sort_keys=True))
PY
)
  log "answered $answered, socket errors $errors, non-2xx $non2xx, records: $verdict"
  local pass=1
  [ "$errors" = 0 ] && [ "$non2xx" = 0 ] || pass=0
  [[ "$verdict" == *'"pass": true'* ]] || pass=0
  for rc in "${statuses[@]}"; do [ "$rc" = 0 ] || pass=0; done
  if [ "$DELAY" -gt 0 ] && [ "$health_during_delay" != 503 ]; then pass=0; fi
  [ "$pass" = 1 ] || FAILED=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$conns" "$mode" "$answered" \
    "$(awk -v n="$answered" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')" "$errors" "$non2xx" \
    "$([ "$pass" = 1 ] && echo pass || echo FAIL)" "$verdict" >>"$SUMMARY"
}

nginx -p "$WORK"/nginx -c "$WORK"/nginx/nginx.conf -g 'daemon off;' &
PIDS+=($!)
mock_up() { curl -s -o /dev/null -X POST "http://127.0.0.1:$P_MOCK/v1/chat/completions/probe"; }
wait_for 10 mock_up || {
  log "the nginx mock did not start"
  exit 1
}

for conns in $CONNS; do
  for mode in $MODES; do
    run "$conns" "$mode"
  done
done

printf '\n| connections | mode | answered | req/s | socket errors | non-2xx | result | records |\n'
printf '|---|---|---|---|---|---|---|---|\n'
while IFS=$'\t' read -r c m a r e n p v; do
  printf '| %s | %s | %s | %s | %s | %s | %s | `%s` |\n' "$c" "$m" "$a" "$r" "$e" "$n" "$p" "$v"
done <"$SUMMARY"
exit "$FAILED"
