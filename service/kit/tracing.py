"""OpenTelemetry tracing, on only when the standard ``OTEL_*`` variables ask for it (SPEC 9).

``configure`` decides once, at a process's start, whether to trace: with
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set or
``OTEL_TRACES_EXPORTER=otlp``, spans go over OTLP/HTTP protobuf; ``OTEL_TRACES_EXPORTER=none``
or ``OTEL_SDK_DISABLED=true`` keep it off. Sampling, service name and resource attributes
come from the SDK's own variables (``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``, ...).

Off, ``ENABLED`` stays False and nothing of the SDK is imported: callers on a hot path
check the flag first (the API installs its tracing middleware only when on). The context
travels as a W3C ``traceparent`` string: stored with the event, in the AMQP header of the
same name and in HTTP headers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
SCOPE = "fintegrate"  # the instrumentation scope of our spans
ENABLED = False
_tracer: Any = None
_provider: Any = None
# Filled once on, so that a request imports and looks up nothing of the SDK:
_kinds: dict[str, Any] = {}  # "server" -> SpanKind.SERVER
_propagator: Any = None
_attach: Any = None  # opentelemetry.context.attach
_detach: Any = None
_in_context: Any = None  # opentelemetry.trace.set_span_in_context
_request_spans: Any = None  # service.kit.request_span.RequestSpans, when the SDK's defaults allow


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces exported over OTLP."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "none" in exporters:
        return False
    if "otlp" in exporters:
        return True
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Start tracing for this process when the environment asks for it; returns ENABLED.

    ``service_name`` is the default ``service.name`` (``OTEL_SERVICE_NAME`` wins). Once on,
    later calls change nothing. Without the SDK installed (a tenant's worker installs only
    pika, httpx and pydantic) it stays off, with a warning.
    """
    global ENABLED, _tracer, _provider, _propagator, _attach, _detach, _in_context, _request_spans
    if ENABLED or not wanted(environ):
        return ENABLED
    try:
        from opentelemetry import context, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from service.kit.request_span import RequestSpans
        from service.kit.span_export import batch_processor
    except ImportError as exc:
        log.warning("OTEL_* variables ask for traces, but %s; tracing stays off", exc)
        return False

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    _provider = TracerProvider(resource=Resource.create(attributes))
    processor = batch_processor(environ)
    _provider.add_span_processor(processor)
    trace.set_tracer_provider(_provider)
    _tracer = _provider.get_tracer(SCOPE)
    if RequestSpans.usable(_provider):
        _request_spans = RequestSpans(_provider, SCOPE, processor)
    _kinds.update((kind.name.lower(), kind) for kind in trace.SpanKind)
    _propagator = TraceContextTextMapPropagator()
    _attach, _detach, _in_context = context.attach, context.detach, trace.set_span_in_context
    ENABLED = True
    log.info("tracing on: spans exported over OTLP/HTTP as %s", _service(environ, service_name))
    return True


def flush(timeout_millis: int = 5000) -> None:
    """Export the spans still buffered (before a process exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


@contextmanager
def span(
    name: str,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> Iterator[Any]:
    """A span around the block (the current one inside it); yields None when tracing is off.

    ``parent`` is a ``traceparent`` to continue (from a header or a stored event); without
    it the span continues the current one. ``kind``: internal, server, client, producer,
    consumer. An exception leaving the block marks the span as an error.
    """
    if not ENABLED:
        yield None
        return
    context = _extract(parent) if parent else None
    with _tracer.start_as_current_span(
        name, context=context, kind=_kinds[kind], attributes=attributes
    ) as current:
        yield current


def start_span(
    name: str, kind: str, attributes: Mapping[str, Any], parent: str | None = None
) -> Any:
    """A started span that is not made current (end it with ``end_span``); None when off."""
    if not ENABLED:
        return None
    context = _extract(parent) if parent else None
    return _tracer.start_span(name, context=context, kind=_kinds[kind], attributes=attributes)


def start_request_span(method: str, path: str, parent: str | None = None) -> tuple[Any, str | None]:
    """A started SERVER span for an HTTP request (not current; end it with ``end``), named
    ``method``, continuing ``parent`` (a ``traceparent``), and its own ``traceparent``.
    Only when on.

    Built directly (``kit.request_span``) unless span limits or the id generator were
    changed from the SDK's defaults; then by the SDK's tracer.
    """
    attributes = {"http.request.method": method, "url.path": path}
    if _request_spans is None:
        span = start_span(method, "server", attributes, parent)
        return span, traceparent_of(span)
    return _request_spans.start(method, attributes, _extract(parent) if parent else None)


def make_current(current: Any) -> Any:
    """Make ``current`` (a started span) the current one; returns the token for ``detach``."""
    return _attach(_in_context(current))


def detach(token: Any) -> None:
    """Undo ``make_current``."""
    _detach(token)


def record_error(current: Any, error: BaseException) -> None:
    """``error`` left the span's block: an exception event and the ERROR status."""
    current.record_exception(error)
    mark_error(current, f"{type(error).__name__}: {error}")


def mark_error(current: Any, description: str | None = None) -> None:
    """Give ``current`` (a recording span) the ERROR status."""
    from opentelemetry.trace import StatusCode

    current.set_status(StatusCode.ERROR, description)


def end_span(current: Any, error: str | None = None) -> None:
    """End a span from ``start_span``, as an error with ``error`` as its description."""
    if current is None:
        return
    if error is not None:
        mark_error(current, error)
    current.end()


def traceparent_of(current: Any) -> str | None:
    """The W3C ``traceparent`` naming ``current`` (a span) as the parent; None if invalid.

    Formatted here rather than through the propagator's ``inject``: the same string, for a
    fraction of the work on every traced request.
    """
    if current is None:
        return None
    context = current.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span; None when off or outside any span."""
    if not ENABLED:
        return None
    from opentelemetry.trace import get_current_span

    return traceparent_of(get_current_span())


def outgoing_headers() -> dict[str, str]:
    """``{"traceparent": ...}`` of the current span for an outgoing request ({} when off)."""
    traceparent = current_traceparent()
    return {TRACEPARENT: traceparent} if traceparent else {}


def set_attribute(current: Any, key: str, value: Any) -> None:
    """Set one attribute on ``current`` (a span from ``span``, or None when off)."""
    if current is not None:
        current.set_attribute(key, value)


def _extract(traceparent: str) -> Any:
    return _propagator.extract({TRACEPARENT: traceparent})


def _service(environ: Mapping[str, str], default: str) -> str:
    return environ.get("OTEL_SERVICE_NAME") or default
