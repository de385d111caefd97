"""Approval commands: a person decides; the run resumes through the engine's port.

>>> approval = await decide(steward, approval_id="a1…", decision="approve", actor="pricing.manager",
...                         comment="margin ok")
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from opentelemetry.trace import Link
from sqlalchemy import update
from sqlalchemy.orm import Session

from approvals.models import ApprovalRequest, ApprovalStatus, User
from approvals import notifications, users
from approvals.users import READ_ONLY_ROLES
from approvals.store import get_approval, list_approvals
from runtime import audit
from runtime import store as runtime_store
from runtime.errors import (Conflict, EditDenied, Forbidden, InputInvalid, PolicyContextInvalid,
                            SeparationOfDuties)
from runtime.connectors.base import find_action
from runtime.facts import Facts
from runtime.policy import PolicyDecision, PolicyRequest
from runtime.models import RunStatus, utcnow
from runtime.telemetry import current_trace_id, run_root, tracer


async def decide(steward: Any, *, approval_id: str, decision: str, actor: str, comment: str = "",
                 arguments_hash: str | None = None, check_roles: bool = False, expired_at: datetime | None = None,
                 notify: tuple[str, ...] = (), arguments: dict[str, Any] | None = None) -> ApprovalRequest:
    """Record a person's decision; when the run has no undecided request left, it is queued to resume.

    A request that needs several people (a policy's ``@approvals``) counts each approver once (the same
    person again is a :class:`Conflict`) and is approved at the last one needed; a rejection decides it.
    Whoever started the run may reject it but never approve it (:class:`SeparationOfDuties`, audited as
    ``approval.sod_violation``); so may the workflow's owner (the user with the owner's email) when the
    policy says ``@separate("owner")``. With ``arguments_hash`` (what the decider was shown), a request whose
    arguments are no longer those is a :class:`Conflict`: nobody approves something other than what
    they saw. With ``check_roles`` (every person's entry point: the API, the inbox), a request that
    names roles (a policy's ``@escalate``) is decided only by someone holding one of them now
    (:class:`Forbidden`, audited as ``authz.denied``); engine code that vouches for the person leaves it
    off. With ``expired_at`` (the SLA sweep's now), the rejection is the request's expiry: refused
    (:class:`Conflict`) unless it has expired by then, audited also as ``approval.expired`` and, with
    ``notify`` (channels: ``webhook``, ``email``), reported to the workflow's owner and backup.

    With ``arguments`` (an approval only, with the ``arguments_hash`` shown), the person approves the
    call as edited: see :func:`check_edit`. The request then proposes the edited call (the step's
    proposal is kept), earlier approvals of other arguments no longer count, and who must approve and
    how many are what the policies say of the edited call; audited as ``approval.edited`` before the
    decision.

    One transaction, locks in the engine's order: the run's row, then the approval, then the audit chain."""
    if decision not in ("approve", "reject"):
        raise InputInvalid(f"decision must be 'approve' or 'reject', not {decision!r}",
                           details=[{"loc": ["body", "decision"], "msg": "must be approve or reject"}])
    status = ApprovalStatus.approved if decision == "approve" else ApprovalStatus.rejected
    if arguments is not None and (decision != "approve" or arguments_hash is None):
        raise InputInvalid("edited arguments go with an approval and the arguments_hash you were shown",
                           details=[{"loc": ["body", "arguments"], "type": "value_error",
                                     "msg": "only with decision approve and arguments_hash"}])
    edit = None

    def record(session: Session) -> ApprovalRequest:
        run_id = get_approval(session=session, approval_id=approval_id).run_id
        run = runtime_store.lock_run(session=session, run_id=run_id)
        approval = get_approval(session=session, approval_id=approval_id)
        session.refresh(approval)  # as it is now that the run is locked (deciders of one run queue on it)
        if expired_at is not None and (approval.expires_at is None or approval.expires_at > expired_at):
            raise Conflict(f"approval {approval_id} has not expired")
        if approval.status != ApprovalStatus.pending:
            raise Conflict(
                f"approval {approval_id} is already {approval.status.value}"
                + (f" by {approval.decided_by}" if approval.decided_by else "")
                + "; a decision cannot be changed"
            )
        _may_decide(session, approval, actor=actor, decision=decision, check_roles=check_roles)
        if arguments_hash is not None and arguments_hash != approval.arguments_hash:
            raise Conflict(f"approval {approval_id} no longer proposes the arguments you were shown (they were "
                           f"{arguments_hash[:12]}…, they are {approval.arguments_hash[:12]}…); read it again and "
                           "decide on what it proposes now", details={"arguments_hash": approval.arguments_hash})
        values: dict[str, Any] = {}
        edited = edit is not None and edit.arguments_hash != approval.arguments_hash
        if edited:
            if approval.arguments_hash != edit.base_hash:
                raise Conflict(f"approval {approval_id} changed while your edit was checked; read it again",
                               details={"arguments_hash": approval.arguments_hash})
            values = edit.applied(approval, actor=actor)  # who may approve the edited call: the policies' word on it
            _may_decide(session, approval, actor=actor, decision=decision, check_roles=check_roles,
                        roles=values["roles"], separate=values["separate"])
        roles = values.get("roles", approval.roles)
        required = values.get("required_approvals", approval.required_approvals)
        approvers = [] if edited else list(approval.approvers or [])  # earlier ones approved other arguments
        if decision == "approve" and any(entry["approver"] == actor for entry in approvers):
            raise Conflict(f"{actor} has already approved {approval_id}; it needs "
                           f"{approval.required_approvals - len(approvers)} more approval(s) from other people")
        if decision == "approve":
            approvers.append({"approver": actor, "comment": comment, "at": utcnow().isoformat()})
            values["approvers"] = approvers
        counted = approvers
        if check_roles and roles:  # a vote counts while its person still holds the role
            needed = set(roles)
            counted = [e for e in approvers if users.roles_of(session=session, name=e["approver"]) & needed]
        complete = decision == "reject" or len(counted) >= required
        if complete:
            values |= {"status": status, "decided_by": actor, "comment": comment, "decided_at": utcnow()}
        result = session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == approval_id, ApprovalRequest.status == ApprovalStatus.pending)
            .values(**values)
        )
        session.refresh(approval)
        if result.rowcount != 1:
            raise Conflict(f"approval {approval_id} is already {approval.status.value}; a decision cannot be changed")
        attrs = {"steward.run_id": run.id, "steward.approval_id": approval_id, "steward.decision": decision}
        # In the decision's own trace (its HTTP request's), linked to the run's root span; the audit event
        # stays in the run's trace and names the decision's.
        root = run_root(run.trace_id, run.root_span_id)
        with tracer().start_as_current_span("steward.approval.decide", attributes=attrs,
                                            links=[Link(root)] if root is not None else None):
            if edited:
                audit.append(session, kind="approval.edited", actor=actor, run=run, trace_id=run.trace_id, data={
                    "approval_id": approval_id, "action": approval.action, "from_hash": edit.base_hash,
                    "arguments_hash": approval.arguments_hash, "proposed_hash": approval.proposed_arguments_hash,
                    "changed": edit.changed, "policy": edit.verdict.explain(), "roles": list(roles),
                    "required_approvals": required, "comment": comment})
            audit.append(session, kind="approval.decided", actor=actor, run=run, trace_id=run.trace_id, data={
                "approval_id": approval_id, "decision": decision, "comment": comment,
                "action": approval.action, "arguments_hash": approval.arguments_hash,
                "decision_trace_id": current_trace_id(), "approvals": len(approvers),
                "required_approvals": required, "complete": complete,
            })
            if expired_at is not None:
                recipients = notifications.owners(approval)
                audit.append(session, kind="approval.expired", actor=actor, run=run, trace_id=run.trace_id, data={
                    "approval_id": approval_id, "expires_at": approval.expires_at.isoformat(),
                    "recipients": recipients})
                if notify:
                    notifications.enqueue(session, kind="approval.expired", approval=approval, recipients=recipients,
                                          now=expired_at, data={"expires_at": approval.expires_at.isoformat()},
                                          channels=notify)
            undecided = list_approvals(session=session, run_id=run.id, status=ApprovalStatus.pending)
            if complete and not undecided and run.status == RunStatus.waiting_approval:
                steward.executor.queue_resume(session, run=run, actor=actor, reason="approval decided")
        return approval

    try:
        if arguments is not None:  # who may decide, before the edit is looked at (and the connector read)
            await steward.db.run(lambda s: _may_decide(s, get_approval(session=s, approval_id=approval_id), actor=actor,
                                                       decision=decision, check_roles=check_roles), read_only=True)
            edit = await check_edit(steward, approval_id=approval_id, arguments=arguments)
        approval = await steward.db.run(record)
    except EditDenied as denied:
        await steward.db.run(functools.partial(_edit_denied, approval_id=approval_id, actor=actor, denied=denied))
        raise
    except Forbidden as refused:
        await steward.db.run(functools.partial(_refused, approval_id=approval_id, actor=actor, refused=refused))
        raise
    steward.executor.wake()
    return approval


def _may_decide(session: Session, approval: ApprovalRequest, *, actor: str, decision: str, check_roles: bool,
                roles: list[str] | None = None, separate: list[str] | None = None) -> None:
    """Whether ``actor`` may take ``decision`` on ``approval`` (or, with ``roles`` and ``separate``, on it as
    an edit would make it): separation of duties, then the roles (with ``check_roles``). A request that
    names roles is decided by someone holding one; one that names none by a user holding a role that
    decides (not only compliance, operator or admin, which read), or by a token's person who has no
    user record (a token made for a name, which only the API knows)."""
    edited = roles is not None
    roles = list(approval.roles if roles is None else roles)
    separate = list(approval.separate or [] if separate is None else separate)
    what = f"request {approval.id}" + (" as edited" if edited else "")
    if decision == "approve" and actor == approval.requested_by:
        raise SeparationOfDuties(f"{actor} started run {approval.run_id} and so may not approve its {what}; "
                                 "another person with the right role must")
    if decision == "approve" and "owner" in separate and users.is_owner(session=session, name=actor,
                                                                        owner=approval.owner):
        raise SeparationOfDuties(f"{actor} owns workflow {approval.workflow}, and the policy that asks for {what} "
                                 "keeps its owner from approving it; another person with the right role must")
    if not check_roles:
        return
    held = users.roles_of(session=session, name=actor)
    if roles and not held & set(roles):
        raise Forbidden(f"{what} is for {' or '.join(roles)}, which {actor} is not"
                        f"{' (holds ' + ', '.join(sorted(held)) + ')' if held else ''}; an administrator "
                        f"gives the role with `steward users add NAME --role {roles[0]}`",
                        details={"roles": roles, "held": sorted(held)})
    if not roles and not held - READ_ONLY_ROLES and session.get(User, actor) is not None:
        raise Forbidden(f"{actor} holds no role that decides ({', '.join(sorted(held)) or 'none'}); a person with "
                        f"a deciding role decides {what}", details={"roles": [], "held": sorted(held)})


def _refused(session: Session, *, approval_id: str, actor: str, refused: Forbidden) -> None:
    """The attempt on record, in a transaction of its own (the decision's was rolled back)."""
    approval = get_approval(session=session, approval_id=approval_id)
    run = runtime_store.get_run(session=session, run_id=approval.run_id)
    kind = "approval.sod_violation" if isinstance(refused, SeparationOfDuties) else "authz.denied"
    audit.append(session, kind=kind, actor=actor, run=run, data={
        "approval_id": approval_id, "action": approval.action, "arguments_hash": approval.arguments_hash,
        "requested_by": approval.requested_by, "reason": refused.message})


async def comment(steward: Any, *, approval_id: str, actor: str, text: str) -> ApprovalRequest:
    """A remark on a request without deciding it (audited ``approval.commented``); a decided request
    takes no more remarks (:class:`Conflict`). Locks in the engine's order: run, request, audit."""
    text = text.strip()
    if not 1 <= len(text) <= 4000:
        raise InputInvalid("a comment is 1 to 4000 characters",
                           details=[{"loc": ["body", "comment"], "msg": "1 to 4000 characters", "type": "string_length"}])

    def record(session: Session) -> ApprovalRequest:
        run = runtime_store.lock_run(session=session, run_id=get_approval(session=session, approval_id=approval_id).run_id)
        approval = get_approval(session=session, approval_id=approval_id)
        session.refresh(approval)
        if approval.status != ApprovalStatus.pending:
            raise Conflict(f"approval {approval_id} is already {approval.status.value}; it takes no more comments")
        approval.comments = [*(approval.comments or []), {"by": actor, "text": text, "at": utcnow().isoformat()}]
        session.flush()
        audit.append(session, kind="approval.commented", actor=actor, run=run,
                     data={"approval_id": approval_id, "comment": text})
        return approval

    return await steward.db.run(record)


MAX_EDIT_BYTES = 64 * 1024


@dataclass(frozen=True)
class Edit:
    """An approver's edit of a request's call, checked by :func:`check_edit`."""

    base_hash: str
    """The request's arguments hash the edit was made on."""
    arguments: dict[str, Any]
    arguments_hash: str
    changed: list[str]
    verdict: PolicyDecision

    def applied(self, approval: ApprovalRequest, *, actor: str) -> dict[str, Any]:
        """The request's columns once it proposes the edited call: who approves and how many are the
        policies' word on it (an escalation's roles, else those the request already named)."""
        escalated = self.verdict.outcome == "escalate"
        explained = self.verdict.explain()
        required = max(self.verdict.approvals, 1) if escalated else 1
        values: dict[str, Any] = {
            "arguments": self.arguments, "arguments_hash": self.arguments_hash, "edited_by": actor,
            "edited_at": utcnow(),
            "roles": list(self.verdict.roles or approval.roles) if escalated else list(approval.roles),
            "required_approvals": required, "risk": "high" if required > 1 else "normal", "policy": explained,
            "separate": sorted(set(approval.separate or []) | set(explained.get("separate", []))),
        }
        if escalated:
            values["reason"] = self.verdict.reason[:2000]
            sla = self.verdict.sla_seconds
            # when it was opened, as the engine's clock said: half way to the deadline is the reminder
            opened = approval.remind_at - (approval.due_at - approval.remind_at) if approval.remind_at else approval.created_at
            if sla and opened + timedelta(seconds=sla) < approval.due_at:  # a stricter deadline
                span = timedelta(seconds=sla)
                values |= {"remind_at": opened + span / 2, "due_at": opened + span, "expires_at": opened + 2 * span}
        if approval.proposed_arguments_hash is None:  # the step's proposal, kept through every edit
            values |= {"proposed_arguments": approval.arguments, "proposed_arguments_hash": approval.arguments_hash}
        return values


async def check_edit(steward: Any, *, approval_id: str, arguments: dict[str, Any]) -> Edit | None:
    """Check an approver's edit of a pending request's call before it is accepted; None when it changes
    nothing. Only a connector call's arguments the action declares ``editable`` may change; the edit
    must have every argument of the right type, finite numbers and at most 64 KiB (:class:`InputInvalid`
    with field errors), act on the same record (the same policy resource and ``current`` read), and be
    allowed or escalated by the run's policies with today's facts (:class:`EditDenied`, 422, naming the
    policy). A counter the policies read is only looked at. The gate decides again on the edited call
    before it executes it."""
    def read(session: Session) -> tuple[ApprovalRequest, Any]:
        approval = get_approval(session=session, approval_id=approval_id)
        return approval, runtime_store.get_run(session=session, run_id=approval.run_id)

    approval, run = await steward.db.run(read, read_only=True)
    if approval.status != ApprovalStatus.pending:
        raise Conflict(f"approval {approval_id} is already {approval.status.value}; it can no longer be edited")
    connector, spec = find_action(steward.executor.connectors, approval.action)
    if spec is None or not approval.editable:
        raise InputInvalid(f"the arguments of request {approval_id} ({approval.action}) cannot be edited: only a "
                           "connector call whose action names editable arguments can; approve it as it is or "
                           "reject it with a reason", details=[
                               {"loc": ["body", "arguments"], "msg": "not editable", "type": "value_error"}])
    if audit.digest({"action": approval.action, "arguments": approval.arguments}) != approval.arguments_hash:
        raise InputInvalid(f"approval {approval_id} shows its arguments redacted (they hold secrets), so they "
                           "cannot be edited; approve or reject them as they are", details=[
                               {"loc": ["body", "arguments"], "msg": "redacted arguments", "type": "value_error"}])
    edited = _validated(connector, spec.method, arguments)
    fixed = sorted(k for k in {*edited, *approval.arguments}
                   if k not in approval.editable and edited.get(k) != approval.arguments.get(k))
    if fixed:
        raise InputInvalid(f"only {', '.join(approval.editable)} of {approval.action} may be edited; keep "
                           f"{', '.join(fixed)} as proposed", details=[
                               {"loc": ["body", "arguments", k], "msg": "not editable", "type": "value_error"}
                               for k in fixed])
    for name, same in (("resource", spec.policy_resource), ("record", spec.current)):
        try:
            moved = same is not None and same(edited) != same(approval.arguments)
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputInvalid(f"the edited arguments do not name the {name} of {approval.action}: {exc!r}",
                               details=[{"loc": ["body", "arguments"], "msg": str(exc), "type": "value_error"}]) from None
        if moved:
            raise InputInvalid(f"an edit changes values, not which record {approval.action} acts on", details=[
                {"loc": ["body", "arguments"], "msg": f"changes the {name}", "type": "value_error"}])
    arguments_hash = audit.digest({"action": approval.action, "arguments": edited})
    if arguments_hash == approval.arguments_hash:
        return None
    facts = Facts.hypothetical(db=steward.db, run_id=run.id, workflow=run.workflow, version=run.version,
                               connector=connector, action=approval.action, clock=steward.executor.clock)
    try:
        context = await spec.context(facts, edited) if spec.context is not None else {}
        policies = await steward.executor.policies.get(run.policy_hash)
        verdict = policies.evaluate(PolicyRequest(workflow=run.workflow, version=run.version, action=approval.action,
                                                  resource=spec.policy_resource(edited), context=context))
    except PolicyContextInvalid as exc:
        raise InputInvalid(exc.message, details=[
            {"loc": ["body", "arguments"], "msg": exc.message, "type": "value_error"}]) from None
    if verdict.outcome == "deny":
        named = ", ".join(verdict.policies) or "no policy permits it"
        raise EditDenied(f"{approval.action} as edited is denied by policy ({named}): {verdict.reason}; "
                           "edit it within policy, or approve or reject it as proposed", details=verdict.explain())
    changed = sorted(k for k in edited if edited[k] != approval.arguments.get(k))
    return Edit(base_hash=approval.arguments_hash, arguments=edited, arguments_hash=arguments_hash, changed=changed,
                verdict=verdict)


def _validated(connector: Any, method: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The edited arguments checked against the action's signature (every keyword, its type, nothing else)."""
    fn = inspect.unwrap(getattr(type(connector), method))
    hints = typing.get_type_hints(fn)
    fields = {name: (hints.get(name, Any), ... if p.default is inspect.Parameter.empty else p.default)
              for name, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    model = create_model(f"{connector.name}_{method}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    try:
        edited = model.model_validate(arguments).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        details = [{"loc": ["body", "arguments", *error["loc"]], "msg": error["msg"], "type": error["type"]}
                   for error in exc.errors(include_url=False, include_input=False)]
        raise InputInvalid(f"the edited arguments do not fit {connector.name}.{method}: "
                           + "; ".join(f"{'.'.join(map(str, d['loc'][2:]))}: {d['msg']}" for d in details),
                           details=details) from None
    problem = _unstorable(arguments)
    try:
        size = len(audit.canonical_json(edited))
    except TypeError as exc:  # orjson: an integer beyond 64 bits, or nesting deeper than 255
        problem = problem or f"a value JSON cannot store here ({exc}; send large numbers as strings)"
        size = 0
    if problem is None and size > MAX_EDIT_BYTES:
        problem = f"{size} bytes of JSON, more than {MAX_EDIT_BYTES}"
    if problem is not None:
        raise InputInvalid(f"the edited arguments hold {problem}", details=[
            {"loc": ["body", "arguments"], "msg": problem, "type": "value_error"}])
    return edited


def _unstorable(value: Any) -> str | None:
    """A value JSON cannot carry as it is: NaN or an infinity (stored as null, it would say nothing)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"a number that is not finite ({item})"
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _edit_denied(session: Session, *, approval_id: str, actor: str, denied: EditDenied) -> None:
    """A refused edit on record (the request is unchanged)."""
    approval = get_approval(session=session, approval_id=approval_id)
    run = runtime_store.get_run(session=session, run_id=approval.run_id)
    audit.append(session, kind="approval.edit_denied", actor=actor, run=run, data={
        "approval_id": approval_id, "action": approval.action, "arguments_hash": approval.arguments_hash,
        "policy": denied.details, "reason": denied.message})
