"""Fixtures: every store, run and API test runs on SQLite and on PostgreSQL.

PostgreSQL is expected at 127.0.0.1:5432 (user postgres, trust auth). Each test
gets a fresh database cloned from a migrated template made once per test run; if
the server is unreachable the PostgreSQL cases skip with a loud reason, except
under CI=true, where they fail.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from runtime.db import Database
from runtime.service import Steward, build_connectors, open_steward
from runtime.settings import POLICIES, Settings
from tests.fakes import instant_retry

TEST_POLICIES = Path(__file__).parent / "policies"  # the shipped policies, plus the test connector's
PG_ADMIN = os.environ.get("STEWARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_template: str | None = None


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{dbname}".replace("postgresql://", "postgresql+psycopg://", 1)


def _admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)


def _pg_template() -> str:
    global _template
    if _template is None:
        try:
            conn = _admin()
        except psycopg.OperationalError as exc:
            reason = f"PostgreSQL at {PG_ADMIN} is unreachable ({exc.__class__.__name__}): PostgreSQL tests NOT run"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        name = f"steward_tmpl_{uuid.uuid4().hex[:10]}"
        with conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        Database(_pg_url(name)).upgrade()
        _template = name
    return _template


def _fresh_pg_database() -> tuple[str, str]:
    template = _pg_template()
    name = f"steward_test_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name, _pg_url(name)


def _drop_pg_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _template is not None:
        _drop_pg_database(_template)


def fresh_postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    name, url = _fresh_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'steward.db'}"
        return
    yield from fresh_postgres_url()


@pytest.fixture
def sandbox():
    """An in-process sandbox CRM and pricing service (its state is ``sandbox.state.sandbox``)."""
    from sandbox import create_sandbox_app

    return create_sandbox_app()


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    return Settings(database_url=database_url, crm_url="http://sandbox/crm", pricing_url="http://sandbox/pricing",
                    policies=[POLICIES, TEST_POLICIES], demo=True, lease_seconds=5, executor_poll_seconds=0.05,
                    sandbox_path=str(tmp_path / "mounted-sandbox.db"))


@pytest.fixture
def connectors(settings: Settings, sandbox):
    return build_connectors(settings, transport=httpx.ASGITransport(app=sandbox), retry=instant_retry())


@pytest.fixture
async def steward(settings: Settings, connectors) -> AsyncIterator[Steward]:
    async with open_steward(settings, connectors=connectors) as opened:
        yield opened
    for connector in connectors.values():
        await connector.aclose()


@pytest.fixture
def open_custom(settings: Settings, connectors):
    """Open a Steward with chosen workflows and extra connectors: ``async with open_custom([...], {...}) as s``."""
    from contextlib import asynccontextmanager

    from runtime.sdk import Registry
    from workflows import WORKFLOWS

    @asynccontextmanager
    async def opener(workflows=(), extra_connectors=None):
        registry = Registry([*WORKFLOWS, *workflows])
        async with open_steward(settings, registry=registry,
                                connectors={**connectors, **(extra_connectors or {})}) as opened:
            yield opened

    return opener


@pytest.fixture
def client(settings: Settings, connectors):
    """The whole HTTP app in-process (lifespan, executor and all) with a demo operator and approver."""
    from fastapi.testclient import TestClient

    from runtime.app import create_app

    app = create_app(settings, connectors=connectors)
    with TestClient(app) as test_client:
        test_client.operator = {"Authorization": "Bearer steward-demo-operator"}
        test_client.approver = {"Authorization": "Bearer steward-demo-approver"}
        yield test_client


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, *, seconds: float = 30) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {seconds}s")


@pytest.fixture
def sandbox_process(tmp_path) -> Iterator[str]:
    """The sandbox as its own process (it outlives the Steward processes a test kills); yields its URL."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "sandbox", "--port", str(port),
                             "--path", str(tmp_path / "sandbox.db")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/_writes")
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def cli_env(database_url: str, sandbox_process: str, tmp_path) -> dict[str, str]:
    """Environment for ``steward`` subprocesses on this test's database and sandbox process."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    inherited = {k: v for k, v in os.environ.items() if k not in ("STEWARD_URL", "STEWARD_TOKEN")}
    return {
        **inherited,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # never the developer's own `steward login`
        "PYTHONPATH": str(root),
        "STEWARD_DATABASE_URL": database_url,
        "STEWARD_CRM_URL": f"{sandbox_process}/crm",
        "STEWARD_PRICING_URL": f"{sandbox_process}/pricing",
        "STEWARD_DEMO": "true",
        "STEWARD_SANDBOX_PATH": str(tmp_path / "mounted-sandbox.db"),
        "OTEL_TRACES_EXPORTER": "none",
    }


@pytest.fixture
def live_server(settings: Settings, connectors) -> Iterator[Any]:
    """The whole app served by uvicorn on a free port, in a thread of this process (responses stream for
    real, unlike the in-process TestClient): ``live_server.url``, ``live_server.app``."""
    import threading
    import types

    import uvicorn

    from runtime.app import create_app

    app = create_app(settings, connectors=connectors)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/healthz")
    try:
        yield types.SimpleNamespace(url=url, app=app, server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def serve(cli_env: dict[str, str], tmp_path) -> Iterator[Any]:
    """Start ``steward serve`` as its own process on this test's database and sandbox:
    ``env = serve(worker=True)`` returns ``cli_env`` plus ``STEWARD_URL`` and the demo operator's
    ``STEWARD_TOKEN`` (what the API-client commands need); stopped after the test."""
    import subprocess
    import sys

    started: list[tuple[subprocess.Popen, Any]] = []

    def start(*, worker: bool = True, env: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(env or cli_env)
        port = free_port()
        log = (tmp_path / f"serve-{port}.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--port", str(port),
                                 "--worker" if worker else "--no-worker"], env=env, stdout=log, stderr=log)
        started.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/healthz", seconds=60)
        except RuntimeError:
            proc.kill()
            raise RuntimeError((tmp_path / f"serve-{port}.log").read_text()[-3000:]) from None
        return {**env, "STEWARD_URL": url, "STEWARD_TOKEN": "steward-demo-operator"}

    yield start
    for proc, log in started:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
