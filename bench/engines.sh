# Sourced by the bench scripts: Redis and ClickHouse (Debian's packages) on loopback, in a
# directory of the caller's, with the PIDs appended to the caller's PIDS array (its EXIT
# trap stops them). Load and engines share CPU 0 when CPU0=1.

# start_redis PORT DIR
start_redis() {
  command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 2; }
  ${CPU0:+taskset -c 0} redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$2" >"$2"/redis.log 2>&1 &
  PIDS+=($!)
}

# start_clickhouse HTTP_PORT DIR: starts it, waits for it, creates LMGate's table from
# contrib/clickhouse/schema.sql. Uses HTTP_PORT+1 and +2 for its other listeners.
start_clickhouse() {
  local ch
  ch=$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)
  [ -x "$ch" ] || { echo "needs clickhouse-server (apt-get install clickhouse-server)" >&2; exit 2; }
  mkdir -p "$2"/ch
  (cd "$2"/ch && exec ${CPU0:+taskset -c 0} "$ch" --config-file=/etc/clickhouse-server/config.xml -- \
    --path="$2"/ch/data/ --tmp_path="$2"/ch/tmp/ --user_files_path="$2"/ch/uf/ \
    --format_schema_path="$2"/ch/fs/ --http_port="$1" --tcp_port=$(($1 + 1)) \
    --interserver_http_port=$(($1 + 2)) --logger.log="$2"/ch/log --logger.errorlog="$2"/ch/err \
    --logger.console=0 --listen_host=127.0.0.1 >"$2"/ch/out 2>&1) &
  PIDS+=($!)
  local _
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$1/ping" >/dev/null && break; sleep 0.1; done
  sed '/^ *--/d' contrib/clickhouse/schema.sql | tr '\n' ' ' | tr ';' '\n' | while read -r stmt; do
    [ -n "$stmt" ] && curl -sf --data-binary "$stmt" "http://127.0.0.1:$1/" >/dev/null
  done
}
