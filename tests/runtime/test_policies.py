"""The shipped rules through the real gate, at their boundaries, on SQLite and PostgreSQL: price moves,
discounts, large deals, CRM deletes, customer messages (quiet hours, an hourly budget under concurrency);
deny and escalate for a workflow from outside the repository; runs pinned to their policy set."""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import list_approvals
from runtime import store
from runtime.errors import Conflict
from runtime.models import RunStatus
from runtime.service import Steward, open_steward
from runtime.settings import POLICIES
from tests.fakes import single_node_workflow


def price(sandbox, sku: str) -> str:
    return sandbox.state.sandbox.prices[(sku, "EUR")]["amount"]


def change(sku: str, new_price: str) -> dict[str, Any]:
    return {"items": [{"sku": sku, "new_price": new_price, "currency": "EUR"}], "reason": "policy boundary"}


async def pending(steward: Steward, run_id: str) -> list[Any]:
    return list(await steward.db.run(
        lambda s: list_approvals(session=s, run_id=run_id, status=ApprovalStatus.pending)))


async def events(steward: Steward, run_id: str, kind: str) -> list[Any]:
    found = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run_id))
    return [e for e in found if e.kind == kind]


async def decisions(steward: Steward, run_id: str, action: str) -> list[Any]:
    return [e for e in await events(steward, run_id, "policy.decision") if e.data["action"] == action]


async def price_run(steward: Steward, sku: str, new_price: str):
    run, _ = await steward.executor.submit(workflow="price_change", input=change(sku, new_price), actor="alice")
    return await steward.executor.drive(run.id)


@pytest.mark.parametrize(("new_price", "outcome", "approvals"), [
    ("110.00", "allow", 0),       # exactly +10 %
    ("110.01", "escalate", 1),    # +10.01 %
    ("90.00", "allow", 0),        # exactly -10 %
    ("125.00", "escalate", 1),    # exactly +25 %
    ("125.01", "escalate", 2),    # +25.01 %
    ("70.00", "escalate", 2),     # exactly -30 %
])
async def test_price_moves_are_decided_at_their_boundaries(steward: Steward, sandbox, new_price: str, outcome: str,
                                                           approvals: int) -> None:
    run = await price_run(steward, "SKU-1001", new_price)
    [decision] = await decisions(steward, run.id, "pricing.set_price")
    assert decision.data["outcome"] == outcome
    assert decision.data["policy_hash"] == run.policy_hash == steward.policies.current.hash
    assert len(decision.data["context_digest"]) == 64
    if outcome == "allow":
        assert run.status == RunStatus.succeeded and price(sandbox, "SKU-1001") == new_price
        assert decision.data["policies"] == ["pricing.set_price"]
        return
    assert run.status == RunStatus.waiting_approval and price(sandbox, "SKU-1001") == "100.00"
    [approval] = await pending(steward, run.id)
    assert (approval.action, approval.roles, approval.required_approvals) == (
        "pricing.set_price", ["pricing_manager"], approvals)
    assert approval.policy["outcome"] == "escalate" and "pricing.change_over_10_pct" in approval.policy["policies"]
    assert "more than 10 %" in approval.reason


async def test_a_cut_beyond_30_pct_is_denied_and_the_run_fails_naming_the_policy(steward: Steward, sandbox) -> None:
    run = await price_run(steward, "SKU-1002", "69.99")  # -30.01 %
    assert run.status == RunStatus.failed
    assert run.error["code"] == "policy_denied"
    assert "pricing.discount_over_30_pct" in run.error["message"] and "discount" in run.error["message"]
    assert price(sandbox, "SKU-1002") == "100.00"
    [decision] = await decisions(steward, run.id, "pricing.set_price")
    assert (decision.data["outcome"], decision.data["policies"]) == ("deny", ["pricing.discount_over_30_pct"])
    assert [e.data["action"] for e in await events(steward, run.id, "connector.call")] == ["pricing.get_price"]


async def test_two_distinct_pricing_managers_approve_a_move_over_25_pct(steward: Steward, sandbox) -> None:
    run = await price_run(steward, "SKU-1003", "140.00")  # +40 %
    [approval] = await pending(steward, run.id)
    await decide(steward, approval_id=approval.id, decision="approve", actor="bob", comment="ok")
    with pytest.raises(Conflict, match="bob has already approved"):
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
    still = await steward.executor.drive(run.id)
    assert still.status == RunStatus.waiting_approval and price(sandbox, "SKU-1003") == "100.00"
    await decide(steward, approval_id=approval.id, decision="approve", actor="carol", comment="agreed")
    done = await steward.executor.drive(run.id)
    assert done.status == RunStatus.succeeded and price(sandbox, "SKU-1003") == "140.00"
    [call] = [e for e in await events(steward, run.id, "connector.call") if e.data["action"] == "pricing.set_price"]
    assert call.data["approved_by"] == ["bob", "carol"]
    decided = await events(steward, run.id, "approval.decided")
    assert [(e.actor, e.data["approvals"], e.data["complete"]) for e in decided] == [
        ("bob", 1, False), ("carol", 2, True)]


async def test_twenty_concurrent_second_approvals_complete_once(steward: Steward, sandbox) -> None:
    run = await price_run(steward, "SKU-1004", "150.00")
    [approval] = await pending(steward, run.id)
    await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
    barrier = asyncio.Barrier(20)

    async def one(i: int) -> str:
        await barrier.wait()
        try:
            await decide(steward, approval_id=approval.id, decision="approve", actor=f"manager{i}")
            return "ok"
        except Conflict:
            return "conflict"

    outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    assert outcomes.count("ok") == 1
    done = await steward.executor.drive(run.id)
    assert done.status == RunStatus.succeeded and price(sandbox, "SKU-1004") == "150.00"


def deal_workflow(amount: str):
    async def work(state: dict, runtime: Any) -> dict:
        deal = await runtime.context.crm.create_deal(properties={"dealname": "Big", "amount": amount})
        return {"deal": deal["id"]}
    return single_node_workflow(f"deal_{amount.replace('.', '_').replace(',', '')}", work, grants={"crm.deals.write"})


@pytest.mark.parametrize(("amount", "status"), [("50000.00", RunStatus.succeeded),
                                                 ("50000.01", RunStatus.waiting_approval)])
async def test_a_deal_above_50k_needs_sales_ops(open_custom, amount: str, status: RunStatus) -> None:
    wf = deal_workflow(amount)
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow=wf.name, input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == status
        if status == RunStatus.waiting_approval:
            [approval] = await pending(steward, run.id)
            assert (approval.roles, approval.policy["policies"]) == (["sales_ops"], ["crm.deal_over_50k"])


async def test_a_workflow_cannot_delete_even_a_record_it_created(open_custom, sandbox) -> None:
    async def work(state: dict, runtime: Any) -> dict:
        contact = await runtime.context.crm.create_contact(properties={"email": "own@example.com"})
        await runtime.context.crm.archive_contact(contact_id=contact["id"])
        return {}

    wf = single_node_workflow("deleter", work, grants={"crm.contacts.write"})
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow=wf.name, input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.failed and run.error["code"] == "policy_denied"
        assert "crm.no_deletes" in run.error["message"]
    assert any(r["properties"].get("email") == "own@example.com"
               for r in sandbox.state.sandbox.all("contacts"))


def mail_workflow(name: str = "mailer"):
    async def work(state: dict, runtime: Any) -> dict:
        sent = await runtime.context.crm.send_email(email_id=42, to="kunde@example.de")
        return {"status": sent["status"]}
    return single_node_workflow(name, work, grants={"crm.emails.send"})


@pytest.mark.parametrize(("utc", "status"), [
    ("2026-01-15T06:59:00", RunStatus.failed),      # 07:59 in Berlin
    ("2026-01-15T07:00:00", RunStatus.succeeded),   # 08:00
    ("2026-01-15T18:59:00", RunStatus.succeeded),   # 19:59
    ("2026-01-15T19:00:00", RunStatus.failed),      # 20:00
])
async def test_customer_messages_keep_the_recipients_quiet_hours(open_custom, sandbox, utc: str,
                                                                 status: RunStatus) -> None:
    sandbox.state.sandbox.create("contacts", {"email": "kunde@example.de", "hs_timezone": "europe_slash_berlin",
                                              "country": "DE"})
    wf = mail_workflow()
    async with open_custom([wf]) as steward:
        steward.executor.clock = lambda: datetime.fromisoformat(utc).replace(tzinfo=timezone.utc)
        run, _ = await steward.executor.submit(workflow=wf.name, input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == status
        [decision] = await decisions(steward, run.id, "crm.send_email")
        if status == RunStatus.failed:
            assert decision.data["policies"] == ["messages.quiet_hours"]
    assert len(sandbox.state.sandbox.sent_emails()) == (1 if status == RunStatus.succeeded else 0)


def limited_policies(tmp_path: Path, limit: int) -> Path:
    folder = tmp_path / "limited"
    shutil.copytree(POLICIES, folder, ignore=shutil.ignore_patterns("tests"))
    text = (folder / "messages.cedar").read_text().replace("messages_this_hour > 100", f"messages_this_hour > {limit}")
    (folder / "messages.cedar").write_text(text)
    return folder


async def test_the_hourly_message_budget_holds_under_twenty_concurrent_runs(settings, connectors, sandbox,
                                                                           tmp_path) -> None:
    from runtime.sdk import Registry

    sandbox.state.sandbox.create("contacts", {"email": "kunde@example.de", "hs_timezone": "europe_slash_berlin"})
    wf = mail_workflow()
    limited = settings.model_copy(update={"policies": [limited_policies(tmp_path, 5)]})
    async with open_steward(limited, registry=Registry([wf]), connectors=connectors) as steward:
        steward.executor.clock = lambda: datetime(2026, 1, 15, 11, 30, tzinfo=timezone.utc)
        runs = [(await steward.executor.submit(workflow=wf.name, input={}, actor="alice"))[0] for _ in range(20)]
        barrier = asyncio.Barrier(20)

        async def drive(run_id: str):
            await barrier.wait()
            return await steward.executor.drive(run_id)

        ended = await asyncio.gather(*(drive(r.id) for r in runs))
        statuses = [r.status for r in ended]
        assert statuses.count(RunStatus.succeeded) == 5 and statuses.count(RunStatus.failed) == 15
        assert all(r.error["code"] == "policy_denied" for r in ended if r.status == RunStatus.failed)
        # a denied call gave its slot back: the counter says what went out
        counted = await steward.db.run(lambda s: store.peek_slot(
            session=s, key="none", counter=f"{wf.name}:messages",
            window_start=datetime(2026, 1, 15, 11, tzinfo=timezone.utc)))
        assert counted == 6
    assert len(sandbox.state.sandbox.sent_emails()) == 5


EXTERNAL = '''
"""A workflow written outside Steward's repository: it gets no exemption from the policies."""
from typing import Any
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel
from runtime import Owner, StepContext, Workflow


class Empty(BaseModel):
    pass


def one_step(node):
    def build():
        graph = StateGraph(dict, context_schema=StepContext)
        graph.add_node("work", node)
        graph.add_edge(START, "work")
        graph.add_edge("work", END)
        return graph
    return build


async def raise_price(state: dict, runtime: Any) -> dict:
    return {"set": await runtime.context.pricing.set_price(sku="SKU-1005", currency="EUR", amount="140.00")}


async def delete_contact(state: dict, runtime: Any) -> dict:
    await runtime.context.crm.archive_contact(contact_id="1")
    return {}


OWNER = Owner(name="Outside Developer", email="dev@example.com")
WORKFLOWS = [
    Workflow(name="outside_pricer", version="0.1.0", owner=OWNER, description="raises a price by 40 %",
             input_model=Empty, build=one_step(raise_price), grants={"pricing.prices.write"}),
    Workflow(name="outside_deleter", version="0.1.0", owner=OWNER, description="deletes a contact",
             input_model=Empty, build=one_step(delete_contact), grants={"crm.contacts.write"}),
]
'''


async def test_a_workflow_from_outside_the_repository_is_escalated_and_denied_alike(settings, connectors, sandbox,
                                                                                   tmp_path, monkeypatch) -> None:
    (tmp_path / "outside_flows.py").write_text(textwrap.dedent(EXTERNAL))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "outside_flows", raising=False)
    outside = settings.model_copy(update={"workflows": ["outside_flows:WORKFLOWS"]})
    async with open_steward(outside, connectors=connectors) as steward:
        pricer, _ = await steward.executor.submit(workflow="outside_pricer", input={}, actor="alice")
        pricer = await steward.executor.drive(pricer.id)
        assert pricer.status == RunStatus.waiting_approval and price(sandbox, "SKU-1005") == "100.00"
        [approval] = await pending(steward, pricer.id)
        assert (approval.action, approval.roles, approval.required_approvals) == (
            "pricing.set_price", ["pricing_manager"], 2)
        deleter, _ = await steward.executor.submit(workflow="outside_deleter", input={}, actor="alice")
        deleter = await steward.executor.drive(deleter.id)
        assert deleter.status == RunStatus.failed and "crm.no_deletes" in deleter.error["message"]


async def test_a_run_keeps_its_policy_set_until_an_operator_re_pins_it(settings, connectors, sandbox,
                                                                      tmp_path) -> None:
    looser = tmp_path / "looser"
    shutil.copytree(POLICIES, looser, ignore=shutil.ignore_patterns("tests"))
    text = (looser / "pricing.cedar").read_text().replace('greaterThan(decimal("10.0"))', 'greaterThan(decimal("50.0"))')
    (looser / "pricing.cedar").write_text(text)

    async with open_steward(settings, connectors=connectors) as steward:
        old, _ = await steward.executor.submit(workflow="price_change", input=change("SKU-1006", "120.00"),
                                               actor="alice")
        strict_hash = steward.policies.current.hash
    async with open_steward(settings.model_copy(update={"policies": [looser]}), connectors=connectors) as steward:
        assert steward.policies.current.hash != strict_hash
        old = await steward.executor.drive(old.id)  # started under the strict set: still escalated
        assert old.status == RunStatus.waiting_approval and old.policy_hash == strict_hash
        new = await price_run(steward, "SKU-1007", "120.00")  # a new run is pinned to the looser set
        assert new.status == RunStatus.succeeded and new.policy_hash == steward.policies.current.hash

        with pytest.raises(Exception, match="no policy set"):
            await steward.executor.pin_policy(run_id=old.id, policy_hash="f" * 64, actor="ops", reason="typo")
        pinned = await steward.executor.pin_policy(run_id=old.id, policy_hash=steward.policies.current.hash,
                                                   actor="ops", reason="the looser rule applies to it too")
        assert pinned.policy_hash == steward.policies.current.hash
        [event] = await events(steward, old.id, "run.policy_pinned")
        assert (event.actor, event.data["previous_hash"], event.data["reason"]) == (
            "ops", strict_hash, "the looser rule applies to it too")
        with pytest.raises(Conflict):
            await steward.executor.pin_policy(run_id=new.id, policy_hash=strict_hash, actor="ops", reason="ended")
