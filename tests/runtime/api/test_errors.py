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
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "internal_error" and "KeyError" not in response.text  # no internals leak
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_readiness_reports_the_database_liveness_does_not(app_client, monkeypatch) -> None:
    assert app_client.get("/readyz").json()["status"] == "ok"
    db = app_client.app.state.steward.db

    async def down(fn):
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(db, "run", down)
    ready = app_client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["code"] == "not_ready" and ready.json()["retryable"]
    assert "does not answer" in ready.json()["details"]["checks"]["database"]
    assert app_client.get("/healthz").status_code == 200


def assert_problem(response, status: int, code: str) -> dict:
    """RFC 9457 problem details with Steward's code and the request's id (also in the header)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "code", "request_id"} <= body.keys()
    assert body["status"] == status and body["code"] == code and body["detail"] and body["title"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_kind_of_error_answers_one_problem_shape(app_client) -> None:
    c = app_client
    assert_problem(c.get("/api/v1/nope", headers=OPERATOR), 404, "route_not_found")
    not_allowed = assert_problem(c.delete("/api/v1/runs", headers=OPERATOR), 405, "method_not_allowed")
    assert not_allowed["type"] == "about:blank" and "GET" in c.delete("/api/v1/runs").headers["Allow"]
    bad_json = assert_problem(c.post("/api/v1/runs", content=b'{"workflow": ', headers={
        **OPERATOR, "Content-Type": "application/json"}), 422, "input_invalid")
    assert bad_json["errors"][0]["type"] == "json_invalid"
    undecodable = c.post("/api/v1/runs", content=b"\xff\xfe\x00garbage", headers={
        **OPERATOR, "Content-Type": "application/json"})
    assert_problem(undecodable, 422, "input_invalid")
    assert_problem(c.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105}), 401, "unauthorized")
    missing = assert_problem(c.get("/api/v1/runs/nope", headers=OPERATOR), 404, "run_not_found")
    assert missing["type"] == "urn:steward:problem:run_not_found"
    fields = assert_problem(c.post("/api/v1/runs", json={"workflow": "price_change", "input": {}},
                                   headers=OPERATOR), 422, "input_invalid")
    assert {tuple(e["loc"]) for e in fields["errors"]} >= {("input", "items")}


def test_a_sequence_number_beyond_the_columns_range_is_a_field_error_not_a_500(app_client) -> None:
    answer = app_client.get("/api/v1/audit", params={"after_seq": 2**31}, headers=OPERATOR)  # seq is 32-bit
    body = assert_problem(answer, 422, "input_invalid")
    assert body["errors"][0]["loc"] == ["query", "after_seq"]
    assert app_client.get("/api/v1/audit", params={"after_seq": 2**31 - 1}, headers=OPERATOR).json() == {
        "data": [], "next_cursor": None}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_request_ids_are_taken_from_the_client_when_well_formed_and_made_otherwise(app_client) -> None:
    mine = app_client.get("/healthz", headers={"X-Request-ID": "client-42.a:b"})
    assert mine.headers["X-Request-ID"] == "client-42.a:b"
    for hostile in ["has space", "x" * 129, "semi;colon", "<script>"]:
        answer = app_client.get("/api/v1/runs/nope", headers={**OPERATOR, "X-Request-ID": hostile})
        assert answer.headers["X-Request-ID"] != hostile and len(answer.headers["X-Request-ID"]) == 32
        assert answer.json()["request_id"] == answer.headers["X-Request-ID"]
    first, second = app_client.get("/healthz"), app_client.get("/healthz")
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unexpected_error_is_logged_under_the_request_id_the_client_sees(app_client, monkeypatch, caplog) -> None:
    executor = app_client.app.state.steward.executor

    async def bug(**_):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(executor, "submit", bug)
    answer = app_client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105},
                             headers={**OPERATOR, "X-Request-ID": "trace-me"})
    body = assert_problem(answer, 500, "internal_error")
    assert "secret" not in answer.text and body["request_id"] == "trace-me"
    assert any("trace-me" in r.getMessage() and r.exc_info for r in caplog.records)
