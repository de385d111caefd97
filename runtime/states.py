"""The states a run and a step can be in: plain enums, importable without the data layer (the CLI's
``--status`` choices are these, and ``steward --help`` must not load SQLAlchemy)."""

from __future__ import annotations

import enum


class RunStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    waiting_approval = "waiting_approval"
    succeeded = "succeeded"
    failed = "failed"
    rejected = "rejected"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.rejected, RunStatus.cancelled})


class StepStatus(str, enum.Enum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    interrupted = "interrupted"
