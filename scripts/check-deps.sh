#!/usr/bin/env bash
# scripts/check-deps.sh: what must never enter the dependency graph (run by .ci/run).
#
# - One crypto library: rustls on ring, as Pingora. The AWS crates default to aws-lc-rs
#   (and can pull OpenSSL or s2n); Cargo.toml turns those features off, and this catches a
#   dependency or a feature change that turns them back on.
# - `tracing`'s `log` feature: aws-sigv4 traces its signing inputs (the credentials among
#   them) at trace level through `tracing`. LMGate logs through `log`; with `tracing/log`
#   on, those events would reach env_logger at RUST_LOG=trace.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
for crate in aws-lc-rs aws-lc-sys openssl-sys native-tls s2n-tls; do
  if out=$(cargo tree --locked --target all -e normal,build -i "$crate" 2>/dev/null); then
    echo "scripts/check-deps.sh: $crate is in the dependency graph:" >&2
    echo "$out" >&2
    fail=1
  fi
done
features=$(cargo tree --locked --target all -e features -i tracing 2>/dev/null | grep -o 'tracing feature "[a-z-]*"' | sort -u)
if grep -Eq '"(log|log-always)"' <<<"$features"; then
  echo "scripts/check-deps.sh: tracing's log feature is enabled (signing inputs would reach the log):" >&2
  cargo tree --locked --target all -e features -i tracing >&2
  fail=1
fi
if [ "$fail" = 0 ]; then
  echo "scripts/check-deps.sh: no aws-lc, OpenSSL, native-tls or s2n; tracing/log off"
fi
exit "$fail"
