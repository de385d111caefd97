"""The composition root: the one place that knows every layer.

It assembles Steward from settings: the workflows and the extra routers are
named as ``module:attr`` strings (defaults: ``workflows:WORKFLOWS`` and
``approvals.api:router``), so the engine imports neither.

>>> app = create_app(Settings(demo=True))
>>> uvicorn.run(app)
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from runtime import store
from runtime.api import audit_routes, problems, runs, workflows
from runtime.api.deps import TokenCache, UserDep, reject_unknown_query
from runtime.api.schemas import Me
from runtime.connectors import Connector
from runtime.errors import DatabaseUnavailable
from runtime.sandbox import create_sandbox_app
from runtime.sdk import Registry, load_object
from runtime.service import open_steward
from runtime.settings import SANDBOX_TOKEN, Settings

DEMO_TOKENS = {"demo.operator": "steward-demo-operator", "demo.approver": "steward-demo-approver"}


async def seed_demo_tokens(steward: Any) -> None:
    def seed(session: Any) -> None:
        for user, plain in DEMO_TOKENS.items():
            store.store_token(session=session, user=user, plain=plain)

    await steward.db.run(seed)


def create_app(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    connectors: Mapping[str, Connector] | None = None,
    routers: Sequence[APIRouter] | None = None,
    start_executor: bool = True,
) -> FastAPI:
    """Build the Steward HTTP app: API under ``/api/v1``, the sandbox under ``/sandbox``, ``/healthz``."""
    settings = settings or Settings()
    extra = list(routers) if routers is not None else [load_object(spec) for spec in settings.routers]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with open_steward(settings, registry=registry, connectors=connectors) as steward:
            app.state.steward = steward
            if settings.demo:
                await seed_demo_tokens(steward)
            if start_executor:
                await steward.executor.start()
            if not steward.db.is_sqlite:  # changes committed by workers in other processes
                steward.changes.start_listening(steward.db.libpq_url)
            # What start-up built (modules, the app, the workflows) lives as long as the server: keep it
            # out of the collector's full passes, each of which would otherwise stop every thread, the
            # event loop's too, for as long as walking it takes (~100 ms, see bench/healthz.py).
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()

    app = FastAPI(
        title="Steward",
        summary="A governed runtime for AI automations",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
    )

    problems.install(app)
    app.state.tokens = TokenCache(seconds=settings.token_cache_seconds)

    @app.get("/healthz", tags=["health"], operation_id="health-live", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], operation_id="health-ready", summary="Readiness: the database answers",
             responses={503: {"model": problems.Problem, "description": "the database is unreachable"}})
    async def readyz(request: Request) -> JSONResponse:
        try:
            await request.app.state.steward.db.run(lambda session: session.execute(text("SELECT 1")))
        except Exception as exc:
            return problems.from_error(DatabaseUnavailable(f"the database does not answer ({type(exc).__name__})"))
        return JSONResponse({"status": "ok"})

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(reject_unknown_query)])

    @api.get("/me", tags=["identity"], operation_id="me-get", response_model=Me, responses=problems.errors(401),
             summary="Whom the bearer token belongs to (the actor every action is recorded under)")
    async def me(user: UserDep) -> Me:
        return Me(user=user)

    api.include_router(runs.router)
    api.include_router(audit_routes.router)
    api.include_router(workflows.router)
    for router in extra:
        api.include_router(router)
    app.include_router(api)
    if settings.mount_sandbox:
        app.mount("/sandbox", create_sandbox_app(token=SANDBOX_TOKEN))
    return app
