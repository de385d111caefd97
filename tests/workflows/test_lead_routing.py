"""lead_routing 1.2.0: leads screened into the quarantine (a release routes them in a new run) and
scored by a chat model as structured output (offline by default; a fake model here), with the
team's rules when the model gives nothing usable and a person lets the run go on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from approvals.service import decide
from approvals.store import list_approvals
from runtime import store
from runtime.errors import WorkflowDefinitionError
from runtime.models import RunStatus
from runtime.service import Steward, open_steward
from runtime.settings import Settings
from tests.fakes import ScriptedChatModel
from workflows.lead_scoring import LeadScore, OfflineScoringModel, prompt

LEAD = {"email": "jane@acme.io", "first_name": "Jane", "last_name": "Doe", "company": "Acme", "country": "DE",
        "source": "referral", "employees": 250, "budget": "50000"}
VAGUE = {"email": "sam@samco.io", "first_name": "Sam", "last_name": "Lee", "country": "US", "source": "web"}


async def route(steward: Steward, lead: dict[str, Any]) -> Any:
    run, _ = await steward.executor.submit(workflow="lead_routing", input=lead, actor="web-form")
    return await steward.executor.drive(run.id)


async def only_approval(steward: Steward, run_id: str) -> Any:
    [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run_id))
    return approval


@pytest.fixture
def open_with_model(settings: Settings, connectors):
    def opener(model: Any):
        return open_steward(settings, connectors=connectors, models={"lead_scoring": model})

    return opener


async def test_the_offline_model_scores_by_the_teams_rules(steward: Steward, sandbox) -> None:
    run = await route(steward, LEAD)
    assert run.status == RunStatus.succeeded, run.error
    assert (run.output["score"], run.output["scored_by"]) == (85, "model")
    note = sandbox.state.sandbox.objects["notes"][run.output["note_id"]]["properties"]["hs_note_body"]
    assert "score 85 by model: base 20, 100+ employees +20, budget 50k+ +30, referral source +15" in note


async def test_a_vague_lead_is_not_scored_without_a_person(steward: Steward, sandbox) -> None:
    run = await route(steward, VAGUE)
    assert run.status == RunStatus.waiting_approval
    assert sandbox.state.sandbox.objects["deals"] == {}, "nothing is acted on before the person decides"
    approval = await only_approval(steward, run.id)
    assert approval.action == "model.lead_score" and "confidence 0.50 is below 0.60" in approval.reason
    assert approval.arguments["parsed"]["confidence"] == 0.5 and len(approval.arguments["raw"]) == 1
    await decide(steward, approval_id=approval.id, decision="approve", actor="sales.lead")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["scored_by"] == "model, approved by sales.lead"


async def test_a_model_that_never_answers_validly_falls_back_to_the_rules_once_a_person_agrees(
    open_with_model, sandbox
) -> None:
    model = ScriptedChatModel(answers=["Score: 90 (hot lead!)", '{"score": 190, "reasons": ["big"], "confidence": 1}'])
    async with open_with_model(model) as steward:
        run = await route(steward, LEAD)
        assert run.status == RunStatus.waiting_approval and model.calls == 3
        approval = await only_approval(steward, run.id)
        assert approval.arguments["raw"][0] == "Score: 90 (hot lead!)"
        assert "score: Input should be less than or equal to 100" in approval.arguments["errors"][1]
        await decide(steward, approval_id=approval.id, decision="approve", actor="sales.lead")
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["score"] == 85 and run.output["scored_by"].startswith("rules")
    assert model.calls == 3, "the recorded answers were replayed, the model was not asked again"


async def test_a_configured_model_is_asked_with_the_lead(open_with_model) -> None:
    model = ScriptedChatModel(answers=['{"score": 42, "reasons": ["looks fine"], "confidence": 0.8}'])
    async with open_with_model(model) as steward:
        run = await route(steward, LEAD)
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["score"] == 42 and run.output["reasons"] == ["looks fine"]
    assert '"company": "Acme"' in model.prompts[0][-1].content


async def test_a_model_named_in_settings_serves_the_runs(settings: Settings, connectors) -> None:
    named = settings.model_copy(update={"models": {"lead_scoring": "tests.fakes:ScriptedChatModel"}})
    with pytest.raises(WorkflowDefinitionError, match="'lead_scoring' .* could not be made: ValidationError"):
        async with open_steward(named, connectors=connectors):
            pass
    named = settings.model_copy(update={"models": {"lead_scoring": "workflows.lead_scoring:OfflineScoringModel"}})
    async with open_steward(named, connectors=connectors) as steward:
        assert isinstance(steward.executor.models["lead_scoring"], OfflineScoringModel)
        run = await route(steward, LEAD)
    assert run.status == RunStatus.succeeded and run.output["score"] == 85


@pytest.mark.parametrize(("change", "check"), [
    ({"email": "jane@mailinator.com"}, "disposable_email"),
    ({"first_name": "test"}, "placeholder_name"),
    ({"last_name": "Doe2"}, "placeholder_name"),
])
async def test_a_suspect_lead_is_quarantined_and_a_release_routes_it(steward: Steward, sandbox, change,
                                                                     check) -> None:
    lead = {**LEAD, **change}
    run = await route(steward, lead)
    assert run.status == RunStatus.succeeded, run.error
    [item] = await steward.quarantine.list()
    assert run.output["quarantined"] == item.id and "deal_id" not in run.output
    assert item.kind == "lead" and [r["check"] for r in item.reasons] == [check]
    assert sandbox.state.sandbox.objects["deals"] == {}, "a quarantined lead is not routed"

    released = await steward.quarantine.release(item_id=item.id, actor="sales.lead", comment="a real person")
    assert released.resubmitted_run_id is not None
    routed = await steward.executor.drive(released.resubmitted_run_id)
    assert routed.status == RunStatus.succeeded, routed.error
    assert routed.input == run.input and routed.created_by == "sales.lead"
    assert routed.output["deal_id"] in sandbox.state.sandbox.objects["deals"]
    [after] = await steward.quarantine.list()
    assert (after.status, after.seen_count) == ("released", 2), "the new run saw it again and let it pass"


async def test_twenty_releases_of_one_lead_at_once_start_one_run(steward: Steward) -> None:
    run = await route(steward, {**LEAD, "email": "jane@yopmail.com"})
    [item] = await steward.quarantine.list()
    barrier = asyncio.Barrier(20)

    async def release(n: int) -> str | None:
        await barrier.wait()
        try:
            return (await steward.quarantine.release(item_id=item.id, actor=f"p{n}")).resubmitted_run_id
        except Exception as exc:  # noqa: BLE001 - counted below
            return type(exc).__name__

    outcomes = await asyncio.gather(*(release(n) for n in range(20)))
    run_ids = [o for o in outcomes if o != "Conflict"]
    assert len(run_ids) == 1 and outcomes.count("Conflict") == 19
    runs = await steward.db.run(lambda s: store.list_runs(session=s, limit=100))
    assert {r.id for r in runs} == {run.id, run_ids[0]}


def test_the_prompt_carries_the_lead_and_the_offline_model_reads_it_back() -> None:
    answer = OfflineScoringModel().invoke(prompt({**LEAD, "email": "jane@gmail.com"}))
    scored = LeadScore.model_validate_json(answer.content)
    assert (scored.score, scored.confidence) == (70, 0.9) and scored.reasons[-1] == "free mail domain -15"
