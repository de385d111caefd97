"""The composition root: the one place that knows every layer.

It assembles Steward from settings: the workflows and the extra routers are
named as ``module:attr`` strings (defaults: ``workflows:WORKFLOWS`` and
``approvals.api:router``), so the engine imports neither.

>>> app = create_app(Settings(demo=True))
>>> uvicorn.run(app)
"""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from runtime import metrics, store
from runtime.api import audit_routes, policy, problems, quarantine, runs, workflows
from runtime.api.pages import WebPages
from runtime.api.deps import TokenCache, UserDep, reject_unknown_query
from runtime.api.schemas import Me, Readiness
from runtime.connectors import Connector
from runtime.sdk import Registry, load_object
from runtime.models import utcnow
from runtime.service import open_steward, schema_head, schema_revision
from runtime.settings import SANDBOX_TOKEN, Settings
from runtime.telemetry import setup_tracing

_READ = ("runs:read", "approvals:read", "workflows:read", "policy:read")
# Demo mode's well-known tokens, one per kind of user: (user, token, scopes). Marked as demo tokens, so a
# server outside demo mode refuses them, also in a database that was first created in demo mode.
DEMO_TOKENS = (
    ("demo.operator", "steward-demo-operator",
     (*_READ, "runs:write", "audit:read", "quarantine:read", "quarantine:write", "rollouts:write")),
    ("demo.approver", "steward-demo-approver", (*_READ, "approvals:decide")),
    ("demo.approver2", "steward-demo-approver-2", (*_READ, "approvals:decide")),
    ("demo.compliance", "steward-demo-compliance", (*_READ, "audit:read", "quarantine:read")),
)


async def seed_demo_tokens(steward: Any) -> None:
    def seed(session: Any) -> None:
        for user, plain, scopes in DEMO_TOKENS:
            store.store_token(session=session, user=user, plain=plain, scopes=scopes, demo=True)
        steward.executor.approvals.seed_demo(session)  # the people behind them, with their roles

    await steward.db.run(seed)


async def seed_demo_runs(steward: Any, specs: Sequence[str]) -> int:
    """Start the demo's runs (each once: its idempotency key is ``demo:<key>``); returns how many are new.
    A run of a workflow this server does not load is skipped."""
    started = 0
    for spec in specs:
        for entry in load_object(spec):
            if not steward.registry.versions(entry["workflow"]):
                continue
            _, created = await steward.executor.submit(workflow=entry["workflow"], input=entry["input"],
                                                       actor=DEMO_TOKENS[0][0], idempotency_key=f"demo:{entry['key']}")
            started += created
    steward.executor.wake()
    return started


async def readiness(steward: Any) -> dict[str, str]:
    """Each readiness check: ``ok`` (with what it saw) or why not."""
    def read(session: Any) -> tuple[str | None, Any]:
        return schema_revision(session), store.last_heartbeat(session=session)

    try:
        revision, beat = await steward.db.run(read, read_only=True)
    except Exception as exc:  # noqa: BLE001 - unreachable is an answer here, not an error
        reason = f"does not answer ({type(exc).__name__})"
        return {"database": reason, "schema": "unknown", "worker": "unknown"}
    head = schema_head()
    checks = {"database": "ok",
              "schema": f"ok ({revision})" if revision == head else f"at {revision or 'none'}, needs {head}"}
    window = steward.settings.lease_seconds
    if beat is None:
        checks["worker"] = "no worker has reported itself; start `steward worker` or `steward serve`"
    else:
        age = (utcnow() - beat).total_seconds()
        checks["worker"] = (f"ok (seen {age:.1f} s ago)" if age <= window else
                            f"none seen for {age:.0f} s (more than the {window:g} s lease)")
    return checks


def _counts(steward: Any, session: Any) -> dict[str, Any]:
    runs = store.active_run_counts(session=session)
    pending, oldest = steward.executor.approvals.pending_summary(session)
    return {"runs": runs, "queued": sum(n for (_, _, status), n in runs.items() if status == "queued"),
            "approvals_pending": pending, "approvals_oldest": oldest}


def create_app(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    connectors: Mapping[str, Connector] | None = None,
    models: Mapping[str, Any] | None = None,
    routers: Sequence[APIRouter] | None = None,
    pages: Sequence[WebPages] | None = None,
    start_executor: bool = True,
) -> FastAPI:
    """Build the Steward HTTP app: API under ``/api/v1``, the pages (the inbox under ``/inbox``), the
    sandbox under ``/sandbox``, ``/healthz``."""
    settings = settings or Settings()
    extra = list(routers) if routers is not None else [load_object(spec) for spec in settings.routers]
    sites: list[WebPages] = [load_object(spec) for spec in settings.pages] if pages is None else list(pages)
    for site in sites:
        if not isinstance(site, WebPages):
            raise TypeError(f"STEWARD_PAGES names {site!r}, which is not a runtime.api.pages.WebPages")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with open_steward(settings, registry=registry, connectors=connectors, models=models) as steward:
            app.state.steward = steward
            if settings.demo:
                await seed_demo_tokens(steward)
            if start_executor:
                await steward.executor.start()
            if settings.demo and settings.demo_runs:
                await seed_demo_runs(steward, settings.demo_runs)
            if not steward.db.is_sqlite:  # changes committed by workers in other processes
                steward.changes.start_listening(steward.db.libpq_url)
            source = metrics.Source(
                read=lambda fn: steward.db.transaction(fn, read_only=True), counts=functools.partial(
                    _counts, steward), slots=lambda: (steward.executor.in_flight, steward.executor.concurrency))
            metrics.COLLECTOR.sources.append(source)
            # What start-up built (modules, the app, the workflows) lives as long as the server: keep it
            # out of the collector's full passes, each of which would otherwise stop every thread, the
            # event loop's too, for as long as walking it takes (~100 ms, see bench/healthz.py).
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()
                metrics.COLLECTOR.sources.remove(source)

    app = FastAPI(
        title="Steward",
        summary="A governed runtime for AI automations",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
    )

    problems.install(app, sites)
    setup_tracing()
    # Every HTTP request is a server span (W3C traceparent honoured); probes and scrapes are not traced.
    # The ASGI messages of a request (receive, send) are not spans of their own: one span per request.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"])
    app.state.tokens = TokenCache(seconds=settings.token_cache_seconds)

    @app.get("/healthz", tags=["health"], operation_id="health-live", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], operation_id="health-ready", response_model=Readiness,
             summary="Readiness: the database answers, its schema is current, a worker reported itself recently",
             responses={503: {"model": problems.Problem, "description": (
                 "Not ready: `details.checks` names what failed (database, schema or worker)")}})
    async def readyz(request: Request) -> JSONResponse:
        steward = request.app.state.steward
        checks = await readiness(steward)
        if all(check.startswith("ok") for check in checks.values()):
            return JSONResponse({"status": "ok", "checks": checks})
        failed = ", ".join(f"{name}: {check}" for name, check in checks.items() if not check.startswith("ok"))
        return problems.problem(503, f"not ready: {failed}", code="not_ready", retryable=True,
                                details={"checks": checks}, headers={"Retry-After": "1"})

    @app.get("/metrics", tags=["health"], operation_id="metrics", response_class=Response,
             summary="Prometheus metrics (text exposition format)",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Every metric; see runtime/metrics.py for the list"}})
    async def metrics_endpoint() -> Response:
        body = await asyncio.to_thread(metrics.exposition)  # scrape-time collectors read the database
        return Response(body, media_type=metrics.CONTENT_TYPE)

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(reject_unknown_query)])

    @api.get("/me", tags=["identity"], operation_id="me-get", response_model=Me, responses=problems.errors(401),
             summary="Whom the bearer token belongs to (the actor every action is recorded under)")
    async def me(user: UserDep) -> Me:
        return Me(user=user)

    api.include_router(runs.router)
    api.include_router(audit_routes.router)
    api.include_router(workflows.router)
    api.include_router(policy.router)
    api.include_router(quarantine.router)
    for router in extra:
        api.include_router(router)
    app.include_router(api)
    for site in sites:
        app.include_router(site.router, include_in_schema=False)
    if settings.sandbox_mounted:  # demo mode only, unless STEWARD_MOUNT_SANDBOX says otherwise
        app.mount("/sandbox", load_object("sandbox:create_sandbox_app")(path=settings.sandbox_path,
                                                                         token=SANDBOX_TOKEN))
    return app
