"""The API's request span, built directly, is the span the SDK's tracer would have made.

Both come from one real SDK ``TracerProvider`` (its own, not the process's) into an
in-memory exporter; they are compared as the SDK's OTLP encoder writes them, with the
random ids and the clock readings made equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanKind, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.kit.request_span import RequestSpan, RequestSpans
from service.kit.span_export import RequestEncoder

CLIENT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ANSWER = {"http.route": "/customer/data", "http.response.status_code": 201}


class Recorded:
    """A provider, its in-memory exporter and the request spans made for it."""

    def __init__(self, sampler: Sampler | None = None, **provider: Any) -> None:
        self.memory = InMemorySpanExporter()
        resource = Resource.create({"service.name": "fintegrate-test"})
        self.provider = TracerProvider(resource=resource, sampler=sampler, **provider)
        processor = SimpleSpanProcessor(self.memory)
        self.provider.add_span_processor(processor)
        self.spans = RequestSpans(self.provider, "fintegrate", processor)
        self.tracer = self.provider.get_tracer("fintegrate")


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    made = Recorded()
    yield made
    made.provider.shutdown()


def request_attributes() -> dict[str, Any]:
    return {"http.request.method": "POST", "url.path": "/customer/data"}


def answer(span: Any) -> None:
    """What the tracing middleware does once the answer is known."""
    span.update_name("POST /customer/data")
    span.set_attributes(ANSWER)
    span.end()


def parent_context(traceparent: str | None) -> Any:
    return (
        TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        if traceparent
        else None
    )


def encoded_alike(ours: ReadableSpan, sdks: ReadableSpan) -> tuple[bytes, bytes]:
    """Both spans as the SDK's encoder writes them, ours with the SDK span's ids and times."""
    theirs = encode_spans([sdks])
    mine = encode_spans([ours])
    expected = theirs.resource_spans[0].scope_spans[0].spans[0]
    got = mine.resource_spans[0].scope_spans[0].spans[0]
    for name in ("trace_id", "span_id", "start_time_unix_nano", "end_time_unix_nano"):
        setattr(got, name, getattr(expected, name))
    return mine.SerializeToString(), theirs.SerializeToString()


@pytest.mark.parametrize("traceparent", [None, CLIENT_TRACEPARENT])
def test_a_request_span_is_what_the_sdks_tracer_makes(
    recorded: Recorded, traceparent: str | None
) -> None:
    span, own_traceparent = recorded.spans.start(
        "POST", request_attributes(), parent_context(traceparent)
    )
    answer(span)
    context = parent_context(traceparent)
    answer(recorded.tracer.start_span("POST", context, SpanKind.SERVER, request_attributes()))
    ours, sdks = recorded.memory.get_finished_spans()
    assert type(ours) is RequestSpan and not ours.is_recording()
    assert ours.context.trace_flags == sdks.context.trace_flags
    assert own_traceparent == (
        f"00-{ours.context.trace_id:032x}-{ours.context.span_id:016x}-{ours.context.trace_flags:02x}"
    )
    if traceparent:
        assert ours.context.trace_id == int(traceparent.split("-")[1], 16)
    mine, theirs = encoded_alike(ours, sdks)
    assert mine == theirs


def test_our_encoder_writes_request_spans_as_the_sdks_encoder(recorded: Recorded) -> None:
    for traceparent in (None, CLIENT_TRACEPARENT, None):
        span, _ = recorded.spans.start("POST", request_attributes(), parent_context(traceparent))
        answer(span)
    odd, _ = recorded.spans.start("GET", {"http.request.method": "GET", "url.path": "/x", "n": 1})
    odd.set_attributes({"flag": True, "ratio": 0.5})
    odd.set_status(StatusCode.ERROR, "boom")
    odd.end()
    spans = recorded.memory.get_finished_spans()
    encoder = RequestEncoder()
    assert encoder.encode(spans) == encode_spans(spans).SerializeToString()
    assert encoder.encode(spans) == encode_spans(spans).SerializeToString()  # from its caches


def test_an_exception_is_recorded_as_the_sdk_records_it(recorded: Recorded) -> None:
    error = RuntimeError("handler failed")
    span, _ = recorded.spans.start("POST", request_attributes())
    sdk_span = recorded.tracer.start_span(
        "POST", kind=SpanKind.SERVER, attributes=request_attributes()
    )
    for made in (span, sdk_span):
        made.record_exception(error)
        made.set_status(StatusCode.ERROR, "RuntimeError: handler failed")
        answer(made)
    ours, sdks = recorded.memory.get_finished_spans()
    assert [event.name for event in ours.events] == ["exception"]
    assert ours.events[0].attributes == sdks.events[0].attributes
    ours.events[0]._timestamp = sdks.events[0].timestamp  # type: ignore[attr-defined]
    mine, theirs = encoded_alike(ours, sdks)
    assert mine == theirs
    assert RequestEncoder().encode([ours]) == encode_spans([ours]).SerializeToString()


@pytest.mark.parametrize(
    ("sampler", "traceparent", "recording", "flags"),
    [
        (ALWAYS_ON, None, True, "03"),
        (ParentBased(ALWAYS_OFF), None, False, "02"),
        (ParentBased(ALWAYS_OFF), CLIENT_TRACEPARENT, True, "01"),
        (ParentBased(ALWAYS_ON), CLIENT_TRACEPARENT.replace("-01", "-00"), False, "00"),
    ],
)
def test_the_providers_sampler_decides(
    sampler: Sampler, traceparent: str | None, recording: bool, flags: str
) -> None:
    made = Recorded(sampler)
    try:
        span, own_traceparent = made.spans.start(
            "POST", request_attributes(), parent_context(traceparent)
        )
        assert span.is_recording() is recording
        assert isinstance(span, RequestSpan if recording else NonRecordingSpan)
        assert own_traceparent.endswith(f"-{flags}")
        span.end()
        assert len(made.memory.get_finished_spans()) == int(recording)
    finally:
        made.provider.shutdown()


def test_span_limits_other_than_the_sdks_defaults_leave_it_to_the_sdk() -> None:
    assert RequestSpans.usable(Recorded().provider)
    limited = Recorded(span_limits=SpanLimits(max_span_attribute_length=8))
    assert not RequestSpans.usable(limited.provider)


def test_a_request_span_can_be_the_current_span(recorded: Recorded) -> None:
    span, _ = recorded.spans.start("POST", request_attributes())
    child = recorded.tracer.start_span("child", set_span_in_context(span))
    child.end()
    answer(span)
    assert child.parent == span.get_span_context()
