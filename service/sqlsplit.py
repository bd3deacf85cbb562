"""Split a SQL script into statements, respecting quotes, dollar quotes and comments."""

from __future__ import annotations

import re

DOLLAR_TAG = re.compile(r"\$[A-Za-z_0-9]*\$")


def split_statements(script: str) -> list[str]:
    """The non-empty statements of ``script`` (without trailing semicolons or pure comments)."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(script)
    while i < n:
        end = _skip_literal(script, i)
        if end > i:
            current.append(script[i:end])
            i = end
        elif script[i] == ";":
            _flush(current, statements)
            i += 1
        else:
            current.append(script[i])
            i += 1
    _flush(current, statements)
    return statements


def _skip_literal(script: str, i: int) -> int:
    """The end of a comment, quoted string or dollar-quoted body starting at ``i``, else ``i``."""
    if script.startswith("--", i):
        newline = script.find("\n", i)
        return len(script) if newline == -1 else newline
    if script.startswith("/*", i):
        close = script.find("*/", i + 2)
        return len(script) if close == -1 else close + 2
    char = script[i]
    if char in ("'", '"'):
        j = i + 1
        while j < len(script):
            if script[j] == char:
                if script.startswith(char * 2, j):
                    j += 2
                    continue
                return j + 1
            j += 1
        return len(script)
    if char == "$":
        match = DOLLAR_TAG.match(script, i)
        if match:
            close = script.find(match.group(), match.end())
            return len(script) if close == -1 else close + len(match.group())
    return i


def _flush(current: list[str], statements: list[str]) -> None:
    statement = "".join(current).strip()
    current.clear()
    if statement and _has_code(statement):
        statements.append(statement)


def _has_code(statement: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.DOTALL)
    return bool(without_comments.strip())
