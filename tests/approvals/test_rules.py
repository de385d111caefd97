"""Approval rules on SQLite and PostgreSQL: whoever started a run never approves it (by the service and
by token through the API, refused with 403 and audited); a decision on arguments other than the ones
shown is refused with 409 and changes nothing; twenty people deciding at once, exactly one decision
wins and the run resumes once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import get_approval, list_approvals
from runtime import store
from runtime.errors import Conflict, SeparationOfDuties
from runtime.models import RunStatus
from runtime.service import Steward

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}


async def waiting(steward: Steward, actor: str = "alice") -> tuple[Any, Any]:
    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_115, actor=actor)
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.waiting_approval
    [approval] = await steward.db.run(
        lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
    return run, approval


async def trail(steward: Steward, run_id: str, kind: str) -> list[Any]:
    return [e for e in await steward.db.run(lambda s: store.list_audit(session=s, run_id=run_id)) if e.kind == kind]


async def test_whoever_started_the_run_may_not_approve_it(steward: Steward) -> None:
    run, approval = await waiting(steward, actor="alice")
    with pytest.raises(SeparationOfDuties, match="alice started run"):
        await decide(steward, approval_id=approval.id, decision="approve", actor="alice", comment="mine")
    still = await steward.db.run(lambda s: get_approval(session=s, approval_id=approval.id))
    assert still.status == ApprovalStatus.pending and still.approvers == []
    [refused] = await trail(steward, run.id, "approval.sod_violation")
    assert refused.actor == "alice" and refused.data["approval_id"] == approval.id
    assert refused.data["requested_by"] == "alice"
    assert await trail(steward, run.id, "approval.decided") == []
    await decide(steward, approval_id=approval.id, decision="approve", actor="bob")  # someone else may
    assert (await steward.executor.drive(run.id)).status == RunStatus.succeeded


async def test_whoever_started_the_run_may_still_reject_it(steward: Steward) -> None:
    run, approval = await waiting(steward, actor="alice")
    await decide(steward, approval_id=approval.id, decision="reject", actor="alice", comment="I got it wrong")
    assert (await steward.executor.drive(run.id)).status == RunStatus.rejected


def waiting_over_http(client) -> dict[str, Any]:
    """A price change started with the operator's token, once it waits for a person."""
    created = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115},
                          headers=client.operator).json()
    return client.get(f"/api/v1/runs/{created['id']}", params=[("wait", 30), ("until", "waiting_approval")],
                      headers=client.operator).json()


def test_a_token_that_started_the_run_cannot_approve_it_through_the_api(client) -> None:
    """Even a token that may both start runs and decide approvals never approves its own user's run."""
    steward = client.app.state.steward
    _, plain = steward.db.transaction(lambda s: store.create_token(
        session=s, user="both.hands", scopes=["runs:read", "runs:write", "approvals:read", "approvals:decide"]))
    both = {"Authorization": f"Bearer {plain}"}
    created = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=both).json()
    run = client.get(f"/api/v1/runs/{created['id']}", params=[("wait", 30), ("until", "waiting_approval")],
                     headers=both).json()
    url = f"/api/v1/approvals/{run['pending_approval_id']}/decision"
    refused = client.post(url, json={"decision": "approve", "comment": "my own"}, headers=both)
    assert refused.status_code == 403 and refused.json()["code"] == "sod_violation", refused.text
    assert client.get(f"/api/v1/approvals/{run['pending_approval_id']}", headers=both).json()["status"] == "pending"
    audit = client.get("/api/v1/audit", params={"run_id": run["id"]}, headers=client.operator).json()["data"]
    assert [e["actor"] for e in audit if e["kind"] == "approval.sod_violation"] == ["both.hands"]
    assert client.post(url, json={"decision": "approve", "comment": "ok"}, headers=client.approver).status_code == 200


async def test_a_decision_on_arguments_other_than_the_ones_shown_is_refused(steward: Steward) -> None:
    run, approval = await waiting(steward)
    stale = "0" * 64
    with pytest.raises(Conflict, match="no longer proposes the arguments you were shown") as caught:
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob", arguments_hash=stale)
    assert caught.value.details == {"arguments_hash": approval.arguments_hash}
    still = await steward.db.run(lambda s: get_approval(session=s, approval_id=approval.id))
    assert still.status == ApprovalStatus.pending and still.approvers == []
    assert await trail(steward, run.id, "approval.decided") == []
    await decide(steward, approval_id=approval.id, decision="approve", actor="bob",
                 arguments_hash=approval.arguments_hash)
    assert (await steward.executor.drive(run.id)).status == RunStatus.succeeded


def test_a_stale_arguments_hash_is_a_409_and_a_malformed_one_a_422(client) -> None:
    run = waiting_over_http(client)
    url = f"/api/v1/approvals/{run['pending_approval_id']}/decision"
    stale = client.post(url, json={"decision": "approve", "arguments_hash": "f" * 64}, headers=client.approver)
    assert stale.status_code == 409 and "read it again" in stale.json()["detail"]
    bad = client.post(url, json={"decision": "approve", "arguments_hash": "nope"}, headers=client.approver)
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "arguments_hash"]
    shown = client.get(f"/api/v1/approvals/{run['pending_approval_id']}", headers=client.approver).json()
    ok = client.post(url, json={"decision": "approve", "arguments_hash": shown["arguments_hash"]},
                     headers=client.approver)
    assert ok.status_code == 200 and ok.json()["status"] == "approved"


async def test_twenty_concurrent_decisions_exactly_one_wins(steward: Steward) -> None:
    run, approval = await waiting(steward)
    barrier = asyncio.Barrier(20)

    async def one(i: int) -> str:
        await barrier.wait()
        try:
            await decide(steward, approval_id=approval.id, decision="approve" if i % 2 else "reject",
                         actor=f"approver{i}", arguments_hash=approval.arguments_hash)
            return "won"
        except Conflict:
            return "conflict"

    outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    assert outcomes.count("won") == 1 and outcomes.count("conflict") == 19
    decided = await trail(steward, run.id, "approval.decided")
    assert len(decided) == 1
    final = await steward.db.run(lambda s: get_approval(session=s, approval_id=approval.id))
    assert final.decided_by == decided[0].actor
    done = await steward.executor.drive(run.id)
    assert done.status == (RunStatus.succeeded if final.status == ApprovalStatus.approved else RunStatus.rejected)
    assert [e.data["reason"] for e in await trail(steward, run.id, "run.queued")] == ["approval decided"]
