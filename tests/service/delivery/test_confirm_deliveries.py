"""POST /events/confirm-deliveries: several receipts in one call, each recorded (and
committed) as POST /events/confirm-delivery records one."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.delivery.schemas import MAX_RECEIPTS_PER_CALL
from service.events import repository as events_repository
from tests.support.api import Consumer, assert_envelope, changed_customer, confirm_receipt
from tests.support.outbox import event_rows, insert_events, receipt_count, wait_until

PATH = "/events/confirm-deliveries"
Receipt = tuple[str, str]  # (event_id, status)


def item(event_id: str, status: str = "processed") -> dict[str, Any]:
    return {"event_id": event_id, "status": status, "detail": "handled"}


def confirm_many(client: TestClient, tenant: Consumer, receipts: list[Receipt]) -> httpx.Response:
    body = {"receipts": [item(event_id, status) for event_id, status in receipts]}
    return client.post(PATH, json=body, headers=tenant["headers"])


def recorded(client: TestClient, tenant: Consumer, receipts: list[Receipt]) -> Any:
    """The answer's data; the call must succeed."""
    return assert_envelope(confirm_many(client, tenant, receipts), 200)


def delivery_state(answer: dict[str, Any]) -> tuple[str, str | None, int]:
    return answer["deliver_status"], answer["delivered_at"], answer["deliver_try_count"]


def untouched(engine: Engine, event_id: str) -> bool:
    """No receipt recorded and the event still as created."""
    row = event_rows(engine, [event_id])[event_id]
    state = (row.deliver_status, row.delivered_at, row.deliver_try_count)
    return receipt_count(engine, event_id) == 0 and state == ("pending", None, 0)


def test_receipts_are_recorded_and_answered_in_the_order_sent(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant = create_consumer()
    customer_id, events = changed_customer(client, tenant, create_customer, 2)
    ids = [event["event_id"] for event in events]  # sequences 1, 2, 3
    status_of = dict(zip(ids, ("processed", "received", "failed"), strict=True))
    sent = sorted(ids, reverse=True)  # not the event-id order

    answer = recorded(client, tenant, [(event_id, status_of[event_id]) for event_id in sent])

    assert answer["not_found"] == []
    sent_back = [(i["event_id"], i["status"], i["duplicate"]) for i in answer["items"]]
    assert sent_back == [(event_id, status_of[event_id], False) for event_id in sent]
    for receipt in answer["items"]:
        shown = client.get(f"/events/{receipt['event_id']}", headers=tenant["headers"])
        assert delivery_state(assert_envelope(shown, 200)) == delivery_state(receipt)
    first, second, third = ({i["event_id"]: i for i in answer["items"]}[e] for e in ids)
    assert [delivery_state(first)[::2], delivery_state(second)[::2]] == [("delivered", 1)] * 2
    assert first["delivered_at"] and second["delivered_at"]
    assert delivery_state(third) == ("failed", None, 1)
    last = client.get(
        "/events/last-delivered", params={"customer_id": customer_id}, headers=tenant["headers"]
    )
    expected = {"aggregate_id": customer_id, "sequence": 2, "event_id": ids[1]}
    assert assert_envelope(last, 200) == expected


def test_a_full_call_records_every_receipt_in_the_order_sent(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    event_ids = insert_events(engine, tenant["consumer_id"], MAX_RECEIPTS_PER_CALL)

    answer = recorded(client, tenant, [(event_id, "processed") for event_id in event_ids])

    assert [receipt["event_id"] for receipt in answer["items"]] == event_ids
    rows = event_rows(engine, event_ids).values()
    assert {(row.deliver_status, row.deliver_try_count) for row in rows} == {("delivered", 1)}


def test_a_receipt_repeated_in_a_later_call_is_a_duplicate_and_changes_nothing(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    event_ids = insert_events(engine, tenant["consumer_id"], 2)
    receipts = [(event_id, "processed") for event_id in event_ids]
    first = recorded(client, tenant, receipts)["items"]
    before = {event_id: tuple(row) for event_id, row in event_rows(engine, event_ids).items()}

    again = recorded(client, tenant, receipts)["items"]

    assert [i["duplicate"] for i in first] == [False, False]
    assert [i["duplicate"] for i in again] == [True, True]
    assert [delivery_state(i) for i in again] == [delivery_state(i) for i in first]
    after = {event_id: tuple(row) for event_id, row in event_rows(engine, event_ids).items()}
    assert after == before
    assert [receipt_count(engine, event_id) for event_id in event_ids] == [1, 1]


def test_one_event_twice_in_a_call_is_recorded_like_two_single_calls(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    batched, single = insert_events(engine, tenant["consumer_id"], 2)
    statuses = ["received", "processed", "received"]

    in_one_call = recorded(client, tenant, [(batched, status) for status in statuses])["items"]
    one_by_one = [confirm_receipt(client, tenant, single, status) for status in statuses]

    def outcome(receipt: dict[str, Any]) -> tuple[Any, ...]:
        return receipt["status"], receipt["duplicate"], *delivery_state(receipt)[::2]

    assert [outcome(i) for i in in_one_call] == [outcome(i) for i in one_by_one]
    assert [outcome(i) for i in in_one_call] == [
        ("received", False, "delivered", 1),
        ("processed", False, "delivered", 2),
        ("received", True, "delivered", 2),
    ]
    assert len({i["delivered_at"] for i in in_one_call}) == 1  # the first delivery's, kept
    assert receipt_count(engine, batched) == receipt_count(engine, single) == 2


def test_foreign_and_unknown_ids_are_not_found_alike_and_the_rest_is_recorded(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    owner, stranger = create_consumer(), create_consumer()
    [foreign] = insert_events(engine, owner["consumer_id"])
    [own] = insert_events(engine, stranger["consumer_id"])
    unknown = str(uuid.uuid4())

    answer = recorded(
        client, stranger, [(foreign, "processed"), (own, "processed"), (unknown, "processed")]
    )

    assert answer["not_found"] == [foreign, unknown]
    assert [(i["event_id"], i["deliver_status"]) for i in answer["items"]] == [(own, "delivered")]
    assert receipt_count(engine, own) == 1
    assert untouched(engine, foreign)
    alone = {e: confirm_many(client, stranger, [(e, "processed")]) for e in (foreign, unknown)}
    assert {e: assert_envelope(r, 200) for e, r in alone.items()} == {
        e: {"items": [], "not_found": [e]} for e in alone
    }
    assert alone[foreign].json()["detail"] == alone[unknown].json()["detail"]
    assert untouched(engine, foreign)


REFUSED_BODIES: dict[str, Callable[[str], Any]] = {
    "empty list": lambda event_id: {"receipts": []},
    "one past the limit": lambda event_id: {
        "receipts": [item(event_id)] * (MAX_RECEIPTS_PER_CALL + 1)
    },
    "a bad status": lambda event_id: {"receipts": [item(event_id), item(event_id, "done")]},
    "an unknown field in a receipt": lambda event_id: {
        "receipts": [item(event_id), {**item(event_id, "received"), "surprise": 1}]
    },
    "an unknown field beside the receipts": lambda event_id: {
        "receipts": [item(event_id)],
        "surprise": 1,
    },
    "a non-UUID event_id": lambda event_id: {"receipts": [item(event_id), item("not-a-uuid")]},
    "no receipts": lambda event_id: {},
    "no body": lambda event_id: None,
}


@pytest.mark.parametrize("name", list(REFUSED_BODIES))
def test_a_refused_body_is_a_422_envelope_and_records_nothing(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer], name: str
) -> None:
    tenant = create_consumer()
    [event_id] = insert_events(engine, tenant["consumer_id"])

    response = client.post(PATH, json=REFUSED_BODIES[name](event_id), headers=tenant["headers"])

    assert_envelope(response, 422)
    assert untouched(engine, event_id)


def test_a_missing_wrong_or_disabled_key_is_refused_and_records_nothing(
    client: TestClient,
    engine: Engine,
    create_consumer: Callable[..., Consumer],
    admin_headers: dict[str, str],
) -> None:
    tenant = create_consumer()
    [event_id] = insert_events(engine, tenant["consumer_id"])
    body = {"receipts": [item(event_id)]}

    missing = client.post(PATH, json=body)
    wrong = client.post(PATH, json=body, headers={"X-API-Key": tenant["api_key"][:-4] + "AAAA"})
    path = f"/consumer/data/{tenant['consumer_id']}"
    assert_envelope(client.patch(path, json={"status": "disabled"}, headers=admin_headers), 200)
    disabled = client.post(PATH, json=body, headers=tenant["headers"])

    assert_envelope(missing, 401)
    assert_envelope(wrong, 401)
    assert_envelope(disabled, 403)
    assert untouched(engine, event_id)


def test_receipts_spend_no_rate_limit_tokens(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer(rate_limit_per_minute=1, rate_limit_burst=2)
    event_ids = insert_events(engine, tenant["consumer_id"], 3)
    calls = [[(event_id, "processed")] for event_id in event_ids] + [[(event_ids[0], "received")]]

    answers = [confirm_many(client, tenant, receipts) for receipts in calls]  # past the burst
    listed = client.get("/customer/data", headers=tenant["headers"])

    assert [response.status_code for response in answers] == [200] * len(calls)
    assert all("x-ratelimit-remaining" not in response.headers for response in answers)
    assert_envelope(listed, 200)
    assert listed.headers["x-ratelimit-remaining"] == "1"  # the first token taken


def test_a_failed_receipt_then_processed_recovers_and_delivered_is_never_downgraded(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    first_id, second_id = insert_events(engine, tenant["consumer_id"], 2)

    failed, received = recorded(client, tenant, [(first_id, "failed"), (second_id, "received")])[
        "items"
    ]
    recovered, late_failure = recorded(
        client, tenant, [(first_id, "processed"), (second_id, "failed")]
    )["items"]

    assert delivery_state(failed) == ("failed", None, 1)
    assert delivery_state(recovered)[::2] == ("delivered", 2)
    assert recovered["delivered_at"] is not None
    assert delivery_state(late_failure) == ("delivered", received["delivered_at"], 2)


def fail_on(monkeypatch: pytest.MonkeyPatch, call_number: int) -> None:
    """The database goes away at the receipt statement number ``call_number`` (1, 2, …)."""
    original = events_repository.confirm_delivery
    calls: list[str] = []

    async def confirm_delivery(connection: Any, event_id: uuid.UUID, *rest: Any) -> Any:
        calls.append(str(event_id))
        if len(calls) == call_number:
            raise asyncpg.PostgresConnectionError("connection lost")
        return await original(connection, event_id, *rest)

    monkeypatch.setattr(events_repository, "confirm_delivery", confirm_delivery)


def test_a_failure_part_way_is_a_503_and_the_call_can_be_sent_again(
    client: TestClient,
    engine: Engine,
    create_consumer: Callable[..., Consumer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = create_consumer()
    event_ids = insert_events(engine, tenant["consumer_id"], 6)
    sent = [(event_id, "processed") for event_id in event_ids]
    with monkeypatch.context() as patched:
        fail_on(patched, 2)
        assert_envelope(confirm_many(client, tenant, sent), 503)
    recorded_before = [receipt_count(engine, event_id) for event_id in event_ids]
    assert sum(recorded_before) < len(event_ids)

    again = recorded(client, tenant, sent)["items"]

    assert [receipt["duplicate"] for receipt in again] == [n == 1 for n in recorded_before]
    assert [receipt_count(engine, event_id) for event_id in event_ids] == [1] * 6


def test_each_receipt_is_committed_before_the_next_so_no_lock_is_held_across_them(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    """The relay marks a batch of events published in one statement, locking their rows in
    its own order; a call that kept its rows locked to the end deadlocked with it."""
    tenant = create_consumer()
    first, second = insert_events(engine, tenant["consumer_id"], 2)
    lock = "SELECT 1 FROM customer_events WHERE event_id = :id FOR NO KEY UPDATE"
    with engine.connect() as relay, ThreadPoolExecutor(1) as pool:
        relay.execute(text("SET LOCAL lock_timeout = '5s'"))
        relay.execute(text(lock), {"id": second})
        call = pool.submit(
            confirm_many, client, tenant, [(first, "processed"), (second, "processed")]
        )
        assert wait_until(lambda: receipt_count(engine, first) == 1), "committed on its own"
        relay.execute(text(lock), {"id": first})  # the call holds no lock on it any more
        relay.commit()
        answer = assert_envelope(call.result(30), 200)

    assert [receipt["duplicate"] for receipt in answer["items"]] == [False, False]
    assert receipt_count(engine, second) == 1


def test_concurrent_calls_in_opposite_orders_record_each_receipt_once(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    event_ids = insert_events(engine, tenant["consumer_id"], 6)
    orders = [event_ids, event_ids[::-1]] * 4

    with ThreadPoolExecutor(len(orders)) as pool:
        answers = list(
            pool.map(
                lambda ids: confirm_many(client, tenant, [(e, "processed") for e in ids]), orders
            )
        )

    assert [response.status_code for response in answers] == [200] * len(orders)
    firsts = [
        receipt["event_id"]
        for response in answers
        for receipt in response.json()["data"]["items"]
        if not receipt["duplicate"]
    ]
    assert sorted(firsts) == sorted(event_ids)  # each recorded by exactly one call
    assert [receipt_count(engine, event_id) for event_id in event_ids] == [1] * len(event_ids)


def test_a_receipt_waiting_on_a_lock_does_not_hold_back_the_rest_of_its_call(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    """The receipts of a call are recorded on several connections at once."""
    tenant = create_consumer()
    held, *others = insert_events(engine, tenant["consumer_id"], 3)
    lock = "SELECT 1 FROM customer_events WHERE event_id = :id FOR NO KEY UPDATE"
    with engine.connect() as relay, ThreadPoolExecutor(1) as pool:
        relay.execute(text(lock), {"id": held})
        sent = [(held, "processed"), *((event_id, "processed") for event_id in others)]
        call = pool.submit(confirm_many, client, tenant, sent)
        assert wait_until(lambda: all(receipt_count(engine, e) == 1 for e in others))
        assert receipt_count(engine, held) == 0 and not call.done()
        relay.commit()
        answer = assert_envelope(call.result(30), 200)

    assert [receipt["duplicate"] for receipt in answer["items"]] == [False] * 3
