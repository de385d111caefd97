"""OpenTelemetry tracing for runs, steps, gate decisions and connector calls.

The exporter follows the standard variables: ``OTEL_TRACES_EXPORTER`` is
``none`` (default), ``console`` or ``otlp`` (then ``OTEL_EXPORTER_OTLP_*`` apply);
``OTEL_SERVICE_NAME`` names the service. Spans are recorded even with no
exporter, so every audit event can carry the trace id of what caused it.

>>> setup_tracing()
>>> with tracer().start_as_current_span("steward.run") as span: ...
"""

from __future__ import annotations

import functools
import os
import random
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from runtime.errors import StewardError

_lock = threading.Lock()
_configured = False


class RecordWhenExporting(Sampler):
    """Records spans only while some exporter will read them; otherwise spans are created
    non-recording, which still carry the trace ids the audit trail stores, at a fraction of the cost."""

    def __init__(self) -> None:
        self.recording = False

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        state = parent.trace_state if parent.is_valid else None
        if self.recording:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
        return SamplingResult(Decision.DROP, None, state)

    def get_description(self) -> str:
        return "RecordWhenExporting"


_sampler = RecordWhenExporting()


class TelemetryConfigInvalid(StewardError):
    code = "telemetry_config_invalid"


def _exporters() -> list[SpanExporter]:
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            exporters.append(OTLPSpanExporter())
        else:
            raise TelemetryConfigInvalid(f"OTEL_TRACES_EXPORTER={name!r} is not one of none, console, otlp")
    return exporters


def setup_tracing(extra: SpanExporter | None = None) -> None:
    """Install Steward's tracer provider once per process (later calls only add ``extra``)."""
    global _configured
    with _lock:
        provider = trace.get_tracer_provider()
        if not _configured:
            resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "steward")})
            provider = TracerProvider(resource=resource, sampler=_sampler)
            for exporter in _exporters():
                provider.add_span_processor(BatchSpanProcessor(exporter))
                _sampler.recording = True
            trace.set_tracer_provider(provider)
            _configured = True
        if extra is not None and isinstance(provider, TracerProvider):
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            provider.add_span_processor(SimpleSpanProcessor(extra))
            _sampler.recording = True


@functools.cache
def tracer() -> trace.Tracer:
    """Steward's tracer (a proxy until :func:`setup_tracing` installs the provider)."""
    return trace.get_tracer("steward")


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits, or None outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def run_root(trace_id: str | None, root_span_id: str | None = None) -> SpanContext | None:
    """The span context of a run's root span (its ``steward.submit`` span, exported when the run was
    created). A run stored before root spans were kept gets a made-up parent in its trace."""
    if not trace_id:
        return None
    return SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(root_span_id, 16) if root_span_id else (random.getrandbits(64) or 1),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def run_parent(trace_id: str | None, root_span_id: str | None = None) -> Any:
    """A parent context under a run's root span: all of a run's spans share its trace."""
    root = run_root(trace_id, root_span_id)
    return None if root is None else trace.set_span_in_context(NonRecordingSpan(root))


def fail_span(span: Any, code: str, description: str = "") -> None:
    """Mark ``span`` failed: status ERROR with Steward's error ``code`` (also as ``steward.error``)."""
    span.set_attribute("steward.error", code)
    span.set_status(Status(StatusCode.ERROR, f"{code}: {description}"[:500] if description else code))
