"""The SQL splitter: semicolons inside literals, dollar quotes and comments do not split."""

from __future__ import annotations

import pytest

from service.migrations import runner as migrations
from service.migrations.sqlsplit import split_statements, strip_comments


def test_plain_statements_split_on_semicolons() -> None:
    assert split_statements("SELECT 1; SELECT 2;\nSELECT 3") == ["SELECT 1", "SELECT 2", "SELECT 3"]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 'a;b'",
        "SELECT 'it''s; fine'",
        'SELECT 1 AS "odd;name"',
        "SELECT E'escaped \\' quote; still inside'",
        "SELECT $$ body; with; semicolons $$",
        "SELECT $fn$ outer $$ inner; $$ still; $fn$",
        "SELECT /* block; comment */ 1",
        "SELECT /* outer /* nested; */ still; comment */ 1",
    ],
)
def test_literals_and_comments_keep_their_semicolons(statement: str) -> None:
    assert split_statements(f"{statement};\nSELECT 2;") == [statement, "SELECT 2"]


def test_line_comment_hides_semicolons_up_to_the_newline() -> None:
    script = "SELECT 1 -- not; the end\n, 2;\nSELECT 3"
    assert split_statements(script) == ["SELECT 1 -- not; the end\n, 2", "SELECT 3"]


def test_function_body_in_dollar_quotes_is_one_statement() -> None:
    script = """
    CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        RAISE NOTICE 'x;y';
        RETURN NEW;
    END;
    $body$;
    DROP TRIGGER IF EXISTS t ON x;
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("$body$")
    assert statements[1] == "DROP TRIGGER IF EXISTS t ON x"


def test_dollar_in_identifiers_and_parameters_is_not_a_quote() -> None:
    script = "SELECT a$b$c FROM t; PREPARE p AS SELECT $1$; SELECT 3"
    assert split_statements(script) == [
        "SELECT a$b$c FROM t",
        "PREPARE p AS SELECT $1$",
        "SELECT 3",
    ]


def test_comment_only_chunks_are_dropped() -> None:
    script = "-- header only;\n/* nothing; here */\n;\nSELECT 1;\n-- trailer"
    assert split_statements(script) == ["SELECT 1"]


def test_e_prefix_only_counts_as_a_standalone_token() -> None:
    # name' is not an E-string: the backslash does not escape the closing quote
    assert split_statements("SELECT name'a\\'; SELECT 2") == ["SELECT name'a\\'", "SELECT 2"]


def test_strip_comments_keeps_literals() -> None:
    assert strip_comments("SELECT '--not a comment' /* gone */ -- gone") == (
        "SELECT '--not a comment'  "
    )


def test_every_real_migration_splits_into_executable_statements() -> None:
    for file in migrations.discover():
        statements = file.statements()
        assert statements, file.filename
        assert all(s.strip() and not s.rstrip().endswith(";") for s in statements), file.filename
