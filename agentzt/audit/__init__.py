"""The tamper-evident audit log: every gateway decision, allow or deny, as evidence.

Events are JSON Lines, one per line, each carrying ``hash = sha256_hex(prev_hash + "\\n" +
canonical_json(event without hash))`` so that editing, deleting, reordering or inserting
any line breaks the chain from there on (PROTOCOL.md, "Audit log").

- ``AuditLog`` appends events; one gateway process holds the log at a time.
- ``verify_chain`` checks the whole chain and raises ``AuditChainError`` at the first bad
  ``seq``.
- ``read_events`` reads events back, filtered, for display.
- ``canonical_json``, ``chain_hash`` and ``GENESIS_HASH`` define the hashed bytes, for
  anyone who wants to check the chain independently.
"""

from agentzt.audit.canonical import GENESIS_HASH, canonical_json, chain_hash
from agentzt.audit.log import AuditLog
from agentzt.audit.query import read_events
from agentzt.audit.verify import ChainReport, verify_chain

__all__ = [
    "GENESIS_HASH",
    "AuditLog",
    "ChainReport",
    "canonical_json",
    "chain_hash",
    "read_events",
    "verify_chain",
]
