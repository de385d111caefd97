"""The inbox's pages under ``/inbox``: sign in and out, the list, one request, and its decisions.

Every page is rendered on the server with autoescaped Jinja2 templates and no script; every answer
carries a Content-Security-Policy that allows no script, no plugin, no framing and no base URL, and
``Cache-Control: no-store``. State changes only by POST, each with the session's CSRF token.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi import Path as PathParameter
from starlette.responses import HTMLResponse, RedirectResponse, Response

from approvals import service, sessions
from approvals.models import ApprovalRequest
from approvals.store import get_approval
from approvals.inbox import auth, views
from approvals.sessions import SignedIn
from runtime import audit
from runtime.errors import Conflict, EditDenied, InputInvalid

HERE = Path(__file__).resolve().parent
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
DONE = {"approve": "Your approval is recorded.", "reject": "Your rejection is recorded.",
        "edit": "Your approval of the edited values is recorded.",
        "comment": "Your comment is recorded."}

router = APIRouter(prefix="/inbox")
ApprovalId = Annotated[str, PathParameter(max_length=64, pattern=r"^[0-9A-Za-z_-]+$")]


@functools.cache
def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["when"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"
    env.filters["shown"] = lambda value: "—" if value is None else value
    return env


def page(template: str, *, status: int = 200, me: SignedIn | None = None, headers: Mapping[str, str] | None = None,
         **context: Any) -> HTMLResponse:
    body = templates().get_template(template).render(me=me, **context)
    return HTMLResponse(body, status_code=status, headers={**HEADERS, **(headers or {})})


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=HEADERS)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of the inbox, never another site."""
    if value and value.startswith("/inbox") and not value.startswith("//") and "\\" not in value and len(value) < 500:
        return value
    return "/inbox"


def render_problem(request: Request, problem: Mapping[str, Any], status: int, headers: Mapping[str, str]) -> Response:
    """An error under ``/inbox`` for a person: not signed in sends them to the sign-in form; anything
    else is a page saying what went wrong, with the request id to quote."""
    if status == 401:
        target = request.url.path if request.method == "GET" else "/inbox"
        return see_other(f"/inbox/login?{urlencode({'next': target})}")
    return page("error.html", status=status, problem=problem, headers=dict(headers))


@router.get("/static/inbox.css")
async def stylesheet() -> Response:
    return Response((HERE / "static" / "inbox.css").read_bytes(), media_type="text/css",
                    headers={"Cache-Control": "max-age=300"})


@router.get("/login")
async def login_form(request: Request, next: str = "/inbox") -> Response:
    if await auth.signed_in(request) is not None:
        return see_other(safe_next(next))
    token = auth.sign_in_token(request)
    response = page("login.html", csrf=token, next=safe_next(next), error="", name="")
    auth.set_sign_in_cookie(response, request, token)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await auth.read_form(request)
    auth.check_sign_in_token(request, form)
    steward = request.app.state.steward
    name, password = form.get("name", "").strip()[:200], form.get("password", "")[:1024]
    address = request.client.host if request.client else "unknown"
    keys = [f"name:{name.casefold()}", f"address:{address}"]
    limiter = auth.limiter_of(request)
    limiter.check(keys)
    try:
        user = await steward.db.run(lambda s: sessions.check_password(session=s, name=name, password=password,
                                                                      demo=steward.settings.demo), read_only=True)
    except sessions.SignInFailed as failed:
        limiter.failed(keys)
        await steward.db.run(lambda s: audit.append(s, kind="user.sign_in_failed", actor="anonymous",
                                                    data={"name": name, "address": address}))
        token = auth.sign_in_token(request)
        return page("login.html", status=401, csrf=token, next=safe_next(form.get("next")), error=failed.message,
                    name=name)
    previous = request.cookies.get(auth.COOKIE)

    def start(session: Any) -> str:
        if previous:  # a new session id at every sign-in: a planted cookie never becomes a session
            sessions.end_session(session=session, secret=previous[:200])
        secret, _ = sessions.start_session(session=session, user=user.name)
        audit.append(session, kind="user.signed_in", actor=user.name, data={"address": address})
        return secret

    secret = await steward.db.run(start)
    response = see_other(safe_next(form.get("next")))
    auth.set_session_cookie(response, request, secret, max_age=steward.settings.session_absolute_hours * 3600)
    response.delete_cookie(auth.SIGN_IN_COOKIE, path=auth.PATH)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    me = await auth.person(request)
    await auth.check_csrf(request, me, await auth.read_form(request))
    secret = request.cookies.get(auth.COOKIE, "")

    def end(session: Any) -> None:
        sessions.end_session(session=session, secret=secret)
        audit.append(session, kind="user.signed_out", actor=me.user, data={})

    await request.app.state.steward.db.run(end)
    response = see_other("/inbox/login")
    auth.clear_session_cookie(response, request)
    return response


@router.get("")
async def inbox(request: Request) -> Response:
    me = await auth.person(request)
    filters = views.Filters.parse(dict(request.query_params))
    cursor = request.query_params.get("cursor")
    listing = await views.list_page(request.app.state.steward, filters, cursor, limit=views.PAGE_SIZE)
    more = f"/inbox?{urlencode({**filters.params(), 'cursor': listing.next_cursor})}" if listing.next_cursor else ""
    return page("list.html", me=me, filters=filters, listing=listing, more=more, first=cursor is None,
                risks=views.RISKS, statuses=views.STATUSES)


@router.get("/{approval_id}")
async def show(request: Request, approval_id: ApprovalId, done: str = "") -> Response:
    me = await auth.person(request)
    shown = await views.detail(request.app.state.steward, approval_id, me)
    return page("detail.html", me=me, d=shown, done=DONE.get(done, ""), problem=None)


@router.post("/{approval_id}/decision")
async def decide(request: Request, approval_id: ApprovalId) -> Response:
    async def act(steward: Any, me: SignedIn, form: dict[str, str]) -> str:
        decision, comment = form.get("decision", ""), form.get("comment", "").strip()
        if decision not in ("approve", "reject"):
            raise InputInvalid("choose approve or reject", details=[
                {"loc": ["body", "decision"], "msg": "approve or reject", "type": "enum"}])
        if decision == "reject" and len(comment) < 3:
            raise InputInvalid("a rejection needs a reason (at least 3 characters) so the requester knows why",
                               details=[{"loc": ["body", "comment"], "msg": "a reason is required", "type": "missing"}])
        shown_hash = form.get("arguments_hash", "")
        if len(shown_hash) != 64:
            raise InputInvalid("the form does not say which arguments you were shown; reload the page", details=[
                {"loc": ["body", "arguments_hash"], "msg": "required", "type": "missing"}])
        approval = await steward.db.run(lambda s: get_approval(session=s, approval_id=approval_id), read_only=True)
        arguments = None
        if form.get("edit") == "1" and decision == "approve":
            arguments = views.edited_arguments(approval, views.edit_fields(approval), form)
        await service.decide(steward, approval_id=approval_id, decision=decision, actor=me.user,
                             comment=comment[:4000], arguments_hash=shown_hash, check_roles=True, arguments=arguments)
        return "edit" if arguments is not None else decision

    return await _posted(request, approval_id, act)


@router.post("/{approval_id}/comment")
async def remark(request: Request, approval_id: ApprovalId) -> Response:
    async def act(steward: Any, me: SignedIn, form: dict[str, str]) -> str:
        await service.comment(steward, approval_id=approval_id, actor=me.user, text=form.get("comment", ""))
        return "comment"

    return await _posted(request, approval_id, act)


async def _posted(request: Request, approval_id: str,
                  act: Callable[[Any, SignedIn, dict[str, str]], Awaitable[str]]) -> Response:
    """A form posted on a request's page: signed in, with the session's CSRF token; done, back to the
    page saying so. A conflict (decided meanwhile, other arguments now) or an edit that does not fit
    or that the policies deny shows the page again with the reason, so nothing typed is a dead end."""
    me = await auth.person(request)
    form = await auth.read_form(request)
    await auth.check_csrf(request, me, form)
    steward = request.app.state.steward
    try:
        done = await act(steward, me, form)
    except (Conflict, EditDenied) as refused:
        status = 409 if isinstance(refused, Conflict) else 422
        shown = await views.detail(steward, approval_id, me)
        return page("detail.html", status=status, me=me, d=shown, done="", problem=refused.message)
    except InputInvalid as invalid:
        if form.get("edit") != "1":
            raise
        shown = await views.detail(steward, approval_id, me)
        return page("detail.html", status=422, me=me, d=shown, done="", problem=invalid.message)
    return see_other(f"/inbox/{approval_id}?done={done}")
