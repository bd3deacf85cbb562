"""Write docs/cli.md from the fintegrate commands' help (tests fail when it is stale).

Usage: .venv/bin/python scripts/gen_cli_docs.py
"""

from __future__ import annotations

from fintegrate_cli._docs import CLI_DOC, render
from fintegrate_cli.main import app


def main() -> None:
    CLI_DOC.parent.mkdir(parents=True, exist_ok=True)
    CLI_DOC.write_text(render(app), encoding="utf-8")
    print(f"wrote {CLI_DOC}")


if __name__ == "__main__":
    main()
