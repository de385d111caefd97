"""Connectors: the only way a workflow step reaches an external system.

``base`` holds the machinery (action declarations, HTTP with retries); ``crm``
and ``pricing`` are the shipped connectors.
"""

from runtime.connectors.base import ActionSpec, Connector, Effect, RetryPolicy, action
from runtime.connectors.crm import CrmConnector
from runtime.connectors.pricing import PricingConnector

__all__ = ["ActionSpec", "Connector", "CrmConnector", "Effect", "PricingConnector", "RetryPolicy", "action"]
