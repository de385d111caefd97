"""Structured output for AI steps: a chat model's answer parsed into a pydantic model, or a person decides.

:meth:`StepContext.structured` asks a chat model (any langchain-core ``BaseChatModel``)
for one JSON object matching a pydantic model. Each model call is a recorded step
(see :meth:`StepContext.record`): a step that runs again (after an approval, a crash, a
retry) gets the recorded answers and never calls the model again. An answer that does
not parse is sent back to the model with what was wrong, a bounded number of times.
When the answer stays invalid, or its confidence is below the workflow's threshold, the
step does not act on it: it asks a person, with every raw answer attached. Approved, the
step goes on (with the parsed value when there is one, else ``None`` for the step's own
fallback); rejected, the run ends rejected.

>>> scored = await runtime.context.structured("lead_score", runtime.context.model("lead_scoring"),
...                                           [HumanMessage(prompt)], LeadScore, min_confidence=0.6)
>>> scored.value.score if scored.value is not None else fallback_score
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ValidationError

from runtime.approval import ApprovalDecision
from runtime.errors import StewardError

if TYPE_CHECKING:
    from runtime.gate import Gate

T = TypeVar("T", bound=BaseModel)
MAX_ATTEMPTS = 5
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class Structured(Generic[T]):
    """What :meth:`StepContext.structured` got: the parsed ``value`` (None when the model never gave a
    valid answer and a person let the step go on without it), every raw answer, and whether a person
    was asked (``approval``: their decision)."""

    value: T | None
    raw: list[str]
    attempts: int
    confidence: float | None
    errors: list[str]
    approval: ApprovalDecision | None = None

    @property
    def escalated(self) -> bool:
        return self.approval is not None


def instructions(schema: type[BaseModel]) -> SystemMessage:
    """The system message that asks for one JSON object matching ``schema``."""
    return SystemMessage(
        "Answer with exactly one JSON object and nothing else. It must match this JSON Schema:\n"
        + json.dumps(schema.model_json_schema(), sort_keys=True))


def parse(schema: type[T], content: str) -> T:
    """``content`` (the model's text, possibly in a Markdown code fence) as ``schema``; ValueError if not."""
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content.strip()
    try:
        json.loads(text, parse_constant=_not_a_number)  # NaN and Infinity are no JSON (nor storable)
    except ValueError as exc:
        if isinstance(exc, _NotANumber):
            raise
    try:
        return schema.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'the answer'}: {err['msg']}" for err in exc.errors(include_url=False))
        raise ValueError(problems) from None


class _NotANumber(ValueError):
    pass


def _not_a_number(constant: str) -> Any:
    raise _NotANumber(f"the answer holds {constant}, which is not a JSON number")


def text_of(message: Any) -> str:
    """The text of a model's reply (content blocks joined)."""
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block if isinstance(block, str) else str(block.get("text", ""))
                       for block in content if isinstance(block, (str, dict)))
    return str(content)


def _confidence_of(value: BaseModel, confidence: str | Callable[[Any], float] | None) -> float | None:
    if confidence is None:
        return None
    if callable(confidence):
        return float(confidence(value))
    found = getattr(value, confidence, None)
    return None if found is None else float(found)


async def structured(gate: Gate, name: str, model: BaseChatModel, messages: Sequence[BaseMessage],
                     schema: type[T], *, attempts: int = 3, min_confidence: float | None = None,
                     confidence: str | Callable[[T], float] | None = "confidence") -> Structured[T]:
    """See :meth:`StepContext.structured`."""
    if not isinstance(model, BaseChatModel):
        raise StewardError(f"structured({name!r}): the model must be a langchain-core BaseChatModel, "
                           f"not {type(model).__name__}")
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise StewardError(f"structured({name!r}): the schema must be a pydantic BaseModel subclass")
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise StewardError(f"structured({name!r}): attempts must be 1 to {MAX_ATTEMPTS}, not {attempts}")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise StewardError(f"structured({name!r}): min_confidence must be between 0 and 1")
    if min_confidence is not None and confidence is None:
        raise StewardError(f"structured({name!r}): min_confidence needs a confidence: name a field of "
                           f"{schema.__name__} or give a function with confidence=...")
    if min_confidence is not None and isinstance(confidence, str) and confidence not in schema.model_fields:
        raise StewardError(f"structured({name!r}): min_confidence needs a confidence: {schema.__name__} has no "
                           f"field {confidence!r}; name one with confidence=...")
    conversation: list[BaseMessage] = [instructions(schema), *messages]
    raw: list[str] = []
    errors: list[str] = []
    value: T | None = None

    async def ask(conversation: list[BaseMessage]) -> dict[str, Any]:
        reply = await model.ainvoke(conversation)
        usage = getattr(reply, "usage_metadata", None)
        return {"content": text_of(reply), "usage": dict(usage) if usage else None}

    for _ in range(attempts):
        answer = await gate.record(f"model:{name}", ask, conversation)
        raw.append(answer["content"])
        try:
            value = parse(schema, answer["content"])
            break
        except ValueError as exc:
            errors.append(str(exc))
            conversation = [*conversation, AIMessage(answer["content"]), HumanMessage(
                f"That answer is not valid: {exc}. Answer again with only the JSON object.")]
    score = _confidence_of(value, confidence) if value is not None else None
    if score is not None and not math.isfinite(score):
        score = None  # no confidence at all: below any threshold
    if value is not None and (min_confidence is None or (score is not None and score >= min_confidence)):
        return Structured(value=value, raw=raw, attempts=len(raw), confidence=score, errors=errors)
    if value is None:
        reason = (f"the model gave no valid {schema.__name__} in {len(raw)} attempt(s); approve to go on "
                  f"without it, reject to stop the run")
    elif score is None:
        reason = (f"the model's answer states no confidence (the threshold is {min_confidence:.2f}); approve to "
                  f"act on its answer, reject to stop the run")
    else:
        reason = (f"the model's confidence {score:.2f} is below {min_confidence:.2f}; approve to act on its "
                  f"answer, reject to stop the run")
    decision = await gate.require_approval(action=f"model.{name}", reason=reason, arguments={
        "raw": raw, "errors": errors, "parsed": value.model_dump(mode="json") if value is not None else None,
        "confidence": score, "min_confidence": min_confidence})
    return Structured(value=value, raw=raw, attempts=len(raw), confidence=score, errors=errors, approval=decision)
