"""``steward approvals …``: list, read and decide approval requests, through the server.

Mounted by ``runtime.cli`` from its list of command groups (``approvals.cli:app``). A decision is
made with the caller's token, so the approver recorded is the token's user.

    steward approvals list
    steward approvals decide 4f1c… approve --comment "margin ok"
    steward approvals decide 4f1c… approve --arguments-hash 9e0b… --arguments '{"sku": "SKU-1001", …}'
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from approvals.states import ApprovalStatus
from runtime.cli import Output, OutputOption, Timeout, call, emit_fields, emit_json, fail, follow, show_run

app = typer.Typer(name="approvals", help="List and decide approval requests (through the server).",
                  no_args_is_help=True)


@app.command("list")
def approvals_list(
    status: Annotated[ApprovalStatus | None, typer.Option(help="Default: pending")] = ApprovalStatus.pending,
    run_id: Annotated[str | None, typer.Option(help="Only this run's requests")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many (pages are followed)")] = 100,
    output: OutputOption = Output.text,
) -> None:
    """Approval requests, oldest first: id, run, action, reason and the arguments to decide on."""
    approvals = call(lambda api: list(api.pages("/api/v1/approvals", limit=limit,
                                                status=status and status.value, run_id=run_id)))
    if output is Output.json:
        emit_json(approvals)
        return
    for a in approvals:
        typer.echo(f"{a['id']}  run {a['run_id']}  {a['status']:<9} {a['action']}  {a['reason']}")
        typer.echo(f"    arguments: {json.dumps(a['arguments'], ensure_ascii=False)}")


@app.command("show")
def approvals_show(approval_id: str, output: OutputOption = Output.text) -> None:
    """One approval request."""
    approval = call(lambda api: api.get(f"/api/v1/approvals/{approval_id}"))
    if output is Output.json:
        emit_json(approval)
        return
    emit_fields(approval, ["id", "run_id", "workflow", "version", "node", "action", "reason", "arguments",
                           "arguments_hash", "proposed_arguments", "edited_by", "requested_by", "status",
                           "decided_by", "comment", "created_at",
                           "decided_at"])


@app.command("decide")
def approvals_decide(
    approval_id: str,
    decision: Annotated[str, typer.Argument(help="approve or reject")],
    comment: Annotated[str, typer.Option(help="Why")] = "",
    arguments_hash: Annotated[str | None, typer.Option(
        help="The request's arguments_hash as you read it (see `approvals show`): refused if they changed since")] = None,
    arguments: Annotated[str | None, typer.Option(
        help="Approve the call with these arguments instead, as a JSON object (edit within policy; needs "
             "--arguments-hash)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the run until it pauses or ends")] = True,
    timeout: Timeout = 600.0,
    output: OutputOption = Output.json,
) -> None:
    """Approve or reject as the token's user; by default follow the run and print it as it then stands."""
    if decision not in ("approve", "reject"):
        fail(f"decision must be approve or reject, not {decision!r}")
    edited = None
    if arguments is not None:
        try:
            edited = json.loads(arguments)
        except ValueError as exc:
            fail(f"--arguments is not JSON: {exc}")
        if not isinstance(edited, dict):
            fail("--arguments must be a JSON object of the action's arguments")
        if decision != "approve" or not arguments_hash:
            fail("--arguments goes with approve and --arguments-hash (the hash of what you edited)")

    def go(api: Any) -> dict[str, Any]:
        approval = api.post(f"/api/v1/approvals/{approval_id}/decision",
                            {"decision": decision, **({"comment": comment} if comment else {}),
                             **({"arguments_hash": arguments_hash} if arguments_hash else {}),
                             **({"arguments": edited} if edited is not None else {})})
        if not wait:
            return approval
        return follow(api, api.get(f"/api/v1/runs/{approval['run_id']}"), timeout=timeout)

    result = call(go)
    if not wait:
        emit_json(result) if output is Output.json else emit_fields(result, ["id", "status", "decided_by", "comment"])
        return
    show_run(result, output)
