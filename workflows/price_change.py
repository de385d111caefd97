"""Price change: read current prices, apply the new ones, record a summary.

How far a price may move without a person is not this module's business: the policies
in ``policies/pricing.cedar`` decide each ``pricing.set_price`` call (over 10 %: a pricing
manager approves; over 25 %: two; a cut over 30 %: denied), so the same rules hold for
every workflow that sets prices.

Input::

    {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost +12 %"}
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime import ConnectorRejected, Owner, StepContext, StewardError, Workflow
from workflows.currencies import ISO_4217

class UnknownSku(StewardError):
    code = "unknown_sku"
    status_code = 422


class PriceItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Annotated[str, Field(pattern=r"^SKU-\d{4}$", examples=["SKU-1001"])]
    new_price: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
    currency: str

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str) -> str:
        if value not in ISO_4217:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code such as EUR or USD")
        return value


class PriceChangeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[PriceItem], Field(min_length=1, max_length=100)]
    reason: Annotated[str, Field(min_length=3, max_length=1000)]

    @model_validator(mode="after")
    def _one_price_per_sku(self) -> "PriceChangeInput":
        seen = set()
        for item in self.items:
            if (item.sku, item.currency) in seen:
                raise ValueError(f"{item.sku} {item.currency} appears twice; give one new price per SKU and currency")
            seen.add((item.sku, item.currency))
        return self


class State(TypedDict, total=False):
    items: list[dict[str, Any]]
    reason: str
    changes: list[dict[str, Any]]
    applied: list[dict[str, Any]]
    summary: dict[str, Any]


async def read_prices(state: State, runtime: Runtime[StepContext]) -> State:
    changes = []
    for item in state["items"]:
        try:
            current = await runtime.context.pricing.get_price(sku=item["sku"], currency=item["currency"])
        except ConnectorRejected as exc:
            if exc.status == 404:
                raise UnknownSku(f"{item['sku']} has no {item['currency']} price in the pricing system") from None
            raise
        old, new = Decimal(current["amount"]), Decimal(item["new_price"])
        pct = (new - old) / old * 100
        changes.append({"sku": item["sku"], "currency": item["currency"], "old_price": f"{old:.2f}",
                        "new_price": f"{new:.2f}", "change_pct": f"{pct:+.2f}"})
    return {"changes": changes}


async def apply_prices(state: State, runtime: Runtime[StepContext]) -> State:
    """One ``pricing.set_price`` per change; the policies may pause any of them for approval."""
    applied = []
    for change in state["changes"]:
        applied.append(await runtime.context.pricing.set_price(sku=change["sku"], currency=change["currency"],
                                                               amount=change["new_price"]))
    return {"applied": applied}


async def record(state: State, runtime: Runtime[StepContext]) -> State:
    moves = [abs(Decimal(c["change_pct"])) for c in state["changes"]]
    return {"summary": {
        "changed": len(state["applied"]),
        "largest_change_pct": f"{max(moves):.2f}",
        "reason": state["reason"],
    }}


def build() -> StateGraph:
    graph = StateGraph(State, context_schema=StepContext)
    graph.add_node("read_prices", read_prices)
    graph.add_node("apply_prices", apply_prices)
    graph.add_node("record", record)
    graph.add_edge(START, "read_prices")
    graph.add_edge("read_prices", "apply_prices")
    graph.add_edge("apply_prices", "record")
    graph.add_edge("record", END)
    return graph


workflow = Workflow(
    name="price_change",
    version="1.1.0",  # 1.1.0: approvals come from the pricing policies, per SKU (1.0.0 asked once, in code)
    owner=Owner(name="Pricing Operations Lead", email="pricing-ops@example.com"),
    description="Change list prices per SKU; the pricing policies decide which moves need a pricing manager.",
    input_model=PriceChangeInput,
    build=build,
    grants={"pricing.prices.read", "pricing.prices.write"},
)
