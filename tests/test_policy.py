"""The policy decision point and the loading of policy.toml and gateway.toml."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from agentzt.config import GatewaySettings, load_gateway_settings
from agentzt.errors import ConfigError
from agentzt.policy import DecisionRequest, Policy, Resource, Role, decide, load_policy
from agentzt.policy.model import Jit

REPO = Path(__file__).resolve().parent.parent

DEMO_ROLE = Role(
    name="demo-agent",
    description="",
    models=("claude-sonnet-4-6",),
    tools=("kb.search", "db.query"),
    jit=Jit(elevatable_tools=frozenset({"email.send"})),
)
# The same role after an operator removed db.query from the live policy.
DEMO_ROLE_TRIMMED = Role(
    name="demo-agent",
    description="",
    models=("claude-sonnet-4-6",),
    tools=("kb.search",),
    jit=Jit(elevatable_tools=frozenset({"email.send"})),
)
STANDING = frozenset({"model:claude-sonnet-4-6", "tool:kb.search", "tool:db.query"})


def _request(role: str, kind: str, name: str, scope: frozenset[str] = STANDING) -> DecisionRequest:
    return DecisionRequest(
        agent_id="agent-1",
        role=role,
        resource=Resource(kind, name),  # type: ignore[arg-type]
        token_scope=scope,
    )


# (policy roles, request, expected effect)
DECIDE_CASES = [
    ({"demo-agent": DEMO_ROLE}, _request("demo-agent", "model", "claude-sonnet-4-6"), "allow"),
    ({"demo-agent": DEMO_ROLE}, _request("demo-agent", "tool", "kb.search"), "allow"),
    (
        {"demo-agent": DEMO_ROLE},
        _request("demo-agent", "model", "claude-opus-4-8", STANDING | {"model:claude-opus-4-8"}),
        "deny",
    ),
    ({"demo-agent": DEMO_ROLE_TRIMMED}, _request("demo-agent", "tool", "db.query"), "deny"),
    ({}, _request("demo-agent", "model", "claude-sonnet-4-6"), "deny"),
    (
        {"demo-agent": DEMO_ROLE},
        _request("demo-agent", "tool", "db.query", frozenset({"tool:kb.search"})),
        "deny",
    ),
    ({"demo-agent": DEMO_ROLE}, _request("demo-agent", "tool", "email.send"), "deny"),
    (
        {"demo-agent": DEMO_ROLE},
        _request("demo-agent", "tool", "email.send", STANDING | {"tool:email.send"}),
        "deny",
    ),
]
DECIDE_IDS = [
    "allowed-model",
    "allowed-tool",
    "model-not-in-role",
    "tool-in-token-but-removed-from-live-role",
    "role-missing-from-policy",
    "in-role-but-not-in-token-scope",
    "jit-elevatable-tool-without-grant",
    "jit-elevatable-tool-even-if-token-claims-it",
]


@pytest.mark.parametrize(("roles", "request_", "effect"), DECIDE_CASES, ids=DECIDE_IDS)
def test_decide(roles: dict[str, Role], request_: DecisionRequest, effect: str) -> None:
    decision = decide(Policy(roles=roles), request_)
    assert decision.effect == effect
    assert decision.allowed is (effect == "allow")
    assert decision.reason
    assert decision.rule
    if effect == "allow":
        assert decision.rule == "roles.demo-agent"
        assert request_.resource.scope in decision.reason
    else:
        assert not decision.rule.startswith("roles.")


class _ExplodingRoles(Mapping[str, Role]):
    """A roles mapping whose every lookup raises, standing in for a broken rule."""

    def __getitem__(self, key: str) -> Role:
        raise RuntimeError("boom")

    def get(self, key: str, default: object = None) -> Role:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")

    def __contains__(self, key: object) -> bool:
        raise RuntimeError("boom")


def test_decide_never_raises_and_fails_closed() -> None:
    decision = decide(
        Policy(roles=_ExplodingRoles()), _request("demo-agent", "model", "claude-sonnet-4-6")
    )
    assert decision.effect == "deny"
    assert not decision.allowed
    assert decision.rule == "fail-closed"
    # The reason names the failure class, never the exception's (possibly secret) text.
    assert "boom" not in decision.reason


# --- load_policy ------------------------------------------------------------------------

GOOD_ROLE = """
[roles.r1]
models = ["claude-sonnet-4-6"]
tools = ["kb.search"]
"""

POLICY_ERRORS = [
    (GOOD_ROLE + 'modles = ["claude-haiku-4-5"]\n', "roles.r1.modles"),
    ('[roles.r1]\nmodels = "claude-sonnet-4-6"\n', "roles.r1.models"),
    ('[roles.r1]\nmodels = ["claude-sonnet-4-6", "claude-sonnet-4-6"]\n', "roles.r1.models"),
    ('[roles.Bad_Role]\nmodels = ["claude-sonnet-4-6"]\n', "roles.Bad_Role"),
    (GOOD_ROLE + "[roles.r1.limits]\nmax_output_tokens = 0\n", "roles.r1.limits.max_output_tokens"),
    (
        GOOD_ROLE + "[roles.r1.abac]\nallowed_hours_utc = { start = 9, end = 9 }\n",
        "roles.r1.abac.allowed_hours_utc",
    ),
    (
        GOOD_ROLE + '[roles.r1.abac]\ndeny_above_risk_level = "extreme_risk"\n',
        "roles.r1.abac.deny_above_risk_level",
    ),
    (
        GOOD_ROLE + '[roles.r1.jit]\nelevatable_tools = ["kb.search"]\n',
        "roles.r1.jit.elevatable_tools",
    ),
]
POLICY_ERROR_IDS = [
    "unknown-key-in-role",
    "models-wrong-type",
    "duplicate-model",
    "invalid-role-name",
    "max-output-tokens-zero",
    "hours-start-equals-end",
    "unknown-risk-level",
    "tool-both-standing-and-elevatable",
]


@pytest.mark.parametrize(("text", "key"), POLICY_ERRORS, ids=POLICY_ERROR_IDS)
def test_load_policy_rejects(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}" in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_load_policy_valid_role_round_trips(tmp_path: Path) -> None:
    # The base of every error case above loads on its own, so each case fails for its edit.
    path = tmp_path / "policy.toml"
    path.write_text(GOOD_ROLE)
    role = load_policy(path).roles["r1"]
    assert role.models == ("claude-sonnet-4-6",)
    assert role.tools == ("kb.search",)
    assert role.allowed == {"model:claude-sonnet-4-6", "tool:kb.search"}


def test_missing_policy_file_means_no_roles(tmp_path: Path) -> None:
    policy = load_policy(tmp_path / "absent" / "policy.toml")
    assert dict(policy.roles) == {}
    denied = decide(policy, _request("demo-agent", "model", "claude-sonnet-4-6"))
    assert denied.effect == "deny"


def test_shipped_policy_loads() -> None:
    policy = load_policy(REPO / "config" / "policy.toml")
    assert set(policy.roles) == {"demo-agent", "research-agent", "ops-agent", "comms-agent"}
    for name in ("ops-agent", "comms-agent"):
        role = policy.roles[name]
        assert role.abac.allowed_hours_utc is not None
        assert role.abac.deny_above_risk_level is not None
        assert "email.send" in role.jit.elevatable_tools
        assert "tool:email.send" not in role.allowed
    demo = policy.roles["demo-agent"]
    assert demo.models == ("claude-sonnet-4-6", "claude-haiku-4-5")
    assert "model:claude-opus-4-8" not in demo.allowed


# --- load_gateway_settings ----------------------------------------------------------------


def test_gateway_settings_defaults_when_missing(tmp_path: Path) -> None:
    settings = load_gateway_settings(tmp_path / "gateway.toml")
    assert settings == GatewaySettings()
    assert settings.issuer is None
    assert settings.tokens.access_token_ttl_seconds == 300
    assert settings.tokens.assertion_max_age_seconds == 60
    assert settings.limits.max_body_bytes == 1024 * 1024


def test_shipped_gateway_settings_are_the_defaults() -> None:
    assert load_gateway_settings(REPO / "config" / "gateway.toml") == GatewaySettings()


GATEWAY_ERRORS = [
    ("[tokens]\naccess_token_ttl = 300\n", "tokens.access_token_ttl"),
    ("[limitz]\nmax_body_bytes = 2048\n", "limitz"),
    ('[gateway]\nissuer = "ftp://gateway.example"\n', "gateway.issuer"),
    ('[gateway]\nissuer = "gateway.example"\n', "gateway.issuer"),
    ('[tokens]\naccess_token_ttl_seconds = "300"\n', "tokens.access_token_ttl_seconds"),
    ("[limits]\nmax_body_bytes = 10\n", "limits.max_body_bytes"),
]
GATEWAY_ERROR_IDS = [
    "unknown-key",
    "unknown-table",
    "issuer-not-http",
    "issuer-no-scheme",
    "ttl-wrong-type",
    "body-limit-too-small",
]


@pytest.mark.parametrize(("text", "key"), GATEWAY_ERRORS, ids=GATEWAY_ERROR_IDS)
def test_gateway_settings_reject(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message


def test_gateway_settings_accept_issuer(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nissuer = "https://gateway.example/"\n')
    assert load_gateway_settings(path).issuer == "https://gateway.example/"


def test_gateway_settings_invalid_toml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[tokens\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(path)
    assert str(path) in str(info.value)
