"""Every endpoint checks the token's scopes: a refusal is a 403 problem, changes nothing and is audited
(``authz.denied``); demo mode's tokens carry the scopes of their kind of user and stop working on a
server outside demo mode, also in a database first created in demo mode; tokens issued before scopes
existed keep every scope and demo tokens among them are marked."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import text

from runtime import scopes, store
from runtime.app import create_app
from runtime.db import MIGRATIONS, Database
from runtime.models import ApiToken

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}


def token(client, user: str, granted) -> dict[str, str]:
    _, plain = client.app.state.steward.db.transaction(
        lambda s: store.create_token(session=s, user=user, scopes=granted))
    return {"Authorization": f"Bearer {plain}"}


def test_a_token_without_the_scope_is_refused_audited_and_changes_nothing(client) -> None:
    reader = token(client, "read.only", ["runs:read"])
    before = client.get("/api/v1/runs", headers=reader)
    assert before.status_code == 200 and before.json()["data"] == []
    refused = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=reader)
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["code"] == "forbidden" and "'runs:write'" in body["detail"]
    assert body["details"] == {"scope": "runs:write", "scopes": ["runs:read"]}
    assert client.get("/api/v1/runs", headers=reader).json()["data"] == [], "no run was started"
    denied = [e for e in client.get("/api/v1/audit", headers=client.operator).json()["data"]
              if e["kind"] == "authz.denied"]
    assert [(e["actor"], e["data"]["scope"], e["data"]["method"], e["data"]["path"]) for e in denied] == [
        ("read.only", "runs:write", "POST", "/api/v1/runs")]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the scopes, not the store
@pytest.mark.parametrize(("method", "path", "scope"), [
    ("get", "/api/v1/runs", "runs:read"),
    ("post", "/api/v1/runs", "runs:write"),
    ("get", "/api/v1/approvals", "approvals:read"),
    ("get", "/api/v1/audit", "audit:read"),
    ("get", "/api/v1/audit/verify", "audit:read"),
    ("get", "/api/v1/quarantine", "quarantine:read"),
    ("get", "/api/v1/workflows", "workflows:read"),
    ("post", "/api/v1/policy/evaluate", "policy:read"),
])
def test_each_operation_needs_its_scope_and_nothing_more(client, method: str, path: str, scope: str) -> None:
    others = token(client, "other.scopes", scopes.ALL - {scope})
    exact = token(client, "exact.scope", [scope])
    body = {"workflow": "price_change", "input": PRICE_115} if path == "/api/v1/runs" else {
        "workflow": "price_change", "action": "pricing.set_price",
        "arguments": {"sku": "SKU-1001", "currency": "EUR", "amount": "101.00"}} if "policy" in path else None
    refused = client.request(method, path, json=body, headers=others)
    assert refused.status_code == 403 and refused.json()["details"]["scope"] == scope
    allowed = client.request(method, path, json=body, headers=exact)
    assert allowed.status_code in (200, 201), allowed.text


def test_the_demo_tokens_carry_the_scopes_of_their_kind_of_user(client) -> None:
    compliance = {"Authorization": "Bearer steward-demo-compliance"}
    second = {"Authorization": "Bearer steward-demo-approver-2"}
    assert client.get("/api/v1/me", headers=second).json() == {"user": "demo.approver2"}
    assert client.get("/api/v1/audit", headers=compliance).status_code == 200
    assert client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                       headers=compliance).status_code == 403
    assert client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                       headers=client.approver).status_code == 403, "an approver starts no runs"
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                      headers=client.operator).json()
    run = client.get(f"/api/v1/runs/{run['id']}", params=[("wait", 30), ("until", "waiting_approval")],
                     headers=client.operator).json()
    url = f"/api/v1/approvals/{run['pending_approval_id']}/decision"
    assert client.post(url, json={"decision": "approve"}, headers=client.operator).status_code == 403
    assert client.post(url, json={"decision": "approve"}, headers=compliance).status_code == 403
    assert client.post(url, json={"decision": "approve"}, headers=second).status_code == 200


def test_demo_tokens_stop_working_outside_demo_mode_in_a_database_made_in_demo_mode(settings, connectors) -> None:
    with TestClient(create_app(settings, connectors=connectors)) as demo:  # seeds the demo tokens
        assert demo.get("/api/v1/me", headers={"Authorization": "Bearer steward-demo-operator"}).status_code == 200
        _, plain = demo.app.state.steward.db.transaction(
            lambda s: store.create_token(session=s, user="real.person", scopes=["runs:read"]))
    production = settings.model_copy(update={"demo": False})
    with TestClient(create_app(production, connectors=connectors)) as client:
        for demo_token in ("steward-demo-operator", "steward-demo-approver", "steward-demo-approver-2",
                           "steward-demo-compliance"):
            refused = client.get("/api/v1/runs", headers={"Authorization": f"Bearer {demo_token}"})
            assert refused.status_code == 401 and "demo token" in refused.json()["detail"], refused.text
        assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {plain}"}).status_code == 200


def test_tokens_issued_before_scopes_keep_every_scope_and_old_demo_tokens_are_marked(database_url: str) -> None:
    db = Database(database_url)
    db.upgrade()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = db.url
    command.downgrade(config, "0009")  # a database as it was before scopes
    rows = [("old.bot", "stw_" + uuid.uuid4().hex), ("demo.operator", "steward-demo-operator")]
    with db.engine.begin() as conn:
        for user, plain in rows:
            conn.execute(text("INSERT INTO api_tokens (id, \"user\", token_hash, created_at) "
                              "VALUES (:id, :user, :hash, CURRENT_TIMESTAMP)"),
                         {"id": uuid.uuid4().hex, "user": user, "hash": hashlib.sha256(plain.encode()).hexdigest()})
    db.upgrade()
    found = {t.user: t for t in db.transaction(lambda s: list(s.query(ApiToken)), read_only=True)}
    db.engine.dispose()
    then = scopes.ALL - {"rollouts:write"}  # every scope there was (a later scope is granted, never assumed)
    assert set(found["old.bot"].scopes) == then and found["old.bot"].demo is False
    assert set(found["demo.operator"].scopes) == then and found["demo.operator"].demo is True


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_refusal_audits_the_route_not_the_path_the_caller_chose(client) -> None:
    nothing = token(client, "no.scopes", [])
    long_id = "x" * 5000
    assert client.get(f"/api/v1/runs/{long_id}", headers=nothing).status_code == 403
    [denied] = [e for e in client.get("/api/v1/audit", headers=client.operator).json()["data"]
                if e["kind"] == "authz.denied"]
    assert denied["data"]["path"] == "/api/v1/runs/{run_id}" and long_id not in str(denied)
