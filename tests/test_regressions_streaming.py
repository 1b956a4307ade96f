"""One named test per finding of the streaming and passthrough review (issue 5)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from conftest import enroll_agent, in_ledger
from fake_anthropic import (
    ENTERPRISE_KEY,
    FakeAnthropic,
    fake_anthropic,
    passthrough_stack,
)
from starlette.testclient import TestClient

from agentzt import sse
from agentzt.audit import read_events
from agentzt.config import Paths, UpstreamSettings, load_gateway_settings
from agentzt.errors import ConfigError, UpstreamError
from agentzt.gateway import Gateway, create_app, mock_upstream
from agentzt.gateway.stream_guard import StreamGuard
from agentzt.guardrails.secrets import Redactor
from agentzt.guardrails.stream_redact import MAX_HOLD, StreamRedactor

REDACTOR = Redactor()
BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello"}],
}


def streamed(deltas: list[str]) -> str:
    redactor = StreamRedactor(REDACTOR)
    return "".join(redactor.feed(d) for d in deltas) + redactor.flush()


def batch(text: str) -> str:
    return REDACTOR.redact_text(text)[0]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with fake_anthropic() as upstream:
        yield upstream


# --- the hold-back ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "deltas",
    [
        ["<p>password: Zq8kL2pW9xR4vB7n", "<br>token", " expires soon</p>"],
        ["password: Zq8kL2pW9xR4vB7n,secret", " rotated"],
        ['DB_PASSWORD="Tr0ub4dor', "'s-K9!xQ", '" in .env'],
        ['{"access_token": "ya29.' + "a0Af" * 58, '", "expires_in": 3599}'],
        ['config {\\"api_key\\', '": \\"Zq8kL2pW9xR4vB7n\\"} done'],
        ["xoxb-1234-----BEG", "IN CERTIFICATE----- x"],
        ["Authorization: Bearer" + " " * 300, "aZ9xY8wV7uT6sR5qP4oN3mL2 end"],
        ["use AKIAFAKETSJQO65VC", "PWD for the upload"],
        ['{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/', 'bPxRfiCYzEXAMPLEKY12"}'],
    ],
    ids=["key-glued-after-value", "value-then-comma-key", "apostrophe-in-quoted",
         "quoted-over-200", "escaped-quote-split-after-backslash", "begin-inside-token-run",
         "bearer-after-300-spaces", "key-ending-in-a-name", "camelcase-aws-name"],
)  # fmt: skip
def test_a_split_never_releases_what_the_batch_redacts(deltas: list[str]) -> None:
    assert streamed(deltas) == batch("".join(deltas))


def test_a_lowercase_end_line_does_not_close_a_private_key() -> None:
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----end rsa private key-----\n"
    text = key + "hkiG9w0BAQEFAASC\n-----END RSA PRIVATE KEY-----\nafter"
    lines = text.splitlines(keepends=True)
    assert streamed(lines) == batch(text)
    assert "hkiG9w0" not in streamed(lines)


def test_an_overlong_hold_is_replaced_not_released() -> None:
    # A 100 KB token run: never released as is, and the work stays bounded by MAX_HOLD.
    redactor = StreamRedactor(REDACTOR)
    out = ""
    for _ in range(10_000):
        out += redactor.feed("QUJDREVG" + "Rw==")
        assert redactor.waiting <= MAX_HOLD
    out += redactor.flush()
    assert "QUJDREVG" not in out.replace("[REDACTED:unverified]", "")[: -(MAX_HOLD + 16)]
    assert "[REDACTED:unverified]" in out
    assert redactor.counts["unverified"] >= 1


def test_an_overlong_private_key_is_swallowed_to_its_end_line() -> None:
    redactor = StreamRedactor(REDACTOR)
    out = redactor.feed("key:\n-----BEGIN PRIVATE KEY-----\n")
    for _ in range(MAX_HOLD // 50 + 20):
        out += redactor.feed("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n")
    out += redactor.feed("-----END PRIVATE KEY-----\nthe end. ")
    out += redactor.flush()
    assert "MIIEvQ" not in out
    assert out.startswith("key:\n[REDACTED:unverified]")
    assert out.endswith("\nthe end. ")


def _guard_frames(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    outcomes: list[str] = []

    def finish(outcome: str, meta: dict[str, Any]) -> Future[dict[str, Any]]:
        # Stands in for the audit writer: records the outcome, reports it written.
        outcomes.append(outcome)
        written: Future[dict[str, Any]] = Future()
        written.set_result({"reason": outcome, "meta": meta})
        return written

    async def source() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for event in events:
            yield event

    async def run() -> list[tuple[str, dict[str, Any]]]:
        guard = StreamGuard(REDACTOR, finish)
        raw = b"".join([frame async for frame in guard.frames(source())])

        async def one() -> AsyncIterator[bytes]:
            yield raw

        return [event async for event in sse.events(one())]

    parsed = asyncio.run(run())
    parsed.append(("outcomes", {"list": outcomes}))
    return parsed


def test_truncated_tool_input_is_not_released() -> None:
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "t", "name": "fetch", "input": {}},
    }
    piece = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {
            "type": "input_json_delta",
            "partial_json": '{"url": "https:\\/\\/hooks.slack.com'
            + "\\/services\\/T0\\/B0\\/Xq7Lm2Vb9Rt4",
        },
    }
    events = [("content_block_start", start), ("content_block_delta", piece),
              ("content_block_stop", {"type": "content_block_stop", "index": 0})]  # fmt: skip
    received = _guard_frames(events)
    deltas = [d for name, d in received if name == "content_block_delta"]
    assert [d["delta"]["partial_json"] for d in deltas] == ["{}"]
    assert "Xq7Lm2Vb9Rt4" not in json.dumps(received)


def test_an_upstream_error_event_ends_the_stream_once() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    events = [*mock_upstream.stream_events(mock_upstream.message(BODY))[:3], ("error", error)]
    received = _guard_frames(events)
    assert [name for name, _ in received].count("error") == 1
    assert received[-1] == ("outcomes", {"list": ["upstream_error"]})


def test_an_event_name_with_a_line_break_is_refused() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'event: ping\rdata: x\ndata: {"type": "ping"}\n\n'

    async def run() -> None:
        async for _ in sse.events(chunks()):
            pass

    with pytest.raises(UpstreamError):
        asyncio.run(run())


# --- what passes to the upstream, and back ----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]},
         "mcp_servers"),
        ({"container": "cntr_1"}, "container"),
        ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "server tools"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}}]}]},
         "content source type 'url'"),
        ({"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "file", "file_id": "file_1"}}]}]},
         "content source type 'file'"),
    ],
    ids=["mcp-servers", "container", "server-tool", "url-source", "file-source"],
)  # fmt: skip
def test_what_the_gateway_cannot_govern_never_reaches_the_upstream(
    paths: Paths, fake: FakeAnthropic, extra: dict[str, Any], field: str
) -> None:
    with passthrough_stack(paths, fake.url) as stack, stack.proxy_client() as http:
        resp = http.post("/v1/messages", json={**BODY, **extra})
    assert resp.status_code == 400
    assert field in resp.json()["error"]["message"]
    assert fake.seen == []


def test_an_upstream_401_is_a_502_and_not_retried(paths: Paths, fake: FakeAnthropic) -> None:
    fake.script = dataclasses.replace(
        fake.script, status=401, error_type="authentication_error", error_message="bad key"
    )
    with passthrough_stack(paths, fake.url) as stack, stack.proxy_client() as http:
        resp = http.post("/v1/messages", json=BODY)
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "api_error"
    assert len(fake.seen) == 1


def test_an_upstream_error_echoing_the_key_is_redacted(paths: Paths, fake: FakeAnthropic) -> None:
    fake.script = dataclasses.replace(
        fake.script, status=400, error_message=f"invalid request for key {ENTERPRISE_KEY}"
    )
    with passthrough_stack(paths, fake.url) as stack, stack.proxy_client() as http:
        resp = http.post("/v1/messages", json=BODY)
    assert resp.status_code == 400
    assert ENTERPRISE_KEY not in resp.text
    assert ENTERPRISE_KEY not in paths.audit_log.read_text()


def test_plain_http_to_a_remote_upstream_is_refused(paths: Paths) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    settings = dataclasses.replace(
        load_gateway_settings(paths.gateway_toml),
        upstream=UpstreamSettings(mode="passthrough", base_url="http://api.example.com"),
    )
    with pytest.raises(ConfigError, match="must be https"):
        Gateway(paths, public_url="http://127.0.0.1:1", settings=settings,
                env={"ANTHROPIC_API_KEY": ENTERPRISE_KEY})  # fmt: skip


def test_streaming_is_refused_while_an_output_review_is_on(paths: Paths) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    base = load_gateway_settings(paths.gateway_toml)
    guardrails = dataclasses.replace(
        base.guardrails,
        input=dataclasses.replace(base.guardrails.input, provider="openguardrails"),
    )
    gateway = Gateway(
        paths,
        public_url="http://testserver",
        settings=dataclasses.replace(base, guardrails=guardrails),
        env={"OPENGUARDRAILS_API_KEY": "og-test"},
    )
    assert gateway.guard.reviews_output
    token, _ = gateway.issuer_of_tokens.issue("agent-1", "demo-agent", ["model:claude-sonnet-4-6"])
    in_ledger(gateway, token)
    with TestClient(create_app(gateway)) as client:
        resp = client.post(
            "/v1/messages",
            json={**BODY, "stream": True},
            headers={"authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 400
    assert "output guardrail review" in resp.json()["error"]["message"]
    assert read_events(paths.audit_log)[-1]["decision"] == "deny"
