"""``steward approvals …``: list and decide approval requests from the command line.

Mounted by ``runtime.cli`` from its list of command groups (``approvals.cli:app``).

    steward approvals list
    steward approvals decide 4f1c… approve --as pricing.manager --comment "margin ok"
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from approvals import service
from approvals.models import ApprovalStatus
from approvals.store import list_approvals
from runtime.cli import DEFAULT_USER, AsUser, drive_and_show, emit, fail, with_steward
from runtime.service import Steward

app = typer.Typer(name="approvals", help="List and decide approval requests.", no_args_is_help=True)


@app.command("list")
def approvals_list(
    status: Annotated[ApprovalStatus | None, typer.Option(help="Default: pending")] = ApprovalStatus.pending,
) -> None:
    """Approval requests: id, run, action, reason."""

    async def go(steward: Steward) -> list[Any]:
        return list(await steward.db.run(lambda s: list_approvals(session=s, status=status)))

    for a in with_steward(go):
        typer.echo(f"{a.id}  run {a.run_id}  {a.status.value:<9} {a.action}  {a.reason}")
        typer.echo(f"    arguments: {json.dumps(a.arguments, ensure_ascii=False)}")


@app.command("decide")
def approvals_decide(
    approval_id: str,
    decision: Annotated[str, typer.Argument(help="approve or reject")],
    actor: AsUser = DEFAULT_USER,
    comment: Annotated[str, typer.Option(help="Why")] = "",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Resume the run here")] = True,
) -> None:
    """Approve or reject; by default the run resumes here and its new state is printed."""
    if decision not in ("approve", "reject"):
        fail(f"decision must be approve or reject, not {decision!r}")

    async def go(steward: Steward) -> dict[str, Any]:
        approval = await service.decide(steward, approval_id=approval_id, decision=decision, actor=actor,
                                        comment=comment)
        if not wait:
            return approval.model_dump(mode="json")
        return await drive_and_show(steward, approval.run_id)

    emit(with_steward(go))
