"""HubSpot's CRM API as HubSpot documents it, for the object types Steward's connector uses.

Objects (CRM v3): list (``limit``, ``after``, ``properties``, ``associations``, ``archived``), read,
create (with ``associations``), update, archive, search (filter groups with every documented
operator, ``sorts``, ``query``, ``properties``, ``limit``, ``after``) and batch read, create, update,
upsert and archive. Owners: list (``email``, paging) and read by id (or ``idProperty=userId``).
Associations v4: create the default association, list a record's associations. A duplicate unique
property (a contact's email) is ``409 CONFLICT``; every error answers HubSpot's body
``{status, message, correlationId, category}``.

Responses follow HubSpot's schemas: ``properties`` holds the requested properties (or the type's
default set) plus ``hs_object_id``, ``createdate`` and ``lastmodifieddate``; ``associations``
appears only when asked for, as ``{type: {"results": [{"id", "type"}]}}``; lists page with
``paging.next.after``.
"""

from __future__ import annotations

import base64
import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from sandbox.store import DEFAULT_ASSOCIATIONS, OBJECT_TYPES, OWNERS, SandboxStore, now

DEFAULT_PROPERTIES = {
    "contacts": ["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"],
    "companies": ["createdate", "domain", "hs_object_id", "name"],
    "deals": ["amount", "closedate", "createdate", "dealname", "dealstage", "hs_lastmodifieddate", "hs_object_id",
              "pipeline"],
    "notes": ["hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
}
ALWAYS = ("hs_object_id", "createdate", "lastmodifieddate")
UNIQUE = {"contacts": "email", "companies": "domain"}
SINGULAR = {"contacts": "contact", "companies": "company", "deals": "deal", "notes": "note"}
OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY", "NOT_HAS_PROPERTY",
             "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}
MAX_LIST, MAX_SEARCH, MAX_BATCH, MAX_GROUPS, MAX_FILTERS = 100, 200, 100, 5, 6


class HubSpotError(Exception):
    """An error as HubSpot answers it: ``{status: "error", message, correlationId, category}``."""

    def __init__(self, status: int, message: str, category: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.category, self.extra = status, message, category, extra

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"status": "error", "message": self.message, "correlationId": str(uuid.uuid4()),
                "category": self.category, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=headers)


def invalid(message: str) -> HubSpotError:
    return HubSpotError(400, message, "VALIDATION_ERROR")


def not_found(message: str = "resource not found") -> HubSpotError:
    return HubSpotError(404, message, "OBJECT_NOT_FOUND")


def _type(object_type: str) -> str:
    if object_type not in OBJECT_TYPES:
        raise not_found(f"Unable to infer object type from: {object_type}")
    return object_type


def _after(raw: str | None) -> int:
    """HubSpot's ``after`` cursor: opaque to clients; here base64 of the offset (a plain number works too)."""
    if raw in (None, ""):
        return 0
    try:
        text = raw if raw.isdigit() else base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        value = int(text)
    except (ValueError, UnicodeDecodeError):
        raise invalid(f"Invalid input JSON on line 1 : after = {raw!r} is not a valid paging cursor") from None
    if value < 0:
        raise invalid(f"after = {raw!r} is not a valid paging cursor")
    return value


def _paging(offset: int, total: int, *, path: str | None = None) -> dict[str, Any] | None:
    if offset >= total:
        return None
    after = base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")
    page: dict[str, Any] = {"after": after}
    if path is not None:
        page["link"] = f"{path}?after={after}"
    return {"next": page}


def _listed(values: list[str] | None) -> list[str] | None:
    """Query values given repeated or comma-separated (HubSpot takes both)."""
    if not values:
        return None
    return [v for value in values for v in value.split(",") if v]


def shape(store: SandboxStore, object_type: str, record: dict[str, Any], *, properties: list[str] | None = None,
          associations: list[str] | None = None) -> dict[str, Any]:
    """A record as HubSpot returns it: the requested (or default) properties, associations when asked."""
    wanted = list(dict.fromkeys([*(properties or DEFAULT_PROPERTIES[object_type]), *ALWAYS]))
    out = {"id": record["id"], "properties": {name: record["properties"].get(name) for name in wanted},
           "createdAt": record["createdAt"], "updatedAt": record["updatedAt"], "archived": record["archived"]}
    if "archivedAt" in record:
        out["archivedAt"] = record["archivedAt"]
    if associations:
        found: dict[str, Any] = {}
        for other in associations:
            if other not in OBJECT_TYPES:
                continue
            pairs = store.associations(object_type, int(record["id"]), other)
            if pairs:
                label = f"{SINGULAR[object_type]}_to_{SINGULAR[other]}"
                found[other] = {"results": [{"id": str(i), "type": label} for i, _ in pairs]}
        if found:
            out["associations"] = found
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _compare(left: str, right: Any) -> int:
    """-1/0/1: numbers (and HubSpot's millisecond timestamps) as numbers, anything else as text."""
    try:
        a, b = Decimal(left), Decimal(str(right))
    except InvalidOperation:
        a, b = left.lower(), str(right).lower()  # type: ignore[assignment]
    return (a > b) - (a < b)


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[^\w@.*-]+", text.lower()) if t}


def _contains_token(value: str, token: str) -> bool:
    pattern = re.compile("^" + re.escape(token.lower()).replace(r"\*", ".*") + "$")
    return any(pattern.match(t) for t in _tokens(value)) or bool(pattern.match(value.lower()))


def matches(props: dict[str, Any], flt: dict[str, Any]) -> bool:
    operator = flt.get("operator", "EQ")
    name = flt.get("propertyName")
    if operator not in OPERATORS:
        raise invalid(f"There was a problem with the request: operator {operator!r} is not one of {sorted(OPERATORS)}")
    if not isinstance(name, str) or not name:
        raise invalid("There was a problem with the request: every filter needs a propertyName")
    value = props.get(name)
    if operator == "HAS_PROPERTY":
        return value not in (None, "")
    if operator == "NOT_HAS_PROPERTY":
        return value in (None, "")
    if operator in ("IN", "NOT_IN"):
        values = flt.get("values")
        if not isinstance(values, list):
            raise invalid(f"{operator} needs `values`, a list")
        inside = value is not None and any(_compare(value, v) == 0 for v in values)
        return inside if operator == "IN" else not inside
    if "value" not in flt:
        raise invalid(f"{operator} needs a `value`")
    target = flt["value"]
    if operator == "NEQ":
        return value is None or _compare(value, target) != 0
    if operator == "NOT_CONTAINS_TOKEN":
        return value is None or not _contains_token(value, str(target))
    if value is None:
        return False
    if operator == "EQ":
        return _compare(value, target) == 0
    if operator == "CONTAINS_TOKEN":
        return _contains_token(value, str(target))
    if operator == "BETWEEN":
        if "highValue" not in flt:
            raise invalid("BETWEEN needs `value` and `highValue`")
        return _compare(value, target) >= 0 and _compare(value, flt["highValue"]) <= 0
    order = _compare(value, target)
    return {"LT": order < 0, "LTE": order <= 0, "GT": order > 0, "GTE": order >= 0}[operator]


def router(store: SandboxStore, idempotent: Any) -> APIRouter:
    """The CRM routes (mounted under ``/crm``); ``idempotent`` replays a write's first reply."""
    crm = APIRouter()

    def live(object_type: str, object_id: str, *, id_property: str | None = None) -> dict[str, Any]:
        record = (store.find_by(object_type, id_property, object_id) if id_property and id_property != "hs_object_id"
                  else store.get(object_type, object_id))
        if record is None:
            raise not_found()
        return record

    def conflict_if_taken(object_type: str, properties: dict[str, Any], *, own_id: str | None = None) -> None:
        unique = UNIQUE.get(object_type)
        value = properties.get(unique) if unique else None
        if value in (None, ""):
            return
        existing = store.find_by(object_type, unique, str(value))  # type: ignore[arg-type]
        if existing is not None and existing["id"] != own_id:
            raise HubSpotError(409, f"{SINGULAR[object_type].capitalize()} already exists. Existing ID: "
                                    f"{existing['id']}", "CONFLICT")

    def properties_of(body: dict[str, Any]) -> dict[str, Any]:
        props = body.get("properties")
        if not isinstance(props, dict):
            raise invalid("Invalid input JSON: `properties` must be an object")
        return props

    def associate_inputs(object_type: str, object_id: int, associations: Any) -> None:
        for item in associations or []:
            try:
                to_id = int(item["to"]["id"])
                types = item["types"]
            except (KeyError, TypeError, ValueError):
                raise invalid("Invalid association: use {to: {id}, types: [{associationCategory, "
                              "associationTypeId}]}") from None
            to_type = next((t for t in OBJECT_TYPES if store.get(t, to_id) is not None), None)
            if to_type is None:
                raise invalid(f"Association target {to_id} does not exist")
            for kind in types:
                store.associate(object_type, object_id, to_type, to_id, int(kind["associationTypeId"]))

    def create_one(object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        props = properties_of(body)
        conflict_if_taken(object_type, props)
        record = store.create(object_type, props)
        associate_inputs(object_type, int(record["id"]), body.get("associations"))
        return shape(store, object_type, record, properties=list(props) or None)

    def batch_inputs(body: dict[str, Any]) -> list[dict[str, Any]]:
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            raise invalid("Invalid input JSON: `inputs` must be a list of objects")
        if len(inputs) > MAX_BATCH:
            raise invalid(f"Batch size {len(inputs)} is over the limit of {MAX_BATCH}")
        return inputs

    def batch(results: list[dict[str, Any]], started: str, errors: list[dict[str, Any]] | None = None) -> Any:
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started,
                                "completedAt": now()}
        if errors:
            body["numErrors"], body["errors"] = len(errors), errors
        return body

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise invalid("Invalid input JSON on line 1 : the body is not JSON") from None
        if not isinstance(body, dict):
            raise invalid("Invalid input JSON: expected an object")
        return body

    # -- objects v3 ------------------------------------------------------------------------

    @crm.get("/crm/v3/objects/{object_type}")
    async def list_objects(object_type: str, limit: int = Query(10, ge=1, le=MAX_LIST), after: str | None = None,
                           properties: list[str] | None = Query(None), associations: list[str] | None = Query(None),
                           archived: bool = False) -> dict[str, Any]:
        records = store.all(_type(object_type), archived=archived)
        offset = _after(after)
        page = records[offset:offset + limit]
        body: dict[str, Any] = {"results": [shape(store, object_type, r, properties=_listed(properties),
                                                  associations=_listed(associations)) for r in page]}
        paging = _paging(offset + limit, len(records), path=f"/crm/v3/objects/{object_type}")
        if paging:
            body["paging"] = paging
        return body

    @crm.get("/crm/v3/objects/{object_type}/{object_id}")
    async def read(object_type: str, object_id: str, properties: list[str] | None = Query(None),
                   associations: list[str] | None = Query(None), archived: bool = False,
                   idProperty: str | None = None) -> dict[str, Any]:  # noqa: N803 - HubSpot's name
        _type(object_type)
        record = store.get(object_type, object_id, archived=True) if archived else None
        record = record or live(object_type, object_id, id_property=idProperty)
        return shape(store, object_type, record, properties=_listed(properties), associations=_listed(associations))

    @crm.post("/crm/v3/objects/{object_type}")
    async def create(object_type: str, request: Request) -> Response:
        _type(object_type)
        body = await json_body(request)
        return await idempotent(request, 201, lambda: create_one(object_type, body))

    @crm.patch("/crm/v3/objects/{object_type}/{object_id}")
    async def update(object_type: str, object_id: str, request: Request, idProperty: str | None = None) -> Response:  # noqa: N803
        _type(object_type)
        body = await json_body(request)
        props = properties_of(body)

        def produce() -> dict[str, Any]:
            record = live(object_type, object_id, id_property=idProperty)
            conflict_if_taken(object_type, props, own_id=record["id"])
            updated = store.update(object_type, int(record["id"]), props)
            return shape(store, object_type, updated, properties=list(props) or None)

        return await idempotent(request, 200, produce)

    @crm.delete("/crm/v3/objects/{object_type}/{object_id}")
    async def archive(object_type: str, object_id: str, request: Request) -> Response:
        _type(object_type)

        def produce() -> None:
            record = store.get(object_type, object_id)
            if record is not None:  # archiving what is gone is a no-op, as HubSpot answers 204 to it
                store.archive(object_type, int(record["id"]))

        return await idempotent(request, 204, produce)

    @crm.post("/crm/v3/objects/{object_type}/search")
    async def search(object_type: str, request: Request) -> dict[str, Any]:
        _type(object_type)
        body = await json_body(request)
        groups = body.get("filterGroups") or []
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS or any(
                not isinstance(g, dict) or len(g.get("filters") or []) > MAX_FILTERS for g in groups):
            raise invalid(f"At most {MAX_GROUPS} filterGroups of {MAX_FILTERS} filters each")
        limit = body.get("limit", 10)
        if not isinstance(limit, int) or not 0 < limit <= MAX_SEARCH:
            raise invalid(f"limit must be between 1 and {MAX_SEARCH}")
        query = body.get("query")

        def hit(record: dict[str, Any]) -> bool:
            props = record["properties"]
            if query and not any(query.lower() in str(v).lower() for v in props.values() if v is not None):
                return False
            return not groups or any(all(matches(props, f) for f in g.get("filters") or []) for g in groups)

        found = [r for r in store.all(object_type) if hit(r)]
        for sort in reversed(body.get("sorts") or []):
            name, descending = (sort.lstrip("-"), sort.startswith("-")) if isinstance(sort, str) else (
                sort.get("propertyName"), sort.get("direction", "ASCENDING") == "DESCENDING")
            found.sort(key=lambda r, n=name: _sort_key(r["properties"].get(n)), reverse=descending)
        offset = _after(_text(body.get("after")))
        page = found[offset:offset + limit]
        result: dict[str, Any] = {"total": len(found), "results": [
            shape(store, object_type, r, properties=body.get("properties") or None) for r in page]}
        paging = _paging(offset + limit, len(found))
        if paging:
            result["paging"] = {"next": {"after": str(offset + limit)}}  # search pages by offset
        return result

    # -- batch -----------------------------------------------------------------------------

    @crm.post("/crm/v3/objects/{object_type}/batch/read")
    async def batch_read(object_type: str, request: Request, archived: bool = False) -> Response:
        _type(object_type)
        body, started = await json_body(request), now()
        id_property = body.get("idProperty")
        results, missing = [], []
        for item in batch_inputs(body):
            record = (store.find_by(object_type, id_property, str(item.get("id"))) if id_property
                      else store.get(object_type, item.get("id"), archived=archived))
            if record is None:
                missing.append(str(item.get("id")))
            else:
                results.append(shape(store, object_type, record, properties=body.get("properties") or None))
        errors = [{"status": "error", "category": "OBJECT_NOT_FOUND", "context": {"ids": missing},
                   "message": f"Could not get some {SINGULAR[object_type].upper()} objects, they may be deleted or "
                              "not exist. Check that ids are valid."}] if missing else None
        return JSONResponse(batch(results, started, errors), status_code=207 if missing else 200)

    @crm.post("/crm/v3/objects/{object_type}/batch/create")
    async def batch_create(object_type: str, request: Request) -> Response:
        _type(object_type)
        body, started = await json_body(request), now()
        inputs = batch_inputs(body)
        seen: set[str] = set()
        for item in inputs:  # all or nothing: a duplicate anywhere refuses the batch
            conflict_if_taken(object_type, properties_of(item))
            value = item["properties"].get(UNIQUE.get(object_type, ""))
            if value:
                if str(value).lower() in seen:
                    raise HubSpotError(409, f"Duplicate {UNIQUE[object_type]} {value!r} in the batch", "CONFLICT")
                seen.add(str(value).lower())
        return await idempotent(request, 201, lambda: batch([create_one(object_type, i) for i in inputs], started))

    @crm.post("/crm/v3/objects/{object_type}/batch/update")
    async def batch_update(object_type: str, request: Request) -> Response:
        _type(object_type)
        body, started = await json_body(request), now()
        inputs = batch_inputs(body)
        targets = [(live(object_type, str(i.get("id")), id_property=i.get("idProperty")), properties_of(i))
                   for i in inputs]

        def produce() -> Any:
            return batch([shape(store, object_type, store.update(object_type, int(r["id"]), p), properties=list(p))
                          for r, p in targets], started)

        return await idempotent(request, 200, produce)

    @crm.post("/crm/v3/objects/{object_type}/batch/upsert")
    async def batch_upsert(object_type: str, request: Request) -> Response:
        _type(object_type)
        body, started = await json_body(request), now()
        inputs = batch_inputs(body)
        for item in inputs:
            if not item.get("idProperty") or item.get("id") in (None, ""):
                raise invalid("Each upsert input needs `id` and `idProperty` (a unique property)")
            properties_of(item)

        def produce() -> Any:
            results = []
            for item in inputs:
                found = store.find_by(object_type, item["idProperty"], str(item["id"]))
                if found is None:
                    record = store.create(object_type, {item["idProperty"]: item["id"], **item["properties"]})
                else:
                    record = store.update(object_type, int(found["id"]), item["properties"])
                results.append({**shape(store, object_type, record, properties=list(item["properties"]) or None),
                                "new": found is None})
            return batch(results, started)

        return await idempotent(request, 200, produce)

    @crm.post("/crm/v3/objects/{object_type}/batch/archive")
    async def batch_archive(object_type: str, request: Request) -> Response:
        _type(object_type)
        inputs = batch_inputs(await json_body(request))

        def produce() -> None:
            for item in inputs:
                record = store.get(object_type, item.get("id"))
                if record is not None:
                    store.archive(object_type, int(record["id"]))

        return await idempotent(request, 204, produce)

    # -- owners ----------------------------------------------------------------------------

    def owner(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "createdAt": "2026-01-05T09:00:00.000Z", "updatedAt": "2026-01-05T09:00:00.000Z",
                "archived": False}

    @crm.get("/crm/v3/owners")
    @crm.get("/crm/v3/owners/")
    async def owners(email: str | None = None, after: str | None = None, limit: int = Query(100, ge=1, le=500),
                     archived: bool = False) -> dict[str, Any]:
        found = [] if archived else [o for o in OWNERS if email is None or o["email"].lower() == email.lower()]
        offset = _after(after)
        body: dict[str, Any] = {"results": [owner(o) for o in found[offset:offset + limit]]}
        paging = _paging(offset + limit, len(found), path="/crm/v3/owners/")
        if paging:
            body["paging"] = paging
        return body

    @crm.get("/crm/v3/owners/{owner_id}")
    async def owner_by_id(owner_id: str, idProperty: str = "id", archived: bool = False) -> dict[str, Any]:  # noqa: N803
        if idProperty not in ("id", "userId"):
            raise invalid("idProperty must be id or userId")
        found = next((o for o in OWNERS if str(o[idProperty]) == owner_id), None)
        if found is None or archived:
            raise not_found()
        return owner(found)

    # -- transactional e-mail (marketing v3 single send) ------------------------------------

    @crm.post("/marketing/v3/transactional/single-email/send")
    async def single_send(request: Request) -> Response:
        body = await json_body(request)
        email_id, message = body.get("emailId"), body.get("message")
        if not isinstance(email_id, int) or isinstance(email_id, bool):
            raise invalid("Invalid input JSON: `emailId` must be the integer id of a published transactional email")
        if not isinstance(message, dict) or not isinstance(message.get("to"), str) or "@" not in message["to"]:
            raise invalid("Invalid input JSON: `message.to` must be the recipient's email address")
        for name in ("cc", "bcc", "replyTo"):
            if name in message and not (isinstance(message[name], list)
                                        and all(isinstance(a, str) and "@" in a for a in message[name])):
                raise invalid(f"Invalid input JSON: `message.{name}` must be a list of email addresses")

        def produce() -> dict[str, Any]:
            status_id = uuid.uuid4().hex
            requested = store.send_email(status_id, email_id, message)
            return {"statusId": status_id, "status": "PENDING", "requestedAt": requested}

        return await idempotent(request, 200, produce)

    # -- associations v4 -------------------------------------------------------------------

    @crm.put("/crm/v4/objects/{from_type}/{from_id}/associations/default/{to_type}/{to_id}")
    async def associate_default(from_type: str, from_id: str, to_type: str, to_id: str, request: Request) -> Response:
        _type(from_type), _type(to_type)
        if (from_type, to_type) not in DEFAULT_ASSOCIATIONS:
            raise invalid(f"There is no default association from {from_type} to {to_type}")
        source, target = live(from_type, from_id), live(to_type, to_id)
        started = now()

        def produce() -> Any:
            forward = store.associate(from_type, int(source["id"]), to_type, int(target["id"]))
            backward = DEFAULT_ASSOCIATIONS[(to_type, from_type)]
            return batch([
                {"from": {"id": source["id"]}, "to": {"id": target["id"]},
                 "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": forward}},
                {"from": {"id": target["id"]}, "to": {"id": source["id"]},
                 "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": backward}},
            ], started)

        return await idempotent(request, 200, produce)

    @crm.get("/crm/v4/objects/{from_type}/{from_id}/associations/{to_type}")
    async def list_associations(from_type: str, from_id: str, to_type: str, after: str | None = None,
                                limit: int = Query(500, ge=1, le=500)) -> dict[str, Any]:
        _type(from_type), _type(to_type)
        source = live(from_type, from_id)
        by_target: dict[int, list[int]] = {}
        for to_id, type_id in store.associations(from_type, int(source["id"]), to_type):
            by_target.setdefault(to_id, []).append(type_id)
        rows = sorted(by_target.items())
        offset = _after(after)
        body: dict[str, Any] = {"results": [
            {"toObjectId": to_id, "associationTypes": [
                {"category": "HUBSPOT_DEFINED", "typeId": t, "label": None} for t in types]}
            for to_id, types in rows[offset:offset + limit]]}
        paging = _paging(offset + limit, len(rows))
        if paging:
            body["paging"] = paging
        return body

    return crm


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (2, "")
    try:
        return (0, Decimal(str(value)))
    except InvalidOperation:
        return (1, str(value).lower())
