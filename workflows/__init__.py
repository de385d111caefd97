"""The shipped automations. ``WORKFLOWS`` is what ``STEWARD_WORKFLOWS`` names by default."""

from workflows import lead_routing, price_change, price_change_v2

# price_change 1.1.0 and 1.2.0 side by side: 1.1.0 is stable until an operator rolls 1.2.0 out
WORKFLOWS = [lead_routing.workflow, price_change.workflow, price_change_v2.workflow]

__all__ = ["WORKFLOWS"]
