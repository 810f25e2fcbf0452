#!/usr/bin/env bash
# Instructions per request, LMGate vs bare Pingora, under callgrind: deterministic, so it
# compares builds on a noisy shared VM where wrk's CPU-µs move by ±15 % between rounds.
#
#   bench/callgrind.sh                 # N=1000 requests each, prints a table
#   N=2000 bench/callgrind.sh
#   KEEP=1 bench/callgrind.sh          # keep the callgrind files (callgrind_annotate them)
#   ENDPOINT=sse bench/callgrind.sh    # the 24-event SSE stream instead of the JSON answer
#   POST=1 bench/callgrind.sh          # POST a small chat body (model, max_tokens) instead of GET
#   POST=1 LIMITS="rpm=100000000 usd_per_day=100000 owner.usd_per_month=100000" bench/callgrind.sh
#                                      # the bench key with limits: admission + settlement
#                                      # (compare with POST=1 alone)
#   POST=1 LIMITS="..." FLEET=1 bench/callgrind.sh
#                                      # the same with the limits leased from Redis and the
#                                      # records shipped to ClickHouse (both started here
#                                      # on loopback; their own instructions not counted,
#                                      # the gateway's lease service and shipper are)
#
# Builds `cargo build --profile profiling` (release + symbols) unless BENCH_LMGATE_BIN is set
# (not LMGATE_*: the gateway reads every LMGATE_* variable as a config override),
# builds bench/bare-pingora into /tmp/bare-target once (shared with bench/run.sh) unless
# BARE_BIN is set. Needs
# valgrind, nginx (the mock), python3, curl. Loopback only; stops by itself: each target
# gets 200 warm-up requests, then N measured ones over 4 keep-alive connections, a 1.5 s
# wait for the stats writer's flush, one dump, SIGKILL.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
KEY=sk-proj-BenchKey0000000000000000000000000000000000000001
W=$(mktemp -d /tmp/lmgate-callgrind.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  [ "${KEEP:-0}" = 1 ] && echo "callgrind files kept in $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT

for tool in valgrind callgrind_control nginx python3 curl; do
  command -v $tool >/dev/null || { echo "callgrind.sh: needs $tool (apt-get install valgrind nginx)" >&2; exit 2; }
done
if [ -z "${BENCH_LMGATE_BIN:-}" ]; then
  [ -n "${CMAKE:-}" ] || { [ -x .tools/cmake/cmake/data/bin/cmake ] && export CMAKE=$PWD/.tools/cmake/cmake/data/bin/cmake; } || true
  cargo build --profile profiling >&2
  BENCH_LMGATE_BIN=target/profiling/lmgate
fi
if [ -z "${BARE_BIN:-}" ]; then
  BARE_BIN=/tmp/bare-target/release/bare-pingora
  [ -n "${CMAKE:-}" ] || { [ -x .tools/cmake/cmake/data/bin/cmake ] && export CMAKE=$PWD/.tools/cmake/cmake/data/bin/cmake; } || true
  cargo build --release --locked --manifest-path bench/bare-pingora/Cargo.toml --target-dir /tmp/bare-target >&2
fi
[ -x "$BARE_BIN" ] || { echo "callgrind.sh: no $BARE_BIN" >&2; exit 2; }

mkdir -p "$W"/www "$W"/stats "$W"/mock/logs
# The bodies bench/run.sh serves.
. bench/bodies.sh
write_bodies "$W"/www
case ${ENDPOINT:-json} in
  json) UPATH=/v1/chat/completions ;;
  sse) UPATH=/v1/stream ;;
  *) echo "callgrind.sh: ENDPOINT is json or sse" >&2; exit 2 ;;
esac
python3 bench/allowlist.py "$W"/allowlist.csv "$KEY" "${LIMITS:-}"
cat >"$W"/lmgate.yaml <<EOF
server: {host: 127.0.0.1, port: 19102, threads: 1, drain_timeout_seconds: 5, upgrade_sock: $W/u.sock, pid_file: $W/l.pid}
auth: {allowlist_path: $W/allowlist.csv}
stats: {output_path: $W/stats/stats.jsonl}
logging: {level: warn}
metrics: {listen: 127.0.0.1:19104}
providers:
  openai: {upstream: "http://127.0.0.1:19101"}
  anthropic: {enabled: false}
  google: {enabled: false}
  gemini: {enabled: false}
  bedrock: {enabled: false}
EOF
cat >"$W"/mock/nginx.conf <<EOF
master_process off; worker_processes 1; pid $W/mock/nginx.pid; user root; error_log logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19101; etag off; error_page 405 =200 \$uri;
    location = /v1/chat/completions { default_type application/json; alias $W/www/chat.json; }
    location = /v1/stream { default_type text/event-stream; alias $W/www/stream.sse; } } }
EOF
nginx -p "$W"/mock -c "$W"/mock/nginx.conf -g 'daemon off;' &
PIDS+=($!)
if [ "${FLEET:-0}" = 1 ]; then
  . bench/engines.sh
  start_redis 19106 "$W"
  start_clickhouse 19107 "$W"
  cat >>"$W"/lmgate.yaml <<EOF
fleet: {redis_url: 'redis://127.0.0.1:19106/0', instances: 3}
clickhouse: {url: 'http://127.0.0.1:19107'}
EOF
fi

cat >"$W"/client.py <<'EOF'
import http.client, os, sys
port, n, key, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(4)]
post = os.environ.get("POST") == "1"
body = b'{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Describe the picture."}]}'
ok = 0
for i in range(n):
    c = conns[i % 4]
    headers = {"Authorization": "Bearer " + key}
    if post:
        headers["Content-Type"] = "application/json"
        c.request("POST", "/openai" + path, body=body, headers=headers)
        r = c.getresponse()
        r.read()
        ok += r.status == 200
        continue
    c.request("GET", "/openai" + path, headers=headers)
    r = c.getresponse()
    r.read()
    ok += r.status == 200
print(ok)
EOF

measure() { # NAME PORT CMD...
  local name=$1 port=$2
  shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$W/$name.cg" "$@" >"$W/$name.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  local i
  for i in $(seq 1 300); do
    curl -s -o /dev/null -H "Authorization: Bearer $KEY" "http://127.0.0.1:$port/openai$UPATH" && break
    sleep 0.2
  done
  python3 "$W"/client.py "$port" 200 "$KEY" "$UPATH" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  local ok
  ok=$(python3 "$W"/client.py "$port" "$N" "$KEY" "$UPATH")
  sleep 1.5
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local ir
  ir=$(cat "$W/$name".cg* | awk '/^summary:/ {s += $2} END {print s + 0}')
  if [ "$ok" != "$N" ] || [ "$ir" = 0 ]; then
    echo "callgrind.sh: $name answered $ok of $N with 200 ($ir instructions); its output:" >&2
    grep -v '^==' "$W/$name.log" | tail -5 >&2
    exit 1
  fi
  echo "$name $ir"
}

lm=$(RUST_LOG= measure lmgate 19102 "$BENCH_LMGATE_BIN" --config "$W"/lmgate.yaml)
bare=$(THREADS=1 measure bare 19103 "$BARE_BIN" 19103 19101 /openai)
python3 - "$N" "$lm" "$bare" "${ENDPOINT:-json}" <<'EOF'
import sys
n = int(sys.argv[1])
lm = int(sys.argv[2].split()[1]) / n
bare = int(sys.argv[3].split()[1]) / n
print(f"| target ({sys.argv[4]}) | instructions per request | × bare Pingora |")
print(f"|---|---|---|")
print(f"| LMGate (auth + usage + record + metrics) | {lm:,.0f} | {lm / bare:.3f}× |")
print(f"| bare Pingora | {bare:,.0f} | 1.000× |")
EOF
