"""The shapes the HTTP API reads and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.api.paging import Page
from runtime.models import RunStatus, StepStatus
from runtime.sdk import SEMVER


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=100, examples=["price_change"])
    input: dict[str, Any] = Field(
        examples=[{"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "cost increase"}]
    )
    version: str | None = Field(
        None, max_length=50, pattern=SEMVER.pattern, examples=["1.0.0"],
        description="Pin the run to this loaded version; default: the workflow's highest loaded version",
    )


class StepPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    node: str
    task_id: str
    status: StepStatus
    error: dict[str, Any] | None
    started_at: datetime
    finished_at: datetime | None


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    workflow: str
    version: str
    status: RunStatus
    status_reason: str | None = Field(description="Why the run is in its status, e.g. parked: its version is "
                                                   "not loaded by any process that took it up")
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    trace_id: str | None
    policy_hash: str | None = Field(description="The policy set the run is evaluated under (re-pinnable)")
    error: dict[str, Any] | None


class PolicyPin(BaseModel):
    """Evaluate a run under another policy set from now on (its next call, and every later one)."""

    model_config = ConfigDict(extra="forbid")

    policy_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="A policy set this database has loaded")]
    reason: Annotated[str, Field(min_length=3, max_length=500)]


class RunPage(Page[RunPublic]):
    """A page of runs, newest first."""


class RunDetail(RunPublic):
    input: dict[str, Any]
    output: dict[str, Any] | None
    steps: list[StepPublic]
    pending_approval_id: str | None
    pending_approval_ids: list[str]


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    created_at: str
    actor: str
    kind: str
    run_id: str | None
    workflow: str | None
    version: str | None
    trace_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(Page[AuditEventPublic]):
    """A page of audit events in chain order."""


class Readiness(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str] = Field(description="database, schema and worker: `ok (...)` each")


class Me(BaseModel):
    user: str = Field(description="The token's user: every action taken with the token is recorded as theirs")


class OwnerPublic(BaseModel):
    name: str
    email: str


class WorkflowVersionPublic(BaseModel):
    version: str
    owner: OwnerPublic
    description: str
    grants: list[str] = Field(description="The connector action scopes this version may use")
    code_hash: str = Field(description="SHA-256 of the modules that build the version's graph and its steps")
    input_schema: dict[str, Any] = Field(description="The JSON Schema a run's `input` must match")
    weight: int = Field(description="The percentage of new runs routed to this version now")
    health: VersionHealth | None = Field(None, description="Its runs so far (`GET /workflows/{name}` only)")


class VersionHealth(BaseModel):
    runs: int = Field(description="Runs started on this version")
    in_flight: int = Field(description="Of those, not ended yet")
    failed: int
    failure_rate: float | None = Field(description="Failed of those that ended (None: none ended)")
    approvals_decided: int
    approvals_rejected: int
    rejection_rate: float | None = Field(description="Rejected (or expired) of the approvals decided")
    median_duration_ms: float | None = Field(description="Of the last 1,000 runs that ended")


class RolloutPublic(BaseModel):
    stable: str = Field(description="The version new runs take, but for the canary's share")
    canary: str | None
    canary_percent: int = Field(description="The share of new runs routed to the canary, 0 to 100")
    previous_stable: str | None = Field(description="What a rollback without to_version returns to")
    revision: int = Field(description="Counts the changes (0: nobody rolled this workflow out yet)")
    updated_by: str
    reason: str
    updated_at: datetime | None
    routing_key: str = Field(description="What new runs are routed by: an input field, or the Idempotency-Key")


class WorkflowPublic(BaseModel):
    name: str
    latest_version: str = Field(description="The highest loaded version (a new run takes it only when it is stable "
                                            "or its canary share says so)")
    rollout: RolloutPublic
    policy_hash: str = Field(description="The policy set new runs are pinned to")
    versions: list[WorkflowVersionPublic] = Field(description="Every loaded version, highest first")


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=50, description="The canary: a loaded version other than the stable one")
    percent: int = Field(ge=0, le=100, description="Its share of new runs (0 ends the canary)")
    reason: str = Field(min_length=3, max_length=1000, pattern=r"^[^\x00]*$")


class PromoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=50, description="The version that becomes stable (usually the canary)")
    reason: str = Field(min_length=3, max_length=1000, pattern=r"^[^\x00]*$")


class RollbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_version: str | None = Field(None, max_length=50, description=(
        "Default: the stable version when there is a canary, else the stable version before the last promotion"))
    reason: str = Field(min_length=3, max_length=1000, pattern=r"^[^\x00]*$")
    in_flight: Literal["continue", "cancel"] = Field("continue", description=(
        "continue: runs already started finish on their version; cancel: runs of the versions rolled back "
        "from that have not ended are cancelled (each audited)"))


class RolloutChanged(BaseModel):
    workflow: WorkflowPublic
    cancelled: list[str] = Field(description="The runs a rollback with in_flight=cancel cancelled")
