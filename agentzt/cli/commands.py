"""Importing this module registers every command on the app."""

from agentzt.cli import (
    audit_cmd,
    bench_cmd,
    demo_cmd,
    elevate_cmd,
    identity_cmds,
    serve_cmds,
    tls_cmd,
    tokens_cmd,
)

__all__ = [
    "audit_cmd",
    "bench_cmd",
    "demo_cmd",
    "elevate_cmd",
    "identity_cmds",
    "serve_cmds",
    "tls_cmd",
    "tokens_cmd",
]
