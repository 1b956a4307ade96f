"""The gateway's token state on disk: the issuance ledger (SQLite) and the replay journal.

What the gateway accepted before a crash (kill -9 included) it still refuses after a
restart, what it issued it still honours, and what it revoked stays revoked. When either
store cannot be written the gateway refuses the request (503) and audits the refusal,
then resumes by itself once the store works again.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from conftest import REPO, Clock, Stack, enroll_agent, outcome_event
from gateway_process import pin_issuer, start_gateway
from gateway_process import run_agentzt as cli

import agentzt.identity.replay as replay_module
from agentzt.audit import read_events
from agentzt.config import Paths
from agentzt.errors import ReplayedTokenError, StateStoreError
from agentzt.identity import (
    CLIENT_ASSERTION_TYPE,
    Ledger,
    Prover,
    ReplayCache,
    SigningKey,
    make_assertion,
    new_jti,
    read_private_key,
)

AGENT = "agent-1"
ROLE = "demo-agent"
REQUEST_ID = "x-agentzt-request-id"
STATE_DOWN = "token state unavailable; request refused"


# --- helpers ---------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    jti: str = claims["jti"]
    return jti


def event(paths: Paths, request_id: str, **expect: bool) -> dict[str, Any]:
    """The outcome event of the request ``request_id`` (after its decision event, if the
    gateway acted on it; see ``outcome_event`` for ``expect``)."""
    return outcome_event(read_events(paths.audit_log, request_id=request_id), **expect)


class Agent:
    """An enrolled agent speaking to the gateway at ``url`` the way the proxy does:
    client assertions at the token endpoint and a DPoP proof with every request."""

    def __init__(self, key: SigningKey, url: str, agent_id: str = AGENT) -> None:
        self.key = key
        self.url = url
        self.agent_id = agent_id
        self.prover = Prover(key, new_jti)
        self._sequence = 0

    def request_id(self, label: str) -> str:
        self._sequence += 1
        return f"req-{label}-{self._sequence}"

    def assertion(self) -> str:
        return make_assertion(
            self.key, self.agent_id, audience=f"{self.url}/v1/token", now=time.time()
        )

    def token_proof(self) -> str:
        return self.prover.proof("POST", f"{self.url}/v1/token", now=time.time())

    def models_proof(self, token: str) -> str:
        return self.prover.proof(
            "GET", f"{self.url}/v1/models", now=time.time(), access_token=token
        )

    def ask_token(
        self,
        client: httpx.Client,
        assertion: str | None = None,
        *,
        proof: str | None = None,
        request_id: str = "req-token",
    ) -> httpx.Response:
        return client.post(
            "/v1/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion or self.assertion(),
            },
            headers={"DPoP": proof or self.token_proof(), REQUEST_ID: request_id},
        )

    def token(self, client: httpx.Client, assertion: str | None = None) -> str:
        resp = self.ask_token(client, assertion)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["token_type"] == "DPoP"
        token: str = body["access_token"]
        return token

    def models(
        self,
        client: httpx.Client,
        token: str,
        *,
        proof: str | None = None,
        request_id: str = "req-models",
    ) -> httpx.Response:
        return client.get(
            "/v1/models",
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": proof or self.models_proof(token),
                REQUEST_ID: request_id,
            },
        )


# --- kill -9: a gateway in its own process, stopped hard, started again ------------------


def ledger_rows(paths: Paths) -> list[dict[str, Any]]:
    """``agentzt tokens --json``: the ledger as the operator sees it."""
    result = cli(paths, "tokens", "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def packaged(tmp_path: Path) -> Paths:
    """The packaged configuration as shipped (dpop = "required"), agent-1 enrolled."""
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(REPO / "config" / "gateway.toml", config / "gateway.toml")
    shutil.copy(REPO / "config" / "policy.toml", config / "policy.toml")
    paths = Paths(config_dir=config, home=tmp_path / "home")
    enroll_agent(paths, AGENT, ROLE)
    return paths


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_restart_keeps_replays_refused_revocations_and_issued_tokens(
    packaged: Paths, tmp_path: Path, procs: list[subprocess.Popen[bytes]], stop: str
) -> None:
    paths = packaged
    proc, url = start_gateway(paths, procs, tmp_path / "gw1.stderr")
    agent = Agent(read_private_key(paths.identity_key(AGENT)), url)

    with httpx.Client(base_url=url, timeout=10) as client:
        assertion_1 = agent.assertion()
        token_1 = agent.token(client, assertion_1)
        proof_1 = agent.models_proof(token_1)
        first = agent.models(client, token_1, proof=proof_1)
        assert first.status_code == 200, first.text
        # The same proof again, before any restart: refused (the baseline for below).
        again = agent.models(client, token_1, proof=proof_1)
        assert again.status_code == 401, again.text

        token_2 = agent.token(client)
        assert agent.models(client, token_2).status_code == 200
        revoked = cli(paths, "revoke", "--jti", jti_of(token_2), "--reason", "test revocation")
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked 1 live token" in revoked.stdout
        assert agent.models(client, token_2).status_code == 401
    before = ledger_rows(paths)
    assert {row["jti"]: row["state"] for row in before} == {
        jti_of(token_1): "live",
        jti_of(token_2): "revoked",
    }

    if stop == "kill -9":
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
    else:
        proc.terminate()
        # uvicorn shuts down gracefully (lifespan included), then re-raises the signal.
        assert proc.wait(timeout=15) == -signal.SIGTERM
        assert "Traceback" not in (tmp_path / "gw1.stderr").read_text()

    # Same home and the first run's URL as issuer: its tokens are this gateway's.
    pin_issuer(paths, url)
    _, url_again = start_gateway(paths, procs, tmp_path / "gw2.stderr")
    with httpx.Client(base_url=url_again, timeout=10) as client:
        # The client assertion used before the crash: refused, with a fresh proof.
        replayed = agent.ask_token(client, assertion_1, request_id="req-replay-assertion")
        assert replayed.status_code == 401, replayed.text
        assert replayed.json()["error"] == "invalid_client"
        assert "access_token" not in replayed.json()
        seen = event(paths, "req-replay-assertion")
        assert (seen["action"], seen["decision"], seen["status"]) == ("token.reject", "deny", 401)
        assert "already used" in seen["reason"]

        # The DPoP proof used before the crash, with its own token: refused.
        proof_replay = agent.models(client, token_1, proof=proof_1, request_id="req-replay-proof")
        assert proof_replay.status_code == 401, proof_replay.text
        assert proof_replay.json()["error"]["type"] == "authentication_error"
        assert "already used" in event(paths, "req-replay-proof")["reason"]

        # The revoked token stays revoked.
        still_revoked = agent.models(client, token_2, request_id="req-revoked")
        assert still_revoked.status_code == 401, still_revoked.text
        assert "revoked" in event(paths, "req-revoked")["reason"]

        # The token issued before the crash, with a fresh proof: still honoured.
        honoured = agent.models(client, token_1)
        assert honoured.status_code == 200, honoured.text
        assert honoured.json()["data"]

    # Nothing lost, nothing added by the refused requests.
    assert ledger_rows(paths) == before
    assert mode(paths.token_ledger) == 0o600
    assert mode(paths.replay_journal) == 0o600


# --- the replay journal, without a server ---------------------------------------------


class FailingOs(ModuleType):
    """``os`` for the replay module, with ``write`` replaced: every other name is the real
    one, so nothing else in the process (the audit log included) is affected."""

    def __init__(self, write: Callable[[int, bytes], int]) -> None:
        super().__init__("os")
        self.write = write

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def no_space(fd: int, data: bytes) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def half_written(fd: int, data: bytes) -> int:
    """A short write, as ``write(2)`` makes when the disk fills mid-line."""
    return os.write(fd, data[: len(data) // 2])


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "state" / "replay.journal"


def refuses(cache: ReplayCache, key: str, until: float) -> bool:
    try:
        cache.use(key, until=until)
    except ReplayedTokenError:
        return True
    return False


def lines_of(journal: Path) -> list[bytes]:
    return journal.read_bytes().splitlines()


def test_journal_is_private_and_a_used_key_stays_used_after_reload(
    clock: Clock, journal: Path
) -> None:
    cache = ReplayCache(clock, journal=journal)
    assert journal.exists()
    assert mode(journal) == 0o600
    cache.use("assertion-1", until=clock.now + 60)
    cache.use("proof-1", until=clock.now + 60)
    with pytest.raises(ReplayedTokenError):
        cache.use("assertion-1", until=clock.now + 60)
    # No close(): a crashed process never gets to close its files.
    lines = lines_of(journal)
    assert len(lines) == 2
    assert all(re.fullmatch(rb"\d+ [0-9a-f]{32}", line) for line in lines)
    # The journal holds digests, never the keys themselves.
    assert b"assertion-1" not in journal.read_bytes()

    reloaded = ReplayCache(clock, journal=journal)
    assert len(reloaded) == 2
    assert refuses(reloaded, "assertion-1", clock.now + 60)
    assert refuses(reloaded, "proof-1", clock.now + 60)
    assert not refuses(reloaded, "assertion-2", clock.now + 60)
    assert mode(journal) == 0o600
    cache.close()
    reloaded.close()


def test_expired_keys_are_not_reloaded_and_are_compacted_away(clock: Clock, journal: Path) -> None:
    cache = ReplayCache(clock, journal=journal)
    cache.use("short", until=clock.now + 10)
    cache.use("long", until=clock.now + 1000)
    cache.close()

    # Still live: both reload.
    clock.now += 9
    live = ReplayCache(clock, journal=journal)
    assert len(live) == 2
    live.close()

    clock.now += 20
    reloaded = ReplayCache(clock, journal=journal)
    assert len(reloaded) == 1
    assert len(lines_of(journal)) == 1  # compacted at start: the expired line is gone
    assert refuses(reloaded, "long", clock.now + 1000)
    assert not refuses(reloaded, "short", clock.now + 10)
    reloaded.close()


@pytest.mark.parametrize(
    "tail",
    [
        b"10",  # torn inside the expiry
        b"9999999999 0123456789abcdef",  # torn inside the digest
        b"9999999999 ",  # torn right after the space
        b"garbage that is no journal line\n\x00\xff\xfe\n",
        b"-5 0123456789abcdef0123456789abcdef\n",
    ],
    ids=["torn-expiry", "torn-digest", "torn-space", "garbage", "negative"],
)
def test_torn_or_garbage_lines_are_skipped_and_the_rest_loads(
    clock: Clock, journal: Path, tail: bytes
) -> None:
    cache = ReplayCache(clock, journal=journal)
    keys = [f"key-{i}" for i in range(5)]
    for key in keys:
        cache.use(key, until=clock.now + 60)
    cache.close()
    with journal.open("ab") as fh:
        fh.write(tail)

    reloaded = ReplayCache(clock, journal=journal)
    assert len(reloaded) == len(keys)
    assert all(refuses(reloaded, key, clock.now + 60) for key in keys)
    # Appending goes on after a clean line end, so the next key survives a reload too.
    reloaded.use("after-the-tear", until=clock.now + 60)
    reloaded.close()
    assert all(re.fullmatch(rb"\d+ [0-9a-f]{32}", line) for line in lines_of(journal))
    third = ReplayCache(clock, journal=journal)
    assert len(third) == len(keys) + 1
    assert refuses(third, "after-the-tear", clock.now + 60)
    third.close()


def test_garbage_in_the_middle_does_not_hide_later_keys(clock: Clock, journal: Path) -> None:
    cache = ReplayCache(clock, journal=journal)
    cache.use("before", until=clock.now + 60)
    cache.close()
    with journal.open("ab") as fh:
        fh.write(b"not a line\n12 34\n\n")
    appended = ReplayCache(clock, journal=journal)
    appended.use("after", until=clock.now + 60)
    appended.close()
    reloaded = ReplayCache(clock, journal=journal)
    assert refuses(reloaded, "before", clock.now + 60)
    assert refuses(reloaded, "after", clock.now + 60)
    reloaded.close()


def test_unreadable_journal_is_a_state_store_error(clock: Clock, journal: Path) -> None:
    journal.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(StateStoreError) as raised:
        ReplayCache(clock, journal=journal)
    assert raised.value.status == 503


@pytest.fixture
def small_compaction(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(replay_module, "COMPACT_MIN_LINES", 20)
    return 20


def test_compaction_shrinks_the_journal_and_keeps_live_keys(
    clock: Clock, journal: Path, small_compaction: int
) -> None:
    cache = ReplayCache(clock, journal=journal)
    cache.use("keep", until=clock.now + 5000)
    for i in range(3 * small_compaction):
        cache.use(f"old-{i}", until=clock.now + 5)
    grown = journal.stat().st_size
    assert len(lines_of(journal)) == 3 * small_compaction + 1

    clock.now += 100  # every old-* key has expired
    cache.use("trigger", until=clock.now + 5000)
    after = [f"after-{i}" for i in range(3)]
    for key in after:
        cache.use(key, until=clock.now + 5000)
    assert journal.stat().st_size < grown / 4
    # keep, after-* and (see the next test) trigger: nothing else.
    assert len(lines_of(journal)) <= 2 + len(after)
    assert mode(journal) == 0o600

    # Crash (no close), then start again: every live key used before it is still refused.
    reloaded = ReplayCache(clock, journal=journal)
    assert refuses(reloaded, "keep", clock.now + 5000)
    assert all(refuses(reloaded, key, clock.now + 5000) for key in after)
    assert not refuses(reloaded, "old-0", clock.now + 5)
    cache.close()
    reloaded.close()


def test_the_key_whose_use_triggers_compaction_survives_a_restart(
    clock: Clock, journal: Path, small_compaction: int
) -> None:
    cache = ReplayCache(clock, journal=journal)
    for i in range(small_compaction):
        cache.use(f"old-{i}", until=clock.now + 5)
    clock.now += 100
    cache.use("trigger", until=clock.now + 5000)  # this use compacts the journal
    assert len(lines_of(journal)) <= 1

    reloaded = ReplayCache(clock, journal=journal)
    assert refuses(reloaded, "trigger", clock.now + 5000)
    cache.close()
    reloaded.close()


def test_journal_write_failure_refuses_the_key_and_does_not_count_it_as_used(
    clock: Clock, journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ReplayCache(clock, journal=journal)
    cache.use("earlier", until=clock.now + 60)
    before = journal.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(replay_module, "os", FailingOs(no_space))
        with pytest.raises(StateStoreError) as raised:
            cache.use("fresh", until=clock.now + 60)
        assert raised.value.status == 503
        assert "replay journal" in raised.value.detail
        # A used key is still refused as a replay, journal or not.
        with pytest.raises(ReplayedTokenError):
            cache.use("earlier", until=clock.now + 60)
    assert len(cache) == 1
    assert journal.read_bytes() == before

    # The journal works again: the refused key was never used, so it is accepted now,
    # journaled, and refused after a restart.
    cache.use("fresh", until=clock.now + 60)
    reloaded = ReplayCache(clock, journal=journal)
    assert refuses(reloaded, "fresh", clock.now + 60)
    assert refuses(reloaded, "earlier", clock.now + 60)
    cache.close()
    reloaded.close()


def test_short_journal_write_is_refused_and_does_not_bury_the_next_key(
    clock: Clock, journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ReplayCache(clock, journal=journal)
    with monkeypatch.context() as patch:
        patch.setattr(replay_module, "os", FailingOs(half_written))
        with pytest.raises(StateStoreError):
            cache.use("torn", until=clock.now + 60)
    # Whatever the cache accepts afterwards must be refused after a restart.
    try:
        cache.use("next", until=clock.now + 60)
    except StateStoreError:
        accepted = False
    else:
        accepted = True
    reloaded = ReplayCache(clock, journal=journal)
    if accepted:
        assert refuses(reloaded, "next", clock.now + 60)
    cache.close()
    reloaded.close()


# --- failing closed over HTTP (an in-process gateway) -----------------------------------


@pytest.fixture
def agent(gateway_stack: Stack) -> Agent:
    key = read_private_key(gateway_stack.paths.identity_key(AGENT))
    return Agent(key, gateway_stack.gateway_url)


@contextmanager
def ledger_query_only(stack: Stack) -> Iterator[None]:
    """The gateway's own ledger connection refuses every write."""
    db = stack.gateway.ledger._db
    db.execute("PRAGMA query_only = ON")
    try:
        yield
    finally:
        db.execute("PRAGMA query_only = OFF")


@contextmanager
def ledger_locked(stack: Stack) -> Iterator[None]:
    """Another process (say, a stuck CLI) holds the ledger's write lock past the busy
    timeout."""
    other = sqlite3.connect(stack.paths.token_ledger, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.parametrize("breakage", [ledger_query_only, ledger_locked], ids=["readonly", "locked"])
def test_ledger_write_failure_refuses_issuance_with_503_and_audits_it(
    gateway_stack: Stack,
    agent: Agent,
    breakage: Callable[[Stack], Any],
) -> None:
    paths, gateway = gateway_stack.paths, gateway_stack.gateway
    with gateway_stack.gw_client() as client:
        token = agent.token(client)
        rows_before = gateway.ledger.rows(now=time.time(), limit=1000)
        with breakage(gateway_stack):
            refused = agent.ask_token(client, request_id="req-ledger-down")
            # Reading the ledger still works: tokens already issued keep serving.
            served = agent.models(client, token)
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"error": "server_error", "error_description": STATE_DOWN}
        assert refused.headers["cache-control"] == "no-store"
        assert served.status_code == 200, served.text

        # The issuance was authorized (and audited) before the ledger refused to record it.
        seen = event(paths, "req-ledger-down", refused_after_deciding=True)
        assert (seen["action"], seen["decision"], seen["status"]) == ("token.reject", "deny", 503)
        assert seen["agent_id"] == AGENT
        assert "token ledger" in seen["reason"]
        # The token that was signed but not recorded was never handed out, nor recorded.
        assert gateway.ledger.rows(now=time.time(), limit=1000) == rows_before

        # The ledger works again: issuance resumes with no restart.
        fresh = agent.token(client)
        assert agent.models(client, fresh).status_code == 200
        assert len(gateway.ledger.rows(now=time.time(), limit=1000)) == len(rows_before) + 1


def test_replay_journal_failure_refuses_tokens_and_calls_with_503_then_recovers(
    gateway_stack: Stack, agent: Agent
) -> None:
    paths, replay = gateway_stack.paths, gateway_stack.gateway.replay
    with gateway_stack.gw_client() as client:
        token = agent.token(client)
        journal_before = paths.replay_journal.read_bytes()
        assertion = agent.assertion()
        proof = agent.models_proof(token)

        # The journal's descriptor now refuses writes (EBADF), as a real failing store would.
        fd = replay._fd
        assert fd is not None
        saved = os.dup(fd)
        read_only = os.open(paths.replay_journal, os.O_RDONLY)
        os.dup2(read_only, fd)
        os.close(read_only)
        try:
            refused_token = agent.ask_token(client, assertion, request_id="req-journal-token")
            refused_call = agent.models(client, token, proof=proof, request_id="req-journal-call")
        finally:
            os.dup2(saved, fd)
            os.close(saved)

        assert refused_token.status_code == 503, refused_token.text
        assert refused_token.json() == {"error": "server_error", "error_description": STATE_DOWN}
        assert refused_call.status_code == 503, refused_call.text
        assert refused_call.json()["error"] == {"type": "api_error", "message": STATE_DOWN}
        assert paths.replay_journal.read_bytes() == journal_before
        for request_id, action in (
            ("req-journal-token", "token.reject"),
            ("req-journal-call", "model.list"),
        ):
            seen = event(paths, request_id)
            assert (seen["action"], seen["decision"], seen["status"]) == (action, "deny", 503)
            assert "replay journal" in seen["reason"]

        # Working again, no restart: what was refused was never used, so a client's retry
        # of the very same assertion and proof goes through, once.
        retried = agent.ask_token(client, assertion)
        assert retried.status_code == 200, retried.text
        assert agent.models(client, token, proof=proof).status_code == 200
        assert agent.ask_token(client, assertion).status_code == 401
        assert agent.models(client, token, proof=proof).status_code == 401
        assert len(lines_of(paths.replay_journal)) > len(journal_before.splitlines())


# --- the ledger file ---------------------------------------------------------------------


def record(ledger: Ledger, jti: str, *, task_id: str | None = None) -> None:
    now = int(time.time())
    ledger.record(
        jti=jti,
        agent_id=AGENT,
        role=ROLE,
        task_id=task_id,
        scope="model:claude-haiku-4-5",
        binding="dpop",
        issued_at=now,
        expires_at=now + 300,
    )


def test_ledger_files_are_private_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "tokens.db"
    ledger = Ledger(path)
    record(ledger, "jti-1")
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    companions = [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    assert companions, "WAL mode keeps a -wal file while the ledger is open"
    for companion in companions:
        assert mode(companion) == 0o600, companion
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ledger.close()


def test_ledger_without_create_refuses_a_missing_file_and_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nowhere" / "tokens.db"
    with pytest.raises(StateStoreError) as raised:
        Ledger(path, create=False)
    assert raised.value.status == 503
    assert not path.exists()
    assert not path.parent.exists()


def test_a_revocation_through_one_ledger_is_seen_by_another_at_once(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "tokens.db"
    gateway_side = Ledger(path)
    record(gateway_side, "jti-1")
    record(gateway_side, "jti-2", task_id="task-7")
    operator_side = Ledger(path, create=False)  # the CLI opens the gateway's file
    try:
        assert gateway_side.revocation("jti-1") == (True, None)
        assert gateway_side.revocation("jti-unknown") == (False, None)

        assert operator_side.revoke(now=time.time(), reason="by the test", jti="jti-1") == 1
        assert gateway_side.revocation("jti-1") == (True, "by the test")
        assert gateway_side.revocation("jti-2") == (True, None)

        assert operator_side.end_task(AGENT, "task-7", now=time.time(), reason="over") == 1
        assert gateway_side.task_ended(AGENT, "task-7")
        assert gateway_side.revocation("jti-2") == (True, "over")

        # And the other way round: what the gateway records, the CLI lists.
        record(gateway_side, "jti-3")
        assert [row.jti for row in operator_side.rows(now=time.time())] == [
            "jti-1",
            "jti-2",
            "jti-3",
        ]
    finally:
        gateway_side.close()
        operator_side.close()
