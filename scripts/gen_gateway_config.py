#!/usr/bin/env python3
"""Write compose/traefik/traefik.yml and dynamic.yml from service/gateway/config.py.

`fintegrate gateway` renders the same functions at startup; tests/gateway/test_config.py
fails when the committed files differ from what this script writes.

    .venv/bin/python scripts/gen_gateway_config.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.gateway.compose import COMPOSE_FILES, compose_files  # noqa: E402


def main() -> int:
    for name, text in compose_files().items():
        path = ROOT / COMPOSE_FILES[name]
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
