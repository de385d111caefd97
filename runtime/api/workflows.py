"""``/api/v1/workflows``: the workflows this server runs, each loaded version with its input schema."""

from __future__ import annotations

from fastapi import APIRouter

from runtime.api.deps import StewardDep, WorkflowsRead
from runtime.api.problems import errors
from runtime.api.schemas import WorkflowPublic, WorkflowVersionPublic
from runtime.sdk import Registry

router = APIRouter(prefix="/workflows", tags=["workflows"])


def describe(registry: Registry, name: str) -> WorkflowPublic:
    versions = [registry.get(name, version) for version in registry.versions(name)]
    latest = versions[-1]
    return WorkflowPublic(
        name=name,
        latest_version=latest.version,
        versions=[WorkflowVersionPublic(
            version=wf.version, owner={"name": wf.owner.name, "email": wf.owner.email}, description=wf.description,
            grants=sorted(wf.grants), code_hash=wf.code_hash, input_schema=wf.input_model.model_json_schema(),
        ) for wf in reversed(versions)],
    )


@router.get("", response_model=list[WorkflowPublic], operation_id="workflows-list", responses=errors(401, 403),
            summary="The workflows this server runs")
async def list_workflows(steward: StewardDep, _: WorkflowsRead) -> list[WorkflowPublic]:
    """Each workflow with every loaded version, highest first: owner, description, grants and the JSON
    Schema its input must match (``POST /runs`` validates against it)."""
    registry = steward.registry
    return [describe(registry, name) for name in dict.fromkeys(name for name, _ in registry.keys())]


@router.get("/{name}", response_model=WorkflowPublic, operation_id="workflows-get", responses=errors(401, 403, 404),
            summary="One workflow with its loaded versions")
async def get_workflow(name: str, steward: StewardDep, _: WorkflowsRead) -> WorkflowPublic:
    steward.registry.get(name)  # 404 when no version of it is loaded
    return describe(steward.registry, name)
