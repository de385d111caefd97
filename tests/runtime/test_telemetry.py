"""Spans for run, step, gate and connector call carry run id, workflow and version."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import store
from runtime.service import Steward
from runtime.telemetry import setup_tracing

PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}


async def test_spans_and_audit_share_the_run_trace(steward: Steward) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(extra=exporter)
    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
    await steward.executor.drive(run.id)
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get("steward.run_id") == run.id]
    names = {s.name for s in spans}
    assert {"steward.run", "steward.step read_prices", "steward.gate", "steward.connector pricing.set_price"} <= names
    for span in spans:
        assert span.attributes["steward.workflow"] == "price_change"
        assert span.attributes["steward.version"] == "1.1.0"
        assert format(span.context.trace_id, "032x") == run.trace_id
    events = steward.db.transaction(lambda s: store.list_audit(session=s, run_id=run.id))
    assert {e.trace_id for e in events} == {run.trace_id}
