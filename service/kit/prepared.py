"""Statements PREPAREd once per database session, then EXECUTEd by name.

Planning a large statement can cost more than running it: the relay's due-heads read is
planned in about 1.8 ms and runs in 0.2 ms on a trickle, and it runs on every event's
path. A PREPAREd statement is planned once per session (PostgreSQL replans it by itself
after DDL or new statistics on what it reads). It belongs to its session, so the names
prepared are kept in the DBAPI connection's ``info``, which the pool clears when it
replaces that connection: a new connection prepares again.

The statement is written as usual, with ``:name`` binds; ``parameters`` gives each bind's
SQL type in order, and must name exactly the statement's binds (checked when built), so a
bind added to the SQL without a type fails at import, not in production.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, CursorResult, TextClause, text
from sqlalchemy.dialects.postgresql import psycopg2

PREPARED_KEY = "fintegrate_prepared"
_PYFORMAT_BIND = re.compile(r"%\((\w+)\)s")


class PreparedStatement:
    """``statement`` as each session's prepared statement ``name``; ``before`` is sent
    ahead of every EXECUTE in the same round trip (``SET LOCAL`` planner hints, a lock)."""

    def __init__(
        self,
        name: str,
        statement: TextClause,
        parameters: Sequence[tuple[str, str]],  # (bind name, SQL type), in $n order
        before: str = "",
    ) -> None:
        self.name = name
        numbered = _numbered(statement, [bind for bind, _ in parameters])
        types = ", ".join(kind for _, kind in parameters)
        arguments = ", ".join(f"CAST(:{bind} AS {kind})" for bind, kind in parameters)
        prefix = f"{before.strip().rstrip(';')}; " if before.strip() else ""
        self._prepare = text(f"PREPARE {name} ({types}) AS {numbered}")
        self._execute = text(f"{prefix}EXECUTE {name} ({arguments})")
        self._explain = text(f"{prefix}EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name} ({arguments})")

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Prepare on this session if it has not been yet, then execute with ``params``."""
        self._prepared_on(connection)
        return connection.execute(self._execute, dict(params))

    def explain(self, connection: Connection, params: Mapping[str, Any]) -> dict[str, Any]:
        """EXPLAIN ANALYZE of the EXECUTE, after ``before``: the plan the session runs."""
        self._prepared_on(connection)
        plan: dict[str, Any] = connection.execute(self._explain, dict(params)).scalar_one()[0]
        return plan

    def _prepared_on(self, connection: Connection) -> None:
        prepared: set[str] = connection.info.setdefault(PREPARED_KEY, set())
        if self.name not in prepared:
            connection.execute(self._prepare)
            prepared.add(self.name)


def _numbered(statement: TextClause, order: Sequence[str]) -> str:
    """The statement's SQL with each ``:name`` bind as ``$n`` (n: its place in ``order``)."""
    compiled = statement.compile(dialect=psycopg2.dialect())
    binds = set(compiled.params)
    if binds != set(order) or len(order) != len(set(order)):
        raise ValueError(f"parameters {sorted(order)} do not match the binds {sorted(binds)}")
    numbered = _PYFORMAT_BIND.sub(lambda m: f"${order.index(m.group(1)) + 1}", compiled.string)
    return numbered.replace("%%", "%").replace(":", r"\:")
