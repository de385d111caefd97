"""The sandbox app: HubSpot's CRM API under ``/crm`` (see :mod:`sandbox.hubspot`), a pricing API under
``/pricing``, and ``GET /_writes`` (how many writes each ``Idempotency-Key`` caused).

Every route needs the sandbox's bearer token. Writes honour ``Idempotency-Key``: a repeated key
replays the first reply (``Idempotent-Replayed: true``), also after a restart, since the state lives
in its own SQLite file (``path``; in memory when None). ``rate_limit`` answers 429 with
``Retry-After`` once more than that many requests arrive within one second, as HubSpot's secondly
limit does.

>>> app = create_sandbox_app(path="steward-sandbox.db", token="sandbox-token")
"""

from __future__ import annotations

import time
from collections import deque
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sandbox.hubspot import HubSpotError, invalid, not_found, router
from sandbox.store import SandboxStore

SANDBOX_TOKEN = "sandbox-token"
MAX_AMOUNT = Decimal("1e12")


def create_sandbox_app(*, path: str | Path | None = None, token: str = SANDBOX_TOKEN,
                       rate_limit: int | None = None) -> FastAPI:
    """A sandbox on the state in ``path`` (created and seeded when new; in memory when None)."""
    store = SandboxStore(path)
    recent: deque[float] = deque()

    async def idempotent(request: Request, status: int, produce: Any) -> Response:
        key = request.headers.get("Idempotency-Key")
        with store.transaction():  # the write, its reply and its count: all or nothing
            replay = store.reply(key) if key else None
            if replay is not None:
                code, body = replay
                return _answer(code, body, {"Idempotent-Replayed": "true"})
            body = produce()
            store.remember(key, status, body)
        return _answer(status, body)

    app = FastAPI(title="Steward sandbox: HubSpot CRM and pricing", docs_url="/docs", openapi_url="/openapi.json")
    app.state.sandbox = store

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if request.url.path in ("/docs", "/openapi.json"):
            return await call_next(request)
        if request.headers.get("authorization") != f"Bearer {token}":
            return HubSpotError(401, "Authentication credentials not found. This API supports OAuth 2.0 "
                                     "authentication; use the private app's access token as a bearer token",
                                "INVALID_AUTHENTICATION").response()
        if rate_limit is not None:
            now = time.monotonic()
            while recent and recent[0] <= now - 1:
                recent.popleft()
            if len(recent) >= rate_limit:
                return HubSpotError(429, "You have reached your secondly limit.", "RATE_LIMITS",
                                    errorType="RATE_LIMIT", policyName="SECONDLY").response({"Retry-After": "1"})
            recent.append(now)
        return await call_next(request)

    @app.exception_handler(HubSpotError)
    async def hubspot_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HubSpotError)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return invalid(f"Invalid input: {where}").response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return not_found(f"no such route: {exc.detail}").response()
        return HubSpotError(exc.status_code, str(exc.detail), "VALIDATION_ERROR").response()

    app.include_router(router(store, idempotent), prefix="/crm")
    app.include_router(_pricing(store, idempotent), prefix="/pricing")

    @app.get("/_writes")
    async def writes() -> dict[str, Any]:
        """How many writes each idempotency key caused (a replayed key adds none)."""
        counted = store.writes
        return {"total": sum(counted.values()), "writes": dict(counted)}

    return app


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def _pricing(store: SandboxStore, idempotent: Any) -> APIRouter:
    pricing = APIRouter()

    def refuse(status: int, message: str) -> HubSpotError:
        return HubSpotError(status, message, "VALIDATION_ERROR" if status == 422 else "OBJECT_NOT_FOUND")

    @pricing.get("/skus")
    async def skus() -> dict[str, Any]:
        return {"skus": store.skus()}

    @pricing.get("/prices/{sku}")
    async def get_price(sku: str, currency: str = "EUR") -> dict[str, Any]:
        price = store.price(sku, currency.upper())
        if price is None:
            raise refuse(404, f"no {currency.upper()} price for {sku}")
        return price

    @pricing.put("/prices/{sku}")
    async def put_price(sku: str, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise refuse(422, "the body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("currency"), str) or not isinstance(
                body.get("amount"), str):
            raise refuse(422, "body must be {\"currency\": \"EUR\", \"amount\": \"115.00\"} (amount a string)")
        currency = body["currency"].upper()
        if not (len(currency) == 3 and currency.isalpha()):
            raise refuse(422, f"currency {body['currency']!r} is not an ISO 4217 code")
        if not store.known_sku(sku):
            raise refuse(404, f"unknown SKU {sku}")
        try:
            amount = Decimal(body["amount"])
        except InvalidOperation:
            raise refuse(422, f"amount {body['amount']!r} is not a decimal") from None
        if not amount.is_finite() or amount <= 0 or amount >= MAX_AMOUNT:
            raise refuse(422, f"amount {body['amount']!r} must be a finite positive decimal below {MAX_AMOUNT:,.0f}")
        return await idempotent(request, 200, lambda: store.set_price(sku, currency, f"{amount:.2f}"))

    return pricing
