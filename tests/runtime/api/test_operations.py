"""Operations, on SQLite and PostgreSQL: /metrics after real runs has the run, step, gate and connector
series; /readyz checks the database, the schema and a worker's heartbeat, and goes 503 naming what
failed; JSON logs carry the run id, request id and trace id."""

from __future__ import annotations

import io
import json
import logging
import time
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url

from runtime import logs
from tests.fakes import settle
from runtime.models import WorkerHeartbeat, utcnow

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}
UNKNOWN_SKU = {"items": [{"sku": "SKU-0000", "new_price": "10.00", "currency": "EUR"}], "reason": "no such product"}


def scrape(client) -> dict[tuple[str, frozenset], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample carrying ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and wanted <= l)


def start(client, payload: dict[str, Any]) -> str:
    answer = client.post("/api/v1/runs", json={"workflow": "price_change", "input": payload}, headers=OPERATOR)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_metrics_after_runs_have_the_run_step_gate_and_connector_series(client) -> None:
    before = scrape(client)
    done = settle(client, start(client, PRICE_105), {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    waiting = settle(client, start(client, PRICE_115), {"waiting_approval", "failed"})
    assert waiting["status"] == "waiting_approval"
    failed = settle(client, start(client, UNKNOWN_SKU), {"failed", "succeeded"})
    assert failed["status"] == "failed"
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    wf = {"workflow": "price_change"}
    assert grew("steward_runs_finished_total", status="succeeded", version="1.1.0", **wf) == 1
    assert grew("steward_runs_finished_total", status="failed", **wf) == 1
    assert grew("steward_run_duration_seconds_count", status="succeeded", **wf) == 1
    assert grew("steward_step_duration_seconds_count", node="read_prices", status="succeeded", **wf) >= 2
    assert grew("steward_step_duration_seconds_count", node="apply_prices", status="interrupted", **wf) == 1
    assert grew("steward_gate_decisions_total", action="pricing.set_price", decision="allow", **wf) == 1
    assert grew("steward_gate_decisions_total", action="pricing.get_price", decision="allow", **wf) >= 2
    assert grew("steward_connector_calls_total", connector="pricing", action="pricing.set_price", outcome="ok") == 1
    assert grew("steward_connector_calls_total", connector="pricing", action="pricing.get_price",
                outcome="connector_rejected") == 1
    assert grew("steward_connector_call_seconds_count", action="pricing.get_price") >= 3
    assert value(after, "steward_runs", status="waiting_approval", **wf) == 1
    assert value(after, "steward_approvals_pending") == 1
    assert value(after, "steward_approvals_pending_oldest_age_seconds") >= 0
    assert value(after, "steward_queue_depth") == 0
    assert value(after, "steward_executor_slots", state="total") == client.app.state.steward.executor.concurrency


class Flaky(httpx.AsyncBaseTransport):
    """The sandbox, answering 503 to the first ``failures`` requests."""

    def __init__(self, app: Any, failures: int) -> None:
        self.inner, self.failures = httpx.ASGITransport(app=app), failures

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures > 0:
            self.failures -= 1
            return httpx.Response(503, json={"status": "error", "message": "try again"})
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_connector_retries_are_counted(settings, sandbox) -> None:
    from fastapi.testclient import TestClient

    from runtime.app import create_app
    from runtime.service import build_connectors
    from tests.fakes import instant_retry

    connectors = build_connectors(settings, transport=Flaky(sandbox, failures=2), retry=instant_retry())
    with TestClient(create_app(settings, connectors=connectors)) as flaky:
        before = scrape(flaky)
        assert settle(flaky, start(flaky, PRICE_105), {"succeeded", "failed"})["status"] == "succeeded"
        after = scrape(flaky)
    retries = value(after, "steward_connector_retries_total") - value(before, "steward_connector_retries_total")
    assert retries == 2


def test_readyz_reports_each_check(client) -> None:
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.text
    checks = answer.json()["checks"]
    assert checks["database"] == "ok" and checks["schema"].startswith("ok (") and checks["worker"].startswith("ok")


def test_readyz_is_503_without_a_recent_worker_heartbeat_and_with_a_schema_behind(client) -> None:
    steward = client.app.state.steward
    client.portal.call(steward.executor.stop)  # a clean stop: this worker no longer reports itself
    gone = client.get("/readyz")
    assert gone.status_code == 503 and "no worker" in gone.json()["details"]["checks"]["worker"]
    stale_at = utcnow() - timedelta(seconds=steward.settings.lease_seconds * 3)
    steward.db.transaction(lambda s: s.add(WorkerHeartbeat(worker_id="host:1:dead", started_at=stale_at,
                                                           seen_at=stale_at, concurrency=1)))
    stale = client.get("/readyz")
    assert stale.status_code == 503 and stale.headers["content-type"] == "application/problem+json"
    assert stale.json()["code"] == "not_ready" and "worker" in stale.json()["detail"]
    assert "none seen for" in stale.json()["details"]["checks"]["worker"]
    assert stale.json()["details"]["checks"]["database"] == "ok"
    client.portal.call(steward.executor.start)  # reports itself at once
    assert client.get("/readyz").status_code == 200

    revision = steward.db.transaction(lambda s: s.execute(text("SELECT version_num FROM alembic_version")).scalar())
    steward.db.transaction(lambda s: s.execute(text("UPDATE alembic_version SET version_num = '0005'")))
    try:
        behind = client.get("/readyz")
        assert behind.status_code == 503 and "needs" in behind.json()["details"]["checks"]["schema"]
    finally:
        steward.db.transaction(lambda s: s.execute(text("UPDATE alembic_version SET version_num = :v"),
                                                   {"v": revision}))


def test_readyz_is_503_when_no_worker_ever_reported(settings, connectors) -> None:
    from fastapi.testclient import TestClient

    from runtime.app import create_app

    with TestClient(create_app(settings, connectors=connectors, start_executor=False)) as api_only:
        answer = api_only.get("/readyz")
    assert answer.status_code == 503 and "no worker" in answer.json()["details"]["checks"]["worker"]


def test_readyz_is_503_while_the_database_is_unreachable(client, settings, monkeypatch) -> None:
    steward = client.app.state.steward
    if settings.is_sqlite:  # a file cannot refuse connections: its reads fail instead
        async def unreachable(*_: Any, **__: Any) -> Any:
            raise psycopg.OperationalError("the database is gone")

        def unreachable_now(*_: Any, **__: Any) -> Any:
            raise psycopg.OperationalError("the database is gone")

        monkeypatch.setattr(steward.db, "run", unreachable)
        monkeypatch.setattr(steward.db, "transaction", unreachable_now)
        down = client.get("/readyz")
        scraped_while_down = client.get("/metrics")
        monkeypatch.undo()
    else:  # PostgreSQL for real: refuse new connections and cut the open ones
        dbname = make_url(settings.database_url).database
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
            try:
                down = client.get("/readyz")
                scraped_while_down = client.get("/metrics")
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    assert down.status_code == 503, down.text
    assert scraped_while_down.status_code == 200, "the counters kept in memory are served during an outage"
    assert "steward_metrics_database_up 0.0" in scraped_while_down.text
    assert "steward_runs_finished_total" in scraped_while_down.text or "steward_gate" in scraped_while_down.text \
        or "steward_executor_slots" in scraped_while_down.text
    body = down.json()
    assert body["retryable"] is True and "does not answer" in body["details"]["checks"]["database"]
    assert down.headers["Retry-After"] == "1"
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "readiness never came back with the database"
        time.sleep(0.2)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_json_logs_carry_the_run_request_and_trace_ids(client) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        run_id = start(client, UNKNOWN_SKU)  # the executor logs the failure while it drives the run
        settle(client, run_id, {"failed"})
        client.get("/api/v1/runs/nope", headers={**OPERATOR, "X-Request-ID": "req-42"})
        logging.getLogger("steward.test").warning("outside any run")
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all({"time", "level", "logger", "message", "run_id", "request_id", "trace_id"} <= set(line)
               for line in lines)
    failure = [line for line in lines if line["logger"] == "steward.executor" and "failed" in line["message"]]
    assert failure and failure[0]["run_id"] == run_id
    assert failure[0]["trace_id"] is None or len(failure[0]["trace_id"]) == 32
    outside = [line for line in lines if line["message"] == "outside any run"]
    assert outside[0]["run_id"] is None and outside[0]["request_id"] is None
