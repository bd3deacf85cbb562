"""Spans leave over the SDK's OTLP/HTTP protobuf exporter, batched, encoded in one pass.

``batch_processor`` is the SDK's ``BatchSpanProcessor`` in front of the SDK's
``OTLPSpanExporter`` (endpoint, headers, timeout, compression, TLS and retries from the
standard ``OTEL_EXPORTER_OTLP_*`` variables), with larger batches than the SDK's defaults
unless an ``OTEL_BSP_*`` variable says otherwise: one HTTP post per 2048 spans instead of
per 512, a queue of 8192 instead of 2048.

The exporter's one change is the encoding. The SDK builds a protobuf object per span,
attribute and value, then copies them into the request: about 25 µs of the export thread's
time per span, with the GIL held, where the span itself costs the request about as much
(docs/observability.md). ``RequestEncoder`` writes the same ``ExportTraceServiceRequest``
bytes directly; a batch holding anything it does not write (events, links, array values,
dropped counts) is encoded by the SDK's own encoder instead. The resource and the
instrumentation scope are encoded by the SDK once and reused.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind

from service.kit.request_span import UNSET, RequestSpan

log = logging.getLogger(__name__)

BATCH_SIZE_VARIABLE = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
QUEUE_SIZE_VARIABLE = "OTEL_BSP_MAX_QUEUE_SIZE"
BATCH_SIZE, QUEUE_SIZE = 2048, 8192  # ours, where the SDK's 512 and 2048 post too often
# The kind field (6) with OTLP's Span.SpanKind numbers: the SDK counts from 0, OTLP from 1.
KIND_FIELDS = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
SERVER_KIND = KIND_FIELDS[SpanKind.SERVER]
TIMES = struct.Struct("<BQBQ")  # start (fixed64 field 7) and end (fixed64 field 8)
UNSET_STATUS = b"\x7a\x00"  # an empty Status (field 15): the SDK always writes one
# SpanFlags (fixed32 field 16) as the SDK's encoder sets them: HAS_IS_REMOTE, and IS_REMOTE
# for a remote parent.
LOCAL_FLAGS, REMOTE_FLAGS = (
    b"\x85\x01" + struct.pack("<I", 0x100),
    b"\x85\x01" + struct.pack("<I", 0x300),
)
INT64 = range(-(2**63), 2**63)
CACHED_ENCODINGS = 4096  # names and (key, value) pairs kept encoded: most repeat


def batch_processor(environ: Mapping[str, str]) -> BatchSpanProcessor:
    """The SDK's batch processor over ``OtlpSpanExporter``, our sizes where no variable is
    set (None: the SDK reads its variable). A queue size that is set keeps the SDK's batch
    size, which it then checks against that queue as it always does."""
    queue = None if QUEUE_SIZE_VARIABLE in environ else QUEUE_SIZE
    batch = None if BATCH_SIZE_VARIABLE in environ or queue is None else BATCH_SIZE
    return BatchSpanProcessor(OtlpSpanExporter(), max_queue_size=queue, max_export_batch_size=batch)


class OtlpSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP protobuf span exporter (its HTTP client, its own metrics), the
    request encoded by ``RequestEncoder``. Not checked: the SDK's ``max_request_size``
    (64 MiB by default; a batch of 2048 request spans is about 0.4 MiB)."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = RequestEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                payload = self._encoder.encode(spans)
            except Exception as error:  # the SDK drops a batch it cannot encode; so do we
                log.exception("could not encode %d spans for OTLP", len(spans))
                result.error = error
                return SpanExportResult.FAILURE
            sent = self._client.export(payload)
            if not sent.success:
                result.error = sent.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


class RequestEncoder:
    """``ExportTraceServiceRequest`` bytes for a batch, equal to the SDK encoder's: spans
    grouped by resource, then by instrumentation scope, in the order they come."""

    def __init__(self) -> None:
        # id -> (the object, so that its id is not reused; its field 1; its schema field 3)
        self._resources: dict[int, tuple[Any, bytes, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes, bytes]] = {}
        self._attributes: dict[tuple[str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._attribute_sets: dict[tuple[tuple[tuple[str, Any], ...], tuple[type, ...]], bytes] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[int, dict[int, list[bytes]]] = {}
        for span in spans:
            encoded = self.span(span)
            if encoded is None:
                return bytes(encode_spans(spans).SerializePartialToString())
            resource, scope = id(span.resource), id(span.instrumentation_scope)
            if resource not in self._resources or scope not in self._scopes:
                self._resources[resource], self._scopes[scope] = group_headers(span)
            groups.setdefault(resource, {}).setdefault(scope, []).append(encoded)
        return b"".join(
            field(1, self.resource_spans(resource, scopes)) for resource, scopes in groups.items()
        )

    def resource_spans(self, resource: int, scopes: dict[int, list[bytes]]) -> bytes:
        _, encoded, schema = self._resources[resource]
        return (
            encoded
            + b"".join(field(2, self.scope_spans(scope, spans)) for scope, spans in scopes.items())
            + schema
        )

    def scope_spans(self, scope: int, spans: list[bytes]) -> bytes:
        _, encoded, schema = self._scopes[scope]
        return encoded + b"".join([field(2, span) for span in spans]) + schema

    def span(self, span: ReadableSpan) -> bytes | None:
        """One span's bytes, or None when it holds what only the SDK's encoder writes."""
        if type(span) is RequestSpan and not span._events:
            return self.request_span(span)
        if span.events or span.links or span.dropped_attributes:
            return None
        context, parent = span.context, span.parent
        parts = [
            b"\x0a\x10",
            context.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            parts.append(field(3, ",".join(f"{k}={v}" for k, v in context.trace_state.items())))
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        parts += (self.name(span.name), KIND_FIELDS[span.kind])
        parts.append(TIMES.pack(0x39, span.start_time, 0x41, span.end_time))
        for key, value in (span.attributes or {}).items():
            encoded = self.attribute(key, value)
            if encoded is None:
                return None
            parts.append(encoded)
        parts.append(status(span))
        parts.append(REMOTE_FLAGS if parent is not None and parent.is_remote else LOCAL_FLAGS)
        return b"".join(parts)

    def request_span(self, span: RequestSpan) -> bytes | None:
        """``span`` above for the API's request span (no links, no drops; here no events),
        read from its fields: most of the export thread's work per span is in reading."""
        trace_id, span_id, _, _, trace_state, _ = span._context
        parent = span._parent
        parts = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big")]
        if trace_state:
            parts.append(field(3, ",".join(f"{k}={v}" for k, v in trace_state.items())))
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        attributes = self.attribute_set(span._attributes)
        if attributes is None:
            return None
        parts += (
            self.name(span._name),
            SERVER_KIND,
            TIMES.pack(0x39, span._start_time, 0x41, span._end_time),
            attributes,
            UNSET_STATUS if span._status is UNSET else status(span),
            REMOTE_FLAGS if parent is not None and parent.is_remote else LOCAL_FLAGS,
        )
        return b"".join(parts)

    def attribute_set(self, attributes: dict[str, Any]) -> bytes | None:
        """The attributes fields of a whole set; the same sets repeat (one per route and
        status, where the path holds no id). Keyed with the values' types: 1 == True."""
        items = tuple(attributes.items())
        cache_key = (items, tuple(map(type, attributes.values())))
        encoded = self._attribute_sets.get(cache_key)
        if encoded is None:
            pairs = [self.attribute(key, value) for key, value in items]
            if None in pairs:
                return None
            encoded = b"".join(pairs)  # type: ignore[arg-type]
            if len(self._attribute_sets) >= CACHED_ENCODINGS:
                self._attribute_sets.clear()
            self._attribute_sets[cache_key] = encoded
        return encoded

    def name(self, name: str) -> bytes:
        """The name field (5); names repeat (one per route), so they are kept encoded."""
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) >= CACHED_ENCODINGS:
                self._names.clear()
            encoded = self._names[name] = field(5, name)
        return encoded

    def attribute(self, key: str, value: Any) -> bytes | None:
        """The span's ``attributes`` entry (field 9) for one pair; None for other types."""
        cache_key = (key, value.__class__, value)
        encoded = self._attributes.get(cache_key)
        if encoded is None:
            any_value = scalar(value)
            if any_value is None:
                return None
            encoded = field(9, field(1, key) + field(2, any_value))
            if len(self._attributes) >= CACHED_ENCODINGS:
                self._attributes.clear()
            self._attributes[cache_key] = encoded
        return encoded


def group_headers(span: ReadableSpan) -> tuple[tuple[Any, bytes, bytes], tuple[Any, bytes, bytes]]:
    """The span's resource and scope as the SDK encodes them: the ResourceSpans' resource
    (field 1) and schema URL (3), the ScopeSpans' scope (1) and schema URL (3)."""
    resource_spans = encode_spans([span]).resource_spans[0]
    scope_spans = resource_spans.scope_spans[0]
    return (
        (
            span.resource,
            field(1, resource_spans.resource.SerializeToString()),
            field(3, resource_spans.schema_url) if resource_spans.schema_url else b"",
        ),
        (
            span.instrumentation_scope,
            field(1, scope_spans.scope.SerializeToString()),
            field(3, scope_spans.schema_url) if scope_spans.schema_url else b"",
        ),
    )


def scalar(value: Any) -> bytes | None:
    """An ``AnyValue`` holding ``value`` (str, bool, int64 or float), else None."""
    if isinstance(value, str):
        return field(1, value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF) if value in INT64 else None
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    return None


def status(span: ReadableSpan) -> bytes:
    """The Status field (15): its description (field 2) and code (field 3) when set."""
    code, description = span.status.status_code.value, span.status.description
    if not code and not description:
        return UNSET_STATUS
    message = field(2, description) if description else b""
    return field(15, message + (b"\x18" + varint(code) if code else b""))


def field(number: int, value: str | bytes) -> bytes:
    """A length-delimited field: its tag, the length, the bytes (a str as UTF-8)."""
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def varint(number: int) -> bytes:
    if number < 0x80:
        return bytes((number,))
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)
