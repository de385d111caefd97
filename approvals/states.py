"""The states of an approval request: a plain enum, importable without the data layer (the CLI's
``--status`` choices)."""

from __future__ import annotations

import enum


class ApprovalStatus(str, enum.Enum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    cancelled = "cancelled"
