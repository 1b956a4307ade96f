"""The issuance ledger: every access token the gateway issued, and how it ended.

One SQLite file under the state directory, shared by the gateway (which records each
token before returning it, and consults the row on every call) and the operator's CLI
(``agentzt tokens``, ``agentzt revoke``), which may write while the gateway runs. A
token whose row says revoked, or that has no row at all, is refused at once.

Durability: WAL with ``synchronous = FULL``, so an issuance or revocation that returned
has reached the disk; it survives kill -9 and power loss alike.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentzt.errors import StateStoreError, TaskEndedError
from agentzt.identity.tokens import CLOCK_SKEW_SECONDS

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    jti TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    role TEXT NOT NULL,
    task_id TEXT,
    scope TEXT NOT NULL,
    binding TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at REAL,
    revoked_reason TEXT
);
CREATE INDEX IF NOT EXISTS tokens_by_agent_task ON tokens (agent_id, task_id);
CREATE INDEX IF NOT EXISTS tokens_by_task ON tokens (task_id);
CREATE TABLE IF NOT EXISTS ended_tasks (
    agent_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    ended_at REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (agent_id, task_id)
);
"""
COLUMNS = (
    "jti, agent_id, role, task_id, scope, binding, issued_at, expires_at, "
    "revoked_at, revoked_reason"
)
# How long a writer waits for another's lock. The gateway waits briefly (it waits on
# its event loop, and the CLI's transactions are tiny); the CLI waits longer.
GATEWAY_BUSY_TIMEOUT = 0.5
CLI_BUSY_TIMEOUT = 5.0
# ended_tasks.agent_id for a task the operator ended for every agent; no agent id can
# be "*".
ANY_AGENT = "*"
# A token is accepted up to this long after its exp (clock skew), so it stays revocable
# for as long.
REVOCABLE_AFTER_EXPIRY = CLOCK_SKEW_SECONDS


@dataclass(frozen=True, slots=True)
class TokenRow:
    jti: str
    agent_id: str
    role: str
    task_id: str | None
    scope: str
    binding: str
    issued_at: int
    expires_at: int
    revoked_at: float | None
    revoked_reason: str | None

    def state(self, now: float) -> str:
        """How the token ended, or that it has not: ``revoked``, ``expired`` or ``live``."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "live"

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "jti": self.jti,
            "agent_id": self.agent_id,
            "role": self.role,
            "task_id": self.task_id,
            "scope": self.scope,
            "binding": self.binding,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "state": self.state(now),
            "revoked_at": self.revoked_at,
            "revoked_reason": self.revoked_reason,
        }


class Ledger:
    def __init__(
        self, path: Path, *, create: bool = True, busy_timeout: float = GATEWAY_BUSY_TIMEOUT
    ) -> None:
        """Open the ledger at ``path``; ``create=False`` refuses to make a new one."""
        self.path = path
        if not path.exists():
            if not create:
                raise StateStoreError(f"no token ledger at {path} (has the gateway run here?)")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created private first: SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            # One connection used from the event loop thread only; the flag lets the
            # gateway open it before its server thread starts.
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StateStoreError(f"cannot open the token ledger {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StateStoreError(f"token ledger: {exc}") from exc

    # --- the gateway's side -------------------------------------------------------------

    def record(
        self,
        *,
        jti: str,
        agent_id: str,
        role: str,
        task_id: str | None,
        scope: str,
        binding: str,
        issued_at: int,
        expires_at: int,
    ) -> None:
        """Write one issuance; the token may be handed out only once this returns.

        IMPORTANT: for a task token, the check that the task has not ended and the insert
        are one statement, so a task ended by another process (the CLI) between the token
        endpoint's early check and this write cannot leave a live token behind.
        """
        cursor = self._run(
            "INSERT INTO tokens (jti, agent_id, role, task_id, scope, binding, issued_at,"
            " expires_at) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM"
            " ended_tasks WHERE task_id = ? AND agent_id IN (?, ?))",
            (
                *(jti, agent_id, role, task_id, scope, binding, issued_at, expires_at),
                *(task_id, agent_id, ANY_AGENT),
            ),
        )
        if cursor.rowcount != 1:
            raise TaskEndedError(f"task {task_id} was ended")

    def revocation(self, jti: str) -> tuple[bool, str | None]:
        """``(known, revoked_reason)`` for one token: the per-call check."""
        row = self._run(
            "SELECT revoked_at, revoked_reason FROM tokens WHERE jti = ?", (jti,)
        ).fetchone()
        if row is None:
            return False, None
        return True, (row[1] or "revoked") if row[0] is not None else None

    def task_ended(self, agent_id: str, task_id: str) -> bool:
        row = self._run(
            "SELECT 1 FROM ended_tasks WHERE task_id = ? AND agent_id IN (?, ?)",
            (task_id, agent_id, ANY_AGENT),
        ).fetchone()
        return row is not None

    # --- revocation (the gateway's endpoints and the operator's CLI) ----------------------

    def revoke(
        self,
        *,
        now: float,
        reason: str,
        jti: str | None = None,
        agent_id: str | None = None,
        task_id: str | None = None,
    ) -> int:
        """Revoke the live tokens matching every given filter; return how many."""
        where, params = _filters(jti=jti, agent_id=agent_id, task_id=task_id)
        if not where:
            raise ValueError("revoke needs a jti, an agent or a task")
        cursor = self._run(
            f"UPDATE tokens SET revoked_at = ?, revoked_reason = ? WHERE {' AND '.join(where)}"  # noqa: S608
            " AND revoked_at IS NULL AND expires_at > ?",
            (now, reason, *params, int(now) - REVOCABLE_AFTER_EXPIRY),
        )
        return cursor.rowcount

    def end_task(self, agent_id: str, task_id: str, *, now: float, reason: str) -> int:
        """Mark the task ended (no new token for it) and revoke its live tokens, at once."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR IGNORE INTO ended_tasks VALUES (?, ?, ?, ?)",
                    (agent_id, task_id, now, reason),
                )
                cursor = self._db.execute(
                    "UPDATE tokens SET revoked_at = ?, revoked_reason = ? WHERE task_id = ?"
                    " AND (agent_id = ? OR ? = ?) AND revoked_at IS NULL AND expires_at > ?",
                    (
                        *(now, reason, task_id, agent_id, agent_id, ANY_AGENT),
                        int(now) - REVOCABLE_AFTER_EXPIRY,
                    ),
                )
                return cursor.rowcount
        except sqlite3.Error as exc:
            raise StateStoreError(f"token ledger: {exc}") from exc

    def end_task_for_all(self, task_id: str, *, now: float, reason: str) -> int:
        """End ``task_id`` for every agent, those yet to ask for it included (the
        operator's ``agentzt revoke --task T``)."""
        return self.end_task(ANY_AGENT, task_id, now=now, reason=reason)

    # --- reading --------------------------------------------------------------------------

    def get(self, jti: str) -> TokenRow | None:
        row = self._run(f"SELECT {COLUMNS} FROM tokens WHERE jti = ?", (jti,)).fetchone()  # noqa: S608
        return TokenRow(*row) if row is not None else None

    def rows(
        self,
        *,
        now: float,
        agent_id: str | None = None,
        task_id: str | None = None,
        live: bool = False,
        limit: int = 100,
    ) -> list[TokenRow]:
        """The newest ``limit`` issuances matching the filters, oldest first."""
        where, params = _filters(agent_id=agent_id, task_id=task_id)
        if live:
            where.append("revoked_at IS NULL AND expires_at > ?")
            params.append(int(now))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        found = self._run(
            f"SELECT {COLUMNS} FROM tokens {clause} ORDER BY issued_at DESC, rowid DESC LIMIT ?",  # noqa: S608
            (*params, limit),
        ).fetchall()
        return [TokenRow(*row) for row in reversed(found)]


def _filters(**given: str | None) -> tuple[list[str], list[Any]]:
    """``column = ?`` clauses for the given filters. The SQL text is built only from
    these fixed keyword names (and COLUMNS); every value is a bound parameter, which is
    why the f-strings above are safe."""
    where, params = [], []
    for column, value in given.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return where, params
