"""The API request's SERVER span, built directly instead of through the SDK's ``Tracer``.

On a traced request the SDK's ``start_span`` + ``end`` were most of tracing's cost
(docs/observability.md): the tracer's own metrics, a lock per call, ``BoundedAttributes``
validating every value, two bounded lists, and at the end a second, read-only copy of the
span for the processor. ``RequestSpans.start`` makes one ``RequestSpan`` instead: the
provider's sampler still decides (a new trace under always_on or parentbased_always_on is
sampled without asking: the answer is fixed), the ids come from ``random.getrandbits``
(what the SDK's ``RandomIdGenerator`` calls), the attributes are a plain dict, and the
ended span itself goes to the span processor given (the provider's only one). The SDK's
tracer metrics (spans started and live) are not counted for these spans. It is an SDK
``ReadableSpan`` (what the batch processor and the OTLP exporter read, in their own
thread) and an API ``Span`` (it can be made current, and records exceptions as the SDK
does).

Used only where the SDK would do the same: default span limits (none of our attribute
values could be cut or dropped) and the SDK's random id generator; otherwise
``RequestSpans.usable`` says no and the caller takes the SDK's ``start_span``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

# By sampled + 2 * random trace id: the SDK marks a trace id from its random generator, or
# continued from a parent that says so, as random (W3C trace context level 2).
FLAGS = tuple(TraceFlags(number) for number in range(4))
SAMPLED_ROOT = FLAGS[3]
SAMPLED_ROOT_TRACEPARENT = "00-%032x-%016x-03"  # the W3C header for SAMPLED_ROOT's flags
SPAN_ID_MASK = 2**64 - 1
# Samplers that record and sample every root span and add nothing to it: the SDK's
# always_on and parentbased_always_on (its default), told apart by their descriptions.
ROOTS_SAMPLED = re.compile(r"AlwaysOnSampler|ParentBased\{root:AlwaysOnSampler,.*")
UNSET = Status(StatusCode.UNSET)


class RequestSpans:
    """Starts ``RequestSpan``s for one provider and instrumentation scope."""

    def __init__(self, provider: TracerProvider, scope: str, processor: SpanProcessor) -> None:
        self._sampler = provider.sampler
        # Then a new trace's span needs no sampling decision (the SDK's would be the same).
        self._roots_sampled = type(self._sampler) in (StaticSampler, ParentBased) and bool(
            ROOTS_SAMPLED.fullmatch(self._sampler.get_description())
        )
        self._resource = provider.resource
        self._scope = InstrumentationScope(scope)
        self._processor = processor
        self._limits: SpanLimits = provider._span_limits
        self._getrandbits = random.getrandbits

    @staticmethod
    def usable(provider: TracerProvider) -> bool:
        """Whether spans made here are what the SDK would make for this provider."""
        limits: SpanLimits = provider._span_limits
        return (
            type(provider.id_generator) is RandomIdGenerator
            and limits.max_span_attribute_length is None
            and (limits.max_span_attributes is None or limits.max_span_attributes >= 4)
        )

    def start(
        self, name: str, attributes: dict[str, Any], parent: Context | None = None
    ) -> tuple[trace_api.Span, str]:
        """A started SERVER span (a ``NonRecordingSpan`` when the sampler says so) and its
        ``traceparent``: a child of the span in ``parent`` (an extracted ``traceparent``)
        if that is valid, else the root of a new trace."""
        parent_context = trace_api.get_current_span(parent).get_span_context() if parent else None
        if parent_context is None or not parent_context.is_valid:
            ids = self._new_ids()
            trace_id, span_id = ids >> 64, ids & SPAN_ID_MASK
            if self._roots_sampled:
                context = SpanContext(trace_id, span_id, False, SAMPLED_ROOT)
                span = RequestSpan(name, context, None, attributes, self)
                return span, SAMPLED_ROOT_TRACEPARENT % (trace_id, span_id)
            parent_context, random_id = None, True
        else:
            trace_id, span_id = parent_context.trace_id, self._new_ids() & SPAN_ID_MASK
            random_id = parent_context.trace_flags.random_trace_id
        result = self._sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes)
        flags = FLAGS[result.decision.is_sampled() + 2 * random_id]
        context = SpanContext(trace_id, span_id, False, flags, result.trace_state)
        traceparent = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
        if not result.decision.is_recording():
            return trace_api.NonRecordingSpan(context), traceparent
        if result.attributes:
            attributes.update(result.attributes)
        return RequestSpan(name, context, parent_context, attributes, self), traceparent

    def _new_ids(self) -> int:
        """A trace id (the high 128 bits) and a span id (the low 64), neither of them zero
        (the invalid id), from one draw of the generator the SDK's ``RandomIdGenerator``
        uses."""
        ids = self._getrandbits(192)
        while not ids >> 64 or not ids & SPAN_ID_MASK:
            ids = self._getrandbits(192)
        return ids


class RequestSpan(trace_api.Span, ReadableSpan):
    """One request's SERVER span: a ``ReadableSpan`` from the start, handed as it is to the
    span processor when it ends."""

    _context: SpanContext
    _attributes: dict[str, Any]
    _kind = SpanKind.SERVER
    _events: Sequence[Event] = ()
    _links: Sequence[trace_api.Link] = ()
    _status = UNSET
    _end_time: int | None = None
    _instrumentation_info = None

    def __init__(  # the SDK's ReadableSpan.__init__ is not called: every field is set here
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        spans: RequestSpans,
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._attributes = attributes
        self._resource = spans._resource
        self._instrumentation_scope = spans._scope
        self._processor = spans._processor
        self._limits = spans._limits
        self._start_time = time_ns()

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is None:
            self._end_time = end_time if end_time is not None else time_ns()
            self._processor.on_end(self)

    def get_span_context(self) -> SpanContext:
        return self._context

    @property
    def attributes(self) -> types.Attributes:
        return MappingProxyType(self._attributes)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is None:
            limits = self._limits
            bounded = BoundedAttributes(
                limits.max_event_attributes, attributes, True, limits.max_attribute_length
            )
            event = Event(name, bounded, timestamp)
            self._events = (*self._events, event)

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK's: an OK status is final, UNSET is ignored."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    # The SDK's own: the exception's type, message and stack trace as an "exception" event.
    record_exception = SdkSpan.record_exception
