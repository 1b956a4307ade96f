"""The one error tree of agentzt.

Every failure the package raises on purpose is an ``AgentztError``. Each class knows the
HTTP status and Anthropic ``error.type`` the gateway answers with, and the exit code the
CLI ends with. ``message`` is a fixed phrase safe to show anyone: it never echoes
attacker-supplied data or secrets. ``detail`` is for the audit log and the operator.

    AgentztError                      500 api_error              exit 1
    ├── ConfigError                   (start-up only)            exit 2
    ├── UsageError                    (CLI only)                 exit 2
    ├── EnrollmentError               (CLI only)                 exit 1
    ├── AuthenticationError           401 authentication_error
    │   ├── TokenError                    a token failed one check
    │   │   ├── MalformedTokenError           not a compact JWS we accept
    │   │   ├── BadAlgorithmError             alg is not EdDSA, or typ is wrong
    │   │   ├── InvalidSignatureError         signature does not verify
    │   │   ├── MissingClaimError             a required claim is absent or mistyped
    │   │   ├── ExpiredTokenError             exp is in the past
    │   │   ├── ImmatureTokenError            iat/nbf is in the future
    │   │   ├── LifetimeTooLongError          exp - iat over the maximum
    │   │   ├── InvalidIssuerError            iss is not the one expected
    │   │   ├── InvalidAudienceError          aud is not exactly the one expected
    │   │   ├── ReplayedTokenError            jti already seen
    │   │   └── RevokedTokenError             revoked, or not in the issuance ledger
    │   ├── InvalidDpopProofError         DPoP proof missing or failing a check
    │   └── UnknownAgentError             no active identity for the subject
    ├── PermissionDeniedError         403 permission_error
    │   └── GuardrailBlockedError         403 guardrail_blocked
    ├── InvalidRequestError           400 invalid_request_error
    │   ├── UnsupportedGrantTypeError     token endpoint: not client_credentials
    │   ├── InvalidScopeError             token endpoint: scope outside the role
    │   ├── TaskEndedError                token endpoint: the task was ended
    │   └── ToolParameterError            tool arguments failed validation
    ├── NotFoundError                 404 not_found_error
    ├── RequestTooLargeError          413 request_too_large
    ├── RateLimitedError              429 rate_limit_error       (retry_after)
    ├── UpstreamError                 502 api_error
    │   ├── UpstreamTimeoutError      504 api_error
    │   └── UpstreamStatusError       the upstream's own 4xx/5xx, relayed
    ├── GuardrailUnavailableError     503 api_error              (fail_open = false)
    ├── AuditWriteError               503 api_error              exit 1
    ├── StateStoreError               503 api_error              (token ledger, replay journal)
    └── AuditChainError               (verify only)              exit 1
"""

from __future__ import annotations


class AgentztError(Exception):
    """Base class: a failure with a fixed public message and a private detail."""

    status: int = 500
    error_type: str = "api_error"
    # The RFC 6749 error code used when this failure happens at the token endpoint.
    oauth_error: str = "server_error"
    exit_code: int = 1
    message: str = "internal error"
    # The status at the token endpoint when it differs from ``status`` (RFC 9449 wants
    # 400 for a bad DPoP proof there, 401 on a resource call).
    oauth_status: int | None = None

    def __init__(self, detail: str | None = None, *, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        self.detail = detail if detail is not None else self.message
        super().__init__(self.detail)


class ConfigError(AgentztError):
    """A configuration file does not parse or validate; nothing starts."""

    exit_code = 2
    message = "invalid configuration"

    def __init__(self, detail: str | None = None, *, message: str | None = None) -> None:
        # The detail quotes keys and values from the file; escape anything unprintable
        # (a newline in a key, a terminal escape) so it stays the promised one line.
        if detail is not None and not detail.isprintable():
            detail = "".join(c if c.isprintable() else repr(c)[1:-1] for c in detail)
        super().__init__(detail, message=message)


class UsageError(AgentztError):
    """A command was called with arguments that cannot work."""

    exit_code = 2
    message = "bad usage"


class EnrollmentError(AgentztError):
    """Enrollment was refused; nothing was written."""

    message = "enrollment refused"


class AuthenticationError(AgentztError):
    status = 401
    error_type = "authentication_error"
    oauth_error = "invalid_client"
    message = "authentication failed"


class TokenError(AuthenticationError):
    message = "invalid token"


class MalformedTokenError(TokenError):
    message = "malformed token"


class BadAlgorithmError(TokenError):
    message = "token algorithm or type not accepted"


class InvalidSignatureError(TokenError):
    message = "token signature is invalid"


class MissingClaimError(TokenError):
    message = "token is missing a required claim"


class ExpiredTokenError(TokenError):
    message = "token has expired"


class ImmatureTokenError(TokenError):
    message = "token is not yet valid"


class LifetimeTooLongError(TokenError):
    message = "token lifetime exceeds the maximum"


class InvalidIssuerError(TokenError):
    message = "token issuer is not accepted"


class InvalidAudienceError(TokenError):
    message = "token audience is not accepted"


class ReplayedTokenError(TokenError):
    message = "token has already been used"


class RevokedTokenError(TokenError):
    message = "token is revoked or was never issued"


class InvalidDpopProofError(AuthenticationError):
    oauth_error = "invalid_dpop_proof"
    oauth_status = 400
    message = "invalid DPoP proof"


class UnknownAgentError(AuthenticationError):
    # IMPORTANT: the message must not reveal whether the agent id exists.
    message = "authentication failed"


class PermissionDeniedError(AgentztError):
    status = 403
    error_type = "permission_error"
    # At an OAuth endpoint: the authenticated client may not do this (RFC 6749 5.2).
    oauth_error = "unauthorized_client"
    message = "permission denied"


class GuardrailBlockedError(PermissionDeniedError):
    """The input guardrail in block mode, or the output review, stopped the call."""

    error_type = "guardrail_blocked"
    message = "request blocked by the input guardrail"


class InvalidRequestError(AgentztError):
    status = 400
    error_type = "invalid_request_error"
    oauth_error = "invalid_request"
    message = "invalid request"


class UnsupportedGrantTypeError(InvalidRequestError):
    oauth_error = "unsupported_grant_type"
    message = "only grant_type=client_credentials is supported"


class InvalidScopeError(InvalidRequestError):
    oauth_error = "invalid_scope"
    message = "requested scope is not available to this client"


class TaskEndedError(InvalidRequestError):
    message = "this task has ended; start a new task id"


class ToolParameterError(InvalidRequestError):
    """The detail names the argument path and the failed rule, never the value, so it is
    safe to show the caller; an agent can only fix its call if it is told what failed."""

    message = "tool arguments failed validation"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, message=detail)


class NotFoundError(AgentztError):
    status = 404
    error_type = "not_found_error"
    message = "not found"


class RequestTooLargeError(AgentztError):
    status = 413
    error_type = "request_too_large"
    oauth_error = "invalid_request"
    message = "request body is too large"


class RateLimitedError(AgentztError):
    status = 429
    oauth_error = "slow_down"
    error_type = "rate_limit_error"
    message = "rate limit exceeded"

    def __init__(
        self, detail: str | None = None, *, retry_after: int = 1, message: str | None = None
    ) -> None:
        super().__init__(detail, message=message)
        self.retry_after = retry_after


class UpstreamError(AgentztError):
    status = 502
    message = "upstream model API failed"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    message = "upstream model API timed out"


class UpstreamStatusError(UpstreamError):
    """The upstream model API answered with an error: relayed with its status, type and
    message (the upstream's words, not the agent's), so SDKs raise their usual exception."""

    KNOWN_TYPES = frozenset(
        {
            "invalid_request_error",
            "authentication_error",
            "permission_error",
            "not_found_error",
            "request_too_large",
            "rate_limit_error",
            "api_error",
            "overloaded_error",
        }
    )

    def __init__(
        self, status: int, error_type: str, message: str, *, retry_after: str | None = None
    ) -> None:
        shown = message[:500]
        super().__init__(f"upstream answered {status} {error_type}: {shown}", message=shown)
        self.status = status if 400 <= status <= 599 else 502
        self.error_type = error_type if error_type in self.KNOWN_TYPES else "api_error"
        self.retry_after = retry_after


class GuardrailUnavailableError(AgentztError):
    """The guardrail provider could not give a verdict and the config says fail closed."""

    status = 503
    message = "guardrail unavailable; request refused"


class AuditWriteError(AgentztError):
    status = 503
    message = "audit log unavailable; request refused"


class StateStoreError(AgentztError):
    """The token ledger or the replay journal could not be read or written: fail closed."""

    status = 503
    message = "token state unavailable; request refused"


class AuditChainError(AgentztError):
    """The audit log failed verification at ``seq``."""

    message = "audit chain verification failed"

    def __init__(self, detail: str, *, seq: int) -> None:
        super().__init__(detail)
        self.seq = seq
