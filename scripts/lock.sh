#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml; commit them with the pyproject change.
#   scripts/lock.sh                       # add/drop what pyproject changed, keep other pins
#   scripts/lock.sh --upgrade             # every pin to the newest release pyproject allows
#   scripts/lock.sh --upgrade-package fastapi
# requirements.lock (runtime + dev extra) is what scripts/bootstrap.sh, and so run.sh,
# test.sh and CI, install; requirements-runtime.lock is what the Docker image installs.
# Both pin every package with its hashes, for every platform and Python >= 3.11 (universal).
# The resolver is uv, pinned below, in its own venv (.lock-tools/, not the project's).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
PYTHON=${PYTHON:-python3}
tools=.lock-tools
if [ "$("$tools/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$PYTHON" -m venv "$tools"
    "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
compile() {
    "$tools/bin/uv" pip compile pyproject.toml --quiet --universal --python-version 3.11 \
        --generate-hashes --custom-compile-command scripts/lock.sh "$@"
}
compile --extra dev --output-file requirements.lock "$@"
compile --output-file requirements-runtime.lock "$@"
echo "[lock] requirements.lock and requirements-runtime.lock written; commit them" >&2
