"""Pricing connector: one price per SKU and currency, amounts as decimal strings.

>>> price = await runtime.context.pricing.get_price(sku="SKU-1001", currency="EUR")
>>> price["amount"]
'100.00'
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from runtime.connectors.base import Connector, Effect, action
from runtime.errors import PolicyContextInvalid
from runtime.policy import cedar_decimal

if TYPE_CHECKING:
    from runtime.facts import Facts

CHANGE_CAP = Decimal(1_000_000)  # % reported for a move away from a price of 0
AMOUNT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,6})?", re.ASCII)  # no spaces, underscores, exponents or other digits


def _amount(value: Any, what: str) -> Decimal:
    if what == "amount" and not AMOUNT.fullmatch(str(value)):  # what the policies see is what the service gets
        raise PolicyContextInvalid(f"{what} {value!r} is not a decimal amount such as '115.00' (digits, one point)")
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise PolicyContextInvalid(f"{what} {value!r} is not a decimal amount such as '115.00'") from None
    if not amount.is_finite():
        raise PolicyContextInvalid(f"{what} {value!r} is not a finite amount")
    return amount


async def set_price_context(facts: Facts, arguments: dict[str, Any]) -> dict[str, Any]:
    """How far the new price moves the current one, read by the engine just before deciding."""
    current = await facts.read("get_price", sku=arguments["sku"], currency=arguments["currency"])
    old, new = _amount(current["amount"], "the current price"), _amount(arguments["amount"], "amount")
    if old == 0:
        change = Decimal(0) if new == 0 else CHANGE_CAP
    else:
        change = max(-CHANGE_CAP, min(CHANGE_CAP, (new - old) / old * 100))
    return {"currency": arguments["currency"], "amount": cedar_decimal(new), "current_amount": cedar_decimal(old),
            "change_pct": cedar_decimal(change), "abs_change_pct": cedar_decimal(abs(change)),
            "compensating": facts.compensating}


class PricingConnector(Connector):
    name = "pricing"

    @action(scope="pricing.prices.read", effect=Effect.read, resource=lambda a: ("Sku", a["sku"]))
    async def get_price(self, *, sku: str, currency: str) -> dict[str, Any]:
        return await self.request("GET", f"/prices/{sku}", params={"currency": currency})

    @action(scope="pricing.prices.read", effect=Effect.read)
    async def list_skus(self) -> list[str]:
        return (await self.request("GET", "/skus"))["skus"]

    @action(scope="pricing.prices.write", effect=Effect.write, inverse="set_price",
            resource=lambda a: ("Sku", a["sku"]), context=set_price_context,
            current=lambda a: ("get_price", {"sku": a["sku"], "currency": a["currency"]}), editable=("amount",))
    async def set_price(self, *, sku: str, currency: str, amount: str) -> dict[str, Any]:
        return await self.request("PUT", f"/prices/{sku}", json={"currency": currency, "amount": amount})
