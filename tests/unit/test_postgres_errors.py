"""What a PostgreSQL error becomes: a StoreError whose message never quotes a stored value."""

from __future__ import annotations

import asyncpg
import pytest

from awx_connection import StoreError, StoreUnavailableError
from awx_connection.stores._postgres_errors import translate

SECRET = "awx_rt_s3cr3t-value"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.InvalidTextRepresentationError(
            f'invalid input syntax for type json: "{SECRET}"'
        ),
        asyncpg.exceptions.StringDataRightTruncationError(
            f"value too long for type character varying(8): {SECRET}"
        ),
        asyncpg.exceptions.CharacterNotInRepertoireError(
            f'invalid byte sequence for encoding "UTF8": {SECRET}'
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_data_error_names_its_class_and_state_not_the_value(error: Exception) -> None:
    """Class 22 messages quote the value that did not fit: only the SQLSTATE is kept."""
    translated = translate("update", error, write=True)
    assert isinstance(translated, StoreError)
    assert not isinstance(translated, StoreUnavailableError)
    assert SECRET not in str(translated)
    assert type(error).__name__ in str(translated)
    assert str(error.sqlstate) in str(translated)


def test_other_server_errors_keep_their_primary_message() -> None:
    """A message that says what went wrong, and quotes no value, is worth keeping."""
    error = asyncpg.exceptions.UndefinedTableError('relation "connections" does not exist')
    translated = translate("get", error, write=False)
    assert isinstance(translated, StoreError)
    assert 'relation "connections" does not exist' in str(translated)
