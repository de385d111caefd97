"""Steward's engine. What a workflow author needs is exported here.

>>> from runtime import Workflow, Owner, StepContext

The names load on first use (PEP 562), so importing one light module of the package (the CLI's
``runtime.cli``) does not load LangGraph and the whole engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ApprovalDecision": "runtime.approval",
    "ApprovalRejected": "runtime.errors",
    "Connector": "runtime.connectors",
    "ConnectorError": "runtime.errors",
    "ConnectorRejected": "runtime.errors",
    "ConnectorTransient": "runtime.errors",
    "CrmConnector": "runtime.connectors",
    "Effect": "runtime.connectors",
    "Facts": "runtime.facts",
    "InputInvalid": "runtime.errors",
    "NonDeterministicReplay": "runtime.errors",
    "Owner": "runtime.sdk",
    "PermissionDenied": "runtime.errors",
    "PolicyDenied": "runtime.errors",
    "PricingConnector": "runtime.connectors",
    "RecordChecks": "runtime.quality",
    "Registry": "runtime.sdk",
    "RetryPolicy": "runtime.connectors",
    "Screening": "runtime.quality",
    "StepContext": "runtime.context",
    "StewardError": "runtime.errors",
    "Workflow": "runtime.sdk",
    "action": "runtime.connectors",
    "cedar_decimal": "runtime.policy",
    "matches": "runtime.quality",
    "one_of": "runtime.quality",
    "required": "runtime.quality",
    "rule": "runtime.quality",
    "unique": "runtime.quality",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from runtime.approval import ApprovalDecision
    from runtime.connectors import Connector, CrmConnector, Effect, PricingConnector, RetryPolicy, action
    from runtime.context import StepContext
    from runtime.facts import Facts
    from runtime.errors import (
        ApprovalRejected,
        ConnectorError,
        ConnectorRejected,
        ConnectorTransient,
        InputInvalid,
        NonDeterministicReplay,
        PermissionDenied,
        PolicyDenied,
        StewardError,
    )
    from runtime.policy import cedar_decimal
    from runtime.quality import RecordChecks, Screening, matches, one_of, required, rule, unique
    from runtime.sdk import Owner, Registry, Workflow
