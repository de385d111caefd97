"""Steward assembled: database, workflows, connectors, checkpointer and executor, for the server and the CLI.

>>> async with open_steward(Settings()) as steward:
...     run, _ = await steward.executor.submit(workflow="price_change", input={...}, actor="alice")
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from runtime import store
from runtime.approval import ApprovalPort
from runtime.changes import RunChanges
from runtime.checkpoint import open_checkpointer
from runtime.connectors import Connector, CrmConnector, PricingConnector, RetryPolicy
from runtime.db import MIGRATIONS, Database
from runtime.errors import StewardError
from runtime.executor import Executor
from runtime.sdk import Registry, load_object, load_registry
from runtime.settings import Settings
from runtime.telemetry import setup_tracing
from runtime.policy import PolicyBook, load_policies
from runtime.quarantine import Quarantine
from runtime.versions import register_policies, register_versions


class DatabaseNotMigrated(StewardError):
    code = "database_not_migrated"
    status_code = 503


@dataclass
class Steward:
    settings: Settings
    db: Database
    registry: Registry
    executor: Executor
    changes: RunChanges
    quarantine: Quarantine

    @property
    def policies(self) -> PolicyBook:
        return self.executor.policies


async def _policy_documents(db: Database, policy_hash: str) -> dict[str, Any] | None:
    return await db.run(lambda session: store.policy_documents(session=session, policy_hash=policy_hash),
                        read_only=True)


def build_connectors(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, retry: RetryPolicy | None = None
) -> dict[str, Connector]:
    retry = retry or RetryPolicy(
        attempts=settings.retry_attempts,
        initial_wait=settings.retry_initial_wait_seconds,
        max_wait=settings.retry_max_wait_seconds,
    )
    common = {"timeout": settings.http_timeout_seconds, "retry": retry, "transport": transport}
    return {
        "crm": CrmConnector(base_url=settings.crm_url, token=settings.crm_token, **common),
        "pricing": PricingConnector(base_url=settings.pricing_url, token=settings.pricing_token, **common),
    }


@functools.cache
def schema_head() -> str | None:
    """The schema revision this code needs (the newest migration)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def schema_revision(session: Any) -> str | None:
    """The schema revision the database is at."""
    return MigrationContext.configure(session.connection()).get_current_revision()


def check_migrated(db: Database) -> None:
    """Refuse to start on a database whose schema is behind the code."""
    head = schema_head()
    engine = create_engine(db.url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        raise DatabaseNotMigrated(
            f"the database is at schema revision {current or 'none'} but Steward needs {head}: "
            "run `steward db upgrade`"
        )


@asynccontextmanager
async def open_steward(
    settings: Settings,
    *,
    registry: Registry | None = None,
    connectors: Mapping[str, Connector] | None = None,
    approvals: ApprovalPort | None = None,
    models: Mapping[str, Any] | None = None,
) -> AsyncIterator[Steward]:
    """Open everything a Steward process needs; a SQLite database is migrated on the way, and every
    loaded workflow version is registered with its code hash (see :mod:`runtime.versions`)."""
    setup_tracing()
    registry = registry if registry is not None else load_registry(settings.workflows)
    policies = load_policies(settings.policies)  # a malformed policy file stops start-up, naming file and line
    db = Database(settings.database_url)
    changes = RunChanges()
    changes.bind(asyncio.get_running_loop())
    db.on_commit = changes.changed
    try:
        # Migrating and checking the schema are synchronous database work: in a thread, like the rest.
        await asyncio.to_thread(db.upgrade if db.is_sqlite else functools.partial(check_migrated, db))
        await register_versions(db, registry)
        await register_policies(db, policies)
    except BaseException:
        await db.dispose()
        raise
    owned = connectors is None
    connectors = dict(connectors) if connectors is not None else build_connectors(settings)
    try:
        async with open_checkpointer(db) as saver:
            executor = Executor(
                db=db, registry=registry, connectors=connectors, checkpointer=saver,
                approvals=approvals if approvals is not None else load_object(settings.approvals),
                policies=PolicyBook(policies, load=functools.partial(_policy_documents, db)),
                models={**settings.models, **(models or {})},
                lease_seconds=settings.lease_seconds, concurrency=settings.executor_concurrency,
                poll_seconds=settings.executor_poll_seconds,
            )
            steward = Steward(settings=settings, db=db, registry=registry, executor=executor, changes=changes,
                              quarantine=Quarantine(db=db, registry=registry, executor=executor))
            executor.sweeps = [functools.partial(load_object(spec), steward) for spec in settings.sweeps]
            executor.sweep_seconds = settings.sweep_seconds
            try:
                yield steward
            finally:
                await executor.stop()
                await changes.stop()
    finally:
        if owned:
            for connector in connectors.values():
                await connector.aclose()
        await db.dispose()
