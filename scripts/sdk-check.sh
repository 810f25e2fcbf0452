#!/usr/bin/env bash
# scripts/sdk-check.sh: the official Python SDKs (openai, anthropic, google-genai, boto3)
# through the real gateway, with only the base URL changed; see tests/sdk/check_sdks.py.
#
# Installs the SDKs pinned in tests/sdk/requirements.txt from PyPI into .tools/sdk-venv
# (git-ignored; reinstalled only when the requirements change), builds the gateway with
# `scripts/dev build`, and runs the checks (tests/sdk/check_fleet.py needs redis-server,
# clickhouse-server and haproxy, which `scripts/dev test` installs). Everything they start
# listens on 127.0.0.1 only.
# Ends with the check's `N passed, M failed` line; exits non-zero if anything failed.
#
#   scripts/sdk-check.sh [--timeout SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.tools/sdk-venv
req=tests/sdk/requirements.txt
stamp=$venv/.requirements.sha256

py=$(command -v python3 || command -v python || true)
if [ -z "$py" ]; then
  echo "scripts/sdk-check.sh: need python3 (3.9+) with the venv module" >&2
  exit 1
fi

want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "scripts/sdk-check.sh: installing the SDKs from $req into $venv" >&2
  rm -rf "$venv"
  mkdir -p .tools
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
  echo "$want" >"$stamp"
fi

scripts/dev build

# Each check keeps its own time limit (--timeout); this one only catches a check that
# hangs beyond it. The fleet check (three gateways behind HAProxy, Redis, ClickHouse) runs
# after the single-gateway one, whatever its result; the script fails if either does.
gateway="${CARGO_TARGET_DIR:-target}/debug/lmgate"
status=0
timeout -k 10 300 "$venv/bin/python" tests/sdk/check_sdks.py --gateway "$gateway" "$@" || status=1
timeout -k 10 200 "$venv/bin/python" tests/sdk/check_fleet.py --gateway "$gateway" || status=1
exit $status
