"""Identity: Ed25519 keys, the agent registry, and the token formats.

The only home of pyjwt and pynacl in the package.
"""

from agentzt.identity.elevation import ElevationIssuer, ElevationVerifier, Grant, GrantUses
from agentzt.identity.keys import (
    SigningKey,
    VerifyKey,
    load_or_create_signing_key,
    read_private_key,
)
from agentzt.identity.registry import AgentRecord, Registry, enroll, load_registry
from agentzt.identity.replay import ReplayCache
from agentzt.identity.tokens import (
    CLIENT_ASSERTION_TYPE,
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    AssertionVerifier,
    make_assertion,
)

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "AccessClaims",
    "AccessTokenIssuer",
    "AccessTokenVerifier",
    "AgentRecord",
    "AssertionVerifier",
    "ElevationIssuer",
    "ElevationVerifier",
    "Grant",
    "GrantUses",
    "Registry",
    "ReplayCache",
    "SigningKey",
    "VerifyKey",
    "enroll",
    "load_or_create_signing_key",
    "load_registry",
    "make_assertion",
    "read_private_key",
]
