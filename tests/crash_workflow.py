"""A workflow that stops right after a connector write until the test kills its process.

The pause happens only while the file named by ``STEWARD_TEST_PAUSE_FILE`` does
not exist; the node creates it, so the resumed run passes straight through.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from runtime import StepContext, Workflow
from tests.fakes import OWNER, Empty


class State(TypedDict, total=False):
    first: str
    second: str


async def write_then_stall(state: State, runtime) -> dict:
    first = await runtime.context.pricing.set_price(sku="SKU-1001", currency="EUR", amount="105.00")
    marker = Path(os.environ["STEWARD_TEST_PAUSE_FILE"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        await asyncio.sleep(120)  # the test SIGKILLs the process here
    return {"first": first["amount"]}


async def write_again(state: State, runtime) -> dict:
    second = await runtime.context.pricing.set_price(sku="SKU-1002", currency="EUR", amount="108.00")
    return {"second": second["amount"]}


def build() -> StateGraph:
    graph = StateGraph(State, context_schema=StepContext)
    graph.add_node("write_then_stall", write_then_stall)
    graph.add_node("write_again", write_again)
    graph.add_edge(START, "write_then_stall")
    graph.add_edge("write_then_stall", "write_again")
    graph.add_edge("write_again", END)
    return graph


workflow = Workflow(name="crash_once", version="1.0.0", owner=OWNER, description="dies once after a write",
                    input_model=Empty, build=build, grants={"pricing.prices.write"})
