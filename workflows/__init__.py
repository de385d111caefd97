"""The shipped automations. ``WORKFLOWS`` is what ``STEWARD_WORKFLOWS`` names by default."""

from workflows import lead_routing, price_change

WORKFLOWS = [lead_routing.workflow, price_change.workflow]

__all__ = ["WORKFLOWS"]
