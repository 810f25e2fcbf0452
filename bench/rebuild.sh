#!/usr/bin/env bash
# How long the start-up spend rebuild takes: a stats history of SIZE_MB (default 1024) of
# this month's usage records (plus rotated siblings), 1,000 limited key ids, and the
# gateway started on it; prints the gateway's own "spend ... rebuilt ... in N ms" line.
#
#   bench/rebuild.sh                       # 1 GB
#   SIZE_MB=100 bench/rebuild.sh
#
# Builds `cargo build --profile profiling` unless BENCH_LMGATE_BIN is set. Loopback only,
# stops by itself (the gateway is killed once the line is logged). Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
W=$(mktemp -d /tmp/lmgate-rebuild.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
if [ -z "${BENCH_LMGATE_BIN:-}" ]; then
  [ -n "${CMAKE:-}" ] || { [ -x .tools/cmake/cmake/data/bin/cmake ] && export CMAKE=$PWD/.tools/cmake/cmake/data/bin/cmake; } || true
  cargo build --profile profiling >&2
  BENCH_LMGATE_BIN=target/profiling/lmgate
fi
mkdir -p "$W"/stats
python3 - "$W" "$SIZE_MB" <<'PY'
import datetime, sys
w, size_mb = sys.argv[1], int(sys.argv[2])
now = datetime.datetime.now(datetime.timezone.utc)
month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
span = max((now - month_start).total_seconds() - 60, 1)
with open(f"{w}/allowlist.csv", "w") as f:
    f.write("id,api_key,owner,added,limits\n")
    for i in range(1000):
        f.write(f"team-{i},sk-rebuild-{i:040d},owner-{i % 50},2026-12-01,usd_per_month=1000000 tpm=100000000 owner.usd_per_day=1000000\n")
target = size_mb * 1024 * 1024
# Three files: two rotated siblings and the live file, as a long-running gateway leaves.
files = [f"{w}/stats/stats.jsonl.{now:%Y%m%dT%H%M%S}.000Z", f"{w}/stats/stats.jsonl.{now:%Y%m%dT%H%M%S}.000Z.1", f"{w}/stats/stats.jsonl"]
written, n = 0, 0
for k, path in enumerate(files):
    with open(path, "w") as f:
        while written < target * (k + 1) // len(files):
            t = month_start + datetime.timedelta(seconds=span * n / 3_000_000 % span)
            ts = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
            line = ('{"timestamp":"%s","lmgate_id":"team-%d","provider":"openai","endpoint":"/openai/v1/chat/completions",'
                    '"model":"gpt-4o-mini-2024-07-18","status":200,"input_tokens":%d,"output_tokens":%d,'
                    '"cache_read_input_tokens":0,"cache_creation_input_tokens":null,"reasoning_tokens":0,'
                    '"masked_key":"abcdef","error_type":null,"usage_status":"exact","stream":false,"duration_ms":812,'
                    '"cost_micros":%d,"cost_status":"exact"}\n') % (ts, n % 1000, 100 + n % 900, 10 + n % 90, 30 + n % 500)
            f.write(line)
            written += len(line)
            n += 1
print(f"{n} records, {written / 1e6:.0f} MB in {len(files)} files", file=sys.stderr)
PY
cat >"$W"/lmgate.yaml <<YAML
server: {host: 127.0.0.1, port: 19202, threads: 1, upgrade_sock: $W/u.sock, pid_file: $W/l.pid}
auth: {allowlist_path: $W/allowlist.csv}
stats: {output_path: $W/stats/stats.jsonl}
logging: {level: info}
metrics: {listen: 127.0.0.1:19204}
YAML
sync
"$BENCH_LMGATE_BIN" --config "$W"/lmgate.yaml >"$W"/log 2>&1 &
PID=$!
for _ in $(seq 1 1200); do
  if grep -q "rebuilt from" "$W"/log; then
    grep -o "spend of .*" "$W"/log
    exit 0
  fi
  kill -0 "$PID" 2>/dev/null || { cat "$W"/log >&2; exit 1; }
  sleep 0.1
done
echo "rebuild.sh: no rebuild line within 120 s" >&2
cat "$W"/log >&2
exit 1
