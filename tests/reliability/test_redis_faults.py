"""Redis failing mid-run behind a TCP proxy: each process limits on its own, shared limits
return with Redis.

(Redis refused or silent from the start is covered by tests/service/test_ratelimit_http.py;
this adds the transition: a healthy limiter losing Redis while serving, and recovering.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import RedisSettings, Settings
from tests.reliability.probes import report_figures
from tests.support.outbox import wait_until
from tests.support.tcp_proxy import TcpProxy, target_of

FAULTS = ("reset", "blackhole", "delay", "refuse")
SMALL_BURST = 3
RETRY_SECONDS = 0.5


@pytest.fixture
def redis_proxy(tcp_proxy_factory: Callable[[str, int], TcpProxy], redis_url: str) -> TcpProxy:
    return tcp_proxy_factory(*target_of(redis_url))


@pytest.fixture
def settings(settings: Settings, redis_proxy: TcpProxy) -> Settings:
    """The API's Redis link runs through the proxy with the product's 50 ms budget; the
    breaker probes again after 0.5 s."""
    assert settings.redis.url
    return settings.updated(
        {
            "redis_url": redis_proxy.url_for(settings.redis.url),
            "redis_retry_seconds": RETRY_SECONDS,
            "redis_timeout_seconds": RedisSettings().timeout_seconds,
        }
    )


def redis_decides(client: TestClient) -> bool:
    """The API's limiter reaches Redis again (its breaker closed)."""
    return not client.app.state.rate_limiter.store.breaker_open  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", FAULTS)
def test_redis_lost_mid_run_limits_in_process_and_shared_limits_resume(
    client: TestClient, create_consumer: Callable[..., Any], redis_proxy: TcpProxy, fault: str
) -> None:
    busy = create_consumer()
    small = create_consumer(rate_limit_per_minute=1, rate_limit_burst=SMALL_BURST)
    assert client.get("/customer/data", headers=busy["headers"]).status_code == 200

    redis_proxy.set_mode(fault, delay_seconds=1.0)  # a delay far above the 50 ms budget
    redis_proxy.close_all()
    started = time.monotonic()
    during = [
        client.post("/customer/data", json={"name": f"r{i}"}, headers=busy["headers"])
        for i in range(10)
    ]
    during += [client.get("/customer/data", headers=small["headers"]) for _ in range(6)]
    outage_seconds = time.monotonic() - started
    redis_proxy.pass_through()
    recovered = time.monotonic()
    assert wait_until(
        lambda: (
            client.get("/customer/data", headers=busy["headers"]).status_code == 200
            and redis_decides(client)
        )
    )
    recovery_seconds = time.monotonic() - recovered
    after = [client.get("/customer/data", headers=small["headers"]) for _ in range(SMALL_BURST + 1)]

    # during: the busy tenant within its burst; the small one held to its burst in process
    assert [r.status_code for r in during] == [201] * 10 + [200] * SMALL_BURST + [429] * 3
    # after: Redis' own bucket for the small tenant (the process' tokens are not written back)
    assert [r.status_code for r in after] == [200] * SMALL_BURST + [429]
    report_figures(
        f"redis_{fault}_mid_run",
        requests_during_outage=len(during),
        mean_request_ms_during_outage=round(outage_seconds / len(during) * 1000, 1),
        limits_back_after_seconds=round(recovery_seconds, 2),
    )
