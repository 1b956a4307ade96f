"""Microbenchmarks of the hot path's parts, with the real classes on real files.

- ``decision``: what authorizing a call costs once the token is verified: the registry
  lookup (the gateway re-checks the agent on every call) and the policy decision, at 10
  and 1,000 roles and 10 and 100,000 enrolled agents.
- ``token``: access-token verification, the first time (signature) and then (cached
  claims, keyed by the exact token string).
- ``audit``: appending events through the writer, as the gateway does, with
  concurrent waiters (group commit), in each fsync mode.

Each figure is a per-call time in microseconds, the median over batches.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentzt.audit import AuditLog, AuditWriter, Draft
from agentzt.identity import AccessTokenIssuer, AccessTokenVerifier, Registry, SigningKey
from agentzt.policy import DecisionRequest, Resource, decide, load_policy


def _per_call_us(fn: Callable[[], object], calls: int = 20_000, batch: int = 500) -> float:
    """Median over batches of the mean per-call time, in microseconds."""
    times: list[float] = []
    for _ in range(max(1, calls // batch)):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(times)


def _policy_file(directory: Path, roles: int) -> Path:
    path = directory / f"policy-{roles}.toml"
    path.write_text(
        "".join(
            f'[roles.role-{i}]\nmodels = ["claude-sonnet-4-6", "model-{i}"]\n'
            f'tools = ["kb.search", "tool-{i}"]\n'
            for i in range(roles)
        )
    )
    return path


def _registry_file(directory: Path, agents: int, roles: int) -> Path:
    key = base64.urlsafe_b64encode(SigningKey.generate().public.raw).rstrip(b"=").decode()
    path = directory / f"agents-{agents}.toml"
    path.write_text(
        "".join(
            f'[agents.agent-{i}]\npublic_key = "{key}"\nrole = "role-{i % roles}"\n'
            f'status = "active"\n'
            for i in range(agents)
        )
    )
    return path


def decision(directory: Path, roles: int, agents: int) -> float:
    policy = load_policy(_policy_file(directory, roles))
    registry = Registry(_registry_file(directory, agents, roles))
    scope = frozenset({"model:claude-sonnet-4-6", "tool:kb.search"})
    resource = Resource("model", "claude-sonnet-4-6")
    picks = [f"agent-{(i * 7919) % agents}" for i in range(1000)]
    position = 0

    def one() -> None:
        nonlocal position
        agent_id = picks[position]
        position = (position + 1) % len(picks)
        record = registry.active(agent_id)
        if not decide(policy, DecisionRequest(agent_id, record.role, resource, scope)).allowed:
            raise AssertionError("the benchmark's decision should allow")

    return _per_call_us(one)


def token_verification() -> dict[str, float]:
    key = SigningKey.generate()
    issuer = AccessTokenIssuer(key, issuer="http://127.0.0.1:1", ttl=300, clock=time.time)
    tokens = [issuer.issue(f"agent-{i}", "role", ["model:m"])[0] for i in range(2000)]
    cold = AccessTokenVerifier(
        key.public, issuer="http://127.0.0.1:1", max_ttl=300, clock=time.time
    )
    queue = iter(tokens)
    first = _per_call_us(lambda: cold.verify(next(queue)), calls=2000, batch=100)
    warm = AccessTokenVerifier(
        key.public, issuer="http://127.0.0.1:1", max_ttl=300, clock=time.time
    )
    token = tokens[0]
    warm.verify(token)
    return {"first_us": first, "cached_us": _per_call_us(lambda: warm.verify(token))}


def sample_draft(i: int) -> Draft:
    """The ``i``-th of a run of typical allowed model calls, for audit benchmarks."""
    return Draft(
        request_id=f"req_{i:032x}",
        agent_id="bench-agent",
        role="analyst",
        action="model.call",
        resource="model:claude-sonnet-4-6",
        decision="allow",
        reason="model:claude-sonnet-4-6 is allowed for role analyst",
        status=200,
        latency_ms=6.5,
        meta={"jti": f"{i:032x}", "usage": {"input_tokens": 12, "output_tokens": 40}},
    )


def audit_append(
    directory: Path, fsync: str, waiters: int = 8, events: int = 4000
) -> dict[str, Any]:
    """Events/s and the latency a request waits for its event, ``waiters`` at a time."""
    writer = AuditWriter(AuditLog(directory / f"audit-{fsync}.jsonl"), fsync=fsync)
    latencies: list[float] = []

    async def one_waiter(start: int) -> None:
        for i in range(start, events, waiters):
            began = time.perf_counter()
            await writer.record(sample_draft(i))
            latencies.append((time.perf_counter() - began) * 1e6)

    async def run() -> float:
        began = time.perf_counter()
        await asyncio.gather(*(one_waiter(w) for w in range(waiters)))
        return time.perf_counter() - began

    try:
        elapsed = asyncio.run(run())
    finally:
        writer.close()
    latencies.sort()
    return {
        "events_per_s": round(events / elapsed),
        "p50_us": round(latencies[len(latencies) // 2], 1),
        "p99_us": round(latencies[int(len(latencies) * 0.99)], 1),
    }


def run_all() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agentzt-micro-") as tmp:
        directory = Path(tmp)
        decisions = {
            f"{roles} roles, {agents} agents": round(decision(directory, roles, agents), 2)
            for roles, agents in ((10, 10), (10, 100_000), (1000, 10), (1000, 100_000))
        }
        audit = {mode: audit_append(directory, mode) for mode in ("always", "batch", "never")}
    tokens = {k: round(v, 2) for k, v in token_verification().items()}
    return {"decision_us": decisions, "token_verification": tokens, "audit_append": audit}
