#!/usr/bin/env bash
# scripts/fuzz-smoke.sh: a few seconds of every cargo-fuzz target (fuzz/README.md), for CI.
#
# Runs only when cargo-fuzz is already installed; it installs nothing. Prints
# "fuzz-smoke: skipped: <reason>" and exits 0 when cargo-fuzz is missing or the fuzz crate
# cannot be built here (or not within the build budget: a first build of Pingora with
# coverage instrumentation takes minutes; what was built is kept for the next run).
# Exits non-zero only when a target crashes, hangs or runs out of memory; the input is
# then in fuzz/artifacts/<target>/.
#
#   FUZZ_SMOKE_SECONDS        fuzzing time per target (default 5)
#   FUZZ_SMOKE_BUILD_SECONDS  build budget (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SMOKE_SECONDS:-5}
build_seconds=${FUZZ_SMOKE_BUILD_SECONDS:-60}
targets=(sse json_usage json_array eventstream collector allowlist config)
# The same flags as fuzz/README.md, so a smoke run reuses a manual build and vice versa.
build_flags=(--debug-assertions)

skip() {
  echo "fuzz-smoke: skipped: $*"
  exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
cargo fuzz --version >/dev/null 2>&1 || skip "cargo-fuzz is not installed (cargo install cargo-fuzz)"
command -v timeout >/dev/null 2>&1 || skip "coreutils timeout is not available"

# Pingora builds zlib-ng with cmake: the one on PATH, or the one scripts/dev installs.
if [ -z "${CMAKE:-}" ] && ! command -v cmake >/dev/null 2>&1; then
  if [ -x .tools/cmake/cmake/data/bin/cmake ]; then
    export CMAKE="$PWD/.tools/cmake/cmake/data/bin/cmake"
  else
    skip "cmake not found (scripts/dev build installs it into .tools/)"
  fi
fi

# cargo-fuzz passes -Z flags; RUSTC_BOOTSTRAP=1 lets a stable rustc accept them.
export RUSTC_BOOTSTRAP=1

log=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$log" "$work"' EXIT

start=$SECONDS
status=0
timeout "$build_seconds" cargo fuzz build "${build_flags[@]}" >"$log" 2>&1 || status=$?
if [ "$status" -eq 124 ]; then
  skip "fuzz build did not finish within ${build_seconds}s (build once: RUSTC_BOOTSTRAP=1 cargo fuzz build -a)"
elif [ "$status" -ne 0 ]; then
  tail -n 20 "$log" >&2
  skip "cargo fuzz build failed (exit $status; log above)"
fi
echo "fuzz-smoke: built in $((SECONDS - start))s"

failed=()
for t in "${targets[@]}"; do
  dict=()
  case $t in
    config) dict=(-dict=fuzz/dicts/config.dict) ;;
    allowlist) dict=(-dict=fuzz/dicts/allowlist.dict) ;;
    *) dict=(-dict=fuzz/dicts/usage.dict) ;;
  esac
  max_len=4096
  case $t in config | allowlist) max_len=2048 ;; esac
  mkdir -p "$work/$t"
  # New inputs go to the first (temporary) directory; fuzz/corpus/<t> is only read.
  if cargo fuzz run "${build_flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    "${dict[@]}" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz-smoke: $t ok (${runs:-?} runs)"
  else
    tail -n 40 "$log" >&2
    echo "fuzz-smoke: $t FAILED (input saved under fuzz/artifacts/$t/)" >&2
    failed+=("$t")
  fi
done

echo "fuzz-smoke: done in $((SECONDS - start))s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz-smoke: failed: ${failed[*]}" >&2
  exit 1
fi
