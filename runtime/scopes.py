"""What an API token may do: one scope per kind of operation, checked by every endpoint.

A token carries the scopes it was created with (``steward tokens create --scope ...``); an endpoint
that needs a scope the token lacks answers 403 and the refusal is audited (``authz.denied``).
Who may hold which scope (roles) is the human layer's business; the engine knows scopes only.

>>> parse(["runs:read", "runs:write"])
frozenset({'runs:read', 'runs:write'})
>>> parse(["all"]) == ALL
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runtime.errors import InputInvalid

SCOPES: dict[str, str] = {
    "runs:read": "list, read and follow runs",
    "runs:write": "start, cancel and re-pin runs",
    "approvals:read": "list and read approval requests",
    "approvals:decide": "approve or reject approval requests",
    "audit:read": "read and verify the audit trail",
    "quarantine:read": "list and read quarantined records",
    "quarantine:write": "release or drop quarantined records",
    "policy:read": "ask the policies about a hypothetical action",
    "workflows:read": "list the loaded workflows, their input schemas, rollouts and health",
    "rollouts:write": "roll a workflow version out, promote it, roll back",
}
ALL = frozenset(SCOPES)
EVERY = "all"  # what `--scope all` means: every scope there is


@dataclass(frozen=True)
class Principal:
    """Whom a bearer token belongs to and what it may do."""

    user: str
    scopes: frozenset[str]
    demo: bool = False
    token_id: str = ""


def parse(values: Iterable[str]) -> frozenset[str]:
    """Scope names as given (``all`` for every one); :class:`InputInvalid` naming an unknown one."""
    found = {v.strip() for v in values if v.strip()}
    unknown = sorted(found - ALL - {EVERY})
    if unknown:
        raise InputInvalid(f"unknown scope(s) {', '.join(unknown)}; the scopes are {', '.join(sorted(ALL))} "
                           f"(or {EVERY})", details=[{"loc": ["scope"], "msg": f"unknown scope {u!r}"} for u in unknown])
    if not found:
        raise InputInvalid(f"name the scopes the token carries (--scope runs:write ...; --scope {EVERY} for every one)")
    return ALL if EVERY in found else frozenset(found)
