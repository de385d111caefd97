"""Call identity: fan-out branches, node retries, re-execution and recorded steps, on SQLite and PostgreSQL."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy, Send

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import list_approvals
from runtime import StepContext, Workflow, store
from runtime.models import RunStatus
from tests.fakes import OWNER, Empty, single_node_workflow

WRITE = {"pricing.prices.write", "pricing.prices.read"}


def price(sandbox, sku: str) -> str:
    return sandbox.state.sandbox.prices[(sku, "EUR")]["amount"]


async def calls(steward, run_id: str) -> list[Any]:
    from sqlalchemy import select

    from runtime.models import ConnectorCall

    return list(await steward.db.run(lambda s: s.scalars(
        select(ConnectorCall).where(ConnectorCall.run_id == run_id).order_by(ConnectorCall.created_at)).all()))


class FanState(TypedDict, total=False):
    written: Annotated[list[str], operator.add]


def fan_out_workflow(*, approval: bool = False) -> Workflow:
    targets = {"SKU-1001": "101.00", "SKU-1002": "102.00", "SKU-1003": "103.00"}

    def fan(state: FanState) -> list[Send]:
        return [Send("write", {"sku": sku, "amount": amount}) for sku, amount in targets.items()]

    async def write(item: dict, runtime) -> dict:
        if approval:
            await runtime.context.request_approval(action="pricing.set", arguments=item, reason="each price")
        done = await runtime.context.pricing.set_price(sku=item["sku"], currency="EUR", amount=item["amount"])
        return {"written": [f"{item['sku']}={done['amount']}"]}

    def build() -> StateGraph:
        graph = StateGraph(FanState, context_schema=StepContext)
        graph.add_node("write", write)
        graph.add_conditional_edges(START, fan, ["write"])
        graph.add_edge("write", END)
        return graph

    return Workflow(name="fan_out", version="1.0.0", owner=OWNER, description="three prices in parallel",
                    input_model=Empty, build=build, grants=WRITE)


async def test_send_branches_get_their_own_keys_and_each_writes_once(open_custom, sandbox) -> None:
    async with open_custom([fan_out_workflow()]) as steward:
        run, _ = await steward.executor.submit(workflow="fan_out", input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.succeeded, run.error
        assert sorted(run.output["written"]) == ["SKU-1001=101.00", "SKU-1002=102.00", "SKU-1003=103.00"]
        recorded = await calls(steward, run.id)
    assert [price(sandbox, s) for s in ("SKU-1001", "SKU-1002", "SKU-1003")] == ["101.00", "102.00", "103.00"]
    writes = sandbox.state.sandbox.writes
    assert len(writes) == 3 and set(writes.values()) == {1}, writes
    assert {c.idempotency_key for c in recorded} == set(writes)


async def test_send_branches_paused_for_approval_resume_with_their_own_keys(open_custom, sandbox) -> None:
    async with open_custom([fan_out_workflow(approval=True)]) as steward:
        run, _ = await steward.executor.submit(workflow="fan_out", input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.waiting_approval
        approvals = await steward.db.run(lambda s: list_approvals(session=s, run_id=run.id))
        assert len(approvals) == 3
        for approval in approvals:
            await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.succeeded, run.error
    writes = sandbox.state.sandbox.writes
    assert len(writes) == 3 and set(writes.values()) == {1}, writes


def flaky_after_write_workflow(failures: list[int]) -> Workflow:
    class Flaky(ConnectionError):
        pass

    async def write_then_fail(state: dict, runtime) -> dict:
        done = await runtime.context.pricing.set_price(sku="SKU-1004", currency="EUR", amount="109.00")
        again = await runtime.context.pricing.get_price(sku="SKU-1004", currency="EUR")
        if failures:
            failures.pop()
            raise Flaky("the network dropped after the write")
        return {"amount": done["amount"], "read": again["amount"]}

    def build() -> StateGraph:
        graph = StateGraph(dict, context_schema=StepContext)
        graph.add_node("work", write_then_fail, retry_policy=RetryPolicy(max_attempts=4, initial_interval=0.01,
                                                                       jitter=False))
        graph.add_edge(START, "work")
        graph.add_edge("work", END)
        return graph

    return Workflow(name="flaky", version="1.0.0", owner=OWNER, description="retried by LangGraph",
                    input_model=Empty, build=build, grants=WRITE)


async def test_node_retry_policy_replays_the_write_instead_of_repeating_it(open_custom, sandbox) -> None:
    failures = [1, 1]
    async with open_custom([flaky_after_write_workflow(failures)]) as steward:
        run, _ = await steward.executor.submit(workflow="flaky", input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.succeeded, run.error
        assert failures == [], "the node failed twice and was retried by its RetryPolicy"
        trail = [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))]
        recorded = await calls(steward, run.id)
    assert run.output == {"amount": "109.00", "read": "109.00"}
    assert list(sandbox.state.sandbox.writes.values()) == [1], sandbox.state.sandbox.writes
    assert len(recorded) == 2, "one write and one read, each recorded once"
    assert trail.count("connector.call") == 2 and trail.count("connector.replayed") == 4


async def test_a_different_call_on_re_execution_is_refused_and_writes_nothing(open_custom, sandbox) -> None:
    proposals = iter(["105.00", "107.50"])  # a model proposing another price the second time

    async def llm_driven(state: dict, runtime) -> dict:
        current = await runtime.context.pricing.get_price(sku="SKU-1005", currency="EUR")
        amount = next(proposals)
        await runtime.context.request_approval(action="pricing.set", arguments={"amount": "any"}, reason="check")
        done = await runtime.context.pricing.set_price(sku="SKU-1005", currency="EUR", amount=amount)
        return {"before": current["amount"], "after": done["amount"]}

    wf = single_node_workflow("llm_driven", llm_driven, grants=WRITE)
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="llm_driven", input={}, actor="alice")
        await steward.executor.drive(run.id)
        [approval] = await steward.db.run(
            lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        # the read replays at position 0, the write is new at position 1: this one is allowed
        assert run.status == RunStatus.succeeded and run.output["after"] == "107.50"

    positions = iter([("get_price", "SKU-1006"), ("get_price", "SKU-1007")])

    async def reads_differently(state: dict, runtime) -> dict:
        _, sku = next(positions)
        await runtime.context.pricing.get_price(sku=sku, currency="EUR")
        await runtime.context.request_approval(action="pricing.set", arguments={"sku": "x"}, reason="check")
        await runtime.context.pricing.set_price(sku=sku, currency="EUR", amount="99.00")
        return {}

    wf = single_node_workflow("drifts", reads_differently, grants=WRITE)
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="drifts", input={}, actor="alice")
        await steward.executor.drive(run.id)
        [approval] = await steward.db.run(
            lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.failed
        assert run.error["code"] == "non_deterministic_replay"
        assert "'work'" in run.error["message"] and "position 0" in run.error["message"]
        assert run.error["details"]["recorded_action"] == "pricing.get_price"
    assert "SKU-1006" not in str(sandbox.state.sandbox.writes) and price(sandbox, "SKU-1007") == "100.00"
    assert price(sandbox, "SKU-1006") == "100.00"


async def test_another_action_at_a_recorded_position_is_refused(open_custom, sandbox) -> None:
    first = [True]

    async def switches(state: dict, runtime) -> dict:
        if first:
            first.pop()
            await runtime.context.pricing.get_price(sku="SKU-1008", currency="EUR")
        else:
            await runtime.context.pricing.set_price(sku="SKU-1008", currency="EUR", amount="101.00")
        await runtime.context.request_approval(action="go", arguments={}, reason="check")
        return {}

    wf = single_node_workflow("switches", switches, grants=WRITE)
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="switches", input={}, actor="alice")
        await steward.executor.drive(run.id)
        [approval] = await steward.db.run(
            lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.failed and run.error["code"] == "non_deterministic_replay"
        assert run.error["details"] == {"node": "work", "position": 0, "recorded_action": "pricing.get_price",
                                        "proposed_action": "pricing.set_price"}
    assert sandbox.state.sandbox.writes == {} and price(sandbox, "SKU-1008") == "100.00"


async def test_recorded_step_is_not_called_again_after_approval(open_custom) -> None:
    model_calls: list[str] = []

    async def chat_model(prompt: str) -> dict:
        model_calls.append(prompt)
        return {"score": 87 if len(model_calls) == 1 else 12, "label": "hot"}

    async def score(state: dict, runtime) -> dict:
        scored = await runtime.context.record("score_lead", chat_model, "score jane@acme.io")
        await runtime.context.request_approval(action="crm.assign", arguments=scored, reason="a person checks")
        return {"score": scored["score"]}

    wf = single_node_workflow("scored", score, grants=set())
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="scored", input={}, actor="alice")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.waiting_approval
        [approval] = await steward.db.run(
            lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
        assert approval.arguments == {"score": 87, "label": "hot"}
        await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
        run = await steward.executor.drive(run.id)
        assert run.status == RunStatus.succeeded, run.error
        assert run.output == {"score": 87}
        kinds = [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))]
    assert model_calls == ["score jane@acme.io"], "the model is asked once; the re-executed node replays its answer"
    assert kinds.count("record.made") == 1 and kinds.count("record.replayed") == 1


async def test_record_outside_a_node_is_a_clear_error(steward) -> None:
    import pytest

    from runtime.context import StepContext
    from runtime.errors import StewardError
    from runtime.gate import Gate

    gate = Gate.__new__(Gate)
    ctx = StepContext(run_id="r", workflow="w", version="1.0.0", gate=gate, connectors={})
    with pytest.raises(StewardError, match="inside a workflow node"):
        await ctx.record("x", lambda: 1)
