"""What a workflow node receives as ``runtime.context``: governed connectors and approvals.

>>> async def apply(state: State, runtime: Runtime[StepContext]) -> dict:
...     ctx = runtime.context
...     await ctx.request_approval(action="pricing.bulk_change", arguments={...}, reason="over 10 %")
...     return {"applied": [await ctx.pricing.set_price(sku="SKU-1001", currency="EUR", amount="115.00")]}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from runtime.models import utcnow
from runtime.structured import Structured, structured

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage

    from runtime.approval import ApprovalDecision
    from runtime.connectors import Connector, CrmConnector, PricingConnector
    from runtime.gate import Gate
    from runtime.quality import Screening

T = TypeVar("T", bound=BaseModel)


class StepContext:
    """The run's context: ``crm``, ``pricing`` (and any other connector by name), ``request_approval``, ``now``."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow: str,
        version: str,
        gate: Gate,
        connectors: Mapping[str, Connector],
        clock: Callable[[], datetime] = utcnow,
        models: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.version = version
        self._gate = gate
        self._connectors = {name: connector.bind(gate) for name, connector in connectors.items()}
        self._clock = clock
        self._models = dict(models or {})

    def connector(self, name: str) -> Connector:
        try:
            return self._connectors[name]
        except KeyError:
            known = ", ".join(sorted(self._connectors)) or "none"
            raise AttributeError(f"no connector named {name!r} in this run; configured: {known}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.connector(name)

    @property
    def crm(self) -> CrmConnector:
        return self.connector("crm")  # type: ignore[return-value]

    @property
    def pricing(self) -> PricingConnector:
        return self.connector("pricing")  # type: ignore[return-value]

    def now(self) -> datetime:
        return self._clock()

    def model(self, name: str) -> BaseChatModel:
        """The chat model configured as ``name``: the process's (``STEWARD_MODELS``) or else the workflow's
        default (its ``models``)."""
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise AttributeError(f"no model named {name!r} in this run; configured: {known}") from None

    async def structured(self, name: str, model: BaseChatModel, messages: Sequence[BaseMessage],
                         schema: type[T], *, attempts: int = 3, min_confidence: float | None = None,
                         confidence: str | Callable[[T], float] | None = "confidence") -> Structured[T]:
        """Ask ``model`` for one JSON object matching ``schema``; each call is recorded (a step that runs
        again never asks again), an invalid answer is sent back with what was wrong up to ``attempts``
        times in all, and an answer that stays invalid or whose ``confidence`` (a field of ``schema``, or a
        function of the value) is below ``min_confidence`` goes to a person with the raw answers
        (see :mod:`runtime.structured`).

        >>> scored = await runtime.context.structured("lead_score", runtime.context.model("lead_scoring"),
        ...                                           [HumanMessage(prompt)], LeadScore, min_confidence=0.6)
        """
        return await structured(self._gate, name, model, messages, schema, attempts=attempts,
                                min_confidence=min_confidence, confidence=confidence)

    async def record(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` (sync or async) once and record its result; when the step runs
        again (after an approval, a crash or a node retry) the recorded result comes back instead.
        Use it for every side effect that is not a connector action, above all model calls.
        The result is stored as JSON and returned in that form both times.

        >>> scored = await runtime.context.record("score_lead", model.ainvoke, prompt)
        """
        return await self._gate.record(name, fn, *args, **kwargs)

    async def screen(self, kind: str, records: list[dict[str, Any]]) -> Screening:
        """Judge ``records`` by the workflow's data-quality checks for ``kind``: those that pass come back
        in ``.passed``; each one that fails is quarantined with its reasons (``.quarantined``) for a person
        to release or drop, instead of failing the batch. Recorded like :meth:`record`.

        >>> screening = await runtime.context.screen("contact", contacts)
        >>> for contact in screening.passed: ...
        """
        return await self._gate.screen(kind, records)

    async def request_approval(self, *, action: str, arguments: dict[str, Any], reason: str) -> ApprovalDecision:
        """Pause the run until a person approves exactly ``arguments``; returns the decision (who, why,
        the approved arguments). A rejection raises :class:`ApprovalRejected` (see :meth:`Gate.require_approval`)."""
        return await self._gate.require_approval(action=action, arguments=arguments, reason=reason)
