"""Automatic rollback on SQLite and PostgreSQL: a canary that fails far more often than its stable version
is rolled back by the executor's sweep under a fixed clock, once however many workers sweep, audited with
the values measured, and the owner is notified; a healthy canary, or one with too few runs to judge,
keeps its share; rejection and connector-error guards read their own signals."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timezone
from typing import Any

import pytest

from approvals.models import Notification
from runtime import audit, rollout, store
from runtime.errors import WorkflowDefinitionError
from runtime.guards import ConnectorErrors, FailureRate, RejectionRate
from runtime.models import Rollout, RunStatus
from runtime.service import Steward
from tests.fakes import single_node_workflow

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


async def works(state: dict, runtime: Any) -> dict:
    return {"ok": True}


async def breaks(state: dict, runtime: Any) -> dict:
    raise RuntimeError("the new lookup table has a gap")


STABLE = single_node_workflow("flaky", works, grants=set())


def canary(node: Any = breaks, **changes: Any) -> Any:
    return dataclasses.replace(single_node_workflow("flaky", node, grants=set()), version="1.1.0", **changes)


async def burst(steward: Steward, runs: int) -> list[Any]:
    """``runs`` runs of each version (named, so each gets as many), driven to their end."""
    done = []
    for n in range(runs):
        for version in ("1.0.0", "1.1.0"):
            run, _ = await steward.executor.submit(workflow="flaky", input={}, actor="alice", version=version)
            done.append(await steward.executor.drive(run.id))
    return done


async def roll_out(steward: Steward) -> None:
    await steward.executor.change_rollout(workflow="flaky", action="rollout", version="1.1.0", percent=50,
                                          actor="ops", reason="try the new lookup table")


async def events(steward: Steward, kind: str) -> list[Any]:
    return [e for e in await steward.db.run(lambda s: store.list_audit(session=s, limit=100_000)) if e.kind == kind]


async def test_a_failing_canary_is_rolled_back_once_audited_and_the_owner_told(open_custom, settings) -> None:
    async with open_custom([STABLE, canary()]) as steward:
        steward.settings = settings.model_copy(update={"notify_webhook_url": "http://127.0.0.1:9/hook",
                                                       "notify_webhook_secret": "s" * 16})
        await roll_out(steward)
        ran = await burst(steward, 20)
        assert [r.status for r in ran].count(RunStatus.failed) == 20  # every canary run
        outcomes = await asyncio.gather(*(rollout.guard(steward, NOW) for _ in range(5)))  # five workers at once
        assert sum(o["rolled_back"] for o in outcomes) == 1
        state = await steward.db.run(lambda s: s.get(Rollout, "flaky"))
        assert (state.stable, state.canary, state.canary_percent, state.updated_by) == (
            "1.0.0", None, 0, "steward:guard")
        [breach] = await events(steward, "rollout.guard_breached")
        assert breach.actor == "steward:guard" and breach.data["guard"] == "FailureRate"
        assert breach.data["values"] == {"canary_failure_rate": 1.0, "stable_failure_rate": 0.0,
                                         "canary_runs": 20, "stable_runs": 20, "limit": 0.05}
        assert breach.data["measured_at"] == NOW.isoformat()
        [changed] = [e for e in await events(steward, "rollout.changed") if e.actor == "steward:guard"]
        assert changed.data["action"] == "rollback" and "failed 100% of its last 20 runs" in changed.data["reason"]
        notes = await steward.db.run(lambda s: s.query(Notification).filter(Notification.kind == "rollout.rolled_back").all())
        assert [(n.channel, n.recipients, n.payload["guard"]) for n in notes] == [
            ("webhook", ["owner@example.com"], "failure_rate")]
        assert (await rollout.guard(steward, NOW))["rolled_back"] == 0  # nothing takes canary traffic now
        assert (await steward.db.run(audit.verify)).ok


async def test_a_healthy_canary_keeps_its_share(open_custom) -> None:
    async with open_custom([STABLE, canary(works)]) as steward:
        await roll_out(steward)
        await burst(steward, 20)
        assert (await rollout.guard(steward, NOW))["rolled_back"] == 0


async def test_a_canary_too_young_to_judge_keeps_its_share(open_custom) -> None:
    async with open_custom([STABLE, canary()]) as young:
        await roll_out(young)
        await burst(young, 5)  # 5 runs: under the guard's 20
        assert (await rollout.guard(young, NOW))["rolled_back"] == 0
        assert (await young.db.run(lambda s: s.get(Rollout, "flaky"))).canary == "1.1.0"


async def test_runs_before_the_canary_began_do_not_count(open_custom) -> None:
    async with open_custom([STABLE, canary()]) as steward:
        await burst(steward, 20)  # failures of 1.1.0 named before anyone rolled it out
        await roll_out(steward)
        assert (await rollout.guard(steward, NOW))["rolled_back"] == 0


async def test_a_rejection_rate_guard_reads_the_decisions(open_custom, monkeypatch) -> None:
    async with open_custom([STABLE, canary(works, rollout_guards=(RejectionRate(above=0.4, decided=10),))]) as steward:
        await roll_out(steward)
        approvals = steward.executor.approvals
        monkeypatch.setattr(approvals, "decision_counts", lambda session, workflow, since=None: {"1.1.0": (10, 5)})
        assert (await rollout.guard(steward, NOW))["rolled_back"] == 1
        [breach] = await events(steward, "rollout.guard_breached")
        assert breach.data["values"] == {"rejected": 5, "decided": 10, "rejection_rate": 0.5, "limit": 0.4}


def test_guards_are_checked_when_the_workflow_is_declared() -> None:
    with pytest.raises(WorkflowDefinitionError, match="rollout guard"):
        canary(rollout_guards=("fail fast",))
    assert canary(rollout_guards=(FailureRate(runs=5), ConnectorErrors(above=0.1))).rollout_guards
