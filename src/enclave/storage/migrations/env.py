"""Alembic environment: runs on the connection handed over by ``storage.db.migrate``."""

from alembic import context
from sqlalchemy import create_engine

from enclave.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # invoked from the alembic CLI
    connection = create_engine(context.config.get_main_option("sqlalchemy.url") or "").connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
