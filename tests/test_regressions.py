"""Named regression tests, one per defect found in review (cf. pyjwt's test_advisory.py).

Each test failed before its fix.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import tomli_w
from conftest import Stack, enroll_agent
from forge import b64u
from typer.testing import CliRunner

import agentzt.cli.commands  # noqa: F401  (registers the commands)
from agentzt.audit import read_events
from agentzt.cli import app
from agentzt.identity import make_assertion, read_private_key

MESSAGE = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def token_for(stack: Stack, agent_id: str = "agent-1") -> str:
    key = read_private_key(stack.paths.identity_key(agent_id))
    assertion = make_assertion(
        key, agent_id, audience=stack.gateway.token_endpoint, now=time.time()
    )
    with stack.gw_client() as client:
        response = client.post(
            "/v1/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_oversized_model_name_is_refused_without_writing_it(gateway_stack: Stack) -> None:
    token = token_for(gateway_stack)
    huge = "y" * 400_000
    with gateway_stack.gw_client() as client:
        response = client.post(
            "/v1/messages", json={"model": huge, **MESSAGE}, headers=bearer(token)
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    log = gateway_stack.paths.audit_log.read_bytes()
    assert huge[:1000].encode() not in log
    assert read_events(gateway_stack.paths.audit_log)[-1]["resource"] == "model:<invalid>"


def test_unencodable_model_name_is_a_400_and_audited(gateway_stack: Stack) -> None:
    token = token_for(gateway_stack)
    body = b'{"model": "\\ud800", "max_tokens": 16, "messages": []}'
    with gateway_stack.gw_client() as client:
        response = client.post(
            "/v1/messages",
            content=body,
            headers={**bearer(token), "content-type": "application/json"},
        )
    assert response.status_code == 400
    request_id = response.headers["x-agentzt-request-id"]
    assert read_events(gateway_stack.paths.audit_log, request_id=request_id)


def test_lone_surrogate_in_tool_arguments_is_a_400(gateway_stack: Stack) -> None:
    token = token_for(gateway_stack)
    body = b'{"arguments": {"sql": "select \'\\udc00\'"}}'
    with gateway_stack.gw_client() as client:
        response = client.post(
            "/v1/tools/db.query",
            content=body,
            headers={**bearer(token), "content-type": "application/json"},
        )
    assert response.status_code == 400


def test_brackets_inside_strings_do_not_hide_deep_nesting(gateway_stack: Stack) -> None:
    token = token_for(gateway_stack)
    body = b'{"pad": "' + b"]" * 5000 + b'", "x": ' + b"[" * 900 + b"]" * 900 + b"}"
    with gateway_stack.gw_client() as client:
        response = client.post(
            "/v1/tools/kb.search",
            content=body,
            headers={**bearer(token), "content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "JSON nested too deeply"


def test_denied_calls_count_against_the_rate_limit(gateway_stack: Stack) -> None:
    enroll_agent(gateway_stack.paths, "limited-1", "limited-agent")
    token = token_for(gateway_stack, "limited-1")
    statuses = []
    with gateway_stack.gw_client() as client:
        for _ in range(5):
            response = client.post(
                "/v1/messages",
                json={"model": "claude-opus-4-8", **MESSAGE},
                headers=bearer(token),
            )
            statuses.append(response.status_code)
    assert statuses == [403, 403, 403, 429, 429]


def _set_registry(paths_file: Path, agent_id: str, **changes: str) -> None:
    document = tomllib.loads(paths_file.read_text())
    document["agents"][agent_id].update(changes)
    paths_file.write_text(tomli_w.dumps(document))


def test_disabling_an_agent_stops_its_live_tokens(gateway_stack: Stack) -> None:
    token = token_for(gateway_stack)
    with gateway_stack.gw_client() as client:
        assert client.get("/v1/models", headers=bearer(token)).status_code == 200
        _set_registry(gateway_stack.paths.agents_toml, "agent-1", status="disabled")
        response = client.get("/v1/models", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_changing_an_agents_role_stops_tokens_of_the_old_role(gateway_stack: Stack) -> None:
    token = token_for(gateway_stack)
    _set_registry(gateway_stack.paths.agents_toml, "agent-1", role="research-agent")
    with gateway_stack.gw_client() as client:
        response = client.post(
            "/v1/tools/db.query", json={"arguments": {"sql": "SELECT 1"}}, headers=bearer(token)
        )
    assert response.status_code == 401


def _forged_with_exp(exp_literal: str, kid: str, typ: str, aud: str, iss: str) -> str:
    header = b64u(json.dumps({"alg": "EdDSA", "kid": kid, "typ": typ}).encode())
    payload = (
        f'{{"iss":"{iss}","sub":"agent-1","aud":"{aud}","iat":1,"exp":{exp_literal},"jti":"x",'
        f'"role":"demo-agent","scope":"model:claude-sonnet-4-6"}}'
    )
    return f"{header}.{b64u(payload.encode())}.{b64u(b'0' * 64)}"


def test_huge_exp_is_a_401_not_a_500(gateway_stack: Stack) -> None:
    gw = gateway_stack.gateway
    huge = "1" + "0" * 400
    access = _forged_with_exp(huge, gw.public_key.kid, "at+jwt", gw.issuer, gw.issuer)
    assertion = _forged_with_exp(huge, "agent-1", "JWT", gw.token_endpoint, "agent-1")
    with gateway_stack.gw_client() as client:
        resource = client.get("/v1/models", headers=bearer(access))
        token = client.post(
            "/v1/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
    assert resource.status_code == 401
    assert token.status_code == 401
    assert token.json()["error"] == "invalid_client"


def test_metadata_does_not_list_every_roles_scopes(gateway_stack: Stack) -> None:
    with gateway_stack.gw_client() as client:
        metadata = client.get("/.well-known/oauth-authorization-server").json()
    assert "scopes_supported" not in metadata
    assert "tool:db.query" not in json.dumps(metadata)


def test_audit_table_treats_fields_as_plain_text(gateway_stack: Stack) -> None:
    # Write an event whose fields hold rich markup and terminal escapes.
    gateway_stack.gateway.audit.append(
        request_id="req_markup",
        agent_id="[/]",
        role="[bold green]allow[/bold green]",
        action="model.call",
        resource="model:x",
        decision="deny",
        reason="\x1b]0;pwned\x07\x1b[31m",
        status=403,
        latency_ms=1.0,
    )
    paths = gateway_stack.paths
    result = CliRunner().invoke(
        app, ["--config", str(paths.config_dir), "--home", str(paths.home), "audit"]
    )
    assert result.exit_code == 0, result.output
    assert "[/]" in result.output
    assert "\x1b]0;pwned" not in result.output


def test_proxy_for_disabled_agent_gets_401(stack: Stack) -> None:
    with stack.proxy_client() as client:
        assert client.get("/v1/models").status_code == 200
        _set_registry(stack.paths.agents_toml, "agent-1", status="disabled")
        response = client.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
