"""The governance gate every connector action passes, in this order:

1. permission: the action's scope must be granted to the workflow;
2. approval: an action declared ``requires_approval`` (or a step's own
   :meth:`Gate.require_approval`) pauses the run with a LangGraph interrupt until a
   person decides; the decision is bound to a hash of the exact arguments;
3. replay: a call whose idempotency key already has a recorded result returns it
   instead of calling again (a node re-executed after a crash or a resume);
4. execution: the connector's HTTP call, retried in the connector layer, carrying
   the deterministic ``Idempotency-Key`` (run, node, superstep, call position);
5. audit: the decision and the call (request and response digests, no payloads,
   no secrets) are appended to the audit chain with the call record, in one
   transaction that is committed before the step goes on.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.config import get_config
from langgraph.types import interrupt
from opentelemetry import trace

from runtime import audit
from runtime.connectors.base import ActionSpec, end_call, start_call
from runtime.errors import ApprovalRejected, PermissionDenied, StewardError
from runtime.journal import Journal
from runtime.telemetry import tracer

APPROVAL = "steward.approval"


def idempotency_key(run_id: str, node_path: str, superstep: int, position: int) -> str:
    """Deterministic per call site and position: the same on every re-execution, never per attempt."""
    return hashlib.sha256(f"{run_id}|{node_path}|{superstep}|{position}".encode()).hexdigest()[:48]


class Gate:
    """One run's gate; built by the executor for each execution of the graph."""

    def __init__(self, *, journal: Journal, grants: frozenset[str], step_span: Callable[[str, str], Any]) -> None:
        self.journal = journal
        self.run = journal.run
        self.grants = grants
        self._positions: defaultdict[str, int] = defaultdict(int)
        self._step_span = step_span

    def _task(self) -> tuple[str, str, int, str]:
        """(task namespace, node path, superstep, node) of the LangGraph task calling right now."""
        try:
            meta = get_config()["metadata"]
        except RuntimeError:
            raise StewardError("connector actions and approvals can only be used inside a workflow node") from None
        ns = meta.get("langgraph_checkpoint_ns", "")
        node_path = "/".join(part.split(":")[0] for part in ns.split("|")) or meta["langgraph_node"]
        return ns, node_path, int(meta.get("langgraph_step", 0)), meta["langgraph_node"]

    def _enter_step(self, task_ns: str, node: str) -> Any:
        """The step's span as parent; the step's start is journaled if the executor has not seen it yet."""
        task_id = task_ns.split("|")[-1].partition(":")[2] or task_ns
        span = self._step_span(task_id, node)
        self.journal.step_started(task_id=task_id, node=node)
        return trace.set_span_in_context(span)

    async def require_approval(self, *, action: str, arguments: dict[str, Any], reason: str) -> dict[str, Any]:
        """Pause until a person approves exactly ``arguments``; raise :class:`ApprovalRejected` on rejection.

        >>> await runtime.context.request_approval(action="pricing.bulk_change", arguments=changes,
        ...                                        reason="a price moves by more than 10 %")
        """
        _, _, _, node = self._task()
        arguments_hash = audit.digest({"action": action, "arguments": arguments})
        request = {
            "kind": APPROVAL,
            "action": action,
            "arguments": audit.scrub(arguments),
            "arguments_hash": arguments_hash,
            "reason": reason,
            "node": node,
        }
        while True:
            # On re-execution interrupt() hands back the recorded decision; a decision that was
            # made for other arguments does not count, so the loop asks again.
            decision = interrupt(request)
            if not isinstance(decision, dict) or decision.get("arguments_hash") != arguments_hash:
                continue
            if decision["decision"] == "reject":
                raise ApprovalRejected(
                    f"{action} was rejected by {decision['decided_by']}: {decision.get('comment') or 'no comment'}",
                    approval_id=decision["approval_id"],
                    decided_by=decision["decided_by"],
                    comment=decision.get("comment") or "",
                )
            return decision

    async def call(self, spec: ActionSpec, arguments: dict[str, Any], invoke: Callable[[], Awaitable[Any]]) -> Any:
        task_ns, node_path, superstep, node = self._task()
        position = self._positions[task_ns]
        self._positions[task_ns] += 1
        key = idempotency_key(self.run.id, node_path, superstep, position)
        attrs = {
            "steward.run_id": self.run.id,
            "steward.workflow": self.run.workflow,
            "steward.version": self.run.version,
            "steward.action": spec.name,
            "steward.node": node,
        }
        decision = {
            "action": spec.name,
            "scope": spec.scope,
            "effect": spec.effect.value,
            "node": node,
            "position": position,
            "idempotency_key": key,
        }
        journal = self.journal
        parent = self._enter_step(task_ns, node)
        with tracer().start_as_current_span("steward.gate", context=parent, attributes=attrs) as span:
            if spec.scope not in self.grants:
                span.set_attribute("steward.decision", "deny")
                await journal.commit([journal.event("gate.decision", {**decision, "decision": "deny",
                                                                      "rule": "no grant"})])
                raise PermissionDenied(
                    f"workflow {self.run.workflow!r} may not call {spec.name}: scope {spec.scope!r} is not granted; "
                    f"add it to the workflow's grants"
                )
            span.set_attribute("steward.decision", "allow")
            allowed = {**decision, "decision": "allow", "rule": f"grant:{spec.scope}"}
            if spec.requires_approval:
                await self.require_approval(
                    action=spec.name, arguments=arguments, reason=f"{spec.name} always requires approval"
                )

            if key in journal.recorded:
                span.set_attribute("steward.replayed", True)
                response = journal.recorded[key]
                await journal.commit([journal.event("connector.replayed",
                                                    {**allowed, "response_digest": audit.digest(response)})])
                return response

            request_digest = audit.digest(arguments)
            with tracer().start_as_current_span(f"steward.connector {spec.name}", attributes=attrs) as call_span:
                call, token = start_call(key if spec.effect.has_side_effect else None)
                started = time.perf_counter()
                try:
                    response = await invoke()
                except StewardError as exc:
                    call_span.set_attribute("steward.error", exc.code)
                    await journal.commit([journal.event("connector.failed", {
                        **allowed, "request_digest": request_digest, "error": exc.code, "message": exc.message,
                        "status": call.last_status, "attempts": call.attempts,
                    })])
                    raise
                finally:
                    end_call(token)
                call_span.set_attribute("steward.attempts", call.attempts)
            response_json = audit.canonical_json(response)  # digested and stored: serialise once
            await journal.commit(
                [journal.event("connector.call", {
                    **allowed, "request_digest": request_digest, "response_digest": audit.sha256(response_json),
                    "status": call.last_status, "attempts": call.attempts,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                }, trusted=True)],
                ops=[journal.record_call({
                    "idempotency_key": key, "run_id": self.run.id, "node": node_path, "superstep": superstep,
                    "position": position, "action": spec.name, "effect": spec.effect.value,
                    "request_digest": request_digest, "response": response, "attempts": call.attempts,
                }, response_json)],
            )
            return response
