#!/usr/bin/env python3
"""``fintegrate bench api`` under its old name; the arguments are passed on.

.venv/bin/python scripts/bench_api.py --rounds 5 --duration 5 --json
"""

from __future__ import annotations

import sys

from fintegrate_cli.main import app

if __name__ == "__main__":
    app(["bench", "api", *sys.argv[1:]])
