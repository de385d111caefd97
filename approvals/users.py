"""The people who decide approvals and their roles: a policy escalates to a role
(``@escalate("pricing_manager")``) and only a person holding it may decide that request.

>>> add_user(session=s, name="maria", roles={"pricing_manager"}, email="maria@example.com", actor="local:ops")
>>> roles_of(session=s, name="maria")
frozenset({'pricing_manager'})

Disabling a user revokes every token of theirs in the same transaction: a server refuses them within
its token cache's second.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals import sessions
from approvals.models import User
from runtime import audit
from runtime import store as runtime_store
from runtime.errors import Conflict, InputInvalid, NotFound
from runtime.models import utcnow
from runtime.policy import ROLE  # a role is what a policy's @escalate may name

ROLES: dict[str, str] = {
    "pricing_manager": "decides price changes that policies escalate",
    "sales_ops": "decides deals and CRM changes that policies escalate",
    "compliance": "reads the audit trail and decisions",
    "operator": "starts, cancels and rolls out runs",
    "admin": "administers users and tokens",
}

# Roles that read requests but do not decide them when a request names no role of its own.
READ_ONLY_ROLES = frozenset({"compliance", "operator", "admin"})

# Demo mode's people: (name, roles); their tokens are runtime.app.DEMO_TOKENS.
DEMO_USERS = (
    ("demo.operator", ("operator",)),
    ("demo.approver", ("pricing_manager", "sales_ops")),
    ("demo.approver2", ("pricing_manager",)),
    ("demo.compliance", ("compliance",)),
)


class UserNotFound(NotFound):
    code = "user_not_found"


NAME = re.compile(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$")


def _roles(roles: Collection[str]) -> list[str]:
    """Role names as policies write them: the shipped ones (:data:`ROLES`) or any a policy of yours
    escalates to (``@escalate("finance_lead")``)."""
    bad = sorted(r for r in set(roles) if not ROLE.match(r))
    if bad:
        raise InputInvalid(f"role name(s) {', '.join(map(repr, bad))} are not lower-case names like "
                           f"pricing_manager (the shipped roles: {', '.join(sorted(ROLES))})",
                           details=[{"loc": ["role"], "msg": f"not a role name: {r!r}"} for r in bad])
    return sorted(set(roles))


def _name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200 or not NAME.match(name):
        raise InputInvalid(f"a user's name is 1 to 200 characters without control characters, not {name!r}",
                           details=[{"loc": ["name"], "msg": "1 to 200 printable characters"}])
    return name


def get_user(*, session: Session, name: str) -> User:
    user = session.get(User, name)
    if user is None:
        raise UserNotFound(f"no user named {name!r}; see `steward users list`")
    return user


def list_users(*, session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.name)).all()


def add_user(*, session: Session, name: str, roles: Collection[str], email: str = "", actor: str) -> User:
    """A new user with ``roles`` (audited ``user.added``); :class:`Conflict` if the name is taken, also by
    someone disabled (``steward users enable`` brings them back)."""
    name = _name(name)
    taken = session.get(User, name)
    if taken is not None:
        raise Conflict(f"there is already a user named {name!r}" + (
            "; they are disabled: `steward users enable` brings them back" if taken.disabled_at else ""))
    user = User(name=name, roles=_roles(roles), email=email.strip())
    session.add(user)
    session.flush()
    audit.append(session, kind="user.added", actor=actor, data={"user": name, "roles": user.roles})
    return user


def disable_user(*, session: Session, name: str, actor: str) -> int:
    """Disable ``name``, revoke all their tokens and end their inbox sessions (audited ``user.disabled``);
    returns how many tokens were revoked. Disabling a disabled user is a :class:`Conflict` and changes nothing."""
    user = get_user(session=session, name=name.strip())
    if user.disabled_at is not None:
        raise Conflict(f"{user.name} is already disabled (since {user.disabled_at:%Y-%m-%d %H:%M} UTC)")
    name = user.name
    user.disabled_at = utcnow()
    revoked = [runtime_store.revoke_token(session=session, token_id=t.id)
               for t in runtime_store.list_tokens(session=session, user=name) if t.revoked_at is None]
    ended = sessions.end_sessions(session=session, user=name)
    session.flush()
    audit.append(session, kind="user.disabled", actor=actor,
                 data={"user": name, "tokens_revoked": [t.id for t in revoked], "sessions_ended": ended})
    return len(revoked)


def set_password(*, session: Session, name: str, password: str, actor: str) -> User:
    """Give ``name`` a new password (audited ``user.password_set``; the password is never recorded) and
    end their sessions: whoever knew the old one is signed out."""
    user = get_user(session=session, name=name.strip())
    user.password_hash = sessions.hash_password(password)
    ended = sessions.end_sessions(session=session, user=user.name)
    session.flush()
    audit.append(session, kind="user.password_set", actor=actor, data={"user": user.name, "sessions_ended": ended})
    return user


def enable_user(*, session: Session, name: str, actor: str) -> User:
    """Bring a disabled user back (audited ``user.enabled``); their old tokens stay revoked."""
    user = get_user(session=session, name=name.strip())
    if user.disabled_at is None:
        raise Conflict(f"{user.name} is not disabled")
    user.disabled_at = None
    session.flush()
    audit.append(session, kind="user.enabled", actor=actor, data={"user": user.name})
    return user


def is_disabled(*, session: Session, name: str) -> bool:
    """Whether ``name`` is a user who was disabled (a name that is nobody here is not)."""
    user = session.get(User, name)
    return user is not None and user.disabled_at is not None


def is_owner(*, session: Session, name: str, owner: dict[str, str] | None) -> bool:
    """Whether ``name`` is the workflow owner ``owner`` describes: the user with the owner's email."""
    user = session.get(User, name)
    email = (owner or {}).get("email", "")
    return bool(user is not None and email and user.email and user.email.casefold() == email.casefold())


def roles_of(*, session: Session, name: str) -> frozenset[str]:
    """The roles ``name`` holds now: none for a disabled user or a name that is nobody here."""
    user = session.get(User, name)
    if user is None or user.disabled_at is not None:
        return frozenset()
    return frozenset(user.roles or ())


def seed_demo(session: Session) -> None:
    """Demo mode's people (idempotent; their roles and passwords are put back as shipped)."""
    hashes = sessions.demo_hashes()
    for name, roles in DEMO_USERS:
        user = session.get(User, name)
        if user is None:
            session.add(User(name=name, roles=list(roles), email=f"{name}@example.com", demo=True,
                             password_hash=hashes[name]))
        else:
            user.roles, user.demo, user.disabled_at, user.password_hash = list(roles), True, None, hashes[name]
