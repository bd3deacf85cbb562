#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, prepare services, lint, type-check, test.
# Phase 1 runs everything that tolerates parallel workers; phase 2 runs, alone, the tests that
# stop and start shared services (marker `disruptive`). Extra arguments go to both pytest runs.
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
echo "[test] pytest (parallel)" >&2
pytest -m "not disruptive" -n "${FINTEGRATE_TEST_WORKERS:-2}" "$@"
echo "[test] pytest (disruptive, serial)" >&2
status=0
FINTEGRATE_TEST_DISRUPTIVE=1 pytest -m disruptive "$@" || status=$?
# 5 = no test selected: nothing disruptive to run is not a failure.
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
./scripts/prepare_services.sh >/dev/null 2>&1 || true
