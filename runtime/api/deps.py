"""Request dependencies shared by every router: the assembled Steward and the caller's identity."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runtime import audit, scopes, store
from runtime.errors import Forbidden, InputInvalid, Unauthorized
from runtime.scopes import Principal
from runtime.service import Steward

NO_NUL = r"^[^\x00]*$"  # declared on free-text query parameters: a NUL is refused (reject_unknown_query)

_bearer = HTTPBearer(auto_error=False, description="A token from `steward tokens create`")


async def get_steward(request: Request) -> Steward:  # async: FastAPI runs a sync dependency in a thread
    return request.app.state.steward


class TokenCache:
    """Whom a bearer token belongs to, remembered for ``seconds`` (at most a second by default): a client
    polling or following runs costs no query per request, and a revoked token stops working within
    ``seconds``. Only successful lookups are kept, by the token's hash (never the token)."""

    def __init__(self, *, seconds: float = 1.0, size: int = 10_000) -> None:
        self.seconds = seconds
        self.size = size
        self._users: dict[str, tuple[Principal, float]] = {}

    def get(self, digest: str) -> Principal | None:
        hit = self._users.get(digest)
        if hit is None:
            return None
        if hit[1] <= time.monotonic():
            del self._users[digest]
            return None
        return hit[0]

    def put(self, digest: str, principal: Principal, *, read_at: float) -> None:
        """Remember ``principal`` until ``seconds`` after ``read_at`` (when the lookup began: a lookup that
        waited its turn does not stretch a revoked token's life)."""
        now = time.monotonic()
        if len(self._users) >= self.size:  # drop what has expired, else everything: a bound, never a leak
            self._users = {k: v for k, v in self._users.items() if v[1] > now}
            if len(self._users) >= self.size:
                self._users.clear()
        self._users[digest] = (principal, read_at + self.seconds)


async def principal_of(request: Request, plain: str) -> Principal:
    """Whom ``plain`` belongs to and what it may do (cached up to a second), or :class:`Unauthorized`;
    demo mode's tokens work only while the server runs in demo mode."""
    cache: TokenCache = request.app.state.tokens
    digest = store.hash_token(plain)
    principal = cache.get(digest)
    steward = request.app.state.steward
    if principal is None:
        read_at = time.monotonic()
        principal = await steward.db.run(lambda s: _authenticate(steward, s, plain), read_only=True)
        cache.put(digest, principal, read_at=read_at)
    if principal.demo and not steward.settings.demo:
        raise Unauthorized("this is a demo token, and this server does not run in demo mode (STEWARD_DEMO); "
                           "create a token with `steward tokens create`")
    return principal


def _authenticate(steward: Steward, session: Any, plain: str) -> Principal:
    principal = store.authenticate(session=session, plain=plain)
    if steward.executor.approvals.disabled(session, user=principal.user):
        raise Unauthorized(f"{principal.user} is disabled; their tokens no longer work")
    return principal


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    return await principal_of(request, credentials.credentials)


async def current_user(principal: Annotated[Principal, Depends(current_principal)]) -> str:
    return principal.user


def require(scope: str) -> Any:
    """A dependency answering the caller's user when their token carries ``scope``; else 403, and the
    refusal is audited (``authz.denied``: who, which scope, which operation)."""
    if scope not in scopes.ALL:
        raise ValueError(f"unknown scope {scope!r}")  # a programming error: caught when the routes are made

    async def check(request: Request, principal: Annotated[Principal, Depends(current_principal)]) -> str:
        if scope in principal.scopes:
            return principal.user
        # The route's template (/api/v1/runs/{run_id}), never the caller's own path: a refusal may not
        # write what the caller chooses, at the length they choose, into the audit chain.
        route = _route_of(request)
        data = {"scope": scope, "method": request.method, "path": route, "token_id": principal.token_id}
        await request.app.state.steward.db.run(
            lambda s: audit.append(s, kind="authz.denied", actor=principal.user, data=data))
        raise Forbidden(f"this token of {principal.user} does not carry the scope {scope!r} that "
                        f"{request.method} {route} needs; ask for a token with it",
                        details={"scope": scope, "scopes": sorted(principal.scopes)})

    return Depends(check)


def _route_of(request: Request) -> str:
    """The request's path with its path parameters named instead of given (``/api/v1/runs/{run_id}``)."""
    names = {str(value): name for name, value in request.path_params.items()}
    segments = [f"{{{names[part]}}}" if part in names else part for part in request.url.path.split("/")]
    return "/".join(segments)[:300]


async def still_authorised(request: Request) -> None:
    """For a request that stays open (a long-poll, an event stream): raise :class:`Unauthorized` once
    its token no longer works (revoked: within a second), as a new request would."""
    scheme, _, plain = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not plain:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    await principal_of(request, plain)


async def reject_unknown_query(request: Request) -> None:  # async: no thread hop per request
    """A query parameter the operation does not take is an error, not silently ignored (a misspelt
    filter would otherwise list everything); so is a NUL character in the path or a query value
    (no database stores one in text)."""
    if "\x00" in request.scope.get("path", ""):
        raise InputInvalid("the path holds a NUL character", details=[
            {"loc": ["path"], "msg": "NUL characters are not allowed", "type": "string_nul"}])
    nul = [name for name, value in request.query_params.multi_items() if "\x00" in value or "\x00" in name]
    if nul:
        raise InputInvalid(f"query parameter(s) {', '.join(map(repr, nul))} hold a NUL character", details=[
            {"loc": ["query", name], "msg": "NUL characters are not allowed", "type": "string_nul"} for name in nul])
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    known = _query_names(route)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise InputInvalid(f"unknown query parameter(s): {', '.join(map(repr, unknown))}; this operation takes "
                           f"{', '.join(sorted(known)) or 'none'}",
                           details=[{"loc": ["query", name], "msg": "not a parameter of this operation",
                                     "type": "extra_forbidden"} for name in unknown])


def _query_names(route: APIRoute) -> frozenset[str]:
    known = getattr(route, "steward_query_names", None)  # kept on the route (routes are unhashable)
    if known is not None:
        return known
    names: set[str] = set()
    pending = [route.dependant]
    while pending:  # the operation's own parameters and its dependencies'
        dependant = pending.pop()
        names.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    route.steward_query_names = known = frozenset(names)  # type: ignore[attr-defined]
    return known


StewardDep = Annotated[Steward, Depends(get_steward)]
UserDep = Annotated[str, Depends(current_user)]

# What each kind of operation needs (runtime.scopes): the caller's user when their token carries it.
RunsRead = Annotated[str, require("runs:read")]
RunsWrite = Annotated[str, require("runs:write")]
ApprovalsRead = Annotated[str, require("approvals:read")]
ApprovalsDecide = Annotated[str, require("approvals:decide")]
AuditRead = Annotated[str, require("audit:read")]
QuarantineRead = Annotated[str, require("quarantine:read")]
QuarantineWrite = Annotated[str, require("quarantine:write")]
PolicyRead = Annotated[str, require("policy:read")]
WorkflowsRead = Annotated[str, require("workflows:read")]
RolloutsWrite = Annotated[str, require("rollouts:write")]
