"""Several `steward worker` processes on one PostgreSQL database: each run is executed exactly once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from runtime import audit, store
from runtime.models import RunStatus
from runtime.service import open_steward
from runtime.settings import Settings
from tests.conftest import fresh_postgres_url

pytestmark = pytest.mark.slow
STEWARD = [sys.executable, "-m", "runtime.cli"]
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url() -> Iterator[str]:
    """PostgreSQL only: several worker processes share a PostgreSQL database; SQLite runs one process."""
    yield from fresh_postgres_url()


def start_worker(cli_env: dict[str, str], log_path) -> subprocess.Popen:
    """A worker process, returned once it says it is claiming runs."""
    with log_path.open("w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([*STEWARD, "worker", "--concurrency", "4"], env=cli_env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "Steward worker" not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.05)
    return proc


async def wait_finished(steward, ids: list[str], seconds: float = 90) -> list:
    deadline = time.monotonic() + seconds
    while True:
        runs = await steward.db.run(lambda s: store.list_runs(session=s, limit=1000))
        mine = [r for r in runs if r.id in ids]
        if all(r.status.finished for r in mine) or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(0.1)


async def test_two_workers_share_the_runs_and_execute_each_once(database_url, sandbox_process, cli_env, tmp_path):
    settings = Settings(database_url=database_url, crm_url=f"{sandbox_process}/crm",
                        pricing_url=f"{sandbox_process}/pricing", demo=True)
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    workers = [start_worker(cli_env, path) for path in logs]
    try:
        async with open_steward(settings) as steward:  # submits only: no executor runs here
            ids = [(await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice"))[0].id
                   for _ in range(40)]
            runs = await wait_finished(steward, ids)
            trail = await steward.db.run(lambda s: store.list_audit(session=s, limit=100000))
            verified = await steward.db.run(audit.verify)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
    assert {r.status for r in runs} == {RunStatus.succeeded}, [path.read_text()[-2000:] for path in logs]
    started_by = {e.data["worker"] for e in trail if e.kind == "run.started"}
    assert len(started_by) == 2, "both workers took runs"
    assert sum(e.kind == "run.started" for e in trail) == 40, "each run was started exactly once"
    writes = httpx.get(f"{sandbox_process}/_writes", headers={"Authorization": "Bearer sandbox-token"}).json()
    assert writes["total"] == 40 and set(writes["writes"].values()) == {1}
    assert verified.ok
    assert all(proc.returncode == 0 for proc in workers)


async def test_a_worker_stopped_mid_run_gives_its_runs_to_another(database_url, sandbox_process, cli_env, tmp_path):
    settings = Settings(database_url=database_url, crm_url=f"{sandbox_process}/crm",
                        pricing_url=f"{sandbox_process}/pricing", demo=True)
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    first = start_worker(cli_env, logs[0])
    second = None
    try:
        async with open_steward(settings) as steward:
            ids = [(await steward.executor.submit(workflow="price_change", input=PRICE_105, actor="alice"))[0].id
                   for _ in range(30)]
            await asyncio.sleep(1.0)
            first.send_signal(signal.SIGTERM)  # drains, gives back what is in flight
            first.wait(timeout=30)
            second = start_worker(cli_env, logs[1])
            runs = await wait_finished(steward, ids)
            trail = await steward.db.run(lambda s: store.list_audit(session=s, limit=100000))
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    assert {r.status for r in runs} == {RunStatus.succeeded}, [path.read_text()[-2000:] for path in logs]
    assert first.returncode == 0
    terminal = [e.run_id for e in trail if e.kind == "run.succeeded"]
    assert sorted(terminal) == sorted(ids), "one terminal event per run"
    writes = httpx.get(f"{sandbox_process}/_writes", headers={"Authorization": "Bearer sandbox-token"}).json()
    assert writes["total"] == 30 and set(writes["writes"].values()) == {1}
