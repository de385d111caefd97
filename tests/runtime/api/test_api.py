"""The HTTP API in-process, on SQLite and PostgreSQL: the whole flow and every bad-input path."""

from __future__ import annotations

import time
from typing import Any

import pytest

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}


def settle(client, run_id: str, until: set[str]) -> dict[str, Any]:
    """Poll until the background executor moves the run into one of ``until`` (bounded, not a timing check)."""
    deadline = time.monotonic() + 30
    while True:
        body = client.get(f"/api/v1/runs/{run_id}", headers=client.operator).json()
        if body["status"] in until or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def counts(client) -> tuple[int, int]:
    runs = client.get("/api/v1/runs", headers=client.operator).json()["data"]
    events = client.get("/api/v1/audit", headers=client.operator).json()["data"]
    return len(runs), len(events)


def test_price_change_flow_through_the_api(client, sandbox) -> None:
    created = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=client.operator)
    assert created.status_code == 201
    run = created.json()
    assert {run["workflow"], run["version"], run["status"]} == {"price_change", "1.1.0", "queued"}

    run = settle(client, run["id"], {"waiting_approval", "failed"})
    assert run["status"] == "waiting_approval"
    assert [s["node"] for s in run["steps"]] == ["read_prices", "apply_prices"]
    pending = client.get("/api/v1/approvals", params={"status": "pending"}, headers=client.approver).json()["data"]
    assert [a["id"] for a in pending] == [run["pending_approval_id"]]
    assert pending[0]["run_id"] == run["id"]
    assert pending[0]["action"] == "pricing.set_price"
    assert pending[0]["arguments"] == {"sku": "SKU-1001", "currency": "EUR", "amount": "115.00"}
    assert (pending[0]["roles"], pending[0]["required_approvals"]) == (["pricing_manager"], 1)
    assert pending[0]["policy"]["policies"] == ["pricing.change_over_10_pct"]
    one = client.get(f"/api/v1/approvals/{pending[0]['id']}", headers=client.approver).json()
    assert one == pending[0]

    decided = client.post(f"/api/v1/approvals/{one['id']}/decision", json={"decision": "approve", "comment": "ok"},
                          headers=client.approver)
    assert decided.status_code == 200
    assert decided.json()["decided_by"] == "demo.approver"
    run = settle(client, run["id"], {"succeeded", "failed", "rejected"})
    assert run["status"] == "succeeded"
    assert sandbox.state.sandbox.prices[("SKU-1001", "EUR")]["amount"] == "115.00"

    trail = client.get("/api/v1/audit", params={"run_id": run["id"]}, headers=client.operator).json()["data"]
    assert trail[0]["kind"] == "run.created" and trail[-1]["kind"] == "run.succeeded"
    assert {e["trace_id"] for e in trail} == {run["trace_id"]}, "one run, one trace"
    assert client.get("/api/v1/audit/verify", headers=client.operator).json()["ok"] is True


def test_small_change_runs_straight_through(client, sandbox) -> None:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105},
                      headers=client.operator).json()
    assert settle(client, run["id"], {"succeeded", "failed", "waiting_approval"})["status"] == "succeeded"
    assert sandbox.state.sandbox.prices[("SKU-1002", "EUR")]["amount"] == "105.00"


def test_unknown_workflow_is_404_and_nothing_is_stored(client) -> None:
    before = counts(client)
    answer = client.post("/api/v1/runs", json={"workflow": "nope", "input": {}}, headers=client.operator)
    assert answer.status_code == 404
    assert answer.json()["code"] == "workflow_not_found"
    assert "price_change" in answer.json()["detail"]
    assert counts(client) == before


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"items": [{"sku": "SKU-1001", "new_price": "-1", "currency": "EUR"}], "reason": "x y"},
         {"input.items.0.new_price"}),
        ({"items": [{"sku": "bad", "new_price": "1.00", "currency": "EURO"}], "reason": "x y"},
         {"input.items.0.sku", "input.items.0.currency"}),
        ({"items": [], "reason": ""}, {"input.items", "input.reason"}),
        ({"reason": "missing items"}, {"input.items"}),
    ],
)
def test_invalid_input_is_422_naming_the_fields_and_nothing_is_stored(client, payload, fields) -> None:
    before = counts(client)
    answer = client.post("/api/v1/runs", json={"workflow": "price_change", "input": payload}, headers=client.operator)
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == "input_invalid"
    assert {".".join(map(str, d["loc"])) for d in body["errors"]} == fields
    for field in fields:
        assert field.removeprefix("input.") in body["detail"]
    assert counts(client) == before


def test_invalid_lead_email_is_422(client) -> None:
    lead = {"email": "not-an-email", "first_name": "J", "last_name": "D", "country": "Germany", "source": "web"}
    answer = client.post("/api/v1/runs", json={"workflow": "lead_routing", "input": lead}, headers=client.operator)
    assert answer.status_code == 422
    assert {".".join(map(str, d["loc"])) for d in answer.json()["errors"]} == {"input.email", "input.country"}


def test_malformed_body_is_422_with_field_errors(client) -> None:
    answer = client.post("/api/v1/runs", json={"input": {}, "extra": 1}, headers=client.operator)
    assert answer.status_code == 422
    locs = {".".join(map(str, d["loc"])) for d in answer.json()["errors"]}
    assert locs == {"body.workflow", "body.extra"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_missing_or_wrong_token_is_401(client, headers) -> None:
    for method, path in [("get", "/api/v1/runs"), ("post", "/api/v1/runs"), ("get", "/api/v1/approvals"),
                         ("get", "/api/v1/audit/verify")]:
        answer = client.request(method, path, headers=headers, json={"workflow": "price_change", "input": PRICE_105})
        assert answer.status_code == 401, (method, path)
        assert answer.json()["code"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert counts(client)[0] == 0


def test_healthz_needs_no_token(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_deciding_twice_is_409(client) -> None:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                      headers=client.operator).json()
    approval_id = settle(client, run["id"], {"waiting_approval", "failed"})["pending_approval_id"]
    url = f"/api/v1/approvals/{approval_id}/decision"
    assert client.post(url, json={"decision": "reject", "comment": "no"}, headers=client.approver).status_code == 200
    again = client.post(url, json={"decision": "approve"}, headers=client.approver)
    assert again.status_code == 409
    assert "already rejected by demo.approver" in again.json()["detail"]
    assert settle(client, run["id"], {"rejected", "failed"})["status"] == "rejected"


def test_bad_decision_value_is_422_and_unknown_approval_404(client) -> None:
    answer = client.post("/api/v1/approvals/nope/decision", json={"decision": "maybe"}, headers=client.approver)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == ["body", "decision"]
    answer = client.post("/api/v1/approvals/nope/decision", json={"decision": "approve"}, headers=client.approver)
    assert answer.status_code == 404


def test_unknown_run_is_404(client) -> None:
    answer = client.get("/api/v1/runs/does-not-exist", headers=client.operator)
    assert answer.status_code == 404 and answer.json()["code"] == "run_not_found"


def test_idempotency_key_returns_the_same_run(client) -> None:
    body = {"workflow": "price_change", "input": PRICE_105}
    headers = {**client.operator, "Idempotency-Key": "order-42"}
    first = client.post("/api/v1/runs", json=body, headers=headers)
    second = client.post("/api/v1/runs", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    clash = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=headers)
    assert clash.status_code == 409


def test_cancel_a_waiting_run(client) -> None:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                      headers=client.operator).json()
    settle(client, run["id"], {"waiting_approval"})
    cancelled = client.post(f"/api/v1/runs/{run['id']}/cancel", headers=client.operator)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["pending_approval_id"] is None
    assert client.post(f"/api/v1/runs/{run['id']}/cancel", headers=client.operator).status_code == 409


def test_openapi_documents_the_api(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/{run_id}/cancel", "/api/v1/approvals",
                 "/api/v1/approvals/{approval_id}/decision", "/api/v1/audit", "/api/v1/audit/verify", "/healthz"):
        assert path in paths


def test_workflows_are_listed_with_each_versions_input_schema(client) -> None:
    listed = client.get("/api/v1/workflows", headers=client.operator)
    assert listed.status_code == 200
    by_name = {wf["name"]: wf for wf in listed.json()}
    price = by_name["price_change"]
    assert price["latest_version"] == price["versions"][0]["version"]
    version = price["versions"][0]
    assert version["owner"]["email"] and version["description"] and "pricing.prices.write" in version["grants"]
    assert len(version["code_hash"]) == 64 and "items" in version["input_schema"]["properties"]
    one = client.get("/api/v1/workflows/price_change", headers=client.operator).json()
    assert [v["health"]["runs"] for v in one["versions"]] == [0, 0]  # the list leaves health out, one shows it
    assert [v["health"] for v in price["versions"]] == [None, None]
    assert [v["weight"] for v in one["versions"]] == [0, 100] and one["rollout"]["stable"] == "1.1.0"
    assert {k: v for k, v in one.items() if k != "versions"} == {k: v for k, v in price.items() if k != "versions"}
    assert [{k: v for k, v in ver.items() if k != "health"} for ver in one["versions"]] == [
        {k: v for k, v in ver.items() if k != "health"} for ver in price["versions"]]
    missing = client.get("/api/v1/workflows/nope", headers=client.operator)
    assert missing.status_code == 404 and missing.json()["code"] == "workflow_not_found"
    assert client.get("/api/v1/workflows").status_code == 401


def test_a_misspelt_query_parameter_is_refused_not_ignored(client) -> None:
    answer = client.get("/api/v1/runs", params={"stauts": "failed"}, headers=client.operator)
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{"loc": ["query", "stauts"], "msg": "not a parameter of this operation",
                                        "type": "extra_forbidden"}]
    assert client.get("/api/v1/runs", params={"status": "failed"}, headers=client.operator).status_code == 200
