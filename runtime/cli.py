"""``steward``: serve, start runs, decide approvals, verify the audit trail.

Bad input exits with code 2 and a one-line reason on stderr; a broken audit chain exits 1.

>>> steward run price_change --input '{"items": [...], "reason": "..."}' --wait
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from runtime import audit, store
from runtime.api.schemas import StepPublic
from runtime.db import Database
from runtime.errors import StewardError
from runtime.models import RunStatus
from runtime.service import Steward, open_steward
from runtime.settings import Settings
from runtime.telemetry import tracer

app = typer.Typer(help="Steward: a governed runtime for AI automations.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
runs_app = typer.Typer(help="Inspect and cancel runs.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the audit trail.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
for sub, name in [(runs_app, "runs"), (audit_app, "audit"), (db_app, "db"), (tokens_app, "tokens")]:
    app.add_typer(sub, name=name)

T = TypeVar("T")
DEFAULT_USER = os.environ.get("STEWARD_USER") or getpass.getuser()
AsUser = Annotated[str, typer.Option("--as", help="Who is acting (recorded in the audit trail)")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"configuration: {'.'.join(map(str, first['loc'])) or 'settings'}: {first['msg']}")
    raise AssertionError  # pragma: no cover


def with_steward(fn: Callable[[Steward], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_steward(settings()) as steward:
            return await fn(steward)

    try:
        return asyncio.run(main())
    except StewardError as exc:
        fail(exc.message.splitlines()[0], code=2 if 400 <= exc.status_code < 500 else 1)
    raise AssertionError  # pragma: no cover


def emit(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def parse_input(raw: str) -> Any:
    if raw.startswith("@"):
        path = Path(raw[1:])
        if not path.is_file():
            fail(f"--input {raw}: no such file")
        raw = path.read_text()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"--input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def run_view(run: Any) -> dict[str, Any]:
    return run.model_dump(mode="json", exclude={"worker_id", "lease_expires_at", "idempotency_key"})


async def drive_and_show(steward: Steward, run_id: str) -> dict[str, Any]:
    await steward.executor.start(poll=False)
    run = await steward.executor.drive(run_id)
    if run.status == RunStatus.running:  # another process holds it: follow until it pauses, parks or ends
        while run.status == RunStatus.running or (run.status == RunStatus.queued and not run.status_reason):
            await asyncio.sleep(0.5)
            run = await steward.db.run(lambda s: store.get_run(session=s, run_id=run_id))
    view = run_view(run)
    view["pending_approval_ids"] = await steward.db.run(
        lambda s: steward.executor.approvals.pending_ids(s, run_id=run_id))
    return view


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (STEWARD_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (STEWARD_PORT)")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Demo mode: seed demo tokens, print them")] = False,
    worker: Annotated[bool, typer.Option("--worker/--no-worker",
                                         help="Also execute runs here (--no-worker: API only)")] = True,
) -> None:
    """Serve the API, the executor (unless --no-worker) and the sandbox (upgrades a SQLite database first)."""
    import uvicorn

    from runtime.app import DEMO_TOKENS, create_app

    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if demo:
        overrides["demo"] = True
    try:
        config = Settings(**overrides)
    except ValidationError as exc:
        fail(f"configuration: {exc.errors()[0]['msg']}")
    url = f"http://{config.host}:{config.port}"
    typer.echo(f"Steward on {url}  (API {url}/api/v1, docs {url}/docs, sandbox {url}/sandbox)")
    typer.echo(f"database: {config.database_url}")
    if config.demo:
        for user, token in DEMO_TOKENS.items():
            typer.echo(f"demo token for {user}: {token}")
        typer.echo(f"try: curl -H 'Authorization: Bearer {DEMO_TOKENS['demo.operator']}' {url}/api/v1/runs")
    sys.stdout.flush()
    uvicorn.run(create_app(config, start_executor=worker), host=config.host, port=config.port, log_level="info")


@app.command("worker")
def worker_command(
    concurrency: Annotated[int | None, typer.Option(min=1, help="Runs driven at once (STEWARD_EXECUTOR_CONCURRENCY)")]
    = None,
) -> None:
    """Execute runs, no HTTP: claim queued runs from the database (any number of workers may share a
    PostgreSQL database) until SIGTERM or Ctrl-C, then drain and give the runs in flight back."""
    import signal

    config = settings()
    if concurrency is not None:
        config = config.model_copy(update={"executor_concurrency": concurrency})

    async def main() -> None:
        async with open_steward(config) as steward:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await steward.executor.start()
            typer.echo(f"Steward worker {steward.executor.worker_id} on {config.database_url} "
                       f"({config.executor_concurrency} runs at once)")
            sys.stdout.flush()
            await stop.wait()
            typer.echo("stopping: draining runs in flight")

    try:
        asyncio.run(main())
    except StewardError as exc:
        fail(exc.message.splitlines()[0], code=2 if 400 <= exc.status_code < 500 else 1)


@app.command()
def sandbox(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8100,
) -> None:
    """Serve only the sandbox CRM and pricing service (its URLs: /crm and /pricing)."""
    import uvicorn

    from runtime.sandbox import create_sandbox_app

    uvicorn.run(create_sandbox_app(), host=host, port=port, log_level="warning")


@app.command("run")
def run_workflow(
    workflow: Annotated[str, typer.Argument(help="Workflow name, e.g. price_change")],
    input: Annotated[str, typer.Option("--input", help="JSON input, or @file.json")],
    wait: Annotated[bool, typer.Option("--wait", help="Drive the run here until it pauses or ends")] = False,
    actor: AsUser = DEFAULT_USER,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same run")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Pin to this version (default: the highest)")] = None,
) -> None:
    """Start a run, pinned to --version or the workflow's highest loaded version; print it as JSON."""
    data = parse_input(input)

    async def go(steward: Steward) -> dict[str, Any]:
        run, _ = await steward.executor.submit(workflow=workflow, input=data, actor=actor,
                                               idempotency_key=idempotency_key, version=version)
        return await drive_and_show(steward, run.id) if wait else run_view(run)

    emit(with_steward(go))


@runs_app.command("list")
def runs_list(
    status: Annotated[RunStatus | None, typer.Option(help="Only runs in this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Runs, newest first: id, workflow, version, status (and why, when a run is parked)."""

    async def go(steward: Steward) -> list[Any]:
        return list(await steward.db.run(lambda s: store.list_runs(session=s, status=status, limit=limit),
                                         read_only=True))

    for run in with_steward(go):
        reason = f"  ({run.status_reason})" if run.status_reason else ""
        typer.echo(f"{run.id}  {run.workflow:<16} {run.version:<8} {run.status.value:<17} "
                   f"{run.created_at:%Y-%m-%d %H:%M:%S}{reason}")


@runs_app.command("show")
def runs_show(run_id: str) -> None:
    """One run with its steps, pending approvals and ``status_reason`` (why it waits, when parked), as JSON."""

    async def go(steward: Steward) -> dict[str, Any]:
        def read(session: Any) -> tuple[Any, Any, list[str]]:
            return (store.get_run(session=session, run_id=run_id), store.list_steps(session=session, run_id=run_id),
                    steward.executor.approvals.pending_ids(session, run_id=run_id))

        run, steps, pending = await steward.db.run(read, read_only=True)
        view = run_view(run)
        view["steps"] = [StepPublic.model_validate(step).model_dump(mode="json") for step in steps]
        view["pending_approval_ids"] = pending
        return view

    emit(with_steward(go))


@runs_app.command("cancel")
def runs_cancel(run_id: str, actor: AsUser = DEFAULT_USER) -> None:
    """Cancel a run that has not ended."""

    async def go(steward: Steward) -> dict[str, Any]:
        return run_view(await steward.executor.cancel(run_id=run_id, actor=actor))

    emit(with_steward(go))


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; exit 1 and name the first broken event if it was tampered with."""

    async def go(steward: Steward) -> audit.Verification:
        return await steward.db.run(audit.verify, read_only=True)

    result = with_steward(go)
    if result.ok:
        typer.echo(f"audit chain intact: {result.events} events verified")
        return
    typer.echo(f"audit chain BROKEN at event {result.broken_seq}: {result.reason}", err=True)
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list(
    run_id: Annotated[str | None, typer.Option(help="Only this run's events")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 1000,
) -> None:
    """Audit events as JSON Lines."""

    async def go(steward: Steward) -> list[Any]:
        return list(await steward.db.run(lambda s: store.list_audit(session=s, run_id=run_id, limit=limit),
                                         read_only=True))

    for event in with_steward(go):
        typer.echo(json.dumps(event.model_dump(mode="json"), ensure_ascii=False, sort_keys=True))


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply the schema migrations (needed for PostgreSQL; serve does it for SQLite)."""
    config = settings()
    try:
        Database(config.database_url).upgrade(revision)
    except StewardError as exc:
        fail(exc.message)
    typer.echo(f"database upgraded to {revision}")


@tokens_app.command("create")
def tokens_create(user: Annotated[str, typer.Option(help="Who the token acts as")]) -> None:
    """Create an API token; it is shown once."""
    if not user.strip():
        fail("--user must name someone")

    def create(session: Any) -> str:
        with tracer().start_as_current_span("steward.token.create"):
            _, plain = store.create_token(session=session, user=user.strip())
            audit.append(session, kind="token.created", actor=user.strip(), data={"user": user.strip()})
        return plain

    async def go(steward: Steward) -> str:
        return await steward.db.run(create)

    typer.echo(with_steward(go))


# Command groups of other layers, named like the routers (the engine imports none of them).
COMMANDS = ("approvals.cli:app",)


def main() -> None:
    from runtime.sdk import load_object

    specs = json.loads(os.environ["STEWARD_CLI_COMMANDS"]) if os.environ.get("STEWARD_CLI_COMMANDS") else COMMANDS
    for spec in specs:
        group = load_object(spec)
        app.add_typer(group, name=group.info.name)
    app()


if __name__ == "__main__":
    main()
