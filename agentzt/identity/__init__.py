"""Identity: Ed25519 keys, the agent registry, and the token formats.

The only home of pyjwt and pynacl in the package.
"""

from agentzt.identity.dpop import ProofVerifier, Prover
from agentzt.identity.elevation import ElevationIssuer, ElevationVerifier, Grant, GrantUses
from agentzt.identity.keys import (
    SigningKey,
    VerifyKey,
    load_or_create_signing_key,
    read_private_key,
)
from agentzt.identity.ledger import Ledger, TokenRow
from agentzt.identity.operator import OperatorCredential
from agentzt.identity.registry import AgentRecord, Registry, enroll, load_registry
from agentzt.identity.replay import ReplayCache
from agentzt.identity.tokens import (
    CLIENT_ASSERTION_TYPE,
    TASK_ID,
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    AssertionVerifier,
    make_assertion,
    new_jti,
)

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "TASK_ID",
    "AccessClaims",
    "AccessTokenIssuer",
    "AccessTokenVerifier",
    "AgentRecord",
    "AssertionVerifier",
    "ElevationIssuer",
    "ElevationVerifier",
    "Grant",
    "GrantUses",
    "Ledger",
    "OperatorCredential",
    "ProofVerifier",
    "Prover",
    "Registry",
    "ReplayCache",
    "SigningKey",
    "TokenRow",
    "VerifyKey",
    "enroll",
    "load_or_create_signing_key",
    "load_registry",
    "make_assertion",
    "new_jti",
    "read_private_key",
]
