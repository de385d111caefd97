"""The approval domain's public shapes (HTTP API and CLI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from approvals.models import ApprovalStatus
from runtime.api.paging import Page


class ApprovalPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    run_id: str
    workflow: str
    version: str
    node: str
    action: str
    arguments: dict[str, Any]
    arguments_hash: str
    reason: str
    requested_by: str
    roles: list[str]
    required_approvals: int
    approvers: list[dict[str, Any]]
    policy: dict[str, Any] | None
    comments: list[dict[str, Any]] = Field(default_factory=list, description="Remarks without a decision")
    risk: str = Field(description="high when policy asks for several people (four-eyes), else normal")
    due_at: datetime = Field(description="When the request is due")
    proposed_arguments: dict[str, Any] | None = Field(None, description=(
        "What the step proposed, when an approver edited it (`arguments` is then the edited call)"))
    edited_by: str | None = Field(None, description="Who last edited the arguments")
    status: ApprovalStatus
    decided_by: str | None
    comment: str | None
    created_at: datetime
    decided_at: datetime | None


class ApprovalPage(Page[ApprovalPublic]):
    """A page of approval requests, oldest first."""


class DecisionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    comment: str = Field("", max_length=4000)
    arguments_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description=(
        "The `arguments_hash` of the request as you were shown it: if its arguments changed since, the "
        "decision is refused (409) instead of applying to something you did not see"))
    arguments: dict[str, Any] | None = Field(None, description=(
        "Approve the call with these arguments instead (edit within policy; needs `arguments_hash`). Every "
        "argument of the action, of its type; the record acted on stays the same. The policies decide on "
        "the edited call before it is accepted (a denial answers 422 naming the policy) and again before "
        "it executes; who must approve it and how many are what they say of it"))


class CommentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(min_length=1, max_length=4000, pattern=r"^[^\x00]*$")
