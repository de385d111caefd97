"""Crash test: a server SIGKILLed right after its worker's connector write; a restarted server finishes the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import free_port, wait_for_http

pytestmark = pytest.mark.slow
STEWARD = [sys.executable, "-m", "runtime.cli"]


def test_killed_worker_run_is_finished_by_a_restarted_server_without_duplicate_writes(
    cli_env, sandbox_process, tmp_path
) -> None:
    marker = tmp_path / "paused"
    env = {**cli_env, "STEWARD_WORKFLOWS": '["tests.crash_workflow:workflow"]', "STEWARD_TEST_PAUSE_FILE": str(marker),
           "STEWARD_LEASE_SECONDS": "600"}
    log = (tmp_path / "worker.log").open("w")
    first_port = free_port()
    worker = subprocess.Popen([*STEWARD, "serve", "--port", str(first_port)], env=env, stdout=log, stderr=log)
    wait_for_http(f"http://127.0.0.1:{first_port}/healthz", seconds=60)
    httpx.post(f"http://127.0.0.1:{first_port}/api/v1/runs", json={"workflow": "crash_once", "input": {}},
               headers={"Authorization": "Bearer steward-demo-operator"}).raise_for_status()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert time.monotonic() < deadline, "the worker never reached the write"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    log.close()
    assert worker.returncode == -signal.SIGKILL

    writes = httpx.get(f"{sandbox_process}/_writes", headers={"Authorization": "Bearer sandbox-token"}).json()
    assert writes["total"] == 1, "the first write happened before the kill"

    port = free_port()
    server_log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([*STEWARD, "serve", "--port", str(port)], env=env, stdout=server_log,
                              stderr=server_log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz")
        auth = {"Authorization": "Bearer steward-demo-operator"}
        deadline = time.monotonic() + 60
        while True:
            [run] = httpx.get(f"{base}/api/v1/runs", headers=auth).json()["data"]
            if run["status"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert run["status"] == "succeeded", (run, (tmp_path / "server.log").read_text()[-3000:])
        detail = httpx.get(f"{base}/api/v1/runs/{run['id']}", headers=auth).json()
        assert detail["output"] == {"first": "105.00", "second": "108.00"}
        trail = httpx.get(f"{base}/api/v1/audit", params={"run_id": run["id"]}, headers=auth).json()["data"]
        kinds = [e["kind"] for e in trail]
        assert kinds.count("run.started") == 1 and kinds.count("run.resumed") == 1
        assert kinds.count("connector.call") == 2 and kinds.count("connector.replayed") == 1
        assert httpx.get(f"{base}/api/v1/audit/verify", headers=auth).json() == {
            "ok": True, "events": len(httpx.get(f"{base}/api/v1/audit", headers=auth).json()["data"]), "broken_seq": None,
            "reason": None, "disagreements": []}
    finally:
        server.terminate()
        server.wait(timeout=20)
        server_log.close()

    writes = httpx.get(f"{sandbox_process}/_writes", headers={"Authorization": "Bearer sandbox-token"}).json()
    assert writes["total"] == 2 and set(writes["writes"].values()) == {1}, writes
    verify = subprocess.run([*STEWARD, "audit", "verify"], env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "audit chain intact" in verify.stdout
