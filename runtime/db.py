"""Database engines, sessions and migrations for one Steward database.

The SQLModel tables and the LangGraph checkpointer share one database: a SQLite
file by default, PostgreSQL (psycopg 3) when ``STEWARD_DATABASE_URL`` says so.

>>> db = Database("sqlite:///./steward.db")
>>> db.upgrade()
>>> async with db.session() as session: ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from runtime.errors import StewardError

MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseUrlInvalid(StewardError):
    code = "database_url_invalid"


def normalise_url(url: str) -> str:
    """Steward's canonical sync URL: ``sqlite:///…`` or ``postgresql+psycopg://…``."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise DatabaseUrlInvalid(
        f"unsupported database URL {parsed.render_as_string()!r}: use sqlite:///path or postgresql+psycopg://…"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL keeps every commit across a process kill; busy_timeout lets the
    # checkpointer's connection and ours take turns instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """One database: an async engine for the app, a sync URL for Alembic, and the checkpointer."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.sqlite_path = parsed.database or ":memory:"
            if self.sqlite_path != ":memory:":
                Path(self.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
            async_url = parsed.set(drivername="sqlite+aiosqlite")
            self.engine: AsyncEngine = create_async_engine(async_url)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(parsed, pool_pre_ping=True)
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @property
    def libpq_url(self) -> str:
        """The PostgreSQL URL as psycopg expects it (no SQLAlchemy driver suffix)."""
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision`` (synchronous; call before serving)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["url"] = self.url
        command.upgrade(config, revision)

    async def dispose(self) -> None:
        await self.engine.dispose()
