"""Split a SQL script into statements, respecting quotes, dollar quotes and comments."""

from __future__ import annotations

import re

# A dollar-quote tag: $$ or $name$ where name does not start with a digit ($1 is a parameter).
DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z_0-9\u0080-\uffff]*)?\$")


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
        return _skip_block_comment(script, i)
    char = script[i]
    if char in ("'", '"'):
        return _skip_quoted(
            script, i, backslash_escapes=char == "'" and _is_escape_string(script, i)
        )
    if char == "$" and not _continues_identifier(script, i):
        match = DOLLAR_TAG.match(script, i)
        if match:
            close = script.find(match.group(), match.end())
            return len(script) if close == -1 else close + len(match.group())
    return i


def _skip_block_comment(script: str, i: int) -> int:
    """Block comments nest in PostgreSQL: ``/* a /* b */ still comment */``."""
    depth, j = 0, i
    while j < len(script):
        if script.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif script.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return len(script)


def _skip_quoted(script: str, i: int, backslash_escapes: bool) -> int:
    """The end of a '...' or "..." literal; a doubled quote (or \\' in E'...') stays inside."""
    quote, j = script[i], i + 1
    while j < len(script):
        if backslash_escapes and script[j] == "\\":
            j += 2
        elif script[j] != quote:
            j += 1
        elif script.startswith(quote * 2, j):
            j += 2
        else:
            return j + 1
    return len(script)


def _is_escape_string(script: str, i: int) -> bool:
    """True for E'...' (backslash escapes), not for a quote after an identifier ending in e."""
    return i > 0 and script[i - 1] in "eE" and not _continues_identifier(script, i - 1)


def _continues_identifier(script: str, i: int) -> bool:
    """True when the character before ``i`` belongs to an identifier (so ``$`` is not a tag)."""
    return i > 0 and (script[i - 1].isalnum() or script[i - 1] in "_$")


def _flush(current: list[str], statements: list[str]) -> None:
    statement = "".join(current).strip()
    current.clear()
    if statement and _has_code(statement):
        statements.append(statement)


def _has_code(statement: str) -> bool:
    return bool(strip_comments(statement).strip())


def strip_comments(statement: str) -> str:
    """``statement`` without its comments; quoted literals are kept intact."""
    kept: list[str] = []
    i = 0
    while i < len(statement):
        end = _skip_literal(statement, i)
        if end > i:
            if not statement.startswith(("--", "/*"), i):
                kept.append(statement[i:end])
            i = end
        else:
            kept.append(statement[i])
            i += 1
    return "".join(kept)
