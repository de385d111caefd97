"""Failures of the server's own dependencies answer JSON: 503 with retryable for the database, never plain 500s."""

from __future__ import annotations

import psycopg
import pytest
from fastapi.testclient import TestClient

from runtime.app import create_app
from runtime.errors import DatabaseUnavailable

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}


@pytest.fixture
def app_client(settings, connectors):
    app = create_app(settings, connectors=connectors)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_database_busy_after_retries_answers_503_retryable(app_client, monkeypatch) -> None:
    executor = app_client.app.state.steward.executor

    async def busy(**_):
        raise DatabaseUnavailable("the database is unavailable or busy (OperationalError) after 6 attempts")

    monkeypatch.setattr(executor, "submit", busy)
    response = app_client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105},
                               headers=OPERATOR)
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable" and response.json()["retryable"] is True


def test_a_raw_driver_failure_is_503_json_and_an_unexpected_one_500_json(app_client, monkeypatch) -> None:
    executor = app_client.app.state.steward.executor

    async def lost(**_):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(executor, "submit", lost)
    response = app_client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105},
                               headers=OPERATOR)
    assert response.status_code == 503 and response.json()["retryable"] is True

    async def bug(**_):
        raise KeyError("oops")

    monkeypatch.setattr(executor, "submit", bug)
    response = app_client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105},
                               headers=OPERATOR)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == "steward_error" and "KeyError" in response.json()["message"]


def test_readiness_reports_the_database_liveness_does_not(app_client, monkeypatch) -> None:
    assert app_client.get("/readyz").json() == {"status": "ok"}
    db = app_client.app.state.steward.db

    async def down(fn):
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(db, "run", down)
    ready = app_client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable" and ready.json()["retryable"]
    assert app_client.get("/healthz").status_code == 200
