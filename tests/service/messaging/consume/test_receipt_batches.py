"""The worker's receipts in batches: ``ReceiptBatches`` alone, then ``DeliveryConfirmer``
against the live API (and against an API from before ``POST /events/confirm-deliveries``).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from service.delivery.schemas import MAX_RECEIPTS_PER_CALL
from service.messaging.consume.receipt_batches import PendingReceipt, ReceiptBatches
from service.messaging.consume.receipts import (
    CONFIRM_BATCH_PATH,
    CONFIRM_PATH,
    RECEIPT_BATCH,
    DeliveryConfirmer,
    Receipt,
    WorkerUnauthorized,
)
from tests.support.outbox import wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.worker import Tenant, create_customers, receipts, tenant_events

LANES = 12
SLOW_API_SECONDS = 0.3  # each call's delay at the proxy: receipts pile up behind it


def confirm_together(
    confirmer: DeliveryConfirmer, receipts_to_send: Sequence[tuple[str, str, str | None]]
) -> list[Receipt]:
    """Each receipt from a lane thread of its own, all at once; outcomes in order."""
    start = threading.Barrier(len(receipts_to_send))

    def lane(receipt: tuple[str, str, str | None]) -> Receipt:
        start.wait()
        return confirmer.confirm(*receipt)

    with ThreadPoolExecutor(len(receipts_to_send)) as pool:
        return list(pool.map(lane, receipts_to_send))


@pytest.fixture
def make_confirmer() -> Iterator[Callable[..., DeliveryConfirmer]]:
    made: list[DeliveryConfirmer] = []

    def make(url: str, key: str, stop: threading.Event | None = None) -> DeliveryConfirmer:
        confirmer = DeliveryConfirmer(url, key, stop or threading.Event())
        made.append(confirmer)
        return confirmer

    yield make
    for confirmer in made:
        confirmer.stop.set()
        confirmer.close()


@pytest.fixture
def slow_api(tcp_proxy_factory: Callable[[str, int], TcpProxy], live_server: str) -> str:
    """The live API behind a proxy that holds every call ``SLOW_API_SECONDS``."""
    host, port = live_server.removeprefix("http://").split(":")
    proxy = tcp_proxy_factory(host, int(port))
    proxy.delay(SLOW_API_SECONDS)
    return proxy.url_for(live_server)


@pytest.fixture
def slow_confirmer(
    make_confirmer: Callable[..., DeliveryConfirmer], slow_api: str, tenant: Tenant
) -> DeliveryConfirmer:
    """The tenant's confirmer, calling the API through the slow proxy."""
    confirmer: DeliveryConfirmer = make_confirmer(slow_api, tenant["api_key"])
    return confirmer


def recorded_events(engine: Engine, tenant: Tenant) -> list[str]:
    """The events the tenant has a receipt for, sorted."""
    return sorted(event for event, _, _ in receipts(engine, tenant))


@pytest.fixture
def events(api: httpx.Client, tenant: Tenant, engine: Engine) -> list[str]:
    create_customers(api, tenant, LANES - 1)
    found = tenant_events(engine, tenant)
    assert len(found) == LANES  # the customers' and the tenant's consumer_created
    return found


# -- ReceiptBatches -----------------------------------------------------------------------


class HeldSender:
    """A ``send`` that answers each body's ``n`` once released, recording every batch and
    how many calls were in flight at most."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.first_arrived = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def __call__(self, batch: list[PendingReceipt]) -> None:
        with self._lock:
            self.batches.append([pending.body["n"] for pending in batch])
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.first_arrived.set()
        self.release.wait(10)
        for pending in batch:
            pending.outcome = pending.body["n"]
        with self._lock:
            self.in_flight -= 1


def test_receipts_that_wait_behind_a_call_go_together_in_the_next():
    sender = HeldSender()
    batches = ReceiptBatches(sender, batch_size=4, closed_outcome="closed", senders=1)
    with ThreadPoolExecutor(10) as pool:
        first = pool.submit(batches.put, {"n": 0})
        assert sender.first_arrived.wait(10)
        rest = [pool.submit(batches.put, {"n": n}) for n in range(1, 10)]
        assert wait_until(lambda: len(batches._waiting) == 9)
        sender.release.set()
        answers = [first.result(10), *(future.result(10) for future in rest)]
    batches.close()

    assert answers == list(range(10)), "each lane gets its own receipt's outcome"
    assert sender.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert batches.batches == 4
    assert batches.put({"n": 10}) == "closed"


def test_receipts_finding_every_sender_busy_start_another_up_to_the_bound():
    sender = HeldSender()
    batches = ReceiptBatches(sender, batch_size=100, closed_outcome="closed", senders=2)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batches.put, {"n": 0})]
        assert sender.first_arrived.wait(10)
        futures += [pool.submit(batches.put, {"n": n}) for n in range(1, 8)]
        assert wait_until(  # the second sender took what waited when it started
            lambda: (
                len(sender.batches) == 2
                and sum(map(len, sender.batches)) + len(batches._waiting) == 8
            )
        )
        sender.release.set()
        answers = [future.result(10) for future in futures]
    batches.close()

    assert answers == list(range(8))
    assert sender.most_in_flight == 2, "a second sender, never a third"
    assert sorted(n for batch in sender.batches for n in batch) == list(range(8))
    assert len(sender.batches) <= 4, "the ones that waited went in at most two more calls"


def test_an_error_of_the_sender_is_raised_in_every_lane_of_its_batch():
    def refuse(batch: list[PendingReceipt]) -> None:
        raise WorkerUnauthorized("key refused")

    batches = ReceiptBatches(refuse, batch_size=10, closed_outcome=None)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batches.put, {"n": n}) for n in range(3)]
        errors = [future.exception(10) for future in futures]
    batches.close()

    assert all(isinstance(error, WorkerUnauthorized) for error in errors)


def test_closing_sends_what_waits_first():
    sender = HeldSender()
    batches = ReceiptBatches(sender, batch_size=10, closed_outcome="closed", senders=1)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batches.put, {"n": 0})]
        assert sender.first_arrived.wait(10)
        futures += [pool.submit(batches.put, {"n": n}) for n in (1, 2)]
        assert wait_until(lambda: len(batches._waiting) == 2)
        closing = pool.submit(batches.close)
        sender.release.set()
        closing.result(10)
        assert [future.result(10) for future in futures] == [0, 1, 2]
    assert sender.batches == [[0], [1, 2]]


# -- DeliveryConfirmer against the API ------------------------------------------------------


def test_the_lanes_receipts_share_calls_and_are_all_recorded(
    slow_confirmer: DeliveryConfirmer, tenant: Tenant, engine: Engine, events: list[str]
):

    outcomes = confirm_together(slow_confirmer, [(event, "processed", None) for event in events])

    assert outcomes == [Receipt.RECORDED] * LANES
    assert recorded_events(engine, tenant) == sorted(events)
    assert 1 <= slow_confirmer.batches_sent < LANES, "lanes waiting behind a call share the next"


def test_a_receipt_the_api_does_not_know_is_refused_and_the_others_recorded(
    slow_confirmer: DeliveryConfirmer, tenant: Tenant, engine: Engine, events: list[str]
):
    unknown = str(uuid.uuid4())
    sent = [(event, "processed", None) for event in events[:5]] + [(unknown, "processed", None)]
    upper = events[5].upper()  # the API answers ids lower-case
    sent.append((upper, "received", None))

    outcomes = confirm_together(slow_confirmer, sent)

    assert outcomes == [Receipt.RECORDED] * 5 + [Receipt.REFUSED, Receipt.RECORDED]
    assert recorded_events(engine, tenant) == sorted(events[:6])


def test_a_batch_the_api_refuses_whole_is_sent_receipt_by_receipt(
    slow_confirmer: DeliveryConfirmer, tenant: Tenant, engine: Engine, events: list[str]
):
    too_long = "x" * 2001  # the API's limit on ``detail`` is 2000: a 422 for the whole call
    sent = [(event, "processed", None) for event in events[:4]] + [(events[4], "failed", too_long)]

    outcomes = confirm_together(slow_confirmer, sent)

    assert outcomes == [Receipt.RECORDED] * 4 + [Receipt.REFUSED]
    assert recorded_events(engine, tenant) == sorted(events[:4])


def test_a_refused_key_stops_every_lane_waiting_on_the_batch(
    make_confirmer: Callable[..., DeliveryConfirmer], slow_api: str, events: list[str]
):
    confirmer = make_confirmer(slow_api, "fk_not_a_key")

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(confirmer.confirm, event, "processed") for event in events[:3]]
        errors = [future.exception(30) for future in futures]

    assert all(isinstance(error, WorkerUnauthorized) for error in errors)


def test_stopping_while_the_api_is_down_abandons_the_waiting_receipts(
    make_confirmer: Callable[..., DeliveryConfirmer],
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
    live_server: str,
    tenant: Tenant,
    engine: Engine,
    events: list[str],
):
    host, port = live_server.removeprefix("http://").split(":")
    proxy = tcp_proxy_factory(host, int(port))
    proxy.refuse()
    stop = threading.Event()
    confirmer = make_confirmer(proxy.url_for(live_server), tenant["api_key"], stop)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(confirmer.confirm, event, "processed") for event in events[:4]]
        assert wait_until(lambda: confirmer.batches_sent >= 1)
        stop.set()
        outcomes = [future.result(30) for future in futures]

    assert outcomes == [Receipt.ABANDONED] * 4
    assert receipts(engine, tenant) == []


def test_the_receipt_batch_is_the_apis_limit():
    assert RECEIPT_BATCH == MAX_RECEIPTS_PER_CALL


# -- an API from before the batch endpoint ------------------------------------------------


class OldApi(BaseHTTPRequestHandler):
    """Answers ``POST /events/confirm-delivery`` and 404 (in the envelope) for anything else."""

    server: OldApiServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.paths.append(self.path)
        if self.path == CONFIRM_PATH:
            self._answer(200, {"data": {"event_id": body["event_id"], "duplicate": False}})
        else:
            self._answer(404, {"data": None, "detail": {"status_description": "Not Found"}})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        content = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class OldApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OldApi)
        self.paths: list[str] = []


@pytest.fixture
def old_api() -> Iterator[OldApiServer]:
    server = OldApiServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_an_api_without_the_batch_endpoint_gets_the_receipts_one_by_one(
    make_confirmer: Callable[..., DeliveryConfirmer], old_api: OldApiServer
):
    confirmer = make_confirmer(f"http://127.0.0.1:{old_api.server_address[1]}", "fk_key")
    ids = [str(uuid.uuid4()) for _ in range(3)]

    outcomes = [confirmer.confirm(event, "processed") for event in ids]

    assert outcomes == [Receipt.RECORDED] * 3
    assert old_api.paths == [CONFIRM_BATCH_PATH] + [CONFIRM_PATH] * 3, "asked once, then alone"
