"""Every status code the OpenAPI document declares for an operation is one a request can get, and its body
is the declared shape: each declared error status of each operation is provoked here and checked as a
problem (schemathesis checks the successes and whatever else it generates)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from runtime import scopes, store
from runtime.api.problems import Problem
from runtime.app import create_app
from runtime.errors import DatabaseUnavailable
from tests.fakes import settle

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}
APPROVER = {"Authorization": "Bearer steward-demo-approver"}
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the contract, not the store


@pytest.fixture
def api(settings, connectors):
    with TestClient(create_app(settings, connectors=connectors), raise_server_exceptions=False) as client:
        yield client


def problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, (answer.request.method, answer.request.url, answer.text)
    assert answer.headers["content-type"] == "application/problem+json"
    body = Problem.model_validate(answer.json()).model_dump()
    assert body["status"] == status and body["request_id"] == answer.headers["X-Request-ID"]
    return body


def test_every_declared_error_status_of_every_operation_is_reachable(api, monkeypatch) -> None:
    run = settle(api, api.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                               headers=OPERATOR).json()["id"], {"waiting_approval"})
    approval = run["pending_approval_id"]
    done = settle(api, api.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105},
                                headers=OPERATOR).json()["id"], {"succeeded"})
    suspect = {"email": "jo@mailinator.com", "first_name": "Jo", "last_name": "Ray", "company": "Ray Ltd",
               "country": "GB", "source": "web"}
    quarantined = settle(api, api.post("/api/v1/runs", json={"workflow": "lead_routing", "input": suspect},
                                       headers=OPERATOR).json()["id"], {"succeeded"})["output"]["quarantined"]
    ids = {"run_id": run["id"], "approval_id": approval, "name": "price_change", "item_id": quarantined}
    _, plain = api.app.state.steward.db.transaction(
        lambda s: store.create_token(session=s, user="scope.less", scopes=[]))
    unscoped = {"Authorization": f"Bearer {plain}"}
    _, plain = api.app.state.steward.db.transaction(
        lambda s: store.create_token(session=s, user="all.scopes", scopes=scopes.ALL))
    everything = {"Authorization": f"Bearer {plain}"}  # started no run: may decide any
    policy_hash = run["policy_hash"]
    bodies = {("post", "/api/v1/runs"): {"workflow": "price_change", "input": PRICE_105},
              ("post", "/api/v1/approvals/{approval_id}/decision"): {"decision": "approve", "comment": "ok"},
              ("post", "/api/v1/approvals/{approval_id}/comments"): {"comment": "margin looks thin"},
              ("post", "/api/v1/runs/{run_id}/policy"): {"policy_hash": policy_hash, "reason": "same set"},
              ("post", "/api/v1/workflows/{name}/rollout"): {"version": "1.1.0", "percent": 10, "reason": "try it"},
              ("post", "/api/v1/workflows/{name}/promote"): {"version": "1.1.0", "reason": "it is stable"},
              ("post", "/api/v1/workflows/{name}/rollback"): {"reason": "back to stable"},
              ("post", "/api/v1/policy/evaluate"): {"workflow": "price_change", "action": "pricing.set_price",
                                                    "arguments": {"sku": "SKU-1001", "currency": "EUR",
                                                                  "amount": "101.00"}}}

    # how to provoke each declared status, for any operation of the API
    def provoke(method: str, path: str, status: int) -> Any:
        url = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], path)
        body = bodies.get((method, path))
        if status == 401:
            return api.request(method, url, json=body)
        if status == 422:
            return api.request(method, url, params={"no_such_parameter": "1"}, json=body, headers=everything)
        if status == 404:
            if path == "/api/v1/runs":  # no such workflow
                return api.post(url, json={"workflow": "does-not-exist", "input": {}}, headers=everything)
            if path == "/api/v1/policy/evaluate":
                return api.post(url, json={**body, "workflow": "does_not_exist"}, headers=everything)
            missing = re.sub(r"{(\w+)}", "does-not-exist", path)
            return api.request(method, missing, json=body, headers=everything)
        if status == 403:  # a token without the operation's scope
            return api.request(method, url, json=body, headers=unscoped)
        if status == 409:
            if path.endswith("/cancel"):
                return api.post(f"/api/v1/runs/{done['id']}/cancel", headers=OPERATOR)
            if path.endswith("/policy"):
                return api.post(f"/api/v1/runs/{done['id']}/policy", json=body, headers=OPERATOR)
            if path.endswith("/decision"):
                api.post(f"/api/v1/approvals/{approval}/decision", json={"decision": "approve", "comment": "ok"},
                         headers=APPROVER)
                return api.post(f"/api/v1/approvals/{approval}/decision", json={"decision": "reject", "comment": "no"},
                                headers=APPROVER)
            if path.endswith("/comments"):  # a decided request takes no more comments
                api.post(f"/api/v1/approvals/{approval}/decision", json={"decision": "approve", "comment": "ok"},
                         headers=APPROVER)
                return api.post(url, json=body, headers=APPROVER)
            if path.startswith("/api/v1/quarantine/"):  # a decided record is decided
                api.post(f"/api/v1/quarantine/{quarantined}/drop", headers=OPERATOR)
                return api.request(method, url, headers=OPERATOR)
            if path.startswith("/api/v1/workflows/"):  # 1.1.0 is stable already; there is no canary to undo
                return api.post(url, json=body, headers=OPERATOR)
            if path == "/api/v1/runs":
                keyed = {**OPERATOR, "Idempotency-Key": "status-409"}
                api.post(url, json=body, headers=keyed)
                return api.post(url, json={"workflow": "price_change", "input": PRICE_115}, headers=keyed)
        if status == 503:
            async def unavailable(*_: Any, **__: Any) -> Any:
                raise DatabaseUnavailable("the database is unavailable or busy (test); retry later")

            steward = api.app.state.steward
            api.app.state.tokens._users.clear()  # the token lookup reads the database too
            with monkeypatch.context() as patched:
                patched.setattr(steward.db, "run", unavailable)
                patched.setattr(steward.db, "read_cursor", unavailable)
                return api.request(method, url, json=body, headers=OPERATOR)
        raise AssertionError(f"no way to provoke {status} for {method} {path}")

    document = api.get("/openapi.json").json()
    checked = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status in sorted(int(s) for s in operation["responses"] if s[0] in "45"):
                if path in ("/readyz",):  # its 503 is checked with a real outage in test_operations.py
                    continue
                body = problem(provoke(method, path, status), status)
                if status == 503:
                    assert body["retryable"] is True
                checked.append((operation["operationId"], status))
    api_operations = {op["operationId"] for path, ops in document["paths"].items() if path.startswith("/api/v1")
                      for op in ops.values()}
    assert len(api_operations) >= 13
    assert {(op, s) for op in api_operations for s in (401, 503)} <= set(checked), "every operation: 401 and 503"
    assert {("approvals-decide", 409), ("approvals-comment", 409), ("runs-cancel", 409), ("runs-create", 409), ("runs-get", 404)} <= set(checked)
