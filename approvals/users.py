"""The people who decide approvals and their roles: a policy escalates to a role
(``@escalate("pricing_manager")``) and only a person holding it may decide that request.

>>> add_user(session=s, name="maria", roles={"pricing_manager"}, email="maria@example.com", actor="local:ops")
>>> roles_of(session=s, name="maria")
frozenset({'pricing_manager'})

Disabling a user revokes every token of theirs in the same transaction: a server refuses them within
its token cache's second.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals.models import User
from runtime import audit
from runtime import store as runtime_store
from runtime.errors import Conflict, InputInvalid, NotFound
from runtime.models import utcnow

ROLES: dict[str, str] = {
    "pricing_manager": "decides price changes that policies escalate",
    "sales_ops": "decides deals and CRM changes that policies escalate",
    "compliance": "reads the audit trail and decisions",
    "operator": "starts, cancels and rolls out runs",
    "admin": "administers users and tokens",
}

# Demo mode's people: (name, roles); their tokens are runtime.app.DEMO_TOKENS.
DEMO_USERS = (
    ("demo.operator", ("operator",)),
    ("demo.approver", ("pricing_manager", "sales_ops")),
    ("demo.approver2", ("pricing_manager",)),
    ("demo.compliance", ("compliance",)),
)


class UserNotFound(NotFound):
    code = "user_not_found"


def _roles(roles: Collection[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise InputInvalid(f"unknown role(s) {', '.join(unknown)}; the roles are {', '.join(sorted(ROLES))}",
                           details=[{"loc": ["role"], "msg": f"unknown role {r!r}"} for r in unknown])
    return sorted(set(roles))


def get_user(*, session: Session, name: str) -> User:
    user = session.get(User, name)
    if user is None:
        raise UserNotFound(f"no user named {name!r}; see `steward users list`")
    return user


def list_users(*, session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.name)).all()


def add_user(*, session: Session, name: str, roles: Collection[str], email: str = "", actor: str) -> User:
    """A new user with ``roles`` (audited ``user.added``); :class:`Conflict` if the name is taken."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InputInvalid("a user's name is 1 to 200 characters", details=[{"loc": ["name"], "msg": "1 to 200"}])
    if session.get(User, name) is not None:
        raise Conflict(f"there is already a user named {name!r}")
    user = User(name=name, roles=_roles(roles), email=email.strip())
    session.add(user)
    session.flush()
    audit.append(session, kind="user.added", actor=actor, data={"user": name, "roles": user.roles})
    return user


def disable_user(*, session: Session, name: str, actor: str) -> int:
    """Disable ``name`` and revoke all their tokens (audited ``user.disabled``); returns how many tokens
    were revoked. Disabling a disabled user changes nothing."""
    user = get_user(session=session, name=name)
    if user.disabled_at is not None:
        return 0
    user.disabled_at = utcnow()
    revoked = [runtime_store.revoke_token(session=session, token_id=t.id)
               for t in runtime_store.list_tokens(session=session, user=name) if t.revoked_at is None]
    session.flush()
    audit.append(session, kind="user.disabled", actor=actor,
                 data={"user": name, "tokens_revoked": [t.id for t in revoked]})
    return len(revoked)


def roles_of(*, session: Session, name: str) -> frozenset[str]:
    """The roles ``name`` holds now: none for a disabled user or a name that is nobody here."""
    user = session.get(User, name)
    if user is None or user.disabled_at is not None:
        return frozenset()
    return frozenset(user.roles or ())


def seed_demo(session: Session) -> None:
    """Demo mode's people (idempotent; their roles are put back as shipped)."""
    for name, roles in DEMO_USERS:
        user = session.get(User, name)
        if user is None:
            session.add(User(name=name, roles=list(roles), email=f"{name}@example.com", demo=True))
        else:
            user.roles, user.demo, user.disabled_at = list(roles), True, None
