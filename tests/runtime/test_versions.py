"""Versions side by side: runs pinned to the version they started on, parked when it is not loaded,
and a version's code frozen (by hash) once it has runs. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from sqlalchemy import update

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import list_approvals
from runtime import StepContext, audit, store
from runtime.api.schemas import RunPublic
from runtime.db import Database
from runtime.errors import WorkflowCodeChanged, WorkflowDefinitionError, WorkflowNotFound
from runtime.models import RunStatus, WorkflowVersion
from runtime.sdk import Registry, semver_key
from runtime.service import Steward, open_steward
from runtime.versions import register_versions
from workflows import lead_routing, price_change

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}
PRICE_104 = {"items": [{"sku": "SKU-1003", "new_price": "104.00", "currency": "EUR"}], "reason": "small uplift"}


async def stamp(state: price_change.State) -> price_change.State:
    return {"summary": {**state["summary"], "graph_version": "1.1.0"}}


def build_v110() -> StateGraph:
    """price_change 1.1.0: the 1.0.0 steps, then a ``stamp`` step that marks the summary."""
    graph = StateGraph(price_change.State, context_schema=StepContext)
    graph.add_node("read_prices", price_change.read_prices)
    graph.add_node("apply_prices", price_change.apply_prices)
    graph.add_node("record", price_change.record)
    graph.add_node("stamp", stamp)
    graph.add_edge(START, "read_prices")
    graph.add_edge("read_prices", "apply_prices")
    graph.add_edge("apply_prices", "record")
    graph.add_edge("record", "stamp")
    graph.add_edge("stamp", END)
    return graph


V100 = replace(price_change.workflow, version="1.0.0")  # the shipped code as a 1.0.0 of these tests' own
V110 = replace(V100, version="1.1.0", build=build_v110)
V100_EDITED = replace(V100, build=build_v110)  # 1.0.0's code changed, its version not bumped


@pytest.fixture
def open_with(settings, connectors):
    """Open a Steward serving exactly these workflow versions (what one deployment loads)."""

    @asynccontextmanager
    async def opener(*workflows):
        async with open_steward(settings, registry=Registry(workflows), connectors=connectors) as opened:
            yield opened

    return opener


def price(sandbox, sku: str) -> str:
    return sandbox.state.sandbox.prices[(sku, "EUR")]["amount"]


async def get(steward: Steward, run_id: str):
    return await steward.db.run(lambda s: store.get_run(session=s, run_id=run_id))


async def trail(steward: Steward, run_id: str) -> list[Any]:
    return list(await steward.db.run(lambda s: store.list_audit(session=s, run_id=run_id)))


async def steps(steward: Steward, run_id: str) -> list[str]:
    return [step.node for step in await steward.db.run(lambda s: store.list_steps(session=s, run_id=run_id))]


async def only_pending(steward: Steward, run_id: str):
    [approval] = await steward.db.run(
        lambda s: list_approvals(session=s, run_id=run_id, status=ApprovalStatus.pending))
    return approval


async def settle(steward: Steward, run_id: str):
    """Wait until the background executor ends the run (bounded, not a timing check)."""
    deadline = time.monotonic() + 60
    while True:
        run = await get(steward, run_id)
        if run.status.finished or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.02)


async def hashes(steward: Steward) -> dict[tuple[str, str], str]:
    rows = await steward.db.run(lambda s: store.list_workflow_versions(session=s))
    return {(row.name, row.version): row.code_hash for row in rows}


# -- the registry -------------------------------------------------------------------------------


def test_versions_sort_by_semantic_version_precedence() -> None:
    ordered = ["0.9.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.9.0", "1.10.0", "2.0.0"]
    shuffled = ordered[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=semver_key) == ordered


def test_the_registry_serves_every_version_and_defaults_to_the_highest() -> None:
    versions = ["1.9.0", "1.10.0-rc.1", "1.10.0", "1.2.0"]
    registry = Registry([lead_routing.workflow, *(replace(V100, version=v) for v in versions)])
    assert registry.get("price_change").version == "1.10.0", "1.10.0 > 1.9.0, and a release > its pre-release"
    assert registry.get("price_change", "1.9.0").version == "1.9.0"
    assert registry.get("price_change", version=None).version == "1.10.0"
    assert len(registry) == 5
    assert [(wf.name, wf.version) for wf in registry] == [
        ("lead_routing", "1.2.0"), ("price_change", "1.2.0"), ("price_change", "1.9.0"),
        ("price_change", "1.10.0-rc.1"), ("price_change", "1.10.0")]
    assert registry.versions("price_change") == ["1.2.0", "1.9.0", "1.10.0-rc.1", "1.10.0"]
    with pytest.raises(WorkflowNotFound, match=r"no version '2\.0\.0'.*loaded: 1\.2\.0, 1\.9\.0, 1\.10\.0-rc\.1, 1\.10\.0$"):
        registry.get("price_change", "2.0.0")
    with pytest.raises(WorkflowNotFound, match="no workflow named 'nope'"):
        registry.get("nope")


def test_the_same_version_twice_is_refused_but_two_versions_are_not() -> None:
    assert len(Registry([V100, V110])) == 2
    with pytest.raises(WorkflowDefinitionError, match=r"'price_change' version 1\.0\.0 is registered twice"):
        Registry([V100, V110, V100_EDITED])


def test_the_code_hash_covers_the_module_that_defines_build_and_those_of_its_steps() -> None:
    shipped = hashlib.sha256(Path(price_change.__file__).read_text().encode()).hexdigest()
    assert V100.code_hash == shipped  # one module: the SHA-256 of its source
    ours = hashlib.sha256(Path(__file__).read_text().encode()).hexdigest()
    parts = sorted([(__name__, ours), (price_change.__name__, shipped)])  # 1.1.0 uses 1.0.0's steps: both count
    assert V110.code_hash == hashlib.sha256("".join(f"{n}\n{d}\n" for n, d in parts).encode()).hexdigest()
    assert V100_EDITED.code_hash == V110.code_hash != V100.code_hash


# -- submitting and resuming --------------------------------------------------------------------


async def test_new_runs_take_the_stable_version_unless_one_is_named(open_with, sandbox) -> None:
    """Nobody rolled price_change out: its lowest loaded version is stable, and 1.1.0 takes runs that
    name it until an operator promotes it."""
    async with open_with(V100, V110) as steward:
        first, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice",
                                                 idempotency_key="before")
        assert first.version == "1.0.0"
        await steward.executor.change_rollout(workflow="price_change", action="promote", version="1.1.0",
                                              actor="ops", reason="1.1.0 stamps its summary")
        latest, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
        named, _ = await steward.executor.submit(workflow="price_change", input=PRICE_104, actor="alice",
                                                 version="1.0.0")
        assert (latest.version, named.version) == ("1.1.0", "1.0.0")
        latest, named = await steward.executor.drive(latest.id), await steward.executor.drive(named.id)
        assert latest.status == named.status == RunStatus.succeeded
        assert latest.output["summary"]["graph_version"] == "1.1.0"
        assert "graph_version" not in named.output["summary"]
        assert await steps(steward, latest.id) == ["read_prices", "apply_prices", "record", "stamp"]
        assert await steps(steward, named.id) == ["read_prices", "apply_prices", "record"]
        with pytest.raises(WorkflowNotFound, match=r"'price_change' has no version '2\.0\.0'; loaded: 1\.0\.0, 1\.1\.0"):
            await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice", version="2.0.0")


async def test_a_run_waiting_on_1_0_0_finishes_on_1_0_0_after_1_1_0_is_deployed(open_with, sandbox) -> None:
    async with open_with(lead_routing.workflow, V100) as old:
        run, _ = await old.executor.submit(workflow="price_change", input=PRICE_115, actor="alice")
        assert (await old.executor.drive(run.id)).status == RunStatus.waiting_approval
        approval = await only_pending(old, run.id)

    async with open_with(lead_routing.workflow, V100, V110) as new:
        await decide(new, approval_id=approval.id, decision="approve", actor="bob")
        done = await new.executor.drive(run.id)
        assert (done.status, done.version) == (RunStatus.succeeded, "1.0.0")
        assert done.output["summary"]["changed"] == 1
        assert "graph_version" not in done.output["summary"], "resumed on the graph it started on"
        assert await steps(new, run.id) == ["read_prices", "apply_prices", "record"]
        assert price(sandbox, "SKU-1001") == "115.00"

        await new.executor.change_rollout(workflow="price_change", action="promote", version="1.1.0",
                                          actor="ops", reason="1.1.0 is deployed")
        fresh, _ = await new.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
        fresh = await new.executor.drive(fresh.id)
        assert (fresh.version, fresh.output["summary"]["graph_version"]) == ("1.1.0", "1.1.0")
        assert (await new.db.run(audit.verify)).ok


async def test_a_run_whose_version_is_gone_is_parked_not_failed_until_a_process_serves_it(
    open_with, sandbox
) -> None:
    async with open_with(V100) as old:
        run, _ = await old.executor.submit(workflow="price_change", input=PRICE_115, actor="alice")
        await old.executor.drive(run.id)
        approval = await only_pending(old, run.id)

    async with open_with(V110) as new:  # a deployment that dropped 1.0.0
        await decide(new, approval_id=approval.id, decision="approve", actor="bob")
        parked = await new.executor.drive(run.id)
        assert (parked.status, parked.version, parked.error) == (RunStatus.queued, "1.0.0", None)
        assert "price_change 1.0.0" in parked.status_reason and "loaded: 1.1.0" in parked.status_reason
        assert RunPublic.model_validate(parked).status_reason == parked.status_reason
        [event] = [e for e in await trail(new, run.id) if e.kind == "run.parked"]
        assert event.data["version"] == "1.0.0" and event.data["reason"] == parked.status_reason
        assert price(sandbox, "SKU-1001") == "100.00", "nothing ran"

        # The poller offers a parked run only to a process that serves its version.
        offered = await new.db.run(lambda s: store.claimable_run_ids(session=s, limit=10,
                                                                     serves=new.registry.keys()))
        assert run.id not in offered
        serving = await new.db.run(lambda s: store.claimable_run_ids(session=s, limit=10,
                                                                     serves=[("price_change", "1.0.0")]))
        assert serving == [run.id]
        await new.executor.start()  # a run the poller can take meanwhile is taken; the parked one is not
        other, _ = await new.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
        assert (await settle(new, other.id)).status == RunStatus.succeeded
        await new.executor.stop()
        still = await get(new, run.id)
        assert (still.status, still.executions, still.status_reason) == (
            RunStatus.queued, parked.executions, parked.status_reason)

    async with open_with(V100, V110) as both:  # a process that serves 1.0.0 starts
        await both.executor.start()
        done = await settle(both, run.id)
        assert (done.status, done.version, done.status_reason) == (RunStatus.succeeded, "1.0.0", None)
        assert done.output["summary"]["changed"] == 1
        assert price(sandbox, "SKU-1001") == "115.00"
        kinds = [e.kind for e in await trail(both, run.id)]
        assert kinds.count("run.parked") == 1 and kinds[-1] == "run.succeeded"
        assert (await both.db.run(audit.verify)).ok


async def test_a_parked_run_can_still_be_cancelled(open_with) -> None:
    async with open_with(V110) as new:
        run, _ = await new.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
    async with open_with(V100) as old:
        assert (await old.executor.drive(run.id)).status_reason.startswith("waiting for a process")
        cancelled = await old.executor.cancel(run_id=run.id, actor="ops")
        assert (cancelled.status, cancelled.status_reason) == (RunStatus.cancelled, None)


# -- code hashes --------------------------------------------------------------------------------


async def test_start_up_registers_every_loaded_version_with_its_code_hash(open_with) -> None:
    async with open_with(lead_routing.workflow, V100, V110) as steward:
        assert await hashes(steward) == {
            ("lead_routing", "1.2.0"): lead_routing.workflow.code_hash,
            ("price_change", "1.0.0"): V100.code_hash,
            ("price_change", "1.1.0"): V110.code_hash,
        }
        kinds = [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s))]
        assert kinds.count("workflow.registered") == 3
    async with open_with(V100, V110) as again:  # the same code again: nothing new to record
        kinds = [e.kind for e in await again.db.run(lambda s: store.list_audit(session=s))]
        assert kinds.count("workflow.registered") == 3


@pytest.mark.parametrize("change", ["build in another module", "another hash on record"])
async def test_changed_code_under_a_version_with_runs_refuses_to_start(open_with, settings, change) -> None:
    edited = change == "build in another module"
    async with open_with(V100) as steward:
        await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
        if not edited:  # as if the run had started on other code under the same version
            await steward.db.run(lambda s: s.execute(
                update(WorkflowVersion).where(WorkflowVersion.name == "price_change").values(code_hash="ab" * 32)))
    recorded, loaded = (V100.code_hash, V100_EDITED.code_hash) if edited else ("ab" * 32, V100.code_hash)
    message = (rf"^workflow price_change 1\.0\.0 changed since runs started on it "
               rf"\(code hash {recorded[:8]}… → {loaded[:8]}…\): bump the version")
    with pytest.raises(WorkflowCodeChanged, match=message):
        async with open_with(V100_EDITED if edited else V100):
            pass

    db = Database(settings.database_url)
    try:
        rows = await db.run(lambda s: store.list_workflow_versions(session=s))
        assert [(r.name, r.version, r.code_hash) for r in rows] == [("price_change", "1.0.0", recorded)]
    finally:
        await db.dispose()
    if edited:
        async with open_with(V100):  # the code the runs started on still starts
            pass


async def test_changed_code_under_a_version_without_runs_is_recorded(open_with) -> None:
    async with open_with(V100, V110) as steward:
        await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice", version="1.1.0")
    async with open_with(V100_EDITED, V110) as steward:
        assert (await hashes(steward))[("price_change", "1.0.0")] == V100_EDITED.code_hash
        [event] = [e for e in await steward.db.run(lambda s: store.list_audit(session=s))
                   if e.kind == "workflow.registered" and e.data["previous_hash"]]
        assert event.data == {"name": "price_change", "version": "1.0.0", "code_hash": V100_EDITED.code_hash,
                              "previous_hash": V100.code_hash}


async def test_concurrent_start_ups_register_a_version_once(settings) -> None:
    databases = [Database(settings.database_url) for _ in range(4)]
    if databases[0].is_sqlite:
        databases[0].upgrade()
    registry = Registry([V100, V110])
    try:
        await asyncio.gather(*(register_versions(db, registry) for db in databases))
        rows = await databases[0].run(lambda s: store.list_workflow_versions(session=s))
        assert sorted((r.name, r.version, r.code_hash) for r in rows) == [
            ("price_change", "1.0.0", V100.code_hash), ("price_change", "1.1.0", V110.code_hash)]
        kinds = [e.kind for e in await databases[0].run(lambda s: store.list_audit(session=s))]
        assert kinds.count("workflow.registered") == 2
    finally:
        for db in databases:
            await db.dispose()


# -- the HTTP API and the CLI -------------------------------------------------------------------


def test_the_api_pins_a_named_version_and_refuses_unknown_or_malformed_ones(client) -> None:
    def post(**extra: Any):
        body = {"workflow": "price_change", "input": PRICE_105, **extra}
        return client.post("/api/v1/runs", json=body, headers=client.operator)

    created = post(version="1.1.0")
    assert created.status_code == 201
    assert created.json()["version"] == "1.1.0" and created.json()["status_reason"] is None
    before = len(client.get("/api/v1/runs", headers=client.operator).json()["data"])

    unknown = post(version="9.9.9")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "workflow_not_found"
    assert unknown.json()["detail"] == "workflow 'price_change' has no version '9.9.9'; loaded: 1.1.0, 1.2.0"
    malformed = post(version="latest")
    assert malformed.status_code == 422
    assert [d["loc"] for d in malformed.json()["errors"]] == [["body", "version"]]
    assert len(client.get("/api/v1/runs", headers=client.operator).json()["data"]) == before, "nothing stored"
    shown = client.get(f"/api/v1/runs/{created.json()['id']}", headers=client.operator).json()
    assert "status_reason" in shown


@pytest.mark.slow
async def test_the_cli_names_a_version_and_shows_why_a_run_waits(serve, cli_env, open_with) -> None:
    async with open_with(V110) as new:
        run, _ = await new.executor.submit(workflow="price_change", input=PRICE_105, actor="alice")
    async with open_with(V100) as old:  # serves 1.0.0 only: the 1.1.0 run is parked
        await old.executor.drive(run.id)
    # a server that loads 1.0.0 (these tests' own) and drives nothing
    env = await asyncio.to_thread(serve, worker=False, env={
        **cli_env, "STEWARD_WORKFLOWS": '["tests.runtime.test_versions:V100", "workflows.lead_routing:workflow"]'})

    def steward(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    shown = steward("runs", "show", run.id, "--output", "json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["status"] == "queued" and "price_change 1.1.0" in view["status_reason"]
    assert "waiting for a process" in steward("runs", "list").stdout

    unknown = steward("run", "price_change", "--version", "9.9.9", "--input", json.dumps(PRICE_105))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: workflow 'price_change' has no version '9.9.9'; loaded: 1.0.0"
    named = steward("run", "price_change", "--version", "1.0.0", "--input", json.dumps(PRICE_104))
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["version"] == "1.0.0"
