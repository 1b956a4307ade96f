"""The gateway's audit trail, opened at start-up: log, writer, checkpoints, HMAC key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agentzt.audit import (
    AuditLog,
    AuditWriter,
    ChainReport,
    Checkpoint,
    Correlator,
    Seal,
    checkpoint_files,
    read_checkpoint,
    verify_chain,
)
from agentzt.audit.checkpoint import LOG_DIR_NAME, CheckpointError
from agentzt.audit.correlate import load_or_create_key
from agentzt.audit.segments import hash_at
from agentzt.config import AuditSettings, Paths
from agentzt.errors import AuditChainError, AuditWriteError, ConfigError
from agentzt.identity.signed_note import (
    load_or_create_note_signer,
    read_note_verifier,
    vkey_path,
)


def open_audit_trail(
    paths: Paths, settings: AuditSettings, clock: Callable[[], float]
) -> tuple[AuditWriter, Correlator]:
    """Open the log and refuse to start on one its newest checkpoint shows was rewritten.

    Raises ``AuditWriteError`` with one line saying what is wrong.
    """
    witness = paths.witness_dir(settings.witness_dir)
    audit_log = AuditLog(paths.audit_log, clock=clock, max_file_bytes=settings.max_file_bytes)
    try:
        if not paths.checkpoint_key.exists() and audit_log.seq > 0 and _witnessed(witness):
            # A deleted key would otherwise let a rewritten log start afresh under a new
            # one, its old checkpoints ignored as another log's. Checked before a key is
            # made, so the refusal holds on the next start too.
            raise CheckpointError(
                f"the checkpoint key {paths.checkpoint_key} is missing, but the log holds "
                f"{audit_log.seq} events and {witness} holds checkpoints: restore the key, "
                "or move the old checkpoints aside after `agentzt audit --verify`"
            )
        signer = load_or_create_note_signer(paths.checkpoint_key)
        places = checkpoint_files(paths.audit_log, witness, signer.verifier.name)
        seal = Seal(signer, signer.verifier, places, clock)
        seal.check_start(audit_log.seq, audit_log.head_hash, lambda n: hash_at(paths.audit_log, n))
    except CheckpointError as exc:
        audit_log.close()
        raise AuditWriteError(str(exc)) from exc
    except BaseException:
        audit_log.close()
        raise
    writer = AuditWriter(
        audit_log,
        fsync=settings.fsync,
        fsync_interval=settings.fsync_interval_ms / 1000,
        seal=seal,
        checkpoint_every_events=settings.checkpoint_every_events,
        checkpoint_every_seconds=settings.checkpoint_every_seconds,
    )
    return writer, Correlator(load_or_create_key(paths.audit_hmac_key))


def trail_checkpoints(
    paths: Paths, settings: AuditSettings, extra: list[Path] | None = None
) -> list[tuple[str, Checkpoint]]:
    """Every checkpoint of the gateway's log that can be found: next to the log, in the
    witness directory, and in ``extra`` files kept elsewhere, each checked against the
    published checkpoint key.

    Raises ``AuditChainError`` (seq 0) for a checkpoint that is missing (an ``extra``
    one), unreadable, forged or for another log: that is evidence, not noise.
    """
    extra = extra or []
    for path in extra:
        if not path.is_file():
            raise AuditChainError(f"checkpoint {path} does not exist", seq=0)
    published = vkey_path(paths.checkpoint_key)
    local = paths.audit_log.parent / LOG_DIR_NAME
    witness = paths.witness_dir(settings.witness_dir)
    try:
        opener = read_note_verifier(published)
    except ConfigError as exc:
        # Without the key no checkpoint can be checked; if any exists, that is not a pass.
        if published.exists() or local.exists() or extra or _witnessed(witness):
            raise AuditChainError(f"cannot check checkpoints: {exc.detail}", seq=0) from exc
        return []
    places = [*checkpoint_files(paths.audit_log, witness, opener.name), *extra]
    found: list[tuple[str, Checkpoint]] = []
    for path in places:
        try:
            checkpoint = read_checkpoint(path, opener, opener.name)
        except CheckpointError as exc:
            raise AuditChainError(f"checkpoint {path}: {exc}", seq=0) from exc
        if checkpoint is not None:
            found.append((str(path), checkpoint))
    return found


def verify_trail(
    paths: Paths, settings: AuditSettings, extra: list[Path] | None = None
) -> ChainReport:
    """``verify_chain`` of the gateway's log against all its checkpoints."""
    return verify_chain(paths.audit_log, checkpoints=trail_checkpoints(paths, settings, extra))


def _witnessed(witness: Path | None) -> bool:
    """Whether the witness directory holds any checkpoint, of whichever log."""
    if witness is None:
        return False
    try:
        return any(p.suffix == ".checkpoint" for p in witness.iterdir())
    except OSError:
        return False
