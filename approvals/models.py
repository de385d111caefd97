"""The approval domain's table: one request per paused action, bound to its exact arguments by hash.

>>> request = ApprovalRequest(run_id=run.id, interrupt_id=iid, workflow="price_change", version="1.0.0",
...                           node="apply_prices", action="pricing.change_prices", arguments={...},
...                           arguments_hash="9f2c…", reason="over 10 %", requested_by="alice")
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from approvals.states import ApprovalStatus  # noqa: F401 - importable from here too
from runtime.models import UTCDateTime, new_id, utcnow

DEFAULT_SLA = timedelta(hours=24)


class ApprovalRequest(SQLModel, table=True):
    """A paused action waiting for a person: the exact action and arguments, bound by hash."""

    __tablename__ = "approval_requests"
    __table_args__ = (  # the inbox pages oldest first by (created_at, id), with or without a status
        Index("ix_approval_requests_created_at", "created_at", "id"),
        Index("ix_approval_requests_status_created_at", "status", "created_at", "id"),
        Index("ix_approval_requests_status_workflow_created_at", "status", "workflow", "created_at", "id"),
        Index("ix_approval_requests_status_risk_created_at", "status", "risk", "created_at", "id"),
        Index("ix_approval_requests_status_due_at", "status", "due_at"),  # the SLA sweep's three stages
        Index("ix_approval_requests_status_remind_at", "status", "remind_at"),
        Index("ix_approval_requests_status_expires_at", "status", "expires_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=32)
    interrupt_id: str = Field(unique=True, max_length=64)
    workflow: str = Field(max_length=100)
    version: str = Field(max_length=50)
    node: str = Field(max_length=200)
    action: str = Field(max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    arguments_hash: str = Field(max_length=64)
    reason: str = Field(default="", max_length=2000)
    requested_by: str = Field(max_length=200)
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False),
                             description="Who approves (a policy's @escalate); empty: anyone who may decide")
    required_approvals: int = Field(default=1, description="How many distinct people must approve")
    approvers: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False),
                                            description="Who approved so far: [{approver, comment, at}]")
    policy: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True),
                                          description="The policy decision that asked for this approval")
    comments: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False,
                                           server_default="[]"), description="Remarks without a decision: [{by, text, at}]")
    risk: str = Field(default="normal", max_length=20, sa_column_kwargs={"server_default": "normal"},
                      description="high when policy asks for several people (four-eyes), else normal")
    due_at: datetime = Field(default_factory=lambda: utcnow() + DEFAULT_SLA, sa_type=UTCDateTime,
                             description="When the request is due (the SLA; default a day after it opened)")
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, description=(
        "When an undecided request is rejected (the safe default): as long again after it was due"))
    remind_at: datetime | None = Field(default=None, sa_type=UTCDateTime, description=(
        "When the people who decide are reminded: half way to the deadline"))
    reminded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    escalated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    owner: dict[str, str] | None = Field(default=None, sa_column=Column(JSON, nullable=True),
                                         description="The workflow's owner {name, email, backup}: escalations go there")
    separate: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"),
                                description="Who else may not approve (a policy's @separate: owner)")
    editable: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"),
                                description="The arguments an approver may change (the action's editable)")
    proposed_arguments: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True), description=(
        "What the step proposed, when an approver edited it (``arguments`` is then the edited call)"))
    proposed_arguments_hash: str | None = Field(default=None, max_length=64)
    edited_by: str | None = Field(default=None, max_length=200, description="Who last edited the arguments")
    edited_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    status: ApprovalStatus = Field(default=ApprovalStatus.pending, max_length=20)
    decided_by: str | None = Field(default=None, max_length=200)
    comment: str | None = Field(default=None, max_length=4000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class User(SQLModel, table=True):
    """A person who decides approvals, with the roles policies escalate to (``@escalate("pricing_manager")``).
    A token's user is named by ``name``; a user who is not here holds no role."""

    __tablename__ = "users"

    name: str = Field(primary_key=True, max_length=200)
    email: str = Field(default="", max_length=320)
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    demo: bool = Field(default=False, description="Seeded by demo mode")
    password_hash: str | None = Field(default=None, max_length=200,
                                      description="argon2id; None: this user cannot sign in to the inbox")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WebSession(SQLModel, table=True):
    """A person signed in to the inbox. The cookie holds a random secret; only its SHA-256 is ``id``.
    ``csrf`` is the session's form token (every state-changing form carries it)."""

    __tablename__ = "web_sessions"

    id: str = Field(primary_key=True, max_length=64)
    user: str = Field(max_length=200, index=True)
    csrf: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Notification(SQLModel, table=True):
    """One message to send (an outbox row): written in the transaction of what it reports, delivered
    afterwards, retried until it is, so nothing is lost when a process dies in between."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_sent_at_next_attempt_at", "sent_at", "next_attempt_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    kind: str = Field(max_length=100, description="approval.reminded, approval.escalated, approval.expired")
    channel: str = Field(default="webhook", max_length=20, sa_column_kwargs={"server_default": "webhook"},
                         description="webhook or email")
    approval_id: str | None = Field(default=None, max_length=32)
    recipients: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    attempts: int = 0
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=2000)
