"""db.query is read-only: the sqlglot parser check, and the database layer beneath it."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from agentzt.errors import ToolParameterError
from agentzt.tools import ToolBox, default_toolbox, read_only_statement, run_read_only
from agentzt.tools import db as db_module


@pytest.fixture(scope="module")
def toolbox() -> ToolBox:
    return default_toolbox()


ALLOWED = [
    ("plain_select", "SELECT id, name FROM employees"),
    ("lowercase", "select name from employees where department = 'IT'"),
    ("where_order_limit", "SELECT name FROM employees WHERE id > 3 ORDER BY name DESC LIMIT 2"),
    ("join", "SELECT e.name, t.title FROM tickets t JOIN employees e ON e.id = t.assignee_id"),
    (
        "left_join",
        "SELECT a.tag, e.name FROM assets a LEFT JOIN employees e ON e.id = a.assigned_to",
    ),
    ("cte", "WITH it AS (SELECT * FROM employees WHERE department = 'IT') SELECT name FROM it"),
    (
        "recursive_cte_bounded",
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) "
        "SELECT x FROM n",
    ),
    ("union", "SELECT name FROM employees UNION SELECT title FROM tickets"),
    ("union_all", "SELECT 1 UNION ALL SELECT 2"),
    ("intersect", "SELECT id FROM employees INTERSECT SELECT assignee_id FROM tickets"),
    ("except", "SELECT id FROM employees EXCEPT SELECT reporter_id FROM tickets"),
    (
        "subquery_in_where",
        "SELECT name FROM employees WHERE id IN (SELECT assignee_id FROM tickets)",
    ),
    ("subquery_in_from", "SELECT n FROM (SELECT count(*) AS n FROM assets) AS s"),
    ("exists", "SELECT 1 WHERE EXISTS (SELECT 1 FROM tickets WHERE status = 'open')"),
    (
        "aggregate_group_having",
        "SELECT department, count(*) FROM employees GROUP BY department HAVING count(*) > 1",
    ),
    (
        "functions_allow_listed",
        "SELECT lower(name), length(email), coalesce(manager_id, 0), strftime('%Y', hired_on), "
        "CASE WHEN id > 5 THEN 'late' ELSE 'early' END FROM employees WHERE name LIKE 'A%'",
    ),
    ("window", "SELECT name, row_number() OVER (ORDER BY hired_on) FROM employees"),
    ("string_literal_delete", "SELECT 'DELETE FROM employees' AS s"),
    ("string_literal_stacked", "SELECT 'x''; DROP TABLE employees; --' AS s"),
    ("quoted_identifier_delete", 'SELECT name AS "delete" FROM employees'),
    ("line_comment_hides_drop", "SELECT 1 -- ; DROP TABLE x"),
    ("block_comment_hides_delete", "SELECT 1 /* ; DELETE FROM employees */"),
    ("comment_closer_in_line_comment", "SELECT 1 -- */ DELETE FROM employees"),
    ("trailing_semicolon", "SELECT 1;"),
    ("trailing_semicolon_comment", "SELECT 1; -- done"),
    ("nbsp_whitespace", "SELECT\u00a0name FROM employees"),
]


@pytest.mark.parametrize("sql", [sql for _, sql in ALLOWED], ids=[i for i, _ in ALLOWED])
def test_allowed_query_passes_and_runs(toolbox: ToolBox, sql: str) -> None:
    arguments = toolbox.validate("db.query", {"sql": sql})
    output = toolbox.run("db.query", arguments)
    assert output["row_count"] == len(output["rows"]) >= 1
    assert all(len(row) == len(output["columns"]) for row in output["rows"])


DELETE = "DELETE statement not allowed"
STACKED = "exactly one statement; found 2"
NOT_QUERY = "only a SELECT query is allowed"
UNPARSED = "could not be parsed"
EMPTY = "no SQL statement found"
OUTSIDE = "function outside the allow-list"

REJECTED = [
    ("delete", "DELETE FROM employees", DELETE),
    ("delete_mixed_case", "dElEtE FrOm employees", DELETE),
    ("block_comment_before_delete", "/* harmless */ DELETE FROM users", DELETE),
    ("line_comment_before_delete", "-- report\nDELETE FROM employees", DELETE),
    ("insert", "INSERT INTO employees (id) VALUES (99)", "INSERT statement not allowed"),
    ("update", "UPDATE employees SET title = 'CEO'", "UPDATE statement not allowed"),
    ("replace", "REPLACE INTO employees (id) VALUES (1)", "REPLACE statement not allowed"),
    ("insert_or_replace", "INSERT OR REPLACE INTO assets (id) VALUES (1)", "INSERT statement"),
    (
        "upsert",
        "INSERT INTO assets (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET kind = 'x'",
        "INSERT statement not allowed",
    ),
    ("create_table", "CREATE TABLE x (a INTEGER)", "CREATE statement not allowed"),
    ("create_temp_view", "CREATE TEMP VIEW v AS SELECT 1", "CREATE statement not allowed"),
    ("create_as_select", "CREATE TABLE x AS SELECT * FROM employees", "CREATE statement"),
    ("drop_table", "DROP TABLE employees", "DROP statement not allowed"),
    ("alter_rename", "ALTER TABLE employees RENAME TO e2", "ALTER statement not allowed"),
    ("alter_add_column", "ALTER TABLE employees ADD COLUMN x TEXT", "ALTER statement not allowed"),
    ("pragma", "PRAGMA table_info(employees)", "PRAGMA statement not allowed"),
    ("pragma_query_only_off", "PRAGMA query_only = OFF", "PRAGMA statement not allowed"),
    ("attach", "ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH statement not allowed"),
    ("detach", "DETACH DATABASE x", "DETACH statement not allowed"),
    ("vacuum", "VACUUM", "VACUUM statement not allowed"),
    ("vacuum_into", "VACUUM INTO '/tmp/copy.db'", "VACUUM statement not allowed"),
    ("analyze", "ANALYZE", "ANALYZE statement not allowed"),
    ("explain", "EXPLAIN SELECT 1", "EXPLAIN statement not allowed"),
    ("begin", "BEGIN", "BEGIN statement not allowed"),
    ("commit", "COMMIT", "COMMIT statement not allowed"),
    ("rollback", "ROLLBACK", "ROLLBACK statement not allowed"),
    ("savepoint", "SAVEPOINT s1", NOT_QUERY),
    ("reindex", "REINDEX", NOT_QUERY),
    ("values", "VALUES (1)", NOT_QUERY),
    ("stacked", "SELECT 1; DELETE FROM employees", STACKED),
    ("stacked_trailing_comment", "SELECT 1; DELETE FROM employees -- trailing", STACKED),
    ("stacked_comment_between", "SELECT 1; /* x */ DROP TABLE employees", STACKED),
    ("stacked_two_selects", "SELECT 1; SELECT 2", STACKED),
    ("stacked_transaction", "BEGIN; DELETE FROM employees; COMMIT", "found 3"),
    ("stacked_after_string", "SELECT 'a\\'; DELETE FROM employees; --'", STACKED),
    (
        "cte_delete",
        "WITH x AS (DELETE FROM employees RETURNING *) SELECT * FROM x",
        DELETE,
    ),
    (
        "cte_insert",
        "WITH x AS (INSERT INTO assets (id) VALUES (5) RETURNING id) SELECT * FROM x",
        "INSERT statement not allowed",
    ),
    (
        "cte_update",
        "WITH x AS (UPDATE tickets SET status = 'closed' RETURNING id) SELECT * FROM x",
        "UPDATE statement not allowed",
    ),
    ("select_into", "SELECT * INTO backup FROM employees", "SELECT INTO statement not allowed"),
    ("load_extension", "SELECT load_extension('x')", "function load_extension not allowed"),
    (
        "load_extension_quoted_name",
        "SELECT \"load_extension\"('/tmp/evil.so')",
        "function load_extension not allowed",
    ),
    (
        "load_extension_in_subquery",
        "SELECT name FROM employees WHERE id IN (SELECT LOAD_EXTENSION('x'))",
        "function load_extension not allowed",
    ),
    ("readfile", "SELECT readfile('/etc/passwd')", "function readfile not allowed"),
    ("writefile", "SELECT writefile('/tmp/x', 'y')", "function writefile not allowed"),
    ("fts3_tokenizer", "SELECT fts3_tokenizer('simple')", "function fts3_tokenizer not allowed"),
    ("randomblob", "SELECT randomblob(1000000000)", "function randomblob not allowed"),
    ("unknown_function", "SELECT evil(1)", OUTSIDE),
    ("pragma_table_function", "SELECT * FROM pragma_table_info('employees')", OUTSIDE),
    ("typed_function_not_allowed", "SELECT hex(name) FROM employees", OUTSIDE),
    ("empty", "", "arguments.sql: minLength"),
    ("whitespace_only", " \n\t ", EMPTY),
    ("only_line_comment", "-- just a comment", EMPTY),
    ("only_block_comment", "/* SELECT 1 */", EMPTY),
    ("only_semicolons", ";;", EMPTY),
    ("garbage", "garbage ((", UNPARSED),
    ("deep_nesting", "(" * 3000, UNPARSED),
    ("nbsp_before_delete", "\u00a0DELETE FROM employees", DELETE),
    ("line_separator_stacked", "SELECT 1;\u2028DELETE FROM employees", STACKED),
    ("fullwidth_delete", "\uff24\uff25\uff2c\uff25\uff34\uff25 FROM employees", UNPARSED),
    ("zero_width_space_in_keyword", "DEL\u200bETE FROM employees", UNPARSED),
    ("cyrillic_homoglyph_select", "S\u0415LECT 1", UNPARSED),
    ("for_update", "SELECT 1 FROM employees FOR UPDATE", "SELECT FOR UPDATE statement"),
    ("lossy_rendering", "SELECT a FROM employees AS x(a)", "could not be rendered"),
]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [(sql, expected) for _, sql, expected in REJECTED],
    ids=[i for i, _, _ in REJECTED],
)
def test_rejected_query_names_the_rule_not_the_sql(
    toolbox: ToolBox, sql: str, expected: str
) -> None:
    with pytest.raises(ToolParameterError) as caught:
        toolbox.validate("db.query", {"sql": sql})
    exc = caught.value
    assert expected in exc.detail
    # The caller is told what failed: the detail is built never to carry the SQL.
    assert exc.message == exc.detail
    # Neither the statement nor anything it names is echoed.
    fragments = ["employees", "/tmp", "FROM", "evil"]
    if len(sql.strip()) > 12:
        fragments.append(sql.strip())
    for fragment in fragments:
        assert fragment not in exc.detail
        assert fragment not in str(exc)


def test_parser_rejects_empty_text_on_its_own() -> None:
    # The schema's minLength catches "" first; the parser must not rely on it.
    with pytest.raises(ToolParameterError, match=EMPTY):
        read_only_statement("")


def test_parser_warnings_do_not_log_the_sql(caplog: pytest.LogCaptureFixture) -> None:
    # sqlglot quotes unsupported SQL in a WARNING; attacker text must not reach logs.
    with caplog.at_level(logging.DEBUG), pytest.raises(ToolParameterError):
        read_only_statement("REPLACE INTO canary_7f3a VALUES (1)")
    assert "canary_7f3a" not in caplog.text


def test_table_covers_required_ground() -> None:
    assert len(ALLOWED) + len(REJECTED) >= 25


def test_handler_rechecks_even_without_validate(toolbox: ToolBox) -> None:
    with pytest.raises(ToolParameterError, match="DELETE statement not allowed"):
        toolbox.run("db.query", {"sql": "DELETE FROM employees", "max_rows": 5})


def test_checked_rendering_is_what_runs() -> None:
    # Comments are dropped from the rendering, so nothing hides in them at run time.
    assert read_only_statement("SELECT 1 -- */ DELETE FROM employees") == "SELECT 1"
    assert read_only_statement("/* a */ select  name from employees") == (
        "SELECT name FROM employees"
    )


def _employee_count() -> int:
    output = run_read_only("SELECT count(*) FROM employees", max_rows=1)
    return int(output["rows"][0][0])


BYPASS = [
    ("delete", "DELETE FROM employees"),
    ("insert", "INSERT INTO employees (id, name) VALUES (99, 'x')"),
    ("update", "UPDATE employees SET name = 'x'"),
    ("drop", "DROP TABLE employees"),
    ("create", "CREATE TABLE x (a)"),
    ("create_temp", "CREATE TEMP TABLE x (a)"),
    ("pragma_off", "PRAGMA query_only = OFF"),
    ("attach", "ATTACH DATABASE ':memory:' AS x"),
    ("vacuum", "VACUUM"),
    ("begin", "BEGIN"),
    ("load_extension", "SELECT load_extension('x')"),
    ("randomblob", "SELECT randomblob(16)"),
    ("pragma_function", "SELECT * FROM pragma_table_info('employees')"),
    ("stacked", "SELECT 1; DELETE FROM employees"),
]


@pytest.mark.parametrize("sql", [sql for _, sql in BYPASS], ids=[i for i, _ in BYPASS])
def test_database_layer_blocks_writes_without_the_parser(sql: str) -> None:
    before = _employee_count()
    with pytest.raises(ToolParameterError, match=r"^db\.query: query failed \(") as caught:
        run_read_only(sql, max_rows=5)
    assert "employees" not in caught.value.detail
    assert _employee_count() == before == 10


def test_query_only_pragma_holds_without_the_authorizer() -> None:
    conn = db_module._open_copy()
    try:
        conn.set_authorizer(None)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM employees")
    finally:
        conn.close()


AUTHORIZER = [
    ("select", sqlite3.SQLITE_SELECT, None, None, None, True),
    ("read_table", sqlite3.SQLITE_READ, "employees", "name", "main", True),
    ("read_cte", sqlite3.SQLITE_READ, "c", "", None, True),
    ("recursive", sqlite3.SQLITE_RECURSIVE, None, None, None, True),
    ("function_allowed", sqlite3.SQLITE_FUNCTION, None, "lower", None, True),
    ("function_denied", sqlite3.SQLITE_FUNCTION, None, "load_extension", None, False),
    ("read_temp", sqlite3.SQLITE_READ, "x", "a", "temp", False),
    ("delete", sqlite3.SQLITE_DELETE, "employees", None, "main", False),
    ("insert", sqlite3.SQLITE_INSERT, "employees", None, "main", False),
    ("update", sqlite3.SQLITE_UPDATE, "employees", "name", "main", False),
    ("pragma", sqlite3.SQLITE_PRAGMA, "query_only", "OFF", None, False),
    ("attach", sqlite3.SQLITE_ATTACH, ":memory:", None, None, False),
    ("transaction", sqlite3.SQLITE_TRANSACTION, "BEGIN", None, None, False),
    ("create_table", sqlite3.SQLITE_CREATE_TABLE, "x", None, "main", False),
]


@pytest.mark.parametrize(
    ("action", "arg1", "arg2", "db_name", "allowed"),
    [case[1:] for case in AUTHORIZER],
    ids=[case[0] for case in AUTHORIZER],
)
def test_authorizer_allows_only_reads(
    action: int, arg1: str | None, arg2: str | None, db_name: str | None, allowed: bool
) -> None:
    expected = sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY
    assert db_module._authorize(action, arg1, arg2, db_name, None) == expected


def test_runaway_recursive_cte_is_aborted(toolbox: ToolBox) -> None:
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    arguments = toolbox.validate("db.query", {"sql": sql})  # read-only, so the parser allows it
    started = time.monotonic()
    with pytest.raises(ToolParameterError, match="exceeded its execution budget"):
        toolbox.run("db.query", arguments)
    assert time.monotonic() - started < 10


def test_returns_rows_from_the_demo_database(toolbox: ToolBox) -> None:
    sql = "SELECT id, name, department FROM employees WHERE department = 'IT' ORDER BY id"
    output = toolbox.run("db.query", toolbox.validate("db.query", {"sql": sql}))
    assert output == {
        "columns": ["id", "name", "department"],
        "rows": [[1, "Ada Okafor", "IT"], [2, "Bram Visser", "IT"], [3, "Chen Wei", "IT"]],
        "row_count": 3,
        "truncated": False,
    }


@pytest.mark.parametrize(
    ("max_rows", "row_count", "truncated"),
    [(2, 2, True), (10, 10, False), (100, 10, False)],
    ids=["cut", "exact", "under"],
)
def test_max_rows_bounds_the_result(
    toolbox: ToolBox, max_rows: int, row_count: int, truncated: bool
) -> None:
    arguments = toolbox.validate("db.query", {"sql": "SELECT * FROM tickets", "max_rows": max_rows})
    output = toolbox.run("db.query", arguments)
    assert (output["row_count"], len(output["rows"]), output["truncated"]) == (
        row_count,
        row_count,
        truncated,
    )


def test_runtime_error_has_a_fixed_detail(toolbox: ToolBox) -> None:
    arguments = toolbox.validate("db.query", {"sql": "SELECT canary_7f3a FROM employees"})
    with pytest.raises(ToolParameterError) as caught:
        toolbox.run("db.query", arguments)
    assert caught.value.detail == "db.query: query failed (SQLITE_ERROR)"
    assert "canary_7f3a" not in str(caught.value)


def test_non_json_values_are_rendered() -> None:
    output = run_read_only("SELECT x'4142', 1e999", max_rows=1)
    assert output["rows"] == [["4142", "inf"]]
