"""One error shape for every answer that is not a success: RFC 9457 problem details.

Steward's own errors, FastAPI's validation errors, unknown routes, 405s, undecodable
bodies and unexpected exceptions all answer ``application/problem+json``:

    {"type": "urn:steward:problem:run_not_found", "title": "Run not found", "status": 404,
     "detail": "run 'r1' does not exist", "code": "run_not_found", "request_id": "9f2c…"}

plus ``errors`` (one entry per bad field: ``loc``, ``msg``, ``type``) on a 422,
``retryable: true`` when the same request may succeed later, and ``details`` where an
error carries more (an approval's decider, an upstream status). Every response, error
or not, carries ``X-Request-ID``: the client's own when it sent a well-formed one, else
a new one; the server logs an unexpected error under that id and tells the client the id,
nothing of the internals.

>>> app.add_middleware(RequestIds)
>>> install(app)
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.api.pages import WebPages
from runtime.db import is_transient
from runtime.errors import DatabaseUnavailable, StewardError, TooManyRequests
from runtime.logs import request_id

log = logging.getLogger("steward.api")

MEDIA_TYPE = "application/problem+json"
HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the bad value is, e.g. ['body', 'input', 'items', 0]")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, with Steward's extensions."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field(description="A URI naming the kind of problem: urn:steward:problem:<code>, or about:blank")
    title: str = Field(description="A short summary of the kind of problem; the same for every problem of a type")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong with this request, for a person")
    code: str = Field(description="A stable machine-readable code, e.g. run_not_found, input_invalid")
    request_id: str = Field(description="The request's id (also the X-Request-ID header); quote it in reports")
    errors: list[FieldError] | None = Field(None, description="One entry per invalid field (422)")
    retryable: bool | None = Field(None, description="True when the same request may succeed later")
    details: Any = Field(None, description="More about this error, when the error carries it")


_DESCRIPTIONS = {
    401: "Missing or unknown bearer token",
    403: "The caller may not do this (the refusal is audited)",
    404: "No such resource",
    409: "The request no longer fits the resource's state",
    422: "The request is invalid; `errors` names each bad field",
    429: "Too many attempts; retry after the `Retry-After` seconds",
    503: "The database is unavailable or busy; retry (`retryable: true`, `Retry-After`)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for an operation's error answers, each a :class:`Problem`. 503 is always
    listed (every operation reads or writes the database); 422 is added by FastAPI wherever a request
    has parameters or a body, and :func:`openapi` gives it the problem schema."""
    return {status: {"model": Problem, "description": _DESCRIPTIONS[status]} for status in (*statuses, 503)}


def openapi(app: FastAPI) -> dict[str, Any]:
    """``app``'s OpenAPI document with every error response declared as ``application/problem+json``
    (FastAPI declares its own 422 shape and ``application/json``)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description,
                         routes=app.routes, tags=app.openapi_tags)
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    response["content"] = {MEDIA_TYPE: {"schema": problem_ref}}
                    response["description"] = _DESCRIPTIONS.get(int(status), response.get("description", ""))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def _title(code: str) -> str:
    return code.replace("_", " ").capitalize()


def problem(status: int, detail: str, *, code: str, type_: str | None = None, title: str | None = None,
            errors: list[dict[str, Any]] | None = None, retryable: bool = False, details: Any = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem+json response for the current request."""
    body: dict[str, Any] = {
        "type": type_ or f"urn:steward:problem:{code}",
        "title": title or _title(code),
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id.get() or new_request_id(),
    }
    if errors is not None:
        body["errors"] = errors
    if retryable:
        body["retryable"] = True
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def from_error(exc: StewardError) -> JSONResponse:
    headers: dict[str, str] = {}
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retryable and exc.status_code == 503:
        headers["Retry-After"] = "1"
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    details = exc.details
    errors = details if exc.status_code == 422 and _field_errors(details) else None
    return problem(exc.status_code, exc.message, code=exc.code, errors=errors, retryable=exc.retryable,
                   details=None if errors is not None else details, headers=headers or None)


def _field_errors(details: Any) -> bool:
    return isinstance(details, list) and all(isinstance(d, dict) and {"loc", "msg", "type"} <= d.keys()
                                             for d in details)


def from_validation(exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": [p if isinstance(p, int) else str(p) for p in err["loc"]], "msg": err["msg"],
               "type": err["type"]} for err in exc.errors()]
    names = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
    return problem(422, f"the request is invalid: {names}", code="input_invalid", errors=errors)


def from_http(exc: HTTPException) -> JSONResponse:
    status = exc.status_code
    if status == 400:  # FastAPI could not decode the body at all: bad input like any other, 422
        errors = [{"loc": ["body"], "msg": str(exc.detail), "type": "body_undecodable"}]
        return problem(422, f"the request is invalid: body ({exc.detail})", code="input_invalid", errors=errors)
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    code = {404: "route_not_found", 405: "method_not_allowed"}.get(status, phrase.lower().replace(" ", "_"))
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else {
        404: "no such route: check the path against /openapi.json",
        405: "this route does not take that method (see the Allow header)",
    }.get(status, phrase)
    return problem(status, detail, code=code, type_="about:blank", title=phrase, headers=exc.headers)


def unexpected(exc: BaseException) -> JSONResponse:
    """An exception nobody handled: a database failure is 503 (retryable), anything else 500, logged
    with the request id; the client learns the id, not the internals."""
    if is_transient(exc):
        return from_error(DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__}); retry later"))
    log.error("unhandled error in request %s", request_id.get(), exc_info=exc)
    return problem(500, "an internal error occurred; the server log has it under this request id",
                   code="internal_error", title="Internal error")


def install(app: FastAPI, pages: Sequence[WebPages] = ()) -> None:
    """Answer every error of ``app`` as a problem (see the module docstring); under a prefix of
    ``pages``, the pages show that problem to a person instead."""

    async def steward_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StewardError)
        return shown(request.scope, from_error(exc), pages)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return shown(request.scope, from_validation(exc), pages)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(app, request.scope))}
        return shown(request.scope, from_http(exc), pages)

    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(StewardError, steward_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(RequestIds, pages=tuple(pages))


_PASSED_ON = ("allow", "retry-after", "www-authenticate")


def shown(scope: Scope, response: JSONResponse, pages: Sequence[WebPages]) -> Response:
    """``response`` as is, or rendered by the pages that own the request's path."""
    path = scope.get("path", "")
    for page in pages:
        if page.owns(path):
            headers = {k: v for k, v in response.headers.items() if k.lower() in _PASSED_ON}
            return page.render_problem(Request(scope), json.loads(response.body), response.status_code, headers)
    return response


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of ``app`` takes at the request's path."""
    return [method for method in _METHODS
            if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)]


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIds:
    """ASGI middleware: give every HTTP request an id (the client's ``X-Request-ID`` when well-formed),
    answer it in the response's header, and turn an exception that escapes the app into a problem
    (after the response started, nothing can be answered any more: the connection is closed)."""

    def __init__(self, app: ASGIApp, pages: Sequence[WebPages] = ()) -> None:
        self.app = app
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                sent = value.decode("latin-1")
                break
        rid = sent if sent is not None and _WELL_FORMED.fullmatch(sent) else new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        started = False
        header = (HEADER.lower().encode(), rid.encode())
        # Every answer, JSON or page: never sniffed into another type than the one declared.
        nosniff = (b"x-content-type-options", b"nosniff")

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header, nosniff]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise
            await shown(scope, unexpected(exc), self.pages)(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
