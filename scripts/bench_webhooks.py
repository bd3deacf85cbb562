#!/usr/bin/env python3
"""``fintegrate bench webhooks`` under its old name; the arguments are passed on.

.venv/bin/python scripts/bench_webhooks.py --help
"""

from __future__ import annotations

import sys

from fintegrate_cli.main import app

if __name__ == "__main__":
    app(["bench", "webhooks", *sys.argv[1:]])
