#!/usr/bin/env bash
# bench/run.sh: LMGate side by side with the client calling the mock directly, a bare
# Pingora proxy and nginx proxy_pass, on loopback. See bench/README.md.
#
# Everything listens on 127.0.0.1 only; every run is bounded in time; every process this
# script starts is stopped on exit (trap). Results go to $OUT (default
# bench/results/<timestamp>.md, which must be git-ignored; never commit results).
#
# Parameters (environment):
#   PHASES         "load sse memory soak" (add "profile" for perf profiles; "knobs" for
#                  the thread / work-stealing comparison)
#   ROUNDS         3        interleaved rounds; the table shows the median
#   DURATION       10       seconds per wrk run (JSON)
#   LEVELS         "1 16 64" connections
#   SSE_LEVELS     "1 50 200" concurrent SSE streams (1: the unloaded TTFB overhead)
#   SSE_DURATION   10       seconds per SSE run
#   HOLD_LEVELS    "1000 10000" concurrent slow streams for the RSS test (capped by the
#                  open-file limit: LMGate needs two descriptors per stream)
#   SOAK_SECONDS   600      soak length (RSS before/after)
#   LOAD_CPU       0        CPU for the load generators and the mock upstream
#   SUT_CPU        1        CPU for the proxy under test
#   BENCH_THREADS 1        server.threads for LMGate
#   SKIP_BUILD     0        1: reuse existing binaries
#   BENCH_LMGATE_BIN              an lmgate binary to measure instead of building this tree
#   OUT            results file (markdown)
#   PERF_DIR       /tmp/lmgate-bench/perf   where the profile phase keeps perf.data
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PHASES=${PHASES:-"load sse memory soak"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
LEVELS=${LEVELS:-"1 16 64"}
SSE_LEVELS=${SSE_LEVELS:-"1 50 200"}
SSE_DURATION=${SSE_DURATION:-10}
HOLD_LEVELS=${HOLD_LEVELS:-"1000 10000"}
SOAK_SECONDS=${SOAK_SECONDS:-600}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
BENCH_THREADS=${BENCH_THREADS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$BENCH/results/$STAMP.md}
PERF_DIR=${PERF_DIR:-/tmp/lmgate-bench/perf} # perf.data files are large: kept outside the repo

# Ports (loopback only).
P_MOCK=19001      # nginx mock upstream: JSON + 24-event SSE
P_SLOW=19002      # slow SSE mock (bench/mock)
P_LMGATE=18080
P_BARE=18083
P_NGINX=18084
P_METRICS=18089   # LMGate's /metrics listener
P_BARE_SLOW=18085 # bare Pingora in front of the slow mock (memory reference)

TOOL_TARGET=/tmp/lmgate-bench/target-tool
BARE_TARGET=/tmp/bare-target
BARE_SRC=${BARE_SRC:-$BENCH/bare-pingora}
LMGATE=${BENCH_LMGATE_BIN:-$ROOT/target/release/lmgate}
BARE=$BARE_TARGET/release/bare-pingora
TOOL=$TOOL_TARGET/release/lmgate-bench-tool

WORK=$(mktemp -d /tmp/lmgate-bench.XXXXXX)
PIDS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
  local pid i
  # INT first: Pingora's fast shutdown (TERM would start its graceful one). Background jobs
  # of a script ignore SIGINT unless they install a handler, so TERM follows for the rest.
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  sleep 0.2
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local alive
  for i in $(seq 1 20); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ -n "${PROBES_ADDED:-}" ]; then perf probe -q -d 'probe_libc:*' 2>/dev/null || true; fi
  if [ -s "${TSV:-}" ] && [ -n "${OUT:-}" ]; then cp "$TSV" "${OUT%.md}.tsv" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------------------
# Tools and builds
# --------------------------------------------------------------------------------------

install_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || missing+=(nginx)
  command -v python3 >/dev/null || missing+=(python3)
  command -v curl >/dev/null || missing+=(curl)
  command -v taskset >/dev/null || missing+=(util-linux)
  if [[ " $PHASES " == *" profile "* ]] && ! command -v perf >/dev/null; then
    missing+=(linux-perf)
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_cmake() {
  if [ -n "${CMAKE:-}" ] && [ -x "$CMAKE" ]; then return; fi
  command -v cmake >/dev/null && return
  local bin
  bin=$(ls "$ROOT"/.tools/cmake/cmake/data/bin/cmake 2>/dev/null || true)
  if [ -n "$bin" ]; then export CMAKE=$bin; fi
}

build() {
  if [ "$SKIP_BUILD" = 1 ] && [ -x "$LMGATE" ] && [ -x "$BARE" ] && [ -x "$TOOL" ]; then
    return
  fi
  if [ -z "${BENCH_LMGATE_BIN:-}" ]; then
    log "building lmgate (release)"
    "$ROOT"/scripts/dev build --release --bin lmgate
  fi
  ensure_cmake
  log "building the bare Pingora baseline into $BARE_TARGET"
  cargo build --release --quiet --locked --manifest-path "$BARE_SRC"/Cargo.toml --target-dir "$BARE_TARGET"
  log "building bench/mock into $TOOL_TARGET"
  (cd "$BENCH"/mock && CARGO_TARGET_DIR=$TOOL_TARGET cargo build --release --quiet)
}

# --------------------------------------------------------------------------------------
# Fixtures and configs
# --------------------------------------------------------------------------------------

BENCH_KEY=sk-proj-BenchKey0000000000000000000000000000000000000001
# shellcheck source=bench/bodies.sh
. "$BENCH"/bodies.sh

write_fixtures() {
  mkdir -p "$WORK"/www "$WORK"/stats "$WORK"/nginx-mock/logs "$WORK"/nginx-proxy/logs
  write_bodies "$WORK"/www # bench/bodies.sh

  # Allow-list: the bench key among 1,000 plaintext and 1,000 sha256 keys.
  python3 "$ROOT"/bench/allowlist.py "$WORK"/allowlist.csv "$BENCH_KEY"

  cat >"$WORK"/lmgate.yaml <<EOF
server:
  host: 127.0.0.1
  port: $P_LMGATE
  threads: $BENCH_THREADS
  drain_timeout_seconds: 5
  upgrade_sock: $WORK/lmgate_upgrade.sock
  pid_file: $WORK/lmgate.pid
auth:
  allowlist_path: $WORK/allowlist.csv
stats:
  output_path: $WORK/stats/stats.jsonl
  rotate_bytes: 67108864
logging:
  level: warn
metrics:
  listen: 127.0.0.1:$P_METRICS
providers:
  openai:
    upstream: http://127.0.0.1:$P_MOCK
  slow:
    upstream: http://127.0.0.1:$P_SLOW
    format: openai
  anthropic: { enabled: false }
  google: { enabled: false }
  gemini: { enabled: false }
  bedrock: { enabled: false }
EOF

  local common="
user root;
worker_rlimit_nofile 20000;
error_log logs/error.log warn;
events { worker_connections 16384; }
"
  local http_common="
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $WORK/tmp-body;
    proxy_temp_path $WORK/tmp-proxy;
    fastcgi_temp_path $WORK/tmp-fcgi;
    uwsgi_temp_path $WORK/tmp-uwsgi;
    scgi_temp_path $WORK/tmp-scgi;
"
  cat >"$WORK"/nginx-mock/nginx.conf <<EOF
worker_processes 1;
pid $WORK/nginx-mock/nginx.pid;
$common
http {
  $http_common
  server {
    listen 127.0.0.1:$P_MOCK;
    etag off;
    location = /v1/chat/completions { default_type application/json; alias $WORK/www/chat.json; }
    location = /v1/stream { default_type text/event-stream; alias $WORK/www/stream.sse; }
  }
}
EOF
  cat >"$WORK"/nginx-proxy/nginx.conf <<EOF
worker_processes 1;
pid $WORK/nginx-proxy/nginx.pid;
$common
http {
  $http_common
  upstream mock { server 127.0.0.1:$P_MOCK; keepalive 256; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location /openai/ {
      proxy_pass http://mock/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$P_MOCK;
      proxy_buffering off;
    }
  }
}
EOF
}

# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------

wait_http() { # URL [HEADER]: bounded readiness poll
  local url=$1 i
  shift
  for i in $(seq 1 100); do
    if curl -s -o /dev/null --max-time 1 "$@" "$url"; then return 0; fi
    sleep 0.1
  done
  log "not ready: $url"
  return 1
}

start_mock() {
  taskset -c "$LOAD_CPU" nginx -p "$WORK"/nginx-mock -c "$WORK"/nginx-mock/nginx.conf -g 'daemon off;' &
  PIDS+=($!)
  MOCK_PID=$!
  taskset -c "$LOAD_CPU" "$TOOL" slow-server $P_SLOW 1000 $((SOAK_SECONDS + 600)) &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$P_MOCK/v1/chat/completions"
}

start_lmgate() {
  rm -f "$WORK"/stats/stats.jsonl*
  taskset -c "$SUT_CPU" env -u RUST_LOG "$LMGATE" --config "$WORK"/lmgate.yaml >"$WORK"/lmgate.log 2>&1 &
  LMGATE_PID=$!
  PIDS+=($LMGATE_PID)
  wait_http "http://127.0.0.1:$P_LMGATE/healthz" || {
    tail -20 "$WORK"/lmgate.log >&2
    return 1
  }
}

wait_port() { # PORT: bounded poll until something accepts on 127.0.0.1:PORT
  local i
  for i in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "not listening: $1"
  return 1
}

stop_pid() { # PID [SIGNAL]: stop and wait (bounded), then SIGKILL
  kill -"${2:-TERM}" "$1" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$1" 2>/dev/null || true
}

start_bare() { # PORT UPSTREAM_PORT -> BARE_PID
  taskset -c "$SUT_CPU" env THREADS=1 WORK_STEALING="${WORK_STEALING:-1}" "$BARE" "$1" "$2" /openai \
    >"$WORK"/bare-$1.log 2>&1 &
  BARE_PID=$!
  PIDS+=($BARE_PID)
}

start_nginx_proxy() {
  taskset -c "$SUT_CPU" nginx -p "$WORK"/nginx-proxy -c "$WORK"/nginx-proxy/nginx.conf -g 'daemon off;' &
  NGINX_PID=$!
  PIDS+=($NGINX_PID)
  wait_http "http://127.0.0.1:$P_NGINX/openai/v1/chat/completions"
}

# CPU ticks (utime+stime) of a process and its children processes (nginx workers).
cpu_ticks() {
  local total=0 p f
  for p in "$1" $(pgrep -P "$1" || true); do
    f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null || echo "0 0")
    total=$((total + ${f% *} + ${f#* }))
  done
  echo $total
}
CLK_TCK=$(getconf CLK_TCK)

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------

TSV=$WORK/results.tsv
: >"$TSV"

# URL and header per target
url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$P_MOCK$2" ;;
    lmgate) echo "http://127.0.0.1:$P_LMGATE/openai$2" ;;
    bare) echo "http://127.0.0.1:$P_BARE/openai$2" ;;
    nginx) echo "http://127.0.0.1:$P_NGINX/openai$2" ;;
  esac
}
pid_of() {
  case $1 in
    direct) echo "$MOCK_PID" ;;
    lmgate) echo "$LMGATE_PID" ;;
    bare) echo "$BARE_PID" ;;
    nginx) echo "$NGINX_PID" ;;
  esac
}

to_ms() { # wrk latency "123.45us" / "1.20ms" / "1.01s" -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else print "nan" }'
}

# One wrk run: phase target conns round -> appends to TSV.
run_wrk() {
  local target=$1 conns=$2 round=$3 url pid t0 t1 out rps reqs p50 p99 bad
  url=$(url_of "$target" /v1/chat/completions)
  pid=$(pid_of "$target")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d1s -H "Authorization: Bearer $BENCH_KEY" "$url") # warm-up
  local warm
  warm=$(awk '/requests in/ {print $1}' <<<"$out")
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION}s" --latency -H "Authorization: Bearer $BENCH_KEY" "$url")
  t1=$(cpu_ticks "$pid")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  # Completed responses, for the record check (in-flight ones at wrk's end are recorded too).
  if [ "$target" = lmgate ]; then LM_ANSWERED=$((LM_ANSWERED + ${warm:-0} + ${reqs:-0})); fi
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  bad=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print "errors"}' <<<"$out")
  if [ -n "$bad" ]; then log "WARNING $target c=$conns: non-2xx or socket errors: $bad"; fi
  local cpu_us
  cpu_us=$(awk -v d=$((t1 - t0)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? d * 1e6 / hz / n : 0) }')
  printf 'load\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$conns" "$round" "$rps" "$p50" "$p99" "$cpu_us" >>"$TSV"
  log "load $target c=$conns round $round: rps=$rps p50=${p50}ms p99=${p99}ms cpu=${cpu_us}us/req"
}

run_sse() {
  local target=$1 conns=$2 round=$3 url pid t0 t1 out
  url=$(url_of "$target" /v1/stream)
  pid=$(pid_of "$target")
  taskset -c "$LOAD_CPU" "$TOOL" load "$url" "$conns" 1 "Authorization: Bearer $BENCH_KEY" >/dev/null
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" "$TOOL" load "$url" "$conns" "$SSE_DURATION" "Authorization: Bearer $BENCH_KEY")
  t1=$(cpu_ticks "$pid")
  local kv
  declare -A kv=()
  local pair
  for pair in $out; do kv[${pair%%=*}]=${pair#*=}; done
  if [ "${kv[errors]}" != 0 ] || [ "${kv[non2xx]}" != 0 ]; then
    log "WARNING sse $target c=$conns: $out"
  fi
  local cpu_us
  cpu_us=$(awk -v d=$((t1 - t0)) -v n="${kv[requests]}" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? d * 1e6 / hz / n : 0) }')
  printf 'sse\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$conns" "$round" "${kv[rps]}" \
    "${kv[ttfb_p50_ms]}" "${kv[ttfb_p99_ms]}" "$cpu_us" "${kv[total_p50_ms]}" >>"$TSV"
  log "sse $target c=$conns round $round: $out cpu=${cpu_us}us/stream"
}

# Records in rotated stats files, counted before they are deleted to keep the disk bounded.
REC_N=0
REC_EXACT=0
LM_ANSWERED=0
drop_rotated() {
  local f
  for f in "$WORK"/stats/stats.jsonl.*; do
    [ -e "$f" ] || continue
    REC_N=$((REC_N + $(wc -l <"$f")))
    REC_EXACT=$((REC_EXACT + $(grep -c '"usage_status":"exact"' "$f" || true)))
    rm -f "$f"
  done
}

check_records() {
  local f=$WORK/stats/stats.jsonl
  sleep 11 # stats.flush_interval_seconds (default 10)
  drop_rotated
  local n=0 exact=0
  if [ -e "$f" ]; then
    n=$(wc -l <"$f")
    exact=$(grep -c '"usage_status":"exact"' "$f" || true)
  fi
  n=$((REC_N + n))
  exact=$((REC_EXACT + ${exact:-0}))
  log "lmgate answered $LM_ANSWERED wrk requests and wrote $n usage records ($exact exact) in this phase"
  printf 'records\t%s\t%s\t%s\n' "$n" "$exact" "$LM_ANSWERED" >>"$TSV"
}

phase_load() {
  local round conns target
  for round in $(seq 1 "$ROUNDS"); do
    for conns in $LEVELS; do
      for target in direct lmgate bare nginx; do
        run_wrk "$target" "$conns" "$round"
        drop_rotated # keep the disk bounded
      done
    done
  done
  check_records
}

phase_sse() {
  local round conns target
  for round in $(seq 1 "$ROUNDS"); do
    for conns in $SSE_LEVELS; do
      for target in direct lmgate bare nginx; do
        run_sse "$target" "$conns" "$round"
      done
    done
  done
}

phase_memory() {
  local hard max n pid port ready rss0 rss
  hard=$(ulimit -Hn)
  ulimit -n "$hard"
  max=$(((hard - 200) / 2))
  stop_pid "$LMGATE_PID"
  start_lmgate
  local main_bare=$BARE_PID slow_bare
  start_bare $P_BARE_SLOW $P_SLOW
  slow_bare=$BARE_PID
  BARE_PID=$main_bare
  wait_port $P_BARE_SLOW
  for target in lmgate bare; do
    if [ "$target" = lmgate ]; then pid=$LMGATE_PID port=$P_LMGATE; else pid=$slow_bare port=$P_BARE_SLOW; fi
    local prefix=/slow
    [ "$target" = bare ] && prefix=/openai
    rss0=$(rss_kb "$pid")
    printf 'rss\t%s\tidle\t%s\n' "$target" "$rss0" >>"$TSV"
    for n in $HOLD_LEVELS; do
      if ((n > max)); then
        log "memory: $n streams need $((2 * n)) descriptors in the proxy; the open-file limit is $hard, so $max"
        n=$max
      fi
      rm -f "$WORK"/ready
      taskset -c "$LOAD_CPU" "$TOOL" hold "http://127.0.0.1:$port$prefix/v1/chat/completions" "$n" 180 "$WORK"/ready \
        "Authorization: Bearer $BENCH_KEY" >"$WORK"/hold.log 2>&1 &
      local hold_pid=$!
      PIDS+=($hold_pid)
      local i
      for i in $(seq 1 1500); do
        [ -s "$WORK"/ready ] && break
        sleep 0.1
      done
      sleep 3 # let every stream get a few events through
      rss=$(rss_kb "$pid")
      ready=$(cat "$WORK"/ready 2>/dev/null || echo "ready=?")
      log "memory $target: $n streams ($ready): RSS ${rss} kB (idle ${rss0} kB)"
      printf 'rss\t%s\t%s\t%s\t%s\n' "$target" "$n" "$rss" "$ready" >>"$TSV"
      stop_pid "$hold_pid"
      sleep 3
    done
    # LMGate returns freed heap to the OS within its 5 s check interval (src/memory.rs).
    sleep 7
    rss=$(rss_kb "$pid")
    printf 'rss\t%s\tafter\t%s\n' "$target" "$rss" >>"$TSV"
  done
  stop_pid "$slow_bare" INT
}

phase_soak() {
  stop_pid "$LMGATE_PID"
  start_lmgate
  local url sse_url before after t=0 interval=30
  url=$(url_of lmgate /v1/chat/completions)
  sse_url=$(url_of lmgate /v1/stream)
  # Warm up so "before" is the steady state, not an empty process.
  taskset -c "$LOAD_CPU" wrk -t1 -c16 -d5s -H "Authorization: Bearer $BENCH_KEY" "$url" >/dev/null
  taskset -c "$LOAD_CPU" "$TOOL" load "$sse_url" 16 5 "Authorization: Bearer $BENCH_KEY" >/dev/null
  before=$(rss_kb "$LMGATE_PID")
  printf 'soak\tbefore\t%s\t0\n' "$before" >>"$TSV"
  log "soak: ${SOAK_SECONDS}s of 16 JSON + 16 SSE connections; RSS before ${before} kB"
  taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"${SOAK_SECONDS}s" -H "Authorization: Bearer $BENCH_KEY" "$url" >"$WORK"/soak-wrk.log &
  local wrk_pid=$!
  PIDS+=($wrk_pid)
  taskset -c "$LOAD_CPU" "$TOOL" load "$sse_url" 16 "$SOAK_SECONDS" "Authorization: Bearer $BENCH_KEY" >"$WORK"/soak-sse.log &
  local sse_pid=$!
  PIDS+=($sse_pid)
  while ((t < SOAK_SECONDS)); do
    sleep $((interval < SOAK_SECONDS - t ? interval : SOAK_SECONDS - t))
    t=$((t + interval))
    rm -f "$WORK"/stats/stats.jsonl.*
    printf 'soak\tsample\t%s\t%s\n' "$(rss_kb "$LMGATE_PID")" "$t" >>"$TSV"
  done
  wait "$wrk_pid" "$sse_pid" || true
  after=$(rss_kb "$LMGATE_PID")
  sleep 5
  local idle
  idle=$(rss_kb "$LMGATE_PID")
  printf 'soak\tafter\t%s\t%s\n' "$after" "$SOAK_SECONDS" >>"$TSV"
  printf 'soak\tidle\t%s\t%s\n' "$idle" "$SOAK_SECONDS" >>"$TSV"
  local reqs streams
  reqs=$(awk '/requests in/ {print $1}' "$WORK"/soak-wrk.log)
  streams=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' "$WORK"/soak-sse.log)
  printf 'soakreqs\t%s\t%s\n' "${reqs:-0}" "${streams:-0}" >>"$TSV"
  log "soak done: RSS after ${after} kB, after 5 s idle ${idle} kB; ${reqs:-?} JSON requests, ${streams:-?} SSE streams"
}

phase_profile() {
  local target pid libc
  libc=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/ {print $NF; exit}')
  if [ -n "$libc" ] && ! perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc'; then
    perf probe -q -x "$libc" --add malloc --add free --add realloc 2>/dev/null && PROBES_ADDED=1 || true
  fi
  for target in lmgate bare nginx; do
    pid=$(pid_of "$target")
    local url
    url=$(url_of "$target" /v1/chat/completions)
    log "profile $target (perf record -g, 10 s at 16 connections)"
    taskset -c "$LOAD_CPU" wrk -t1 -c16 -d14s -H "Authorization: Bearer $BENCH_KEY" "$url" >"$WORK"/prof-wrk-$target.log &
    local wrk_pid=$!
    PIDS+=($wrk_pid)
    sleep 2
    local pids=$pid
    [ "$target" = nginx ] && pids=$(pgrep -P "$pid" | head -1)
    perf record -q -F 1999 -g -p "$pids" -o "$PERF_DIR"/perf-$target-$STAMP.data -- sleep 10 2>/dev/null ||
      log "perf record failed for $target"
    wait "$wrk_pid" || true
    perf report -i "$PERF_DIR"/perf-$target-$STAMP.data --no-children --percent-limit 0.3 --stdio \
      --sort dso,symbol -g none 2>/dev/null | grep -v '^$' | cut -c1-200 >"$OUT_DIR"/perf-$target-$STAMP.txt || true
    # Allocator calls and syscalls per request over a 5 s run.
    if perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc'; then
      perf stat -x, -e probe_libc:malloc,probe_libc:free,probe_libc:realloc -p "$pids" \
        -o "$WORK"/malloc-$target.csv &
      local stat_pid=$!
      sleep 0.5
      taskset -c "$LOAD_CPU" wrk -t1 -c16 -d5s -H "Authorization: Bearer $BENCH_KEY" "$url" >"$WORK"/malloc-wrk-$target.log
      kill -INT "$stat_pid" 2>/dev/null || true
      wait "$stat_pid" 2>/dev/null || true
      local reqs mallocs
      reqs=$(awk '/requests in/ {print $1}' "$WORK"/malloc-wrk-$target.log)
      mallocs=$(awk -F, '/probe_libc:malloc/ {print $1}' "$WORK"/malloc-$target.csv)
      printf 'allocs\t%s\t%s\t%s\t%s\t%s\n' "$target" "$reqs" "$mallocs" \
        "$(awk -F, '/probe_libc:free/ {print $1}' "$WORK"/malloc-$target.csv)" \
        "$(awk -F, '/probe_libc:realloc/ {print $1}' "$WORK"/malloc-$target.csv)" >>"$TSV"
      log "profile $target: $mallocs malloc calls for $reqs requests"
    fi
    if command -v strace >/dev/null; then
      timeout 8 strace -c -f -q -p "$pids" -o "$WORK"/strace-$target.txt &
      local st_pid=$!
      sleep 0.5
      taskset -c "$LOAD_CPU" wrk -t1 -c16 -d5s -H "Authorization: Bearer $BENCH_KEY" "$url" >"$WORK"/strace-wrk-$target.log
      kill -INT "$st_pid" 2>/dev/null || true
      wait "$st_pid" 2>/dev/null || true
      { echo "# strace -c -f, 5 s at 16 connections: $(awk '/requests in/ {print $1}' "$WORK"/strace-wrk-$target.log) requests"
        cat "$WORK"/strace-$target.txt; } >"$OUT_DIR"/strace-$target-$STAMP.txt
    fi
    log "profile $target: $PERF_DIR/perf-$target-$STAMP.data, $OUT_DIR/perf-$target-$STAMP.txt ($(awk '/requests in/ {print $1}' "$WORK"/prof-wrk-$target.log) requests)"
  done
}

# Thread count and scheduler knobs: LMGate threads 1/2 on one core; bare Pingora with
# WORK_STEALING=0. Adds "knob" rows at 16 connections.
phase_knobs() {
  local round variant
  for round in $(seq 1 "$ROUNDS"); do
    for variant in lmgate-t1 lmgate-t2 bare-ws1 bare-ws0; do
      case $variant in
        lmgate-t1 | lmgate-t2)
          stop_pid "$LMGATE_PID"
          sed -i "s/^  threads: .*/  threads: ${variant#lmgate-t}/" "$WORK"/lmgate.yaml
          start_lmgate
          run_wrk lmgate 16 "$round"
          ;;
        bare-ws1 | bare-ws0)
          stop_pid "$BARE_PID" INT
          WORK_STEALING=${variant#bare-ws} start_bare $P_BARE $P_MOCK
          wait_http "$(url_of bare /v1/chat/completions)"
          run_wrk bare 16 "$round"
          ;;
      esac
      sed -i '$ s/^load\t\([a-z]*\)/knob\t'"$variant"'/' "$TSV"
    done
  done
  sed -i "s/^  threads: .*/  threads: $BENCH_THREADS/" "$WORK"/lmgate.yaml
}

# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

install_tools
build
OUT_DIR=$(dirname "$OUT")
mkdir -p "$OUT_DIR" "$PERF_DIR"
write_fixtures
start_mock
start_lmgate
start_bare $P_BARE $P_MOCK
wait_http "$(url_of bare /v1/chat/completions)"
start_nginx_proxy
# Every target answers the same bytes (and LMGate accepts the key) before anything is timed.
for t in direct lmgate bare nginx; do
  code=$(curl -s -o "$WORK"/check-$t -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" "$(url_of $t /v1/chat/completions)")
  [ "$code" = 200 ] && cmp -s "$WORK"/check-$t "$WORK"/www/chat.json || {
    log "$t does not answer 200 with the mock body (got $code)"
    exit 1
  }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer sk-not-allowed" "$(url_of lmgate /v1/chat/completions)")
[ "$code" = 403 ] || { log "lmgate let an unknown key through ($code)"; exit 1; }

log "phases: $PHASES; results: $OUT"
for phase in $PHASES; do
  "phase_$phase"
done

python3 "$BENCH"/report.py "$TSV" "$OUT" \
  --machine "$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r)" \
  --params "ROUNDS=$ROUNDS DURATION=${DURATION}s LEVELS='$LEVELS' SSE_LEVELS='$SSE_LEVELS' SSE_DURATION=${SSE_DURATION}s HOLD_LEVELS='$HOLD_LEVELS' SOAK_SECONDS=$SOAK_SECONDS BENCH_THREADS=$BENCH_THREADS load+mock CPU $LOAD_CPU, proxy CPU $SUT_CPU"
cp "$TSV" "${OUT%.md}.tsv"
cat "$OUT"
log "results: $OUT (raw: ${OUT%.md}.tsv)"
