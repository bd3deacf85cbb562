"""The migration runner: plain SQL files applied in name order, each in its own transaction.

API: ``discover``, ``plan``, ``apply``, ``status``, ``verify``, ``new_migration``.
Concurrent runs are serialised with a Postgres advisory lock taken with a timeout.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from service.kit.errors import first_line
from service.migrations.sqlsplit import split_statements, strip_comments

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
FILENAME_PATTERN = re.compile(r"^(?P<version>\d{8}_\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")
ADVISORY_LOCK_KEY = 0x46494E54  # "FINT"
# The file's own transaction wrapper; the runner supplies the transaction instead.
TRANSACTION_WRAPPER = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END)(\s+(WORK|TRANSACTION))?\s*$", re.IGNORECASE
)

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS migration_history (
    version       TEXT PRIMARY KEY,
    filename      TEXT NOT NULL UNIQUE,
    checksum      TEXT NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    execution_ms  INTEGER NOT NULL CHECK (execution_ms >= 0),
    applied_by    TEXT NOT NULL
)
"""


class MigrationError(Exception):
    """A migration could not be planned or applied; the message names the file."""


@dataclass(frozen=True)
class MigrationFile:
    version: str
    filename: str
    path: Path
    checksum: str

    def statements(self) -> list[str]:
        """The file's statements without its own BEGIN/COMMIT wrapper."""
        statements = split_statements(self.path.read_text(encoding="utf-8"))
        return [s for s in statements if not TRANSACTION_WRAPPER.match(strip_comments(s))]


@dataclass(frozen=True)
class AppliedMigration:
    version: str
    filename: str
    checksum: str
    applied_at: datetime
    execution_ms: int
    applied_by: str


@dataclass(frozen=True)
class MigrationState:
    """One row of ``status``: applied, pending, changed (checksum drift) or missing (file gone)."""

    version: str
    filename: str
    state: str
    applied_at: datetime | None = None
    checksum: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "version": self.version,
            "filename": self.filename,
            "state": self.state,
            "applied_at": self.applied_at.isoformat() if self.applied_at else None,
            "checksum": self.checksum,
        }


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[MigrationFile]:
    """Every migration file in name order; a misnamed ``.sql`` file is an error."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    files = []
    for path in sorted(directory.glob("*.sql")):
        match = FILENAME_PATTERN.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: name must be YYYYMMDD_HHMM_description.sql (lowercase description)"
            )
        files.append(MigrationFile(match["version"], path.name, path, sha256_file(path)))
    versions = [f.version for f in files]
    duplicates = {v for v in versions if versions.count(v) > 1}
    if duplicates:
        raise MigrationError(f"two migration files share version {sorted(duplicates)[0]}")
    return files


def ensure_history(connection: Connection) -> None:
    connection.execute(text(HISTORY_DDL))


def applied_migrations(connection: Connection) -> dict[str, AppliedMigration]:
    exists = connection.execute(text("SELECT to_regclass('migration_history')")).scalar()
    if exists is None:
        return {}
    rows = connection.execute(
        text(
            "SELECT version, filename, checksum, applied_at, execution_ms, applied_by "
            "FROM migration_history ORDER BY version"
        )
    )
    return {row.version: AppliedMigration(*row) for row in rows}


def status(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    """The state of every file and every recorded migration, in version order."""
    files = {f.version: f for f in discover(directory)}
    with engine.connect() as connection:
        applied = applied_migrations(connection)
    states = []
    for version in sorted(files.keys() | applied.keys()):
        file, record = files.get(version), applied.get(version)
        if file is None and record is not None:
            states.append(
                MigrationState(
                    version, record.filename, "missing", record.applied_at, record.checksum
                )
            )
        elif record is None and file is not None:
            states.append(MigrationState(version, file.filename, "pending", None, file.checksum))
        elif file is not None and record is not None:
            state = "applied" if record.checksum == file.checksum else "changed"
            states.append(
                MigrationState(version, file.filename, state, record.applied_at, file.checksum)
            )
    return states


def verify(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    """Recorded migrations whose file changed after it was applied or is gone."""
    return [s for s in status(engine, directory) if s.state in ("changed", "missing")]


def plan(
    engine: Engine, directory: Path = MIGRATIONS_DIR, to_version: str | None = None
) -> list[MigrationFile]:
    """The files ``apply`` would run, in order."""
    return pending_files(engine, discover(directory), to_version)


def wait_for_database(engine: Engine, timeout_seconds: float) -> None:
    """Retry connecting until the database answers or ``timeout_seconds`` pass."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                raise MigrationError(
                    f"database not reachable after {timeout_seconds:g}s: {first_line(exc)}"
                ) from exc
            time.sleep(0.5)


def apply(
    engine: Engine,
    directory: Path = MIGRATIONS_DIR,
    to_version: str | None = None,
    lock_timeout_seconds: float = 30.0,
    applied_by: str | None = None,
) -> list[AppliedMigration]:
    """Apply pending files in order under the advisory lock; returns what was applied."""
    files = discover(directory)
    who = applied_by or default_applied_by()
    with engine.connect() as lock_connection:
        acquire_lock(lock_connection, lock_timeout_seconds)
        try:
            with engine.begin() as connection:
                ensure_history(connection)
            return [
                apply_file(engine, file, who, lock_timeout_seconds)
                for file in pending_files(engine, files, to_version)
            ]
        finally:
            lock_connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            lock_connection.commit()


def default_applied_by() -> str:
    """``user@host`` of this process; the uid when the user has no passwd entry (containers)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def pending_files(
    engine: Engine, files: list[MigrationFile], to_version: str | None
) -> list[MigrationFile]:
    if to_version is not None and to_version not in {f.version for f in files}:
        raise MigrationError(f"--to {to_version}: no migration file has that version")
    with engine.connect() as connection:
        applied = applied_migrations(connection)
    return [
        f
        for f in files
        if f.version not in applied and (to_version is None or f.version <= to_version)
    ]


def acquire_lock(connection: Connection, timeout_seconds: float) -> None:
    """Take the session advisory lock, polling until ``timeout_seconds`` pass."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        got = connection.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}
        ).scalar()
        connection.commit()
        if got:
            return
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"another migration run holds the lock; gave up after {timeout_seconds:g}s "
                "(retry, or raise --lock-timeout)"
            )
        time.sleep(0.1)


def apply_file(
    engine: Engine, file: MigrationFile, applied_by: str, lock_timeout_seconds: float
) -> AppliedMigration:
    """Run one file and record it in one transaction; on error nothing of it remains."""
    started = time.monotonic()
    statements = file.statements()
    with engine.begin() as connection:
        # Waiting for a table lock is bounded; the DDL itself may take as long as it needs.
        connection.exec_driver_sql(
            f"SET LOCAL lock_timeout = '{int(lock_timeout_seconds * 1000)}ms'"
        )
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        # no_parameters: a literal % (LIKE 'a%', RAISE '%') must reach the server untouched.
        raw = connection.execution_options(no_parameters=True)
        for number, statement in enumerate(statements, start=1):
            try:
                raw.exec_driver_sql(statement)
            except DBAPIError as exc:
                raise MigrationError(
                    f"{file.filename}: statement {number} failed: {first_line(exc.orig)} "
                    f"-- in: {summarise(statement)}"
                ) from exc
        elapsed_ms = int((time.monotonic() - started) * 1000)
        connection.execute(
            text(
                "INSERT INTO migration_history "
                "(version, filename, checksum, execution_ms, applied_by) "
                "VALUES (:v, :f, :c, :ms, :by)"
            ),
            {
                "v": file.version,
                "f": file.filename,
                "c": file.checksum,
                "ms": elapsed_ms,
                "by": applied_by,
            },
        )
    return AppliedMigration(
        file.version, file.filename, file.checksum, datetime.now(UTC), elapsed_ms, applied_by
    )


def new_migration(
    description: str, directory: Path = MIGRATIONS_DIR, now: datetime | None = None
) -> Path:
    """Write a correctly named file from the template; returns its path."""
    slug = re.sub(r"[^a-z0-9]+", "_", description.lower()).strip("_")
    if not slug:
        raise MigrationError("description must contain letters or digits")
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M")
    path = directory / f"{stamp}_{slug}.sql"
    if path.exists() or any(p.name.startswith(stamp) for p in directory.glob("*.sql")):
        raise MigrationError(f"a migration with version {stamp} already exists; wait a minute")
    summary = " ".join(description.split())
    path.write_text(TEMPLATE.format(description=summary), encoding="utf-8")
    return path


TEMPLATE = """-- {description}
-- Rollback (manual; archive data before any structural change):
--   CREATE TABLE example_archive AS TABLE example;
--   DROP TABLE IF EXISTS example;
BEGIN;

-- Idempotent forms only: CREATE TABLE IF NOT EXISTS, ADD COLUMN IF NOT EXISTS,
-- CREATE INDEX IF NOT EXISTS, DROP TRIGGER IF EXISTS before CREATE TRIGGER.
-- No foreign keys on base tables; index every UUID reference and queried timestamp.

COMMIT;
"""


def summarise(statement: str, limit: int = 120) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
