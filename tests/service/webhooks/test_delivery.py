"""The delivery process against loopback receivers: headers, signatures, order, retries,
410, Retry-After, the breaker, recover. Real PostgreSQL; receivers are in this process."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.config import Settings
from service.webhooks.delivery.process import WebhookDeliverer
from tests.support.api import assert_envelope
from tests.support.receiver import Received
from tests.support.webhooks import customers_with_events, endpoint_for

PATH = "/webhooks/endpoints"


def sequences_by_customer(received: list[Received]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for item in received:
        body = json.loads(item.body)
        seen.setdefault(body["customer_id"], []).append(body["sequence"])
    return seen


def attempts(client: TestClient, tenant: dict[str, Any], endpoint_id: str, **params: Any) -> Any:
    answer = client.get(f"{PATH}/{endpoint_id}/attempts", params=params, headers=tenant["headers"])
    return assert_envelope(answer, 200)["items"]


def test_every_header_and_a_verifiable_signature(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    deliver: Any,
    engine: Engine,
) -> None:
    receiver = receiver_factory()
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    customers_with_events(client, tenant, customers=1, changes=0)
    deliver()
    (item,) = receiver.wait_for(1)
    body = json.loads(item.body)
    assert item.headers["webhook-id"] == body["event_id"]
    assert abs(int(item.headers["webhook-timestamp"]) - time.time()) < 120
    assert item.headers["webhook-signature"].startswith("v1,")
    assert item.headers["x-fintegrate-sequence"] == str(body["sequence"]) == "1"
    assert item.headers["content-type"] == "application/json"
    assert body["event_type"] == "customer_creation"
    assert body["consumer"]["name"] == tenant["name"]
    assert Webhook(endpoint["secret"]).verify(item.body, item.headers) == body
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(item.body, item.headers)
    with engine.connect() as connection:
        receipt = connection.execute(
            text("SELECT status FROM consumer_event_receipts WHERE event_id = :e"),
            {"e": body["event_id"]},
        ).scalar_one()
        state = connection.execute(
            text("SELECT deliver_status FROM customer_events WHERE event_id = :e"),
            {"e": body["event_id"]},
        ).scalar_one()
    assert (receipt, state) == ("processed", "delivered")
    (attempt,) = attempts(client, tenant, endpoint["endpoint_id"])
    assert attempt["status"] == "succeeded" and attempt["response_status"] == 200
    assert attempt["response_body"] == "ok"


def test_rotation_signs_with_both_secrets_during_the_grace(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    receiver = receiver_factory()
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    rotated = assert_envelope(
        client.post(f"{PATH}/{endpoint['endpoint_id']}/rotate-secret", headers=tenant["headers"]),
        200,
    )
    customers_with_events(client, tenant, customers=1, changes=0)
    deliver()
    (item,) = receiver.wait_for(1)
    assert len(item.headers["webhook-signature"].split(" ")) == 2
    Webhook(endpoint["secret"]).verify(item.body, item.headers)
    Webhook(rotated["secret"]).verify(item.body, item.headers)


def test_rotation_without_grace_signs_with_the_new_secret_only(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    deliver: Any,
    app: Any,
    settings: Any,
) -> None:
    app.state.settings = settings.updated({"webhook_secret_grace_seconds": 0})
    receiver = receiver_factory()
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    rotated = client.post(
        f"{PATH}/{endpoint['endpoint_id']}/rotate-secret", headers=tenant["headers"]
    ).json()["data"]
    time.sleep(0.05)
    customers_with_events(client, tenant, customers=1, changes=0)
    deliver()
    (item,) = receiver.wait_for(1)
    Webhook(rotated["secret"]).verify(item.body, item.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint["secret"]).verify(item.body, item.headers)


def test_event_type_filter(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    receiver = receiver_factory()
    tenant = create_consumer()
    endpoint_for(client, tenant, receiver, event_types=["customer_status_change"])
    customers_with_events(client, tenant, customers=2, changes=1)
    deliver()
    received = receiver.wait_for(2)
    time.sleep(0.3)
    assert len(receiver.received) == 2
    assert {json.loads(item.body)["event_type"] for item in received} == {"customer_status_change"}


def flaky(failures_per_event: int) -> Callable[[Received, int], tuple[int, dict[str, str], bytes]]:
    """500 for the first ``failures_per_event`` POSTs of every event, then 200."""
    seen: dict[str, int] = {}

    def respond(item: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        event_id = item.headers["webhook-id"]
        seen[event_id] = seen.get(event_id, 0) + 1
        if seen[event_id] <= failures_per_event:
            return 500, {}, b"boom"
        return 200, {}, b"ok"

    return respond


def test_a_flaky_endpoint_gets_every_event_each_customer_in_order(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    receiver = receiver_factory(flaky(2))
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    made = customers_with_events(client, tenant, customers=3, changes=3)
    deliver(webhook_breaker_failures=1000)
    received = receiver.wait_for(3 * 3 * 4)
    delivered = [item for item in received if item.headers["webhook-id"]]
    firsts: dict[str, list[int]] = {}
    for item in delivered:
        body = json.loads(item.body)
        order = firsts.setdefault(body["customer_id"], [])
        if body["sequence"] not in order:
            order.append(body["sequence"])
    assert firsts == made
    failed = attempts(client, tenant, endpoint["endpoint_id"], limit=200)
    assert sum(1 for a in failed if a["status"] == "retrying") == 2 * 12
    assert sum(1 for a in failed if a["status"] == "succeeded") == 12
    assert all(
        a["response_status"] == 500 and a["response_body"] == "boom"
        for a in failed
        if a["status"] == "retrying"
    )


def test_retries_give_up_after_the_schedule_and_recover_sends_again(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    failing = [True]

    def respond(item: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        return (500, {}, b"down") if failing[0] else (200, {}, b"ok")

    receiver = receiver_factory(respond)  # schedule 0.2,0.2,0.2: 4 attempts, all fail
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    made = customers_with_events(client, tenant, customers=1, changes=1)
    deliver(webhook_breaker_failures=1000)
    given_up = attempts(client, tenant, endpoint["endpoint_id"], status="failed")
    assert len(given_up) == 2 and {a["attempt_number"] for a in given_up} == {4}
    failing[0] = False
    recovered = assert_envelope(
        client.post(
            f"{PATH}/{endpoint['endpoint_id']}/recover",
            json={"since": "2000-01-01T00:00:00Z"},
            headers=tenant["headers"],
        ),
        200,
    )
    assert recovered["queued"] == 3  # the two given up, and the consumer_created event
    before = len(receiver.received)
    deliver()
    after = sequences_by_customer(receiver.received[before:])
    assert after.pop(None) == [1]  # type: ignore[call-overload]
    assert after == made
    assert all(
        a["status"] == "succeeded"
        for a in attempts(client, tenant, endpoint["endpoint_id"], limit=200)[-2:]
    )


def test_410_disables_the_endpoint_with_an_audit_row(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    deliver: Any,
    engine: Engine,
) -> None:
    receiver = receiver_factory(lambda item, index: (410, {}, b"gone"))
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    customers_with_events(client, tenant, customers=2, changes=0)
    deliver(webhook_max_in_flight_per_endpoint=1)
    time.sleep(0.5)
    assert len(receiver.received) == 1  # disabled at the first 410: nothing more is sent
    shown = assert_envelope(
        client.get(f"{PATH}/{endpoint['endpoint_id']}", headers=tenant["headers"]), 200
    )
    assert shown["status"] == "disabled" and "410" in shown["disabled_reason"]
    with engine.connect() as connection:
        audit = connection.execute(
            text(
                "SELECT count(*) FROM audit_log WHERE action = 'webhook_endpoint_disabled'"
                " AND consumer_id = :c"
            ),
            {"c": tenant["consumer_id"]},
        ).scalar_one()
    assert audit == 1


def test_retry_after_is_honoured(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    def respond(item: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        return (429, {"Retry-After": "2"}, b"slow down") if index == 0 else (200, {}, b"ok")

    receiver = receiver_factory(respond)
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    customers_with_events(client, tenant, customers=1, changes=0)
    deliver(webhook_breaker_failures=1000)
    first, second = receiver.wait_for(2)
    assert second.at - first.at >= 1.9  # the schedule alone would retry after 0.2 s
    (retrying, succeeded) = attempts(client, tenant, endpoint["endpoint_id"])
    assert retrying["response_status"] == 429 and succeeded["status"] == "succeeded"


def test_the_breaker_pauses_a_failing_endpoint_then_probes_it(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    receiver = receiver_factory(lambda item, index: (500, {}, b"down"))
    healthy = receiver_factory()
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    endpoint_for(client, tenant, healthy)
    customers_with_events(client, tenant, customers=6, changes=0)
    started = time.monotonic()
    deliver(
        until=lambda: len(healthy.received) == 6 and time.monotonic() - started > 5,
        webhook_breaker_failures=2,
        webhook_breaker_pause_seconds=3.0,
        webhook_retry_schedule="0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1",
    )
    assert len(healthy.received) == 6  # the failing endpoint holds back only itself
    tried = attempts(client, tenant, endpoint["endpoint_id"], limit=200)
    # Unpaused, 6 customers x 9 attempts at 0.1 s would all be made in the 5 s; the breaker
    # opened after 2 failures and then let one probe through per 3 s pause.
    assert 2 <= len(tried) <= 2 + 6 + 2, [a["started_at"] for a in tried]
    probes = sorted(a["started_at"] for a in tried)[2:]
    assert probes, "the paused endpoint was probed"


def test_a_disabled_tenants_deliveries_wait_until_it_is_enabled(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    deliver: Any,
    admin_headers: dict[str, str],
) -> None:
    receiver = receiver_factory()
    tenant = create_consumer()
    endpoint_for(client, tenant, receiver)
    customers_with_events(client, tenant, customers=1, changes=0)
    path = f"/consumer/data/{tenant['consumer_id']}"
    assert_envelope(client.patch(path, json={"status": "disabled"}, headers=admin_headers), 200)
    started = time.monotonic()
    deliver(until=lambda: time.monotonic() - started > 2)
    assert receiver.received == []
    assert_envelope(client.patch(path, json={"status": "active"}, headers=admin_headers), 200)
    deliver()
    assert len(receiver.wait_for(1)) == 1


def test_an_endpoint_failing_past_the_disable_window_is_disabled_with_an_audit_row(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    deliver: Any,
    engine: Engine,
) -> None:
    receiver = receiver_factory(lambda item, index: (500, {}, b"down"))
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    with engine.begin() as connection:  # it has been failing for 121 hours already
        connection.execute(
            text(
                "UPDATE webhook_endpoints SET consecutive_failures = 3,"
                " failing_since = now() - interval '121 hours' WHERE endpoint_id = :e"
            ),
            {"e": endpoint["endpoint_id"]},
        )
    customers_with_events(client, tenant, customers=1, changes=0)
    deliver(webhook_breaker_failures=1000)  # ends once the endpoint is no longer enabled
    shown = assert_envelope(
        client.get(f"{PATH}/{endpoint['endpoint_id']}", headers=tenant["headers"]), 200
    )
    assert (shown["status"], shown["disabled_reason"]) == ("disabled", "failing")
    assert len(receiver.received) == 1
    with engine.connect() as connection:
        detail = connection.execute(
            text(
                "SELECT detail_json FROM audit_log WHERE action = 'webhook_endpoint_disabled'"
                " AND consumer_id = :c"
            ),
            {"c": tenant["consumer_id"]},
        ).scalar_one()
    assert detail["reason"] == "failing" and detail["failing_for_hours"] == 120


class PeakInFlight:
    """A responder that answers 200 after ``seconds`` and keeps the most POSTs in flight."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.busy, self.peak = seconds, 0, 0
        self._lock = threading.Lock()

    def __call__(self, item: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.busy += 1
            self.peak = max(self.peak, self.busy)
        time.sleep(self.seconds)
        with self._lock:
            self.busy -= 1
        return 200, {}, b"ok"


def test_the_per_endpoint_in_flight_cap_holds(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    slow = PeakInFlight(0.3)
    receiver = receiver_factory(slow)
    tenant = create_consumer()
    endpoint_for(client, tenant, receiver)
    customers_with_events(client, tenant, customers=8, changes=0)
    deliver(webhook_max_in_flight_per_endpoint=2)
    assert len(receiver.received) == 8
    assert slow.peak == 2  # customers in parallel, never more than the cap


def test_a_refused_connection_is_retried_and_its_error_recorded(
    client: TestClient, create_consumer: Callable[..., Any], deliver: Any, engine: Engine
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tenant = create_consumer()
    created = client.post(
        PATH, json={"url": f"http://127.0.0.1:{port}/hook"}, headers=tenant["headers"]
    )
    endpoint = assert_envelope(created, 201)
    customers_with_events(client, tenant, customers=1, changes=0)
    deliver(webhook_breaker_failures=1000)  # 4 attempts on 0.2 s delays, then failed
    tried = attempts(client, tenant, endpoint["endpoint_id"])
    assert [a["status"] for a in tried] == ["retrying", "retrying", "retrying", "failed"]
    assert all(a["response_status"] is None and "Connect" in a["error"] for a in tried)
    assert [a["next_attempt_at"] is None for a in tried] == [False, False, False, True]


def test_redirects_are_not_followed_and_bodies_are_cut_at_4_kib(
    client: TestClient, create_consumer: Callable[..., Any], receiver_factory: Any, deliver: Any
) -> None:
    def redirect(item: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        if index == 0:
            return 302, {"Location": "http://127.0.0.1:9/elsewhere"}, b"x" * 10_000
        return 200, {}, b"ok"

    receiver = receiver_factory(redirect)
    tenant = create_consumer()
    endpoint = endpoint_for(client, tenant, receiver)
    customers_with_events(client, tenant, customers=1, changes=0)
    deliver(webhook_breaker_failures=1000)
    first, second = attempts(client, tenant, endpoint["endpoint_id"])
    assert (first["status"], first["response_status"]) == ("retrying", 302)
    assert first["response_body"] == "x" * 4096
    assert second["status"] == "succeeded"
    assert [item.path for item in receiver.received] == ["/hook", "/hook"]


def test_outcomes_recorded_in_batches_receipt_each_event_once(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    deliver: Any,
    engine: Engine,
) -> None:
    """Two endpoints get the same events: a turn records both answers to one event and
    several events of one customer together; each event is receipted once, delivered, and
    its customer's last delivered sequence is the highest."""
    tenant = create_consumer()
    receivers = [receiver_factory(), receiver_factory()]
    for receiver in receivers:
        endpoint_for(client, tenant, receiver)
    made = customers_with_events(client, tenant, customers=3, changes=2)
    deliverer = deliver()
    assert deliverer.totals.delivered == 18
    assert deliverer.totals.lost_claims == 0
    for receiver in receivers:
        assert sequences_by_customer(receiver.received) == made
    with engine.connect() as connection:
        receipts = connection.execute(
            text(
                "SELECT e.event_id, count(r.event_id) AS receipts, e.deliver_status"
                " FROM customer_events e LEFT JOIN consumer_event_receipts r"
                "   ON r.event_id = e.event_id AND r.status = 'processed'"
                " WHERE e.consumer_id = :c AND e.customer_id IS NOT NULL"
                " GROUP BY e.event_id, e.deliver_status"
            ),
            {"c": tenant["consumer_id"]},
        ).all()
        last = dict(
            connection.execute(
                text(
                    "SELECT d.aggregate_id::text, e.sequence FROM delivered_sequences d"
                    " JOIN customer_events e ON e.event_id = d.event_id"
                    " WHERE d.consumer_id = :c AND e.customer_id IS NOT NULL"
                ),
                {"c": tenant["consumer_id"]},
            ).all()
        )
        highest = dict(
            connection.execute(
                text(
                    "SELECT customer_id::text, max(sequence) FROM customer_events"
                    " WHERE consumer_id = :c AND customer_id IS NOT NULL GROUP BY customer_id"
                ),
                {"c": tenant["consumer_id"]},
            ).all()
        )
    assert len(receipts) == 9
    assert {(row.receipts, row.deliver_status) for row in receipts} == {(1, "delivered")}
    assert last == highest


def test_two_deliverers_keep_the_cap_and_each_customers_order(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    deliver: Any,
    settings: Settings,
    engine: Engine,
) -> None:
    """Slots free on the answer and a customer's next event follows its 2xx, yet with two
    processes' worth of deliverers the endpoint never has more than the cap in flight."""
    slow = PeakInFlight(0.05)
    receiver = receiver_factory(slow)
    tenant = create_consumer()
    endpoint_for(client, tenant, receiver)
    made = customers_with_events(client, tenant, customers=4, changes=3)
    capped = settings.updated({"webhook_max_in_flight_per_endpoint": 2})
    stop = threading.Event()
    other = WebhookDeliverer.from_settings(capped, engine, stop)
    worker = threading.Thread(target=other.run, daemon=True)
    worker.start()
    try:
        deliver(webhook_max_in_flight_per_endpoint=2)
    finally:
        stop.set()
        worker.join(timeout=30)
        other.close()
    assert sequences_by_customer(receiver.received) == made
    assert slow.peak == 2
