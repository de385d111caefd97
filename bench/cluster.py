"""The processes of one benchmark measurement: a fresh PostgreSQL database, the sandbox, one API
process and W workers, each a ``python -m runtime.cli`` subprocess on 127.0.0.1; and what CPU
they use (read from /proc, so Linux only).

>>> with Cluster(workers=2, concurrency=8, logdir=Path("/tmp"), label="try") as cluster:
...     httpx.get(f"{cluster.api}/healthz")
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_PROBLEM = re.compile(r"WARNING|ERROR|CRITICAL|Traceback")


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Cluster:
    """A fresh database, a sandbox, one ``serve --no-worker`` and ``workers`` worker processes.

    Leaving the ``with`` block stops every process it started (SIGTERM, then SIGKILL) and drops
    the database, whatever happened inside."""

    def __init__(self, *, workers: int, concurrency: int, logdir: Path, label: str) -> None:
        self.workers, self.concurrency, self.label = workers, concurrency, label
        self.logdir = logdir
        self.dbname = f"steward_bench_{secrets.token_hex(4)}"
        self.libpq = f"host=127.0.0.1 port=5432 user=postgres dbname={self.dbname}"
        self.sandbox_port, self.api_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.created = False
        self.unstopped: list[str] = []  # processes that had to be killed
        self.died: dict[str, int] = {}
        self.exit_codes: dict[str, int | None] = {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_") and "proxy" not in k.lower()}
        env.update({
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "OTEL_TRACES_EXPORTER": "none",
            "STEWARD_DATABASE_URL": f"{PG}/{self.dbname}",
            "STEWARD_DEMO": "true",
            "STEWARD_CRM_URL": f"{self.sandbox}/crm",
            "STEWARD_PRICING_URL": f"{self.sandbox}/pricing",
            "STEWARD_EXECUTOR_CONCURRENCY": str(self.concurrency),
        })
        return env

    def __enter__(self) -> "Cluster":
        started = time.monotonic()
        try:
            self._start()
            self.start_seconds = round(time.monotonic() - started, 1)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.dbname}")
        self.created = True
        subprocess.run([PYTHON, "-m", "runtime.cli", "db", "upgrade"], cwd=ROOT, env=self.env(), check=True,
                       capture_output=True, timeout=START_TIMEOUT)
        self._spawn("sandbox", ["sandbox", "--port", str(self.sandbox_port), "--path",
                                str(Path(tempfile.mkdtemp(prefix="steward-sandbox-")) / "sandbox.db")])
        self._spawn("serve", ["serve", "--no-worker", "--port", str(self.api_port)])
        self._wait_http("sandbox", f"{self.sandbox}/_writes")
        # serve seeds the demo token and creates LangGraph's checkpoint tables before it answers;
        # processes that create those tables at the same time on a fresh database can fail.
        self._wait_http("serve", f"{self.api}/healthz")
        for i in range(self.workers):
            self._spawn(f"worker{i + 1}", ["worker", "--concurrency", str(self.concurrency)])
        self._wait_listening()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.logdir / f"{self.label}-{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen([PYTHON, "-m", "runtime.cli", *args], cwd=ROOT, env=self.env(),
                                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")

    def _wait_http(self, name: str, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise BenchError(f"{name} did not answer {url} within {START_TIMEOUT:.0f}s:\n{self.tail(name)}")

    def _wait_listening(self) -> None:
        """Every worker is ready once its connection LISTENs for queued runs."""
        deadline = time.monotonic() + START_TIMEOUT
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            while time.monotonic() < deadline:
                self._check_alive()
                listening = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                         "AND query ILIKE 'LISTEN steward_runs'", (self.dbname,)).fetchone()[0]
                if listening >= self.workers:
                    return
                time.sleep(0.1)
        raise BenchError(f"{self.workers} workers were not listening within {START_TIMEOUT:.0f}s")

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(proc.pid) for name, proc in self.procs.items()}

    async def backends_cpu(self, conn: psycopg.AsyncConnection) -> dict[int, float]:
        """CPU time of each PostgreSQL backend serving this database (pooled: they live through a round)."""
        pids = await (await conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                         (self.dbname,))).fetchall()
        return {pid: cpu_seconds(pid) for pid, in pids}

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self) -> dict[str, list[str]]:
        """Warning, error and traceback lines of each process (the first few of each)."""
        found = {}
        for name, log in self.logs.items():
            lines = [line for line in log.read_text(errors="replace").splitlines() if LOG_PROBLEM.search(line)]
            if lines:
                found[name] = lines[:10] + ([f"... {len(lines) - 10} more"] if len(lines) > 10 else [])
        return found

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stop()
        finally:
            if self.created:
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
                self.created = False

    def _stop(self) -> None:
        # Workers first (they drain and give their runs back), then the API, then the sandbox; a
        # process that ignores SIGTERM is killed, and every one is killed if stopping is interrupted.
        order = [n for n in self.procs if n.startswith("worker")] + ["serve", "sandbox"]
        procs = [self.procs[n] for n in order if n in self.procs]
        self.died = {n: p.returncode for n, p in zip(order, procs) if p.poll() is not None}
        try:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        finally:
            for name, proc in zip(order, procs):
                if proc.poll() is None:
                    self.unstopped.append(name)
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)
            self.exit_codes = {n: p.returncode for n, p in zip(order, procs)}

    def shutdown_report(self) -> dict[str, Any]:
        """Which processes had died before the end, had to be killed, and how each exited."""
        return {"died_before_stop": self.died, "killed_after_sigterm": self.unstopped, "exit_codes": self.exit_codes}
