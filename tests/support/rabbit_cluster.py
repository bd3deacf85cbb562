"""The local three-node RabbitMQ cluster of scripts/rabbitmq_cluster.sh, for tests.

``RabbitCluster.ensure()`` starts it unless it already runs (then it is left running at the
end); each test gets a vhost of its own on it, and takes its ``turn`` (a lock shared by
the pytest workers) since killing nodes is seen by everyone on the cluster. Nodes are
killed with ``kill -9`` and restarted through the script, which only ever touches its own
nodes and directory.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.outbox import wait_until

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq_cluster.sh"
USER, PASSWORD = "fintegrate_user", "fintegrate_pass"
AMQP_BASE = int(os.environ.get("FINTEGRATE_CLUSTER_AMQP_BASE", "5791"))
MANAGEMENT_BASE = int(os.environ.get("FINTEGRATE_CLUSTER_MANAGEMENT_BASE", "15791"))
NODES = (1, 2, 3)
SCRIPT_TIMEOUT_SECONDS = 420
CLUSTER_DIR = Path(os.environ.get("FINTEGRATE_CLUSTER_DIR", "/tmp/fintegrate-rabbit-cluster"))
USERS = CLUSTER_DIR / "test-sessions"
STARTED_BY_TESTS = CLUSTER_DIR / "started-by-tests"
SETUP_LOCK = Path("/tmp/fintegrate-rabbit-cluster.setup.lock")
TURN_LOCK = Path("/tmp/fintegrate-rabbit-cluster.turn.lock")


def node_name(node: int) -> str:
    return f"fintegrate-c{node}@localhost"


def amqp_port(node: int) -> int:
    return AMQP_BASE + node - 1


def management_url(node: int, credentials: bool = True) -> str:
    login = f"{USER}:{PASSWORD}@" if credentials else ""
    return f"http://{login}127.0.0.1:{MANAGEMENT_BASE + node - 1}"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (blocking): one pytest worker at a time."""
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class RabbitCluster:
    """Three clustered nodes on 127.0.0.1, shared by the pytest workers of a run.

    Each worker registers itself; a cluster that tests started is stopped by the last
    worker to leave, one that was already running is left running.
    """

    @classmethod
    def ensure(cls) -> RabbitCluster:
        with exclusive(SETUP_LOCK):
            USERS.mkdir(parents=True, exist_ok=True)
            (USERS / str(os.getpid())).touch()
            if run_script("status").returncode != 0:
                result = run_script("start")
                if result.returncode != 0:
                    raise RuntimeError(
                        f"rabbitmq_cluster.sh start failed:\n{result.stderr[-3000:]}"
                    )
                STARTED_BY_TESTS.touch()
        return cls()

    def stop(self) -> None:
        with exclusive(SETUP_LOCK):
            (USERS / str(os.getpid())).unlink(missing_ok=True)
            others = [user for user in USERS.iterdir() if Path(f"/proc/{user.name}").exists()]
            if not others and STARTED_BY_TESTS.exists():
                run_script("stop")

    @contextmanager
    def turn(self) -> Iterator[None]:
        """One test at a time kills nodes: the others would see them down."""
        with exclusive(TURN_LOCK):
            yield

    def amqp_urls(self, vhost: str) -> str:
        return ",".join(f"amqp://{USER}:{PASSWORD}@127.0.0.1:{amqp_port(n)}/{vhost}" for n in NODES)

    def management_urls(self) -> str:
        return ",".join(management_url(n) for n in NODES)

    def kill(self, node: int) -> None:
        """``kill -9`` of the node's Erlang VM; its data stays for the restart."""
        result = run_script("kill", str(node))
        assert result.returncode == 0, result.stderr

    def restart(self, node: int) -> None:
        """Start the node again and wait until it runs (it rejoins the cluster by itself)."""
        result = run_script("start-node", str(node))
        assert result.returncode == 0, result.stderr

    def running_members(self) -> set[str]:
        """The members the management API of any answering node reports running."""
        for node in NODES:
            try:
                answer = httpx.get(
                    f"{management_url(node, credentials=False)}/api/nodes",
                    auth=(USER, PASSWORD),
                    timeout=5,
                )
            except httpx.HTTPError:
                continue
            if answer.status_code == 200:
                return {n["name"] for n in answer.json() if n.get("running")}
        return set()

    def wait_all_running(self, timeout: float = 180) -> bool:
        everyone = {node_name(n) for n in NODES}
        return wait_until(lambda: self.running_members() == everyone, timeout, interval=1.0)

    @contextmanager
    def vhost(self) -> Iterator[str]:
        """A fresh vhost with full permissions for the project's user; deleted afterwards
        with the tenant users created in it."""
        name = f"ftc_{uuid.uuid4().hex[:12]}"
        with httpx.Client(base_url=management_url(1, False), auth=(USER, PASSWORD)) as api:
            api.put(f"/api/vhosts/{name}", timeout=30).raise_for_status()
            api.put(
                f"/api/permissions/{name}/{USER}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
                timeout=30,
            ).raise_for_status()
            try:
                yield name
            finally:
                api.delete(f"/api/vhosts/{name}", timeout=60)
                for user in api.get("/api/users", timeout=30).json():
                    if user["name"].endswith(f".{name}"):
                        api.delete(f"/api/users/{user['name']}", timeout=30)


def broker_node_of(pid: int) -> set[int]:
    """The cluster nodes process ``pid`` holds an established AMQP connection to.

    Read from /proc: the process's socket inodes, matched against the kernel's TCP table.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = {amqp_port(n): n for n in NODES}
    nodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        established = fields[3] == "01"
        if established and fields[9] in inodes and remote_port in ports:
            nodes.add(ports[remote_port])
    return nodes
