"""Structured output for AI steps through a real run, on SQLite and PostgreSQL: answers parsed into a
pydantic model, invalid answers sent back a bounded number of times, an answer that stays invalid or is
not confident enough goes to a person with the raw answers, and a step that runs again (after an
approval, a node retry) never asks the model again."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.types import RetryPolicy
from pydantic import BaseModel

from approvals.service import decide
from approvals.store import list_approvals
from runtime.models import RunStatus
from runtime.service import Steward
from runtime.structured import parse
from runtime import Workflow
from tests.fakes import ScriptedChatModel, single_node_workflow


class Verdict(BaseModel):
    label: str
    confidence: float


GOOD = '{"label": "hot", "confidence": 0.9}'
UNSURE = '{"label": "warm", "confidence": 0.3}'


def asking(model: ScriptedChatModel, *, approve_after: bool = False, fail_first_attempt: bool = False,
           **options: Any):
    attempts = {"n": 0}

    async def work(state, runtime):
        got = await runtime.context.structured("verdict", model, [HumanMessage("judge this lead")], Verdict,
                                               **options)
        attempts["n"] += 1
        if fail_first_attempt and attempts["n"] == 1:
            raise ConnectionError("the node fails once after asking")
        if approve_after:
            await runtime.context.request_approval(action="lead.judge", arguments={"label": got.value.label},
                                                   reason="check the verdict")
        return {"label": got.value.label if got.value else None, "raw": got.raw, "errors": got.errors,
                "approved_by": got.approval.approved_by if got.approval else []}

    return work


def workflow_of(work, *, retry: bool = False) -> Workflow:
    policy = RetryPolicy(max_attempts=2, initial_interval=0.01, retry_on=ConnectionError) if retry else None
    return single_node_workflow("asks_model", work, grants=set(), retry_policy=policy)


async def drive(steward: Steward) -> Any:
    run, _ = await steward.executor.submit(workflow="asks_model", input={}, actor="alice")
    return await steward.executor.drive(run.id)


async def approve(steward: Steward, run_id: str, decision: str = "approve", actor: str = "bob") -> Any:
    [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run_id))
    await decide(steward, approval_id=approval.id, decision=decision, actor=actor)
    return approval


@pytest.mark.parametrize("answer", [GOOD, f"```json\n{GOOD}\n```", f"```\n{GOOD}\n```"])
def test_an_answer_parses_bare_or_in_a_code_fence(answer: str) -> None:
    assert parse(Verdict, answer) == Verdict(label="hot", confidence=0.9)


def test_an_invalid_answer_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="confidence: Field required"):
        parse(Verdict, '{"label": "hot"}')
    with pytest.raises(ValueError, match="Invalid JSON"):
        parse(Verdict, "hot, I think")


async def test_a_valid_answer_is_parsed_and_a_rerun_step_never_asks_again(open_custom) -> None:
    model = ScriptedChatModel(answers=[GOOD])
    wf = workflow_of(asking(model, approve_after=True))
    async with open_custom([wf]) as steward:
        run = await drive(steward)
        assert run.status == RunStatus.waiting_approval and model.calls == 1
        assert "JSON Schema" in model.prompts[0][0].content, "the schema is asked for"
        await approve(steward, run.id)
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["label"] == "hot" and model.calls == 1, "the node ran again on the recorded answer"


async def test_a_node_retried_by_its_retry_policy_never_asks_again(open_custom) -> None:
    model = ScriptedChatModel(answers=[GOOD])
    wf = workflow_of(asking(model, fail_first_attempt=True), retry=True)
    async with open_custom([wf]) as steward:
        run = await drive(steward)
    assert run.status == RunStatus.succeeded, run.error
    assert model.calls == 1


async def test_an_invalid_answer_is_sent_back_with_what_was_wrong(open_custom) -> None:
    model = ScriptedChatModel(answers=['{"label": "hot"}', GOOD])
    wf = workflow_of(asking(model))
    async with open_custom([wf]) as steward:
        run = await drive(steward)
    assert run.status == RunStatus.succeeded, run.error
    assert model.calls == 2 and run.output["label"] == "hot"
    assert run.output["errors"] == ["confidence: Field required"]
    feedback = model.prompts[1][-1].content
    assert "not valid: confidence: Field required" in feedback


async def test_an_answer_that_stays_invalid_goes_to_a_person_with_the_raw_answers(open_custom) -> None:
    model = ScriptedChatModel(answers=["no idea", '{"label": 3}'])
    wf = workflow_of(asking(model, attempts=3))
    async with open_custom([wf]) as steward:
        run = await drive(steward)
        assert run.status == RunStatus.waiting_approval and model.calls == 3
        approval = await approve(steward, run.id)
        assert approval.action == "model.verdict"
        assert approval.arguments["raw"] == ["no idea", '{"label": 3}', '{"label": 3}']
        assert len(approval.arguments["errors"]) == 3 and approval.arguments["parsed"] is None
        assert "no valid Verdict in 3 attempt(s)" in approval.reason
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["label"] is None and run.output["approved_by"] == ["bob"]
    assert model.calls == 3


async def test_a_rejected_escalation_ends_the_run_rejected(open_custom) -> None:
    model = ScriptedChatModel(answers=["no idea"])
    wf = workflow_of(asking(model, attempts=1))
    async with open_custom([wf]) as steward:
        run = await drive(steward)
        assert model.calls == 1
        await approve(steward, run.id, decision="reject")
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.rejected


@pytest.mark.parametrize(("answer", "waits"), [(UNSURE, True), ('{"label": "warm", "confidence": 0.6}', False)])
async def test_an_answer_below_the_confidence_threshold_goes_to_a_person(open_custom, answer, waits) -> None:
    model = ScriptedChatModel(answers=[answer])
    wf = workflow_of(asking(model, min_confidence=0.6))
    async with open_custom([wf]) as steward:
        run = await drive(steward)
        if waits:
            assert run.status == RunStatus.waiting_approval
            approval = await approve(steward, run.id)
            assert approval.arguments["parsed"] == {"label": "warm", "confidence": 0.3}
            assert "confidence 0.30 is below 0.60" in approval.reason
            run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["label"] == "warm" and model.calls == 1
    assert run.output["approved_by"] == (["bob"] if waits else [])


@pytest.mark.parametrize(("options", "message"), [
    ({"attempts": 0}, "attempts must be 1 to 5"),
    ({"attempts": 6}, "attempts must be 1 to 5"),
    ({"min_confidence": 1.5}, "min_confidence must be between 0 and 1"),
    ({"min_confidence": 0.5, "confidence": "certainty"}, "has no field 'certainty'"),
])
async def test_bad_options_fail_the_step_clearly(open_custom, options, message) -> None:
    model = ScriptedChatModel(answers=[GOOD])
    wf = workflow_of(asking(model, **options))
    async with open_custom([wf]) as steward:
        run = await drive(steward)
    assert run.status == RunStatus.failed and message in run.error["message"]
    assert model.calls == 0


class MaybeVerdict(BaseModel):
    label: str
    confidence: float | None = None


@pytest.mark.parametrize("answer", ['{"label": "hot", "confidence": null}', '{"label": "hot"}'])
async def test_an_answer_without_a_confidence_goes_to_a_person_when_there_is_a_threshold(open_custom,
                                                                                         answer) -> None:
    model = ScriptedChatModel(answers=[answer])

    async def work(state, runtime):
        got = await runtime.context.structured("verdict", model, [HumanMessage("judge")], MaybeVerdict,
                                               min_confidence=0.9)
        return {"label": got.value.label, "escalated": got.escalated}

    async with open_custom([workflow_of(work)]) as steward:
        run = await drive(steward)
        assert run.status == RunStatus.waiting_approval
        approval = await approve(steward, run.id)
        assert "states no confidence" in approval.reason
        run = await steward.executor.drive(run.id)
    assert run.output == {"label": "hot", "escalated": True}


async def test_a_threshold_without_a_confidence_is_a_clear_error(open_custom) -> None:
    model = ScriptedChatModel(answers=[GOOD])
    async with open_custom([workflow_of(asking(model, min_confidence=0.5, confidence=None))]) as steward:
        run = await drive(steward)
    assert run.status == RunStatus.failed and "min_confidence needs a confidence" in run.error["message"]


async def test_nan_is_no_valid_answer_and_the_escalation_can_be_stored(open_custom) -> None:
    model = ScriptedChatModel(answers=['{"label": "hot", "confidence": NaN}'])
    async with open_custom([workflow_of(asking(model, attempts=2, min_confidence=0.5))]) as steward:
        run = await drive(steward)
        assert run.status == RunStatus.waiting_approval, run.error
        approval = await approve(steward, run.id)
        assert approval.arguments["errors"] == ["the answer holds NaN, which is not a JSON number"] * 2
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded and run.output["label"] is None
