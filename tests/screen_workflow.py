"""A workflow that imports a batch of contacts through data-quality checks (``contact_import``).

With ``approve: true`` its node asks for an approval after screening (so the node runs
again on resume); with ``STEWARD_TEST_DIE_FILE`` set, the process dies right after the
screening is committed, the first time only (the file marks it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from runtime import RecordChecks, StepContext, Workflow, matches, required, rule, unique
from tests.fakes import OWNER


class Batch(BaseModel):
    contacts: list[dict[str, Any]]
    approve: bool = False


def no_test_domain(record: dict[str, Any]) -> str | None:
    return "a test address" if str(record["email"]).endswith("@example.test") else None


CONTACT = RecordChecks(
    "contact",
    required("email", "country"),
    matches("country", r"[A-Z]{2}", what="an ISO 3166 country code like DE"),
    unique("email"),
    rule("no_test_domain", no_test_domain, field="email"),
)


async def screen(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
    screening = await runtime.context.screen("contact", state["contacts"])
    die = os.environ.get("STEWARD_TEST_DIE_FILE")
    if die and not Path(die).exists():
        Path(die).write_text("died")
        os._exit(137)
    if state.get("approve"):
        await runtime.context.request_approval(action="contacts.import", arguments={"n": len(screening.passed)},
                                               reason="check the import")
    return {"imported": [c["email"] for c in screening.passed],
            "quarantined": [item["id"] for item in screening.quarantined],
            "released": [item["id"] for item in screening.released]}


def build() -> StateGraph:
    graph = StateGraph(dict, context_schema=StepContext)
    graph.add_node("screen", screen)
    graph.add_edge(START, "screen")
    graph.add_edge("screen", END)
    return graph


workflow = Workflow(name="contact_import", version="1.0.0", owner=OWNER, description="imports contacts, screened",
                    input_model=Batch, build=build, checks=[CONTACT])
