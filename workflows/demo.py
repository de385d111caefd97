"""What ``steward serve --demo`` starts once, so the approval inbox has work on the first visit.

Each entry is started by the demo operator under its own idempotency key (a restart starts nothing
twice). The sandbox prices every seeded SKU at 100.00 EUR, so the policies in ``policies/pricing.cedar``
ask one pricing manager for a move over 10 % and two for a move over 25 %.
"""

from __future__ import annotations

RUNS = [
    {"key": "price-1003", "workflow": "price_change",
     "input": {"items": [{"sku": "SKU-1003", "new_price": "112.00", "currency": "EUR"}],
               "reason": "supplier cost up 12 %"}},
    {"key": "price-1004", "workflow": "price_change",
     "input": {"items": [{"sku": "SKU-1004", "new_price": "128.00", "currency": "EUR"}],
               "reason": "moving SKU-1004 into the premium range"}},
    {"key": "price-1005", "workflow": "price_change",
     "input": {"items": [{"sku": "SKU-1005", "new_price": "88.00", "currency": "EUR"}],
               "reason": "matching a competitor's price cut"}},
]
