"""Shell completion through the installed `fintegrate` script (what the shell would call)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FINTEGRATE = Path(sys.executable).with_name("fintegrate")


def complete(words: str, cword: int) -> list[str]:
    env = {
        **os.environ,
        "_FINTEGRATE_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    done = subprocess.run(
        [str(FINTEGRATE)], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.split()


def test_completes_groups_commands_and_choices() -> None:
    assert complete("fintegrate custo", 1) == ["customers"]
    assert set(complete("fintegrate keys ", 2)) >= {"rotate", "list", "revoke"}
    assert complete("fintegrate customers list --status ", 4) == [
        "active",
        "inactive",
        "suspended",
    ]


def test_show_completion_prints_a_bash_script() -> None:
    done = subprocess.run(
        [str(FINTEGRATE), "--show-completion", "bash"],
        env={**os.environ, "SHELL": "/bin/bash"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "complete -o default -F _fintegrate_completion fintegrate" in done.stdout
