"""Request dependencies shared by every router: the assembled Steward and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runtime import store
from runtime.errors import InputInvalid, Unauthorized
from runtime.service import Steward

_bearer = HTTPBearer(auto_error=False, description="A token from `steward tokens create`")


def get_steward(request: Request) -> Steward:
    return request.app.state.steward


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    if credentials is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    steward = get_steward(request)
    return await steward.db.run(lambda s: store.authenticate(session=s, plain=credentials.credentials),
                                read_only=True)


def reject_unknown_query(request: Request) -> None:
    """A query parameter the operation does not take is an error, not silently ignored (a misspelt
    filter would otherwise list everything)."""
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
