"""``db.query``: read-only SQL over an in-memory demo database.

The demo database (employees, tickets, assets of the fictional Halcyon Freight) is built
once per process and kept as a serialized image. Every query runs on a fresh in-memory
copy of that image, on a connection locked down so that it cannot write even if the
parser check in ``agentzt.tools.sql`` were fooled:

- ``PRAGMA query_only = ON`` makes SQLite refuse every write;
- an authorizer allows only reading tables, selecting, recursive CTEs and the
  allow-listed functions, and denies everything else at prepare time;
- limits cap string size, columns and attached databases;
- a progress handler aborts a query after a fixed number of VM steps, so a runaway
  recursive CTE cannot hang the process;
- the copy is thrown away after the query, so nothing outlives one call.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Mapping
from typing import Any

from agentzt.errors import ToolParameterError
from agentzt.tools.base import Tool
from agentzt.tools.sql import ALLOWED_FUNCTIONS, read_only_statement

__all__ = ["DB_QUERY", "MAX_VM_STEPS", "run_read_only"]

MAX_SQL_LENGTH = 4000
MAX_ROWS = 100
DEFAULT_MAX_ROWS = 20

# About 10 million VM instructions: far above any query over the demo tables, well
# under a second of CPU.
MAX_VM_STEPS = 10_000_000
_PROGRESS_INTERVAL = 1000
# Bounds on what one query can build or return.
_MAX_VALUE_LENGTH = 64 * 1024
_MAX_COLUMNS = 64
_MAX_RESULT_CHARS = 1_000_000

_EMPLOYEES = (
    (1, "Ada Okafor", "ada.okafor@hf.example", "IT", "IT Director", "2016-03-01", None),
    (2, "Bram Visser", "bram.visser@hf.example", "IT", "Network Engineer", "2018-07-16", 1),
    (3, "Chen Wei", "chen.wei@hf.example", "IT", "Service Desk Lead", "2019-01-07", 1),
    (4, "Dalia Haddad", "dalia.haddad@hf.example", "Finance", "Controller", "2017-05-22", None),
    (5, "Emil Novak", "emil.novak@hf.example", "Finance", "Accountant", "2021-09-13", 4),
    (6, "Fatima Zahra", "fatima.zahra@hf.example", "Operations", "Dispatcher", "2020-02-03", 8),
    (7, "Gus Lindqvist", "gus.lindqvist@hf.example", "Operations", "Planner", "2022-11-28", 8),
    (8, "Hana Sato", "hana.sato@hf.example", "Operations", "Head of Ops", "2015-08-10", None),
    (9, "Ivo Petrov", "ivo.petrov@hf.example", "Sales", "Account Manager", "2023-04-17", 10),
    (10, "Jo Mbeki", "jo.mbeki@hf.example", "Sales", "Sales Director", "2014-10-06", None),
)  # fmt: skip

_TICKETS = (
    (101, "VPN drops every 20 minutes", "open", "high", 6, 2, "2025-03-03"),
    (102, "Password reset for payroll system", "closed", "medium", 5, 3, "2025-03-04"),
    (103, "New laptop for onboarding", "in_progress", "medium", 9, 3, "2025-03-05"),
    (104, "Printer on floor 2 jams", "open", "low", 7, 3, "2025-03-06"),
    (105, "Expense tool rejects receipts", "open", "medium", 4, 3, "2025-03-07"),
    (106, "MFA token lost", "closed", "high", 10, 3, "2025-03-08"),
    (107, "Wi-Fi slow in warehouse B", "in_progress", "medium", 8, 2, "2025-03-10"),
    (108, "Request access to fleet dashboard", "open", "low", 7, 1, "2025-03-11"),
    (109, "Phishing email reported", "closed", "high", 9, 3, "2025-03-12"),
    (110, "Monitor flickers", "open", "low", 5, 3, "2025-03-13"),
)  # fmt: skip

_ASSETS = (
    (1001, "HF-LT-0042", "laptop", "ThinkPad T14", 1, "2023-01-15"),
    (1002, "HF-LT-0057", "laptop", "ThinkPad T14", 2, "2023-01-15"),
    (1003, "HF-LT-0063", "laptop", "MacBook Air M2", 3, "2023-06-02"),
    (1004, "HF-LT-0071", "laptop", "ThinkPad X1", 4, "2024-02-20"),
    (1005, "HF-LT-0088", "laptop", "ThinkPad T14", 9, "2025-03-05"),
    (1006, "HF-PH-0012", "phone", "Pixel 8", 6, "2024-05-11"),
    (1007, "HF-PH-0019", "phone", "iPhone 15", 8, "2024-05-11"),
    (1008, "HF-MN-0104", "monitor", "Dell U2723QE", 5, "2022-09-30"),
    (1009, "HF-PR-0002", "printer", "Brother HL-L6400", None, "2021-04-08"),
    (1010, "HF-TK-0031", "security key", "YubiKey 5 NFC", 10, "2025-03-08"),
)  # fmt: skip

_SCHEMA = """
CREATE TABLE employees (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
    department TEXT NOT NULL, title TEXT NOT NULL, hired_on TEXT NOT NULL,
    manager_id INTEGER REFERENCES employees(id)
);
CREATE TABLE tickets (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, status TEXT NOT NULL,
    priority TEXT NOT NULL, reporter_id INTEGER REFERENCES employees(id),
    assignee_id INTEGER REFERENCES employees(id), opened_on TEXT NOT NULL
);
CREATE TABLE assets (
    id INTEGER PRIMARY KEY, tag TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    model TEXT NOT NULL, assigned_to INTEGER REFERENCES employees(id),
    purchased_on TEXT NOT NULL
);
"""


@functools.cache
def _demo_image() -> bytes:
    """Build the demo database once and keep it as a serialized image."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        conn.executemany("INSERT INTO employees VALUES (?, ?, ?, ?, ?, ?, ?)", _EMPLOYEES)
        conn.executemany("INSERT INTO tickets VALUES (?, ?, ?, ?, ?, ?, ?)", _TICKETS)
        conn.executemany("INSERT INTO assets VALUES (?, ?, ?, ?, ?, ?)", _ASSETS)
        conn.commit()
        return conn.serialize()
    finally:
        conn.close()


def _authorize(
    action: int, arg1: str | None, arg2: str | None, db_name: str | None, trigger: str | None
) -> int:
    """Allow reading and allow-listed functions; deny every other action.

    SQLITE_RECURSIVE is allowed beside SELECT, READ and FUNCTION because a recursive
    CTE only reads; the progress handler bounds how long it runs.
    """
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    # Reads of the demo tables name "main"; reads of a CTE name no database at all.
    if action == sqlite3.SQLITE_READ and db_name in ("main", None):
        return sqlite3.SQLITE_OK
    # For SQLITE_FUNCTION, arg2 is the function name exactly as SQLite resolved it.
    if action == sqlite3.SQLITE_FUNCTION and arg2 is not None and arg2.lower() in ALLOWED_FUNCTIONS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _open_copy() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.deserialize(_demo_image())
        # IMPORTANT: these three layers must be in place before any untrusted SQL runs,
        # and the authorizer must come last, since it denies the PRAGMA itself.
        conn.execute("PRAGMA query_only = ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_LENGTH)
        conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, _MAX_COLUMNS)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 4 * MAX_SQL_LENGTH)
        steps = 0

        def progress() -> int:
            nonlocal steps
            steps += _PROGRESS_INTERVAL
            return 1 if steps >= MAX_VM_STEPS else 0

        conn.set_progress_handler(progress, _PROGRESS_INTERVAL)
        conn.set_authorizer(_authorize)
    except BaseException:
        conn.close()
        raise
    return conn


def run_read_only(sql: str, *, max_rows: int) -> dict[str, Any]:
    """Execute ``sql`` on a fresh locked-down copy of the demo database.

    This is the execution layer alone: it does not run the parser check, and is safe
    without it. Returns ``{"columns", "rows", "row_count", "truncated"}``. Any SQLite
    error, including a denied write and an exceeded step budget, raises
    ``ToolParameterError`` with a fixed detail that names only SQLite's error code.
    """
    conn = _open_copy()
    try:
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        # One row past the limit tells whether the result was cut.
        fetched = cursor.fetchmany(max_rows + 1)
        cursor.close()
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        if code == "SQLITE_INTERRUPT":
            raise ToolParameterError("db.query: query exceeded its execution budget") from exc
        # IMPORTANT: SQLite's message can quote identifiers from the query; only the
        # error code, from SQLite's fixed vocabulary, goes into the detail.
        raise ToolParameterError(f"db.query: query failed ({code})") from exc
    finally:
        conn.close()
    rows: list[list[Any]] = []
    budget = _MAX_RESULT_CHARS
    for row in fetched[:max_rows]:
        cells = [_json_cell(value) for value in row]
        budget -= sum(len(str(cell)) for cell in cells)
        if budget < 0:
            break
        rows.append(cells)
    return {
        "columns": columns,
        "rows": rows,
        "row_count": len(rows),
        "truncated": len(rows) < len(fetched),
    }


def _json_cell(value: object) -> Any:
    """Make one SQLite value JSON-serializable."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _check(arguments: Mapping[str, Any]) -> None:
    read_only_statement(str(arguments["sql"]))


def _handle(arguments: Mapping[str, Any]) -> dict[str, Any]:
    # The parser check runs again here so the handler never relies on ``validate``
    # having been called; it also yields the rendering that was checked.
    statement = read_only_statement(str(arguments["sql"]))
    max_rows = int(arguments.get("max_rows", DEFAULT_MAX_ROWS))
    return run_read_only(statement, max_rows=max(1, min(max_rows, MAX_ROWS)))


DB_QUERY = Tool(
    name="db.query",
    description=(
        "Run one read-only SQL SELECT (SQLite dialect) against the demo database. Tables: "
        "employees(id, name, email, department, title, hired_on, manager_id), "
        "tickets(id, title, status, priority, reporter_id, assignee_id, opened_on), "
        "assets(id, tag, kind, model, assigned_to, purchased_on)."
    ),
    schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "sql": {"type": "string", "minLength": 1, "maxLength": MAX_SQL_LENGTH},
            "max_rows": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_ROWS,
                "default": DEFAULT_MAX_ROWS,
            },
        },
        "required": ["sql"],
        "additionalProperties": False,
    },
    handler=_handle,
    check=_check,
)
