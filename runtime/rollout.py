"""Rollouts: which version of a workflow a new run takes, changed by operators and audited.

Every workflow has a stable version and may have a canary that takes ``canary_percent`` of new runs.
A run is routed by its routing key (the workflow's ``routing_key`` input field, such as a customer id,
else the client's ``Idempotency-Key``): the key's bucket, the first 8 bytes of
``SHA-256(workflow NUL key)`` modulo 10,000, goes to the canary when it is below ``percent × 100``. The
same key gets the same version while the weights stay the same, and raising the percentage only moves
keys from stable to canary, never back. A run without a key is routed at random. A run names its
version to skip routing; every run resumes on the version it started on, whatever the rollout says.

A workflow nobody rolled out yet routes everything to its lowest loaded version: a newly deployed
version takes traffic only when an operator rolls it out or promotes it.

>>> route(state, workflow="price_change", key="order-7")
Route(version='1.2.0', canary=True, bucket=312, key='idempotency_key')
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runtime import audit, guards
from runtime.errors import Conflict, InputInvalid
from runtime.models import Rollout, Run, utcnow
from runtime.sdk import Registry, Workflow, semver_key
from runtime.states import RunStatus

BUCKETS = 10_000
IN_FLIGHT = (RunStatus.queued, RunStatus.running, RunStatus.waiting_approval)


def bucket(workflow: str, key: str) -> int:
    """The routing bucket of ``key`` (0 to 9,999), the same in every process and release."""
    digest = hashlib.sha256(f"{workflow}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Route:
    version: str
    canary: bool
    bucket: int | None
    key: str
    """What the run was routed by: ``input.<field>``, ``idempotency_key`` or ``random``."""

    def audit(self, state: Rollout | None) -> dict[str, Any]:
        return {"version": self.version, "canary": self.canary, "bucket": self.bucket, "key": self.key,
                "rollout_revision": state.revision if state is not None else 0,
                "canary_percent": state.canary_percent if state is not None else 0}


def default_state(registry: Registry, workflow: str) -> Rollout:
    """The rollout of a workflow nobody rolled out yet: its lowest loaded version, no canary."""
    return Rollout(workflow=workflow, stable=registry.versions(workflow)[0], canary=None, canary_percent=0,
                   revision=0, updated_by="steward", reason="no rollout yet: the lowest loaded version")


def state_of(session: Session, registry: Registry, workflow: str) -> Rollout:
    """The workflow's rollout: as stored, else :func:`default_state`."""
    return session.get(Rollout, workflow) or default_state(registry, workflow)


def choose(session: Session, registry: Registry, workflow: str, data: Any,
           idempotency_key: str | None) -> tuple[Workflow, Route, Rollout]:
    """A new run's version, in the transaction that creates it (one rollout state): the workflow as
    routed by the stable version's ``routing_key`` field of ``data``, else by the idempotency key."""
    state = state_of(session, registry, workflow)
    field = registry.get(workflow, state.stable).routing_key
    from_field = routing_key(field, data)
    key = from_field if from_field is not None else idempotency_key
    chosen = route(state, workflow=workflow, key=key, field=field if from_field is not None else None)
    return registry.get(workflow, chosen.version), chosen, state


def route(state: Rollout, *, workflow: str, key: str | None, field: str | None = None) -> Route:
    """The version a new run takes (see the module's description)."""
    label = f"input.{field}" if field else "idempotency_key"
    if not state.canary or state.canary_percent <= 0:
        return Route(state.stable, False, None, label if key is not None else "random")
    if key is None:
        drawn, label = random.randrange(BUCKETS), "random"  # noqa: S311 - a traffic split, not a secret
    else:
        drawn = bucket(workflow, key)
    canary = drawn < state.canary_percent * (BUCKETS // 100)
    return Route(state.canary if canary else state.stable, canary, drawn, label)


def routing_key(field: str | None, data: Any) -> str | None:
    """The input's value of the workflow's ``routing_key`` field, when it has one (a customer keeps their
    version across runs); None: route by the idempotency key instead."""
    if field and isinstance(data, dict) and data.get(field) not in (None, ""):
        return str(data[field])
    return None


Action = Literal["rollout", "promote", "rollback"]


def change(session: Session, registry: Registry, *, workflow: str, action: Action, actor: str, reason: str,
           version: str | None = None, percent: int | None = None, in_flight: str = "continue") -> tuple[Rollout, list[str]]:
    """Change a workflow's rollout, audited as ``rollout.changed`` with the state before and after.
    Returns the new state and the versions whose in-flight runs the caller is to stop (a rollback
    with ``in_flight="cancel"``). Locks the row (or inserts it: a concurrent first change conflicts)."""
    registry.get(workflow)  # 404 when no version of it is loaded
    reason = reason.strip()
    if len(reason) < 3:
        raise InputInvalid("say why (a reason of at least 3 characters): it goes into the audit trail",
                           details=[{"loc": ["body", "reason"], "msg": "at least 3 characters", "type": "string_too_short"}])
    if version is not None:
        registry.get(workflow, version)  # 404 naming the loaded versions
    state = _locked(session, registry, workflow, actor)
    before = _public(state)
    after = dict(before)
    stopped: list[str] = []
    if action == "rollout":
        if version == state.stable:
            raise Conflict(f"{version} is already {workflow}'s stable version; roll out another version, or "
                           "promote or roll back", details={"stable": state.stable})
        if state.canary and version != state.canary and state.canary_percent > 0:
            raise Conflict(f"{workflow} already has a canary, {state.canary} at {state.canary_percent} %; promote it "
                           "or roll it back first", details={"canary": state.canary})
        after |= {"canary": version if percent else None, "canary_percent": percent or 0}
    elif action == "promote":
        if version == state.stable and not state.canary:
            raise Conflict(f"{version} is already {workflow}'s stable version and there is no canary")
        after |= {"stable": version, "canary": None, "canary_percent": 0,
                  "previous_stable": state.stable if version != state.stable else state.previous_stable}
    else:
        if version is not None:
            target = version
        elif state.canary:
            target = state.stable
        elif state.previous_stable:
            target = state.previous_stable
        else:
            raise Conflict(f"{workflow} has no canary and no earlier stable version to roll back to; name one "
                           "with to_version", details={"stable": state.stable})
        left = {v for v in (state.canary, state.stable) if v and v != target}
        # a rollback is not undone by another: going forward again is a rollout or a promotion
        after |= {"stable": target, "canary": None, "canary_percent": 0,
                  "previous_stable": None if target != state.stable else state.previous_stable}
        if in_flight == "cancel":
            stopped = sorted(left, key=semver_key)
    if after == before:
        raise Conflict(f"{workflow}'s rollout is already so; nothing changed", details=before)
    state.stable, state.canary, state.canary_percent = after["stable"], after["canary"], after["canary_percent"]
    state.previous_stable = after["previous_stable"]
    if state.canary is None:
        state.canary_since = None
    elif before["canary"] != state.canary or not before["canary_percent"]:
        state.canary_since = utcnow()  # a ramp keeps measuring from where the canary began
    state.revision, state.updated_by, state.reason, state.updated_at = state.revision + 1, actor, reason, utcnow()
    session.flush()
    audit.append(session, kind="rollout.changed", actor=actor, data={
        "workflow": workflow, "action": action, "reason": reason, "before": before, "after": _public(state),
        "in_flight": in_flight, "stopping": stopped})
    return state, stopped


def _locked(session: Session, registry: Registry, workflow: str, actor: str) -> Rollout:
    """The workflow's rollout row, locked; a workflow nobody rolled out gets its default state stored
    first (revision 0; concurrent first changes insert it once and queue on its lock)."""
    row = session.get(Rollout, workflow, with_for_update=True)
    if row is not None:
        return row
    default = default_state(registry, workflow)
    try:
        with session.begin_nested():
            session.add(Rollout(workflow=workflow, stable=default.stable, revision=0, updated_by=actor,
                                reason=default.reason))
    except IntegrityError:  # another first change stored it meanwhile
        pass
    return session.get(Rollout, workflow, with_for_update=True, populate_existing=True)


def _public(state: Rollout) -> dict[str, Any]:
    return {"stable": state.stable, "canary": state.canary, "canary_percent": state.canary_percent,
            "previous_stable": state.previous_stable, "revision": state.revision}


def in_flight_runs(session: Session, *, workflow: str, versions: list[str]) -> list[str]:
    """The ids of the runs of ``versions`` that have not ended (what a rollback may cancel)."""
    return list(session.scalars(select(Run.id).where(Run.workflow == workflow, Run.version.in_(versions),
                                                     Run.status.in_(IN_FLIGHT))).all())


GUARD = "steward:guard"


async def guard(steward: Any, now: datetime) -> dict[str, int]:
    """The executor's sweep: for each canary taking traffic, check its workflow's guards over the runs
    started since it did; the first one breached rolls it back (see :mod:`runtime.guards`). Each
    rollback happens once however many workers sweep: it is conditional on the rollout's revision."""
    live = await steward.db.run(lambda s: [(r.workflow, r.revision) for r in s.scalars(
        select(Rollout).where(Rollout.canary.is_not(None), Rollout.canary_percent > 0)).all()], read_only=True)
    fired = 0
    for workflow, revision in live:
        fired += await steward.db.run(lambda s, w=workflow, r=revision: _guarded(s, steward, w, r, now))
    return {"rolled_back": fired}


def _guarded(session: Session, steward: Any, workflow: str, revision: int, now: datetime) -> int:
    registry, approvals = steward.registry, steward.executor.approvals
    state = session.get(Rollout, workflow, with_for_update=True)
    if state is None or state.revision != revision or not state.canary or state.canary not in registry.versions(workflow):
        return 0  # changed meanwhile, or a canary this process does not load (its guards are not known here)
    since = state.canary_since or state.updated_at
    wf = registry.get(workflow, state.canary)
    for rule in wf.rollout_guards:
        breach = rule.check(session, workflow=workflow, stable=state.stable, canary=state.canary, since=since,
                            approvals=approvals)
        if breach is None:
            continue
        canary, stable = state.canary, state.stable
        audit.append(session, kind="rollout.guard_breached", actor=GUARD, data={
            "workflow": workflow, "canary": canary, "stable": stable, "since": since.isoformat(),
            "measured_at": now.isoformat(), "reason": breach.reason, "values": breach.values, **guards.describe(rule)})
        change(session, registry, workflow=workflow, action="rollback", actor=GUARD,
               reason=f"guard {breach.guard}: {breach.reason}")
        channels = steward.settings.notify_channels()
        if channels:
            approvals.notify(session, kind="rollout.rolled_back", channels=channels,
                             recipients=[e for e in (wf.owner.email, wf.owner.backup) if e], data={
                                 "workflow": workflow, "canary": canary, "stable": stable, "guard": breach.guard,
                                 "reason": breach.reason, "values": breach.values})
        return 1
    return 0
