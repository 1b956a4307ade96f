"""The identity registry, ``agents.toml``: agent id → public key, role, status."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from agentzt.config import Table, read_toml
from agentzt.errors import ConfigError, EnrollmentError, UnknownAgentError, UsageError
from agentzt.files import write_atomically
from agentzt.identity.keys import SigningKey, VerifyKey, write_private_key

AGENT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
STATUSES = ("active", "disabled")


@dataclass(frozen=True, slots=True)
class AgentRecord:
    agent_id: str
    public_key: VerifyKey
    role: str
    status: str
    description: str
    created_at: str
    # The x5t#S256 thumbprint of the agent's current mTLS client certificate: the only
    # certificate the gateway accepts for it, so renewing one retires the old at once.
    certificate: str | None = None

    def to_toml(self) -> dict[str, str]:
        entry = {
            "public_key": self.public_key.b64url,
            "role": self.role,
            "status": self.status,
            "description": self.description,
            "created_at": self.created_at,
        }
        if self.certificate is not None:
            entry["certificate"] = self.certificate
        return entry


def check_agent_id(agent_id: str) -> None:
    if not AGENT_ID.fullmatch(agent_id):
        raise UsageError(
            f"agent id {agent_id[:64]!r} is malformed: use 1-63 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )


def load_registry(path: Path) -> dict[str, AgentRecord]:
    """Read and validate every entry; a bad entry stops the load with its key named."""
    root = Table(read_toml(path), file=path)
    agents_t = root.table("agents")
    records: dict[str, AgentRecord] = {}
    for agent_id in agents_t.names():
        if not AGENT_ID.fullmatch(agent_id):
            raise agents_t.fail(agent_id, "is not a valid agent id")
        t = agents_t.table(agent_id)
        encoded = t.string("public_key", "")
        try:
            key = VerifyKey.from_b64url(encoded)
        except ValueError as exc:
            raise t.fail("public_key", f"is not a valid Ed25519 public key ({exc})") from exc
        role = t.string("role", "")
        if not role:
            raise t.fail("role", "is missing")
        records[agent_id] = AgentRecord(
            agent_id=agent_id,
            public_key=key,
            role=role,
            status=t.string("status", "active", choices=STATUSES),
            description=t.string("description", ""),
            created_at=t.string("created_at", ""),
            certificate=t.optional_string("certificate"),
        )
        t.finish()
    agents_t.finish()
    root.finish()
    return records


class Registry:
    """The registry as the gateway sees it: re-read when the file changes on disk.

    Enrollment while the gateway runs takes effect at the agent's next token request.
    A file that becomes invalid denies every token request (fail closed) until fixed.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._records: dict[str, AgentRecord] = {}
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = self._path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._records = load_registry(self._path)
            self._stamp = stamp

    def active(self, agent_id: str) -> AgentRecord:
        """The active record for ``agent_id``; UnknownAgentError for absent or disabled."""
        try:
            self._refresh()
        except ConfigError:
            self._stamp = None  # retry the read next time; deny now
            raise
        record = self._records.get(agent_id)
        # IMPORTANT: absent and disabled raise the same error with the same message,
        # so a caller cannot learn which agent ids exist.
        if record is None or record.status != "active":
            raise UnknownAgentError("unknown or disabled agent")
        return record


def enroll(
    *,
    registry_path: Path,
    key_path: Path,
    agent_id: str,
    role: str,
    known_roles: Mapping[str, object],
    description: str = "",
    force: bool = False,
    certificate: str | None = None,
) -> AgentRecord:
    """Create a keypair and a registry entry for ``agent_id`` (with ``certificate``, the
    thumbprint of its mTLS client certificate).

    Every check runs before anything is written, and the key and registry are each
    replaced atomically, so a refused or failed enrollment leaves both as they were.
    """
    check_agent_id(agent_id)
    if role not in known_roles:
        known = ", ".join(sorted(known_roles)) or "none: policy.toml defines no roles"
        raise UsageError(f"unknown role {role[:64]!r}; known roles: {known}")
    records = load_registry(registry_path)
    if agent_id in records and not force:
        raise EnrollmentError(f"agent {agent_id!r} is already enrolled; pass --force to replace it")
    if key_path.exists() and not force:
        raise EnrollmentError(f"{key_path} already exists; pass --force to replace it")

    key = SigningKey.generate()
    record = AgentRecord(
        agent_id=agent_id,
        public_key=key.public,
        role=role,
        status="active",
        description=description,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        certificate=certificate,
    )
    registry_bytes = _dump({**records, agent_id: record})

    staged = key_path.with_name(f".{key_path.name}.new")
    staged.unlink(missing_ok=True)
    write_private_key(staged, key)
    try:
        write_atomically(registry_path, registry_bytes, 0o644)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    staged.replace(key_path)
    return record


def record_certificate(registry_path: Path, agent_id: str, certificate: str) -> AgentRecord:
    """Make ``certificate`` (an x5t#S256 thumbprint) the agent's one accepted certificate."""
    records = load_registry(registry_path)
    if agent_id not in records:
        raise UsageError(f"agent {agent_id!r} is not enrolled; run 'agentzt enroll' first")
    record = replace(records[agent_id], certificate=certificate)
    write_atomically(registry_path, _dump({**records, agent_id: record}), 0o644)
    return record


def _dump(records: Mapping[str, AgentRecord]) -> bytes:
    document = {"agents": {aid: r.to_toml() for aid, r in records.items()}}
    return tomli_w.dumps(document).encode("utf-8")
