"""The one error path of the CLI and its exit codes."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3  # partial success, or a check-style command found something pending


class CliError(Exception):
    """A failure reported as one line on stderr: what failed and what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class CheckFailed(CliError):
    """A check-style command found something to report (exit 3)."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_PARTIAL)
