#!/usr/bin/env bash
# Scale-out under load: the same build with the fleet parts off (local limits, no shipper)
# and on (limits leased from Redis, records shipped to ClickHouse), wrk POSTing the small
# chat body with a limited key (rpm, tpm and two budgets, far from their limits) at 16 and
# 64 keep-alive connections, interleaved ROUNDS rounds. Prints requests/s per case, the
# on/off ratio per round, and the Redis commands per request of the "on" gateway.
#
#   bench/fleet-load.sh                   # 3 rounds of 10 s
#   ROUNDS=5 DURATION=5 bench/fleet-load.sh
#
# Load (wrk), the mock (nginx), Redis and ClickHouse on CPU 0; each gateway alone on CPU 1
# (one thread; only one is loaded at a time). Builds `cargo build --profile profiling`
# unless BENCH_LMGATE_BIN is set. Loopback only; stops by itself. Needs nginx, wrk,
# redis-server, clickhouse-server, python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
W=$(mktemp -d /tmp/lmgate-fleet.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
for tool in nginx wrk python3 curl taskset redis-server; do
  command -v $tool >/dev/null || { echo "fleet-load.sh: needs $tool (apt-get install nginx-light wrk redis-server clickhouse-server)" >&2; exit 2; }
done
if [ -z "${BENCH_LMGATE_BIN:-}" ]; then
  [ -n "${CMAKE:-}" ] || { [ -x .tools/cmake/cmake/data/bin/cmake ] && export CMAKE=$PWD/.tools/cmake/cmake/data/bin/cmake; } || true
  cargo build --profile profiling >&2
  BENCH_LMGATE_BIN=target/profiling/lmgate
fi
mkdir -p "$W"/www "$W"/off "$W"/on "$W"/mock/logs
. bench/bodies.sh
write_bodies "$W"/www
KEY=sk-bench-hot-0000000000000000000000000
cat >"$W"/allowlist.csv <<CSV
id,api_key,owner,added,limits
hot,$KEY,bench,2026-12-01,rpm=1000000000 tpm=1000000000000 usd_per_day=1000000 owner.usd_per_month=1000000
CSV
cat >"$W"/post.lua <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Describe the picture."}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
config() { # dir port metrics-port extra
  cat >"$W/$1/lmgate.yaml" <<YAML
server: {host: 127.0.0.1, port: $2, threads: 1, drain_timeout_seconds: 5, upgrade_sock: $W/$1/u.sock, pid_file: $W/$1/l.pid}
auth: {allowlist_path: $W/allowlist.csv}
stats: {output_path: $W/$1/stats.jsonl, rotate_bytes: 67108864}
logging: {level: warn}
metrics: {listen: 127.0.0.1:$3}
providers:
  openai: {upstream: "http://127.0.0.1:19321"}
  anthropic: {enabled: false}
  google: {enabled: false}
  gemini: {enabled: false}
  bedrock: {enabled: false}
$4
YAML
}
config off 19322 19323 ""
config on 19324 19325 "fleet: {redis_url: 'redis://127.0.0.1:19326/0', instances: 3}
clickhouse: {url: 'http://127.0.0.1:19327'}"
cat >"$W"/mock/nginx.conf <<NGX
master_process off; worker_processes 1; pid $W/mock/nginx.pid; user root; error_log logs/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19321; etag off; error_page 405 =200 \$uri;
    location = /v1/chat/completions { default_type application/json; alias $W/www/chat.json; } } }
NGX
taskset -c 0 nginx -p "$W"/mock -c "$W"/mock/nginx.conf -g 'daemon off;' &
PIDS+=($!)
. bench/engines.sh
CPU0=1 start_redis 19326 "$W"
CPU0=1 start_clickhouse 19327 "$W"
for c in off on; do
  taskset -c 1 "$BENCH_LMGATE_BIN" --config "$W/$c/lmgate.yaml" >"$W/$c/lmgate.log" 2>&1 &
  PIDS+=($!)
done
for port in 19322 19324; do
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
done
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }
run() { # port connections
  local out
  out=$(taskset -c 0 wrk -t1 -c"$2" -d"${DURATION}s" -s "$W"/post.lua -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:$1/openai/v1/chat/completions")
  local rps non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$rps ${non2xx:-0}"
}
echo "round connections off-rps on-rps on/off non-2xx(off,on)"
for r in $(seq 1 "$ROUNDS"); do
  for c in 16 64; do
    read -r off_rps off_bad < <(run 19322 "$c")
    read -r on_rps on_bad < <(run 19324 "$c")
    ratio=$(python3 -c "print(f'{$on_rps / $off_rps:.3f}')")
    echo "$r $c $off_rps $on_rps $ratio $off_bad,$on_bad"
  done
done
sleep 3 # the shipper's last batch
commands=$(metric 19325 lmgate_fleet_redis_commands_total)
requests=$(curl -s http://127.0.0.1:19325/metrics | awk '/^lmgate_requests_total/ {s += $2} END {print s + 0}')
shipped=$(curl -s "http://127.0.0.1:19327/?query=SELECT%20count()%20FROM%20lmgate.usage%20FINAL")
echo "on: $requests requests, $commands Redis commands ($(python3 -c "print(f'{$commands / max($requests, 1):.5f}')") per request), $shipped rows in ClickHouse"
