"""Cooperative cancellation: a call in flight is recorded, the run stops at the step boundary."""

from __future__ import annotations

import asyncio
from typing import TypedDict

import httpx
import pytest
from langgraph.graph import END, START, StateGraph

from approvals.store import list_approvals
from runtime import StepContext, Workflow, store
from runtime.executor import Executor
from runtime.models import RunStatus
from runtime.service import build_connectors
from tests.fakes import OWNER, Empty, instant_retry, single_node_workflow


class State(TypedDict, total=False):
    first: str
    second: str


def two_writes() -> Workflow:
    async def first(state: State, runtime) -> dict:
        done = await runtime.context.pricing.set_price(sku="SKU-1001", currency="EUR", amount="105.00")
        return {"first": done["amount"]}

    async def second(state: State, runtime) -> dict:
        done = await runtime.context.pricing.set_price(sku="SKU-1002", currency="EUR", amount="108.00")
        return {"second": done["amount"]}

    def build() -> StateGraph:
        graph = StateGraph(State, context_schema=StepContext)
        graph.add_node("first", first)
        graph.add_node("second", second)
        graph.add_edge(START, "first")
        graph.add_edge("first", "second")
        graph.add_edge("second", END)
        return graph

    return Workflow(name="two_writes", version="1.0.0", owner=OWNER, description="two writes in two steps",
                    input_model=Empty, build=build, grants={"pricing.prices.write"})


class HeldTransport(httpx.AsyncBaseTransport):
    """Passes requests to the sandbox, holding each PUT until the test lets it go."""

    def __init__(self, app) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.in_call, self.release = asyncio.Event(), asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.in_call.set()
            await self.release.wait()
        return await self.inner.handle_async_request(request)


async def test_cancel_during_a_call_records_the_call_and_stops_at_the_step_boundary(
    open_custom, settings, sandbox
) -> None:
    transport = HeldTransport(sandbox)
    held = build_connectors(settings, transport=transport, retry=instant_retry())
    async with open_custom([two_writes()], {"pricing": held["pricing"]}) as steward:
        run, _ = await steward.executor.submit(workflow="two_writes", input={}, actor="alice")
        driving = asyncio.create_task(steward.executor.drive(run.id))
        await transport.in_call.wait()
        await steward.executor.cancel(run_id=run.id, actor="alice")
        transport.release.set()
        run = await driving
        assert run.status == RunStatus.cancelled
        trail = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))
        kinds = [e.kind for e in trail]
        recorded = await steward.db.run(lambda s: store.recorded_calls(session=s, run_id=run.id))
    assert kinds.count("connector.call") == 1, "the write that happened is recorded"
    assert len(recorded) == 1 and next(iter(recorded.values())).action == "pricing.set_price"
    assert kinds.index("run.cancel_requested") < kinds.index("run.cancelled") and kinds[-1] == "run.cancelled"
    assert kinds.count("run.cancelled") == 1
    assert list(sandbox.state.sandbox.writes.values()) == [1], "the second step never ran"
    assert sandbox.state.sandbox.prices[("SKU-1002", "EUR")]["amount"] == "100.00"
    await held["pricing"].aclose()


async def test_shutdown_during_a_call_still_records_it(open_custom, settings, sandbox) -> None:
    """Stopping the process (task cancellation) mid-call: the call's record lands before the task ends."""
    transport = HeldTransport(sandbox)
    held = build_connectors(settings, transport=transport, retry=instant_retry())
    async with open_custom([two_writes()], {"pricing": held["pricing"]}) as steward:
        run, _ = await steward.executor.submit(workflow="two_writes", input={}, actor="alice")
        driving = asyncio.create_task(steward.executor.drive(run.id))
        await transport.in_call.wait()
        driving.cancel()
        await asyncio.sleep(0.05)
        transport.release.set()
        try:
            await driving
        except asyncio.CancelledError:
            pass
        recorded = await steward.db.run(lambda s: store.recorded_calls(session=s, run_id=run.id))
        current = await steward.db.run(lambda s: store.get_run(session=s, run_id=run.id))
    assert len(recorded) == 1, "the external write is on record for the execution that resumes the run"
    assert current.status == RunStatus.running  # left for another execution, not failed
    await held["pricing"].aclose()


def other_process(steward) -> Executor:
    """An executor that drives nothing of this run, as the API process of another host would be."""
    ex = steward.executor
    return Executor(db=steward.db, registry=steward.registry, connectors=ex.connectors,
                    checkpointer=ex.checkpointer, approvals=ex.approvals, policies=ex.policies)


def held_step(name: str, then) -> tuple[Workflow, asyncio.Event, asyncio.Event]:
    """A one-step workflow whose step waits for the test, then does ``then(runtime.context)``."""
    entered, go = asyncio.Event(), asyncio.Event()

    async def work(state: dict, runtime) -> dict:
        entered.set()
        await go.wait()
        return await then(runtime.context)

    return single_node_workflow(name, work, grants={"pricing.prices.write"}), entered, go


async def cancelled_elsewhere_while_held(steward, wf: Workflow, entered: asyncio.Event, go: asyncio.Event):
    """Drive a run of ``wf`` here, cancel it from "another process" while its step is held, let the step
    go on; the run as it ended and its audit trail."""
    run, _ = await steward.executor.submit(workflow=wf.name, input={}, actor="alice")
    driving = asyncio.create_task(steward.executor.drive(run.id))
    await entered.wait()
    await other_process(steward).cancel(run_id=run.id, actor="alice")
    go.set()
    run = await driving
    return run, await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))


async def test_a_cancel_from_another_process_is_noticed_at_the_executions_next_transaction(
    open_custom, sandbox
) -> None:
    async def then(ctx) -> dict:
        await ctx.record("look", lambda: "ok")  # one transaction: its fence reads the request
        await ctx.pricing.set_price(sku="SKU-1001", currency="EUR", amount="101.00")
        return {}

    wf, entered, go = held_step("cancel_elsewhere", then)
    async with open_custom([wf]) as steward:
        run, trail = await cancelled_elsewhere_while_held(steward, wf, entered, go)
    assert run.status == RunStatus.cancelled
    assert sandbox.state.sandbox.writes == {}, "the write after the cancel was refused"
    assert [e.kind for e in trail].count("run.cancelled") == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # notifications are PostgreSQL's
async def test_a_cancel_from_another_process_reaches_a_listening_worker_at_once(open_custom, sandbox) -> None:
    async def then(ctx) -> dict:
        await ctx.pricing.set_price(sku="SKU-1001", currency="EUR", amount="101.00")
        return {}

    wf, entered, go = held_step("cancel_notified", then)
    async with open_custom([wf]) as steward:
        worker = steward.executor
        worker.lease_seconds = 600  # no lease renewal (which also reads cancellations) during the test
        await worker.start()
        try:
            run, _ = await worker.submit(workflow=wf.name, input={}, actor="alice")
            await asyncio.wait_for(entered.wait(), 10)
            execution = worker._executions[run.id]
            await other_process(steward).cancel(run_id=run.id, actor="alice")
            for _ in range(200):  # no transaction of the execution in between: only the notification
                if execution.journal.stopping is not None:
                    break
                await asyncio.sleep(0.025)
            assert execution.journal.stopping is not None, "the notification never stopped the execution"
            go.set()
            for _ in range(200):
                current = await steward.db.run(lambda s: store.get_run(session=s, run_id=run.id))
                if current.status != RunStatus.running:
                    break
                await asyncio.sleep(0.025)
        finally:
            await worker.stop()
    assert current.status == RunStatus.cancelled
    assert sandbox.state.sandbox.writes == {}


async def test_a_cancel_that_arrives_as_the_run_pauses_for_approval_asks_nobody(open_custom, sandbox) -> None:
    async def then(ctx) -> dict:
        await ctx.request_approval(action="pricing.set_price", arguments={"amount": "1.00"}, reason="always")
        return {}

    wf, entered, go = held_step("cancel_at_pause", then)
    async with open_custom([wf]) as steward:
        run, trail = await cancelled_elsewhere_while_held(steward, wf, entered, go)
        approvals = await steward.db.run(lambda s: list_approvals(session=s, run_id=run.id))
    kinds = [e.kind for e in trail]
    assert run.status == RunStatus.cancelled, run.status
    assert approvals == [] and "approval.requested" not in kinds, "no one is asked about a cancelled run"
    assert kinds.count("run.cancelled") == 1 and kinds[-1] == "run.cancelled"


@pytest.mark.parametrize("gives_up", ["park", "release"])
async def test_a_cancel_read_as_the_run_is_given_up_cancels_it(open_custom, gives_up) -> None:
    """Cancelled in another process just before this worker parks the run (it does not serve the run's
    version) or gives it back (a database failure): the run ends cancelled, not queued for later."""
    from runtime.errors import DatabaseUnavailable
    from runtime.sdk import Registry

    async def work(state: dict, runtime) -> dict:
        if gives_up == "release":
            raise DatabaseUnavailable("the database went away")
        return {}

    wf = single_node_workflow(f"gives_up_{gives_up}", work, grants=set())
    async with open_custom([wf]) as steward:
        ex = steward.executor
        worker = ex if gives_up == "release" else Executor(
            db=steward.db, registry=Registry([]), connectors=ex.connectors, checkpointer=ex.checkpointer,
            approvals=ex.approvals, policies=ex.policies)
        run, _ = await ex.submit(workflow=wf.name, input={}, actor="alice")
        method = "_park" if gives_up == "park" else "_suspend"
        give_up = getattr(worker, method)

        async def cancelled_first(run_, journal, exc, **kwargs):
            await other_process(steward).cancel(run_id=run_.id, actor="alice")  # no notification reaches here
            return await give_up(run_, journal, exc, **kwargs)

        setattr(worker, method, cancelled_first)
        seen = await worker.drive(run.id)
        trail = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))
    kinds = [e.kind for e in trail]
    assert seen.status == RunStatus.cancelled, (seen.status, seen.status_reason)
    assert "run.parked" not in kinds and "run.suspended" not in kinds and kinds[-1] == "run.cancelled"
