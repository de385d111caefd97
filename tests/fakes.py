"""Shared fakes: instant retries, a recording sleep, a test connector, small workflows, a scripted chat model."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from runtime import Connector, Effect, Owner, RetryPolicy, StepContext, Workflow, action


class RecordingSleep:
    """An injectable sleep that never sleeps and remembers every wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def instant_retry(attempts: int = 3, sleep: RecordingSleep | None = None) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, initial_wait=0.5, max_wait=5.0, sleep=sleep or RecordingSleep())


class TicketConnector(Connector):
    """A test connector whose ``escalate`` action always needs approval."""

    name = "tickets"

    @action(scope="tickets.write", effect=Effect.write)
    async def open(self, *, title: str) -> dict[str, Any]:
        return await self.request("POST", "/tickets", json={"title": title})

    @action(scope="tickets.escalate", effect=Effect.message, requires_approval=True)
    async def escalate(self, *, ticket_id: str, to: str) -> dict[str, Any]:
        return await self.request("POST", f"/tickets/{ticket_id}/escalate", json={"to": to})


class Empty(BaseModel):
    pass


OWNER = Owner(name="Test Owner", email="owner@example.com")


def single_node_workflow(name: str, node, *, grants: set[str], state: type = dict,
                         retry_policy: Any = None) -> Workflow:
    def build() -> StateGraph:
        graph = StateGraph(state, context_schema=StepContext)
        graph.add_node("work", node, retry_policy=retry_policy)
        graph.add_edge(START, "work")
        graph.add_edge("work", END)
        return graph

    return Workflow(name=name, version="1.0.0", owner=OWNER, description=f"test workflow {name}",
                    input_model=Empty, build=build, grants=grants)


def settle(client: Any, run_id: str, until: set[str], *, headers: dict[str, str] | None = None,
           wait: float = 30) -> dict[str, Any]:
    """Follow a run through the API's long-poll (``?wait=&seen=``) until its status is in ``until``; a
    bounded number of requests, each answered by a change, not a timer."""
    headers = headers or {"Authorization": "Bearer steward-demo-operator"}
    seen = None
    for _ in range(20):
        run = client.get(f"/api/v1/runs/{run_id}", params={"wait": wait, **({"seen": seen} if seen else {})},
                         headers=headers).json()
        if run["status"] in until:
            return run
        seen = run["status"]
    raise AssertionError(f"run {run_id} never reached {until}")


class ScriptedChatModel(BaseChatModel):
    """A fake chat model answering from a script (the last answer repeats), remembering every prompt."""

    answers: list[str]
    prompts: list[list[Any]] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[Any], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.prompts.append(list(messages))
        answer = self.answers[min(len(self.prompts), len(self.answers)) - 1]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(answer))])

    @property
    def calls(self) -> int:
        return len(self.prompts)
