"""POST /events/resend and /events/redeliver select exactly what their filters describe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings
from tests.support.api import Consumer, post_data
from tests.support.outbox import drain_queue, event_rows, insert_events, set_state
from tests.support.tcp_proxy import TcpProxy


def snapshot(engine: Engine, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    return {key: tuple(row) for key, row in event_rows(engine, ids).items()}


def resend_fixture(engine: Engine, tenant: Consumer, other: Consumer) -> dict[str, list[str]]:
    """One event matching the default filters, and one failing each filter."""
    ids = {
        "match": insert_events(engine, tenant["consumer_id"], 1),
        "too_old": insert_events(engine, tenant["consumer_id"], 1, age_days=10),
        "tried_enough": insert_events(engine, tenant["consumer_id"], 1),
        "other_type": insert_events(engine, tenant["consumer_id"], 1, "customer_deletion"),
        "published": insert_events(engine, tenant["consumer_id"], 1),
        "other_tenant": insert_events(engine, other["consumer_id"], 1),
    }
    set_state(engine, ids["tried_enough"], publish_try_count=5)
    set_state(engine, ids["published"], publish_status="published")
    return ids


FILTERS = {"period_in_days": 7, "max_try_count": 5, "event_types": ["customer_creation"]}


def test_resend_dry_run_selects_exactly_and_changes_nothing(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant, other = create_consumer(), create_consumer()
    ids = resend_fixture(engine, tenant, other)
    every = [event_id for group in ids.values() for event_id in group]
    before = snapshot(engine, every)
    data = post_data(client, "/events/resend", tenant["headers"], **FILTERS, dry_run=True)
    assert data["matched"] == 1 and data["republished"] == 0 and data["failed"] == 0
    assert data["event_ids"] == ids["match"]
    assert data["groups"] == [
        {"consumer_name": tenant["name"], "event_type": "customer_creation", "count": 1}
    ]
    assert snapshot(engine, every) == before


def test_resend_republishes_exactly_the_selection(
    client: TestClient,
    engine: Engine,
    settings: Settings,
    create_consumer: Callable[..., Consumer],
) -> None:
    tenant, other = create_consumer(), create_consumer()
    ids = resend_fixture(engine, tenant, other)
    untouched = [i for key, group in ids.items() if key != "match" for i in group]
    before = snapshot(engine, untouched)
    data = post_data(client, "/events/resend", tenant["headers"], **FILTERS)
    assert (data["matched"], data["republished"], data["failed"]) == (1, 1, 0)
    [row] = event_rows(engine, ids["match"]).values()
    assert row.publish_status == "published" and row.publish_try_count == 1
    assert snapshot(engine, untouched) == before
    messages = drain_queue(settings.broker.url, tenant["queue_name"])
    assert [properties.message_id for _, properties, _ in messages] == ids["match"]
    assert messages[0][1].headers == {
        "x-fintegrate-republished": "resend",
        "x-fintegrate-sequence": 1,
    }


def test_redeliver_selects_published_but_undelivered(
    client: TestClient,
    engine: Engine,
    settings: Settings,
    admin_headers: dict[str, str],
    create_consumer: Callable[..., Consumer],
) -> None:
    tenant = create_consumer()
    pending = insert_events(engine, tenant["consumer_id"], 1)
    undelivered = insert_events(engine, tenant["consumer_id"], 2)
    failed = insert_events(engine, tenant["consumer_id"], 1)
    delivered = insert_events(engine, tenant["consumer_id"], 1)
    set_state(
        engine, undelivered + failed + delivered, publish_status="published", publish_try_count=1
    )
    set_state(engine, failed, deliver_status="failed")
    set_state(engine, delivered, deliver_status="delivered")
    scope = {"consumer_name": tenant["name"]}
    preview = post_data(client, "/events/redeliver", admin_headers, **scope, dry_run=True)
    assert sorted(preview["event_ids"]) == sorted(undelivered + failed)
    data = post_data(client, "/events/redeliver", admin_headers, **scope)
    assert (data["matched"], data["republished"], data["failed"]) == (3, 3, 0)
    rows = event_rows(engine, pending + undelivered + failed + delivered)
    assert [rows[i].publish_try_count for i in undelivered + failed] == [2, 2, 2]
    assert rows[pending[0]].publish_status == "pending"
    assert rows[delivered[0]].publish_try_count == 1
    received = drain_queue(settings.broker.url, tenant["queue_name"])
    assert sorted(p.message_id for _, p, _ in received) == sorted(undelivered + failed)
    limited = post_data(client, "/events/redeliver", admin_headers, **scope, max_try_count=2)
    assert limited["matched"] == 0


def test_chunks_continue_with_the_cursor(
    client: TestClient, engine: Engine, settings: Settings, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    ids = insert_events(engine, tenant["consumer_id"], 5)
    set_state(engine, ids, publish_status="published")
    seen, cursor, calls = 0, None, 0
    while True:
        data = post_data(client, "/events/redeliver", tenant["headers"], limit=2, cursor=cursor)
        seen, cursor, calls = seen + data["republished"], data["next_cursor"], calls + 1
        if cursor is None:
            break
    assert (seen, calls) == (5, 3)
    assert len(drain_queue(settings.broker.url, tenant["queue_name"])) == 5


def test_scope_rules(
    client: TestClient, admin_headers: dict[str, str], create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    forbidden = client.post(
        "/events/resend", json={"consumer_name": tenant["name"]}, headers=tenant["headers"]
    )
    assert forbidden.status_code == 403
    unknown = client.post(
        "/events/resend", json={"consumer_name": "no_such_consumer_x"}, headers=admin_headers
    )
    assert unknown.status_code == 404
    bad_type = client.post(
        "/events/resend", json={"event_types": ["customer.creation"]}, headers=tenant["headers"]
    )
    assert bad_type.status_code == 422
    assert client.post("/events/resend", json={}).status_code == 401


def test_broker_down_answers_503_and_changes_nothing(
    settings: Settings,
    engine: Engine,
    create_consumer: Callable[..., Consumer],
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    tenant = create_consumer()
    ids = insert_events(engine, tenant["consumer_id"], 2)
    before = snapshot(engine, ids)
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    proxy.refuse()
    broken = settings.updated({"rabbitmq_url": proxy.url_for(settings.broker.url)})
    with TestClient(create_app(broken)) as broken_client:
        response = broken_client.post("/events/resend", json={}, headers=tenant["headers"])
    assert response.status_code == 503
    assert response.json()["data"] == {}
    assert "nothing was republished" in response.json()["detail"]["status_description"]
    assert snapshot(engine, ids) == before
