"""Who is signed in to the inbox, their forms' CSRF tokens, and the sign-in rate limit.

The session cookie (``steward_session``) is ``HttpOnly``, ``SameSite=Lax``, scoped to ``/inbox`` and
``Secure`` when the inbox is served over HTTPS. Every state-changing request is a POST whose form
carries the session's CSRF token (the sign-in form: a double-submit token of its own, since nobody
is signed in yet); a missing or wrong token is 403 and changes nothing.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.responses import Response

from approvals import sessions
from approvals.sessions import SignedIn
from runtime import audit
from runtime.errors import Forbidden, InputInvalid, TooManyRequests, Unauthorized

COOKIE = "steward_session"
SIGN_IN_COOKIE = "steward_sign_in"
PATH = "/inbox"
MAX_FORM = 64 * 1024


class NotSignedIn(Unauthorized):
    """No live session: a page sends the person to the sign-in form."""

    code = "not_signed_in"


class CsrfRejected(Forbidden):
    code = "csrf_rejected"


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, secret: str, *, max_age: float) -> None:
    response.set_cookie(COOKIE, secret, max_age=int(max_age), path=PATH, httponly=True, samesite="lax",
                        secure=secure(request))


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="lax", secure=secure(request))


def sign_in_token(request: Request) -> str:
    """The sign-in form's double-submit token: the browser's cookie, or a new one."""
    return request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)


def set_sign_in_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(SIGN_IN_COOKIE, token, path=PATH, httponly=True, samesite="strict", secure=secure(request))


async def signed_in(request: Request) -> SignedIn | None:
    """The person behind the request's session cookie, or None."""
    secret = request.cookies.get(COOKIE)
    if not secret or len(secret) > 200:
        return None
    steward = request.app.state.steward
    config = steward.settings
    return await steward.db.run(lambda s: sessions.current_session(
        session=s, secret=secret, idle=timedelta(minutes=config.session_idle_minutes),
        absolute=timedelta(hours=config.session_absolute_hours), demo=config.demo))


async def person(request: Request) -> SignedIn:
    """The signed-in person, or :class:`NotSignedIn` (a page then shows the sign-in form)."""
    me = await signed_in(request)
    if me is None:
        raise NotSignedIn("sign in to use the inbox")
    return me


async def read_form(request: Request) -> dict[str, str]:
    """A URL-encoded form's fields (the first value of each): at most 64 KiB, no NUL characters."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise InputInvalid(f"the form is larger than {MAX_FORM // 1024} KiB",
                               details=[{"loc": ["body"], "msg": "too large", "type": "too_large"}])
    if not body:
        return {}  # an empty form: what it lacks (its CSRF token first) is refused by the caller
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InputInvalid("send the form as application/x-www-form-urlencoded",
                           details=[{"loc": ["body"], "msg": "not a form", "type": "content_type"}])
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise InputInvalid("the form could not be read",
                           details=[{"loc": ["body"], "msg": "undecodable form", "type": "body_undecodable"}]) from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise InputInvalid(f"form field {name[:40]!r} holds a NUL character", details=[
                {"loc": ["body", name[:40]], "msg": "NUL characters are not allowed", "type": "string_nul"}])
        fields.setdefault(name, value)
    return fields


async def check_csrf(request: Request, me: SignedIn, form: dict[str, str]) -> None:
    """:class:`CsrfRejected` (audited as ``authz.denied``) unless the form carries ``me``'s token."""
    if me.csrf_matches(form.get("csrf_token")):
        return
    route = request.scope.get("route")
    data = {"reason": "csrf", "method": request.method, "path": getattr(route, "path", PATH)}
    await request.app.state.steward.db.run(lambda s: audit.append(s, kind="authz.denied", actor=me.user, data=data))
    raise CsrfRejected("this form's security token is missing or out of date; reload the page and try again")


def check_sign_in_token(request: Request, form: dict[str, str]) -> None:
    cookie, sent = request.cookies.get(SIGN_IN_COOKIE), form.get("csrf_token")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfRejected("the sign-in form's security token is missing or out of date; reload the page")


class SignInLimiter:
    """At most ``attempts`` failed sign-ins per name and per client address within ``window`` seconds;
    beyond that, :class:`TooManyRequests` with the seconds until the oldest failure leaves the window.
    Kept in the process (each server counts its own), with an injectable clock."""

    def __init__(self, *, attempts: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def check(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            failures = self._recent(key, now)
            if len(failures) >= self.attempts:
                wait = failures[0] + self.window - now
                raise TooManyRequests(f"too many failed sign-ins; try again in {math.ceil(wait)} s",
                                      retry_after=wait)
        self._trim(now)

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            self._recent(key, now).append(now)

    def _trim(self, now: float) -> None:
        if len(self._failures) > 10_000:  # a bound, never a leak: forget keys with no recent failure
            for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
                del self._failures[key]


def limiter_of(request: Request) -> SignInLimiter:
    app: Any = request.app
    limiter = getattr(app.state, "sign_in_limiter", None)
    if limiter is None:
        config = app.state.steward.settings
        limiter = app.state.sign_in_limiter = SignInLimiter(attempts=config.sign_in_attempts,
                                                            window=config.sign_in_window_minutes * 60)
    return limiter
