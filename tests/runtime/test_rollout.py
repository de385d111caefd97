"""Rollouts on SQLite and PostgreSQL: price_change 1.1.0 is stable and 1.2.0 is loaded beside it. Sticky
routing by key within 3 % of the weights over 10,000 keys; runs pinned to the version they started on
survive a rollback (or are cancelled when the operator says so); every change audited with actor and
reason, through the API and the CLI; twenty operators changing the rollout at once are serialised."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from approvals.service import decide
from approvals.store import list_approvals
from approvals.models import ApprovalStatus
from runtime import audit, rollout, store
from runtime.errors import Conflict, InputInvalid, WorkflowNotFound
from runtime.models import Rollout, RunStatus
from runtime.service import Steward
from tests.fakes import settle

PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_routing_follows_the_weights_within_3_pct_and_each_key_keeps_its_version(percent: int) -> None:
    state = Rollout(workflow="price_change", stable="1.1.0", canary="1.2.0", canary_percent=percent, revision=3,
                    updated_by="ops", reason="canary")
    keys = [f"order-{n}" for n in range(10_000)]
    routed = [rollout.route(state, workflow="price_change", key=key) for key in keys]
    share = sum(r.canary for r in routed) / len(keys) * 100
    assert abs(share - percent) <= 3, share
    again = [rollout.route(state, workflow="price_change", key=key).version for key in keys]
    assert again == [r.version for r in routed]  # the same key, the same version
    wider = Rollout(**{**state.model_dump(), "canary_percent": min(percent + 20, 100)})
    assert all(rollout.route(wider, workflow="price_change", key=key).canary
               for key, r in zip(keys, routed, strict=True) if r.canary), "a ramp only adds keys to the canary"


def test_the_bucket_is_the_documented_hash() -> None:
    import hashlib

    digest = hashlib.sha256(b"price_change\x00order-7").digest()
    assert rollout.bucket("price_change", "order-7") == int.from_bytes(digest[:8], "big") % 10_000


async def submit(steward: Steward, key: str | None = None, body: dict[str, Any] = PRICE_105) -> Any:
    run, _ = await steward.executor.submit(workflow="price_change", input=body, actor="alice",
                                           idempotency_key=key)
    return run


async def events(steward: Steward, kind: str) -> list[Any]:
    return [e for e in await steward.db.run(lambda s: store.list_audit(session=s, limit=100_000)) if e.kind == kind]


async def test_nobody_rolled_out_yet_means_the_lowest_loaded_version(steward: Steward) -> None:
    assert steward.registry.versions("price_change") == ["1.1.0", "1.2.0"]
    assert (await submit(steward)).version == "1.1.0"
    named, _ = await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice", version="1.2.0")
    assert named.version == "1.2.0"


async def test_a_canary_takes_its_share_by_key_and_the_route_is_audited(steward: Steward) -> None:
    await steward.executor.change_rollout(workflow="price_change", action="rollout", version="1.2.0", percent=30,
                                          actor="ops", reason="try skipping unchanged prices")
    runs = [await submit(steward, key=f"k-{n}") for n in range(200)]
    canary = [r for r in runs if r.version == "1.2.0"]
    assert 30 <= len(canary) <= 90  # 30 % of 200, loosely: the exact split is the routing test's
    for run in runs[:20]:
        expected = rollout.route(await steward.db.run(lambda s: s.get(Rollout, "price_change")),
                                 workflow="price_change", key=f"k-{runs.index(run)}")
        assert run.version == expected.version
    created = {e.run_id: e.data["route"] for e in await events(steward, "run.created")}
    assert created[canary[0].id] == {"version": "1.2.0", "canary": True, "bucket": rollout.bucket(
        "price_change", f"k-{runs.index(canary[0])}"), "key": "idempotency_key", "rollout_revision": 1,
        "canary_percent": 30}


async def test_changes_are_checked_and_audited_with_actor_and_reason(steward: Steward) -> None:
    change = steward.executor.change_rollout
    with pytest.raises(WorkflowNotFound, match="has no version '9.9.9'"):
        await change(workflow="price_change", action="rollout", version="9.9.9", percent=10, actor="ops", reason="typo")
    with pytest.raises(InputInvalid, match="say why"):
        await change(workflow="price_change", action="rollout", version="1.2.0", percent=10, actor="ops", reason=" ")
    with pytest.raises(Conflict, match="already price_change's stable version"):
        await change(workflow="price_change", action="rollout", version="1.1.0", percent=10, actor="ops", reason="noop")
    with pytest.raises(Conflict, match="no canary and no earlier stable version"):
        await change(workflow="price_change", action="rollback", actor="ops", reason="nothing to undo")
    await change(workflow="price_change", action="rollout", version="1.2.0", percent=10, actor="ops", reason="try")
    await change(workflow="price_change", action="rollout", version="1.2.0", percent=50, actor="ops", reason="wider")
    await change(workflow="price_change", action="promote", version="1.2.0", actor="lead", reason="healthy")
    state, _ = await change(workflow="price_change", action="rollback", actor="lead", reason="a report came in")
    assert (state.stable, state.canary, state.revision) == ("1.1.0", None, 4)
    trail = await events(steward, "rollout.changed")
    assert [(e.actor, e.data["action"], e.data["reason"]) for e in trail] == [
        ("ops", "rollout", "try"), ("ops", "rollout", "wider"), ("lead", "promote", "healthy"),
        ("lead", "rollback", "a report came in")]
    assert trail[2].data["after"] == {
        "stable": "1.2.0", "canary": None, "canary_percent": 0, "previous_stable": "1.1.0", "revision": 3}
    assert (await steward.db.run(audit.verify)).ok


async def only_pending(steward: Steward, run_id: str) -> Any:
    [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run_id, status=ApprovalStatus.pending))
    return approval


@pytest.mark.parametrize("in_flight", ["continue", "cancel"])
async def test_runs_in_flight_keep_their_version_through_a_rollback(steward: Steward, sandbox, in_flight: str) -> None:
    await steward.executor.change_rollout(workflow="price_change", action="rollout", version="1.2.0", percent=100,
                                          actor="ops", reason="all in")
    run = await submit(steward, key="in-flight", body=PRICE_115)
    assert run.version == "1.2.0"
    assert (await steward.executor.drive(run.id)).status == RunStatus.waiting_approval
    _, cancelled = await steward.executor.change_rollout(workflow="price_change", action="rollback", actor="ops",
                                                         reason="rejections are up", in_flight=in_flight)
    assert (await submit(steward, key="after")).version == "1.1.0"
    if in_flight == "cancel":
        assert cancelled == [run.id]
        assert (await steward.db.run(lambda s: store.get_run(session=s, run_id=run.id))).status == RunStatus.cancelled
        return
    assert cancelled == []
    approval = await only_pending(steward, run.id)
    await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
    done = await steward.executor.drive(run.id)
    assert (done.status, done.version) == (RunStatus.succeeded, "1.2.0")
    assert done.output["summary"]["unchanged"] == []  # 1.2.0's summary: it finished on the version it started on


async def test_twenty_operators_at_once_are_serialised(steward: Steward) -> None:
    barrier = asyncio.Barrier(20)

    async def one(n: int) -> str:
        await barrier.wait()
        try:
            await steward.executor.change_rollout(workflow="price_change", action="rollout", version="1.2.0",
                                                  percent=n + 1, actor=f"op{n}", reason=f"ramp to {n + 1}")
        except Conflict:
            return "conflict"
        return "done"

    outcomes = await asyncio.gather(*(one(n) for n in range(20)))
    assert outcomes.count("done") == 20, outcomes
    state = await steward.db.run(lambda s: s.get(Rollout, "price_change"))
    trail = await events(steward, "rollout.changed")
    assert sorted(e.data["after"]["revision"] for e in trail) == list(range(1, 21)) and state.revision == 20
    last = max(trail, key=lambda e: e.data["after"]["revision"])
    assert (state.canary_percent, state.updated_by) == (last.data["after"]["canary_percent"], last.actor)
    assert (await steward.db.run(audit.verify)).ok


def test_rollout_promote_and_rollback_through_the_api(client) -> None:
    url = "/api/v1/workflows/price_change"
    refused = client.post(f"{url}/rollout", json={"version": "1.2.0", "percent": 10, "reason": "try"},
                          headers=client.approver)
    assert refused.status_code == 403 and "rollouts:write" in refused.json()["detail"]
    bad = client.post(f"{url}/rollout", json={"version": "1.2.0", "percent": 101, "reason": "x"},
                      headers=client.operator)
    assert bad.status_code == 422 and {tuple(e["loc"]) for e in bad.json()["errors"]} == {
        ("body", "percent"), ("body", "reason")}
    missing = client.post(f"{url}/rollout", json={"version": "3.0.0", "percent": 10, "reason": "try"},
                          headers=client.operator)
    assert missing.status_code == 404
    out = client.post(f"{url}/rollout", json={"version": "1.2.0", "percent": 25, "reason": "try it"},
                      headers=client.operator)
    assert out.status_code == 200, out.text
    shown = out.json()["workflow"]
    assert shown["rollout"] | {"updated_at": None} == {
        "stable": "1.1.0", "canary": "1.2.0", "canary_percent": 25, "previous_stable": None, "revision": 1,
        "updated_by": "demo.operator", "reason": "try it", "updated_at": None, "routing_key": "Idempotency-Key"}
    assert {v["version"]: v["weight"] for v in shown["versions"]} == {"1.2.0": 25, "1.1.0": 75}
    run = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_105},
                      headers={**client.operator, "Idempotency-Key": "api-1"}).json()
    expected = "1.2.0" if rollout.bucket("price_change", "api-1") < 2500 else "1.1.0"
    assert settle(client, run["id"], {"succeeded"})["version"] == expected
    health = {v["version"]: v["health"] for v in client.get(url, headers=client.operator).json()["versions"]}
    assert health[expected]["runs"] == 1 and health[expected]["failure_rate"] == 0.0
    assert health[expected]["median_duration_ms"] is not None
    promoted = client.post(f"{url}/promote", json={"version": "1.2.0", "reason": "healthy"}, headers=client.operator)
    assert promoted.json()["workflow"]["rollout"]["stable"] == "1.2.0"
    back = client.post(f"{url}/rollback", json={"reason": "a complaint", "in_flight": "continue"},
                       headers=client.operator)
    assert back.status_code == 200 and back.json()["workflow"]["rollout"]["stable"] == "1.1.0"
    assert back.json()["cancelled"] == []
    again = client.post(f"{url}/rollback", json={"reason": "twice"}, headers=client.operator)
    assert again.status_code == 409  # 1.1.0 has no earlier stable version
    trail = client.get("/api/v1/audit", headers=client.operator).json()["data"]
    changes = [e for e in trail if e["kind"] == "rollout.changed"]
    assert [(e["actor"], e["data"]["action"]) for e in changes] == [
        ("demo.operator", "rollout"), ("demo.operator", "promote"), ("demo.operator", "rollback")]
    denied = [e for e in client.get("/api/v1/audit", headers=client.operator).json()["data"]
              if e["kind"] == "authz.denied"]
    assert [e["actor"] for e in denied] == ["demo.approver"]


def test_rollout_from_the_cli(serve) -> None:
    import subprocess
    import sys

    env = serve()

    def steward(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    out = steward("rollout", "price_change", "1.2.0", "--percent", "20", "--reason", "try it")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["workflow"]["rollout"]["canary_percent"] == 20
    bad = steward("rollout", "price_change", "1.2.0", "--percent", "20")
    assert bad.returncode == 2 and "--reason" in bad.stderr
    stale = steward("rollback", "price_change", "--reason", "r", "--in-flight", "later")
    assert stale.returncode == 2
    back = steward("rollback", "price_change", "--reason", "undo the canary", "--in-flight", "cancel")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["workflow"]["rollout"]["canary"] is None
    promoted = steward("promote", "price_change", "1.2.0", "--reason", "ready")
    assert promoted.returncode == 0 and json.loads(promoted.stdout)["workflow"]["rollout"]["stable"] == "1.2.0"
    shown = steward("workflows", "show", "price_change")
    assert json.loads(shown.stdout)["rollout"]["revision"] == 3
