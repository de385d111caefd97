"""People and roles on SQLite and PostgreSQL: a request a policy escalated to a role is decided only by
someone holding that role now (403 and audited otherwise, also for a name that is nobody and for a
disabled user); disabling a user revokes their tokens at once; ``steward users`` adds, lists and
disables, with one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from approvals import users
from runtime import store

STEWARD = [sys.executable, "-m", "runtime.cli"]
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
DECIDER = ["approvals:read", "approvals:decide"]


def person(client, name: str, roles: list[str] | None) -> dict[str, str]:
    """A token that may decide, for ``name`` (added with ``roles`` unless None: then nobody by that name)."""
    def make(session):
        if roles is not None:
            users.add_user(session=session, name=name, roles=roles, actor="test")
        return store.create_token(session=session, user=name, scopes=DECIDER)[1]

    return {"Authorization": f"Bearer {client.app.state.steward.db.transaction(make)}"}


def waiting_price_change(client) -> str:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                      headers=client.operator).json()
    run = client.get(f"/api/v1/runs/{run['id']}", params=[("wait", 30), ("until", "waiting_approval")],
                     headers=client.operator).json()
    approval = client.get(f"/api/v1/approvals/{run['pending_approval_id']}", headers=client.operator).json()
    assert approval["roles"] == ["pricing_manager"], approval
    return approval["id"]


def test_only_a_holder_of_the_escalated_role_decides(client) -> None:
    approval = waiting_price_change(client)
    url = f"/api/v1/approvals/{approval}/decision"
    sales = person(client, "sam.sales", ["sales_ops"])
    nobody = person(client, "no.body", None)
    for headers, who in ((sales, "sam.sales"), (nobody, "no.body")):
        for decision in ("approve", "reject"):
            refused = client.post(url, json={"decision": decision, "comment": "x"}, headers=headers)
            assert refused.status_code == 403 and refused.json()["code"] == "forbidden", refused.text
            assert f"is for pricing_manager, which {who} is not" in refused.json()["detail"]
    assert client.get(f"/api/v1/approvals/{approval}", headers=client.operator).json()["status"] == "pending"
    denied = [e for e in client.get("/api/v1/audit", headers=client.operator).json()["data"]
              if e["kind"] == "authz.denied" and e["data"].get("approval_id") == approval]
    assert [e["actor"] for e in denied] == ["sam.sales"] * 2 + ["no.body"] * 2
    manager = person(client, "pat.pricing", ["pricing_manager"])
    decided = client.post(url, json={"decision": "approve", "comment": "ok"}, headers=manager)
    assert decided.status_code == 200 and decided.json()["decided_by"] == "pat.pricing"


def test_a_disabled_user_decides_nothing_and_their_tokens_stop_within_a_second(client) -> None:
    approval = waiting_price_change(client)
    url = f"/api/v1/approvals/{approval}/decision"
    manager = person(client, "pat.pricing", ["pricing_manager"])
    assert client.get("/api/v1/approvals", headers=manager).status_code == 200  # the token is now cached
    revoked = client.app.state.steward.db.transaction(
        lambda s: users.disable_user(session=s, name="pat.pricing", actor="test"))
    assert revoked == 1
    refused = client.post(url, json={"decision": "approve"}, headers=manager)  # within the cache's second
    assert refused.status_code in (401, 403), refused.text
    time.sleep(client.app.state.tokens.seconds + 0.05)
    assert client.get("/api/v1/approvals", headers=manager).status_code == 401
    assert client.get(f"/api/v1/approvals/{approval}", headers=client.operator).json()["status"] == "pending"


def steward(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*STEWARD, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the CLI, not the store
def test_users_are_added_listed_and_disabled_from_the_cli(serve) -> None:
    env = serve(worker=False)
    added = steward(env, "users", "add", "maria", "--role", "pricing_manager", "--email", "maria@example.com")
    assert added.returncode == 0 and "added maria (pricing_manager)" in added.stdout, added.stderr
    for args, message in ((["users", "add", "maria", "--role", "sales_ops"], "already a user named 'maria'"),
                          (["users", "add", "ivan", "--role", "Boss!"], "role name(s) 'Boss!' are not"),
                          (["users", "add", "tab\tname", "--role", "sales_ops"], "without control characters"),
                          (["users", "disable", "nobody"], "no user named 'nobody'")):
        refused = steward(env, *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1
    plain = steward(env, "tokens", "create", "--user", "maria", "--scope", "approvals:read").stdout.strip()
    mine = {**env, "STEWARD_TOKEN": plain}
    assert steward(mine, "approvals", "list").returncode == 0
    [maria] = [u for u in json.loads(steward(env, "users", "list", "-o", "json").stdout) if u["name"] == "maria"]
    assert maria["roles"] == ["pricing_manager"] and maria["disabled_at"] is None
    disabled = steward(env, "users", "disable", "maria")
    assert disabled.returncode == 0 and "1 token(s) revoked" in disabled.stdout
    time.sleep(1.1)
    refused = steward(mine, "approvals", "list")
    assert refused.returncode == 2 and "unknown or revoked" in refused.stderr
    assert "disabled" in steward(env, "users", "list").stdout
    again = steward(env, "users", "disable", " maria ")
    assert again.returncode == 2 and "already disabled" in again.stderr, again.stderr
    fresh = steward(env, "tokens", "create", "--user", "maria", "--scope", "approvals:read").stdout.strip()
    refused = steward({**env, "STEWARD_TOKEN": fresh}, "approvals", "list")  # a token made after disabling
    assert refused.returncode == 2 and "maria is disabled" in refused.stderr, refused.stderr
    assert steward(env, "users", "enable", "maria").returncode == 0
    assert steward({**env, "STEWARD_TOKEN": fresh}, "approvals", "list").returncode == 0
    own_role = steward(env, "users", "add", "fin", "--role", "finance_lead")  # a role a policy of yours names
    assert own_role.returncode == 0 and "finance_lead" in own_role.stdout, own_role.stderr


def test_a_vote_counts_only_while_its_person_holds_the_role(client) -> None:
    """Two pricing managers for a move over 25 %: the first one's vote stops counting when they are
    disabled, so the second alone does not complete it; a third completes it."""
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": {
        "items": [{"sku": "SKU-1002", "new_price": "140.00", "currency": "EUR"}], "reason": "re-pricing"}},
        headers=client.operator).json()
    run = client.get(f"/api/v1/runs/{run['id']}", params=[("wait", 30), ("until", "waiting_approval")],
                     headers=client.operator).json()
    url = f"/api/v1/approvals/{run['pending_approval_id']}/decision"
    first, second, third = (person(client, name, ["pricing_manager"]) for name in ("pm.one", "pm.two", "pm.three"))
    assert client.post(url, json={"decision": "approve"}, headers=first).json()["status"] == "pending"
    client.app.state.steward.db.transaction(lambda s: users.disable_user(session=s, name="pm.one", actor="test"))
    assert client.post(url, json={"decision": "approve"}, headers=second).json()["status"] == "pending"
    done = client.post(url, json={"decision": "approve"}, headers=third).json()
    assert done["status"] == "approved" and [a["approver"] for a in done["approvers"]] == ["pm.one", "pm.two",
                                                                                          "pm.three"]
