"""Complete traces, through the HTTP app: one trace per run whose root is exported, ERROR status on what
failed, traceparent sent to the services Steward calls, and an approval decision traced in its request's
trace with a link to the run's."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from runtime.app import create_app
from runtime.service import build_connectors
from runtime.telemetry import setup_tracing
from tests.fakes import instant_retry, settle

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}
APPROVER = {"Authorization": "Bearer steward-demo-approver"}
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
UNKNOWN_SKU = {"items": [{"sku": "SKU-0000", "new_price": "10.00", "currency": "EUR"}], "reason": "no such product"}

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # tracing is database-blind


class Recording(httpx.AsyncBaseTransport):
    """The sandbox, keeping the headers of every request it receives."""

    def __init__(self, app: Any) -> None:
        self.inner, self.headers = httpx.ASGITransport(app=app), []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(dict(request.headers))
        return await self.inner.handle_async_request(request)


@pytest.fixture
def traced(settings, sandbox):
    exporter = InMemorySpanExporter()
    setup_tracing(extra=exporter)
    transport = Recording(sandbox)
    connectors = build_connectors(settings, transport=transport, retry=instant_retry())
    with TestClient(create_app(settings, connectors=connectors)) as client:
        yield client, exporter, transport


def in_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[Any]:
    time.sleep(0.1)  # the HTTP server span ends after its response was sent
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


def test_a_run_is_one_trace_with_its_root_exported_and_the_decision_links_to_it(traced) -> None:
    client, exporter, transport = traced
    created = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=OPERATOR)
    run = settle(client, created.json()["id"], {"waiting_approval"})
    decided = client.post(f"/api/v1/approvals/{run['pending_approval_id']}/decision",
                          json={"decision": "approve", "comment": "ok"}, headers=APPROVER)
    assert decided.status_code == 200
    assert settle(client, run["id"], {"succeeded", "failed"})["status"] == "succeeded"

    spans = in_trace(exporter, run["trace_id"])
    by_id = {s.context.span_id: s for s in spans}
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1 and roots[0].name.startswith("POST"), [s.name for s in roots]
    orphans = [s.name for s in spans if s.parent is not None and s.parent.span_id not in by_id]
    assert orphans == [], f"spans whose parent was never exported: {orphans}"
    names = {s.name for s in spans}
    assert {"steward.submit", "steward.run", "steward.step read_prices", "steward.gate",
            "steward.connector pricing.set_price"} <= names
    executions = [s for s in spans if s.name == "steward.run"]
    assert len(executions) == 2, "one execution before the approval, one after"
    submit = next(s for s in spans if s.name == "steward.submit")
    assert all(s.parent.span_id == submit.context.span_id for s in executions)

    [decide] = [s for s in exporter.get_finished_spans() if s.name == "steward.approval.decide"
                and s.attributes.get("steward.run_id") == run["id"]]
    assert format(decide.context.trace_id, "032x") != run["trace_id"], "the decision has its request's trace"
    request_span = next(s for s in exporter.get_finished_spans()
                        if s.context.trace_id == decide.context.trace_id and s.parent is None)
    assert request_span.name.startswith("POST")
    assert [(format(link.context.trace_id, "032x"), link.context.span_id) for link in decide.links] == [
        (run["trace_id"], submit.context.span_id)]


def test_failures_set_error_status_with_the_code_and_calls_carry_traceparent(traced) -> None:
    client, exporter, transport = traced
    created = client.post("/api/v1/runs", json={"workflow": "price_change", "input": UNKNOWN_SKU}, headers=OPERATOR)
    run = settle(client, created.json()["id"], {"failed", "succeeded"})
    assert run["status"] == "failed"
    spans = in_trace(exporter, run["trace_id"])
    failed = {s.name: s for s in spans if s.status.status_code is StatusCode.ERROR}
    assert {"steward.run", "steward.step read_prices", "steward.connector pricing.get_price"} <= set(failed)
    assert failed["steward.connector pricing.get_price"].status.description.startswith("connector_rejected")
    assert failed["steward.run"].attributes["steward.error"] == run["error"]["code"]
    ok = [s for s in spans if s.name == "steward.submit"]
    assert ok and ok[0].status.status_code is not StatusCode.ERROR

    connector = next(s for s in spans if s.name == "steward.connector pricing.get_price")
    sent = [h["traceparent"] for h in transport.headers if "traceparent" in h]
    assert sent, "no request carried traceparent"
    version, trace_id, parent_id, flags = sent[-1].split("-")
    assert (version, trace_id, int(parent_id, 16)) == ("00", run["trace_id"], connector.context.span_id)
