"""The clustered-broker checks of `fintegrate doctor`: each node, membership, quorum replicas.

They run when FINTEGRATE_RABBITMQ_URL lists several nodes or tenant queues are quorum
queues; a single classic broker is covered by the plain ``rabbitmq`` check.
"""

from __future__ import annotations

from typing import Any

from fintegrate_cli._doctor_checks import FAIL, OK, WARN, Check, failure_reason, timed
from service.config import Settings
from service.messaging.connection import describe_url, open_blocking, split_urls, vhost_of
from service.messaging.operate.management import ManagementClient

NODE_TIMEOUT_SECONDS = 2.0
QUORUM_MEMBERS_WANTED = 3
NODE_HINT = "start the node again (scripts/rabbitmq_cluster.sh start-node N locally)"
MANAGEMENT_HINT = "set FINTEGRATE_RABBITMQ_MANAGEMENT_URL (one URL per node) to see the cluster"


def wanted(settings: Settings) -> bool:
    """Whether the cluster checks apply: several nodes listed, or quorum tenant queues."""
    return len(split_urls(settings.rabbitmq_url)) > 1 or settings.queue_type == "quorum"


def cluster_checks(settings: Settings) -> list[Check]:
    """One check per configured node, then membership and quorum replicas when known."""
    found = [node_check(url) for url in split_urls(settings.rabbitmq_url)]
    if not settings.rabbitmq_management_url:
        return [*found, Check("rabbitmq cluster", WARN, "membership unknown", MANAGEMENT_HINT)]
    management = ManagementClient(settings.rabbitmq_management_url, vhost_of(settings.rabbitmq_url))
    with management:
        found.append(timed("rabbitmq cluster", lambda: membership_check(management), NODE_HINT))
        if settings.queue_type == "quorum":
            found.append(timed("quorum queues", lambda: quorum_check(management), NODE_HINT))
    return found


def node_check(url: str) -> Check:
    """An AMQP handshake with this one node."""
    name = f"rabbitmq node {describe_url(url)}"
    try:
        open_blocking(url, connect_timeout=NODE_TIMEOUT_SECONDS).close()
    except Exception as exc:
        return Check(name, WARN, f"unreachable ({failure_reason(exc)})", NODE_HINT)
    return Check(name, OK, "accepts AMQP connections")


def membership_check(management: ManagementClient) -> Check:
    """Every cluster member and whether it runs, as the answering node sees them."""
    nodes = management.nodes()
    listed = ", ".join(f"{n['name']} {'running' if n.get('running') else 'down'}" for n in nodes)
    down = [n["name"] for n in nodes if not n.get("running")]
    detail = f"{len(nodes)} member(s): {listed}"
    if down:
        return Check("rabbitmq cluster", WARN, detail, NODE_HINT)
    if len(nodes) < QUORUM_MEMBERS_WANTED:
        return Check(
            "rabbitmq cluster", WARN, detail, "quorum queues need 3 nodes to survive one loss"
        )
    return Check("rabbitmq cluster", OK, detail)


def quorum_check(management: ManagementClient) -> Check:
    """Quorum queues of the vhost with fewer than 3 members online; a failure when one has
    lost its majority (it accepts nothing until a member returns)."""
    queues = [q for q in management.queues() if q.get("type") == "quorum"]
    if not queues:
        return Check("quorum queues", OK, "no quorum queue in the vhost")
    short = [q for q in queues if online(q) < QUORUM_MEMBERS_WANTED]
    if not short:
        return Check("quorum queues", OK, f"{len(queues)} queue(s), 3+ members online each")
    listed = ", ".join(f"{q['name']}: {online(q)}/{len(q.get('members') or [])}" for q in short)
    leaderless = any(online(q) <= len(q.get("members") or []) // 2 for q in short)
    return Check(
        "quorum queues",
        FAIL if leaderless else WARN,
        f"{len(short)} of {len(queues)} below {QUORUM_MEMBERS_WANTED} members online: {listed}",
        NODE_HINT,
    )


def online(queue: dict[str, Any]) -> int:
    """Members of a quorum queue that are online (the management API's ``online`` list)."""
    return len(queue.get("online") or [])
