"""Per-key rate limits as clients see them: headers, the 429 envelope, fail-open requests.

The app runs on the worker's database and Redis DB with a tiny bucket (burst 3, one
token per minute), so a test spends it in a few requests and nothing refills meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.ratelimit.limiter import FAIL_OPEN_METRIC
from tests.support.ports import closed_port
from tests.support.tcp_proxy import TcpProxy, target_of

BURST = 3
Consumer = dict[str, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with a bucket small enough to empty."""
    return settings.updated({"rate_limit_api_key_per_minute": 1, "rate_limit_api_key_burst": BURST})


def list_customers(client: TestClient, consumer: Consumer) -> httpx.Response:
    return client.get("/customer/data", headers=consumer["headers"])


def spend(client: TestClient, consumer: Consumer, count: int) -> list[httpx.Response]:
    return [list_customers(client, consumer) for _ in range(count)]


def fail_open_count(client: TestClient, check: str = "rate_limit") -> float:
    """The fail-open counter as /metrics exports it."""
    pattern = f'{FAIL_OPEN_METRIC}{{check="{check}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(pattern):
            return float(line.removeprefix(pattern))
    return 0.0


def test_success_carries_the_rate_limit_headers(
    client: TestClient, create_consumer: Callable[..., Consumer]
):
    response = list_customers(client, create_consumer())

    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit"] == str(BURST)
    assert response.headers["x-ratelimit-remaining"] == str(BURST - 1)
    assert int(response.headers["x-ratelimit-reset"]) >= 1
    assert "retry-after" not in response.headers


def test_created_answers_carry_the_headers_too(
    client: TestClient, create_consumer: Callable[..., Consumer]
):
    consumer = create_consumer()

    response = client.post("/customer/data", json={"name": "Ada"}, headers=consumer["headers"])

    assert response.status_code == 201
    assert response.headers["x-ratelimit-remaining"] == str(BURST - 1)


def test_burst_spent_answers_429_envelope_with_retry_after(
    client: TestClient, create_consumer: Callable[..., Consumer]
):
    responses = spend(client, create_consumer(), BURST + 1)

    assert [r.status_code for r in responses] == [200] * BURST + [429]
    refused = responses[-1]
    body = refused.json()
    assert body["data"] == {}
    assert body["detail"]["status_code"] == "429"
    assert body["detail"]["status_name"] == "Too Many Requests"
    retry_after = refused.headers["retry-after"]
    assert int(retry_after) >= 1
    assert f"retry after {retry_after} s" in body["detail"]["status_description"]
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-limit"] == str(BURST)


def test_one_tenant_never_limits_another(
    client: TestClient, create_consumer: Callable[..., Consumer]
):
    busy, quiet = create_consumer(), create_consumer()
    assert spend(client, busy, BURST + 1)[-1].status_code == 429

    response = list_customers(client, quiet)

    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining"] == str(BURST - 1)


def test_per_consumer_limits_override_the_defaults(
    client: TestClient, create_consumer: Callable[..., Consumer]
):
    generous = create_consumer(rate_limit_per_minute=1, rate_limit_burst=BURST + 3)

    responses = spend(client, generous, BURST + 4)

    assert [r.status_code for r in responses] == [200] * (BURST + 3) + [429]
    assert responses[0].headers["x-ratelimit-limit"] == str(BURST + 3)


def test_admin_calls_are_not_rate_limited(client: TestClient, admin_headers: dict[str, str]):
    responses = [client.get("/consumer/data", headers=admin_headers) for _ in range(BURST + 2)]

    assert {r.status_code for r in responses} == {200}
    assert all("x-ratelimit-limit" not in r.headers for r in responses)


def test_repeated_failures_for_one_prefix_are_throttled(
    client: TestClient, create_consumer: Callable[..., Consumer], settings: Settings
):
    target, other = create_consumer(), create_consumer()
    wrong = {"X-API-Key": wrong_key_for(target)}
    limit = settings.auth.failed_limit

    answers = [client.get("/customer/data", headers=wrong).status_code for _ in range(limit + 1)]

    assert answers == [401] * limit + [429]
    assert list_customers(client, other).status_code == 200


def wrong_key_for(consumer: Consumer) -> str:
    """A well-formed key with the consumer's prefix and a wrong secret."""
    prefix = consumer["api_key"].split("_")[1]
    return f"fk_{prefix}_{'x' * 43}"


# -- Redis unusable: each process limits on its own ------------------------------------


class TestRedisRefusing:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.updated({"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})

    def test_the_process_bucket_limits_and_is_counted(
        self, client: TestClient, create_consumer: Callable[..., Consumer]
    ):
        consumer = create_consumer()
        created = client.post("/customer/data", json={"name": "Ada"}, headers=consumer["headers"])
        listed = spend(client, consumer, BURST + 2)

        assert created.status_code == 201
        assert [r.status_code for r in listed] == [200] * (BURST - 1) + [429] * 3
        assert listed[0].headers["x-ratelimit-remaining"] == str(BURST - 2)
        assert int(listed[-1].headers["retry-after"]) >= 1
        assert fail_open_count(client) >= BURST + 3

    def test_failed_auth_throttle_falls_back_to_the_process(
        self, client: TestClient, create_consumer: Callable[..., Consumer]
    ):
        consumer = create_consumer()
        wrong = {"X-API-Key": wrong_key_for(consumer)}

        answers = [client.get("/customer/data", headers=wrong).status_code for _ in range(12)]

        assert answers == [401] * 10 + [429] * 2, "no Redis: counted in process, not unlimited"
        assert list_customers(client, consumer).status_code == 200
        assert fail_open_count(client, "failed_auth") >= 12


class TestRedisSilent:
    @pytest.fixture
    def settings(
        self, settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
    ) -> Settings:
        proxy = tcp_proxy_factory(*target_of(settings.redis.url or ""))
        proxy.blackhole()
        assert settings.redis.url
        return settings.updated({"redis_url": proxy.url_for(settings.redis.url)})

    def test_the_process_limits_while_redis_never_answers(
        self, client: TestClient, create_consumer: Callable[..., Consumer]
    ):
        consumer = create_consumer()

        responses = spend(client, consumer, BURST + 2)

        assert [r.status_code for r in responses] == [200] * BURST + [429] * 2
        assert fail_open_count(client) >= BURST + 2
