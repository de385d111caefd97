"""Lead scoring for ``lead_routing``: what a scoring model answers, the prompt, and an offline model.

The workflow asks a chat model (configured as ``lead_scoring``; see ``STEWARD_MODELS``)
for a :class:`LeadScore`. The default, :class:`OfflineScoringModel`, needs no network:
it reads the lead from the prompt and scores it by the sales team's rules
(:func:`score_lead`), with a lower confidence when the lead says too little to judge.
Any langchain-core chat model can take its place unchanged.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel, ConfigDict, Field

FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "gmx.de", "web.de", "icloud.com"})
FIELDS = ("email", "company", "country", "source", "employees", "budget", "message")
MARKER = "Lead (JSON):"


class LeadScore(BaseModel):
    """A lead's score (0-100), why, and how sure the scorer is (0-1)."""

    model_config = ConfigDict(extra="forbid")

    score: int = Field(ge=0, le=100)
    reasons: list[str] = Field(min_length=1, max_length=20)
    confidence: float = Field(ge=0, le=1)


def prompt(lead: dict[str, Any]) -> list[BaseMessage]:
    facts = {name: lead.get(name) for name in FIELDS}
    return [HumanMessage(
        "Score this inbound B2B lead from 0 to 100 for how likely it is to buy within a quarter; give "
        "short reasons and your confidence from 0 to 1.\n" + MARKER + "\n" + json.dumps(facts, sort_keys=True))]


def score_lead(lead: dict[str, Any]) -> LeadScore:
    """The sales team's rules: size, budget, source, a free-mail address. Confidence 0.9, or 0.5 when
    the lead gives neither a company, a size nor a budget."""
    score, reasons = 20, ["base 20"]
    employees = lead.get("employees") or 0
    if employees >= 1000:
        score, reasons = score + 30, reasons + ["1000+ employees +30"]
    elif employees >= 100:
        score, reasons = score + 20, reasons + ["100+ employees +20"]
    try:
        budget = Decimal(str(lead.get("budget") or 0))
    except InvalidOperation:
        budget = Decimal(0)
    if budget >= 50_000:
        score, reasons = score + 30, reasons + ["budget 50k+ +30"]
    elif budget >= 10_000:
        score, reasons = score + 15, reasons + ["budget 10k+ +15"]
    if lead.get("source") in ("referral", "partner"):
        score, reasons = score + 15, reasons + [f"{lead['source']} source +15"]
    if lead.get("free_mail"):
        score, reasons = score - 15, reasons + ["free mail domain -15"]
    vague = not (lead.get("company") or lead.get("employees") or lead.get("budget"))
    return LeadScore(score=max(0, min(100, score)), reasons=reasons, confidence=0.5 if vague else 0.9)


class OfflineScoringModel(BaseChatModel):
    """A deterministic chat model that answers :func:`prompt` with :func:`score_lead`'s JSON."""

    @property
    def _llm_type(self) -> str:
        return "steward-offline-lead-scoring"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        asked = next((m for m in reversed(messages) if isinstance(m, HumanMessage) and MARKER in str(m.content)),
                     None)
        if asked is None:
            answer = json.dumps({"error": "no lead in the prompt"})
        else:
            lead = json.loads(str(asked.content).split(MARKER, 1)[1])
            lead["free_mail"] = str(lead.get("email", "")).rsplit("@", 1)[-1] in FREE_MAIL
            answer = score_lead(lead).model_dump_json()
        return ChatResult(generations=[ChatGeneration(message=AIMessage(answer))])
