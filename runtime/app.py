"""The composition root: the one place that knows every layer.

It assembles Steward from settings: the workflows and the extra routers are
named as ``module:attr`` strings (defaults: ``workflows:WORKFLOWS`` and
``approvals.api:router``), so the engine imports neither.

>>> app = create_app(Settings(demo=True))
>>> uvicorn.run(app)
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text

from runtime import store
from runtime.api import audit_routes, runs
from runtime.connectors import Connector
from runtime.db import is_transient
from runtime.errors import DatabaseUnavailable, StewardError
from runtime.sandbox import create_sandbox_app
from runtime.sdk import Registry, load_object
from runtime.service import open_steward
from runtime.settings import SANDBOX_TOKEN, Settings

log = logging.getLogger("steward.app")
DEMO_TOKENS = {"demo.operator": "steward-demo-operator", "demo.approver": "steward-demo-approver"}


async def seed_demo_tokens(steward: Any) -> None:
    def seed(session: Any) -> None:
        for user, plain in DEMO_TOKENS.items():
            store.store_token(session=session, user=user, plain=plain)

    await steward.db.run(seed)


def error_response(exc: StewardError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    details = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]
    names = ", ".join(".".join(str(p) for p in d["loc"]) for d in details)
    body = {"code": "input_invalid", "message": f"the request is invalid: {names}", "details": details}
    return JSONResponse(body, status_code=422)


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

    @app.exception_handler(StewardError)
    async def _steward_error(_: Request, exc: StewardError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):
            return error_response(DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__}); "
                                                      "retry later"))
        log.error("unhandled error", exc_info=exc)
        return error_response(StewardError(f"internal error ({type(exc).__name__}); see the server log"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the database answers",
             responses={503: {"description": "the database is unreachable"}})
    async def readyz(request: Request) -> JSONResponse:
        try:
            await request.app.state.steward.db.run(lambda session: session.execute(text("SELECT 1")))
        except Exception as exc:
            body = DatabaseUnavailable(f"the database does not answer ({type(exc).__name__})").to_dict()
            return JSONResponse({"status": "unavailable", **body}, status_code=503)
        return JSONResponse({"status": "ok"})

    api = APIRouter(prefix="/api/v1")
    api.include_router(runs.router)
    api.include_router(audit_routes.router)
    for router in extra:
        api.include_router(router)
    app.include_router(api)
    if settings.mount_sandbox:
        app.mount("/sandbox", create_sandbox_app(token=SANDBOX_TOKEN))
    return app
