"""The data-quality gate and the quarantine, on SQLite and PostgreSQL: failing records are quarantined
with their reasons and the batch goes on; the same record seen again is counted, not filed twice; a
step run again (after an approval, a takeover, a kill) files nothing twice; release and drop are
decided once under 20 concurrent requests, audited, and a released input starts its run."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import func, select

from approvals.service import decide
from approvals.store import list_approvals
from runtime import RecordChecks, Workflow, required, rule, unique
from runtime import audit, store
from runtime.errors import Conflict, InputInvalid, NotFound, WorkflowDefinitionError
from runtime.models import QuarantineItem, Run, RunStatus
from runtime.quality import matches, one_of
from runtime.service import Steward, open_steward
from runtime.settings import Settings
from tests import screen_workflow
from tests.fakes import OWNER, Empty, single_node_workflow

GOOD = {"email": "ann@acme.io", "country": "DE"}
NO_COUNTRY = {"email": "bob@acme.io"}
BAD_COUNTRY = {"email": "cy@acme.io", "country": "Germany"}
TEST_DOMAIN = {"email": "dee@example.test", "country": "FR"}


async def items(steward: Steward) -> list[QuarantineItem]:
    return list(await steward.quarantine.list(limit=1000))


async def kinds(steward: Steward, **filters: Any) -> list[str]:
    return [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s, **filters))]


async def imported(steward: Steward, contacts: list[dict[str, Any]], **extra: Any) -> Run:
    run, _ = await steward.executor.submit(workflow="contact_import", input={"contacts": contacts, **extra},
                                           actor="importer")
    return await steward.executor.drive(run.id)


@pytest.fixture
async def importing(open_custom):
    async with open_custom([screen_workflow.workflow]) as steward:
        yield steward


def test_checks_judge_each_record_and_duplicates_within_the_batch() -> None:
    checks = RecordChecks("contact", required("email", "properties.country"), one_of("tier", ["a", "b"]),
                          matches("zip", r"\d{5}"), unique("email"))
    failures = checks.failures([
        {"email": "A@x.io", "properties": {"country": "DE"}},
        {"email": "a@x.io ", "properties": {"country": "DE"}, "tier": "c", "zip": "1234"},
        {"email": "", "properties": {}},
        {"properties": {"country": "US"}},
    ])
    assert failures[0] == []
    assert [r["check"] for r in failures[1]] == ["one_of", "format", "duplicate"]
    assert "duplicate of record 0" in failures[1][2]["message"]
    assert [(r["check"], r["field"]) for r in failures[2]] == [("required", "email"),
                                                                ("required", "properties.country")]
    assert [(r["check"], r["field"]) for r in failures[3]] == [("required", "email")]  # no email: not a duplicate


def test_a_rule_that_cannot_judge_a_record_fails_that_record_only() -> None:
    checks = RecordChecks("lead", rule("lower_email", lambda r: None if r["email"].islower() else "upper case"))
    assert checks.failures([{"email": "a@b.io"}, {}, {"email": "A@b.io"}]) == [
        [], [{"check": "lower_email", "field": "", "message": "the check could not judge the record: KeyError: 'email'"}],
        [{"check": "lower_email", "field": "", "message": "upper case"}]]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: RecordChecks("Contact", required("email")), "lower_snake_case"),
    (lambda: RecordChecks("contact"), "one or more checks"),
    (lambda: RecordChecks("contact", "email"), "one or more checks"),
    (lambda: required(), "one or more field names"),
    (lambda: RecordChecks("contact", required("email"), resubmit="yes"), "resubmit must be a function"),
    (lambda: Workflow(name="twice", version="1.0.0", owner=OWNER, description="d", input_model=Empty,
                      build=screen_workflow.build, checks=[RecordChecks("a", required("x")),
                                                           RecordChecks("a", required("y"))]),
     "declared twice"),
])
def test_bad_check_declarations_fail_when_the_workflow_is_defined(make, message) -> None:
    with pytest.raises(WorkflowDefinitionError, match=message):
        make()


async def test_failing_records_are_quarantined_with_reasons_and_the_batch_goes_on(importing: Steward) -> None:
    run = await imported(importing, [GOOD, NO_COUNTRY, BAD_COUNTRY, TEST_DOMAIN, dict(GOOD, email="ANN@acme.io")])
    assert run.status == RunStatus.succeeded, run.error
    assert run.output["imported"] == ["ann@acme.io"]
    found = {item.record["email"]: item for item in await items(importing)}
    assert set(found) == {"bob@acme.io", "cy@acme.io", "dee@example.test", "ANN@acme.io"}
    assert sorted(run.output["quarantined"]) == sorted(item.id for item in found.values())
    assert [r["check"] for r in found["bob@acme.io"].reasons] == ["required"]
    assert "Germany" in found["cy@acme.io"].reasons[0]["message"]
    assert found["dee@example.test"].reasons == [{"check": "no_test_domain", "field": "email",
                                                  "message": "a test address"}]
    assert found["ANN@acme.io"].reasons[0]["check"] == "duplicate"
    item = found["bob@acme.io"]
    assert (item.workflow, item.version, item.kind, item.run_id, item.node, item.status, item.seen_count) == (
        "contact_import", "1.0.0", "contact", run.id, "screen", "quarantined", 1)
    [screened] = [e for e in await importing.db.run(lambda s: store.list_audit(session=s, run_id=run.id))
                  if e.kind == "records.screened"]
    assert screened.data["passed"] == 1 and len(screened.data["items"]) == 4
    assert "bob@acme.io" not in str(screened.data), "the audit names checks and digests, not the record's values"
    assert (await importing.db.run(audit.verify)).ok


async def test_a_batch_that_passes_whole_is_audited_and_files_nothing(importing: Steward) -> None:
    run = await imported(importing, [GOOD, {"email": "eve@acme.io", "country": "SE"}])
    assert run.output == {"imported": ["ann@acme.io", "eve@acme.io"], "quarantined": [], "released": []}
    assert await items(importing) == []
    assert "records.screened" in await kinds(importing, run_id=run.id)


async def test_the_same_bad_record_seen_again_is_counted_not_filed_twice(importing: Steward) -> None:
    first = await imported(importing, [GOOD, NO_COUNTRY])
    second = await imported(importing, [NO_COUNTRY])
    [item] = await items(importing)
    assert item.seen_count == 2 and item.run_id == first.id and item.last_run_id == second.id
    assert second.output["quarantined"] == [item.id]


async def test_twenty_runs_screening_the_same_record_at_once_share_one_item(importing: Steward) -> None:
    runs = [(await importing.executor.submit(workflow="contact_import", input={"contacts": [NO_COUNTRY]},
                                             actor="importer"))[0] for _ in range(20)]
    done = await asyncio.gather(*(importing.executor.drive(run.id) for run in runs))
    assert {run.status for run in done} == {RunStatus.succeeded}
    [item] = await items(importing)
    assert item.seen_count == 20
    assert {run.output["quarantined"][0] for run in done} == {item.id}


async def test_released_records_pass_and_dropped_ones_stay_out(importing: Steward) -> None:
    await imported(importing, [NO_COUNTRY, BAD_COUNTRY])
    by_email = {item.record["email"]: item for item in await items(importing)}
    released = await importing.quarantine.release(item_id=by_email["bob@acme.io"].id, actor="ops",
                                                  comment="country comes later")
    dropped = await importing.quarantine.drop(item_id=by_email["cy@acme.io"].id, actor="ops", comment="junk")
    assert (released.status, released.decided_by, released.comment, released.resubmitted_run_id) == (
        "released", "ops", "country comes later", None)
    assert dropped.status == "dropped"
    again = await imported(importing, [NO_COUNTRY, BAD_COUNTRY, GOOD])
    assert again.output["imported"] == ["bob@acme.io", "ann@acme.io"]
    assert again.output["released"] == [released.id] and again.output["quarantined"] == [dropped.id]
    assert {i.id: (i.status, i.seen_count) for i in await items(importing)} == {
        released.id: ("released", 2), dropped.id: ("dropped", 2)}
    trail = [e for e in await importing.db.run(lambda s: store.list_audit(session=s))
             if e.kind.startswith("quarantine.")]
    assert [(e.kind, e.actor, e.data["item_id"], e.data["comment"]) for e in trail] == [
        ("quarantine.released", "ops", released.id, "country comes later"),
        ("quarantine.dropped", "ops", dropped.id, "junk")]


async def test_a_decided_record_cannot_be_decided_again(importing: Steward) -> None:
    await imported(importing, [NO_COUNTRY])
    [item] = await items(importing)
    await importing.quarantine.drop(item_id=item.id, actor="ops")
    with pytest.raises(Conflict, match="already dropped by ops"):
        await importing.quarantine.release(item_id=item.id, actor="other")
    with pytest.raises(Conflict):
        await importing.quarantine.drop(item_id=item.id, actor="other")
    with pytest.raises(NotFound):
        await importing.quarantine.release(item_id="nope", actor="ops")


async def test_twenty_concurrent_decisions_on_one_record_are_taken_once(importing: Steward) -> None:
    await imported(importing, [NO_COUNTRY])
    [item] = await items(importing)
    barrier = asyncio.Barrier(20)

    async def decide_one(n: int) -> str:
        await barrier.wait()
        verb = importing.quarantine.release if n % 2 else importing.quarantine.drop
        try:
            await verb(item_id=item.id, actor=f"person{n}")
        except Conflict:
            return "conflict"
        return "won"

    outcomes = await asyncio.gather(*(decide_one(n) for n in range(20)))
    assert outcomes.count("won") == 1 and outcomes.count("conflict") == 19
    trail = [e for e in await importing.db.run(lambda s: store.list_audit(session=s)) if e.kind.startswith("quarantine.")]
    [decided] = await items(importing)
    assert len(trail) == 1 and trail[0].actor == decided.decided_by


async def test_a_clean_batch_screened_again_after_an_approval_is_screened_once(importing: Steward) -> None:
    run = await imported(importing, [GOOD], approve=True)
    [approval] = await importing.db.run(lambda s: list_approvals(session=s, run_id=run.id))
    await decide(importing, approval_id=approval.id, decision="approve", actor="bob")
    run = await importing.executor.drive(run.id)
    assert run.status == RunStatus.succeeded and run.output["imported"] == ["ann@acme.io"]
    assert (await kinds(importing, run_id=run.id)).count("records.screened") == 1


async def test_a_step_run_again_after_an_approval_files_nothing_twice(importing: Steward) -> None:
    run = await imported(importing, [GOOD, NO_COUNTRY], approve=True)
    assert run.status == RunStatus.waiting_approval
    [approval] = await importing.db.run(lambda s: list_approvals(session=s, run_id=run.id))
    await decide(importing, approval_id=approval.id, decision="approve", actor="bob")
    run = await importing.executor.drive(run.id)
    assert run.status == RunStatus.succeeded, run.error
    [item] = await items(importing)
    assert item.seen_count == 1 and run.output["quarantined"] == [item.id]
    assert (await kinds(importing, run_id=run.id)).count("records.screened") == 1


async def test_screening_an_undeclared_kind_fails_the_step_saying_what_is_declared(open_custom) -> None:
    async def work(state, runtime):
        await runtime.context.screen("lead", [{"email": "x"}])
        return {}

    wf = single_node_workflow("screens_wrong", work, grants=set())
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="screens_wrong", input={}, actor="alice")
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.failed
    assert "declares no data-quality checks for 'lead'" in run.error["message"]
    assert "declared: none" in run.error["message"]


async def test_a_record_no_json_column_can_keep_fails_the_step_saying_what_to_do(open_custom) -> None:
    async def work(state, runtime):
        await runtime.context.screen("contact", [{"email": "c@d.io", "country": "DE", "crm_id": 2**70}])
        return {}

    wf = Workflow(name="big_ids", version="1.0.0", owner=OWNER, description="reads big ids", input_model=Empty,
                  build=single_node_workflow("big_ids", work, grants=set()).build, checks=[screen_workflow.CONTACT])
    async with open_custom([wf, screen_workflow.workflow]) as steward:
        with pytest.raises(InputInvalid, match="send such numbers as strings"):  # nor may an input hold one
            await steward.executor.submit(workflow="contact_import", input={"contacts": [{"n": 2**70}]}, actor="a")
        run, _ = await steward.executor.submit(workflow="big_ids", input={}, actor="a")
        run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.failed and "pass such values (large ids) as strings" in run.error["message"]


async def test_releasing_a_record_that_is_no_valid_input_changes_nothing(open_custom) -> None:
    async def work(state, runtime):
        screening = await runtime.context.screen("lead", state["contacts"])
        return {"quarantined": [i["id"] for i in screening.quarantined]}

    def bad_resubmit(record: dict[str, Any]) -> dict[str, Any]:
        return {"contacts": "not a list"}

    wf = Workflow(name="lead_import", version="1.0.0", owner=OWNER, description="imports leads",
                  input_model=screen_workflow.Batch, build=screen_workflow.build,
                  checks=[RecordChecks("contact", required("company"), resubmit=bad_resubmit)])
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="lead_import", input={"contacts": [GOOD]}, actor="a")
        run = await steward.executor.drive(run.id)
        [item] = await items(steward)
        with pytest.raises(InputInvalid):
            await steward.quarantine.release(item_id=item.id, actor="ops")
        item = await steward.quarantine.get(item_id=item.id)
        assert item.status == "quarantined"
        runs = await steward.db.run(lambda s: s.scalar(select(func.count()).select_from(Run)))
        assert runs == 1
        assert not [e for e in await steward.db.run(lambda s: store.list_audit(session=s))
                    if e.kind.startswith("quarantine.")]


@pytest.mark.slow
async def test_killed_right_after_screening_the_resumed_run_files_nothing_twice(
    database_url, sandbox_process, cli_env, tmp_path
) -> None:
    die = tmp_path / "died"
    env = {**cli_env, "STEWARD_WORKFLOWS": '["workflows:WORKFLOWS", "tests.screen_workflow:workflow"]',
           "STEWARD_TEST_DIE_FILE": str(die), "STEWARD_LEASE_SECONDS": "600"}
    settings = Settings(database_url=database_url, crm_url=f"{sandbox_process}/crm",
                        pricing_url=f"{sandbox_process}/pricing", demo=True, lease_seconds=600,
                        workflows=["workflows:WORKFLOWS", "tests.screen_workflow:workflow"])
    async with open_steward(settings) as steward:
        run, _ = await steward.executor.submit(workflow="contact_import", input={"contacts": [GOOD, NO_COUNTRY]},
                                               actor="importer")
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tests.kill_driver", run.id, "0"],
                                       env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 137 and die.exists(), done.stderr[-3000:]
        [item] = await items(steward)  # the screening was committed before the process died
        run = await steward.executor.drive(run.id)  # the dead worker lived on this host: taken over at once
        assert run.status == RunStatus.succeeded, run.error
        assert run.output == {"imported": ["ann@acme.io"], "quarantined": [item.id], "released": []}
        [after] = await items(steward)
        assert after.seen_count == 1
        assert (await steward.db.run(audit.verify)).ok


async def test_twenty_runs_screening_the_same_records_in_other_orders_do_not_deadlock(importing: Steward) -> None:
    bad = [{"email": f"p{i}@acme.io"} for i in range(30)]
    runs = []
    for n in range(20):
        batch = bad[:]
        random.Random(n).shuffle(batch)
        runs.append((await importing.executor.submit(workflow="contact_import", input={"contacts": batch},
                                                     actor="importer"))[0])
    done = await asyncio.gather(*(importing.executor.drive(run.id) for run in runs))
    assert [run.status for run in done] == [RunStatus.succeeded] * 20, [run.error for run in done if run.error]
    found = await items(importing)
    assert len(found) == 30 and {item.seen_count for item in found} == {20}


async def test_identical_bad_records_in_one_batch_are_one_item_and_a_release_lets_one_copy_pass(
    importing: Steward
) -> None:
    first = await imported(importing, [NO_COUNTRY, dict(NO_COUNTRY)])
    [item] = await items(importing)
    assert item.seen_count == 1 and first.output["quarantined"] == [item.id, item.id]
    assert [r["check"] for r in item.reasons] == ["required"], "the first copy's reasons, not the duplicate's"
    await importing.quarantine.release(item_id=item.id, actor="ops")
    again = await imported(importing, [NO_COUNTRY, dict(NO_COUNTRY)])
    assert again.output["imported"] == ["bob@acme.io"], "a release vouches for the record, not for copies"
    assert again.output["released"] == [item.id] and again.output["quarantined"] == [item.id]


async def test_a_record_of_a_workflow_not_loaded_here_cannot_be_released(open_custom, importing: Steward) -> None:
    await imported(importing, [NO_COUNTRY])
    [item] = await items(importing)
    async with open_custom([]) as other:  # a server without contact_import
        with pytest.raises(Conflict, match="which this server does not load"):
            await other.quarantine.release(item_id=item.id, actor="ops")
        assert (await other.quarantine.get(item_id=item.id)).status == "quarantined"
        assert (await other.quarantine.drop(item_id=item.id, actor="ops")).status == "dropped"


async def test_a_resubmit_that_fails_on_the_record_is_bad_input_and_changes_nothing(open_custom) -> None:
    wf = Workflow(name="lead_import", version="1.0.0", owner=OWNER, description="imports leads",
                  input_model=screen_workflow.Batch, build=screen_workflow.build,
                  checks=[RecordChecks("contact", required("company"), resubmit=lambda r: {"contacts": [r["nope"]]})])
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow="lead_import", input={"contacts": [GOOD]}, actor="a")
        await steward.executor.drive(run.id)
        [item] = await items(steward)
        with pytest.raises(InputInvalid, match="resubmit failed on it \\(KeyError"):
            await steward.quarantine.release(item_id=item.id, actor="ops")
        assert (await steward.quarantine.get(item_id=item.id)).status == "quarantined"


def test_values_of_other_types_are_judged_not_crashed_on() -> None:
    checks = RecordChecks("row", one_of("tier", ["a", 1]), unique("code"),
                      rule("flagged", lambda r: r.get("flag", "")))
    failures = checks.failures([{"tier": ["a"], "code": 1}, {"tier": True, "code": True}, {"tier": 1, "code": 1.0},
                                {"tier": "a", "code": "1", "flag": False}, {"code": 1, "flag": "too old"}])
    assert [[r["check"] for r in f] for f in failures] == [["one_of"], ["one_of"], [], [], ["duplicate", "flagged"]]


# -- the HTTP API ----------------------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings, connectors):
    from fastapi.testclient import TestClient

    from runtime.app import create_app
    from runtime.sdk import Registry
    from workflows import WORKFLOWS

    app = create_app(settings, connectors=connectors, registry=Registry([*WORKFLOWS, screen_workflow.workflow]))
    with TestClient(app) as client:
        client.headers["Authorization"] = "Bearer steward-demo-operator"
        yield client


def run_import(api, contacts: list[dict[str, Any]]) -> dict[str, Any]:
    from tests.fakes import settle

    created = api.post("/api/v1/runs", json={"workflow": "contact_import", "input": {"contacts": contacts}})
    assert created.status_code == 201, created.text
    return settle(api, created.json()["id"], {"succeeded", "failed"})


def test_the_api_lists_pages_filters_and_decides(api) -> None:
    run = run_import(api, [NO_COUNTRY, BAD_COUNTRY, TEST_DOMAIN])
    assert run["status"] == "succeeded"
    listed = api.get("/api/v1/quarantine", params={"workflow": "contact_import", "status": "quarantined"}).json()
    assert len(listed["data"]) == 3 and listed["next_cursor"] is None
    first = api.get("/api/v1/quarantine", params={"limit": 2}).json()
    rest = api.get("/api/v1/quarantine", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(first["data"]) == 2 and len(rest["data"]) == 1 and rest["next_cursor"] is None
    assert {i["id"] for i in first["data"] + rest["data"]} == {i["id"] for i in listed["data"]}
    item = listed["data"][0]
    assert item["reasons"] and item["run_id"] == run["id"] and item["kind"] == "contact"
    assert api.get(f"/api/v1/quarantine/{item['id']}").json() == item

    released = api.post(f"/api/v1/quarantine/{item['id']}/release", json={"comment": "fine"})
    assert released.status_code == 200 and released.json()["status"] == "released"
    assert released.json()["decided_by"] == "demo.operator"
    again = api.post(f"/api/v1/quarantine/{item['id']}/drop", json={})
    assert again.status_code == 409 and "already released by demo.operator" in again.json()["detail"]
    other = listed["data"][1]["id"]
    assert api.post(f"/api/v1/quarantine/{other}/drop").json()["status"] == "dropped"  # no body: no comment
    assert [i["status"] for i in api.get("/api/v1/quarantine", params={"status": "released"}).json()["data"]] == [
        "released"]
    assert len(api.get("/api/v1/quarantine", params={"run_id": run["id"]}).json()["data"]) == 3
    events = api.get("/api/v1/audit").json()["data"]
    assert [e["kind"] for e in events if e["kind"].startswith("quarantine.")] == ["quarantine.released",
                                                                                   "quarantine.dropped"]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "loc"), [
    ("get", "/api/v1/quarantine", {"params": {"status": "lost"}}, 422, ["query", "status"]),
    ("get", "/api/v1/quarantine", {"params": {"limit": 0}}, 422, ["query", "limit"]),
    ("get", "/api/v1/quarantine", {"params": {"stauts": "released"}}, 422, ["query", "stauts"]),
    ("get", "/api/v1/quarantine", {"params": {"cursor": "bm9wZQ"}}, 422, ["query", "cursor"]),
    ("get", "/api/v1/quarantine", {"params": {"workflow": "a\x00b"}}, 422, ["query", "workflow"]),
    ("get", "/api/v1/quarantine/nope", {}, 404, None),
    ("post", "/api/v1/quarantine/nope/release", {"json": {}}, 404, None),
    ("post", "/api/v1/quarantine/nope/release", {"json": {"comment": "x" * 2001}}, 422, ["body", "comment"]),
    ("post", "/api/v1/quarantine/nope/drop", {"json": {"reason": "x"}}, 422, ["body", "reason"]),
])
def test_bad_requests_get_clear_errors(api, method, path, kwargs, status, loc) -> None:
    answer = getattr(api, method)(path, **kwargs)
    assert answer.status_code == status, answer.text
    if loc is not None:
        assert loc in [d["loc"] for d in answer.json()["errors"]]


def test_the_quarantine_needs_a_token(api) -> None:
    answer = api.get("/api/v1/quarantine", headers={"Authorization": ""})
    assert answer.status_code == 401
