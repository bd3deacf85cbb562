"""The span exporter writes what the SDK's OTLP encoder writes, byte for byte, and sends it.

Spans come from a real SDK ``TracerProvider`` (its own, not the process's) into an
in-memory exporter; the encodings are compared with the SDK's ``encode_spans``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace import set_span_in_context as in_context
from opentelemetry.trace.span import TraceState

from service.kit.span_export import OtlpSpanExporter, RequestEncoder, batch_processor
from tests.support.otlp import OtlpReceiver
from tests.support.outbox import wait_until

REMOTE_PARENT = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "value")]),
)


@pytest.fixture
def recorded() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "fintegrate-test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


Recorded = tuple[TracerProvider, InMemorySpanExporter]


def request_spans(recorded: Recorded) -> tuple[ReadableSpan, ...]:
    """What the API and the relay make: server spans (one continuing a remote parent, one an
    error with a description), a producer span, attributes of every scalar type."""
    provider, memory = recorded
    tracer = provider.get_tracer("fintegrate")
    tracer_two = provider.get_tracer("other", "1.0", schema_url="https://example.com/schema")
    attributes = {"http.request.method": "POST", "url.path": "/customer/data"}
    for _ in range(3):
        span = tracer.start_span("POST", kind=SpanKind.SERVER, attributes=attributes)
        span.set_attributes({"http.route": "/customer/data", "http.response.status_code": 201})
        span.update_name("POST /customer/data")
        span.end()
    failed = tracer.start_span("GET", in_context(NonRecordingSpan(REMOTE_PARENT)), SpanKind.SERVER)
    failed.set_attributes({"retry": True, "ratio": 0.25, "offset": -3, "big": 2**40, "e": "é"})
    failed.set_status(StatusCode.ERROR, "boom")
    failed.end()
    send = tracer_two.start_span("send customer_events", kind=SpanKind.PRODUCER)
    send.set_attribute("messaging.system", "rabbitmq")
    send.set_status(StatusCode.OK)
    send.end()
    return memory.get_finished_spans()


def test_a_batch_encodes_to_the_sdk_encoders_bytes(recorded: Recorded) -> None:
    spans = request_spans(recorded)
    encoder = RequestEncoder()
    expected = encode_spans(spans).SerializeToString()
    assert encoder.encode(spans) == expected
    assert encoder.encode(spans) == expected  # again, from what it keeps encoded


def test_a_batch_with_what_only_the_sdk_writes_is_encoded_by_the_sdk(recorded: Recorded) -> None:
    provider, memory = recorded
    tracer = provider.get_tracer("fintegrate")
    with pytest.raises(RuntimeError), tracer.start_as_current_span("handle"):
        raise RuntimeError("handler failed")  # an exception event on the span
    listed = tracer.start_span("listed", attributes={"codes": (1, 2)})
    listed.end()
    spans = memory.get_finished_spans()
    assert spans[0].events and isinstance(spans[1].attributes["codes"], tuple)
    for batch in ((spans[0],), (spans[1],), spans):
        assert RequestEncoder().encode(batch) == encode_spans(batch).SerializeToString()


def test_the_exporter_sends_the_batch_to_the_otlp_endpoint(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = request_spans(recorded)
    receiver = OtlpReceiver().start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        exporter = OtlpSpanExporter()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert wait_until(lambda: len(receiver.spans) == len(spans), timeout=10)
        exporter.shutdown()
    finally:
        receiver.stop()
    names = [span.name for span in receiver.spans]
    assert names.count("POST /customer/data") == 3
    failed = next(span for span in receiver.spans if span.name == "GET")
    assert failed.parent_span_id == f"{REMOTE_PARENT.span_id:016x}"
    assert failed.attributes == {"retry": True, "ratio": 0.25, "offset": -3, "big": 2**40, "e": "é"}


@pytest.mark.parametrize(
    ("environ", "batch", "queue"),
    [
        ({}, 2048, 8192),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100"}, 100, 8192),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "4096", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64"}, 64, 4096),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "1000"}, 512, 1000),  # the SDK's batch size fits its queue
    ],
)
def test_batches_are_larger_than_the_sdks_unless_otel_bsp_variables_say(
    environ: dict[str, str], batch: int, queue: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    processor = batch_processor(environ)
    try:
        batching = processor._batch_processor
        assert (batching._max_export_batch_size, batching._max_queue_size) == (batch, queue)
    finally:
        processor.shutdown()
