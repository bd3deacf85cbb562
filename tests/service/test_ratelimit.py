"""The Redis rate limiter and failed-auth throttle, against the real Redis.

Faults come from a loopback TCP proxy (refused or blackholed) or a closed port; the
shared Redis itself is never stopped. The limiter is asyncio: each test drives its own
limiter on its own event loop through ``LimiterDriver``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeGuard

import pytest
import redis
import uvloop
from prometheus_client import CollectorRegistry

from service.config import Settings, load_settings
from service.ratelimit.limiter import (
    FAIL_OPEN_METRIC,
    RATE_KEY_PREFIX,
    FailedAuthThrottle,
    RateDecision,
    RateLimiter,
)
from tests.support.ports import closed_port
from tests.support.tcp_proxy import TcpProxy, target_of

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
POLL_SECONDS = 0.05
GENEROUS = 0.5  # a Redis budget for tests that are not about the budget (a busy machine)
SHORT = 0.05  # the default budget, for tests whose Redis is made late on purpose
WAIT_BOUND_SECONDS = 10.0


@pytest.fixture
def limiter_settings(redis_url: str) -> Settings:
    """Settings for the limiter alone: this worker's Redis DB, a short breaker period, and a
    generous budget — the default 50 ms is missed on a busy machine (a first connect under
    xdist), and a check decided in the process instead would make the bucket tests lie.
    Tests whose Redis is late on purpose ask for ``SHORT``."""
    return load_settings(
        environment="test",
        redis_url=redis_url,
        redis_retry_seconds=0.3,
        redis_timeout_seconds=GENEROUS,
    )


class LimiterDriver:
    """A RateLimiter on an event loop of its own: blocking ``check`` and concurrent ``gather``."""

    def __init__(self, limiter: RateLimiter, loop: str = "uvloop") -> None:
        self.limiter = limiter
        self.store = limiter.store
        self._runner = asyncio.Runner(loop_factory=LOOPS[loop])

    @property
    def fail_open_total(self) -> int:
        return self.limiter.fail_open_total

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self._runner.run(coroutine)

    def check(self, bucket: str, per_minute: int, burst: int) -> RateDecision | None:
        return self.run(self.limiter.check(bucket, per_minute, burst))

    def gather(self, *coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
        """Run ``coroutines`` concurrently on the limiter's loop."""

        async def together() -> list[Any]:
            return list(await asyncio.gather(*coroutines))

        return self.run(together())

    def close(self) -> None:
        self.run(self.limiter.close())
        self._runner.close()


@pytest.fixture(params=sorted(LOOPS))
def make_limiter(
    limiter_settings: Settings, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LimiterDriver]]:
    """Builds limiters (settings overrides as keywords) and closes them afterwards; every
    test runs on uvloop (what uvicorn picks) and on asyncio's own loop."""
    made: list[LimiterDriver] = []

    def make(registry: CollectorRegistry | None = None, **overrides: Any) -> LimiterDriver:
        settings = limiter_settings.updated(overrides)
        driver = LimiterDriver(RateLimiter(settings.redis, registry=registry), request.param)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.fixture
def blackholed_redis(
    tcp_proxy_factory: Callable[[str, int], TcpProxy], redis_url: str
) -> tuple[TcpProxy, str]:
    """A proxy in front of the real Redis that accepts connections and never answers."""
    proxy = tcp_proxy_factory(*target_of(redis_url))
    proxy.blackhole()
    return proxy, proxy.url_for(redis_url)


@pytest.fixture
def private_redis() -> Iterator[Callable[..., str]]:
    """redis-server processes of this test's own (for server-wide commands such as SCRIPT
    FLUSH or CLIENT KILL, or a password): ``private_redis(*options)`` answers its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is required on PATH for this test", pytrace=False)
    servers: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        port = closed_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *options]
        servers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        if not wait_for(lambda: port_accepts(port)):
            pytest.fail(f"a private redis-server did not start on port {port}", pytrace=False)
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=WAIT_BOUND_SECONDS)


def port_accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds or the (generous) bound passes."""
    deadline = time.monotonic() + WAIT_BOUND_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_SECONDS)
    return False


def take(
    limiter: LimiterDriver, count: int, bucket: str = "b", **limits: int
) -> list[RateDecision]:
    per_minute, burst = limits.get("per_minute", 1), limits.get("burst", 3)
    decisions = [limiter.check(bucket, per_minute, burst) for _ in range(count)]
    assert all(decision is not None for decision in decisions)
    return [decision for decision in decisions if decision is not None]


def count_script_calls(limiter: LimiterDriver, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count script runs sent to Redis (the network): one list item per round trip, its size."""
    store = limiter.store
    calls: list[int] = []
    real_evalsha = store._evalsha

    async def counting_evalsha(batch: list[Any]) -> list[Any]:
        calls.append(len(batch))
        return await real_evalsha(batch)

    monkeypatch.setattr(store, "_evalsha", counting_evalsha)
    return calls


def decided_locally(decision: RateDecision | None) -> TypeGuard[RateDecision]:
    """The decision came from the process's own bucket (Redis could not decide)."""
    return decision is not None and decision.local


def decided_by_redis(decision: RateDecision | None) -> TypeGuard[RateDecision]:
    return decision is not None and not decision.local


def fail_open_metric(registry: CollectorRegistry, check: str = "rate_limit") -> float:
    value = registry.get_sample_value(FAIL_OPEN_METRIC, {"check": check})
    return value or 0.0


# -- the bucket ---------------------------------------------------------------------------


def test_burst_is_allowed_then_refused_with_retry_after(make_limiter: Callable[..., LimiterDriver]):
    decisions = take(make_limiter(), 6, per_minute=1, burst=5)

    assert all(decided_by_redis(d) for d in decisions)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert all(d.limit == 5 for d in decisions)
    refused = decisions[-1]
    assert 55 <= refused.retry_after_seconds <= 60
    assert decisions[0].retry_after_seconds == 0
    assert refused.reset_seconds >= refused.retry_after_seconds


def test_tokens_refill_over_time(make_limiter: Callable[..., LimiterDriver]):
    limiter = make_limiter()
    first = take(limiter, 3, per_minute=60, burst=2)
    assert [d.allowed for d in first] == [True, True, False]
    assert first[-1].retry_after_seconds == 1

    def allowed_again() -> bool:
        decision = limiter.check("b", 60, 2)
        return decision is not None and decision.allowed

    assert wait_for(allowed_again)


def test_parallel_clients_never_exceed_the_allowance(make_limiter: Callable[..., LimiterDriver]):
    limiter = make_limiter()
    allowed: list[bool] = []

    async def client() -> None:
        for _ in range(20):
            decision = await limiter.limiter.check("shared", 1, 25)
            allowed.append(decision is not None and decision.allowed)

    limiter.gather(*(client() for _ in range(8)))

    assert len(allowed) == 160
    assert sum(allowed) == 25


def test_concurrent_checks_share_one_round_trip(
    make_limiter: Callable[..., LimiterDriver], monkeypatch: pytest.MonkeyPatch
):
    limiter = make_limiter()
    assert limiter.check("warm-up", 60, 5) is not None  # a fresh Redis loads the script here
    calls = count_script_calls(limiter, monkeypatch)

    decisions = limiter.gather(*(limiter.limiter.check(f"b{n % 3}", 60, 5) for n in range(9)))

    assert calls == [9]
    assert [d.remaining for d in decisions if d is not None] == [4, 4, 4, 3, 3, 3, 2, 2, 2]


def test_scripts_redis_lost_are_loaded_again(
    make_limiter: Callable[..., LimiterDriver], private_redis: Callable[..., str]
):
    url = private_redis()
    limiter = make_limiter(redis_url=url)
    assert limiter.check("b", 60, 5) is not None
    with redis.Redis.from_url(url) as server:
        server.script_flush()
        single = limiter.check("b", 60, 5)
        server.script_flush()
        together = limiter.gather(*(limiter.limiter.check("b", 60, 5) for _ in range(3)))

    assert single is not None and single.remaining == 3
    assert [d.remaining for d in together if d is not None] == [2, 1, 0]
    assert limiter.fail_open_total == 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0"])
def test_a_malformed_url_fails_at_start_up(limiter_settings: Settings, url: str):
    with pytest.raises(ValueError):
        RateLimiter(limiter_settings.updated({"redis_url": url}).redis)


def test_the_urls_password_and_database_are_used(
    make_limiter: Callable[..., LimiterDriver], private_redis: Callable[..., str]
):
    url = private_redis("--requirepass", "s3cret").replace("//", "//:s3cret@").replace("/0", "/3")
    limiter = make_limiter(redis_url=url)

    decision = limiter.check("b", 60, 5)

    assert decision is not None and decision.remaining == 4
    with redis.Redis.from_url(url) as db3, redis.Redis.from_url(url.replace("/3", "/0")) as db0:
        assert db3.exists(RATE_KEY_PREFIX + "b")
        assert db0.dbsize() == 0


def test_a_wrong_password_falls_back_to_the_process(
    make_limiter: Callable[..., LimiterDriver], private_redis: Callable[..., str]
):
    url = private_redis("--requirepass", "s3cret").replace("//", "//:wrong@")
    limiter = make_limiter(redis_url=url, redis_breaker_failures=1)

    assert decided_locally(limiter.check("b", 60, 5))
    assert limiter.fail_open_total == 1
    assert limiter.store.breaker_open


def test_a_connection_redis_closes_is_opened_again(
    make_limiter: Callable[..., LimiterDriver], private_redis: Callable[..., str]
):
    url = private_redis()
    limiter = make_limiter(redis_url=url)
    assert decided_by_redis(limiter.check("b", 60, 5))
    with redis.Redis.from_url(url) as server:
        assert server.client_kill_filter(_type="normal", skipme=True) == 1

    assert wait_for(lambda: decided_by_redis(limiter.check("b", 60, 5)))
    later = limiter.check("b", 60, 5)
    assert decided_by_redis(later) and later.remaining <= 2
    assert limiter.fail_open_total <= 1


def test_a_late_reply_never_answers_a_later_check(
    make_limiter: Callable[..., LimiterDriver],
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
    redis_url: str,
):
    proxy = tcp_proxy_factory(*target_of(redis_url))
    limiter = make_limiter(redis_url=proxy.url_for(redis_url), redis_timeout_seconds=SHORT)
    proxy.delay(0.3)
    assert decided_locally(limiter.check("slow", 60, 50)), "the reply is later than the timeout"

    proxy.pass_through()
    assert wait_for(lambda: decided_by_redis(limiter.check("warm", 60, 5)))
    decision = limiter.check("fast", 60, 5)

    assert decided_by_redis(decision) and decision.remaining == 4, "slow's reply said 49"


def test_one_bucket_never_limits_another(make_limiter: Callable[..., LimiterDriver]):
    limiter = make_limiter()
    assert not take(limiter, 3, bucket="consumer_a", burst=2)[-1].allowed

    other = take(limiter, 2, bucket="consumer_b", burst=2)

    assert [d.allowed for d in other] == [True, True]
    assert [d.remaining for d in other] == [1, 0]


def test_per_call_limits_override_per_bucket(make_limiter: Callable[..., LimiterDriver]):
    limiter = make_limiter()

    small = take(limiter, 3, bucket="small", burst=2)
    large = take(limiter, 10, bucket="large", per_minute=600, burst=10)

    assert [d.allowed for d in small] == [True, True, False]
    assert all(d.allowed for d in large)
    assert large[0].limit == 10 and large[-1].remaining == 0


def test_keys_expire_once_the_bucket_would_be_full(
    make_limiter: Callable[..., LimiterDriver], redis_url: str
):
    import redis

    take(make_limiter(), 1, bucket="expiring", per_minute=60, burst=5)

    client = redis.Redis.from_url(redis_url)
    try:
        ttl_ms = int(client.pttl("fintegrate:rl:expiring"))
    finally:
        client.close()
    assert 0 < ttl_ms <= 2000


# -- Redis unusable: the bucket of this process ----------------------------------------------


def test_without_redis_the_process_limits_on_its_own(make_limiter: Callable[..., LimiterDriver]):
    limiter = make_limiter(redis_url=None)

    decisions = [limiter.check("b", 1, 2) for _ in range(3)]

    assert all(decided_locally(d) for d in decisions)
    assert [d.allowed for d in decisions] == [True, True, False]
    assert 55 <= decisions[-1].retry_after_seconds <= 60
    assert limiter.fail_open_total == 3


def test_a_closed_port_limits_in_process_and_counts(make_limiter: Callable[..., LimiterDriver]):
    registry = CollectorRegistry()
    limiter = make_limiter(registry, redis_url=f"redis://127.0.0.1:{closed_port()}/0")

    decisions = [limiter.check("b", 60, 10) for _ in range(30)]

    assert all(decided_locally(d) for d in decisions)
    assert 10 <= sum(d.allowed for d in decisions) <= 11, "the burst, and what refilled"
    assert limiter.fail_open_total == 30
    assert fail_open_metric(registry) == 30
    assert limiter.store.breaker_open


def test_the_local_bucket_carries_on_from_what_redis_said(
    make_limiter: Callable[..., LimiterDriver],
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
    redis_url: str,
):
    proxy = tcp_proxy_factory(*target_of(redis_url))
    limiter = make_limiter(redis_url=proxy.url_for(redis_url))
    spent = take(limiter, 3, per_minute=1, burst=3)
    assert all(decided_by_redis(d) and d.allowed for d in spent)

    proxy.refuse()
    proxy.close_all()
    after = limiter.check("b", 1, 3)

    assert decided_locally(after)
    assert not after.allowed, "Redis had emptied the bucket: no fresh burst in the process"


def test_one_slow_reply_does_not_open_the_breaker(
    make_limiter: Callable[..., LimiterDriver],
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
):
    proxy = tcp_proxy_factory(*target_of(redis_url))
    limiter = make_limiter(
        redis_url=proxy.url_for(redis_url), redis_retry_seconds=60, redis_timeout_seconds=0.25
    )
    assert wait_for(lambda: decided_by_redis(limiter.check("b", 60, 5)))  # connected, loaded
    calls = count_script_calls(limiter, monkeypatch)

    proxy.delay(1.0)
    late = limiter.check("b", 60, 5)
    proxy.pass_through()
    after = [limiter.check("b", 60, 5) for _ in range(3)]

    assert decided_locally(late), "the reply came after the budget"
    assert not limiter.store.breaker_open
    assert all(decided_by_redis(d) for d in after)
    assert len(calls) == 4, "every check after the late reply went to Redis"


def test_the_breaker_opens_after_consecutive_failures_and_skips_redis(
    make_limiter: Callable[..., LimiterDriver],
    blackholed_redis: tuple[TcpProxy, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    _, url = blackholed_redis
    limiter = make_limiter(
        redis_url=url,
        redis_retry_seconds=60,
        redis_breaker_failures=3,
        redis_timeout_seconds=SHORT,
    )
    calls = count_script_calls(limiter, monkeypatch)

    decisions = [limiter.check("b", 1, 5) for _ in range(20)]

    assert all(decided_locally(d) for d in decisions)
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 15
    assert len(calls) == 3, "three late replies in a row open the breaker; then Redis is skipped"
    assert limiter.fail_open_total == 20
    warnings = [r for r in caplog.records if "fall back" in r.getMessage()]
    assert len(warnings) == 1


def test_an_error_reply_fails_only_its_own_caller(
    make_limiter: Callable[..., LimiterDriver], redis_url: str, monkeypatch: pytest.MonkeyPatch
):
    limiter = make_limiter()
    assert decided_by_redis(limiter.check("warm-up", 60, 5))
    with redis.Redis.from_url(redis_url) as client:
        client.rpush(RATE_KEY_PREFIX + "broken", "not a timestamp")  # GET answers WRONGTYPE
    calls = count_script_calls(limiter, monkeypatch)

    buckets = ["good-1", "broken", "good-2", "good-3"]
    decisions = limiter.gather(*(limiter.limiter.check(b, 60, 5) for b in buckets))

    assert calls == [4], "one pipeline carried all four"
    assert [d.local for d in decisions] == [False, True, False, False]
    assert all(d.allowed for d in decisions)
    assert limiter.fail_open_total == 1
    assert not limiter.store.breaker_open


def test_out_of_memory_replies_fall_back_then_recover(
    make_limiter: Callable[..., LimiterDriver], private_redis: Callable[..., str]
):
    url = private_redis("--maxmemory-policy", "noeviction")
    limiter = make_limiter(redis_url=url)
    assert decided_by_redis(limiter.check("b", 1, 5))
    with redis.Redis.from_url(url) as server:
        server.config_set("maxmemory", 1)
        full = limiter.gather(*(limiter.limiter.check("b", 1, 5) for _ in range(6)))
        server.config_set("maxmemory", 0)
    again = limiter.check("b", 1, 5)

    assert all(decided_locally(d) for d in full)
    assert [d.allowed for d in full] == [True] * 4 + [False] * 2, "the bucket Redis left"
    assert not limiter.store.breaker_open, "one failed round trip is below the threshold"
    assert decided_by_redis(again)


def test_breaker_probes_again_after_retry_seconds_and_recovers(
    make_limiter: Callable[..., LimiterDriver],
    blackholed_redis: tuple[TcpProxy, str],
    monkeypatch: pytest.MonkeyPatch,
):
    proxy, url = blackholed_redis
    limiter = make_limiter(
        redis_url=url,
        redis_retry_seconds=0.3,
        redis_breaker_failures=1,
        redis_timeout_seconds=SHORT,
    )
    calls = count_script_calls(limiter, monkeypatch)
    assert decided_locally(limiter.check("b", 60, 5))

    assert wait_for(lambda: decided_locally(limiter.check("b", 60, 5)) and len(calls) == 2)
    assert decided_locally(limiter.check("b", 60, 5))
    assert len(calls) == 2, "a failed probe opens the breaker again"

    proxy.pass_through()
    assert wait_for(lambda: decided_by_redis(limiter.check("b", 60, 5)))
    decision = limiter.check("b", 60, 5)
    assert decided_by_redis(decision) and decision.allowed
    assert not limiter.store.breaker_open


def test_one_probe_at_a_time_while_the_breaker_is_half_open(
    make_limiter: Callable[..., LimiterDriver],
    blackholed_redis: tuple[TcpProxy, str],
    monkeypatch: pytest.MonkeyPatch,
):
    _, url = blackholed_redis
    limiter = make_limiter(
        redis_url=url,
        redis_retry_seconds=0.2,
        redis_breaker_failures=1,
        redis_timeout_seconds=SHORT,
    )
    calls = count_script_calls(limiter, monkeypatch)
    assert decided_locally(limiter.check("b", 60, 5))
    time.sleep(0.3)

    decisions = limiter.gather(*(limiter.limiter.check("b", 60, 5) for _ in range(8)))

    assert all(decided_locally(d) for d in decisions)
    assert len(calls) == 2
    assert limiter.fail_open_total == 9


# -- failed authentication ------------------------------------------------------------------


@pytest.fixture
def make_throttle(limiter_settings: Settings) -> Iterator[Callable[..., FailedAuthThrottle]]:
    made: list[FailedAuthThrottle] = []

    def make(registry: CollectorRegistry | None = None, **overrides: Any) -> FailedAuthThrottle:
        changed = limiter_settings.updated(overrides)
        throttle = FailedAuthThrottle(changed.redis, changed.auth, registry)
        made.append(throttle)
        return throttle

    yield make
    for throttle in made:
        throttle.close()


def test_failed_auth_blocks_a_prefix_after_the_limit(
    make_throttle: Callable[..., FailedAuthThrottle],
):
    throttle = make_throttle(failed_auth_limit=3)
    for _ in range(2):
        throttle.record_failure("abc123")
    assert not throttle.is_blocked("abc123")

    throttle.record_failure("abc123")

    assert throttle.is_blocked("abc123")
    assert not throttle.is_blocked("other1")


def test_failed_auth_window_expires(make_throttle: Callable[..., FailedAuthThrottle]):
    throttle = make_throttle(failed_auth_limit=1, failed_auth_window_seconds=1)
    throttle.record_failure("abc123")
    assert throttle.is_blocked("abc123")

    assert wait_for(lambda: not throttle.is_blocked("abc123"))


def test_failed_auth_falls_back_to_an_in_process_count_without_redis(
    make_throttle: Callable[..., FailedAuthThrottle],
):
    registry = CollectorRegistry()
    throttle = make_throttle(
        registry, redis_url=f"redis://127.0.0.1:{closed_port()}/0", failed_auth_limit=2
    )

    throttle.record_failure("abc123")
    assert not throttle.is_blocked("abc123")
    throttle.record_failure("abc123")

    assert throttle.is_blocked("abc123"), "no Redis: the in-process window still blocks"
    assert not throttle.is_blocked("other1")
    assert throttle.fail_open_total == 5
    assert fail_open_metric(registry, "failed_auth") == 5


def test_limiter_and_throttle_share_one_metric(limiter_settings: Settings):
    registry = CollectorRegistry()
    dead = limiter_settings.updated({"redis_url": f"redis://127.0.0.1:{closed_port()}"})
    limiter = LimiterDriver(RateLimiter(dead.redis, registry=registry))
    throttle = FailedAuthThrottle(dead.redis, dead.auth, registry=registry)
    try:
        assert decided_locally(limiter.check("b", 1, 1))
        assert not throttle.is_blocked("abc123")
    finally:
        throttle.close()
        limiter.close()

    assert fail_open_metric(registry, "rate_limit") == 1
    assert fail_open_metric(registry, "failed_auth") == 1
