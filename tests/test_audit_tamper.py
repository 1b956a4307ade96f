"""Tamper evidence against the log's own writer (issue 7, promise 4) and rotation (promise 6).

Every log here is written by the gateway's own audit trail (``open_audit_trail``: the log,
the writer thread and the checkpoint seal), closed so that its final checkpoint is signed,
then changed on disk the way someone holding the gateway's account could change it, and
judged by ``agentzt audit --verify`` as an operator runs it. Checkpoint files are checked
against the C2SP signed-note and tlog-checkpoint specifications with ``cryptography``
directly, never with the code that wrote them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import Clock, at
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from gateway_process import run_agentzt
from typer.testing import CliRunner

from agentzt.audit import canonical_json, chain_hash, verify_chain
from agentzt.audit.segments import archives
from agentzt.cli import app
from agentzt.cli import commands as _commands  # noqa: F401  (registers `agentzt audit` on app)
from agentzt.config import Paths, load_gateway_settings
from agentzt.errors import AuditWriteError, UsageError
from agentzt.gateway import Gateway
from agentzt.gateway.audit_trail import open_audit_trail, verify_trail

EM_DASH = "\u2014"
EVENTS_BEFORE = 6
EVENTS = 12


# --- writing a log the way the gateway does ----------------------------------------------


def seed_checkpoint_key(paths: Paths, *, plus_in_vkey: bool = False) -> None:
    """Put a checkpoint key in place before the gateway's first start, which then uses it.

    The base64 of a random key holds a "+" about half the time, and whether the vkey
    parser copes with that has a test of its own (``test_vkey_with_a_plus_in_its_key``);
    every other test picks a key without one, so that it tests one thing, every run.
    """
    while True:
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if ("+" in base64.b64encode(b"\x01" + raw).decode()) == plus_in_vkey:
            break
    key_path = paths.home / "gateway" / "checkpoint.key"
    key_path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    key_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def write_events(paths: Paths, clock: Clock, first: int, count: int, meta_pad: int = 0) -> None:
    """Open the gateway's audit trail, write ``count`` request events, close it.

    Each request is a decision event and then its outcome, as the gateway writes them
    ("audit before acting"); closing signs the final checkpoint into the log directory
    and the witness directory.
    """
    settings = load_gateway_settings(paths.gateway_toml).audit
    writer, correlate = open_audit_trail(paths, settings, clock)
    try:
        for seq in range(first, first + count):
            request = (seq + 1) // 2
            decided = seq % 2 == 1
            writer.append(
                request_id=f"req-{request:04d}",
                agent_id="agent-1",
                role="demo-agent",
                action="model.call.authorized" if decided else "model.call",
                resource="model:claude-haiku-4-5",
                decision="allow",
                reason="role demo-agent may call claude-haiku-4-5",
                status=0 if decided else 200,
                latency_ms=0.0 if decided else 12.5,
                meta={"token_hmac": correlate(f"token-{request}"), "pad": "x" * meta_pad},
            )
    finally:
        writer.close()


@dataclasses.dataclass
class Trail:
    """A closed log of ``EVENTS`` events, and a copy of it (with its log-directory and
    witness checkpoints) taken when it held only ``EVENTS_BEFORE``."""

    paths: Paths
    older: Path

    @property
    def log(self) -> Path:
        return self.paths.audit_log

    @property
    def local_checkpoint(self) -> Path:
        return self.log.parent / "checkpoint"

    @property
    def witness_checkpoint(self) -> Path:
        found = sorted((self.paths.home / "witness").glob("*.checkpoint"))
        assert len(found) == 1, found
        return found[0]

    @property
    def vkey(self) -> Path:
        return self.paths.home / "gateway" / "checkpoint.vkey"

    def lines(self) -> list[bytes]:
        return self.log.read_bytes().splitlines(keepends=True)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def write_lines(self, lines: list[bytes]) -> None:
        self.log.write_bytes(b"".join(lines))


@pytest.fixture
def trail(paths: Paths, tmp_path: Path) -> Trail:
    seed_checkpoint_key(paths)
    clock = Clock(at(8))
    write_events(paths, clock, 1, EVENTS_BEFORE)
    built = Trail(paths, tmp_path / "older")
    # The "older valid copy" an attacker would restore: log and checkpoints together.
    built.older.mkdir()
    for source in (built.log, built.local_checkpoint, built.witness_checkpoint):
        shutil.copy2(source, built.older / source.name)
    clock.now = at(9)
    write_events(paths, clock, EVENTS_BEFORE + 1, EVENTS - EVENTS_BEFORE)
    assert len(built.lines()) == EVENTS
    return built


# --- running `agentzt audit` ---------------------------------------------------------------


class Run(NamedTuple):
    code: int
    out: str
    err: str


def agentzt(paths: Paths, *args: str) -> Run:
    """``python -m agentzt --config ... --home ... ARGS`` in a process of its own."""
    done = run_agentzt(paths, *args)
    return Run(done.returncode, done.stdout, done.stderr)


def agentzt_here(paths: Paths, *args: str) -> Run:
    """The same command line in this process (typer's runner): a process start saved."""
    result = CliRunner().invoke(
        app, ["--config", str(paths.config_dir), "--home", str(paths.home), *args]
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def assert_broken(run: Run, seq: int | None, naming: Path | None = None) -> str:
    """Exit 1 and exactly one line on stderr, "BROKEN at seq N"; never a word of OK."""
    assert run.code == 1, run
    # "OK" as a word: "BROKEN" itself contains the letters.
    assert re.search(r"\bOK\b", run.out + run.err) is None, run
    assert run.out.strip() == "", run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    at_seq = r"\d+" if seq is None else str(seq)
    assert re.match(rf"audit chain BROKEN at seq {at_seq}: \S", lines[0]), lines[0]
    if naming is not None:
        assert str(naming) in lines[0], lines[0]
    return lines[0]


def assert_ok(run: Run, events: int, checkpoint_seq: int) -> str:
    assert run.code == 0, run
    assert run.err == "", run
    assert f"audit chain OK: {events} events" in run.out, run.out
    # It says which signed checkpoint the log was found to extend.
    assert f"signed checkpoint(s), the newest at seq {checkpoint_seq} (" in run.out, run.out
    return run.out


# --- the tampering -------------------------------------------------------------------------


def _reline(event: dict[str, Any]) -> bytes:
    return canonical_json(event) + b"\n"


def _flip_decision(line: bytes) -> bytes:
    event = json.loads(line)
    event["decision"] = "deny" if event["decision"] == "allow" else "allow"
    event["reason"] = "nothing to see here"
    return _reline(event)


def _recompute_from(lines: list[bytes], index: int) -> list[bytes]:
    """Rehash line ``index`` and every later one with the PROTOCOL.md formula, so the
    chain alone is valid again."""
    prev = json.loads(lines[index - 1])["hash"] if index > 0 else "0" * 64
    out = lines[:index]
    for line in lines[index:]:
        event = json.loads(line)
        del event["hash"]
        event["hash"] = chain_hash(prev, event)
        prev = event["hash"]
        out.append(_reline(event))
    return out


def edit(t: Trail) -> tuple[int, Path | None]:
    lines = t.lines()
    lines[4] = _flip_decision(lines[4])
    t.write_lines(lines)
    return 5, None


def reorder(t: Trail) -> tuple[int, Path | None]:
    lines = t.lines()
    lines[3], lines[4] = lines[4], lines[3]
    t.write_lines(lines)
    return 4, None


def duplicate(t: Trail) -> tuple[int, Path | None]:
    lines = t.lines()
    lines.insert(7, lines[6])
    t.write_lines(lines)
    return 8, None


def recompute(t: Trail) -> tuple[int, Path | None]:
    lines = t.lines()
    lines[4] = _flip_decision(lines[4])
    t.write_lines(_recompute_from(lines, 4))
    # The chain by itself is valid: only the signed checkpoints can tell.
    assert verify_chain(t.log).events == EVENTS
    assert t.events()[4]["reason"] == "nothing to see here"
    return EVENTS, None


def truncate_last_n(t: Trail) -> tuple[int, Path | None]:
    t.write_lines(t.lines()[:-3])
    return EVENTS - 2, None


def empty(t: Trail) -> tuple[int, Path | None]:
    t.log.write_bytes(b"")
    return 1, None


def rollback(t: Trail) -> tuple[int, Path | None]:
    shutil.copy2(t.older / t.log.name, t.log)
    shutil.copy2(t.older / t.local_checkpoint.name, t.local_checkpoint)
    # The restored pair is consistent: without the witness it would verify.
    settings = load_gateway_settings(t.paths.gateway_toml).audit
    unwitnessed = dataclasses.replace(settings, witness_dir="")
    assert verify_trail(t.paths, unwitnessed).events == EVENTS_BEFORE
    return EVENTS_BEFORE + 1, t.witness_checkpoint


def delete_active(t: Trail) -> tuple[int, Path | None]:
    t.log.unlink()
    return 1, None


TAMPERS: dict[str, Callable[[Trail], tuple[int, Path | None]]] = {
    "edit": edit,
    "reorder": reorder,
    "duplicate": duplicate,
    "recompute": recompute,
    "truncate-last-n": truncate_last_n,
    "empty": empty,
    "rollback": rollback,
    "delete-active": delete_active,
}


# --- 1. the tamper matrix ------------------------------------------------------------------


def test_untampered_log_verifies_and_names_its_checkpoint(trail: Trail) -> None:
    out = assert_ok(agentzt(trail.paths, "audit", "--verify"), EVENTS, EVENTS)
    assert "extends 2 signed checkpoint(s)" in out
    assert "2026-11-23T09:00:00Z" in out


@pytest.mark.parametrize("tamper", list(TAMPERS.values()), ids=list(TAMPERS))
def test_tamper_matrix(trail: Trail, tamper: Callable[[Trail], tuple[int, Path | None]]) -> None:
    seq, naming = tamper(trail)
    assert_broken(agentzt(trail.paths, "audit", "--verify"), seq, naming)


# --- 2. a checkpoint kept elsewhere ----------------------------------------------------------


def _roll_everything_back(t: Trail) -> None:
    for name in (t.log.name, t.local_checkpoint.name):
        shutil.copy2(t.older / name, t.log.parent / name)
    shutil.copy2(t.older / t.witness_checkpoint.name, t.witness_checkpoint)


def _roll_back_and_rekey(t: Trail) -> None:
    """Restore the older log and throw away the checkpoint key and every checkpoint, then
    let the gateway start on it: it signs the old log with a fresh key of its own."""
    shutil.copy2(t.older / t.log.name, t.log)
    for stale in (
        t.local_checkpoint,
        t.witness_checkpoint,
        t.vkey,
        t.paths.home / "gateway" / "checkpoint.key",
    ):
        stale.unlink()
    seed_checkpoint_key(t.paths)
    write_events(t.paths, Clock(at(10)), EVENTS_BEFORE + 1, 0)


@pytest.mark.parametrize(
    "attack", [_roll_everything_back, _roll_back_and_rekey], ids=["rollback", "rollback-rekey"]
)
def test_kept_checkpoint_catches_what_the_local_ones_cannot(
    trail: Trail, tmp_path: Path, attack: Callable[[Trail], None]
) -> None:
    kept = tmp_path / "offsite" / "kept.checkpoint"
    kept.parent.mkdir()
    shutil.copy2(trail.local_checkpoint, kept)
    assert_ok(
        agentzt_here(trail.paths, "audit", "--verify", "--checkpoint", str(kept)), EVENTS, EVENTS
    )

    attack(trail)

    if attack is _roll_everything_back:
        # Every checkpoint on the gateway's side is an older valid one, so nothing there
        # can show the rollback (after a re-key the old witness file might; not asserted).
        assert_ok(agentzt_here(trail.paths, "audit", "--verify"), EVENTS_BEFORE, EVENTS_BEFORE)
    # The copy kept elsewhere shows what happened.
    run = agentzt_here(trail.paths, "audit", "--verify", "--checkpoint", str(kept))
    assert_broken(run, EVENTS_BEFORE + 1 if attack is _roll_everything_back else None, kept)


def test_missing_kept_checkpoint_is_an_error_not_a_pass(trail: Trail, tmp_path: Path) -> None:
    gone = tmp_path / "nowhere.checkpoint"
    # A mistyped path is bad usage (the entry point prints it in one line, exit 2),
    # and never a pass.
    with pytest.raises(UsageError, match="no such file") as refused:
        agentzt_here(trail.paths, "audit", "--verify", "--checkpoint", str(gone))
    assert refused.value.exit_code == 2
    assert str(gone) in refused.value.detail


# --- 3. forged checkpoints -------------------------------------------------------------------


def _vkey_parts(vkey: Path) -> tuple[str, bytes, bytes]:
    """``(name, key hash, raw Ed25519 key)`` of a C2SP vkey, checked against the spec."""
    # A key name has no "+", but base64 may: only the first two "+" separate fields.
    name, hash_hex, encoded = vkey.read_text().strip().split("+", 2)
    blob = base64.b64decode(encoded, validate=True)
    assert len(blob) == 33 and blob[0] == 0x01, "0x01 names an Ed25519 key"
    key = blob[1:]
    key_hash = hashlib.sha256(name.encode() + b"\n" + b"\x01" + key).digest()[:4]
    assert key_hash.hex() == hash_hex
    return name, key_hash, key


def sign_note(private: ed25519.Ed25519PrivateKey, name: str, text: str, key_hash: bytes) -> bytes:
    """A C2SP signed note, made here and not by agentzt's signer."""
    signature = private.sign(text.encode())
    blob = base64.b64encode(key_hash + signature).decode()
    return f"{text}\n{EM_DASH} {name} {blob}\n".encode()


def _own_key_hash(name: str, private: ed25519.Ed25519PrivateKey) -> bytes:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + raw).digest()[:4]


def _real_key(t: Trail) -> ed25519.Ed25519PrivateKey:
    pem = (t.paths.home / "gateway" / "checkpoint.key").read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return private


def _body(t: Trail, origin: str) -> str:
    """A body that matches the log exactly: only its signature can be wrong."""
    head = base64.b64encode(bytes.fromhex(t.events()[-1]["hash"])).decode()
    return f"{origin}\n{EVENTS}\n{head}\ntime 2026-11-23T10:00:00Z\n"


def other_key(t: Trail) -> bytes:
    name, _, _ = _vkey_parts(t.vkey)
    forger = ed25519.Ed25519PrivateKey.generate()
    return sign_note(forger, name, _body(t, name), _own_key_hash(name, forger))


def other_key_posing_as_ours(t: Trail) -> bytes:
    name, key_hash, _ = _vkey_parts(t.vkey)
    forger = ed25519.Ed25519PrivateKey.generate()
    return sign_note(forger, name, _body(t, name), key_hash)


def flipped_signature_byte(t: Trail) -> bytes:
    text, _, signature_line = t.local_checkpoint.read_text().rpartition("\n\n")
    prefix, _, encoded = signature_line.strip().rpartition(" ")
    blob = bytearray(base64.b64decode(encoded))
    blob[4 + 17] ^= 0x01  # inside the signature, past the 4-byte key hash
    return f"{text}\n\n{prefix} {base64.b64encode(bytes(blob)).decode()}\n".encode()


def another_origin(t: Trail) -> bytes:
    # Signed with the gateway's real key, so only the origin line is wrong.
    name, key_hash, _ = _vkey_parts(t.vkey)
    return sign_note(_real_key(t), name, _body(t, "agentzt.audit/0123456789abcdef"), key_hash)


FORGERIES: dict[str, Callable[[Trail], bytes]] = {
    "other-key": other_key,
    "other-key-posing-as-ours": other_key_posing_as_ours,
    "flipped-signature-byte": flipped_signature_byte,
    "another-origin": another_origin,
}


def test_own_signer_agrees_with_the_gateway(trail: Trail) -> None:
    """The forgeries below are made by this file's signer; it must be a faithful one, or
    a rejected forgery would prove nothing. Ed25519 is deterministic, so re-signing the
    gateway's checkpoint text with its key gives the very same file."""
    name, key_hash, _ = _vkey_parts(trail.vkey)
    text = trail.local_checkpoint.read_text().partition("\n\n")[0] + "\n"
    assert sign_note(_real_key(trail), name, text, key_hash) == trail.local_checkpoint.read_bytes()


@pytest.mark.parametrize("place", ["log-dir", "witness", "kept"])
@pytest.mark.parametrize("forge", list(FORGERIES.values()), ids=list(FORGERIES))
def test_forged_checkpoint_fails_verify_naming_it(
    trail: Trail, tmp_path: Path, forge: Callable[[Trail], bytes], place: str
) -> None:
    note = forge(trail)
    extra: list[str] = []
    if place == "log-dir":
        target = trail.local_checkpoint
    elif place == "witness":
        target = trail.witness_checkpoint
    else:
        target = tmp_path / "kept.checkpoint"
        extra = ["--checkpoint", str(target)]
    target.write_bytes(note)
    line = assert_broken(agentzt_here(trail.paths, "audit", "--verify", *extra), None, target)
    assert "checkpoint" in line


# --- 4. an emptied or deleted log with checkpoints ------------------------------------------


def _empty_log(t: Trail) -> None:
    t.log.write_bytes(b"")


def _delete_log(t: Trail) -> None:
    t.log.unlink()


@pytest.mark.parametrize("damage", [_empty_log, _delete_log], ids=["emptied", "deleted"])
@pytest.mark.parametrize(
    "left", ["both", "log-dir-only", "witness-only", "witness-only-no-vkey", "kept-only"]
)
def test_emptied_or_deleted_log_with_checkpoints_is_never_ok(
    trail: Trail, tmp_path: Path, damage: Callable[[Trail], None], left: str
) -> None:
    kept = tmp_path / "kept.checkpoint"
    shutil.copy2(trail.local_checkpoint, kept)
    damage(trail)
    extra: list[str] = []
    if left in ("witness-only", "witness-only-no-vkey", "kept-only"):
        trail.local_checkpoint.unlink()
    if left in ("log-dir-only", "kept-only"):
        trail.witness_checkpoint.unlink()
    if left == "witness-only-no-vkey":
        # The published key is in the gateway's own home, as writable as the log: losing
        # it must not turn the witness's checkpoint into "no checkpoint found".
        trail.vkey.unlink()
    if left == "kept-only":
        extra = ["--checkpoint", str(kept)]
    assert_broken(agentzt_here(trail.paths, "audit", "--verify", *extra), None)


# --- 5. rotation ----------------------------------------------------------------------------

ROTATED_EVENTS = 60


@pytest.fixture
def rotated(paths: Paths) -> Trail:
    toml = paths.gateway_toml.read_text()
    smaller = toml.replace("max_file_bytes = 67108864", "max_file_bytes = 4096")
    assert smaller != toml
    paths.gateway_toml.write_text(smaller)
    seed_checkpoint_key(paths)
    write_events(paths, Clock(at(8)), 1, ROTATED_EVENTS, meta_pad=100)
    return Trail(paths, paths.home / "unused")


def _files(t: Trail) -> list[Path]:
    return [*archives(t.log), t.log]


def _events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _without_hash(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "hash"}


def test_rotation_keeps_one_chain_across_files(rotated: Trail) -> None:
    files = _files(rotated)
    assert len(files) >= 4, files
    for earlier, later in itertools.pairwise(files):
        before, after = _events_of(earlier), _events_of(later)
        assert earlier.name == f"gateway-audit-{before[-1]['seq']:012d}.jsonl"
        first = after[0]
        # Each new file begins by naming the file and head it continues.
        assert first["action"] == "audit.rotated"
        assert first["seq"] == before[-1]["seq"] + 1
        assert first["meta"]["previous_file"] == earlier.name
        assert first["meta"]["previous_seq"] == before[-1]["seq"]
        assert first["meta"]["previous_head"] == before[-1]["hash"]
        assert first["hash"] == chain_hash(before[-1]["hash"], _without_hash(first))
        assert earlier.stat().st_size >= 4096
    total = _events_of(files[-1])[-1]["seq"]
    assert total == ROTATED_EVENTS + len(files) - 1
    out = assert_ok(agentzt_here(rotated.paths, "audit", "--verify"), total, total)
    assert f"{total} events in {len(files)} files" in out


def test_request_id_finds_events_in_archives(rotated: Trail) -> None:
    oldest = archives(rotated.log)[0]
    wanted = [e for e in _events_of(oldest) if e["request_id"] == "req-0002"]
    assert [e["action"] for e in wanted] == ["model.call.authorized", "model.call"]
    run = agentzt_here(rotated.paths, "audit", "--request-id", "req-0002", "--json")
    assert run.code == 0, run
    assert [json.loads(line) for line in run.out.splitlines()] == wanted


def _edit_in_middle_archive(t: Trail) -> int:
    middle = archives(t.log)[1]
    lines = middle.read_bytes().splitlines(keepends=True)
    lines[2] = _flip_decision(lines[2])
    middle.write_bytes(b"".join(lines))
    seq: int = json.loads(lines[2])["seq"]
    return seq


def _delete_archive(which: int) -> Callable[[Trail], int]:
    def delete(t: Trail) -> int:
        gone = archives(t.log)[which]
        first_seq: int = _events_of(gone)[0]["seq"]
        gone.unlink()
        return first_seq

    return delete


@pytest.mark.parametrize(
    "tamper",
    [_edit_in_middle_archive, _delete_archive(0), _delete_archive(1), _delete_archive(-1)],
    ids=["edit-archive-line", "delete-first-archive", "delete-middle-archive", "delete-newest"],
)
def test_tampered_archives_are_detected(rotated: Trail, tamper: Callable[[Trail], int]) -> None:
    seq = tamper(rotated)
    assert_broken(agentzt_here(rotated.paths, "audit", "--verify"), seq)


# --- 6. the gateway refuses to continue a log behind its checkpoint -------------------------


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (truncate_last_n, ("holds 9 events", "covers 12", "truncated", "rolled back")),
        (empty, ("holds 0 events", "covers 12", "truncated", "emptied")),
        (rollback, ("holds 6 events", "covers 12", "rolled back")),
        (delete_active, ("holds 0 events", "covers 12", "truncated")),
    ],
    ids=["truncated", "emptied", "rolled-back", "deleted"],
)
def test_gateway_refuses_a_log_behind_its_checkpoint(
    trail: Trail, tamper: Callable[[Trail], tuple[int, Path | None]], words: tuple[str, ...]
) -> None:
    tamper(trail)
    before = trail.log.read_bytes() if trail.log.exists() else b""
    with pytest.raises(AuditWriteError) as refused:
        Gateway(trail.paths, public_url="http://127.0.0.1:9")
    message = refused.value.detail
    assert "\n" not in message
    for word in words:
        assert word in message, message
    # Refusing writes nothing: the evidence stays as it was found.
    assert trail.log.read_bytes() == before


def test_gateway_refuses_a_log_rewritten_at_the_checkpoint_size(trail: Trail) -> None:
    recompute(trail)
    before = trail.log.read_bytes()
    settings = load_gateway_settings(trail.paths.gateway_toml).audit
    with pytest.raises(AuditWriteError) as refused:
        open_audit_trail(trail.paths, settings, Clock(at(11)))
    message = refused.value.detail
    assert "\n" not in message
    assert f"event at seq {EVENTS} is not the one checkpoint" in message
    assert "rewritten" in message
    assert trail.log.read_bytes() == before


def test_gateway_continues_a_log_that_extends_its_checkpoint(trail: Trail) -> None:
    write_events(trail.paths, Clock(at(11)), EVENTS + 1, 2)
    assert_ok(agentzt_here(trail.paths, "audit", "--verify"), EVENTS + 2, EVENTS + 2)


# --- 7. the checkpoint format, checked against C2SP ----------------------------------------


def test_checkpoint_is_a_c2sp_signed_tlog_checkpoint(trail: Trail) -> None:
    name, key_hash, key = _vkey_parts(trail.vkey)
    raw = trail.local_checkpoint.read_bytes()
    text = raw.decode("utf-8")
    lines = text.split("\n")
    # Four body lines, a blank line, one signature line, and the final newline.
    assert len(lines) == 7, text
    origin, size, head, when, blank, signature_line, end = lines
    assert (blank, end) == ("", "")
    assert origin == name
    assert re.fullmatch(r"agentzt\.audit/[0-9a-f]{16}", origin)
    assert re.fullmatch(r"0|[1-9][0-9]*", size) and int(size) == EVENTS
    head_bytes = base64.b64decode(head, validate=True)
    assert len(head_bytes) == 32
    assert base64.b64encode(head_bytes).decode() == head, "canonical (padded) base64"
    assert head_bytes.hex() == trail.events()[-1]["hash"]
    assert when == "time 2026-11-23T09:00:00Z"

    prefix = f"{EM_DASH} {name} "
    assert signature_line.startswith(prefix)
    blob = base64.b64decode(signature_line[len(prefix) :], validate=True)
    assert len(blob) == 4 + 64
    assert blob[:4] == key_hash
    body = "\n".join(lines[:4]) + "\n"
    # The signature covers the note text, final newline included; raises if it does not.
    ed25519.Ed25519PublicKey.from_public_bytes(key).verify(blob[4:], body.encode())

    # The witness holds the same signed note, under the origin's file name.
    witness = trail.witness_checkpoint
    assert witness.name == origin.replace("/", "_") + ".checkpoint"
    assert witness.read_bytes() == raw


def test_vkey_with_a_plus_in_its_key(paths: Paths) -> None:
    """Base64 uses "+", so a C2SP vkey splits into its three fields at the first two "+"
    only; a key whose base64 holds one must verify like any other."""
    seed_checkpoint_key(paths, plus_in_vkey=True)
    write_events(paths, Clock(at(8)), 1, 4)
    vkey = paths.home / "gateway" / "checkpoint.vkey"
    assert vkey.read_text().count("+") > 2
    _vkey_parts(vkey)
    assert_ok(agentzt_here(paths, "audit", "--verify"), 4, 4)
