#!/usr/bin/env python3
"""Write compose/traefik/*.yml and deploy/kubernetes/gateway.yaml from service/gateway/.

`fintegrate gateway` renders the same functions at startup; tests/gateway/test_config.py and
tests/deploy/test_kubernetes.py fail when the committed files differ from what this writes.

    .venv/bin/python scripts/gen_gateway_config.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from service.gateway.compose import COMPOSE_FILES, compose_files
from service.gateway.kubernetes import KUBERNETES_FILE, kubernetes_file

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    texts = {COMPOSE_FILES[name]: text for name, text in compose_files().items()}
    for relative, text in {**texts, KUBERNETES_FILE: kubernetes_file()}.items():
        (ROOT / relative).write_text(text)
        print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
