"""The engine's port to the human layer: "an approval was requested" and "resume with this decision".

The engine pauses a step with a LangGraph interrupt and hands each open interrupt
to an :class:`ApprovalPort` as an :class:`ApprovalNeed`; when every interrupt of a run
has a decision, it resumes the graph with them, and the step's
``request_approval(...)`` returns an :class:`ApprovalDecision`. Who may decide, how
many must, and where they do it is the port's business (``approvals/``); the
engine imports none of it.

>>> decision = await runtime.context.request_approval(action="pricing.change_prices",
...                                                   arguments={"changes": changes}, reason="over 10 %")
>>> decision.approver, decision.comment
('pricing.manager', 'margin ok')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session


class ApprovalDecision(BaseModel):
    """A person's decision about one approval request: what ``request_approval`` returns."""

    model_config = ConfigDict(frozen=True)

    approval_id: str
    decision: Literal["approve", "reject"]
    approver: str
    comment: str = ""
    arguments: dict[str, Any]
    """The arguments the approver was shown and approved (bound by ``arguments_hash``)."""
    arguments_hash: str
    approvers: list[str] = []
    """Everyone who approved, in order, when several distinct people had to (``approver`` is the last)."""
    edited_from: str | None = None
    """When an approver edited the arguments within policy: the hash of what the step proposed
    (``arguments`` and ``arguments_hash`` are then the edited call, which the gate checks against the
    policies again before it executes it)."""

    @property
    def approved(self) -> bool:
        return self.decision == "approve"

    @property
    def approved_by(self) -> list[str]:
        """The distinct people who approved (none for a rejection)."""
        if not self.approved:
            return []
        return self.approvers or [self.approver]


@dataclass(frozen=True)
class ApprovalNeed:
    """One open interrupt of a run that needs a person: the exact action and arguments, bound by hash."""

    interrupt_id: str
    run_id: str
    workflow: str
    version: str
    requested_by: str
    node: str
    action: str
    arguments: dict[str, Any]
    arguments_hash: str
    reason: str
    roles: tuple[str, ...] = ()
    """Who approves (a policy's ``@escalate``); empty: anyone the human layer lets decide."""
    required_approvals: int = 1
    """How many distinct people must approve (a policy's ``@approvals``)."""
    policy: dict[str, Any] | None = None
    """The policy decision that asked for the approval (outcome, policies, reasons, policy hash)."""
    opened_at: datetime | None = None
    """When the engine asked (its clock, which tests may fix)."""
    sla_seconds: float | None = None
    """How long a person has to decide (the policy's ``@sla`` or the workflow's ``approval_sla``, the
    shorter); None: the human layer's default."""
    owner: dict[str, str] | None = None
    """The workflow's owner: ``{"name", "email", "backup"}`` (where escalations go)."""
    separate: tuple[str, ...] = ()
    """Who else may not approve (a policy's ``@separate``: ``owner``)."""
    editable: tuple[str, ...] = ()
    """The arguments an approver may change (a connector action's ``editable``); empty: none."""


class ApprovalPort(Protocol):
    """What the engine needs from the human layer. Every method runs inside the caller's transaction,
    after the caller has locked the run's row (the lock order is run, approvals, audit)."""

    def request(self, session: Session, *, needs: Sequence[ApprovalNeed]) -> list[str]:
        """Open an approval request for each need (once per interrupt id); returns their ids."""
        ...

    def decisions(self, session: Session, *, interrupt_ids: Sequence[str]) -> dict[str, ApprovalDecision | None]:
        """For each interrupt that has a request: its decision, or None while undecided."""
        ...

    def withdraw(self, session: Session, *, run_id: str) -> int:
        """Withdraw the undecided requests of a run that ended (cancelled); returns how many."""
        ...

    def pending_ids(self, session: Session, *, run_id: str) -> list[str]:
        """The ids of a run's undecided requests, oldest first."""
        ...

    def pending_summary(self, session: Session) -> tuple[int, Any]:
        """How many requests wait for a person, and when the oldest was opened (None when none)."""
        ...

    def disagreements(self, session: Session) -> list[str]:
        """What ``audit verify`` reports besides the chain: each request whose row differs from the
        audit events it is a projection of (its decision, decider, approvers or arguments)."""
        ...

    def decision_counts(self, session: Session, *, workflow: str,
                        since: datetime | None = None) -> dict[str, tuple[int, int]]:
        """For each version of ``workflow``: how many of its requests (opened since ``since``) were
        decided, and how many of those were rejected (expiry included)."""
        ...

    def notify(self, session: Session, *, kind: str, recipients: Sequence[str], data: dict[str, Any],
               channels: Sequence[str]) -> None:
        """Tell people about something the engine did (an automatic rollback), through the human layer's
        channels (the webhook, email), in the caller's transaction."""
        ...

    def disabled(self, session: Session, *, user: str) -> bool:
        """Whether ``user`` was disabled (their tokens stop working, also ones issued afterwards)."""
        ...

    def seed_demo(self, session: Session) -> None:
        """Demo mode: put the demo's people in place (their tokens are the engine's demo tokens)."""
        ...

    def pending_column(self, run_id: Any, *, postgres: bool) -> Any:
        """A SQL expression correlated to the column ``run_id``: the run's undecided requests as a JSON
        array of ``[created_at, id]`` (any order; see :func:`runtime.db.json_rows`), so that a run is read
        in one query."""
        ...
