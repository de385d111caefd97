"""The approvals table is a projection of the audit events, on SQLite and PostgreSQL: ``audit verify``
(API and CLI) passes while rows and events agree, and names each approval row edited behind Steward's
back (its decision, its decider, its approvers, the arguments it proposes), even with the chain intact."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import text

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import disagreements, list_approvals
from runtime.models import RunStatus
from runtime.service import Steward

PRICE = {"items": [{"sku": "SKU-1001", "new_price": "{}", "currency": "EUR"}], "reason": "supplier cost up"}


async def decided(steward: Steward, new: str, *deciders: str, decision: str = "approve") -> Any:
    given = {**PRICE, "items": [{**PRICE["items"][0], "new_price": new}]}
    run, _ = await steward.executor.submit(workflow="price_change", input=given, actor="alice")
    assert (await steward.executor.drive(run.id)).status == RunStatus.waiting_approval
    [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
    for person in deciders:
        approval = await decide(steward, approval_id=approval.id, decision=decision, actor=person, comment="ok")
    return approval


@pytest.mark.parametrize("tamper, named", [
    ("UPDATE approval_requests SET decided_by = 'mallory' WHERE id = :id", "approved by mallory but its events say approve by pat"),
    ("UPDATE approval_requests SET status = 'rejected' WHERE id = :id", "is rejected by pat but its events say approve by pat"),
    ("UPDATE approval_requests SET arguments_hash = 'f00d' WHERE id = :id", "proposes arguments f00d"),
    ("UPDATE approval_requests SET approvers = '[{\"approver\": \"mallory\"}]' WHERE id = :id",
     "counts approvals by mallory that no approval.decided event records"),
])
async def test_a_row_edited_behind_stewards_back_is_named(steward: Steward, tamper: str, named: str) -> None:
    from runtime import audit

    check = lambda s: audit.verify(s, projections=disagreements)  # noqa: E731
    await decided(steward, "112.00")  # pending, then
    approval = await decided(steward, "115.00", "pat")
    await decided(steward, "130.00", "pat", "quinn")  # two people
    await decided(steward, "114.00", "pat", decision="reject")
    clean = await steward.db.run(check, read_only=True)
    assert clean.ok and clean.disagreements == (), clean
    await steward.db.run(lambda s: s.execute(text(tamper), {"id": approval.id}))
    found = await steward.db.run(check, read_only=True)
    assert not found.ok and found.broken_seq is None  # the chain itself is intact
    assert len(found.disagreements) == 1 and named in found.disagreements[0], found.disagreements
    assert approval.id in found.disagreements[0]


def test_audit_verify_names_the_disagreement_over_http_and_in_the_cli(client, cli_env) -> None:
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": {
        **PRICE, "items": [{**PRICE["items"][0], "new_price": "115.00"}]}}, headers=client.operator).json()
    from tests.fakes import settle

    approval_id = settle(client, run["id"], {"waiting_approval"})["pending_approval_id"]
    client.post(f"/api/v1/approvals/{approval_id}/decision", json={"decision": "approve", "comment": "ok"},
                headers=client.approver)
    assert client.get("/api/v1/audit/verify", headers=client.operator).json()["ok"] is True
    client.app.state.steward.db.transaction(lambda s: s.execute(text(
        "UPDATE approval_requests SET decided_by = 'mallory' WHERE id = :id"), {"id": approval_id}))
    answer = client.get("/api/v1/audit/verify", headers=client.operator).json()
    assert answer["ok"] is False and "approved by mallory" in answer["disagreements"][0]
    cli = subprocess.run([sys.executable, "-m", "runtime.cli", "audit", "verify"], env=cli_env, capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 1 and f"DISAGREES: approval {approval_id} is approved by mallory" in cli.stderr
