"""``/api/v1/policy``: what the policies decide for a hypothetical action, and why.

>>> POST /api/v1/policy/evaluate {"workflow": "price_change", "action": "pricing.set_price",
...     "arguments": {"sku": "SKU-1001", "currency": "EUR", "amount": "140.00"}}
{"outcome": "escalate", "policies": ["pricing.change_over_10_pct", "pricing.change_over_25_pct"], ...}
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from runtime.api.deps import PolicyRead, StewardDep
from runtime.api.problems import errors
from runtime.connectors.base import find_action
from runtime.errors import InputInvalid, PolicyContextInvalid
from runtime.facts import Facts
from runtime.models import utcnow
from runtime.policy import PolicyRequest

router = APIRouter(prefix="/policy", tags=["policy"])

ACTION = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"


class ResourceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9_]{0,63}$", examples=["Sku"])]
    id: Annotated[str, Field(min_length=1, max_length=300, examples=["SKU-1001"])]


class PolicyEvaluate(BaseModel):
    """A hypothetical call: give its ``arguments`` (the server builds the context as the gate would,
    reading what it needs, such as the current price), or a ready ``context``."""

    model_config = ConfigDict(extra="forbid")

    workflow: Annotated[str, Field(max_length=100, examples=["price_change"])]
    version: Annotated[str | None, Field(max_length=50, description="Default: the newest loaded")] = None
    action: Annotated[str, Field(pattern=ACTION, max_length=200, examples=["pricing.set_price"])]
    resource: ResourceRef | None = Field(None, description="Default: what the action names from its arguments")
    arguments: dict[str, Any] | None = None
    context: dict[str, Any] | None = None


class PolicyDecisionPublic(BaseModel):
    outcome: str = Field(description="allow, deny or escalate")
    action: str
    policies: list[str] = Field(description="The policies that determined the outcome")
    reasons: list[str] = Field(description="Their @reason annotations, for people")
    policy_hash: str
    context_digest: str
    roles: list[str] = Field([], description="Who approves an escalation")
    approvals: int = Field(0, description="How many distinct people must approve an escalation")
    context: dict[str, Any] = Field(description="The context the decision was taken on")


@router.post("/evaluate", response_model=PolicyDecisionPublic, operation_id="policy-evaluate",
             responses=errors(401, 403, 404, 422), summary="Evaluate a hypothetical action against the policies")
async def evaluate(body: PolicyEvaluate, steward: StewardDep, _: PolicyRead) -> PolicyDecisionPublic:
    """Nothing is called and nothing is counted: a rate counter is only looked at."""
    wf = steward.registry.get(body.workflow, body.version)  # 404 when not loaded
    if (body.arguments is None) == (body.context is None):
        raise InputInvalid("give the call's arguments or a context, not both and not neither", details=[
            {"loc": ["body", "arguments"], "msg": "arguments or context", "type": "value_error"}])
    connector, spec = find_action(steward.executor.connectors, body.action)
    context = body.context
    if body.arguments is not None:
        if spec is None:
            raise InputInvalid(f"{body.action} is not an action of a connector this server has", details=[
                {"loc": ["body", "action"], "msg": "unknown action", "type": "value_error"}])
        facts = Facts.hypothetical(db=steward.db, run_id="", workflow=wf.name, version=wf.version,
                                   connector=connector, action=body.action, clock=utcnow)
        try:
            context = await spec.context(facts, body.arguments) if spec.context is not None else {}
            resource = spec.policy_resource(body.arguments)
        except (KeyError, TypeError) as exc:
            raise InputInvalid(f"the arguments do not fit {body.action}: missing or wrong {exc}", details=[
                {"loc": ["body", "arguments"], "msg": str(exc), "type": "value_error"}]) from None
        except PolicyContextInvalid as exc:
            raise InputInvalid(exc.message, details=[
                {"loc": ["body", "arguments"], "msg": exc.message, "type": "value_error"}]) from None
    else:
        resource = (spec.policy_resource({}) if spec is not None and spec.resource is None else None)
    if body.resource is not None:
        resource = (body.resource.type, body.resource.id)
    if resource is None:
        raise InputInvalid(f"name the resource {body.action} acts on", details=[
            {"loc": ["body", "resource"], "msg": "required with a context for this action", "type": "missing"}])
    try:
        decision = steward.policies.current.evaluate(PolicyRequest(
            workflow=wf.name, version=wf.version, action=body.action, resource=resource, context=context or {}))
    except PolicyContextInvalid as exc:
        raise InputInvalid(exc.message, details=[
            {"loc": ["body", "context"], "msg": exc.message, "type": "value_error"}]) from None
    return PolicyDecisionPublic(**decision.explain(), context=context or {})
