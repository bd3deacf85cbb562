"""Long-running commands under test: stopped the way an operator or a supervisor stops them."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

from tests.support.outbox import wait_until


def sigterm_when(
    process: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 30.0
) -> tuple[str, str]:
    """SIGTERM ``process`` once ``ready()`` holds; its stdout and stderr once it has exited.

    Fails when ``ready`` never holds; the process is killed if it is still running then.
    """
    try:
        assert wait_until(ready, timeout=timeout), "the process never got ready"
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
