"""The tamper-evident audit log: every gateway decision, allow or deny, as evidence.

Events are JSON Lines, one per line, each carrying ``hash = sha256_hex(prev_hash + "\\n" +
canonical_json(event without hash))`` so that editing, deleting, reordering or inserting
any line breaks the chain from there on (PROTOCOL.md, "Audit log"). Signed checkpoints
pin the chain's size and head, so that cutting, emptying, rolling back or rewriting it
shows too.

- ``AuditLog`` appends events to the file; one gateway process holds the log at a time.
- ``AuditWriter`` writes them for the gateway's event loop, in batches (group commit),
  leaving every wait on the disk to a thread of its own.
- ``Seal`` signs checkpoints and checks, at start-up, that the log extends them.
- ``verify_chain`` checks the whole chain and its checkpoints and raises
  ``AuditChainError`` at the first bad ``seq``.
- ``read_events`` reads events back, filtered, for display.
- ``Correlator`` keys the HMACs that stand in for values the log must not hold.
- ``canonical_json``, ``chain_hash`` and ``GENESIS_HASH`` define the hashed bytes, for
  anyone who wants to check the chain independently.
"""

from agentzt.audit.canonical import GENESIS_HASH, canonical_json, chain_hash
from agentzt.audit.checkpoint import Checkpoint, Seal, checkpoint_files, read_checkpoint
from agentzt.audit.correlate import Correlator
from agentzt.audit.log import AuditLog, Draft
from agentzt.audit.query import read_events
from agentzt.audit.verify import ChainReport, verify_chain
from agentzt.audit.writer import AuditWriter

__all__ = [
    "GENESIS_HASH",
    "AuditLog",
    "AuditWriter",
    "ChainReport",
    "Checkpoint",
    "Correlator",
    "Draft",
    "Seal",
    "canonical_json",
    "chain_hash",
    "checkpoint_files",
    "read_checkpoint",
    "read_events",
    "verify_chain",
]
