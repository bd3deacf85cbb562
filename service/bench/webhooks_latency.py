"""``fintegrate bench webhooks`` latency: the API's 201 to the receiver against plain httpx.

``fintegrate serve`` and ``fintegrate webhooks deliver`` (each its own process, as they
are deployed, so the load generator here takes no CPU from the deliverer) stay up for
all rounds;
each round creates customers open-loop at ``rate`` for ``duration`` s (201 -> their
event at the receiver) and sends as many plain httpx POSTs one at a time (send ->
receiver), the order alternating every round. Both sides' receivers run in a process of
their own.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import httpx

from service.bench import loadgen, stack
from service.bench.figures import Arrivals, Progress
from service.bench.receivers import ReceiverProcess
from service.bench.servers import BIN, alternating, api_command, free_port, wait_healthy
from service.config import Settings

SIDES = ("deliverer", "plain")
SETTLE_SECONDS = 120.0
WARM_UP_RATE = 5.0


def latency_rounds(
    settings: Settings, rounds: int, rate: float, duration: float, progress: Progress
) -> list[dict[str, Arrivals]]:
    """The API and the deliverer up once; each round both sides, the order alternating."""
    receiver = ReceiverProcess(1, by_customer=True)
    measured = []
    with ExitStack() as running:
        running.callback(receiver.stop)
        api, key = start_api(running, settings, receiver)
        deliver = [str(BIN / "fintegrate"), "webhooks", "deliver"]
        stack.background(running, deliver, stack.process_env(settings))
        pipeline_latency(api, key, receiver, WARM_UP_RATE, 1.0)  # the deliverer is up
        count = int(rate * duration)
        for number, order in enumerate(alternating(len(SIDES), rounds), start=1):
            phases = {}
            for side in (SIDES[index] for index in order):
                if side == "deliverer":
                    phases[side] = pipeline_latency(api, key, receiver, rate, duration)
                else:
                    phases[side] = plain_latency(count)
                progress(
                    f"latency round {number}/{rounds} {side:<10} "
                    f"p50 {phases[side].p50_ms:.1f} ms, p99 {phases[side].p99_ms:.1f} ms "
                    f"({phases[side].received}/{phases[side].sent})"
                )
            measured.append({side: phases[side] for side in SIDES})
    return measured


def start_api(running: ExitStack, settings: Settings, receiver: ReceiverProcess) -> tuple[str, str]:
    """``fintegrate serve`` and a tenant with one endpoint at ``receiver``; URL and key."""
    port = free_port()
    server = stack.background(running, api_command(port, 1), stack.process_env(settings))
    wait_healthy(port, server)
    api = f"http://127.0.0.1:{port}"
    made = stack.tenant_through_api(api, settings)
    httpx.post(
        f"{api}/webhooks/endpoints",
        json={"url": receiver.urls[0], "event_types": ["customer_creation"]},
        headers={"X-API-Key": made["api_key"]},
        timeout=30,
    ).raise_for_status()
    return api, str(made["api_key"])


def pipeline_latency(
    api: str, key: str, receiver: ReceiverProcess, rate: float, duration: float
) -> Arrivals:
    """Customers at ``rate`` for ``duration`` s; 201 -> their event at the receiver."""
    before = receiver.total()
    answered = loadgen.steady_load(api, key, rate, duration)
    stack.wait_until(lambda: receiver.total() - before >= len(answered), SETTLE_SECONDS)
    arrivals = receiver.arrivals()
    waits = [(arrivals[c] - at) * 1000 for c, (_, at) in answered.items() if c in arrivals]
    expected = int(rate * duration)
    return Arrivals.of("deliverer", expected, waits)


def plain_latency(count: int) -> Arrivals:
    """Send -> receiver of ``count`` plain httpx POSTs, one at a time, on one client."""
    receiver = ReceiverProcess(1, by_customer=True)
    sent = {}
    with httpx.Client() as client:
        for index in range(count):
            body = json.dumps({"customer_id": f"plain-{index}"}).encode()
            sent[f"plain-{index}"] = time.time()
            client.post(
                receiver.urls[0], content=body, headers={"content-type": "application/json"}
            )
    arrivals = receiver.arrivals()
    receiver.stop()
    waits = [(arrivals[key] - at) * 1000 for key, at in sent.items() if key in arrivals]
    return Arrivals.of("plain", count, waits)
