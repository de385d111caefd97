"""The web inbox on SQLite and PostgreSQL, as a person uses it: sign in, find a request, see what will
change and why, decide. And as an attacker tries it: a requester approving their own run (by session),
forms without the right CSRF token, a decision on a stale revision, script in a CRM record and in model
output, guessed passwords, a demo user outside demo mode, a disabled user's open session."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from approvals import users
from approvals.models import ApprovalStatus
from approvals.store import get_approval
from runtime import StepContext, Workflow, store
from tests.fakes import OWNER, ScriptedChatModel, settle, single_node_workflow

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
HASH = re.compile(r'name="arguments_hash" value="([0-9a-f]{64})"')


class Browser:
    """One person's browser: its own cookies, on the app the ``client`` fixture started."""

    def __init__(self, client: TestClient) -> None:
        self.http = TestClient(client.app, base_url="http://testserver")
        self.steward = client.app.state.steward

    def sign_in(self, name: str, password: str, *, next_: str = "/inbox") -> Any:
        form = self.http.get("/inbox/login")
        assert form.status_code == 200, form.text
        return self.http.post("/inbox/login", data={"csrf_token": CSRF.search(form.text).group(1), "name": name,
                                                    "password": password, "next": next_}, follow_redirects=False)

    def page(self, path: str) -> Any:
        return self.http.get(path, follow_redirects=False)

    def decide(self, approval_id: str, decision: str, *, comment: str = "", csrf: str | None = None,
               arguments_hash: str | None = None) -> Any:
        shown = self.page(f"/inbox/{approval_id}")
        form = {"decision": decision, "comment": comment,
                "csrf_token": CSRF.search(shown.text).group(1) if csrf is None else csrf,
                "arguments_hash": arguments_hash or HASH.search(shown.text).group(1)}
        return self.http.post(f"/inbox/{approval_id}/decision", data={k: v for k, v in form.items() if v is not None},
                              follow_redirects=False)


def person(client, name: str, roles: list[str], *, password: str = "a long enough password") -> dict[str, str]:
    """A user with ``roles`` and a password, and their token that starts runs and decides."""
    def make(session):
        users.add_user(session=session, name=name, roles=roles, actor="test")
        users.set_password(session=session, name=name, password=password, actor="test")
        return store.create_token(session=session, user=name, scopes=["runs:write", "runs:read", "approvals:read",
                                                                       "approvals:decide"])[1]

    return {"Authorization": f"Bearer {client.app.state.steward.db.transaction(make)}"}


def waiting(client, headers: dict[str, str] | None = None) -> tuple[str, str]:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                      headers=headers or client.operator).json()
    run = settle(client, run["id"], {"waiting_approval"})
    return run["id"], run["pending_approval_id"]


def trail(client, kind: str) -> list[Any]:
    return [e for e in client.app.state.steward.db.transaction(lambda s: store.list_audit(session=s, limit=10_000))
            if e.kind == kind]


def approval(client, approval_id: str) -> Any:
    return client.app.state.steward.db.transaction(lambda s: get_approval(session=s, approval_id=approval_id))


def test_a_pricing_manager_signs_in_sees_the_change_and_approves_it(client) -> None:
    run_id, approval_id = waiting(client)
    manager = Browser(client)
    assert manager.page("/inbox").headers["location"] == "/inbox/login?next=%2Finbox"
    signed = manager.sign_in("demo.approver", "demo-approver-pass")
    assert signed.status_code == 303 and signed.headers["location"] == "/inbox"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/inbox" in cookie
    listing = manager.page("/inbox")
    assert listing.status_code == 200 and f'href="/inbox/{approval_id}"' in listing.text
    assert "<strong>1</strong> match these filters" in listing.text
    shown = manager.page(f"/inbox/{approval_id}")
    assert shown.status_code == 200
    assert re.search(r'<tr class="changed"><td>amount</td><td class="before">100.00</td><td class="after">115.00</td>',
                     shown.text), "the live before/after diff"
    assert "the price moves by more than 10 %: a pricing manager approves" in shown.text
    assert "pricing.change_over_10_pct" in shown.text and "demo.operator" in shown.text
    assert 'value="approve"' in shown.text
    decided = manager.decide(approval_id, "approve", comment="margin ok")
    assert decided.status_code == 303 and decided.headers["location"] == f"/inbox/{approval_id}?done=approve"
    assert settle(client, run_id, {"succeeded"})["status"] == "succeeded"
    [event] = [e for e in trail(client, "approval.decided") if e.run_id == run_id]
    assert event.actor == "demo.approver" and event.data["comment"] == "margin ok"
    assert [e.actor for e in trail(client, "user.signed_in")] == ["demo.approver"]
    assert "Your approval is recorded." in manager.page(f"/inbox/{approval_id}?done=approve").text


def test_pages_carry_the_security_headers_and_never_change_state_on_get(client) -> None:
    _, approval_id = waiting(client)
    manager = Browser(client)
    manager.sign_in("demo.approver", "demo-approver-pass")
    for path in ("/inbox", f"/inbox/{approval_id}", "/inbox/login", "/inbox/no-such-request"):
        answer = manager.page(path)
        policy = answer.headers["content-security-policy"]
        for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
            assert directive in policy, (path, policy)
        assert "script-src" not in policy and "default-src 'none'" in policy  # no script at all
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
    missing = manager.page("/inbox/no-such-request")
    assert missing.status_code == 404 and "no approval request with id" in missing.text
    assert "request id" in missing.text.lower() and missing.headers["content-type"].startswith("text/html")
    assert manager.http.get(f"/inbox/{approval_id}/decision").status_code == 405
    assert approval(client, approval_id).status == ApprovalStatus.pending


def test_whoever_started_the_run_sees_no_approve_button_and_a_forged_approval_is_refused(client) -> None:
    maria = person(client, "maria", ["pricing_manager"])
    run_id, approval_id = waiting(client, maria)
    browser = Browser(client)
    assert browser.sign_in("maria", "a long enough password").status_code == 303
    shown = browser.page(f"/inbox/{approval_id}")
    assert 'value="approve"' not in shown.text and 'value="reject"' in shown.text
    assert "you started this run, so another person approves it" in shown.text
    forged = browser.http.post(f"/inbox/{approval_id}/decision", follow_redirects=False, data={
        "csrf_token": CSRF.search(shown.text).group(1), "decision": "approve",
        "arguments_hash": HASH.search(shown.text).group(1)})
    assert forged.status_code == 403 and "maria started run" in forged.text
    assert approval(client, approval_id).status == ApprovalStatus.pending
    [violation] = trail(client, "approval.sod_violation")
    assert violation.actor == "maria" and violation.data["approval_id"] == approval_id
    second = Browser(client)
    second.sign_in("demo.approver2", "demo-approver-2-pass")
    assert second.decide(approval_id, "approve").status_code == 303
    assert settle(client, run_id, {"succeeded"})["status"] == "succeeded"


def test_a_reader_sees_requests_but_cannot_decide_them(client) -> None:
    _, approval_id = waiting(client)
    compliance = Browser(client)
    compliance.sign_in("demo.compliance", "demo-compliance-pass")
    shown = compliance.page(f"/inbox/{approval_id}")
    assert shown.status_code == 200 and 'value="approve"' not in shown.text and 'value="reject"' not in shown.text
    forged = compliance.decide(approval_id, "approve", arguments_hash=approval(client, approval_id).arguments_hash)
    assert forged.status_code == 403 and "is for pricing_manager, which demo.compliance is not" in forged.text
    assert approval(client, approval_id).status == ApprovalStatus.pending
    assert [e.actor for e in trail(client, "authz.denied")] == ["demo.compliance"]


@pytest.mark.parametrize("token", ["missing", "wrong", "another session's"])
def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(client, token: str) -> None:
    _, approval_id = waiting(client)
    manager, other = Browser(client), Browser(client)
    manager.sign_in("demo.approver", "demo-approver-pass")
    other.sign_in("demo.approver2", "demo-approver-2-pass")
    sent = {"missing": "", "wrong": "x" * 43,
            "another session's": CSRF.search(other.page("/inbox").text).group(1)}[token]
    shown = manager.page(f"/inbox/{approval_id}")
    form = {"decision": "approve", "arguments_hash": HASH.search(shown.text).group(1)}
    refused = manager.http.post(f"/inbox/{approval_id}/decision", follow_redirects=False,
                                data={**form, "csrf_token": sent} if sent else form)
    assert refused.status_code == 403 and "security token" in refused.text
    assert approval(client, approval_id).status == ApprovalStatus.pending
    assert trail(client, "approval.decided") == []
    assert all(e.data["reason"] == "csrf" for e in trail(client, "authz.denied"))
    assert manager.http.post("/inbox/logout", data={}, follow_redirects=False).status_code == 403
    assert manager.page("/inbox").status_code == 200  # still signed in
    assert manager.http.post("/inbox/login", data={"name": "demo.approver", "password": "demo-approver-pass"},
                             follow_redirects=False).status_code == 403  # the sign-in form has its own token


def test_a_decision_on_a_stale_revision_gets_409_and_the_page_says_so(client) -> None:
    _, approval_id = waiting(client)
    manager = Browser(client)
    manager.sign_in("demo.approver", "demo-approver-pass")
    stale = manager.decide(approval_id, "approve", arguments_hash="0" * 64)
    assert stale.status_code == 409
    assert "no longer proposes the arguments you were shown" in stale.text
    assert approval(client, approval_id).status == ApprovalStatus.pending
    done = manager.decide(approval_id, "approve")
    assert done.status_code == 303
    again = manager.decide(approval_id, "reject", comment="too late", arguments_hash=approval(client, approval_id)
                           .arguments_hash, csrf=CSRF.search(manager.page("/inbox").text).group(1))
    assert again.status_code == 409 and "already approved" in again.text


def test_a_rejection_needs_a_reason_and_a_comment_is_recorded(client) -> None:
    run_id, approval_id = waiting(client)
    manager = Browser(client)
    manager.sign_in("demo.approver", "demo-approver-pass")
    bare = manager.decide(approval_id, "reject", comment="")
    assert bare.status_code == 422 and "a rejection needs a reason" in bare.text
    shown = manager.page(f"/inbox/{approval_id}")
    commented = manager.http.post(f"/inbox/{approval_id}/comment", follow_redirects=False, data={
        "csrf_token": CSRF.search(shown.text).group(1), "comment": "asking finance first"})
    assert commented.status_code == 303
    assert approval(client, approval_id).comments[0]["text"] == "asking finance first"
    assert [e.data["comment"] for e in trail(client, "approval.commented")] == ["asking finance first"]
    assert manager.decide(approval_id, "reject", comment="margin too thin").status_code == 303
    assert settle(client, run_id, {"rejected"})["status"] == "rejected"


class DealInput(BaseModel):
    deal_id: str


class Verdict(BaseModel):
    label: str


def deal_update_workflow() -> Workflow:
    """Raises a deal's amount over 50,000: the CRM policy escalates it to sales operations."""
    async def raise_amount(state, runtime):
        await runtime.context.crm.update_deal(deal_id=state["deal_id"], properties={"amount": "60000.00",
                                                                                         "dealname": "Renewal 2027"})
        return {}

    def build() -> StateGraph:
        graph = StateGraph(dict, context_schema=StepContext)
        graph.add_node("raise_amount", raise_amount)
        graph.add_edge(START, "raise_amount")
        graph.add_edge("raise_amount", END)
        return graph

    return Workflow(name="deal_update", version="1.0.0", owner=OWNER, description="raise a deal's amount",
                    input_model=DealInput, build=build, grants={"crm.deals.write"})


def test_script_in_a_crm_record_and_in_model_output_is_rendered_inert(settings, connectors, sandbox) -> None:
    from runtime.app import create_app
    from runtime.sdk import Registry
    from workflows import WORKFLOWS

    payload = "<script>alert('xss')</script>"
    crm = TestClient(sandbox)
    created = crm.post("/crm/crm/v3/objects/deals", headers={"Authorization": "Bearer sandbox-token"},
                       json={"properties": {"dealname": payload, "amount": "1000.00"}})
    assert created.status_code == 201, created.text
    model = ScriptedChatModel(answers=[f'{{"label": 1, "note": "{payload}"}}'])

    async def ask(state, runtime):
        await runtime.context.structured("verdict", model, [HumanMessage("judge")], Verdict, attempts=1)
        return {}

    registry = Registry([*WORKFLOWS, deal_update_workflow(), single_node_workflow("asks", ask, grants=set())])
    with TestClient(create_app(settings, connectors=connectors, registry=registry)) as client:
        client.operator = {"Authorization": "Bearer steward-demo-operator"}
        ids = []
        for workflow, given in (("deal_update", {"deal_id": created.json()["id"]}), ("asks", {})):
            run = client.post("/api/v1/runs", json={"workflow": workflow, "input": given}, headers=client.operator)
            ids.append(settle(client, run.json()["id"], {"waiting_approval"})["pending_approval_id"])
        # the deal's name as the CRM holds it now (the diff's "before") and the model's raw answer
        browser = Browser(client)
        browser.sign_in("demo.approver", "demo-approver-pass")
        for approval_id in ids:
            shown = browser.page(f"/inbox/{approval_id}")
            assert shown.status_code == 200
            assert "<script>" not in shown.text and "alert(" in shown.text, shown.text
            assert "&lt;script&gt;" in shown.text or "\\u003cscript\\u003e" in shown.text
        deal_page = browser.page(f"/inbox/{ids[0]}").text
        assert re.search(r'<td>properties.amount</td><td class="before">1000.00</td><td class="after">60000.00</td>',
                         deal_page), "the deal's amount now, read live from the CRM"


def test_a_wrong_password_is_refused_audited_and_limited(client) -> None:
    person(client, "maria", ["pricing_manager"])
    browser = Browser(client)
    for name, password in (("maria", "not her password"), ("no.body", "whatever it is")):
        refused = browser.sign_in(name, password)
        assert refused.status_code == 401 and "the name or the password is wrong" in refused.text
        assert "set-cookie" not in refused.headers or "steward_session" not in refused.headers["set-cookie"]
    assert [e.data["name"] for e in trail(client, "user.sign_in_failed")] == ["maria", "no.body"]
    for _ in range(3):
        assert browser.sign_in("maria", "still not hers").status_code == 401
    limited = browser.sign_in("maria", "a long enough password")  # the right one, after five failures
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert "too many failed sign-ins" in limited.text
    assert len(trail(client, "user.sign_in_failed")) == 5 and trail(client, "user.signed_in") == []


def test_signing_in_starts_a_new_session_and_signing_out_ends_it(client) -> None:
    browser = Browser(client)
    browser.http.cookies.set("steward_session", "planted-by-someone-else", domain="testserver.local", path="/inbox")
    first = browser.sign_in("demo.approver", "demo-approver-pass").cookies["steward_session"]
    assert first != "planted-by-someone-else"
    old = dict(browser.http.cookies)
    browser.http.cookies.set("steward_sign_in", "t" * 43, path="/inbox")  # signed in, the form redirects
    again = browser.http.post("/inbox/login", follow_redirects=False, data={
        "csrf_token": "t" * 43, "name": "demo.approver", "password": "demo-approver-pass"})
    assert again.status_code == 303
    second = again.cookies["steward_session"]
    assert second != first
    stale = TestClient(client.app)
    stale.cookies.update(old)
    assert stale.get("/inbox", follow_redirects=False).status_code == 303  # the first session ended
    page = browser.page("/inbox")
    assert page.status_code == 200
    out = browser.http.post("/inbox/logout", data={"csrf_token": CSRF.search(page.text).group(1)},
                            follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/inbox/login"
    replay = TestClient(client.app)
    replay.cookies.set("steward_session", second, path="/inbox")
    assert replay.get("/inbox", follow_redirects=False).headers["location"].startswith("/inbox/login")
    assert [e.actor for e in trail(client, "user.signed_out")] == ["demo.approver"]


def test_a_disabled_users_open_session_ends_at_once(client) -> None:
    person(client, "maria", ["pricing_manager"])
    browser = Browser(client)
    browser.sign_in("maria", "a long enough password")
    assert browser.page("/inbox").status_code == 200
    client.app.state.steward.db.transaction(lambda s: users.disable_user(session=s, name="maria", actor="test"))
    assert browser.page("/inbox").headers["location"].startswith("/inbox/login")
    assert browser.sign_in("maria", "a long enough password").status_code == 401


def test_demo_people_cannot_sign_in_outside_demo_mode(settings, connectors) -> None:
    from runtime.app import create_app

    with TestClient(create_app(settings, connectors=connectors)) as demo:  # seeds the demo people
        assert Browser(demo).sign_in("demo.approver", "demo-approver-pass").status_code == 303
    real = settings.model_copy(update={"demo": False, "mount_sandbox": False})
    with TestClient(create_app(real, connectors=connectors)) as client:
        browser = Browser(client)
        assert browser.sign_in("demo.approver", "demo-approver-pass").status_code == 401


async def test_sessions_end_when_idle_or_too_old(steward) -> None:
    from datetime import timedelta

    from approvals import sessions
    from runtime.models import utcnow

    def start(session):
        users.add_user(session=session, name="maria", roles=["pricing_manager"], actor="test")
        return sessions.start_session(session=session, user="maria")[0]

    secret = await steward.db.run(start)
    idle, absolute = timedelta(minutes=30), timedelta(hours=8)

    def at(moment):
        return steward.db.run(lambda s: sessions.current_session(session=s, secret=secret, idle=idle,
                                                                 absolute=absolute, now=moment, demo=False))

    now = utcnow()
    for step in range(1, 16):  # used every 29 minutes: alive until its absolute end
        seen = await at(now + timedelta(minutes=29 * step))
        assert (seen is not None) == (29 * step <= 8 * 60), step
    assert await at(now + timedelta(minutes=29 * 17)) is None  # and ended for good
    other = await steward.db.run(lambda s: sessions.start_session(session=s, user="maria")[0])
    assert await steward.db.run(lambda s: sessions.current_session(
        session=s, secret=other, idle=idle, absolute=absolute, now=utcnow() + timedelta(minutes=31),
        demo=False)) is None


def test_the_list_filters_counts_and_pages(client, monkeypatch) -> None:
    for _ in range(3):
        waiting(client)
    big = {"items": [{"sku": "SKU-1002", "new_price": "130.00", "currency": "EUR"}], "reason": "new range"}
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": big}, headers=client.operator).json()
    high = settle(client, run["id"], {"waiting_approval"})["pending_approval_id"]
    browser = Browser(client)
    browser.sign_in("demo.approver", "demo-approver-pass")
    risky = browser.page("/inbox?risk=high")
    assert "<strong>1</strong> match these filters" in risky.text and f"/inbox/{high}" in risky.text
    assert "<strong>4</strong> pending in all" in risky.text
    assert "<strong>0</strong> match" in browser.page("/inbox?role=sales_ops").text
    assert "<strong>4</strong> match" in browser.page("/inbox?role=pricing_manager&workflow=price_change").text
    assert "<strong>0</strong> match" in browser.page("/inbox?older_than_hours=1").text
    bad = browser.page("/inbox?risk=extreme")
    assert bad.status_code == 422 and "risk" in bad.text
    from approvals.inbox import views

    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    first = browser.page("/inbox")
    ids = re.findall(r'href="/inbox/([0-9a-f]{32})"', first.text)
    more = re.search(r'<a href="([^"]+)" rel="next">', first.text).group(1).replace("&amp;", "&")
    rest = browser.page(more)
    ids += re.findall(r'href="/inbox/([0-9a-f]{32})"', rest.text)
    assert len(ids) == len(set(ids)) == 4 and high == ids[-1] and 'rel="next"' not in rest.text
    monkeypatch.setattr(views, "PAGE_SIZE", 50)
    api = client.get("/api/v1/approvals", params={"risk": "high", "status": "pending"}, headers=client.operator).json()
    assert [a["id"] for a in api["data"]] == [high] and api["data"][0]["risk"] == "high"
