"""The broker alone: a plain pika publisher and consumer, the floor under event -> handler.

Messages go at ``rate``/s for ``duration`` s, persistent, each with a publisher confirm,
through the default exchange to a durable queue of the bench's vhost, and a plain
BlockingConnection consumer acks each one as it arrives (prefetch as the worker's).
What it measures, publish -> consumer callback, is what no relay or worker can beat.
"""

from __future__ import annotations

import threading
import time
import uuid

import pika

from service.bench.figures import Arrivals
from service.bench.stack import wait_until
from service.messaging.connection import open_blocking

SETTLE_SECONDS = 60.0
READY_SECONDS = 10.0


def floor_latency(amqp_url: str, rate: float, duration: float, prefetch: int) -> Arrivals:
    """One phase on a fresh queue (deleted when its consumer goes)."""
    queue = f"bench.floor.{uuid.uuid4().hex[:8]}"
    arrivals: dict[str, float] = {}
    ready, stop = threading.Event(), threading.Event()
    consumer = threading.Thread(
        target=consume,
        args=(amqp_url, queue, prefetch, arrivals, ready, stop),
        name="bench-floor-consumer",
        daemon=True,
    )
    consumer.start()
    if not ready.wait(READY_SECONDS):
        raise RuntimeError(f"the floor's consumer could not declare {queue}")
    sent = publish(amqp_url, queue, rate, duration)
    wait_until(lambda: len(arrivals) >= len(sent), SETTLE_SECONDS)
    stop.set()
    consumer.join(READY_SECONDS)
    waits = [(arrivals[key] - at) * 1000 for key, at in sent.items() if key in arrivals]
    return Arrivals.of("raw_pika", len(sent), waits)


def consume(
    amqp_url: str,
    queue: str,
    prefetch: int,
    arrivals: dict[str, float],
    ready: threading.Event,
    stop: threading.Event,
) -> None:
    """Declares the queue, then notes each message's arrival (wall clock) and acks it."""
    connection = open_blocking(amqp_url)
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, auto_delete=True)
    channel.basic_qos(prefetch_count=prefetch)

    def arrived(ch: object, method: object, properties: object, body: bytes) -> None:
        arrivals[body.decode()] = time.time()
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

    channel.basic_consume(queue, arrived)
    ready.set()
    while not stop.is_set():
        connection.process_data_events(time_limit=0.05)
    connection.close()


def publish(amqp_url: str, queue: str, rate: float, duration: float) -> dict[str, float]:
    """Persistent messages at ``rate``/s, each confirmed; key -> wall time it was sent."""
    connection = open_blocking(amqp_url)
    channel = connection.channel()
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    sent: dict[str, float] = {}
    started = time.monotonic()
    for index in range(int(rate * duration)):
        time.sleep(max(0.0, started + index / rate - time.monotonic()))
        key = str(index)
        sent[key] = time.time()
        channel.basic_publish("", queue, key.encode(), properties, mandatory=True)
    connection.close()
    return sent
