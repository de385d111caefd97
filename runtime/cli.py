"""``steward``: serve, start and follow runs, decide approvals, administer a database.

Commands that act as a person (``run``, ``runs``, ``approvals``, ``workflows``, ``audit list``) call
the server over HTTP with a bearer token (``STEWARD_URL``/``STEWARD_TOKEN`` or ``steward login``), so
the actor recorded is the token's user; nobody can act under another name. Local administration
(``db upgrade``, ``tokens``, ``audit verify``) works on the database itself (``STEWARD_DATABASE_URL``)
and never creates one that does not exist.

Bad input exits 2 with a one-line reason on stderr; an unreachable or failing server exits 1; a
broken audit chain exits 1. List and show commands print text, or JSON with ``--output json``.

Only the command that runs imports what it needs: ``steward --help`` imports typer and nothing else.

>>> steward run price_change --input '{"items": [...], "reason": "..."}' --wait
"""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from runtime.policy_cli import policy_app
from runtime.quarantine_cli import quarantine_app
from runtime.states import RunStatus

if TYPE_CHECKING:
    from runtime.client import Api
    from runtime.db import Database
    from runtime.settings import Settings

app = typer.Typer(help="Steward: a governed runtime for AI automations.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)
runs_app = typer.Typer(help="List, inspect and cancel runs (through the server).", no_args_is_help=True)
workflows_app = typer.Typer(help="The workflows the server has loaded.", no_args_is_help=True)
audit_app = typer.Typer(help="Read (through the server) and verify (locally) the audit trail.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (local).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (local).", no_args_is_help=True)
for sub, name in [(runs_app, "runs"), (workflows_app, "workflows"), (audit_app, "audit"), (db_app, "db"),
                  (tokens_app, "tokens"), (policy_app, "policy"), (quarantine_app, "quarantine")]:
    app.add_typer(sub, name=name)

T = TypeVar("T")
FOLLOW_SECONDS = 30.0  # one long-poll
SETTLED = {"waiting_approval", "succeeded", "failed", "rejected", "cancelled"}


class Output(str, enum.Enum):
    text = "text"
    json = "json"


OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text, or json for programs")]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"steward {version('steward')}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit")] = False,
) -> None:
    """Steward: a governed runtime for AI automations."""


# -- output ------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def emit_fields(value: dict[str, Any], fields: Iterable[str]) -> None:
    for name in fields:
        shown = value.get(name)
        if shown is None or shown == [] or shown == {}:
            continue
        text = shown if isinstance(shown, str) else json.dumps(shown, ensure_ascii=False, default=str)
        typer.echo(f"{name + ':':<22}{text}")


def show_run(run: dict[str, Any], output: Output) -> None:
    if output is Output.json:
        emit_json(run)
        return
    emit_fields(run, ["id", "workflow", "version", "status", "status_reason", "created_by", "created_at",
                      "finished_at", "error", "pending_approval_ids", "output"])
    for step in run.get("steps", []):
        typer.echo(f"  step {step['node']:<20} {step['status']:<12} {step['task_id']}")


# -- the server ----------------------------------------------------------------------------


def call(fn: Callable[[Api], T]) -> T:
    """``fn(api)`` against the server; a refused call exits 2 (bad input) or 1 (server, network)."""
    from runtime.client import Api, ClientError

    try:
        with Api.from_environment() as api:
            return fn(api)
    except ClientError as exc:
        fail(exc.message, code=2 if exc.bad_input else 1)


def follow(api: Api, run: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Long-poll the run until it waits for a person, ends or is parked, or ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while not settled(run):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        wait = max(0.1, min(FOLLOW_SECONDS, left))
        run = api.get(f"/api/v1/runs/{run['id']}", wait=wait, seen=run["status"], timeout=wait + 30)
    return run


def settled(run: dict[str, Any]) -> bool:
    return run["status"] in SETTLED or (run["status"] == "queued" and bool(run.get("status_reason")))


def parse_input(raw: str) -> Any:
    from pathlib import Path

    if raw.startswith("@"):
        path = Path(raw[1:])
        if not path.is_file():
            fail(f"--input {raw}: no such file")
        raw = path.read_text()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"--input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


Wait = Annotated[bool, typer.Option("--wait", help="Follow the run until it waits for a person, ends or is parked")]
Timeout = Annotated[float, typer.Option(min=0, help="With --wait: give up following after this many seconds")]


@app.command("run")
def run_workflow(
    workflow: Annotated[str, typer.Argument(help="Workflow name, e.g. price_change")],
    input: Annotated[str, typer.Option("--input", help="JSON input, or @file.json")],
    wait: Wait = False,
    timeout: Timeout = 600.0,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same run")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Pin to this version (default: the highest)")] = None,
    output: OutputOption = Output.json,
) -> None:
    """Start a run as the token's user, pinned to --version or the workflow's highest loaded version."""
    data = parse_input(input)
    body = {"workflow": workflow, "input": data, **({"version": version} if version else {})}

    def go(api: Api) -> dict[str, Any]:
        run = api.post("/api/v1/runs", body, headers={"Idempotency-Key": idempotency_key} if idempotency_key else None)
        run = api.get(f"/api/v1/runs/{run['id']}")
        return follow(api, run, timeout=timeout) if wait else run

    show_run(call(go), output)


@runs_app.command("list")
def runs_list(
    status: Annotated[RunStatus | None, typer.Option(help="Only runs in this status")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many (pages are followed)")] = 50,
    output: OutputOption = Output.text,
) -> None:
    """Runs, newest first: id, workflow, version, status (and why, when a run is parked)."""
    runs = call(lambda api: list(api.pages("/api/v1/runs", limit=limit, status=status and status.value,
                                           workflow=workflow)))
    if output is Output.json:
        emit_json(runs)
        return
    for run in runs:
        reason = f"  ({run['status_reason']})" if run.get("status_reason") else ""
        typer.echo(f"{run['id']}  {run['workflow']:<16} {run['version']:<8} {run['status']:<17} "
                   f"{run['created_at'][:19].replace('T', ' ')}{reason}")


@runs_app.command("show")
def runs_show(run_id: str, output: OutputOption = Output.text) -> None:
    """One run with its steps, pending approvals and ``status_reason`` (why it waits, when parked)."""
    show_run(call(lambda api: api.get(f"/api/v1/runs/{run_id}")), output)


@runs_app.command("cancel")
def runs_cancel(run_id: str, output: OutputOption = Output.text) -> None:
    """Cancel a run that has not ended (as the token's user)."""
    show_run(call(lambda api: api.post(f"/api/v1/runs/{run_id}/cancel", None)), output)


@workflows_app.command("list")
def workflows_list(output: OutputOption = Output.text) -> None:
    """Every workflow the server has loaded: its latest version, owner and description."""
    workflows = call(lambda api: api.get("/api/v1/workflows"))
    if output is Output.json:
        emit_json(workflows)
        return
    for wf in workflows:
        latest = wf["versions"][0]
        others = ", ".join(v["version"] for v in wf["versions"][1:])
        split = ", ".join(f"{v['version']} {v['weight']}%" for v in wf["versions"] if v["weight"])
        typer.echo(f"{wf['name']:<18} {split:<22} {latest['owner']['email']:<28} "
                   f"{latest['description']}" + (f"  (loaded: {latest['version']}, {others})" if others else ""))


@workflows_app.command("show")
def workflows_show(name: str, output: OutputOption = Output.json) -> None:
    """One workflow: its rollout, every loaded version with its grants, code hash, input schema, share of
    new runs and health."""
    emit_json(call(lambda api: api.get(f"/api/v1/workflows/{name}")))


Reason = Annotated[str, typer.Option(help="Why (at least 3 characters): it goes into the audit trail")]


@app.command("rollout")
def rollout_command(
    name: str, version: str,
    percent: Annotated[int, typer.Option(min=0, max=100, help="The canary's share of new runs (0 ends it)")],
    reason: Reason,
) -> None:
    """Send a share of new runs of a workflow to a version (a canary), routed by key; as the token's user."""
    emit_json(call(lambda api: api.post(f"/api/v1/workflows/{name}/rollout",
                                        {"version": version, "percent": percent, "reason": reason})))


@app.command("promote")
def promote_command(name: str, version: str, reason: Reason) -> None:
    """Make a version the one every new run of the workflow takes; the canary ends."""
    emit_json(call(lambda api: api.post(f"/api/v1/workflows/{name}/promote", {"version": version, "reason": reason})))


class InFlight(str, enum.Enum):
    continue_ = "continue"
    cancel = "cancel"


@app.command("rollback")
def rollback_command(
    name: str, reason: Reason,
    to: Annotated[str | None, typer.Option("--to", help="Default: the stable version when there is a canary, "
                                                       "else the stable version before the last promotion")] = None,
    in_flight: Annotated[InFlight, typer.Option(help="continue: started runs finish on their version; cancel: "
                                                     "those of the versions rolled back from are cancelled")] = InFlight.continue_,
) -> None:
    """Send every new run of a workflow back to a version."""
    emit_json(call(lambda api: api.post(f"/api/v1/workflows/{name}/rollback", {
        "reason": reason, "in_flight": in_flight.value, **({"to_version": to} if to else {})})))


@audit_app.command("list")
def audit_list(
    run_id: Annotated[str | None, typer.Option(help="Only this run's events")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="At most this many (pages are followed)")] = 1000,
    output: OutputOption = Output.text,
) -> None:
    """Audit events in chain order (text: JSON Lines, one event a line; json: one array)."""
    events = call(lambda api: list(api.pages("/api/v1/audit", limit=limit, run_id=run_id)))
    if output is Output.json:
        emit_json(events)
        return
    for event in events:
        typer.echo(json.dumps(event, ensure_ascii=False, sort_keys=True))


@app.command()
def login(
    url: Annotated[str | None, typer.Option(help="The server (default: STEWARD_URL, else http://127.0.0.1:8000)")]
    = None,
    token: Annotated[str | None, typer.Option(help="The token (default: STEWARD_TOKEN, else asked for)")] = None,
) -> None:
    """Check a token against the server and store both for later commands (readable by you only)."""
    from runtime.client import DEFAULT_URL, Api, ClientError, write_credentials

    url = url or os.environ.get("STEWARD_URL") or DEFAULT_URL
    token = token or os.environ.get("STEWARD_TOKEN") or typer.prompt("API token", hide_input=True)
    if not token.strip():
        fail("the token is empty")
    try:
        with Api(url, token.strip()) as api:
            me = api.get("/api/v1/me")
    except ClientError as exc:
        fail(exc.message, code=2 if exc.bad_input else 1)
    path = write_credentials(url, token.strip())
    typer.echo(f"logged in to {url} as {me['user']} (stored in {path})")


@app.command()
def logout() -> None:
    """Forget the stored server and token."""
    from runtime.client import credentials_path, forget_credentials

    typer.echo(f"removed {credentials_path()}" if forget_credentials() else "not logged in")


# -- processes ----------------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from runtime.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"configuration: {'.'.join(map(str, first['loc'])) or 'settings'}: {first['msg']}")


def refuse_bad_policies(config: Settings) -> None:
    """Stop before serving when a policy file is malformed, naming file and line (exit 2)."""
    from runtime.policy_cli import load_or_exit

    load_or_exit(config.policies)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (STEWARD_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (STEWARD_PORT)")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Demo mode: seed demo tokens, print them")] = False,
    worker: Annotated[bool, typer.Option("--worker/--no-worker",
                                         help="Also execute runs here (--no-worker: API only)")] = True,
) -> None:
    """Serve the API, the executor (unless --no-worker) and the sandbox (creates or upgrades a SQLite
    database first)."""
    import uvicorn

    from runtime.app import DEMO_TOKENS, create_app

    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if demo:
        overrides["demo"] = True
        if "STEWARD_DEMO_RUNS" not in os.environ:  # a few requests waiting in the inbox on the first visit
            overrides["demo_runs"] = ["workflows.demo:RUNS"]
    config = settings(**overrides)
    refuse_bad_policies(config)
    url = f"http://{config.host}:{config.port}"
    typer.echo(f"Steward on {url}  (API {url}/api/v1, docs {url}/docs, sandbox {url}/sandbox)")
    typer.echo(f"database: {config.database_url}")
    if config.demo:
        for user, token, scopes in DEMO_TOKENS:
            typer.echo(f"demo token for {user}: {token}  ({' '.join(scopes)})")
        typer.echo(f"try: export STEWARD_URL={url} STEWARD_TOKEN={DEMO_TOKENS[0][1]}; steward workflows list")
    from runtime.sdk import load_object

    for site in (load_object(spec) for spec in config.pages):
        typer.echo(f"{site.title}: {url}{site.prefix}")
        if config.demo:
            for name, password in site.demo_logins:
                typer.echo(f"  sign in as {name} / {password}")
    sys.stdout.flush()
    from runtime.logs import configure

    configure(config.log_format)
    uvicorn.run(create_app(config, start_executor=worker), host=config.host, port=config.port, log_level="info",
                log_config=None)


@app.command("worker")
def worker_command(
    concurrency: Annotated[int | None, typer.Option(min=1, help="Runs driven at once (STEWARD_EXECUTOR_CONCURRENCY)")]
    = None,
) -> None:
    """Execute runs, no HTTP: claim queued runs from the database (any number of workers may share a
    PostgreSQL database) until SIGTERM or Ctrl-C, then drain and give the runs in flight back."""
    import asyncio
    import signal

    from runtime.errors import StewardError
    from runtime.service import open_steward

    from runtime.logs import configure

    config = settings()
    refuse_bad_policies(config)
    if concurrency is not None:
        config = config.model_copy(update={"executor_concurrency": concurrency})
    configure(config.log_format)

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
    path: Annotated[str, typer.Option(help="Its state (records, prices, idempotency replies), kept across restarts")]
    = "steward-sandbox.db",
    rate_limit: Annotated[int | None, typer.Option(min=1, help="Answer 429 (Retry-After) past this many requests a "
                                                              "second, as HubSpot's secondly limit")] = None,
) -> None:
    """Serve only the sandbox: HubSpot's CRM API under /crm, the pricing API under /pricing (token
    sandbox-token)."""
    import importlib

    import uvicorn

    create_sandbox_app = importlib.import_module("sandbox").create_sandbox_app  # not a dependency of the engine
    uvicorn.run(create_sandbox_app(path=path, rate_limit=rate_limit), host=host, port=port, log_level="warning")


# -- local administration -------------------------------------------------------------------


def local_database(*, create: bool = False, migrated: bool = True) -> Database:
    """The database ``STEWARD_DATABASE_URL`` names, as it is: a SQLite file that does not exist is an
    error (unless ``create``), never silently made where the command happens to run."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from runtime.db import Database, DatabaseUrlInvalid, normalise_url

    config = settings()
    try:
        url = make_url(normalise_url(config.database_url))
    except (DatabaseUrlInvalid, ValueError) as exc:
        fail(f"STEWARD_DATABASE_URL: {exc}")
    if url.get_backend_name() == "sqlite" and not create:
        path = url.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            fail(f"no Steward database at {path or '(memory)'} (STEWARD_DATABASE_URL={config.database_url}); "
                 "point STEWARD_DATABASE_URL at one, or create it with `steward db upgrade --create`")
    db = Database(config.database_url)
    if migrated:
        from runtime.errors import StewardError
        from runtime.service import check_migrated

        try:
            check_migrated(db)
        except StewardError as exc:
            fail(exc.message)
        except Exception as exc:  # noqa: BLE001 - unreachable server, missing database: one line, exit 1
            fail(f"cannot open the database ({type(exc).__name__}: {str(exc).splitlines()[0]})", code=1)
    return db


def local(fn: Callable[[Any], T], *, read_only: bool = False) -> T:
    """``fn(session)`` as one transaction on the local database."""
    from runtime.errors import StewardError

    db = local_database()
    try:
        return db.transaction(fn, read_only=read_only)
    except StewardError as exc:
        fail(exc.message.splitlines()[0], code=2 if 400 <= exc.status_code < 500 else 1)
    finally:
        db.engine.dispose()


def admin() -> str:
    """Who runs a local administration command: the operating-system account, as ``local:<name>``."""
    import getpass

    return f"local:{getpass.getuser()}"


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain and compare the approvals with their events; exit 1 and name the first
    broken event and each approval that disagrees if anything was tampered with."""
    import functools

    from runtime import audit
    from runtime.sdk import load_object

    port = load_object(settings().approvals)
    result = local(functools.partial(audit.verify, projections=port.disagreements), read_only=True)
    if result.ok:
        typer.echo(f"audit chain intact: {result.events} events verified; approvals agree with their events")
        return
    if result.broken_seq is not None:
        typer.echo(f"audit chain BROKEN at event {result.broken_seq}: {result.reason}", err=True)
    for found in result.disagreements:
        typer.echo(f"DISAGREES: {found}", err=True)
    raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument()] = "head",
    create: Annotated[bool, typer.Option("--create", help="Create the SQLite file if it does not exist")] = False,
) -> None:
    """Apply the schema migrations (needed for PostgreSQL; serve does it for SQLite)."""
    from runtime.errors import StewardError

    db = local_database(create=create, migrated=False)
    try:
        db.upgrade(revision)
    except StewardError as exc:
        fail(exc.message)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        fail(f"cannot upgrade the database ({type(exc).__name__}: {str(exc).splitlines()[0]})", code=1)
    finally:
        db.engine.dispose()
    typer.echo(f"database upgraded to {revision}")


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Option(help="Whom the token belongs to (recorded as the actor)")],
    scope: Annotated[list[str], typer.Option(help=(
        "What the token may do, repeated: runs:read runs:write approvals:read approvals:decide audit:read "
        "quarantine:read quarantine:write policy:read workflows:read rollouts:write, or all"))] = [],  # noqa: B006 - typer's way
) -> None:
    """Create an API token carrying the scopes named; it is shown once."""
    from runtime import audit, scopes, store
    from runtime.errors import InputInvalid

    name = user.strip()
    if not name or len(name) > 200:
        fail("--user must name someone (1 to 200 characters)")
    try:
        granted = scopes.parse(scope)
    except InputInvalid as exc:
        fail(exc.message)

    def create(session: Any) -> str:
        token, plain = store.create_token(session=session, user=name, scopes=granted)
        session.flush()
        audit.append(session, kind="token.created", actor=admin(),
                     data={"user": name, "token_id": token.id, "scopes": sorted(granted)})
        return plain

    typer.echo(local(create))


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens")] = None,
    output: OutputOption = Output.text,
) -> None:
    """Tokens (never their secrets): id, user, created, revoked."""
    from runtime import store

    rows = local(lambda s: [t.model_dump(mode="json", exclude={"token_hash"})
                            for t in store.list_tokens(session=s, user=user)], read_only=True)
    if output is Output.json:
        emit_json(rows)
        return
    for row in rows:
        state = f"revoked {row['revoked_at'][:19]}" if row["revoked_at"] else "active"
        demo = "  (demo)" if row["demo"] else ""
        typer.echo(f"{row['id']}  {row['user']:<24} created {row['created_at'][:19]}  {state}  "
                   f"{' '.join(row['scopes'])}{demo}")


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[str, typer.Argument(help="The token's id (see `steward tokens list`)")]) -> None:
    """Revoke a token: the server refuses it within a second."""
    from runtime import audit, store

    def revoke(session: Any) -> str:
        token = store.revoke_token(session=session, token_id=token_id)
        audit.append(session, kind="token.revoked", actor=admin(),
                     data={"user": token.user, "token_id": token.id})
        return token.user

    typer.echo(f"revoked token {token_id} of {local(revoke)}")


# Command groups of other layers, named like the routers (the engine imports none of them).
COMMANDS = ("approvals.cli:app", "approvals.users_cli:app")


def main() -> None:
    import importlib

    specs = json.loads(os.environ["STEWARD_CLI_COMMANDS"]) if os.environ.get("STEWARD_CLI_COMMANDS") else COMMANDS
    for spec in specs:
        module, _, attr = spec.partition(":")
        group = getattr(importlib.import_module(module), attr)
        app.add_typer(group, name=group.info.name)
    sys.exit(run_app())


def run_app(args: list[str] | None = None) -> int:
    """Run the command line; a usage error (unknown option, bad value) is one line on stderr, exit 2."""
    try:
        from typer._click import exceptions as click  # typer vendors click since 0.2x
    except ImportError:  # pragma: no cover - an older typer on click itself
        from click import exceptions as click  # type: ignore[no-redef]

    try:
        code = app(args=args, standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        return 0
    except click.UsageError as exc:
        hint = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except typer.Abort:  # typer's own (its vendored click has none)
        typer.echo("error: aborted", err=True)
        return 1
    except click.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
