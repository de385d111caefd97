"""The long-poll answers as soon as it has seen the status leave ``seen``, even when the run comes back to
that status before the answer is read (a run asking a second person right after the first decided)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from langgraph.graph import END, START, StateGraph

from runtime import StepContext, Workflow, store
from tests.fakes import OWNER, Empty

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}
APPROVER = {"Authorization": "Bearer steward-demo-approver"}


def _two_approvals() -> Workflow:
    def node(name: str):
        async def ask(state: dict, runtime) -> dict:
            await runtime.context.request_approval(action=f"ask.{name}", arguments={"n": name}, reason=name)
            return {name: True}
        return ask

    def build() -> StateGraph:
        graph = StateGraph(dict, context_schema=StepContext)
        graph.add_node("first", node("first"))
        graph.add_node("second", node("second"))
        graph.add_edge(START, "first")
        graph.add_edge("first", "second")
        graph.add_edge("second", END)
        return graph

    return Workflow(name="two_approvals", version="1.0.0", owner=OWNER, description="asks twice",
                    input_model=Empty, build=build, grants=set())


EXTRA = [_two_approvals()]


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"workflows": [*settings.workflows, f"{__name__}:EXTRA"]})


def test_a_status_seen_to_leave_seen_is_answered_even_if_the_run_comes_back_to_it(live_server, monkeypatch) -> None:
    base = live_server.url
    live_server.app.state.steward.changes.fallback_seconds = 60.0  # only the change wakes the long-poll
    real = store.run_status

    def slow_status(cursor, *, raw, run_id):  # the run asks its second person right after this read
        status = real(cursor, raw=raw, run_id=run_id)
        deadline = time.monotonic() + 10
        while status.value != "waiting_approval" and time.monotonic() < deadline and \
                real(cursor, raw=raw, run_id=run_id).value != "waiting_approval":
            time.sleep(0.02)
        return status

    run = httpx.post(f"{base}/api/v1/runs", json={"workflow": "two_approvals", "input": {}}, headers=OPERATOR).json()
    first = httpx.get(f"{base}/api/v1/runs/{run['id']}", headers=OPERATOR, timeout=40,
                      params=[("wait", 30), ("until", "waiting_approval")]).json()
    assert first["status"] == "waiting_approval"
    monkeypatch.setattr(store, "run_status", slow_status)
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(httpx.get, f"{base}/api/v1/runs/{run['id']}", headers=OPERATOR, timeout=40,
                             params={"wait": 10, "seen": "waiting_approval"})
        time.sleep(0.3)
        assert httpx.post(f"{base}/api/v1/approvals/{first['pending_approval_id']}/decision",
                          json={"decision": "approve"}, headers=APPROVER).status_code == 200
        answer = waiter.result()
    assert answer.elapsed.total_seconds() < 5, "it saw the status leave `seen` and still waited for the timeout"
    assert answer.json()["pending_approval_id"] != first["pending_approval_id"]
