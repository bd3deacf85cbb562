"""A statement PREPAREd once per session: the same rows as the plain statement, planned once."""

from __future__ import annotations

from uuid import UUID

import pytest
from sqlalchemy import Engine, text

from service.kit.prepared import PreparedStatement

# Binds whose names begin with one another's, a literal percent sign and colon, a cast.
STATEMENT = text(
    "SELECT CAST(:limit AS integer) + CAST(:limits AS integer) AS total,"
    " '100%' AS percent, 'a:b' AS colon, CAST(:ids AS uuid[]) AS ids,"
    " current_setting('jit') AS jit"
)
PARAMETERS = (("limits", "integer"), ("limit", "integer"), ("ids", "uuid[]"))
IDS = ["9b2ef9a6-3d0c-4ad7-b5b5-0c4b1d0e8a11"]


def test_a_prepared_statement_answers_what_the_plain_one_answers(engine: Engine) -> None:
    statement = PreparedStatement(
        "test_prepared_same", STATEMENT, PARAMETERS, "SET LOCAL jit = off"
    )
    params = {"limit": 1, "limits": 20, "ids": IDS}
    with engine.begin() as connection:
        plain = connection.execute(STATEMENT, params).one()
        first = statement.execute(connection, params).one()
        again = statement.execute(connection, {**params, "ids": []}).one()
    assert tuple(first)[:4] == tuple(plain)[:4] == (21, "100%", "a:b", [UUID(IDS[0])])
    assert first.jit == "off"  # ``before`` ran in the same transaction
    assert again.ids == [] and again.total == 21


def test_a_session_prepares_once_and_a_new_session_prepares_again(engine: Engine) -> None:
    statement = PreparedStatement("test_prepared_once", STATEMENT, PARAMETERS)
    params = {"limit": 1, "limits": 2, "ids": IDS}
    count = text("SELECT count(*) FROM pg_prepared_statements WHERE name = 'test_prepared_once'")
    with engine.connect() as connection:
        for _ in range(3):
            statement.execute(connection, params).one()
        assert connection.execute(count).scalar_one() == 1
        connection.invalidate()  # the pool replaces the session; its info goes with it
    with engine.connect() as connection:
        assert statement.execute(connection, params).one().total == 3


def test_the_parameters_must_name_exactly_the_statement_s_binds() -> None:
    with pytest.raises(ValueError, match="do not match"):
        PreparedStatement("test_prepared_missing", STATEMENT, PARAMETERS[:2])
    with pytest.raises(ValueError, match="do not match"):
        PreparedStatement("test_prepared_extra", STATEMENT, (*PARAMETERS, ("other", "text")))
