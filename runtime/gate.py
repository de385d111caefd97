"""The governance gate every connector action passes: a pipeline of small stages, in this order.

0. stop: a run whose cancellation was requested, or whose ownership this execution
   lost, makes no further call (:class:`RunCancelled`, :class:`ExecutionFenced`);
1. grants: the action's scope must be among the workflow's declared grants (the static
   ceiling; :class:`PermissionDenied`);
2. policy: the Cedar policies decide allow, deny (:class:`PolicyDenied`, naming the
   policy and its reason) or escalate, on a context the action's builder makes from the
   arguments and facts the engine reads itself (see :mod:`runtime.facts`). The decision
   is audited as its own ``policy.decision`` event, before and apart from the call's;
3. approval: an escalation (or an action declared ``requires_approval``, or a step's own
   :meth:`Gate.require_approval`) pauses the run with a LangGraph interrupt until enough
   distinct people decide; the decision is bound to a hash of the exact arguments. An
   approver may edit the arguments within policy: the edited call is decided by the
   policies again (with today's facts) before it executes in the proposal's place;
4. replay: a call whose identity already has a record returns the recorded result
   instead of calling again, after checking that the record is of the same action and
   request (:class:`NonDeterministicReplay` otherwise). Such a call was decided when it
   executed, so the policy and approval stages are not asked again (today's facts could
   otherwise refuse to hand back what already happened);
5. execute: the connector's HTTP call, retried in the connector layer, carrying the
   deterministic ``Idempotency-Key``;
6. record: the call (request and response digests, no payloads, no secrets) is appended
   to the audit chain with the call record, in one transaction that is committed before
   the step goes on. Once the external call has started, the record is written even if
   the step is being cancelled.

A call's identity is (run, LangGraph task, position): the task is the full
checkpoint namespace of the LangGraph task (stable when the same checkpoint is
executed again, distinct for every ``Send`` branch) and the position counts the
calls of one execution attempt of that task from 0 (a node retried by its
``RetryPolicy`` starts again at 0, so it replays what its first attempt did).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from langgraph.config import get_config
from langgraph.runtime import get_runtime
from langgraph.types import interrupt
from opentelemetry import trace
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from runtime import audit, metrics
from runtime.approval import ApprovalDecision
from runtime.connectors.base import ActionSpec, end_call, start_call
from runtime.errors import ApprovalRejected, NonDeterministicReplay, PermissionDenied, PolicyDenied, StewardError
from runtime.facts import Facts
from runtime.journal import Journal, Recorded
from runtime.models import utcnow
from runtime.policy import Policies, PolicyDecision, PolicyRequest
from runtime.quality import RecordChecks, Screening
from runtime.quarantine import QuarantineStatus, quarantine_rows
from runtime.store import release_slot
from runtime.telemetry import fail_span, tracer

if TYPE_CHECKING:
    from runtime.connectors.base import Connector

APPROVAL = "steward.approval"
RECORD = "record"
SCREEN = "screen"
T = TypeVar("T")


def idempotency_key(run_id: str, task_ns: str, position: int) -> str:
    """Deterministic per task and position: the same on every re-execution and retry, never per attempt."""
    return hashlib.sha256(f"{run_id}|{task_ns}|{position}".encode()).hexdigest()[:48]


@dataclass(frozen=True)
class CallSite:
    """Where a call is made: the LangGraph task (namespace, id, attempt), node and superstep, and its position."""

    task_ns: str
    task_id: str
    attempt: int
    node: str
    node_path: str
    superstep: int


async def finish_then_cancel(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even when the caller is cancelled meanwhile; then let the
    cancellation through. A call that reached the outside world is always recorded."""
    inner = asyncio.ensure_future(awaitable)
    cancelled = False
    while not inner.done():
        try:
            await asyncio.wait({inner})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not inner.cancelled():
            inner.exception()  # retrieved: the cancellation is what the caller sees
        raise asyncio.CancelledError
    return inner.result()


class Gate:
    """One run's gate; built by the executor for each execution of the graph."""

    def __init__(self, *, journal: Journal, grants: frozenset[str], policies: Policies,
                 step_span: Callable[[str, str], Any], clock: Callable[[], datetime] = utcnow,
                 compensating: bool = False, checks: Mapping[str, RecordChecks] | None = None) -> None:
        self.journal = journal
        self.run = journal.run
        self.grants = grants
        self.checks = dict(checks or {})
        self.policies = policies
        self.clock = clock
        self.compensating = compensating  # only the engine's compensation of the run's own effects sets it
        self._positions: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._step_span = step_span

    def _site(self) -> CallSite:
        """The LangGraph task calling right now."""
        try:
            info = get_runtime().execution_info
            meta = get_config()["metadata"]
        except (RuntimeError, KeyError, AttributeError):
            raise StewardError("connector actions, records and approvals can only be used inside a workflow node") \
                from None
        ns = info.checkpoint_ns
        node_path = "/".join(part.split(":")[0] for part in ns.split("|") if ":" in part) or meta["langgraph_node"]
        return CallSite(task_ns=ns, task_id=info.task_id, attempt=info.node_attempt, node=meta["langgraph_node"],
                        node_path=node_path, superstep=int(meta.get("langgraph_step", 0)))

    def _position(self, site: CallSite) -> int:
        slot = (site.task_ns, site.attempt)
        position = self._positions[slot]
        self._positions[slot] += 1
        return position

    def _enter_step(self, site: CallSite) -> Any:
        """The step's span as parent; the step's start is journaled if the executor has not seen it yet."""
        span = self._step_span(site.task_id, site.node)
        self.journal.step_started(task_id=site.task_id, node=site.node)
        return trace.set_span_in_context(span)

    def _replay(self, site: CallSite, position: int, key: str, action: str, request_digest: str) -> Recorded | None:
        recorded = self.journal.recorded.get(key)
        if recorded is None:
            return None
        if recorded.action != action or recorded.request_digest != request_digest:
            what = "another action" if recorded.action != action else "the same action with other arguments"
            if recorded.action == action and action.startswith(f"{RECORD}:model:"):
                what = "the same model question with another prompt"
            raise NonDeterministicReplay(
                f"node {site.node!r} proposed {what} at call position {position} than its earlier execution "
                f"recorded (recorded {recorded.action}, proposed {action}): a step must make the same calls "
                f"in the same order when it runs again; wrap anything that varies in runtime.context.record(...)",
                details={"node": site.node, "position": position, "recorded_action": recorded.action,
                         "proposed_action": action},
            )
        return recorded

    async def require_approval(self, *, action: str, arguments: dict[str, Any], reason: str,
                               roles: tuple[str, ...] = (), approvals: int = 1,
                               policy: dict[str, Any] | None = None, editable: tuple[str, ...] = ()) -> ApprovalDecision:
        """Pause until ``approvals`` distinct people (of ``roles``, when a policy names them) approve exactly
        ``arguments``; raise :class:`ApprovalRejected` on a rejection.

        >>> await runtime.context.request_approval(action="pricing.bulk_change", arguments=changes,
        ...                                        reason="a price moves by more than 10 %")
        """
        site = self._site()
        self.journal.check_stop()
        arguments_hash = audit.digest({"action": action, "arguments": arguments})
        request = {
            "kind": APPROVAL,
            "action": action,
            "arguments": audit.scrub(arguments),
            "arguments_hash": arguments_hash,
            "reason": reason,
            "node": site.node,
            "roles": list(roles),
            "approvals": approvals,
            "policy": policy,
            "editable": list(editable),  # a connector call's: which arguments an approver may change
        }
        while True:
            # On re-execution interrupt() hands back the recorded decision; a decision that was made for
            # other arguments, or by fewer people than are needed now, does not count, so the loop asks again.
            answer = interrupt(request)
            try:
                decision = ApprovalDecision.model_validate(answer)
            except ValidationError:
                continue
            if arguments_hash != decision.arguments_hash and not (editable and decision.edited_from == arguments_hash):
                continue
            if not decision.approved:
                raise ApprovalRejected(
                    f"{action} was rejected by {decision.approver}: {decision.comment or 'no comment'}",
                    approval_id=decision.approval_id,
                    decided_by=decision.approver,
                    comment=decision.comment,
                )
            if decision.edited_from is None and len(decision.approved_by) < approvals:
                continue  # an edited call is counted against what the policies say of it (see call)
            return decision

    async def record(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once and record its JSON-safe result; a re-execution of the
        step gets the recorded result without calling ``fn`` again (see :meth:`StepContext.record`)."""
        site = self._site()
        self.journal.check_stop()
        position = self._position(site)
        key = idempotency_key(self.run.id, site.task_ns, position)
        action = f"{RECORD}:{name}"
        request_digest = audit.digest(to_jsonable_python({"args": args, "kwargs": kwargs}, fallback=str))
        recorded = self._replay(site, position, key, action, request_digest)
        base = {"action": action, "node": site.node, "position": position, "idempotency_key": key}
        journal = self.journal
        self._enter_step(site)
        if recorded is not None:
            await journal.commit([journal.event("record.replayed", {
                **base, "response_digest": audit.digest(recorded.response)}, trusted=True)])
            return recorded.response

        async def run_and_record() -> Any:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            value = to_jsonable_python(result, fallback=str)
            value_json = audit.canonical_json(value)
            await journal.commit(
                [journal.event("record.made", {**base, "request_digest": request_digest,
                                               "response_digest": audit.sha256(value_json)}, trusted=True)],
                ops=[journal.record_call({
                    "idempotency_key": key, "run_id": self.run.id, "node": site.node_path,
                    "superstep": site.superstep, "position": position, "action": action, "effect": RECORD,
                    "request_digest": request_digest, "response": value, "attempts": 1,
                }, value_json)],
                remember={key: Recorded(action, request_digest, value)},
            )
            return value

        return await finish_then_cancel(run_and_record())

    async def screen(self, kind: str, records: list[dict[str, Any]]) -> Screening:
        """Judge ``records`` by the workflow's checks for ``kind`` and quarantine those that fail (see
        :meth:`StepContext.screen`). A batch with failures is recorded with its quarantine items in one
        transaction: the step run again gets the same answer and files nothing twice. A batch that
        passes whole is recorded with the run's next write (it files nothing, so nothing waits for it)."""
        site = self._site()
        checks = self.checks.get(kind)
        if checks is None:
            declared = ", ".join(sorted(self.checks)) or "none"
            raise StewardError(f"workflow {self.run.workflow!r} declares no data-quality checks for {kind!r} "
                               f"records (declared: {declared}); add RecordChecks({kind!r}, ...) to its checks")
        batch = to_jsonable_python(list(records), fallback=str)
        if not all(isinstance(record, dict) for record in batch):
            raise StewardError(f"screen({kind!r}, records): every record must be a JSON object (a dict)")
        self.journal.check_stop()
        position = self._position(site)
        key = idempotency_key(self.run.id, site.task_ns, position)
        action = f"{SCREEN}:{kind}"
        try:
            request_digest = audit.digest(batch)
        except TypeError as exc:  # orjson: e.g. an integer beyond 64 bits, which no JSON column keeps exactly
            raise StewardError(f"screen({kind!r}, records): a record cannot be stored as JSON ({exc}); pass "
                               "such values (large ids) as strings") from None
        recorded = self._replay(site, position, key, action, request_digest)
        base = {"kind": kind, "node": site.node, "position": position, "records": len(batch)}
        journal = self.journal
        self._enter_step(site)
        if recorded is not None:
            return _screening(batch, recorded.response)
        failures = checks.failures(batch)
        failing = [(index, batch[index], reasons) for index, reasons in enumerate(failures) if reasons]
        if not failing:  # nothing to file: recorded with the run's next write, so a rerun replays it
            response: dict[str, Any] = {"items": []}
            journal.defer(journal.event("records.screened", {**base, "passed": len(batch), "items": []},
                                        trusted=True),
                          op=journal.record_call({
                              "idempotency_key": key, "run_id": self.run.id, "node": site.node_path,
                              "superstep": site.superstep, "position": position, "action": action, "effect": SCREEN,
                              "request_digest": request_digest, "response": response, "attempts": 1},
                              audit.canonical_json(response)))
            journal.recorded[key] = Recorded(action, request_digest, response)
            return Screening(passed=batch)
        event = journal.event("records.screened", dict(base), trusted=True)
        outcome: dict[str, Any] = {}
        raw = journal.db.raw

        def file_and_record(cursor: Any) -> None:
            items = quarantine_rows(cursor, raw, run=self.run, node=site.node_path, kind=kind, failing=failing)
            response = {"items": [{"index": item["index"], "id": item["id"], "status": item["status"],
                                   "reasons": reasons} for item, (_, _, reasons) in zip(items, failing, strict=True)]}
            for item, (_, _, reasons) in zip(items, failing, strict=True):
                item["checks"] = sorted({reason["check"] for reason in reasons})  # the audit names no values
            passed = len(batch) - sum(1 for item in items if item["status"] != QuarantineStatus.released.value)
            event["data"] = {**base, "passed": passed, "items": items}
            response_json = audit.canonical_json(response)
            journal.record_call({
                "idempotency_key": key, "run_id": self.run.id, "node": site.node_path, "superstep": site.superstep,
                "position": position, "action": action, "effect": SCREEN, "request_digest": request_digest,
                "response": response, "attempts": 1}, response_json)(cursor)
            outcome["response"] = response

        await journal.commit([event], ops=[file_and_record])
        journal.recorded[key] = Recorded(action, request_digest, outcome["response"])
        return _screening(batch, outcome["response"])

    async def call(self, spec: ActionSpec, arguments: dict[str, Any],
                   invoke: Callable[[dict[str, Any]], Awaitable[Any]], *,
                   connector: Connector | None = None) -> Any:
        site = self._site()
        self.journal.check_stop()
        position = self._position(site)
        key = idempotency_key(self.run.id, site.task_ns, position)
        attrs = {
            "steward.run_id": self.run.id,
            "steward.workflow": self.run.workflow,
            "steward.version": self.run.version,
            "steward.action": spec.name,
            "steward.node": site.node,
        }
        call = {
            "action": spec.name,
            "scope": spec.scope,
            "effect": spec.effect.value,
            "node": site.node,
            "position": position,
            "idempotency_key": key,
        }
        parent = self._enter_step(site)
        with tracer().start_as_current_span("steward.gate", context=parent, attributes=attrs,
                                            set_status_on_exception=False) as span:  # fail_span sets it
            await self._check_grant(spec, span, call)
            request_digest = audit.digest(arguments)
            recorded = self._replay(site, position, key, spec.name, request_digest)
            if recorded is not None:
                return await self._replayed(spec, span, call, recorded)
            verdict = await self._authorize(spec, arguments, connector, key, span, call)
            approval = await self._approve(spec, arguments, verdict)
            executed = arguments
            if approval is not None and approval.edited_from is not None:
                executed = dict(approval.arguments)
                verdict = await self._edited(spec, executed, approval, connector, key, span, call)
            span.set_attribute("steward.decision", "allow")
            allowed = {**call, "decision": "allow", "rule": f"grant:{spec.scope}", "policies": list(verdict.policies)}
            if approval is not None:
                allowed |= {"approval_id": approval.approval_id, "approved_by": approval.approved_by}
            if executed is not arguments:
                allowed |= {"edited": True, "executed_digest": audit.digest(executed)}
            self.journal.check_stop()
            metrics.gate_decision(self.run, action=spec.name, decision="allow")
            return await finish_then_cancel(
                self._execute(spec, lambda: invoke(executed), key, site, position, allowed, request_digest, attrs))

    async def _edited(self, spec: ActionSpec, executed: dict[str, Any], approval: ApprovalDecision,
                      connector: Connector | None, key: str, span: Any, call: dict[str, Any]) -> PolicyDecision:
        """An approver edited the call: the policies decide again on what will execute, with the facts
        as they are now (a denial fails the call as any denial does). An escalation must already be
        met by the people who approved the edit; the call's identity and its replay stay the step's
        proposal, so a step run again gets the recorded result of the edited call."""
        verdict = await self._authorize(spec, executed, connector, key, span, call)
        needed = max(verdict.approvals, 1) if verdict.outcome == "escalate" else 0
        if len(approval.approved_by) < needed:
            raise ApprovalRejected(
                f"{spec.name} as edited now needs {needed} approvals by policy ({', '.join(verdict.policies)}) "
                f"and has {len(approval.approved_by)}; the step may propose it again",
                approval_id=approval.approval_id, decided_by=approval.approver, comment=approval.comment)
        return verdict

    async def _check_grant(self, spec: ActionSpec, span: Any, call: dict[str, Any]) -> None:
        """Stage 1: the scope must be among the workflow's grants."""
        if spec.scope in self.grants:
            return
        span.set_attribute("steward.decision", "deny")
        fail_span(span, PermissionDenied.code, f"scope {spec.scope!r} is not granted")
        metrics.gate_decision(self.run, action=spec.name, decision="deny")
        await self.journal.commit([self.journal.event("gate.decision", {**call, "decision": "deny",
                                                                        "rule": "no grant"})])
        raise PermissionDenied(
            f"workflow {self.run.workflow!r} may not call {spec.name}: scope {spec.scope!r} is not granted; "
            f"add it to the workflow's grants"
        )

    async def _authorize(self, spec: ActionSpec, arguments: dict[str, Any], connector: Connector | None, key: str,
                         span: Any, call: dict[str, Any]) -> PolicyDecision:
        """Stage 2: the policies decide on the call's resource and context. A denial is written at once
        (and gives back any counter slot the context took); any other decision goes with the call's record."""
        journal = self.journal
        facts = None
        context: dict[str, Any] = {}
        if spec.context is not None:  # most actions declare none: no facts to gather on the hot path
            facts = Facts.of_call(journal=journal, connector=connector, action=spec.name, idempotency_key=key,
                                  compensating=self.compensating, clock=self.clock)
            context = await spec.context(facts, arguments)
        verdict = self.policies.evaluate(PolicyRequest(
            workflow=self.run.workflow, version=self.run.version, action=spec.name,
            resource=spec.policy_resource(arguments), context=context))
        span.set_attributes({"steward.policy.outcome": verdict.outcome, "steward.policy.ids": list(verdict.policies),
                             "steward.policy.hash": verdict.policy_hash})
        event = journal.event("policy.decision", {**call, **verdict.explain()})
        if verdict.outcome != "deny":
            journal.defer(event)
            return verdict
        span.set_attribute("steward.decision", "deny")
        fail_span(span, PolicyDenied.code, verdict.reason)
        metrics.gate_decision(self.run, action=spec.name, decision="policy_deny")
        raw = journal.db.raw
        taken = facts.taken if facts is not None else []
        await journal.commit([event], ops=[lambda cursor, k=k: release_slot(cursor, raw, k) for k in taken])
        named = ", ".join(verdict.policies) or "no policy permits it"
        raise PolicyDenied(f"{spec.name} is denied by policy ({named}): {verdict.reason}",
                           details=verdict.explain())

    async def _approve(self, spec: ActionSpec, arguments: dict[str, Any],
                       verdict: PolicyDecision) -> ApprovalDecision | None:
        """Stage 3: an escalation (or an action that always needs one) waits for its approvers."""
        if verdict.outcome == "escalate":
            metrics.gate_decision(self.run, action=spec.name, decision="escalate")
            return await self.require_approval(action=spec.name, arguments=arguments, reason=verdict.reason,
                                               roles=verdict.roles, approvals=verdict.approvals,
                                               policy=verdict.explain(), editable=spec.editable)
        if spec.requires_approval:
            return await self.require_approval(action=spec.name, arguments=arguments,
                                               reason=f"{spec.name} always requires approval", editable=spec.editable)
        return None

    async def _replayed(self, spec: ActionSpec, span: Any, call: dict[str, Any], recorded: Recorded) -> Any:
        """Stage 4: a call that has a record hands back what came back the first time."""
        span.set_attribute("steward.decision", "allow")
        span.set_attribute("steward.replayed", True)
        metrics.gate_decision(self.run, action=spec.name, decision="replay")
        await self.journal.commit([self.journal.event("connector.replayed", {
            **call, "decision": "allow", "rule": f"grant:{spec.scope}",
            "response_digest": audit.digest(recorded.response)})])
        return recorded.response

    async def _execute(self, spec: ActionSpec, invoke: Callable[[], Awaitable[Any]], key: str, site: CallSite,
                       position: int, allowed: dict[str, Any], request_digest: str, attrs: dict[str, Any]) -> Any:
        journal = self.journal
        with tracer().start_as_current_span(f"steward.connector {spec.name}", attributes=attrs,
                                            set_status_on_exception=False) as call_span:  # fail_span sets it
            call, token = start_call(key if spec.effect.has_side_effect else None)
            started = time.perf_counter()
            try:
                response = await invoke()
            except StewardError as exc:
                fail_span(call_span, exc.code, exc.message)
                metrics.connector_call(spec.name, outcome=exc.code, attempts=call.attempts,
                                       seconds=time.perf_counter() - started)
                await journal.commit([journal.event("connector.failed", {
                    **allowed, "request_digest": request_digest, "error": exc.code, "message": exc.message,
                    "status": call.last_status, "attempts": call.attempts,
                })])
                raise
            except Exception as exc:  # not the connector's own refusal (a response it could not decode, a bug)
                call_span.record_exception(exc)
                fail_span(call_span, "unexpected_error", type(exc).__name__)
                metrics.connector_call(spec.name, outcome="unexpected_error", attempts=call.attempts,
                                       seconds=time.perf_counter() - started)
                await journal.commit([journal.event("connector.failed", {
                    **allowed, "request_digest": request_digest, "error": "unexpected_error",
                    "message": f"{type(exc).__name__}: {exc}"[:500], "outcome": "unknown",
                    "status": call.last_status, "attempts": call.attempts,
                })])
                raise
            finally:
                end_call(token)
            call_span.set_attribute("steward.attempts", call.attempts)
            metrics.connector_call(spec.name, outcome="ok", attempts=call.attempts,
                                   seconds=time.perf_counter() - started)
        response_json = audit.canonical_json(response)  # digested and stored: serialise once
        await journal.commit(
            [journal.event("connector.call", {
                **allowed, "request_digest": request_digest, "response_digest": audit.sha256(response_json),
                "status": call.last_status, "attempts": call.attempts,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }, trusted=True)],
            ops=[journal.record_call({
                "idempotency_key": key, "run_id": self.run.id, "node": site.node_path, "superstep": site.superstep,
                "position": position, "action": spec.name, "effect": spec.effect.value,
                "request_digest": request_digest, "response": response, "attempts": call.attempts,
            }, response_json)],
            remember={key: Recorded(spec.name, request_digest, response)},
        )
        return response


def _screening(batch: list[dict[str, Any]], response: dict[str, Any]) -> Screening:
    """A screening's answer from its record: the failing records' items, the rest passed."""
    held = {item["index"]: item for item in response["items"] if item["status"] != QuarantineStatus.released.value}
    released = [{"index": i["index"], "id": i["id"], "reasons": i["reasons"]} for i in response["items"]
                if i["status"] == QuarantineStatus.released.value]
    return Screening(passed=[record for index, record in enumerate(batch) if index not in held],
                     quarantined=[held[index] for index in sorted(held)], released=released)
