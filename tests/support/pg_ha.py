"""A private PostgreSQL primary and streaming standby of the installed server, for tests.

Built with the installed binaries (initdb, pg_basebackup -R, pg_ctl) under a directory of
its own in /tmp, on loopback ports 5491 (primary) and 5492 (standby), run as the
``postgres`` OS user (PostgreSQL refuses to run as root). Replication is synchronous
(``synchronous_standby_names = '*'``): a commit is acknowledged only once the standby has
it, so a promoted standby holds every committed event. The system cluster on 5432 is never
touched. Every process is ended by the pid its own pid file names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(os.environ.get("FINTEGRATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PRIMARY_PORT, STANDBY_PORT = 5491, 5492
USER, PASSWORD, DATABASE = "fintegrate_user", "fintegrate_pass", "fintegrate_ha"
OS_USER = "postgres"
COMMAND_TIMEOUT_SECONDS = 120

PRIMARY_CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 5
hot_standby = on
fsync = off
full_page_writes = on
shared_buffers = 32MB
max_connections = 60
wal_keep_size = 64MB
"""
HBA = """
local all all trust
host all all 127.0.0.1/32 md5
host replication all 127.0.0.1/32 trust
"""


def run_as_postgres(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", OS_USER, "--", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=check,
    )


@dataclass
class PgNode:
    """One data directory and its port."""

    data: Path
    port: int
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data.with_suffix(".log")

    def start(self) -> None:
        run_as_postgres(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", f"-p {self.port}", "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            run_as_postgres(
                str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                check=False,
            )  # fmt: skip

    def restart_fast(self) -> None:
        """``pg_ctl restart -m fast``: sessions are ended, the server comes back."""
        run_as_postgres(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast",
            "-o", f"-p {self.port}", "-w", "-t", "60", "restart",
        )  # fmt: skip

    def promote(self) -> None:
        run_as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")

    def kill_9(self) -> None:
        """SIGKILL the postmaster and each of its backends (pids from /proc, by parent)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        children = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _parent_of(entry) == pid
        ]
        for victim in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"


def _parent_of(entry: Path) -> int | None:
    try:
        stat = (entry / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


class PgPair:
    """A primary on 5491 and its synchronous streaming standby on 5492."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fintegrate-pg-ha-"))
        shutil.chown(self.root, OS_USER)
        self.sockets = self.root / "sockets"
        self.primary = PgNode(self.root / "primary", PRIMARY_PORT)
        self.standby = PgNode(self.root / "standby", STANDBY_PORT)

    @property
    def multi_host_url(self) -> str:
        """The libpq multi-host URL the processes use: whichever node accepts writes."""
        hosts = f"127.0.0.1:{PRIMARY_PORT},127.0.0.1:{STANDBY_PORT}"
        return f"postgresql://{USER}:{PASSWORD}@{hosts}/{DATABASE}?target_session_attrs=read-write"

    def start(self) -> PgPair:
        self.sockets.mkdir()
        shutil.chown(self.sockets, OS_USER)
        run_as_postgres(
            str(BIN / "initdb"), "-D", str(self.primary.data), "-U", "postgres",
            "--auth-local=trust", "--auth-host=md5", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        conf = self.primary.data / "postgresql.conf"
        with conf.open("a") as extra:
            extra.write(PRIMARY_CONF.format(sockets=self.sockets))
        (self.primary.data / "pg_hba.conf").write_text(HBA)
        self.primary.start()
        self._psql(
            PRIMARY_PORT,
            f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}' CREATEDB",
            f"CREATE DATABASE {DATABASE} OWNER {USER}",
        )
        run_as_postgres(
            str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(PRIMARY_PORT),
            "-U", "postgres", "-D", str(self.standby.data), "-R", "-X", "stream",
        )  # fmt: skip
        self.standby.start()
        # synchronous only now: with no standby connected a commit would wait forever
        self._psql(
            PRIMARY_PORT,
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        )
        return self

    def replicating(self) -> bool:
        """The standby streams synchronously from the primary."""
        result = self._psql(PRIMARY_PORT, "SELECT sync_state FROM pg_stat_replication", check=False)
        return result.returncode == 0 and "sync" in result.stdout

    def stop(self) -> None:
        for node in (self.standby, self.primary):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _psql(
        self, port: int, *statements: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = [str(BIN / "psql"), "-h", str(self.sockets), "-p", str(port), "-U", "postgres"]
        args += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qtA"]
        for statement in statements:
            args += ["-c", statement]
        return run_as_postgres(*args, check=check)
