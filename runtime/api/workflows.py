"""``/api/v1/workflows``: the workflows this server runs, each loaded version with its input schema, the
rollout that routes new runs between versions and each version's health; an operator rolls a version
out to a share of new runs, promotes it, or rolls back (``rollouts:write``, every change audited)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from runtime import rollout
from runtime.api.deps import RolloutsWrite, StewardDep, WorkflowsRead
from runtime.api.problems import errors
from runtime.api.schemas import (PromoteCreate, RollbackCreate, RolloutChanged, RolloutCreate, RolloutPublic,
                                 VersionHealth, WorkflowPublic, WorkflowVersionPublic)
from runtime.models import FINISHED, Rollout, Run, RunStatus

router = APIRouter(prefix="/workflows", tags=["workflows"])
RECENT = 1000


def describe(steward: Any, name: str, state: Rollout, health: dict[str, VersionHealth] | None = None) -> WorkflowPublic:
    registry = steward.registry
    versions = [registry.get(name, version) for version in registry.versions(name)]
    stable = registry.get(name, state.stable) if state.stable in registry.versions(name) else versions[0]
    weights = {state.stable: 100 - (state.canary_percent if state.canary else 0)}
    if state.canary and state.canary_percent:
        weights[state.canary] = state.canary_percent
    return WorkflowPublic(
        name=name,
        latest_version=versions[-1].version,
        rollout=RolloutPublic(
            stable=state.stable, canary=state.canary, canary_percent=state.canary_percent,
            previous_stable=state.previous_stable, revision=state.revision, updated_by=state.updated_by,
            reason=state.reason, updated_at=state.updated_at if state.revision else None,
            routing_key=f"input.{stable.routing_key}" if stable.routing_key else "Idempotency-Key"),
        policy_hash=steward.policies.current.hash,
        versions=[WorkflowVersionPublic(
            version=wf.version, owner={"name": wf.owner.name, "email": wf.owner.email}, description=wf.description,
            grants=sorted(wf.grants), code_hash=wf.code_hash, input_schema=wf.input_model.model_json_schema(),
            weight=weights.get(wf.version, 0), health=(health or {}).get(wf.version),
        ) for wf in reversed(versions)],
    )


def health_of(session: Session, steward: Any, name: str) -> dict[str, VersionHealth]:
    """Each version's runs by status, its approvals' rejection rate, its recent runs' median duration."""
    by_status: dict[str, Counter[str]] = {}
    for version, status, count in session.execute(select(Run.version, Run.status, func.count())
                                                  .where(Run.workflow == name).group_by(Run.version, Run.status)):
        by_status.setdefault(version, Counter())[RunStatus(status).value] += count
    decisions = steward.executor.approvals.decision_counts(session, workflow=name)
    found = {}
    for version in steward.registry.versions(name):
        counts = by_status.get(version, Counter())
        ended = sum(counts[s.value] for s in FINISHED)
        recent = session.execute(select(Run.created_at, Run.finished_at).where(
            Run.workflow == name, Run.version == version, Run.finished_at.is_not(None))
            .order_by(Run.finished_at.desc()).limit(RECENT)).all()
        durations = [(done - started).total_seconds() * 1000 for started, done in recent]
        decided, rejected = decisions.get(version, (0, 0))
        found[version] = VersionHealth(
            runs=sum(counts.values()), in_flight=sum(counts.values()) - ended, failed=counts["failed"],
            failure_rate=round(counts["failed"] / ended, 4) if ended else None,
            approvals_decided=decided, approvals_rejected=rejected,
            rejection_rate=round(rejected / decided, 4) if decided else None,
            median_duration_ms=round(statistics.median(durations), 1) if durations else None)
    return found


@router.get("", response_model=list[WorkflowPublic], operation_id="workflows-list", responses=errors(401, 403),
            summary="The workflows this server runs")
async def list_workflows(steward: StewardDep, _: WorkflowsRead) -> list[WorkflowPublic]:
    """Each workflow with its rollout and every loaded version, highest first: owner, description, grants,
    the share of new runs it takes and the JSON Schema its input must match (``POST /runs`` validates
    against it)."""
    registry = steward.registry
    names = list(dict.fromkeys(name for name, _ in registry.keys()))

    def read(session: Session) -> list[WorkflowPublic]:
        return [describe(steward, name, rollout.state_of(session, registry, name)) for name in names]

    return await steward.db.run(read, read_only=True)


@router.get("/{name}", response_model=WorkflowPublic, operation_id="workflows-get", responses=errors(401, 403, 404),
            summary="One workflow with its rollout and its versions' health")
async def get_workflow(name: str, steward: StewardDep, _: WorkflowsRead) -> WorkflowPublic:
    """As in the list, and each version's health: runs, failure rate, approval rejection rate, median
    duration."""
    steward.registry.get(name)  # 404 when no version of it is loaded
    return await _read(steward, name)


async def _read(steward: Any, name: str) -> WorkflowPublic:
    def read(session: Session) -> WorkflowPublic:
        state = rollout.state_of(session, steward.registry, name)
        return describe(steward, name, state, health_of(session, steward, name))

    return await steward.db.run(read, read_only=True)


@router.post("/{name}/rollout", response_model=RolloutChanged, operation_id="workflows-rollout",
             responses=errors(401, 403, 404, 409), summary="Send a share of new runs to a version (a canary)")
async def roll_out(name: str, body: RolloutCreate, steward: StewardDep, user: RolloutsWrite) -> RolloutChanged:
    """The version becomes the canary and takes ``percent`` of new runs, routed by key (the same key,
    the same version, while the weights stay); runs already started are not touched. Audited as
    ``rollout.changed``. Another canary already taking traffic → 409."""
    await steward.executor.change_rollout(workflow=name, action="rollout", version=body.version,
                                          percent=body.percent, actor=user, reason=body.reason)
    return RolloutChanged(workflow=await _read(steward, name), cancelled=[])


@router.post("/{name}/promote", response_model=RolloutChanged, operation_id="workflows-promote",
             responses=errors(401, 403, 404, 409), summary="Make a version the stable one")
async def promote(name: str, body: PromoteCreate, steward: StewardDep, user: RolloutsWrite) -> RolloutChanged:
    """Every new run takes the version; the canary ends. Audited as ``rollout.changed``."""
    await steward.executor.change_rollout(workflow=name, action="promote", version=body.version, actor=user,
                                          reason=body.reason)
    return RolloutChanged(workflow=await _read(steward, name), cancelled=[])


@router.post("/{name}/rollback", response_model=RolloutChanged, operation_id="workflows-rollback",
             responses=errors(401, 403, 404, 409), summary="Send every new run back to a version")
async def roll_back(name: str, body: RollbackCreate, steward: StewardDep, user: RolloutsWrite) -> RolloutChanged:
    """Traffic returns to ``to_version`` (default: the stable version when there is a canary, else the
    stable version before the last promotion). Runs already started finish on their version
    (``in_flight: continue``) or are cancelled (``cancel``). Audited as ``rollout.changed``."""
    _, cancelled = await steward.executor.change_rollout(workflow=name, action="rollback", version=body.to_version,
                                                         actor=user, reason=body.reason, in_flight=body.in_flight)
    return RolloutChanged(workflow=await _read(steward, name), cancelled=cancelled)
