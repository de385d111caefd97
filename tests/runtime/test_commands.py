"""Commands under contention: cancel racing approve, idempotent submits racing each other."""

from __future__ import annotations

import asyncio

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import list_approvals
from runtime import audit, store
from runtime.errors import Conflict
from runtime.models import RunStatus

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}
TERMINAL = {"run.succeeded", "run.failed", "run.rejected", "run.cancelled"}


async def test_forty_cancel_and_approve_pairs_end_each_run_once(steward) -> None:
    ex = steward.executor
    runs = []
    for _ in range(40):
        run, _ = await ex.submit(workflow="price_change", input=PRICE_115, actor="alice")
        run = await ex.drive(run.id)
        assert run.status == RunStatus.waiting_approval
        runs.append(run)
    approvals = {a.run_id: a for a in await steward.db.run(
        lambda s: list_approvals(session=s, status=ApprovalStatus.pending, limit=1000))}
    await ex.start()  # approved runs are driven meanwhile, so a cancel also meets running runs

    async def cancel(run_id: str):
        return await ex.cancel(run_id=run_id, actor="alice")

    async def approve(run_id: str):
        return await decide(steward, approval_id=approvals[run_id].id, decision="approve", actor="bob")

    commands = [f(run.id) for run in runs for f in (cancel, approve)]
    outcomes = await asyncio.gather(*commands, return_exceptions=True)
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, Conflict)]
    assert unexpected == []

    for _ in range(400):
        current = await steward.db.run(lambda s: store.list_runs(session=s, limit=1000))
        if all(r.status.finished for r in current):
            break
        await asyncio.sleep(0.05)
    await ex.stop()
    assert {r.status for r in current} <= {RunStatus.cancelled, RunStatus.succeeded}
    assert all(r.status.finished for r in current), [r.status for r in current]
    for run in current:
        kinds = [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))]
        assert [k for k in kinds if k in TERMINAL] == [f"run.{run.status.value}"], kinds
    assert (await steward.db.run(audit.verify)).ok


async def test_twenty_concurrent_submits_with_one_key_make_one_run(steward) -> None:
    outcomes = await asyncio.gather(*[
        steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice", idempotency_key="once")
        for _ in range(20)
    ], return_exceptions=True)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert sum(created for _, created in outcomes) == 1
    assert len({run.id for run, _ in outcomes}) == 1
    runs = await steward.db.run(lambda s: store.list_runs(session=s))
    assert len(runs) == 1
    kinds = [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s))]
    assert kinds.count("run.created") == 1


def test_twenty_concurrent_idempotent_posts_answer_201_once_then_200(client) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    barrier = Barrier(20)
    body = {"workflow": "price_change", "input": PRICE_105}

    def post(_: int):
        barrier.wait()
        return client.post("/api/v1/runs", json=body, headers={**client.operator, "Idempotency-Key": "k-20"})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [201], [(r.status_code, r.text[:200]) for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
