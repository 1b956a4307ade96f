"""Sender constraints: what a token is bound to, checked at issuance and on every call.

A token may be bound to the client certificate it was issued over (RFC 8705), to the
agent key whose DPoP proofs must accompany it (RFC 9449), and to the task it was issued
for. Each binding is set at the token endpoint and enforced on every call; none can be
dropped by presenting the token some other way.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from agentzt.errors import AuthenticationError, InvalidDpopProofError, InvalidRequestError
from agentzt.gateway.call import Call
from agentzt.gateway.identifiers import credential_shaped
from agentzt.identity import TASK_ID, AccessClaims, ProofVerifier
from agentzt.identity.registry import AgentRecord
from agentzt.tls.peer import PEER_SCOPE_KEY, PeerCert
from agentzt.wire import TASK_HEADER

DPOP_HEADER = "dpop"


class SenderChecks:
    def __init__(
        self, *, issuer: str, token_endpoint: str, mtls: bool, dpop: str, proofs: ProofVerifier
    ) -> None:
        self._issuer = issuer
        self._token_endpoint = token_endpoint
        self.mtls = mtls
        self.dpop = dpop
        self._proofs = proofs

    # --- at the token endpoint ------------------------------------------------------------

    def certificate(self, request: Request, call: Call, record: AgentRecord) -> str | None:
        """The thumbprint to bind a new token to.

        A connection with a client certificate always gets a bound token; the certificate
        must name the agent the assertion proved and be the one registered for it, so
        neither another agent's certificate nor a superseded one can carry its tokens.
        """
        peer = peer_of(request)
        if peer is None:
            if self.mtls:
                raise AuthenticationError(
                    "mutual TLS is on but the connection has no client certificate"
                )
            return None
        if peer.agent_id != record.agent_id or not _same(record.certificate, peer.thumbprint):
            call.meta["peer"] = {"agent": peer.agent_id, "x5t#S256": peer.thumbprint}
            raise AuthenticationError(
                f"the client certificate ({peer.common_name!r}) is not the one registered for "
                f"agent {record.agent_id}",
                message="the client certificate is not the authenticated agent's registered one",
            )
        return peer.thumbprint

    def key(self, request: Request, record: AgentRecord) -> str | None:
        """The key thumbprint (``jkt``) to bind a new token to, from the request's DPoP
        proof, which the agent's registered key must have signed."""
        if self.dpop == "off":
            return None
        proofs = request.headers.getlist(DPOP_HEADER)
        if not proofs:
            if self.dpop == "required":
                raise InvalidDpopProofError(
                    "no DPoP proof with the token request (dpop = required)",
                    message="a DPoP proof is required",
                )
            return None
        if len(proofs) != 1:
            raise InvalidDpopProofError("more than one DPoP proof")
        self._proofs.verify(
            proofs[0], key=record.public_key, method="POST", url=self._token_endpoint
        )
        return record.public_key.kid

    # --- on every call --------------------------------------------------------------------

    def check(
        self,
        request: Request,
        call: Call,
        scheme: str,
        token: str,
        claims: AccessClaims,
        record: AgentRecord,
    ) -> None:
        """Step 0 on every call: certificate, key and task bindings of ``claims``."""
        self._check_channel(request, call, claims, record)
        self._check_proof(request, scheme, token, claims, record)
        self._check_task(request, claims)

    def _check_channel(
        self, request: Request, call: Call, claims: AccessClaims, record: AgentRecord
    ) -> None:
        """A certificate-bound token (RFC 8705) is good only on a connection made with that
        very certificate, not merely one with the same name, and only while that
        certificate is still the agent's registered one."""
        peer = peer_of(request)
        if claims.x5t is None and peer is None and not self.mtls:
            return
        reason = None
        if peer is None:
            reason = "certificate-bound token over a connection without one"
        elif claims.x5t is None:
            reason = "the token is not certificate-bound"
        elif not _same(claims.x5t, peer.thumbprint):
            reason = "the token is bound to another client certificate"
        elif peer.agent_id != claims.agent_id:
            reason = "the client certificate names another agent"
        elif not _same(record.certificate, peer.thumbprint):
            reason = "the client certificate is no longer the agent's registered one"
        if reason is not None:
            if peer is not None:
                call.meta["peer"] = {"agent": peer.agent_id, "x5t#S256": peer.thumbprint}
            raise AuthenticationError(
                reason,
                message="channel binding mismatch: the token is not bound to this "
                "connection's certificate",
            )

    def _check_proof(
        self, request: Request, scheme: str, token: str, claims: AccessClaims, record: AgentRecord
    ) -> None:
        """A key-bound token (RFC 9449) needs the ``DPoP`` scheme and a fresh proof by that
        key for this very request; it never passes as a bearer token, whatever the mode."""
        if claims.jkt is None:
            if scheme == "dpop":
                raise AuthenticationError("DPoP scheme with a token that is not key-bound")
            if self.dpop == "required":
                raise InvalidDpopProofError(
                    "bearer token refused (dpop = required)",
                    message="a DPoP-bound token and proof are required",
                )
            return
        if scheme != "dpop":
            raise InvalidDpopProofError(
                "DPoP-bound token presented as a bearer token",
                message="this token needs the DPoP scheme and a DPoP proof",
            )
        proofs = request.headers.getlist(DPOP_HEADER)
        if len(proofs) != 1:
            raise InvalidDpopProofError(
                "no DPoP proof" if not proofs else "more than one DPoP proof",
                message="exactly one DPoP proof is required",
            )
        self._proofs.verify(
            proofs[0],
            key=record.public_key,
            method=request.method,
            url=self._url(request),
            access_token=token,
        )

    def _url(self, request: Request) -> str:
        """This request's URL as the agent names it: the issuer plus the path as sent."""
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
        return self._issuer + path.split("?", 1)[0]

    @staticmethod
    def _check_task(request: Request, claims: AccessClaims) -> None:
        """A task token serves only calls naming its task; a session token only calls
        naming none."""
        named = request.headers.getlist(TASK_HEADER)
        if len(named) > 1:
            raise InvalidRequestError("more than one x-agentzt-task-id header")
        task = named[0].strip() if named else None
        if task is not None and not TASK_ID.fullmatch(task):
            raise InvalidRequestError(
                "x-agentzt-task-id is not a task id",
                message="x-agentzt-task-id must be 1-128 letters, digits, '.', '_', ':' or '-'",
            )
        if task is not None and credential_shaped(task):
            raise InvalidRequestError(
                "x-agentzt-task-id looks like a credential",
                message="x-agentzt-task-id looks like a credential; task ids are logged",
            )
        if task != claims.task:
            raise AuthenticationError(
                f"task mismatch: the call names task {task!r}, the token is for {claims.task!r}",
                message="task mismatch: the token was issued for another task",
            )


def _same(expected: str | None, presented: str) -> bool:
    return expected is not None and hmac.compare_digest(expected, presented)


def peer_of(request: Request) -> PeerCert | None:
    """The verified client certificate of the connection this request came on, if any."""
    peer = request.scope.get("extensions", {}).get(PEER_SCOPE_KEY)
    return peer if isinstance(peer, PeerCert) else None
