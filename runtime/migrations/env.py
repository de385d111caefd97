"""Alembic environment: migrates the database named by the Database that invoked it."""

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import runtime.models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
target_metadata = SQLModel.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
