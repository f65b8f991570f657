"""Setup's database steps on a real server: idempotent, creating what is missing."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from devstack import Postgres
from feedsvc import schema
from tests.support import native_only

pytestmark = [pytest.mark.stack, native_only]


def test_missing_database_is_created_once(postgres: Postgres) -> None:
    """A database named in the URL but absent is created; a second run changes nothing."""
    url = postgres.url("t_" + uuid.uuid4().hex[:12])
    schema.ensure_database(url)
    schema.ensure_database(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (url.rsplit("/", 1)[1],)


def test_schema_is_idempotent(postgres: Postgres) -> None:
    """Running the schema twice leaves one table with its keyset index."""
    url = postgres.url("t_" + uuid.uuid4().hex[:12])
    schema.ensure_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert not schema.is_cockroach(conn)
        schema.ensure_schema(conn)
        schema.ensure_schema(conn)
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'messages' ORDER BY 1"
        ).fetchall()
    assert indexes == [("messages_created_at_id",), ("messages_pkey",)]
