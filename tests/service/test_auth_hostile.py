"""Hostile callers: strangers cannot lock a tenant out, burn every core with bcrypt, write
audit rows, slip a bad credential past a good one, or get a revoked key cached again."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

import service.auth.service as auth_service
from service.app import create_app
from service.auth.keys import generate_key, hash_key, parse_key
from service.auth.refusals import REFUSALS_METRIC
from service.auth.service import BcryptGate
from service.config import Settings
from service.kit.errors import ServiceUnavailable
from tests.support.api import assert_envelope

Consumer = dict[str, Any]
ATTACKER = "203.0.113.7"
HOLDER = "198.51.100.20"


@pytest.fixture
def strict_settings(settings: Settings) -> Settings:
    return settings.updated({"failed_auth_limit": 3})


@pytest.fixture
def strict_app(strict_settings: Settings) -> FastAPI:
    return create_app(strict_settings)


class AddressedClient:
    """One TestClient for an app; each call names the client address it comes from."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

        async def addressed(scope: Any, receive: Any, send: Any) -> None:
            for name, value in scope.get("headers", []):
                if name == b"x-test-peer":
                    scope["client"] = (value.decode(), 40000)
            await app(scope, receive, send)

        self.client = TestClient(addressed)

    def __enter__(self) -> AddressedClient:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.__exit__(*exc)

    def get(self, address: str, path: str, headers: dict[str, str]) -> Any:
        return self.client.get(path, headers={**headers, "X-Test-Peer": address})

    def post(self, address: str, path: str, headers: dict[str, str]) -> Any:
        return self.client.post(path, headers={**headers, "X-Test-Peer": address})


def forged_key(consumer: Consumer, filler: str = "B") -> dict[str, str]:
    return {"X-API-Key": f"fk_{consumer['key_prefix']}_{filler * 43}"}


def audit_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM audit_log")).scalar_one())


def refusals(client: TestClient) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(REFUSALS_METRIC + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_bad_secrets_for_a_prefix_never_refuse_the_right_key(
    strict_app: FastAPI, strict_settings: Settings, create_consumer: Callable[..., Consumer]
) -> None:
    victim = create_consumer()
    with AddressedClient(strict_app) as api:
        answers = [
            api.get(ATTACKER, "/customer/data", forged_key(victim, filler)).status_code
            for filler in "BCDE"
        ]
        assert answers == [401, 401, 401, 429]
        assert_envelope(api.get(HOLDER, "/customer/data", forged_key(victim, "F")), 401)
        assert_envelope(api.get(HOLDER, "/customer/data", victim["headers"]), 200)
    with AddressedClient(create_app(strict_settings)) as other_instance:
        # the right key passes even from the throttled address, on a cold instance too
        assert_envelope(other_instance.get(ATTACKER, "/customer/data", victim["headers"]), 200)
        assert_envelope(other_instance.get(ATTACKER, "/customer/data", forged_key(victim)), 429)


def test_a_rotated_key_is_known_good_before_its_first_use(
    strict_app: FastAPI, create_consumer: Callable[..., Consumer], admin_headers: dict[str, str]
) -> None:
    victim = create_consumer()
    with AddressedClient(strict_app) as api:
        for filler in "BCDE":
            api.get(ATTACKER, "/customer/data", forged_key(victim, filler))
        rotate = f"/consumer/data/{victim['consumer_id']}/keys/rotate"
        new_key = assert_envelope(api.post(HOLDER, rotate, admin_headers), 201)["api_key"]
        for filler in "BCDE":
            api.get(ATTACKER, "/customer/data", {"X-API-Key": new_key[:-4] + filler * 4})
        assert_envelope(api.get(ATTACKER, "/customer/data", {"X-API-Key": new_key}), 200)


def test_bcrypt_work_is_bounded_per_process(
    settings: Settings, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    victim = create_consumer()
    set_key_cost(engine, victim, rounds=10)
    bounded = settings.updated({"failed_auth_limit": 1_000_000, "auth_bcrypt_concurrency": 2})
    app = create_app(bounded)
    with TestClient(app) as client:
        forged = [forged_key(victim, filler) for filler in "BCDEFGHIJKLM"]
        with ThreadPoolExecutor(max_workers=len(forged)) as pool:
            codes = list(pool.map(lambda h: client.get("/customer/data", headers=h), forged))
        gate: BcryptGate = app.state.auth.bcrypt
    assert {response.status_code for response in codes} <= {401, 503}
    assert 1 <= gate.peak <= 2


def set_key_cost(engine: Engine, victim: Consumer, rounds: int) -> None:
    """Give the victim's key row a costlier bcrypt hash (the product default is 12)."""
    key = parse_key(victim["api_key"])
    assert key is not None
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE consumer_api_keys SET key_hash = :h WHERE key_id = :id"),
            {"h": hash_key(key, rounds), "id": victim["key_id"]},
        )


def test_a_full_bcrypt_gate_answers_503_instead_of_queueing_forever() -> None:
    key = generate_key()
    slow_hash = hash_key(key, 13)
    gate = BcryptGate(slots=1, wait_seconds=0.05)

    async def one_holds_one_waits() -> None:
        holder = asyncio.ensure_future(gate.check(key, slow_hash))
        while gate.in_use == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(ServiceUnavailable):
            await gate.check(key, slow_hash)
        assert await holder

    asyncio.run(one_holds_one_waits())
    assert gate.peak == 1


def test_waiting_for_bcrypt_holds_no_thread() -> None:
    """Fifty callers queued behind one slow check wait on the event loop: no thread each."""
    key = generate_key()
    slow_hash = hash_key(key, 13)
    gate = BcryptGate(slots=1, wait_seconds=30)

    async def crowd() -> int:
        holder = asyncio.ensure_future(gate.check(key, slow_hash))
        while gate.in_use == 0:
            await asyncio.sleep(0.01)
        threads_before = threading.active_count()
        waiters = [asyncio.ensure_future(gate.check(key, slow_hash)) for _ in range(50)]
        await asyncio.sleep(0.2)
        threads_while_waiting = threading.active_count()
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await holder
        return threads_while_waiting - threads_before

    assert asyncio.run(crowd()) == 0
    assert gate.peak == 1


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        deadline.wait(0.01)
    return condition()


def test_strangers_write_no_audit_rows_and_are_counted_and_sampled(
    client: TestClient,
    engine: Engine,
    create_consumer: Callable[..., Consumer],
    admin_headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    victim = create_consumer()
    made_up = {"X-API-Key": generate_key().full}
    wrong_admin = {"X-Admin-Key": "not-the-admin-key"}
    beside = {**admin_headers, "X-API-Key": victim["api_key"][:-4] + "AAAA"}
    attempts = [
        ("GET", "/consumer/data", wrong_admin),
        ("POST", "/consumer/data", wrong_admin),
        ("GET", "/customer/data", {}),
        ("GET", "/customer/data", made_up),
        ("POST", "/events/resend", beside),
    ]
    before_rows, before_count = audit_rows(engine), refusals(client)
    with caplog.at_level(logging.WARNING, logger="service.auth.refusals"):
        for round_number in range(15):
            for method, path, headers in attempts:
                body = {"name": f"x{round_number}"} if method == "POST" else None
                response = client.request(method, path, headers=headers, json=body)
                assert response.status_code in (401, 403, 429), response.text
    assert audit_rows(engine) == before_rows
    assert refusals(client) - before_count == 75
    lines = [r for r in caplog.records if r.name == "service.auth.refusals"]
    assert 1 <= len(lines) <= 2, "refusals are sampled, not logged one by one"


def test_admin_key_guesses_are_throttled_per_client_address(
    strict_app: FastAPI, admin_headers: dict[str, str]
) -> None:
    wrong = {"X-Admin-Key": "guess"}
    with AddressedClient(strict_app) as api:
        codes = [api.get(ATTACKER, "/consumer/data", wrong).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        assert_envelope(api.get(HOLDER, "/consumer/data", wrong), 401)
        assert_envelope(api.get(HOLDER, "/consumer/data", admin_headers), 200)


def test_the_correct_admin_key_passes_after_25_wrong_ones_from_its_address(
    app: FastAPI, settings: Settings, admin_headers: dict[str, str]
) -> None:
    assert settings.auth.failed_limit < 25
    with AddressedClient(app) as api:
        codes = [
            api.get(ATTACKER, "/consumer/data", {"X-Admin-Key": f"guess-{n}"}).status_code
            for n in range(25)
        ]
        assert set(codes[: settings.auth.failed_limit]) == {401}
        assert set(codes[settings.auth.failed_limit :]) == {429}
        assert_envelope(api.get(ATTACKER, "/consumer/data", admin_headers), 200)
        assert_envelope(api.get(ATTACKER, "/consumer/data", {"X-Admin-Key": "guess"}), 429)
    with AddressedClient(create_app(settings)) as other_instance:
        # the throttle lives in Redis: another instance refuses the guesser, not the key
        assert_envelope(other_instance.get(ATTACKER, "/consumer/data", admin_headers), 200)
        assert_envelope(other_instance.get(ATTACKER, "/consumer/data", {"X-Admin-Key": "x"}), 429)


def test_bcrypt_gate_timeouts_count_as_failures(
    strict_settings: Settings, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    victim = create_consumer()
    set_key_cost(engine, victim, rounds=13)
    busy = strict_settings.updated({"auth_bcrypt_concurrency": 1})
    app = create_app(busy)
    app.state.auth.bcrypt.wait_seconds = 0.01
    with AddressedClient(app) as api, ThreadPoolExecutor(max_workers=6) as pool:
        fillers = "BCDEFG"
        codes = list(
            pool.map(
                lambda filler: api.get(ATTACKER, "/customer/data", forged_key(victim, filler)),
                fillers,
            )
        )
        assert 503 in {response.status_code for response in codes}
        # the failures (wrong keys and gate timeouts alike) spent the address's budget
        assert_envelope(api.get(ATTACKER, "/customer/data", forged_key(victim, "H")), 429)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/consumer/data"), ("POST", "/events/resend"), ("POST", "/events/redeliver")],
)
def test_a_valid_admin_key_does_not_carry_a_wrong_tenant_key(
    client: TestClient,
    create_consumer: Callable[..., Consumer],
    admin_headers: dict[str, str],
    method: str,
    path: str,
) -> None:
    victim = create_consumer()
    body = {"dry_run": True} if method == "POST" else None
    good = client.request(method, path, headers=admin_headers, json=body)
    assert_envelope(good, 200)
    for wrong in (victim["api_key"][:-4] + "AAAA", "garbage", generate_key().full):
        bad = client.request(method, path, headers={**admin_headers, "X-API-Key": wrong}, json=body)
        assert_envelope(bad, 401)
    both_valid = client.request(
        method, path, headers={**admin_headers, "X-API-Key": victim["api_key"]}, json=body
    )
    assert_envelope(both_valid, 200)


def test_a_key_revoked_during_its_verification_is_never_cached(
    app: FastAPI,
    client: TestClient,
    engine: Engine,
    create_consumer: Callable[..., Consumer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim = create_consumer()
    real_check = auth_service.check_key

    def check_then_revoke(key: Any, key_hash: str) -> bool:
        """The key row was read (active); now the key is revoked, as the revoke route does."""
        matched = real_check(key, key_hash)
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE consumer_api_keys SET is_active = false WHERE key_id = :id"),
                {"id": victim["key_id"]},
            )
        app.state.auth.cache.evict_consumer(victim["consumer_id"])
        return matched

    monkeypatch.setattr(auth_service, "check_key", check_then_revoke)
    in_flight = client.get("/customer/data", headers=victim["headers"])
    monkeypatch.setattr(auth_service, "check_key", real_check)

    assert_envelope(in_flight, 200)  # it read the row before the change: that one passes
    key = parse_key(victim["api_key"])
    assert key is not None and app.state.auth.cache.get(key) is None
    assert_envelope(client.get("/customer/data", headers=victim["headers"]), 401)


def test_a_put_across_an_eviction_is_refused() -> None:
    from uuid import uuid4

    from service.auth.cache import VerificationCache

    cache: VerificationCache[str] = VerificationCache(ttl_seconds=60)
    key, consumer_id = generate_key(), uuid4()
    generation = cache.generation
    cache.evict_consumer(consumer_id)
    assert cache.put(key, consumer_id, "stale", "hash", generation) is False
    assert cache.get(key) is None
    assert cache.put(key, consumer_id, "fresh", "hash", cache.generation) is True
    assert cache.get(key) == "fresh"
