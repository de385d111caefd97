"""Price change 1.2.0: 1.1.0's steps, except that a price that would not move is left alone.

1.1.0 (``workflows.price_change``) sets every price it is given, also one that already has the new
value: a write, an audit record and, for a large batch, an approval that changes nothing. 1.2.0 skips
those, and its summary names them. Both versions load side by side; which one a new run takes is the
workflow's rollout (``POST /api/v1/workflows/price_change/rollout``), and a run always finishes on the
version it started on. The input is the same.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from runtime import StepContext, Workflow
from workflows import price_change
from workflows.price_change import State


async def apply_prices(state: State, runtime: Runtime[StepContext]) -> State:
    """One ``pricing.set_price`` per change that moves a price; the policies may pause any of them."""
    applied = []
    for change in state["changes"]:
        if Decimal(change["new_price"]) != Decimal(change["old_price"]):
            applied.append(await runtime.context.pricing.set_price(sku=change["sku"], currency=change["currency"],
                                                                   amount=change["new_price"]))
    return {"applied": applied}


async def record(state: State, runtime: Runtime[StepContext]) -> State:
    unchanged = [c["sku"] for c in state["changes"] if Decimal(c["new_price"]) == Decimal(c["old_price"])]
    moves = [abs(Decimal(c["change_pct"])) for c in state["changes"]]
    summary: dict[str, Any] = {"changed": len(state["applied"]), "unchanged": unchanged,
                               "largest_change_pct": f"{max(moves):.2f}", "reason": state["reason"]}
    return {"summary": summary}


def build() -> StateGraph:
    graph = StateGraph(State, context_schema=StepContext)
    graph.add_node("read_prices", price_change.read_prices)
    graph.add_node("apply_prices", apply_prices)
    graph.add_node("record", record)
    graph.add_edge(START, "read_prices")
    graph.add_edge("read_prices", "apply_prices")
    graph.add_edge("apply_prices", "record")
    graph.add_edge("record", END)
    return graph


workflow = Workflow(
    name="price_change",
    version="1.2.0",  # 1.2.0: a price that would not move is not set again
    owner=price_change.workflow.owner,
    description="Change list prices per SKU, leaving alone those already at their new price; the pricing "
                "policies decide which moves need a pricing manager.",
    input_model=price_change.PriceChangeInput,
    build=build,
    grants=price_change.workflow.grants,
)
