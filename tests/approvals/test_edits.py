"""Edit within policy, on SQLite and PostgreSQL: an approver changes a proposed call's values and
approves it as edited. The policies decide on the edited call before the edit is accepted (a denial
changes nothing and is audited) and again, with the facts as they are then, before it executes; an
edit that needs more people waits for them; an edit never changes which record the call acts on, nor
its shape; the requester cannot edit; a step run again replays the edited call instead of writing twice;
concurrent edits and approvals, exactly one wins. The same through the JSON API and the inbox."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest

from approvals import users
from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import get_approval, list_approvals
from runtime import audit, store
from runtime.errors import Conflict, EditDenied, Forbidden, InputInvalid, SeparationOfDuties
from runtime.models import RunStatus
from runtime.service import Steward
from tests.approvals.test_inbox import CSRF, HASH, Browser
from tests.fakes import settle, single_node_workflow

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}


def proposed(amount: str, sku: str = "SKU-1001", currency: str = "EUR") -> dict[str, str]:
    return {"sku": sku, "currency": currency, "amount": amount}


def price(sandbox: Any, sku: str = "SKU-1001") -> str:
    return sandbox.state.sandbox.prices[(sku, "EUR")]["amount"]


async def waiting(steward: Steward, items: list[dict[str, str]] | None = None) -> tuple[Any, Any]:
    run, _ = await steward.executor.submit(workflow="price_change", input={**PRICE_115, **(
        {"items": items} if items else {})}, actor="alice")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.waiting_approval
    return run, await pending(steward, run.id)


async def pending(steward: Steward, run_id: str) -> Any:
    [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run_id, status=ApprovalStatus.pending))
    return approval


async def reread(steward: Steward, approval_id: str) -> Any:
    return await steward.db.run(lambda s: get_approval(session=s, approval_id=approval_id))


async def trail(steward: Steward, run_id: str, kind: str | None = None) -> list[Any]:
    events = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run_id, limit=10_000))
    return [e for e in events if kind is None or e.kind == kind]


async def edit(steward: Steward, approval: Any, amount: str, *, actor: str = "bob", **arguments: str) -> Any:
    return await decide(steward, approval_id=approval.id, decision="approve", actor=actor, comment="closer to cost",
                        arguments_hash=approval.arguments_hash, arguments={**proposed(amount), **arguments})


async def test_an_edit_within_policy_is_approved_and_the_edited_call_executes(steward: Steward, sandbox) -> None:
    run, asked = await waiting(steward)
    decided = await edit(steward, asked, "108.00")
    assert decided.status == ApprovalStatus.approved and decided.decided_by == "bob"
    assert decided.arguments == proposed("108.00") and decided.proposed_arguments == proposed("115.00")
    assert decided.proposed_arguments_hash == asked.arguments_hash and decided.edited_by == "bob"
    assert decided.arguments_hash == audit.digest({"action": "pricing.set_price", "arguments": proposed("108.00")})
    assert decided.required_approvals == 1 and decided.policy["outcome"] == "allow"
    done = await steward.executor.drive(run.id)
    assert done.status == RunStatus.succeeded, done.error
    assert price(sandbox) == "108.00" and done.output["applied"][0]["amount"] == "108.00"
    assert sum(sandbox.state.sandbox.writes.values()) == 1
    [edited] = await trail(steward, run.id, "approval.edited")
    assert edited.actor == "bob" and edited.data["changed"] == ["amount"]
    assert edited.data["from_hash"] == asked.arguments_hash == edited.data["proposed_hash"]
    assert edited.data["arguments_hash"] == decided.arguments_hash and edited.data["policy"]["outcome"] == "allow"
    kinds = [e.kind for e in await trail(steward, run.id)]
    assert kinds.index("approval.edited") < kinds.index("approval.decided")
    decisions = [e.data["outcome"] for e in await trail(steward, run.id, "policy.decision")
                 if e.data["action"] == "pricing.set_price"]
    # the proposal when it paused and when it resumed, then the edited call before it executes
    assert decisions == ["escalate", "escalate", "allow"]
    [call] = [e for e in await trail(steward, run.id, "connector.call") if e.data["action"] == "pricing.set_price"]
    assert call.data["edited"] is True and call.data["approved_by"] == ["bob"]
    assert call.data["executed_digest"] == audit.digest(proposed("108.00"))
    verified = await steward.db.run(lambda s: audit.verify(s, projections=steward.executor.approvals.disagreements))
    assert verified.ok and not verified.disagreements


async def test_an_edit_the_policies_deny_changes_nothing_and_is_audited(steward: Steward, sandbox) -> None:
    run, asked = await waiting(steward)
    with pytest.raises(EditDenied, match="pricing.discount_over_30_pct") as denied:
        await edit(steward, asked, "60.00")
    assert denied.value.status_code == 422
    still = await reread(steward, asked.id)
    assert (still.status, still.arguments_hash, still.approvers, still.proposed_arguments) == (
        ApprovalStatus.pending, asked.arguments_hash, [], None)
    [refused] = await trail(steward, run.id, "approval.edit_denied")
    assert refused.actor == "bob" and "pricing.discount_over_30_pct" in refused.data["policy"]["policies"]
    assert await trail(steward, run.id, "approval.decided") == []
    await decide(steward, approval_id=asked.id, decision="approve", actor="bob", arguments_hash=asked.arguments_hash)
    assert (await steward.executor.drive(run.id)).status == RunStatus.succeeded
    assert price(sandbox) == "115.00"


async def test_an_edit_that_needs_more_people_waits_for_them(steward: Steward, sandbox) -> None:
    run, asked = await waiting(steward)
    first = await edit(steward, asked, "130.00")  # +30 %: two pricing managers, not the owner
    assert first.status == ApprovalStatus.pending and first.required_approvals == 2 and first.risk == "high"
    assert [a["approver"] for a in first.approvers] == ["bob"] and first.roles == ["pricing_manager"]
    assert "two different pricing managers" in first.reason and "owner" in first.separate
    assert (await steward.executor.drive(run.id)).status == RunStatus.waiting_approval
    with pytest.raises(Conflict, match="no longer proposes"):  # what the step proposed is no longer asked
        await decide(steward, approval_id=asked.id, decision="approve", actor="carol", arguments_hash=asked.arguments_hash)
    with pytest.raises(Conflict, match="already approved"):
        await decide(steward, approval_id=asked.id, decision="approve", actor="bob", arguments_hash=first.arguments_hash)
    done = await decide(steward, approval_id=asked.id, decision="approve", actor="carol",
                        arguments_hash=first.arguments_hash)
    assert done.status == ApprovalStatus.approved and [a["approver"] for a in done.approvers] == ["bob", "carol"]
    assert (await steward.executor.drive(run.id)).status == RunStatus.succeeded
    assert price(sandbox) == "130.00"


async def test_an_edit_that_empties_earlier_approvals_counts_only_the_editors(steward: Steward) -> None:
    """Four-eyes on the proposal: one person approved 130; a second edits it down to 108, which the
    policies allow outright: the first approval was of other values and is not carried over."""
    run, asked = await waiting(steward, items=[{"sku": "SKU-1001", "new_price": "130.00", "currency": "EUR"}])
    assert asked.required_approvals == 2
    await decide(steward, approval_id=asked.id, decision="approve", actor="bob", arguments_hash=asked.arguments_hash)
    done = await edit(steward, asked, "108.00", actor="carol")
    assert done.status == ApprovalStatus.approved and [a["approver"] for a in done.approvers] == ["carol"]
    assert done.required_approvals == 1 and done.risk == "normal"
    assert (await steward.executor.drive(run.id)).status == RunStatus.succeeded
    verified = await steward.db.run(lambda s: audit.verify(s, projections=steward.executor.approvals.disagreements))
    assert verified.ok and not verified.disagreements


@pytest.mark.parametrize(("arguments", "field", "message"), [
    (proposed("108.00", sku="SKU-1002"), "sku", "only amount of pricing.set_price may be edited"),
    (proposed("108.00", currency="USD"), "currency", "only amount"),
    ({"sku": "SKU-1001", "currency": "EUR", "amount": 108}, "amount", "do not fit"),
    ({**proposed("108.00"), "discount": "5"}, "discount", "do not fit"),
    ({"sku": "SKU-1001", "currency": "EUR"}, "amount", "do not fit"),
    (proposed("a lot"), "arguments", "amount"),
    (proposed(" 108.00 "), "arguments", "not a decimal amount"),  # what the policies read is what is sent
    (proposed("1_08.00"), "arguments", "not a decimal amount"),
    (proposed("１０８.００"), "arguments", "not a decimal amount"),
    (proposed("108.00\n"), "arguments", "not a decimal amount"),
    (proposed("1" * 70_000), "arguments", "more than 65536"),
])
async def test_an_edit_keeps_the_record_and_the_shape_of_the_call(steward: Steward, arguments, field, message) -> None:
    run, asked = await waiting(steward)
    with pytest.raises(InputInvalid, match=message) as invalid:
        await decide(steward, approval_id=asked.id, decision="approve", actor="bob",
                     arguments_hash=asked.arguments_hash, arguments=arguments)
    assert field in [str(part) for detail in invalid.value.details for part in detail["loc"]], invalid.value.details
    still = await reread(steward, asked.id)
    assert still.status == ApprovalStatus.pending and still.arguments_hash == asked.arguments_hash
    assert await trail(steward, run.id, "approval.edited") == []


async def test_edited_arguments_go_only_with_an_approval_of_what_was_shown(steward: Steward) -> None:
    _, asked = await waiting(steward)
    with pytest.raises(InputInvalid, match="go with an approval"):
        await decide(steward, approval_id=asked.id, decision="reject", actor="bob", comment="no",
                     arguments_hash=asked.arguments_hash, arguments=proposed("108.00"))
    with pytest.raises(InputInvalid, match="go with an approval"):
        await decide(steward, approval_id=asked.id, decision="approve", actor="bob", arguments=proposed("108.00"))
    with pytest.raises(Conflict, match="no longer proposes"):
        await decide(steward, approval_id=asked.id, decision="approve", actor="bob", arguments_hash="0" * 64,
                     arguments=proposed("108.00"))
    assert (await reread(steward, asked.id)).status == ApprovalStatus.pending


async def test_whoever_started_the_run_may_not_edit_it(steward: Steward) -> None:
    run, asked = await waiting(steward)
    with pytest.raises(SeparationOfDuties):
        await edit(steward, asked, "108.00", actor="alice")
    still = await reread(steward, asked.id)
    assert still.arguments_hash == asked.arguments_hash and still.proposed_arguments is None
    assert [e.actor for e in await trail(steward, run.id, "approval.sod_violation")] == ["alice"]


@pytest.mark.parametrize(("now", "status", "error"), [
    ("80.00", RunStatus.rejected, "approval_rejected"),  # 108 is now +35 %: it needs two people, it has one
    ("200.00", RunStatus.failed, "policy_denied"),  # 108 is now -46 %: no automation gives that discount
])
async def test_the_gate_decides_again_on_the_edited_call_with_the_facts_of_then(
        steward: Steward, sandbox, now: str, status: RunStatus, error: str) -> None:
    run, asked = await waiting(steward)
    await edit(steward, asked, "108.00")  # +8 % when edited: allowed
    sandbox.state.sandbox.set_price("SKU-1001", "EUR", now)  # the price moved before the run resumed
    done = await steward.executor.drive(run.id)
    assert (done.status, (done.error or {}).get("code")) == (status, error), (done.status, done.error)
    assert price(sandbox) == now and sum(sandbox.state.sandbox.writes.values()) == 0


async def test_a_step_run_again_replays_the_edited_call_instead_of_writing_twice(steward: Steward, sandbox) -> None:
    """Two changes in one step, each paused: after the second approval the step runs from its start
    again, and its first call (as the step proposes it) gets the edited call's recorded result."""
    run, first = await waiting(steward, items=[
        {"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"},
        {"sku": "SKU-1002", "new_price": "115.00", "currency": "EUR"}])
    await edit(steward, first, "108.00")
    assert (await steward.executor.drive(run.id)).status == RunStatus.waiting_approval
    second = await pending(steward, run.id)
    assert second.arguments["sku"] == "SKU-1002"
    await decide(steward, approval_id=second.id, decision="approve", actor="bob", arguments_hash=second.arguments_hash)
    done = await steward.executor.drive(run.id)
    assert done.status == RunStatus.succeeded, done.error
    assert [a["amount"] for a in done.output["applied"]] == ["108.00", "115.00"]
    assert (price(sandbox, "SKU-1001"), price(sandbox, "SKU-1002")) == ("108.00", "115.00")
    assert sorted(sandbox.state.sandbox.writes.values()) == [1, 1]
    replayed = [e for e in await trail(steward, run.id, "connector.replayed") if e.data["action"] == "pricing.set_price"]
    assert len(replayed) == 1


async def test_concurrent_edits_and_approvals_exactly_one_wins(steward: Steward, sandbox) -> None:
    run, asked = await waiting(steward)
    barrier = asyncio.Barrier(20)

    async def one(n: int) -> str:
        await barrier.wait()
        try:
            if n % 2:
                await decide(steward, approval_id=asked.id, decision="approve", actor=f"person{n}",
                             arguments_hash=asked.arguments_hash)
            else:
                await edit(steward, asked, f"{101 + n // 2}.00", actor=f"person{n}")
        except Conflict:
            return "conflict"
        return "won"

    outcomes = await asyncio.gather(*(one(n) for n in range(20)))
    assert outcomes.count("won") == 1, outcomes
    complete = [e for e in await trail(steward, run.id, "approval.decided") if e.data["complete"]]
    assert len(complete) == 1
    done = await reread(steward, asked.id)
    assert done.decided_by == complete[0].actor
    assert (await steward.executor.drive(run.id)).status == RunStatus.succeeded
    assert price(sandbox) == done.arguments["amount"] and sum(sandbox.state.sandbox.writes.values()) == 1
    verified = await steward.db.run(lambda s: audit.verify(s, projections=steward.executor.approvals.disagreements))
    assert verified.ok and not verified.disagreements


def test_an_edit_through_the_api(client, sandbox) -> None:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                      headers=client.operator).json()
    run = settle(client, run["id"], {"waiting_approval"})
    url = f"/api/v1/approvals/{run['pending_approval_id']}"
    shown = client.get(url, headers=client.approver).json()
    body = {"decision": "approve", "arguments_hash": shown["arguments_hash"]}
    denied = client.post(f"{url}/decision", json={**body, "arguments": proposed("60.00")}, headers=client.approver)
    assert denied.status_code == 422 and denied.json()["code"] == "policy_denied", denied.text
    assert "pricing.discount_over_30_pct" in denied.json()["details"]["policies"]
    wrong = client.post(f"{url}/decision", json={**body, "arguments": {**proposed("1"), "amount": 108}},
                        headers=client.approver)
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["loc"] == ["body", "arguments", "amount"]
    edited = client.post(f"{url}/decision", json={**body, "arguments": proposed("108.00"), "comment": "ok at 108"},
                         headers=client.approver)
    assert edited.status_code == 200, edited.text
    assert edited.json()["proposed_arguments"] == proposed("115.00") and edited.json()["edited_by"] == "demo.approver"
    assert settle(client, run["id"], {"succeeded"})["status"] == "succeeded"
    assert price(sandbox) == "108.00"
    spec = client.get("/openapi.json").json()["components"]["schemas"]["DecisionCreate"]["properties"]
    assert "arguments" in spec


def test_an_edit_in_the_inbox(client, sandbox) -> None:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                      headers=client.operator).json()
    run = settle(client, run["id"], {"waiting_approval"})
    approval_id = run["pending_approval_id"]
    requester = Browser(client)
    requester.sign_in("demo.operator", "demo-operator-pass")
    assert "Edit the values and approve" not in requester.page(f"/inbox/{approval_id}").text
    manager = Browser(client)
    manager.sign_in("demo.approver", "demo-approver-pass")
    shown = manager.page(f"/inbox/{approval_id}").text
    assert "Edit the values and approve" in shown
    assert re.search(r'<input type="text" value="SKU-1001" readonly', shown), "the record's name is locked"
    assert 'name="arg.amount" value="115.00"' in shown and 'name="arg.sku"' not in shown

    def post(amount: str) -> Any:
        page = manager.page(f"/inbox/{approval_id}").text
        return manager.http.post(f"/inbox/{approval_id}/decision", follow_redirects=False, data={
            "csrf_token": CSRF.search(page).group(1), "arguments_hash": HASH.search(page).group(1), "edit": "1",
            "decision": "approve", "arg.amount": amount, "arg.sku": "SKU-2000", "comment": "at cost"})

    denied = post("60.00")
    assert denied.status_code == 422 and "pricing.discount_over_30_pct" in denied.text and "<details" in denied.text
    done = post("108.00")
    assert done.status_code == 303 and done.headers["location"] == f"/inbox/{approval_id}?done=edit"
    assert settle(client, run["id"], {"succeeded"})["status"] == "succeeded"
    assert price(sandbox) == "108.00"  # the posted sku was locked: the record stayed SKU-1001
    after = manager.page(f"/inbox/{approval_id}?done=edit").text
    assert "Your approval of the edited values is recorded." in after and "Edited by demo.approver" in after


# What an adversarial review found, kept as tests.

async def test_an_edit_brings_its_policys_separation_of_duties_along(steward: Steward, sandbox) -> None:
    """The workflow's owner may approve a 15 % rise, but an edit to 30 % falls under a policy that keeps
    the owner out: the owner cannot approve it by editing it there."""
    await steward.db.run(lambda s: users.add_user(session=s, name="owner", roles=["pricing_manager"],
                                                  email="pricing-ops@example.com", actor="test"))
    run, asked = await waiting(steward)
    with pytest.raises(SeparationOfDuties, match="owns workflow price_change"):
        await edit(steward, asked, "130.00", actor="owner")
    still = await reread(steward, asked.id)
    assert still.arguments_hash == asked.arguments_hash and still.approvers == []
    assert [e.actor for e in await trail(steward, run.id, "approval.sod_violation")] == ["owner"]
    assert price(sandbox) == "100.00"


async def test_an_edit_to_a_stricter_policy_takes_its_deadline(steward: Steward) -> None:
    _, asked = await waiting(steward)
    assert (asked.due_at - asked.remind_at, asked.expires_at - asked.due_at) == (timedelta(hours=12), timedelta(hours=24))
    edited = await edit(steward, asked, "130.00")  # pricing.change_over_25_pct: @sla("8h"), from the same start
    assert (edited.remind_at, edited.due_at, edited.expires_at) == (
        asked.remind_at - timedelta(hours=8), asked.due_at - timedelta(hours=16), asked.expires_at - timedelta(hours=32))


async def test_who_may_decide_is_checked_before_the_edit(steward: Steward) -> None:
    """The requester and a person without the role learn that they may not decide, not what the
    policies would say of their edit (nor does the server read the connector for them)."""
    await steward.db.run(lambda s: users.add_user(session=s, name="sam", roles=["sales_ops"], actor="test"))
    run, asked = await waiting(steward)
    with pytest.raises(SeparationOfDuties):
        await edit(steward, asked, "60.00", actor="alice")
    with pytest.raises(Forbidden, match="is for pricing_manager"):
        await decide(steward, approval_id=asked.id, decision="approve", actor="sam", check_roles=True,
                     arguments_hash=asked.arguments_hash, arguments=proposed("60.00"))
    assert await trail(steward, run.id, "approval.edit_denied") == []
    assert [e.actor for e in await trail(steward, run.id, "authz.denied")] == ["sam"]


def step_asking(arguments: dict[str, Any]) -> Any:
    async def ask(state: dict, runtime: Any) -> dict:
        decision = await runtime.context.request_approval(action="pricing.set_price", arguments=arguments,
                                                          reason="the step asks")
        return {"approved": decision.arguments}

    return single_node_workflow("asks", ask, grants=set())


@pytest.mark.parametrize("arguments", [proposed("109.00"), {"amount": "109.00"}])
async def test_a_steps_own_request_is_never_edited(open_custom, arguments) -> None:
    """A step's request_approval named like a connector action is not a gated call: an edit would be
    recorded and then not executed, so it is refused, whatever its arguments."""
    async with open_custom([step_asking(arguments)]) as custom:
        run, _ = await custom.executor.submit(workflow="asks", input={}, actor="alice")
        await custom.executor.drive(run.id)
        asked = await pending(custom, run.id)
        with pytest.raises(InputInvalid, match="cannot be edited"):
            await decide(custom, approval_id=asked.id, decision="approve", actor="bob",
                         arguments_hash=asked.arguments_hash, arguments={**arguments, "amount": "105.00"})
        assert (await reread(custom, asked.id)).proposed_arguments is None


async def test_a_read_only_role_decides_no_request_and_a_tokens_own_name_may(open_custom) -> None:
    """Through every entry point (check_roles): a request naming no role is decided by a user holding a
    deciding role, not by an operator alone; a token's name with no user record is not a user."""
    async with open_custom([step_asking(proposed("109.00"))]) as custom:
        await custom.db.run(lambda s: users.add_user(session=s, name="ops", roles=["operator"], actor="test"))
        run, _ = await custom.executor.submit(workflow="asks", input={}, actor="alice")
        await custom.executor.drive(run.id)
        asked = await pending(custom, run.id)
        with pytest.raises(Forbidden, match="holds no role that decides"):
            await decide(custom, approval_id=asked.id, decision="approve", actor="ops", check_roles=True)
        done = await decide(custom, approval_id=asked.id, decision="approve", actor="script.bot", check_roles=True)
        assert done.status == ApprovalStatus.approved


def new_deal() -> Any:
    async def create(state: dict, runtime: Any) -> dict:
        deal = await runtime.context.crm.create_deal(properties={"dealname": "Big", "amount": "60000"},
                                                     contact_id="1")
        return {"deal": deal["id"]}

    return single_node_workflow("big_deal", create, grants={"crm.deals.write"})


@pytest.mark.parametrize(("arguments", "message"), [
    ({"properties": {"dealname": "Big", "amount": "60000"}, "contact_id": "999999"}, "keep contact_id"),
    ({"properties": {"dealname": "Big", "amount": "60000"}}, "keep contact_id"),  # left out is changed too
    ({"properties": {"dealname": "Big", "amount": float("nan")}, "contact_id": "1"}, "not finite"),
    ({"properties": {"dealname": "Big", "amount": float("inf")}, "contact_id": "1"}, "not finite"),
    ({"properties": {"dealname": "Big", "n": 10**30}, "contact_id": "1"}, "JSON cannot store"),
])
async def test_a_deal_edit_changes_its_values_only(open_custom, arguments, message) -> None:
    async with open_custom([new_deal()]) as custom:
        run, _ = await custom.executor.submit(workflow="big_deal", input={}, actor="alice")
        await custom.executor.drive(run.id)
        asked = await pending(custom, run.id)
        assert asked.editable == ["properties"] and asked.roles == ["sales_ops"]
        with pytest.raises(InputInvalid, match=message):
            await decide(custom, approval_id=asked.id, decision="approve", actor="bob",
                         arguments_hash=asked.arguments_hash, arguments=arguments)
        done = await decide(custom, approval_id=asked.id, decision="approve", actor="bob",
                            arguments_hash=asked.arguments_hash,
                            arguments={"properties": {"dealname": "Big", "amount": "45000"}, "contact_id": "1"})
        assert done.status == ApprovalStatus.approved and done.policy["outcome"] == "allow"


def test_the_inbox_answers_bad_addresses_and_filters_with_4xx(client) -> None:
    manager = Browser(client)
    manager.sign_in("demo.approver", "demo-approver-pass")
    for path in ("/inbox?older_than_hours=%C2%B2", "/inbox?workflow=%00", "/inbox/%00", "/inbox/" + "a" * 65):
        answer = manager.page(path)
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
    page = manager.page("/inbox").text
    forged = manager.http.post("/inbox/%00/decision", data={"csrf_token": CSRF.search(page).group(1)},
                               follow_redirects=False)
    assert 400 <= forged.status_code < 500
