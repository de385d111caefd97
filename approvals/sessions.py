"""Signing in to the inbox: passwords (argon2id) and sessions with idle and absolute timeouts.

A session's cookie holds a random secret; the database keeps only its SHA-256, so a copy of the
database signs nobody in. Each session has its own CSRF token, which every state-changing form
carries. Signing in always starts a new session (the id is never carried over from before), and
disabling a user ends their sessions in the same transaction.

>>> users.set_password(session=s, name="maria", password="correct horse battery", actor="local:ops")
>>> user = check_password(session=s, name="maria", password="correct horse battery", demo=False)  # or raises
>>> secret, web = start_session(session=s, user=user.name)
>>> current_session(session=s, secret=secret, idle=timedelta(minutes=30), absolute=timedelta(hours=8), demo=False)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import update
from sqlalchemy.orm import Session

from approvals.models import User, WebSession
from runtime.errors import InputInvalid, Unauthorized
from runtime.models import utcnow

MIN_PASSWORD = 12
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters

# Demo mode's people sign in with these (published in the README; they work only in demo mode).
DEMO_PASSWORDS = {
    "demo.operator": "demo-operator-pass",
    "demo.approver": "demo-approver-pass",
    "demo.approver2": "demo-approver-2-pass",
    "demo.compliance": "demo-compliance-pass",
}

# Checked when the name is nobody or has no password, so that a wrong name costs the same time as a
# wrong password (no user enumeration by timing).
_DUMMY = _hasher.hash("no such user: this hash is only ever compared, never matched")


class SignInFailed(Unauthorized):
    code = "sign_in_failed"


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD or len(password) > 1024:
        raise InputInvalid(f"a password is {MIN_PASSWORD} to 1024 characters; this one has {len(password)}",
                           details=[{"loc": ["password"], "msg": f"{MIN_PASSWORD} to 1024 characters",
                                     "type": "string_length"}])
    return _hasher.hash(password)


@functools.cache
def demo_hashes() -> dict[str, str]:
    """The demo passwords' hashes, made once per process (hashing is deliberately slow)."""
    return {name: _hasher.hash(password) for name, password in DEMO_PASSWORDS.items()}


def check_password(*, session: Session, name: str, password: str, demo: bool) -> User:
    """The user ``name`` if ``password`` is theirs and they may sign in now, else :class:`SignInFailed`
    saying only that (never which part was wrong). Demo mode's people sign in only in demo mode."""
    user = session.get(User, name.strip()) if name.strip() else None
    stored = user.password_hash if user is not None else None
    try:
        _hasher.verify(stored or _DUMMY, password)
        matched = stored is not None
    except (VerificationError, InvalidHashError):
        matched = False
    if not matched or user is None or user.disabled_at is not None or (user.demo and not demo):
        raise SignInFailed("the name or the password is wrong, or this user may not sign in")
    return user


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def start_session(*, session: Session, user: str) -> tuple[str, WebSession]:
    """A new session for ``user``: the secret for the cookie (shown once) and its row."""
    secret = secrets.token_urlsafe(32)
    web = WebSession(id=digest(secret), user=user, csrf=secrets.token_urlsafe(32))
    session.add(web)
    session.flush()
    return secret, web


@dataclass(frozen=True)
class SignedIn:
    """Who a request's session belongs to, their roles and the session's form token."""

    user: str
    roles: frozenset[str]
    csrf: str
    session_id: str

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


def current_session(*, session: Session, secret: str, idle: timedelta, absolute: timedelta,
                    now: datetime | None = None, demo: bool) -> SignedIn | None:
    """The signed-in person behind a cookie's ``secret``, or None: unknown, ended, idle longer than
    ``idle``, older than ``absolute``, or its user disabled (or a demo user outside demo mode). A live
    session's ``seen_at`` moves on (at most once a minute, to spare the database a write per page)."""
    now = now or utcnow()
    web = session.get(WebSession, digest(secret))
    if web is None or web.ended_at is not None:
        return None
    user = session.get(User, web.user)
    if (now - web.seen_at > idle or now - web.created_at > absolute or user is None
            or user.disabled_at is not None or (user.demo and not demo)):
        web.ended_at = web.ended_at or now
        return None
    if now - web.seen_at > timedelta(minutes=1):
        web.seen_at = now
    return SignedIn(user=user.name, roles=frozenset(user.roles or ()), csrf=web.csrf, session_id=web.id)


def end_session(*, session: Session, secret: str) -> str | None:
    """Sign out: end the session behind ``secret``; returns whose it was (None if it was not live)."""
    web = session.get(WebSession, digest(secret))
    if web is None or web.ended_at is not None:
        return None
    web.ended_at = utcnow()
    return web.user


def end_sessions(*, session: Session, user: str) -> int:
    """End every live session of ``user`` (a password change, a disabled user); returns how many."""
    result = session.execute(update(WebSession).where(WebSession.user == user, WebSession.ended_at.is_(None))
                             .values(ended_at=utcnow()))
    return result.rowcount
