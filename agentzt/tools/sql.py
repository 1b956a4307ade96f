"""Read-only enforcement for ``db.query``, by parsing the SQL with sqlglot.

A regex over SQL text is fooled by comments, string literals and case; a parser is not.
``read_only_statement`` parses the text with sqlglot's SQLite dialect, requires exactly
one query expression (SELECT, UNION, INTERSECT, EXCEPT, with optional CTEs), walks every
node of its tree, and returns the statement re-rendered by sqlglot without comments.
The caller executes that rendering, not the submitted text, so what was checked is what
runs: a place where sqlglot and SQLite disagree about where a comment or string ends
cannot smuggle a second statement past the check.

This is the first of two layers; ``agentzt.tools.db`` runs the result on a connection
that cannot write even if this module were fooled.
"""

from __future__ import annotations

import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from agentzt.errors import ToolParameterError

__all__ = ["ALLOWED_FUNCTIONS", "read_only_statement"]

# sqlglot logs unsupported syntax at WARNING with the submitted SQL quoted in the
# message. That SQL is attacker text and must not reach the operator's logs; every
# rejection is reported through ToolParameterError and the audit log instead.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

# IMPORTANT: functions are allow-listed, not deny-listed. SQLite's dangerous functions
# (load_extension, fts3_tokenizer, and readfile/writefile/edit where the shell's
# extensions are linked in) touch files, load code or read raw pointers; others
# (randomblob, zeroblob, printf) can allocate without bound. An allow-list of the plain
# aggregate, text, number, null-handling, date and window functions an analyst needs is
# short, easy to review, and fails closed on anything SQLite adds later. These are
# SQLite's own names; the database authorizer in ``db.py`` enforces the same set at
# prepare time, where the name is exactly what SQLite will call.
ALLOWED_FUNCTIONS: frozenset[str] = frozenset(
    {
        # aggregate
        "count", "sum", "avg", "min", "max", "total", "group_concat",
        # text; like and glob are the functions behind the LIKE and GLOB operators
        "lower", "upper", "length", "substr", "substring", "trim", "ltrim", "rtrim",
        "replace", "instr", "like", "glob",
        # number and null handling
        "abs", "round", "coalesce", "ifnull", "nullif", "iif", "typeof",
        # date and time
        "date", "time", "datetime", "julianday", "strftime",
        # window
        "row_number", "rank", "dense_rank",
    }
)  # fmt: skip

# sqlglot parses well-known functions and a few operators into typed nodes; these are the
# typed nodes that render to an allowed function or to a plain SQL operator (CAST, CASE,
# EXISTS, COLLATE). Names sqlglot does not know arrive as ``exp.Anonymous`` and are
# checked by name against ALLOWED_FUNCTIONS.
_ALLOWED_FUNCTION_NODES: tuple[type[exp.Func], ...] = (
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Least, exp.Greatest,
    exp.GroupConcat, exp.Lower, exp.Upper, exp.Length, exp.Substring, exp.Trim,
    exp.Replace, exp.StrPosition, exp.Abs, exp.Round, exp.Coalesce, exp.Nullif, exp.If,
    exp.Typeof, exp.Date, exp.TimeToStr, exp.TsOrDsToTimestamp, exp.RowNumber, exp.Rank,
    exp.DenseRank, exp.Cast, exp.Case, exp.Exists, exp.Collate,
)  # fmt: skip

# Functions named in the error detail. Any other rejected name stays unnamed, because
# an unknown function name is attacker text.
_NAMED_DANGEROUS = frozenset(
    {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "randomblob",
     "zeroblob", "printf", "format", "changes", "last_insert_rowid", "sqlite_offset"}
)  # fmt: skip

# IMPORTANT: every node kind that writes, changes schema or settings, or controls
# transactions, with the fixed label used in the error detail. These are rejected
# anywhere in the tree, not only at the top: sqlglot parses writes inside CTEs
# (``WITH x AS (DELETE ... RETURNING *) SELECT ...``) and SELECT ... INTO.
_WRITE_NODES: tuple[tuple[type[exp.Expr], str], ...] = (
    (exp.Insert, "INSERT"),
    (exp.Update, "UPDATE"),
    (exp.Delete, "DELETE"),
    (exp.Merge, "MERGE"),
    (exp.Copy, "COPY"),
    (exp.DML, "data-modifying"),
    (exp.Create, "CREATE"),
    (exp.DDL, "schema-changing"),
    (exp.Drop, "DROP"),
    (exp.Alter, "ALTER"),
    (exp.TruncateTable, "TRUNCATE"),
    (exp.Pragma, "PRAGMA"),
    (exp.Transaction, "BEGIN"),
    (exp.Commit, "COMMIT"),
    (exp.Rollback, "ROLLBACK"),
    (exp.Attach, "ATTACH"),
    (exp.Detach, "DETACH"),
    (exp.Into, "SELECT INTO"),
    (exp.Returning, "RETURNING"),
    (exp.Analyze, "ANALYZE"),
    (exp.Set, "SET"),
    (exp.Use, "USE"),
    (exp.LoadData, "LOAD DATA"),
    (exp.Grant, "GRANT"),
    (exp.Revoke, "REVOKE"),
    (exp.Lock, "SELECT FOR UPDATE"),
    (exp.Command, "unsupported"),
)

# sqlglot falls back to ``exp.Command`` for statements it cannot parse (VACUUM, REPLACE,
# EXPLAIN, ALTER ... ADD COLUMN); its first keyword is named only if it is one of these.
_COMMAND_KEYWORDS = frozenset(
    {"VACUUM", "REPLACE", "EXPLAIN", "ALTER", "REINDEX", "ANALYZE", "SAVEPOINT", "RELEASE",
     "CREATE", "INSERT", "UPDATE", "DELETE", "DROP", "PRAGMA", "ATTACH", "DETACH", "BEGIN",
     "COMMIT", "ROLLBACK", "END", "UPSERT"}
)  # fmt: skip

_QUERY_ROOTS: tuple[type[exp.Expr], ...] = (exp.Select, exp.SetOperation)


def read_only_statement(sql: str) -> str:
    """Return the one read-only query in ``sql``, re-rendered by sqlglot for SQLite.

    Raises ``ToolParameterError`` if the text does not parse, holds no statement or
    more than one, is not a query expression, or contains any writing node or any
    function outside ``ALLOWED_FUNCTIONS``. The detail names the statement type or the
    rule, never the SQL.
    """
    statement = _single_statement(sql)
    if not isinstance(statement, _QUERY_ROOTS):
        label = _write_label(statement)
        if label is not None:
            raise ToolParameterError(f"db.query is read-only: {label} statement not allowed")
        raise ToolParameterError("db.query is read-only: only a SELECT query is allowed")
    for node in statement.walk():
        label = _write_label(node)
        if label is not None:
            raise ToolParameterError(f"db.query is read-only: {label} statement not allowed")
        if isinstance(node, exp.Func):
            _check_function(node)
    try:
        # Lossy renderings raise instead of silently dropping a clause the check saw.
        return statement.sql(dialect="sqlite", comments=False, unsupported_level=ErrorLevel.RAISE)
    except Exception as exc:  # any generator failure denies
        raise ToolParameterError("db.query: SQL could not be rendered for SQLite") from exc


def _single_statement(sql: str) -> exp.Expr:
    try:
        parsed = sqlglot.parse(sql, read="sqlite", error_level=ErrorLevel.IMMEDIATE)
    except Exception as exc:
        # IMPORTANT: the parser is fed attacker text; any failure in it (a parse error,
        # a RecursionError on deep nesting, a bug) must deny, never allow. The parser's
        # own message quotes the SQL, so it is not passed on.
        raise ToolParameterError("db.query: SQL could not be parsed") from exc
    # Empty statements (from ";;" or a trailing comment after the last ";") carry
    # nothing that runs; sqlglot reports them as None or as a bare Semicolon.
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        raise ToolParameterError("db.query: no SQL statement found")
    if len(statements) > 1:
        raise ToolParameterError(f"db.query accepts exactly one statement; found {len(statements)}")
    return statements[0]


def _write_label(node: exp.Expr) -> str | None:
    for kind, label in _WRITE_NODES:
        if isinstance(node, kind):
            if isinstance(node, exp.Command):
                keyword = str(node.this).upper()
                return keyword if keyword in _COMMAND_KEYWORDS else label
            return label
    return None


def _check_function(node: exp.Func) -> None:
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        if name in ALLOWED_FUNCTIONS:
            return
        if name in _NAMED_DANGEROUS:
            raise ToolParameterError(f"db.query is read-only: function {name} not allowed")
        raise ToolParameterError("db.query: function outside the allow-list")
    if not isinstance(node, _ALLOWED_FUNCTION_NODES):
        raise ToolParameterError("db.query: function outside the allow-list")
