#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, prepare services, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/prepare_services.sh
export PATH="$PWD/.venv/bin:$PWD/node_modules/.bin:$PATH"
echo "[test] ruff" >&2
ruff check .
ruff format --check .
echo "[test] mypy" >&2
mypy
echo "[test] pytest" >&2
pytest "$@"
