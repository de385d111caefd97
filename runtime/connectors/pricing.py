"""Pricing connector: one price per SKU and currency, amounts as decimal strings.

>>> price = await runtime.context.pricing.get_price(sku="SKU-1001", currency="EUR")
>>> price["amount"]
'100.00'
"""

from __future__ import annotations

from typing import Any

from runtime.connectors.base import Connector, Effect, action


class PricingConnector(Connector):
    name = "pricing"

    @action(scope="pricing.prices.read", effect=Effect.read)
    async def get_price(self, *, sku: str, currency: str) -> dict[str, Any]:
        return await self.request("GET", f"/prices/{sku}", params={"currency": currency})

    @action(scope="pricing.prices.read", effect=Effect.read)
    async def list_skus(self) -> list[str]:
        return (await self.request("GET", "/skus"))["skus"]

    @action(scope="pricing.prices.write", effect=Effect.write, inverse="set_price")
    async def set_price(self, *, sku: str, currency: str, amount: str) -> dict[str, Any]:
        return await self.request("PUT", f"/prices/{sku}", json={"currency": currency, "amount": amount})
