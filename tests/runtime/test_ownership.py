"""Ownership: a stalled worker after a takeover, and kills between pending writes and the next checkpoint."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import list_approvals
from runtime import audit, store
from runtime.executor import Executor
from runtime.models import Run, RunStatus, utcnow
from runtime.service import open_steward
from runtime.settings import Settings
from tests.fakes import single_node_workflow

TERMINAL = {"run.succeeded", "run.failed", "run.rejected", "run.cancelled"}


def stalling_worker(steward, lease_seconds: float = 0.3) -> Executor:
    """Worker A: a short lease and no renewal loop, as if the whole process froze (a long GC pause, a
    suspended VM) while one of its steps waits; its lease lapses and another worker may claim the run."""
    ex = steward.executor
    return Executor(db=steward.db, registry=steward.registry, connectors=ex.connectors,
                    checkpointer=ex.checkpointer, approvals=ex.approvals, policies=ex.policies, lease_seconds=lease_seconds)


async def stall_and_take_over(steward, wf, entered: asyncio.Event) -> tuple[asyncio.Task, Run]:
    """Worker A drives a run of ``wf`` until its step stalls (``entered``); once A's lease lapses, worker B
    (``steward.executor``) claims the run and drives it as far as it goes. A's drive, and the run B left."""
    a, b = stalling_worker(steward), steward.executor
    run, _ = await a.submit(workflow=wf.name, input={}, actor="alice")
    driving_a = asyncio.create_task(a.drive(run.id))
    await entered.wait()
    for _ in range(100):
        run = await b.drive(run.id)
        if run.status != RunStatus.running:  # B claimed it and drove it as far as it goes
            return driving_a, run
        await asyncio.sleep(0.1)
    raise AssertionError("the stalled worker's lease never lapsed")


@pytest.mark.parametrize("then", ["writes", "raises", "returns"])
async def test_a_stalled_worker_cannot_change_a_run_another_worker_took_over(open_custom, sandbox, then) -> None:
    entered, wake = asyncio.Event(), asyncio.Event()
    executions: list[int] = []

    async def work(state: dict, runtime) -> dict:
        executions.append(1)
        if len(executions) == 1:  # worker A stalls here
            entered.set()
            await wake.wait()
            if then == "raises":
                raise RuntimeError("A's step fails after waking")
            if then == "returns":
                return {"amount": "stale"}  # no Steward write: only LangGraph's task writes and checkpoint follow
        done = await runtime.context.pricing.set_price(sku="SKU-1001", currency="EUR", amount="109.00")
        return {"amount": done["amount"]}

    wf = single_node_workflow("stalls", work, grants={"pricing.prices.write"})
    async with open_custom([wf]) as steward:
        driving_a, finished = await stall_and_take_over(steward, wf, entered)
        run, a = finished, steward.executor
        assert finished.status == RunStatus.succeeded and finished.output == {"amount": "109.00"}
        config = {"configurable": {"thread_id": run.id}}
        history = [c async for c in a.checkpointer.alist(config)]
        wake.set()
        seen_by_a = await driving_a
        after = [c async for c in a.checkpointer.alist(config)]
        assert [c.config["configurable"]["checkpoint_id"] for c in after] == \
            [c.config["configurable"]["checkpoint_id"] for c in history], "A's checkpoint was refused"
        assert [c.pending_writes for c in after] == [c.pending_writes for c in history], "so were its task's writes"
        assert seen_by_a.status == RunStatus.succeeded, "A stops without changing what B left"
        current = await steward.db.run(lambda s: store.get_run(session=s, run_id=run.id))
        trail = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))
        verified = await steward.db.run(audit.verify)
    assert current.status == RunStatus.succeeded and current.output == {"amount": "109.00"} and current.error is None
    kinds = [e.kind for e in trail]
    assert [k for k in kinds if k in TERMINAL] == ["run.succeeded"] and kinds[-1] == "run.succeeded"
    assert verified.ok
    assert list(sandbox.state.sandbox.writes.values()) == [1]


def stale_then_approved(name: str):
    """A one-step workflow whose first execution (worker A) waits for ``wake`` and then returns a stale
    result; any later execution asks for approval, then writes the price."""
    entered, wake = asyncio.Event(), asyncio.Event()
    executions: list[int] = []

    async def work(state: dict, runtime) -> dict:
        executions.append(1)
        if len(executions) == 1:
            entered.set()
            await wake.wait()
            return {"amount": "stale"}
        await runtime.context.request_approval(action="pricing.set_price", arguments={"amount": "109.00"},
                                               reason="a person checks every price")
        done = await runtime.context.pricing.set_price(sku="SKU-1001", currency="EUR", amount="109.00")
        return {"amount": done["amount"]}

    return single_node_workflow(name, work, grants={"pricing.prices.write"}), entered, wake


async def test_a_stalled_workers_task_writes_cannot_land_under_the_checkpoint_the_new_owner_paused_at(
    open_custom, sandbox
) -> None:
    """B pauses for approval at the checkpoint A was working from. Were A's late result saved as that
    task's writes, the resume would take the task as done and finish with A's stale result."""
    wf, entered, wake = stale_then_approved("stalls_at_pause")
    async with open_custom([wf]) as steward:
        driving_a, paused = await stall_and_take_over(steward, wf, entered)
        run, b = paused, steward.executor
        assert paused.status == RunStatus.waiting_approval
        wake.set()
        seen_by_a = await driving_a
        assert seen_by_a.status == RunStatus.waiting_approval, "A stops without changing what B left"
        [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run.id))
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        finished = await b.drive(run.id)
        verified = await steward.db.run(audit.verify)
    assert finished.status == RunStatus.succeeded and finished.output == {"amount": "109.00"}, finished.output
    assert verified.ok
    assert list(sandbox.state.sandbox.writes.values()) == [1]


async def test_lease_renewal_that_finds_the_run_gone_stops_the_execution(open_custom, sandbox) -> None:
    entered, wake = asyncio.Event(), asyncio.Event()

    async def work(state: dict, runtime) -> dict:
        entered.set()
        await wake.wait()
        await runtime.context.pricing.set_price(sku="SKU-1002", currency="EUR", amount="101.00")
        return {}

    wf = single_node_workflow("stalls_again", work, grants={"pricing.prices.write"})
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="stalls_again", input={}, actor="alice")
        driving = asyncio.create_task(steward.executor.drive(run.id))
        await entered.wait()
        # another worker claimed it: the epoch moved on
        await steward.db.run(lambda s: s.execute(
            update(Run).where(Run.id == run.id).values(executions=Run.executions + 1, worker_id="other:1:x")))
        await steward.executor._renew()
        wake.set()
        seen = await driving
    assert seen.status == RunStatus.running and seen.worker_id == "other:1:x"
    assert sandbox.state.sandbox.writes == {}, "a fenced execution makes no further external call"


PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "k"), [("first", 1), ("first", 2), ("first", 3), ("after_approval", 1),
                                          ("after_approval", 2)])
async def test_killed_between_pending_writes_and_checkpoint_the_run_continues(
    database_url, sandbox_process, cli_env, tmp_path, phase, k
) -> None:
    settings = Settings(database_url=database_url, crm_url=f"{sandbox_process}/crm",
                        pricing_url=f"{sandbox_process}/pricing", demo=True, lease_seconds=600)

    def kill_during_drive(run_id: str) -> None:
        env = {**cli_env, "STEWARD_LEASE_SECONDS": "600"}
        done = subprocess.run([sys.executable, "-m", "tests.kill_driver", run_id, str(k)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 137, done.stderr[-3000:]

    async with open_steward(settings) as steward:
        ex = steward.executor
        run, _ = await ex.submit(workflow="price_change", input=PRICE_115, actor="alice")
        if phase == "after_approval":
            await ex.drive(run.id)
            [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run.id))
            await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        await asyncio.to_thread(kill_during_drive, run.id)
        killed = await steward.db.run(lambda s: store.get_run(session=s, run_id=run.id))
        assert killed.status == RunStatus.running, "the dead worker left it running"

        run = await ex.drive(run.id)  # the worker died on this host: taken over at once
        if phase == "first":
            assert run.status == RunStatus.waiting_approval, run.error
            [approval] = await steward.db.run(
                lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
            assert approval.arguments["amount"] == "115.00"
            await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
            run = await ex.drive(run.id)
        assert run.status == RunStatus.succeeded, run.error
        assert run.output["summary"] == {"changed": 1, "largest_change_pct": "15.00",
                                         "reason": "supplier cost up"}
        assert (await steward.db.run(audit.verify)).ok
    writes = httpx.get(f"{sandbox_process}/_writes", headers={"Authorization": "Bearer sandbox-token"}).json()
    assert writes["total"] == 1, writes
    assert httpx.get(f"{sandbox_process}/pricing/prices/SKU-1001",
                     headers={"Authorization": "Bearer sandbox-token"}).json()["amount"] == "115.00"


async def test_a_live_worker_taken_over_at_once_cannot_slip_its_task_writes_in(open_custom, sandbox) -> None:
    """B takes the run over at once, believing A's process dead (A's pid is gone as B sees it), while A
    lives on with most of its lease left: A's late result must still not land under B's pause."""
    import subprocess
    import sys

    from runtime.executor import _host_prefix

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    wf, entered, wake = stale_then_approved("taken_at_once")
    async with open_custom([wf]) as steward:
        a, b = stalling_worker(steward, lease_seconds=30.0), steward.executor
        a.worker_id = f"{_host_prefix()}{gone.pid}:feedbeef"
        run, _ = await a.submit(workflow=wf.name, input={}, actor="alice")
        driving_a = asyncio.create_task(a.drive(run.id))
        await entered.wait()
        paused = await b.drive(run.id)
        assert paused.status == RunStatus.waiting_approval
        wake.set()
        await driving_a
        [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run.id))
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        finished = await b.drive(run.id)
    assert finished.status == RunStatus.succeeded and finished.output == {"amount": "109.00"}, finished.output
    assert list(sandbox.state.sandbox.writes.values()) == [1]
