#!/usr/bin/env bash
# Create .venv and install Fintegrate with its dev extra, plus newman for the Postman tests.
# Python packages come from requirements.lock (exact versions, hash-checked; refresh it with
# scripts/lock.sh), then the project itself, editable, without resolving anything.
# Idempotent: re-running installs again only when requirements.lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.fintegrate-installed
wanted=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps -e .
    echo "$wanted" > "$stamp"
fi
if [ -f package.json ] && command -v npm >/dev/null; then
    if [ ! -d node_modules ] || [ package.json -nt node_modules ] \
        || [ package-lock.json -nt node_modules ]; then
        npm install --silent --no-audit --no-fund >/dev/null
        touch node_modules
    fi
fi
echo "[bootstrap] .venv ready ($(.venv/bin/python --version))" >&2
