"""``steward policy``: check the policy folders, run their table tests, evaluate a hypothetical action.

``check`` and ``test`` read the files (``--policies`` folders, or ``STEWARD_POLICIES``); ``eval``
asks the server, which evaluates under the policy set it has loaded. A malformed file exits 2
naming file and line; a failing test case exits 1.

>>> steward policy check
>>> steward policy test
>>> steward policy eval pricing.set_price --resource Sku:SKU-1001 --context '{"currency": "EUR", ...}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

policy_app = typer.Typer(name="policy", no_args_is_help=True,
                         help="Policies: check the files, run their tests (local), evaluate an action (server).")

FoldersOption = Annotated[list[Path] | None, typer.Option(
    "--policies", help="A policy folder (repeat for several); default STEWARD_POLICIES or the shipped policies/")]


def load_or_exit(folders: list[Path] | None) -> Any:
    """The policy set of ``folders`` (default: the settings'); a malformed file exits 2, each problem
    on a line of its own naming file and line."""
    from runtime.cli import fail, settings
    from runtime.errors import PolicyLoadError
    from runtime.policy import load_policies

    chosen = folders or settings().policies
    try:
        return load_policies(chosen)
    except PolicyLoadError as exc:
        for problem in (exc.details or [])[1:]:
            typer.echo(f"error: {problem['file']}:{problem['line']}: {problem['message']}", err=True)
        fail(exc.message)


@policy_app.command("check")
def check(folders: FoldersOption = None) -> None:
    """Parse every policy and schema file and validate the policies against the schema."""
    policies = load_or_exit(folders)
    typer.echo(f"ok: {len(policies.statements)} policies in {len(policies.documents.policies)} files, "
               f"policy set {policies.hash[:12]}")


@policy_app.command("test")
def test(
    folders: FoldersOption = None,
    cases: Annotated[list[Path] | None, typer.Option(
        "--cases", help="A folder of *.yaml cases (default: each policy folder's tests/)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List passing cases too")] = False,
) -> None:
    """Run the table-driven cases (request → expected decision) against the policies."""
    from runtime.cli import fail, settings
    from runtime.errors import PolicyLoadError
    from runtime.policy_cases import run_cases

    policies = load_or_exit(folders)
    places = cases or [folder / "tests" for folder in (folders or settings().policies) if (folder / "tests").is_dir()]
    if not places:
        fail("no policy test cases: give --cases FOLDER or add a tests/ folder of *.yaml beside the policies")
    try:
        results = [result for place in places for result in run_cases(policies, place)]
    except PolicyLoadError as exc:
        fail(exc.message)
    failed = [r for r in results if not r.passed]
    for result in results:
        if verbose or not result.passed:
            typer.echo(str(result), err=not result.passed)
    typer.echo(f"{len(results) - len(failed)} of {len(results)} policy cases passed")
    if failed:
        raise typer.Exit(1)


@policy_app.command("eval")
def evaluate(
    action: Annotated[str, typer.Argument(help="The action, e.g. pricing.set_price")],
    resource: Annotated[str, typer.Option(help="TYPE:ID, e.g. Sku:SKU-1001")],
    workflow: Annotated[str, typer.Option(help="The workflow asking")] = "price_change",
    version: Annotated[str | None, typer.Option(help="Its version (default: the newest loaded)")] = None,
    context: Annotated[str, typer.Option(help="The context as JSON (decimals as strings)")] = "{}",
    arguments: Annotated[str | None, typer.Option(
        help="The call's arguments as JSON instead of --context: the server builds the context, reading "
             "what it needs (e.g. the current price)")] = None,
) -> None:
    """Ask the server what its policies decide for a hypothetical action, and why."""
    from runtime.cli import call, emit_json, fail, parse_input

    kind, _, ident = resource.partition(":")
    if not kind or not ident:
        fail(f"--resource {resource!r} is not TYPE:ID, e.g. Sku:SKU-1001")
    body: dict[str, Any] = {"workflow": workflow, "action": action, "resource": {"type": kind, "id": ident}}
    if version:
        body["version"] = version
    if arguments is not None:
        body["arguments"] = parse_input(arguments)
    else:
        body["context"] = parse_input(context)
    decision = call(lambda api: api.post("/policy/evaluate", body))
    emit_json(decision)



