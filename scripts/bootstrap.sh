#!/usr/bin/env bash
# Create .venv and install Fintegrate with its dev extra, plus newman for the Postman tests.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.fintegrate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi
if [ -f package.json ] && command -v npm >/dev/null; then
    if [ ! -d node_modules ] || [ package.json -nt node_modules ] \
        || [ package-lock.json -nt node_modules ]; then
        npm install --silent --no-audit --no-fund >/dev/null
        touch node_modules
    fi
fi
echo "[bootstrap] .venv ready ($(.venv/bin/python --version))" >&2
