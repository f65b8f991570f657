"""Which database errors blame a row, which pass, and which blame neither."""

from __future__ import annotations

import psycopg
import pytest

from feedsvc.store import is_refusal, is_transient


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        psycopg.errors.StringDataRightTruncation("too long"),
        psycopg.errors.CheckViolation("check"),
        psycopg.errors.NotNullViolation("null"),
        psycopg.errors.ProgramLimitExceeded("index row too large"),
    ],
)
def test_value_errors_are_refusals(exc: Exception) -> None:
    """Data exceptions, constraint violations and limits blame the row: no retry helps."""
    assert is_refusal(exc) and not is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.SerializationFailure("40001"),
        psycopg.OperationalError("connection lost"),
        psycopg.errors.UndefinedTable("no table"),
        psycopg.errors.InsufficientPrivilege("no"),
        ValueError("a bug"),
    ],
)
def test_other_errors_are_not_refusals(exc: Exception) -> None:
    """Transient errors, and errors that would refuse every row alike, blame no row."""
    assert not is_refusal(exc)
