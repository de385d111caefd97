"""Steward's engine. What a workflow author needs is exported here.

>>> from runtime import Workflow, Owner, StepContext
"""

from runtime.approval import ApprovalDecision
from runtime.connectors import (
    Connector,
    CrmConnector,
    Effect,
    PricingConnector,
    RetryPolicy,
    action,
)
from runtime.context import StepContext
from runtime.errors import (
    ApprovalRejected,
    ConnectorError,
    ConnectorRejected,
    ConnectorTransient,
    InputInvalid,
    NonDeterministicReplay,
    PermissionDenied,
    StewardError,
)
from runtime.sdk import Owner, Registry, Workflow

__all__ = [
    "ApprovalDecision",
    "ApprovalRejected",
    "Connector",
    "ConnectorError",
    "ConnectorRejected",
    "ConnectorTransient",
    "CrmConnector",
    "Effect",
    "InputInvalid",
    "NonDeterministicReplay",
    "Owner",
    "PermissionDenied",
    "PricingConnector",
    "Registry",
    "RetryPolicy",
    "StepContext",
    "StewardError",
    "Workflow",
    "action",
]
