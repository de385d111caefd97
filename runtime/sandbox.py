"""The sandbox CRM and pricing service, so a new user sees the whole flow with no accounts.

``steward serve`` mounts it under ``/sandbox`` (``/sandbox/crm/crm/v3/...`` speaks
HubSpot's CRM v3 shapes, ``/sandbox/pricing/...`` the pricing API); ``steward
sandbox`` runs it alone. Writes honour ``Idempotency-Key``: a repeated key replays
the first response, and ``GET /_writes`` shows how many writes each key caused,
so tests can prove nothing was written twice. State lives in memory and is seeded
with demo data (SKU-1001 … SKU-1010 at 100.00 EUR, three sales owners, two contacts).

>>> app = create_sandbox_app(token="sandbox-token")
"""

from __future__ import annotations

import itertools
from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Request,
    Response,
)
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from runtime.models import utcnow
from runtime.settings import SANDBOX_TOKEN

OBJECT_TYPES = ("contacts", "companies", "deals", "notes")
SEED_SKUS = [f"SKU-{n}" for n in range(1001, 1011)]


class SandboxState:
    """Everything the sandbox knows; one per app."""

    def __init__(self) -> None:
        self._ids = itertools.count(1001)
        self.objects: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in OBJECT_TYPES}
        self.prices: dict[tuple[str, str], dict[str, Any]] = {}
        self.replies: dict[str, tuple[int, Any]] = {}
        self.writes: Counter[str] = Counter()
        self.owners = [
            {"id": "501", "email": "maria.lopez@example.com", "firstName": "Maria", "lastName": "Lopez", "territory": "EU"},
            {"id": "502", "email": "kenji.sato@example.com", "firstName": "Kenji", "lastName": "Sato", "territory": "APAC"},
            {"id": "503", "email": "sam.taylor@example.com", "firstName": "Sam", "lastName": "Taylor", "territory": "NA"},
        ]
        self.seed()

    def seed(self) -> None:
        for sku in SEED_SKUS:
            self.prices[(sku, "EUR")] = {"sku": sku, "currency": "EUR", "amount": "100.00", "updated_at": _now()}
        self.create("contacts", {"email": "existing.lead@example.com", "firstname": "Existing", "lastname": "Lead"})
        self.create("companies", {"name": "Example GmbH", "domain": "example.com", "country": "DE"})

    def create(self, object_type: str, properties: dict[str, Any], associations: Any = None) -> dict[str, Any]:
        now = _now()
        record = {
            "id": str(next(self._ids)),
            "properties": {k: None if v is None else str(v) for k, v in properties.items()},
            "associations": associations or [],
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
        }
        self.objects[object_type][record["id"]] = record
        return record


def _now() -> str:
    return utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ObjectInput(BaseModel):
    properties: dict[str, Any]
    associations: list[dict[str, Any]] = []


class SearchFilter(BaseModel):
    propertyName: str
    operator: str = "EQ"
    value: Any = None


class SearchGroup(BaseModel):
    filters: list[SearchFilter]


class SearchInput(BaseModel):
    filterGroups: list[SearchGroup] = []
    limit: int = 10


class UpsertItem(BaseModel):
    idProperty: str
    id: str
    properties: dict[str, Any]


class UpsertInput(BaseModel):
    inputs: list[UpsertItem]


class PriceInput(BaseModel):
    currency: str
    amount: str


def create_sandbox_app(*, token: str = SANDBOX_TOKEN) -> FastAPI:
    """A fresh sandbox with its own seeded state."""
    state = SandboxState()

    def authorised(authorization: str | None = Header(default=None)) -> None:
        if authorization != f"Bearer {token}":
            raise HTTPException(401, "sandbox: missing or wrong bearer token")

    async def idempotent(request: Request, status: int, produce) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key and key in state.replies:
            code, body = state.replies[key]
            return JSONResponse(body, status_code=code, headers={"Idempotent-Replayed": "true"})
        body = produce()
        state.writes[key or "(no key)"] += 1
        if key:
            state.replies[key] = (status, body)
        return JSONResponse(body, status_code=status) if body is not None else Response(status_code=status)

    def get_object(object_type: str, object_id: str) -> dict[str, Any]:
        if object_type not in OBJECT_TYPES:
            raise HTTPException(404, f"unknown object type {object_type!r}")
        record = state.objects[object_type].get(object_id)
        if record is None or record["archived"]:
            raise HTTPException(404, f"{object_type} {object_id} not found")
        return record

    crm = APIRouter(prefix="/crm/crm/v3", dependencies=[Depends(authorised)])

    @crm.get("/owners")
    async def owners() -> dict[str, Any]:
        return {"results": state.owners}

    @crm.post("/objects/{object_type}/search")
    async def search(object_type: str, body: SearchInput) -> dict[str, Any]:
        if object_type not in OBJECT_TYPES:
            raise HTTPException(404, f"unknown object type {object_type!r}")

        def matches(record: dict[str, Any]) -> bool:
            if record["archived"]:
                return False
            if not body.filterGroups:
                return True
            props = record["properties"]
            return any(
                all(
                    (f.operator == "EQ" and str(props.get(f.propertyName, "")).lower() == str(f.value).lower())
                    or (f.operator == "HAS_PROPERTY" and props.get(f.propertyName) is not None)
                    for f in group.filters
                )
                for group in body.filterGroups
            )

        results = [r for r in state.objects[object_type].values() if matches(r)]
        return {"total": len(results), "results": results[: body.limit]}

    @crm.post("/objects/{object_type}/batch/upsert")
    async def upsert(object_type: str, body: UpsertInput, request: Request) -> Response:
        if object_type not in OBJECT_TYPES:
            raise HTTPException(404, f"unknown object type {object_type!r}")

        def produce() -> dict[str, Any]:
            results = []
            for item in body.inputs:
                found = next(
                    (r for r in state.objects[object_type].values()
                     if not r["archived"] and r["properties"].get(item.idProperty) == item.id),
                    None,
                )
                if found is None:
                    found = state.create(object_type, {item.idProperty: item.id, **item.properties})
                else:
                    found["properties"].update({k: str(v) for k, v in item.properties.items()})
                    found["updatedAt"] = _now()
                results.append(found)
            return {"status": "COMPLETE", "results": results}

        return await idempotent(request, 200, produce)

    @crm.post("/objects/{object_type}")
    async def create(object_type: str, body: ObjectInput, request: Request) -> Response:
        if object_type not in OBJECT_TYPES:
            raise HTTPException(404, f"unknown object type {object_type!r}")
        return await idempotent(request, 201, lambda: state.create(object_type, body.properties, body.associations))

    @crm.get("/objects/{object_type}/{object_id}")
    async def read(object_type: str, object_id: str) -> dict[str, Any]:
        return get_object(object_type, object_id)

    @crm.get("/objects/{object_type}")
    async def list_objects(object_type: str, limit: int = 100) -> dict[str, Any]:
        if object_type not in OBJECT_TYPES:
            raise HTTPException(404, f"unknown object type {object_type!r}")
        live = [r for r in state.objects[object_type].values() if not r["archived"]]
        return {"results": live[:limit]}

    @crm.patch("/objects/{object_type}/{object_id}")
    async def patch(object_type: str, object_id: str, body: ObjectInput, request: Request) -> Response:
        record = get_object(object_type, object_id)

        def produce() -> dict[str, Any]:
            record["properties"].update({k: str(v) for k, v in body.properties.items()})
            record["updatedAt"] = _now()
            return record

        return await idempotent(request, 200, produce)

    @crm.delete("/objects/{object_type}/{object_id}")
    async def archive(object_type: str, object_id: str, request: Request) -> Response:
        record = get_object(object_type, object_id)

        def produce() -> None:
            record["archived"] = True

        return await idempotent(request, 204, produce)

    pricing = APIRouter(prefix="/pricing", dependencies=[Depends(authorised)])

    @pricing.get("/skus")
    async def skus() -> dict[str, Any]:
        return {"skus": sorted({sku for sku, _ in state.prices})}

    @pricing.get("/prices/{sku}")
    async def get_price(sku: str, currency: str = "EUR") -> dict[str, Any]:
        price = state.prices.get((sku, currency.upper()))
        if price is None:
            raise HTTPException(404, f"no {currency} price for {sku}")
        return price

    @pricing.put("/prices/{sku}")
    async def put_price(sku: str, body: PriceInput, request: Request) -> Response:
        currency = body.currency.upper()
        if (sku, currency) not in state.prices and not any(s == sku for s, _ in state.prices):
            raise HTTPException(404, f"unknown SKU {sku}")
        try:
            amount = Decimal(body.amount)
        except InvalidOperation:
            raise HTTPException(422, f"amount {body.amount!r} is not a decimal") from None
        if amount <= 0:
            raise HTTPException(422, "amount must be positive")

        def produce() -> dict[str, Any]:
            price = {"sku": sku, "currency": currency, "amount": f"{amount:.2f}", "updated_at": _now()}
            state.prices[(sku, currency)] = price
            return price

        return await idempotent(request, 200, produce)

    app = FastAPI(title="Steward sandbox CRM and pricing", docs_url="/docs", openapi_url="/openapi.json")
    app.state.sandbox = state
    app.include_router(crm)
    app.include_router(pricing)

    @app.get("/_writes")
    async def writes() -> dict[str, Any]:
        """How many writes each idempotency key caused (a replayed key adds none)."""
        return {"total": sum(state.writes.values()), "writes": dict(state.writes)}

    return app
