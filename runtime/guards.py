"""Rollout guards: business signals that roll a canary back by themselves.

A workflow declares its guards (``Workflow(rollout_guards=[...])``; by default a failure rate twice the
stable version's). While a canary takes traffic, the executor's sweep (``runtime.rollout.guard``)
measures each guard over the runs started since the canary did, and the first one breached sends every
new run back to the stable version: audited as ``rollout.guard_breached`` with the values measured and
``rollout.changed``, and the workflow's owner and backup are notified.

>>> Workflow(..., rollout_guards=[FailureRate(over_stable=2.0, runs=20), RejectionRate(above=0.4, decided=10)])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from runtime.models import AuditEvent, Run
from runtime.states import FINISHED, RunStatus


@dataclass(frozen=True)
class Breach:
    guard: str
    reason: str
    values: dict[str, Any]


@dataclass(frozen=True)
class FailureRate:
    """The canary's failed share of its last ``runs`` ended runs is above ``over_stable`` times the stable
    version's (over its runs in the same time), and above ``floor``."""

    over_stable: float = 2.0
    floor: float = 0.05
    runs: int = 20

    def check(self, session: Session, *, workflow: str, stable: str, canary: str, since: datetime,
              approvals: Any) -> Breach | None:
        mine = _ended(session, workflow, canary, since, self.runs)
        if len(mine) < self.runs:
            return None
        theirs = _ended(session, workflow, stable, since, 1000)
        rate = mine.count(RunStatus.failed) / len(mine)
        base = theirs.count(RunStatus.failed) / len(theirs) if theirs else 0.0
        limit = max(self.floor, self.over_stable * base)
        if rate <= limit:
            return None
        return Breach("failure_rate", f"{canary} failed {rate:.0%} of its last {len(mine)} runs against {base:.0%} "
                      f"for {stable} (the guard allows {limit:.0%})", {
                          "canary_failure_rate": round(rate, 4), "stable_failure_rate": round(base, 4),
                          "canary_runs": len(mine), "stable_runs": len(theirs), "limit": round(limit, 4)})


@dataclass(frozen=True)
class RejectionRate:
    """People reject more than ``above`` of the canary's approval requests (at least ``decided`` decided)."""

    above: float = 0.5
    decided: int = 10

    def check(self, session: Session, *, workflow: str, stable: str, canary: str, since: datetime,
              approvals: Any) -> Breach | None:
        decided, rejected = approvals.decision_counts(session, workflow=workflow, since=since).get(canary, (0, 0))
        if decided < self.decided or rejected / decided <= self.above:
            return None
        return Breach("rejection_rate", f"people rejected {rejected} of {decided} approval requests of {canary} "
                      f"(the guard allows {self.above:.0%})", {
                          "rejected": rejected, "decided": decided, "rejection_rate": round(rejected / decided, 4),
                          "limit": self.above})


@dataclass(frozen=True)
class ConnectorErrors:
    """More than ``above`` of the canary's connector calls fail (at least ``calls`` made)."""

    above: float = 0.2
    calls: int = 20

    def check(self, session: Session, *, workflow: str, stable: str, canary: str, since: datetime,
              approvals: Any) -> Breach | None:
        runs = select(Run.id).where(Run.workflow == workflow, Run.version == canary, Run.created_at >= since)
        counts = dict(session.execute(select(AuditEvent.kind, func.count()).where(
            AuditEvent.run_id.in_(runs), AuditEvent.kind.in_(("connector.call", "connector.failed")))
            .group_by(AuditEvent.kind)).all())
        failed, made = counts.get("connector.failed", 0), sum(counts.values())
        if made < self.calls or failed / made <= self.above:
            return None
        return Breach("connector_errors", f"{failed} of {made} connector calls of {canary} failed (the guard "
                      f"allows {self.above:.0%})", {"failed": failed, "calls": made,
                                                      "error_rate": round(failed / made, 4), "limit": self.above})


Guard = FailureRate | RejectionRate | ConnectorErrors
DEFAULT_GUARDS: tuple[Guard, ...] = (FailureRate(),)


def describe(guard: Guard) -> dict[str, Any]:
    return {"guard": type(guard).__name__, **asdict(guard)}


def _ended(session: Session, workflow: str, version: str, since: datetime, limit: int) -> list[RunStatus]:
    return [RunStatus(s) for s in session.scalars(
        select(Run.status).where(Run.workflow == workflow, Run.version == version, Run.created_at >= since,
                                 Run.status.in_(list(FINISHED)), Run.status != RunStatus.cancelled)
        .order_by(Run.finished_at.desc()).limit(limit)).all()]
