#!/usr/bin/env bash
# Spend control under load: wrk at 64 keep-alive connections, POSTing a small chat body,
# with (a) a key without limits, (b) one hot limited key (key + owner limits: every
# request reserves on the same 16 counters), (c) 10,000 limited keys, one per request in
# turn (wrk Lua). Interleaved ROUNDS rounds; prints requests/s per case and round.
#
#   bench/limits-load.sh                  # 3 rounds of 10 s
#   ROUNDS=5 DURATION=5 bench/limits-load.sh
#
# Load (wrk) on CPU 0, the gateway alone on CPU 1 (one thread), nginx as the mock on CPU 0.
# Builds `cargo build --profile profiling` unless BENCH_LMGATE_BIN is set. Loopback only;
# stops by itself. Needs nginx, wrk, python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
W=$(mktemp -d /tmp/lmgate-limits.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
for tool in nginx wrk python3 curl taskset; do
  command -v $tool >/dev/null || { echo "limits-load.sh: needs $tool (apt-get install nginx-light wrk)" >&2; exit 2; }
done
if [ -z "${BENCH_LMGATE_BIN:-}" ]; then
  [ -n "${CMAKE:-}" ] || { [ -x .tools/cmake/cmake/data/bin/cmake ] && export CMAKE=$PWD/.tools/cmake/cmake/data/bin/cmake; } || true
  cargo build --profile profiling >&2
  BENCH_LMGATE_BIN=target/profiling/lmgate
fi
mkdir -p "$W"/www "$W"/stats "$W"/mock/logs
. bench/bodies.sh
write_bodies "$W"/www
LIMITS="rpm=1000000000 tpm=1000000000000 usd_per_day=1000000 owner.usd_per_month=1000000"
python3 - "$W" "$LIMITS" <<'PY'
import sys
w, limits = sys.argv[1], sys.argv[2]
with open(f"{w}/allowlist.csv", "w") as f:
    f.write("id,api_key,owner,added,limits\n")
    f.write("free,sk-bench-free-000000000000000000000000,bench,2026-12-01,\n")
    f.write(f"hot,sk-bench-hot-0000000000000000000000000,bench,2026-12-01,{limits}\n")
    for i in range(10000):
        f.write(f"k{i},sk-bench-many-{i:026d},owner-{i % 100},2026-12-01,{limits}\n")
with open(f"{w}/many.lua", "w") as f:
    f.write('''
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Describe the picture."}]}'
local n = 0
request = function()
  n = n + 1
  local key = string.format("sk-bench-many-%026d", n % 10000)
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"})
end
''')
with open(f"{w}/post.lua", "w") as f:
    f.write('''
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Describe the picture."}]}'
wrk.headers["Content-Type"] = "application/json"
''')
PY
cat >"$W"/lmgate.yaml <<YAML
server: {host: 127.0.0.1, port: 19302, threads: 1, drain_timeout_seconds: 5, upgrade_sock: $W/u.sock, pid_file: $W/l.pid}
auth: {allowlist_path: $W/allowlist.csv}
stats: {output_path: $W/stats/stats.jsonl, rotate_bytes: 67108864}
logging: {level: warn}
metrics: {listen: 127.0.0.1:19304}
providers:
  openai: {upstream: "http://127.0.0.1:19301"}
  anthropic: {enabled: false}
  google: {enabled: false}
  gemini: {enabled: false}
  bedrock: {enabled: false}
YAML
cat >"$W"/mock/nginx.conf <<NGX
master_process off; worker_processes 1; pid $W/mock/nginx.pid; user root; error_log logs/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19301; etag off; error_page 405 =200 \$uri;
    location = /v1/chat/completions { default_type application/json; alias $W/www/chat.json; } } }
NGX
taskset -c 0 nginx -p "$W"/mock -c "$W"/mock/nginx.conf -g 'daemon off;' &
PIDS+=($!)
taskset -c 1 "$BENCH_LMGATE_BIN" --config "$W"/lmgate.yaml >"$W"/lmgate.log 2>&1 &
PIDS+=($!)
URL=http://127.0.0.1:19302/openai/v1/chat/completions
for _ in $(seq 1 100); do curl -s -o /dev/null "$URL" -H "Authorization: Bearer sk-bench-free-000000000000000000000000" && break; sleep 0.1; done
run() { # name key-or-empty script
  local out
  if [ -n "$2" ]; then
    out=$(taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -s "$3" -H "Authorization: Bearer $2" "$URL")
  else
    out=$(taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -s "$3" "$URL")
  fi
  local rps non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$1 $rps ${non2xx:-0}"
}
echo "case requests/s non-2xx (64 connections, ${DURATION}s, round-robin interleaved)"
for r in $(seq 1 "$ROUNDS"); do
  run "round$r:no-limits" sk-bench-free-000000000000000000000000 "$W"/post.lua
  run "round$r:hot-key" sk-bench-hot-0000000000000000000000000 "$W"/post.lua
  run "round$r:10000-keys" "" "$W"/many.lua
done
