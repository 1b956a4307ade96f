"""Settings: read once at start-up from TOML into frozen dataclasses.

A file that does not parse or validate raises ConfigError with one line naming the file,
the key and what to fix; nothing starts half-configured. Every gateway setting has a
packaged default, so a missing ``gateway.toml`` is fine.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentzt.errors import ConfigError

T = TypeVar("T")


def read_toml(path: Path, *, required: bool = False) -> dict[str, Any]:
    """Parse ``path``; a missing optional file is an empty document."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: file not found") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc


class Table:
    """A TOML table read key by key; unknown keys are an error when ``finish`` is called."""

    def __init__(self, data: object, *, file: Path, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: key '{prefix or '<root>'}' must be a table")
        self._data: dict[str, Any] = data
        self._file = file
        self._prefix = prefix
        self._seen: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._prefix}.{key}" if self._prefix else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._file}: key '{self._name(key)}' {problem}")

    def _get(self, key: str, default: T, check: Callable[[Any], bool], expected: str) -> T:
        self._seen.add(key)
        if key not in self._data:
            return default
        value = self._data[key]
        if not check(value):
            raise self.fail(key, f"has value {value!r}; expected {expected}")
        result: T = value
        return result

    def string(self, key: str, default: str, *, choices: tuple[str, ...] = ()) -> str:
        expected = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
        return self._get(
            key,
            default,
            lambda v: isinstance(v, str) and (not choices or v in choices),
            expected,
        )

    def optional_string(self, key: str) -> str | None:
        value: str | None = self._get(
            key, None, lambda v: isinstance(v, str) and v != "", "a string"
        )
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        return self._get(
            key,
            default,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
            f"an integer from {low} to {high}",
        )

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        value: float = self._get(
            key,
            default,
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high,
            f"a number from {low:g} to {high:g}",
        )
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        return self._get(key, default, lambda v: isinstance(v, bool), "true or false")

    def strings(self, key: str) -> tuple[str, ...]:
        value: list[str] = self._get(
            key,
            [],
            lambda v: isinstance(v, list) and all(isinstance(s, str) and s for s in v),
            "a list of non-empty strings",
        )
        if len(set(value)) != len(value):
            raise self.fail(key, "lists the same name twice")
        return tuple(value)

    def table(self, key: str) -> Table:
        self._seen.add(key)
        return Table(self._data.get(key, {}), file=self._file, prefix=self._name(key))

    def has(self, key: str) -> bool:
        return key in self._data

    def names(self) -> list[str]:
        return list(self._data)

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.fail(unknown[0], "is not a known setting (check its spelling)")


@dataclass(frozen=True)
class Paths:
    """Where configuration and state live (``--config`` / ``--home``)."""

    config_dir: Path
    home: Path

    @classmethod
    def resolve(cls, config_dir: Path | None = None, home: Path | None = None) -> Paths:
        return cls(
            config_dir=(config_dir or Path(os.environ.get("AGENTZT_CONFIG", "config"))).absolute(),
            home=(home or Path(os.environ.get("AGENTZT_HOME", ".agentzt"))).absolute(),
        )

    @property
    def gateway_toml(self) -> Path:
        return self.config_dir / "gateway.toml"

    @property
    def policy_toml(self) -> Path:
        return self.config_dir / "policy.toml"

    @property
    def agents_toml(self) -> Path:
        return self.config_dir / "agents.toml"

    def identity_key(self, agent_id: str) -> Path:
        return self.home / "identities" / f"{agent_id}.key"

    @property
    def gateway_key(self) -> Path:
        return self.home / "gateway" / "signing.key"

    @property
    def audit_log(self) -> Path:
        return self.home / "audit" / "gateway-audit.jsonl"

    @property
    def checkpoint_key(self) -> Path:
        return self.home / "gateway" / "checkpoint.key"

    @property
    def audit_hmac_key(self) -> Path:
        return self.home / "gateway" / "audit-hmac.key"

    def witness_dir(self, setting: str) -> Path | None:
        """The ``[audit] witness_dir`` setting as a path: relative ones are under the home."""
        if not setting:
            return None
        path = Path(setting).expanduser()
        return path if path.is_absolute() else self.home / path

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def token_ledger(self) -> Path:
        return self.home / "gateway" / "tokens.db"

    @property
    def replay_journal(self) -> Path:
        return self.home / "gateway" / "replay.journal"

    @property
    def operator_token(self) -> Path:
        return self.home / "gateway" / "operator.token"


@dataclass(frozen=True)
class TokenSettings:
    access_token_ttl_seconds: int = 300
    assertion_max_age_seconds: int = 60
    # RFC 9449 sender constraint: required | optional | off.
    dpop: str = "required"
    # How old a DPoP proof may be (its iat), clock skew aside.
    dpop_proof_max_age_seconds: int = 60


@dataclass(frozen=True)
class UpstreamSettings:
    """``[upstream]``: where model calls go. ``mock`` answers offline; ``passthrough``
    forwards to an Anthropic-shaped API with the enterprise key only the gateway holds."""

    mode: str = "mock"  # mock | passthrough
    base_url: str = "https://api.anthropic.com"
    api_key_env: str = "ANTHROPIC_API_KEY"
    connect_timeout_seconds: float = 10.0
    # The longest wait for the upstream's next bytes (a whole answer, or the next event).
    timeout_seconds: float = 600.0


@dataclass(frozen=True)
class LimitSettings:
    max_body_bytes: int = 1024 * 1024
    # Streams one agent may have open at once: each holds an upstream connection from a
    # pool all agents share, for as long as the agent keeps reading.
    max_concurrent_streams: int = 8
    # The OAuth endpoints (token, revoke, introspect): failed requests per client
    # address (past it, failures get 429), and requests per agent once its assertion
    # verified.
    token_failures_per_minute_per_address: int = 60
    token_requests_per_minute: int = 120


RISK_LEVEL_CHOICES = ("no_risk", "low_risk", "medium_risk", "high_risk")


@dataclass(frozen=True)
class InputGuardSettings:
    """``[guardrails.input]``: prompt-injection screening of everything sent to a model or tool."""

    mode: str = "block"  # block | flag | off
    provider: str = "auto"  # auto | local | openguardrails
    # The lowest risk level that blocks (or, in flag mode, is flagged).
    threshold: str = "medium_risk"
    # When the provider cannot answer: True allows the call (and audits it), False refuses it.
    fail_open: bool = False


@dataclass(frozen=True)
class OutputGuardSettings:
    """``[guardrails.output]``: what happens to answers before they reach the agent."""

    redact_secrets: bool = True
    spotlight_untrusted: bool = True
    review: bool = True  # run the provider's output review when it has one
    on_flag: str = "withhold"  # withhold | replace
    replacement: str = "[agentzt: the model's answer was withheld by the output guardrail]"


@dataclass(frozen=True)
class OpenGuardrailsSettings:
    base_url: str = "https://api.openguardrails.com/v1"
    api_key_env: str = "OPENGUARDRAILS_API_KEY"
    model: str = "OpenGuardrails-Text"
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class GuardrailSettings:
    input: InputGuardSettings = field(default_factory=InputGuardSettings)
    output: OutputGuardSettings = field(default_factory=OutputGuardSettings)
    openguardrails: OpenGuardrailsSettings = field(default_factory=OpenGuardrailsSettings)


@dataclass(frozen=True)
class TlsSettings:
    """``[tls]``: "off" serves plain HTTP; "mtls" serves HTTPS, requires a client
    certificate from the agentzt CA on every connection and binds tokens to it."""

    mode: str = "off"

    @property
    def mtls(self) -> bool:
        return self.mode == "mtls"


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]``: how durably events are written and how the log is sealed."""

    # always: an event is on stable storage before its request goes on; batch: it is in
    # the kernel before its request goes on, on stable storage within fsync_interval_ms;
    # never: the kernel writes it back when it chooses.
    fsync: str = "batch"
    fsync_interval_ms: int = 20
    # A signed checkpoint after this many events or seconds (if any were added), and at
    # shutdown.
    checkpoint_every_events: int = 1000
    checkpoint_every_seconds: float = 10.0
    # A second place each checkpoint is written to; relative paths are under the home.
    # Empty: none. Put it where the gateway's user cannot rewrite history.
    witness_dir: str = "witness"
    # The active file is closed and a new one started past this size.
    max_file_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    """``gateway.toml``. ``issuer`` None means "the URL the gateway is served at"."""

    issuer: str | None = None
    tokens: TokenSettings = field(default_factory=TokenSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    guardrails: GuardrailSettings = field(default_factory=GuardrailSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)


def load_gateway_settings(path: Path) -> GatewaySettings:
    root = Table(read_toml(path), file=path)
    gateway = root.table("gateway")
    issuer = gateway.optional_string("issuer")
    if issuer is not None and not issuer.startswith(("http://", "https://")):
        raise gateway.fail("issuer", "must be an http(s) URL such as 'https://gateway.example'")
    gateway.finish()

    tokens_t = root.table("tokens")
    tokens = TokenSettings(
        access_token_ttl_seconds=tokens_t.integer(
            "access_token_ttl_seconds", 300, low=10, high=3600
        ),
        assertion_max_age_seconds=tokens_t.integer(
            "assertion_max_age_seconds", 60, low=5, high=300
        ),
        dpop=tokens_t.string("dpop", "required", choices=("required", "optional", "off")),
        dpop_proof_max_age_seconds=tokens_t.integer(
            "dpop_proof_max_age_seconds", 60, low=5, high=300
        ),
    )
    tokens_t.finish()

    upstream = _upstream_settings(root.table("upstream"))

    lim = root.table("limits")
    limits = LimitSettings(
        max_body_bytes=lim.integer("max_body_bytes", 1024 * 1024, low=1024, high=64 * 1024 * 1024),
        max_concurrent_streams=lim.integer("max_concurrent_streams", 8, low=1, high=1000),
        token_failures_per_minute_per_address=lim.integer(
            "token_failures_per_minute_per_address", 60, low=1, high=10_000_000
        ),
        token_requests_per_minute=lim.integer(
            "token_requests_per_minute", 120, low=1, high=10_000_000
        ),
    )
    lim.finish()
    guardrails = _guardrail_settings(root.table("guardrails"))
    tls_t = root.table("tls")
    tls = TlsSettings(mode=tls_t.string("mode", "off", choices=("off", "mtls")))
    tls_t.finish()
    audit = _audit_settings(root.table("audit"))
    root.finish()
    return GatewaySettings(
        issuer=issuer,
        tokens=tokens,
        upstream=upstream,
        limits=limits,
        guardrails=guardrails,
        tls=tls,
        audit=audit,
    )


def _audit_settings(t: Table) -> AuditSettings:
    audit = AuditSettings(
        fsync=t.string("fsync", "batch", choices=("always", "batch", "never")),
        fsync_interval_ms=t.integer("fsync_interval_ms", 20, low=1, high=10_000),
        checkpoint_every_events=t.integer("checkpoint_every_events", 1000, low=1, high=100_000_000),
        checkpoint_every_seconds=t.number("checkpoint_every_seconds", 10.0, low=0.1, high=86_400),
        witness_dir=t.string("witness_dir", "witness"),
        max_file_bytes=t.integer("max_file_bytes", 64 * 1024 * 1024, low=4096, high=1 << 40),
    )
    t.finish()
    return audit


def _env_name(t: Table, key: str, default: str) -> str:
    name = t.string(key, default)
    if not name.replace("_", "").isalnum() or not name.isascii() or name[0].isdigit():
        raise t.fail(key, f"must be an environment variable name such as {default}")
    return name


def _http_url(t: Table, key: str, default: str) -> str:
    url = t.string(key, default)
    if not url.startswith(("http://", "https://")):
        raise t.fail(key, f"must be an http(s) URL such as '{default}'")
    return url.rstrip("/")


def _upstream_settings(t: Table) -> UpstreamSettings:
    upstream = UpstreamSettings(
        mode=t.string("mode", "mock", choices=("mock", "passthrough")),
        base_url=_http_url(t, "base_url", UpstreamSettings.base_url),
        api_key_env=_env_name(t, "api_key_env", UpstreamSettings.api_key_env),
        connect_timeout_seconds=t.number("connect_timeout_seconds", 10.0, low=0.1, high=120),
        timeout_seconds=t.number("timeout_seconds", 600.0, low=0.1, high=3600),
    )
    t.finish()
    return upstream


def _guardrail_settings(t: Table) -> GuardrailSettings:
    i = t.table("input")
    input_ = InputGuardSettings(
        mode=i.string("mode", "block", choices=("block", "flag", "off")),
        provider=i.string("provider", "auto", choices=("auto", "local", "openguardrails")),
        threshold=i.string("threshold", "medium_risk", choices=RISK_LEVEL_CHOICES[1:]),
        fail_open=i.boolean("fail_open", False),
    )
    i.finish()

    o = t.table("output")
    output = OutputGuardSettings(
        redact_secrets=o.boolean("redact_secrets", True),
        spotlight_untrusted=o.boolean("spotlight_untrusted", True),
        review=o.boolean("review", True),
        on_flag=o.string("on_flag", "withhold", choices=("withhold", "replace")),
        replacement=o.string("replacement", OutputGuardSettings.replacement),
    )
    o.finish()

    g = t.table("openguardrails")
    openguardrails = OpenGuardrailsSettings(
        base_url=_http_url(g, "base_url", OpenGuardrailsSettings.base_url),
        api_key_env=_env_name(g, "api_key_env", OpenGuardrailsSettings.api_key_env),
        model=g.string("model", OpenGuardrailsSettings.model),
        timeout_seconds=g.number("timeout_seconds", 5.0, low=0.1, high=120),
    )
    g.finish()
    t.finish()
    return GuardrailSettings(input=input_, output=output, openguardrails=openguardrails)
