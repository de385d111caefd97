"""A fresh database for one benchmark run: a SQLite file in a new temporary folder, or a new PostgreSQL
database on the local server (``STEWARD_BENCH_PG``), dropped afterwards."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

PG_ADMIN = os.environ.get("STEWARD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh(kind: str, prefix: str) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database of ``kind`` (sqlite or postgres)."""
    if kind == "sqlite":
        yield f"sqlite:///{Path(tempfile.mkdtemp(prefix=f'steward-bench-{prefix}-')) / 'steward.db'}"
        return
    name = f"steward_bench_{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
