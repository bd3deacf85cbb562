"""The auth cache after its TTL: re-validation reads the key row but runs no bcrypt again,
still refuses revoked keys, and concurrent cold requests for one key run bcrypt once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.auth.cache import VerificationCache
from service.auth.keys import bcrypt_calls, parse_key
from service.auth.service import AuthState, verify_and_cache
from service.config import Settings
from service.ratelimit.limiter import FailedAuthThrottle
from tests.support.api import assert_envelope

Consumer = dict[str, Any]


def test_expired_entries_revalidate_without_bcrypt(
    settings: Settings, create_consumer: Callable[..., Consumer]
) -> None:
    consumer = create_consumer()
    expiring = settings.updated({"auth_cache_ttl_seconds": 0})
    with TestClient(create_app(expiring)) as client:
        before = bcrypt_calls()
        for _ in range(4):
            assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
        assert bcrypt_calls() == before + 1


def test_revalidation_refuses_a_key_revoked_on_another_instance(
    settings: Settings,
    create_consumer: Callable[..., Consumer],
    client: TestClient,
    admin_headers: dict[str, str],
) -> None:
    consumer = create_consumer()
    expiring = settings.updated({"auth_cache_ttl_seconds": 0})
    with TestClient(create_app(expiring)) as other:
        assert_envelope(other.get("/customer/data", headers=consumer["headers"]), 200)
        revoke = f"/consumer/data/{consumer['consumer_id']}/keys/{consumer['key_id']}/revoke"
        assert_envelope(client.post(revoke, headers=admin_headers), 200)
        assert_envelope(other.get("/customer/data", headers=consumer["headers"]), 401)


def test_concurrent_cold_requests_for_one_key_run_bcrypt_once(
    settings: Settings, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    key = parse_key(create_consumer()["api_key"])
    assert key is not None
    state = AuthState(VerificationCache(ttl_seconds=60))
    throttle = FailedAuthThrottle(settings.redis, settings.auth)
    before = bcrypt_calls()
    try:

        async def eight_at_once() -> set[Any]:
            calls = [verify_and_cache(engine, key, throttle, state) for _ in range(8)]
            return {consumer.consumer_id for consumer in await asyncio.gather(*calls)}

        consumers = asyncio.run(eight_at_once())
    finally:
        throttle.close()
    assert len(consumers) == 1
    assert bcrypt_calls() == before + 1
