"""Runs end to end through the executor, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import list_approvals
from runtime import audit, store
from runtime.models import RunStatus
from runtime.service import Steward
from tests.fakes import TicketConnector, instant_retry, single_node_workflow

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}


def price(sandbox, sku: str) -> str:
    return sandbox.state.sandbox.prices[(sku, "EUR")]["amount"]


async def pending(steward: Steward, run_id: str) -> list[Any]:
    return list(await steward.db.run(
        lambda s: list_approvals(session=s, run_id=run_id, status=ApprovalStatus.pending)))


async def events(steward: Steward, run_id: str) -> list[str]:
    return [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s, run_id=run_id))]


async def chain_ok(steward: Steward) -> bool:
    return (await steward.db.run(audit.verify)).ok


async def test_large_price_change_waits_for_approval_then_applies(steward: Steward, sandbox) -> None:
    run, created = await steward.executor.submit(workflow="price_change", input=PRICE_115, actor="alice")
    assert created and run.status == RunStatus.queued

    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.waiting_approval
    assert price(sandbox, "SKU-1001") == "100.00"
    [approval] = await pending(steward, run.id)
    assert approval.action == "pricing.set_price"  # the pricing policy escalated the write itself
    assert approval.arguments == {"sku": "SKU-1001", "currency": "EUR", "amount": "115.00"}
    assert "more than 10 %" in approval.reason and approval.roles == ["pricing_manager"]

    await decide(steward, approval_id=approval.id, decision="approve", actor="bob", comment="fine")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded
    assert price(sandbox, "SKU-1001") == "115.00"
    assert run.output["summary"]["largest_change_pct"] == "15.00"
    kinds = await events(steward, run.id)
    assert kinds[0] == "run.created" and kinds[-1] == "run.succeeded"
    for kind in ("approval.requested", "run.waiting_approval", "approval.decided", "run.resumed", "connector.call"):
        assert kind in kinds
    assert await chain_ok(steward)


async def test_small_price_change_needs_no_approval(steward: Steward, sandbox) -> None:
    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded
    assert price(sandbox, "SKU-1002") == "105.00"
    assert await pending(steward, run.id) == []


async def test_rejection_ends_the_run_rejected_and_writes_nothing(steward: Steward, sandbox) -> None:
    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_115, actor="alice")
    await steward.executor.drive(run.id)
    [approval] = await pending(steward, run.id)
    await decide(steward, approval_id=approval.id, decision="reject", actor="bob", comment="too steep")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.rejected
    assert run.error["code"] == "approval_rejected"
    assert "too steep" in run.error["message"] and "bob" in run.error["message"]
    assert price(sandbox, "SKU-1001") == "100.00"
    assert sandbox.state.sandbox.writes == {}


async def test_unknown_sku_fails_before_any_write(steward: Steward, sandbox) -> None:
    data = {"items": [{"sku": "SKU-9999", "new_price": "10.00", "currency": "EUR"}], "reason": "typo"}
    run, _ = await steward.executor.submit(workflow="price_change", input=data, actor="alice")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.failed
    assert run.error == {"code": "unknown_sku", "message": "SKU-9999 has no EUR price in the pricing system"}
    assert sandbox.state.sandbox.writes == {}


async def test_lead_routing_creates_contact_deal_and_note(steward: Steward, sandbox) -> None:
    lead = {"email": "Jane@Acme.io", "first_name": "Jane", "last_name": "Doe", "company": "Acme",
            "country": "DE", "source": "referral", "employees": 250, "budget": "50000"}
    run, _ = await steward.executor.submit(workflow="lead_routing", input=lead, actor="web-form")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    out = run.output
    assert out["duplicate"] is False and out["owner"]["territory"] == "EU" and out["score"] == 85
    objects = sandbox.state.sandbox.objects
    deal = objects["deals"][out["deal_id"]]
    assert deal["properties"]["hubspot_owner_id"] == "501"
    assert deal["associations"]["contacts"] == [out["contact_id"]]
    assert "score 85" in objects["notes"][out["note_id"]]["properties"]["hs_note_body"]
    assert objects["contacts"][out["contact_id"]]["properties"]["email"] == "jane@acme.io"


async def test_lead_routing_assigns_the_owner_of_the_leads_territory_team(steward: Steward, sandbox) -> None:
    lead = {"email": "kaito@example.jp", "first_name": "Kaito", "last_name": "Mori", "company": "Mori KK", "country": "JP",
            "source": "web"}
    run, _ = await steward.executor.submit(workflow="lead_routing", input=lead, actor="web-form")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["owner"] == {"id": "502", "email": "kenji.sato@example.com", "territory": "APAC"}


async def test_lead_routing_dedupes_existing_contact(steward: Steward, sandbox) -> None:
    lead = {"email": "existing.lead@example.com", "first_name": "E", "last_name": "L", "country": "US",
            "source": "web", "employees": 40}
    run, _ = await steward.executor.submit(workflow="lead_routing", input=lead, actor="web-form")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded
    assert run.output["duplicate"] is True
    assert len(sandbox.state.sandbox.objects["contacts"]) == 1


async def test_scope_not_granted_is_denied_and_audited(open_custom, sandbox) -> None:
    async def sneaky(state: dict, runtime) -> dict:
        await runtime.context.pricing.set_price(sku="SKU-1001", currency="EUR", amount="101.00")
        return {}

    wf = single_node_workflow("sneaky", sneaky, grants={"pricing.prices.read"})
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="sneaky", input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.failed
        assert run.error["code"] == "permission_denied"
        assert "pricing.prices.write" in run.error["message"]
        trail = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))
        [denial] = [e for e in trail if e.kind == "gate.decision"]
        assert denial.data["decision"] == "deny" and denial.data["action"] == "pricing.set_price"
    assert price(sandbox, "SKU-1001") == "100.00"


@respx.mock(assert_all_called=False)
async def test_action_requiring_approval_pauses_and_replays_earlier_calls(open_custom, respx_mock) -> None:
    opened = respx_mock.post("http://tickets/tickets").mock(return_value=httpx.Response(201, json={"id": "T1"}))
    escalated = respx_mock.post("http://tickets/tickets/T1/escalate").mock(
        return_value=httpx.Response(200, json={"ok": True}))

    async def triage(state: dict, runtime) -> dict:
        ticket = await runtime.context.tickets.open(title="printer on fire")
        return {"result": await runtime.context.tickets.escalate(ticket_id=ticket["id"], to="facilities")}

    wf = single_node_workflow("triage", triage, grants={"tickets.write", "tickets.escalate"})
    tickets = TicketConnector(base_url="http://tickets", token="t", retry=instant_retry())
    async with open_custom([wf], {"tickets": tickets}) as steward:
        run, _ = await steward.executor.submit(workflow="triage", input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.waiting_approval
        [approval] = await pending(steward, run.id)
        assert approval.action == "tickets.escalate"
        assert approval.arguments == {"ticket_id": "T1", "to": "facilities"}
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.succeeded
        assert "connector.replayed" in await events(steward, run.id)
    assert opened.call_count == 1, "the node re-ran after approval but the recorded write was not repeated"
    assert escalated.call_count == 1
    assert escalated.calls[0].request.headers["Idempotency-Key"] != opened.calls[0].request.headers["Idempotency-Key"]


async def test_approval_is_bound_to_the_exact_arguments(open_custom) -> None:
    proposals = iter([{"amount": "10"}, {"amount": "20"}, {"amount": "20"}])

    async def drifting(state: dict, runtime) -> dict:
        await runtime.context.request_approval(action="refund", arguments=next(proposals),
                                               reason="refunds need a person")
        return {"refunded": True}

    wf = single_node_workflow("drifting", drifting, grants=set())
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="drifting", input={}, actor="alice")
        await steward.executor.drive(run.id)
        [first] = await pending(steward, run.id)
        assert first.arguments == {"amount": "10"}
        await decide(steward, approval_id=first.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.waiting_approval, "approval for 10 must not cover 20"
        [second] = await pending(steward, run.id)
        assert second.arguments == {"amount": "20"} and second.id != first.id
        await decide(steward, approval_id=second.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.succeeded


async def test_crash_after_external_write_before_record_writes_once(steward: Steward, sandbox, monkeypatch) -> None:
    """The write reached the system but the process died before recording it: the retry sends
    the same Idempotency-Key and the system does not apply it twice."""
    from runtime.journal import Journal

    class Crash(BaseException):
        pass

    real_record = Journal.record_call

    def dying_record(self, row, *rest):
        if row["effect"] == "write":
            raise Crash()
        return real_record(self, row, *rest)

    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
    monkeypatch.setattr(Journal, "record_call", dying_record)
    with pytest.raises(Crash):
        await steward.executor.drive(run.id)
    monkeypatch.setattr(Journal, "record_call", real_record)
    steward.executor.worker_id = "elsewhere:1:x"  # a different worker, after the lease ran out
    from sqlalchemy import update

    from runtime.models import Run, utcnow

    await steward.db.run(lambda s: s.execute(update(Run).where(Run.id == run.id).values(lease_expires_at=utcnow())))
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded
    assert list(sandbox.state.sandbox.writes.values()) == [1]
    assert price(sandbox, "SKU-1002") == "105.00"
    assert await chain_ok(steward)


async def test_cancel_a_waiting_run_cancels_its_approval(steward: Steward) -> None:
    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_115, actor="alice")
    await steward.executor.drive(run.id)
    [approval] = await pending(steward, run.id)
    run = await steward.executor.cancel(run_id=run.id, actor="alice")
    assert run.status == RunStatus.cancelled
    assert await pending(steward, run.id) == []
    from runtime.errors import Conflict

    with pytest.raises(Conflict):
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
    with pytest.raises(Conflict):
        await steward.executor.cancel(run_id=run.id, actor="alice")


async def test_repeated_idempotency_key_returns_the_first_run(steward: Steward) -> None:
    first, created = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="a",
                                                   idempotency_key="k1")
    again, created_again = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="a",
                                                         idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    from runtime.errors import Conflict

    with pytest.raises(Conflict):
        await steward.executor.submit(workflow="price_change", input=PRICE_115, actor="a", idempotency_key="k1")


async def test_idempotency_keys_of_different_actors_never_meet(steward: Steward) -> None:
    one, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="a:b", idempotency_key="c")
    two, created = await steward.executor.submit(workflow="price_change", input=PRICE_115, actor="a",
                                                 idempotency_key="b:c")
    assert created and two.id != one.id


async def test_background_executor_picks_up_queued_runs(steward: Steward, sandbox) -> None:

    await steward.executor.start()
    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
    for _ in range(200):
        run = await steward.db.run(lambda s: store.get_run(session=s, run_id=run.id))
        if run.status.finished:
            break
        await asyncio.sleep(0.05)
    assert run.status == RunStatus.succeeded


async def test_cancel_a_running_run_stops_it_before_its_next_call(open_custom, sandbox) -> None:

    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(state: dict, runtime) -> dict:
        entered.set()
        await release.wait()  # a long computation; the cancel arrives meanwhile
        await runtime.context.pricing.set_price(sku="SKU-1001", currency="EUR", amount="101.00")
        return {}

    wf = single_node_workflow("slow", slow, grants={"pricing.prices.write"})
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="slow", input={}, actor="alice")
        driving = asyncio.create_task(steward.executor.drive(run.id))
        await entered.wait()
        requested = await steward.executor.cancel(run_id=run.id, actor="alice")
        assert requested.cancel_requested and requested.status == RunStatus.running
        release.set()
        run = await driving
        assert run.status == RunStatus.cancelled
        kinds = await events(steward, run.id)
        assert kinds[-1] == "run.cancelled" and "run.cancel_requested" in kinds
        assert kinds.count("run.cancelled") == 1
    assert sandbox.state.sandbox.writes == {}, "the cancelled step made no call after the cancel"


async def test_steps_have_their_own_table_and_outlive_audit_retention(steward: Steward) -> None:
    from sqlalchemy import delete

    from runtime.models import AuditEvent, StepStatus

    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
    run = await steward.executor.drive(run.id)
    before = await steward.db.run(lambda s: store.list_steps(session=s, run_id=run.id))
    assert [(s.node, s.status) for s in before] == [
        ("read_prices", StepStatus.succeeded), ("apply_prices", StepStatus.succeeded), ("record", StepStatus.succeeded)]
    await steward.db.run(lambda s: s.execute(delete(AuditEvent).where(AuditEvent.run_id == run.id)))
    after = await steward.db.run(lambda s: store.list_steps(session=s, run_id=run.id))
    assert [(s.node, s.status, s.started_at) for s in after] == [(s.node, s.status, s.started_at) for s in before]


async def test_request_approval_returns_a_typed_decision(open_custom) -> None:
    from runtime import ApprovalDecision

    async def asks(state: dict, runtime) -> dict:
        decision = await runtime.context.request_approval(action="refund", arguments={"amount": "10.00"},
                                                          reason="refunds need a person")
        assert isinstance(decision, ApprovalDecision)
        return {"approver": decision.approver, "comment": decision.comment, "approved": decision.approved,
                "arguments": decision.arguments, "approval_id": decision.approval_id}

    wf = single_node_workflow("asks", asks, grants=set())
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="asks", input={}, actor="alice")
        await steward.executor.drive(run.id)
        [approval] = await pending(steward, run.id)
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob", comment="fine")
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output == {"approver": "bob", "comment": "fine", "approved": True, "arguments": {"amount": "10.00"},
                          "approval_id": approval.id}


class Undecodable(httpx.AsyncBaseTransport):
    """The write reaches the sandbox, then its answer is garbled on the way back."""

    def __init__(self, app) -> None:
        self.inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "PUT":
            await response.aread()
            return httpx.Response(200, content=b"<html>proxy error</html>", request=request)
        return response


async def test_a_call_whose_answer_cannot_be_read_is_on_record_with_an_unknown_outcome(
    open_custom, settings, sandbox
) -> None:
    from runtime.service import build_connectors

    async def work(state: dict, runtime) -> dict:
        await runtime.context.pricing.set_price(sku="SKU-1001", currency="EUR", amount="101.00")
        return {}

    garbled = build_connectors(settings, transport=Undecodable(sandbox), retry=instant_retry())
    wf = single_node_workflow("garbled", work, grants={"pricing.prices.write"})
    async with open_custom([wf], {"pricing": garbled["pricing"]}) as steward:
        run, _ = await steward.executor.submit(workflow=wf.name, input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        trail = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))
    failed = [e.data for e in trail if e.kind == "connector.failed"]
    assert run.status == RunStatus.failed and "JSONDecodeError" in run.error["message"]
    assert len(failed) == 1 and failed[0]["outcome"] == "unknown" and failed[0]["action"] == "pricing.set_price"
    assert list(sandbox.state.sandbox.writes.values()) == [1], "the write did happen: hence the record"
    await garbled["pricing"].aclose()


async def test_a_submit_retried_across_the_idempotency_scope_migration_finds_its_run(open_custom, database_url) -> None:
    """Keys stored as "<actor>:<key>" (before migration 0004) are rewritten, so a client retrying its
    submit after the upgrade gets the run it created, not a second one (and the downgrade restores them)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import select

    from runtime.db import MIGRATIONS, Database
    from runtime.models import Run

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = database_url
    lead = {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "country": "DE", "source": "web"}

    async def stored_key(steward) -> str:
        return await steward.db.run(lambda s: s.scalar(select(Run.idempotency_key)))

    async with open_custom() as steward:
        run, _ = await steward.executor.submit(workflow="lead_routing", input=lead, actor="a:b", idempotency_key="k:1")
        assert await stored_key(steward) == "3:a:b:k:1"
    await asyncio.to_thread(command.downgrade, config, "0003")
    db = Database(database_url)
    assert await db.run(lambda s: s.scalar(select(Run.idempotency_key))) == "a:b:k:1"  # as it was stored then
    await db.dispose()
    await asyncio.to_thread(command.upgrade, config, "head")
    async with open_custom() as steward:
        assert await stored_key(steward) == "3:a:b:k:1"
        again, created = await steward.executor.submit(workflow="lead_routing", input=lead, actor="a:b",
                                                       idempotency_key="k:1")
        other, other_created = await steward.executor.submit(workflow="lead_routing", input=lead, actor="a",
                                                             idempotency_key="b:k:1")
    assert not created and again.id == run.id
    assert other_created and other.id != run.id


async def test_an_idempotency_key_longer_than_200_characters_is_refused(steward: Steward) -> None:
    from runtime.errors import InputInvalid

    with pytest.raises(InputInvalid, match="1 to 200"):
        await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="a", idempotency_key="k" * 201)
