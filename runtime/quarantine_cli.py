"""``steward quarantine``: records that failed a workflow's data-quality checks, through the server.

>>> steward quarantine list --status quarantined --workflow lead_routing
>>> steward quarantine release 3f2a… --comment "a real company"
>>> steward quarantine drop 9c1e… --comment "test submission"
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer

quarantine_app = typer.Typer(name="quarantine", no_args_is_help=True, help=(
    "Records that failed data-quality checks: list, show, release or drop them (through the server)."))


class Status(str, enum.Enum):
    quarantined = "quarantined"
    released = "released"
    dropped = "dropped"


class Format(str, enum.Enum):
    text = "text"
    json = "json"


CommentOption = Annotated[str, typer.Option(help="Why (kept in the audit trail)")]


def _line(item: dict[str, Any]) -> str:
    why = "; ".join(reason["message"] for reason in item["reasons"])
    return (f"{item['id']}  {item['workflow']:<16} {item['kind']:<10} {item['status']:<11} "
            f"seen {item['seen_count']:<3} {why}")


@quarantine_app.command("list")
def quarantine_list(
    status: Annotated[Status | None, typer.Option(help="Only records in this status")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow's records")] = None,
    kind: Annotated[str | None, typer.Option(help="Only records of this kind")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many (pages are followed)")] = 50,
    output: Annotated[Format, typer.Option("--output", "-o", help="text, or json for programs")] = Format.text,
) -> None:
    """Quarantined records, newest first: id, workflow, kind, status, how often seen, why."""
    from runtime.cli import call, emit_json

    items = call(lambda api: list(api.pages("/api/v1/quarantine", limit=limit, status=status and status.value,
                                            workflow=workflow, kind=kind)))
    if output is Format.json:
        emit_json(items)
        return
    for item in items:
        typer.echo(_line(item))


@quarantine_app.command("show")
def quarantine_show(item_id: str) -> None:
    """One quarantined record as JSON: the record itself, its reasons, who decided what."""
    from runtime.cli import call, emit_json

    emit_json(call(lambda api: api.get(f"/api/v1/quarantine/{item_id}")))


@quarantine_app.command("release")
def quarantine_release(item_id: str, comment: CommentOption = "") -> None:
    """Release a record (as the token's user): it passes its workflow's checks from now on, and a
    workflow that resubmits released records starts a run with it."""
    from runtime.cli import call

    item = call(lambda api: api.post(f"/api/v1/quarantine/{item_id}/release", {"comment": comment}))
    started = f"; run {item['resubmitted_run_id']} started with it" if item.get("resubmitted_run_id") else ""
    typer.echo(f"released {item['id']}{started}")


@quarantine_app.command("drop")
def quarantine_drop(item_id: str, comment: CommentOption = "") -> None:
    """Drop a record (as the token's user): it is not processed, now or when seen again."""
    from runtime.cli import call

    item = call(lambda api: api.post(f"/api/v1/quarantine/{item_id}/drop", {"comment": comment}))
    typer.echo(f"dropped {item['id']}")
