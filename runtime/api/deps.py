"""Request dependencies shared by every router: the assembled Steward and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runtime import store
from runtime.errors import Unauthorized
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


StewardDep = Annotated[Steward, Depends(get_steward)]
UserDep = Annotated[str, Depends(current_user)]
