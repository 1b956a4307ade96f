"""Passthrough to a real Anthropic-shaped API: faults, streams, cancellation, the key.

The upstream is tests/fake_anthropic.py, a real HTTP server on a loopback port; the
agent side is plain httpx through the client proxy, so every byte is observable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import enroll_agent
from fake_anthropic import (
    ENTERPRISE_KEY,
    FakeAnthropic,
    fake_anthropic,
    passthrough_stack,
    refused_url,
)

from agentzt.audit import read_events
from agentzt.config import Paths, UpstreamSettings, load_gateway_settings
from agentzt.errors import ConfigError
from agentzt.gateway import Gateway, mock_upstream

SECRET = "sk-ant-api03-" + "Zq8kL2pW9xR4vB7nM3cF6hJ1tY5uE0aS8dG2"
BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello"}],
}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with fake_anthropic() as upstream:
        yield upstream


def post(stack: Any, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    with stack.proxy_client() as http:
        response: httpx.Response = http.post("/v1/messages", json=body or BODY, **kwargs)
        return response


def stream_events(stack: Any, body: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """The SSE events the agent receives for a streamed call, parsed."""
    with stack.proxy_client() as http:
        resp = http.post("/v1/messages", json={**(body or BODY), "stream": True})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/event-stream")
        return parse(resp.text)


def parse(text: str) -> list[tuple[str, Any]]:
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def text_of(events: list[tuple[str, Any]]) -> str:
    return "".join(
        data["delta"].get("text", "")
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )


def last_event(paths: Paths, action: str) -> dict[str, Any]:
    events = [e for e in read_events(paths.audit_log) if e["action"] == action]
    return events[-1]


def wait_for(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# --- the happy path: the enterprise key, usage, redaction ------------------------------


def test_a_call_reaches_the_upstream_with_the_enterprise_key_only(
    paths: Paths, fake: FakeAnthropic
) -> None:
    with passthrough_stack(paths, fake.url) as stack:
        resp = post(stack, headers={"x-api-key": "sk-ant-agent-dummy-123456789", "x-custom": "1"})
    assert resp.status_code == 200, resp.text
    (seen,) = fake.seen
    assert seen.headers["x-api-key"] == ENTERPRISE_KEY
    assert "authorization" not in seen.headers
    assert "x-custom" not in seen.headers
    assert "sk-ant-agent-dummy" not in json.dumps(seen.headers)
    assert seen.body == BODY
    assert last_event(paths, "model.call")["meta"]["usage"] == resp.json()["usage"]


def test_a_non_streamed_answer_is_redacted(paths: Paths, fake: FakeAnthropic) -> None:
    answer = mock_upstream.message(BODY)
    fake.script.message = {**answer, "content": [{"type": "text", "text": f"key: {SECRET} ok"}]}
    with passthrough_stack(paths, fake.url) as stack:
        resp = post(stack)
    assert resp.status_code == 200
    assert SECRET not in resp.text
    assert "[REDACTED:anthropic-key]" in resp.json()["content"][0]["text"]


@pytest.mark.parametrize("offset", [1, 5, 7, 12, 20, len(SECRET) - 1], ids=lambda o: f"at-{o}")
def test_a_secret_split_across_streamed_deltas_never_reaches_the_agent(
    paths: Paths, fake: FakeAnthropic, offset: int
) -> None:
    text = f"Here is the key {SECRET} for you."
    cut = text.index(SECRET) + offset
    events = mock_upstream.stream_events(
        {**mock_upstream.message(BODY), "content": [{"type": "text", "text": "x"}]}
    )
    deltas = [
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": piece}})
        for piece in (text[:cut], text[cut:])
    ]  # fmt: skip
    at = next(i for i, (name, _) in enumerate(events) if name == "content_block_delta")
    fake.script.events = [*events[:at], *deltas, *events[at + 1 :]]
    with passthrough_stack(paths, fake.url) as stack:
        received = stream_events(stack)
    body = json.dumps(received)
    assert SECRET[:12] not in body.replace("sk-ant-api03-…", "")
    assert SECRET[8:] not in body
    assert text_of(received) == "Here is the key [REDACTED:anthropic-key] for you."
    outcome = last_event(paths, "model.response")
    assert outcome["meta"]["outcome"] == "completed"
    assert outcome["meta"]["redactions"] == {"anthropic-key": 1}


def test_stream_usage_is_audited(paths: Paths, fake: FakeAnthropic) -> None:
    with passthrough_stack(paths, fake.url) as stack:
        received = stream_events(stack)
    final = next(data for name, data in received if name == "message_delta")
    outcome = last_event(paths, "model.response")
    assert outcome["meta"]["usage"]["output_tokens"] == final["usage"]["output_tokens"]
    assert outcome["meta"]["usage"]["input_tokens"] > 0
    decision = last_event(paths, "model.call")
    assert decision["request_id"] == outcome["request_id"]
    assert decision["seq"] < outcome["seq"]


def test_the_stream_is_relayed_as_it_arrives(paths: Paths, fake: FakeAnthropic) -> None:
    fake.script.event_delay = 0.25
    with passthrough_stack(paths, fake.url) as stack, stack.proxy_client() as http:
        started = time.perf_counter()
        with http.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as resp:
            chunks = resp.iter_bytes()
            first = next(chunks)
            first_at = time.perf_counter() - started
            rest = b"".join(chunks)
        total = time.perf_counter() - started
    assert first.startswith(b"event: message_start")
    assert b"message_stop" in rest
    # Ten-plus events 0.25 s apart: the first is out long before the upstream finishes.
    assert total > 2.0
    assert first_at < total / 2


# --- faults ----------------------------------------------------------------------------


def test_a_refused_connection_is_502_and_audited(paths: Paths) -> None:
    with passthrough_stack(paths, refused_url()) as stack:
        plain = post(stack)
        with stack.proxy_client() as http:
            streamed = http.post("/v1/messages", json={**BODY, "stream": True})
    for resp in (plain, streamed):
        assert resp.status_code == 502
        assert resp.json()["error"]["type"] == "api_error"
    event = last_event(paths, "model.call")
    assert (event["decision"], event["status"]) == ("deny", 502)
    assert "ClientConnectorError" in event["reason"]


def test_an_upstream_timeout_is_504(paths: Paths, fake: FakeAnthropic) -> None:
    fake.script.delay = 1.5
    with passthrough_stack(paths, fake.url, timeout=0.3) as stack:
        resp = post(stack)
    assert resp.status_code == 504
    assert resp.json()["error"]["type"] == "api_error"
    assert last_event(paths, "model.call")["status"] == 504


def test_a_stalled_stream_ends_with_an_error_event(paths: Paths, fake: FakeAnthropic) -> None:
    fake.script.event_delay = 1.0
    with passthrough_stack(paths, fake.url, timeout=0.3) as stack:
        received = stream_events(stack)
    assert received[-1][0] == "error"
    assert received[-1][1]["error"]["type"] == "api_error"
    assert last_event(paths, "model.response")["meta"]["outcome"] == "upstream_error"


@pytest.mark.parametrize(
    ("status", "error_type", "retry_after"),
    [(400, "invalid_request_error", None), (429, "rate_limit_error", "7"),
     (500, "api_error", None), (529, "overloaded_error", None)],
    ids=["400", "429", "500", "529"],
)  # fmt: skip
def test_an_upstream_error_is_relayed_with_its_status_and_body_and_not_retried(
    paths: Paths, fake: FakeAnthropic, status: int, error_type: str, retry_after: str | None
) -> None:
    fake.script = dataclasses.replace(
        fake.script,
        status=status,
        error_type=error_type,
        error_message="the upstream says no",
        retry_after=retry_after,
    )
    with passthrough_stack(paths, fake.url) as stack:
        resp = post(stack)
        streamed = post(stack, {**BODY, "stream": True})
    for answer in (resp, streamed):
        assert answer.status_code == status
        assert answer.json()["type"] == "error"
        assert answer.json()["error"] == {"type": error_type, "message": "the upstream says no"}
        assert answer.headers.get("retry-after") == retry_after
        assert answer.json()["request_id"] == answer.headers["x-agentzt-request-id"]
    assert len(fake.seen) == 2  # one each: never retried
    event = last_event(paths, "model.call")
    assert (event["decision"], event["status"]) == ("deny", status)


def test_a_stream_cut_midway_ends_with_an_error_event(paths: Paths, fake: FakeAnthropic) -> None:
    fake.script.cut_after = 3
    with passthrough_stack(paths, fake.url) as stack:
        received = stream_events(stack)
    names = [name for name, _ in received]
    # The events sent before the cut are relayed in order, unless the reset reaches the
    # gateway before it starts reading (it first writes the call's audit event): aiohttp
    # then raises before handing over what it had buffered. Either way the stream ends
    # in an error event, never in message_stop.
    sent = ["message_start", "ping", "content_block_start"]
    assert names[:-1] == sent[: len(names) - 1]
    assert names[-1] == "error"
    assert last_event(paths, "model.response")["meta"]["outcome"] == "upstream_error"


def test_an_agent_that_disconnects_mid_stream_cancels_the_upstream(
    paths: Paths, fake: FakeAnthropic
) -> None:
    fake.script.endless = True
    with passthrough_stack(paths, fake.url) as stack:
        with (
            stack.proxy_client() as http,
            http.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as resp,
        ):
            assert next(resp.iter_bytes()).startswith(b"event: ")
        # The agent is gone: the proxy drops the gateway, the gateway drops the upstream.
        assert wait_for(lambda: "client_gone" in fake.stream_closed), fake.stream_closed
        assert wait_for(
            lambda: any(e["action"] == "model.response" for e in read_events(paths.audit_log))
        )
    assert last_event(paths, "model.response")["meta"]["outcome"] == "agent_disconnected"


def test_max_tokens_over_the_role_limit_never_reaches_the_upstream(
    paths: Paths, fake: FakeAnthropic
) -> None:
    with passthrough_stack(paths, fake.url) as stack:
        resp = post(stack, {**BODY, "max_tokens": 10**6, "stream": True})
    assert resp.status_code == 400
    assert fake.seen == []


def test_count_tokens_goes_to_the_upstream(paths: Paths, fake: FakeAnthropic) -> None:
    with passthrough_stack(paths, fake.url) as stack, stack.proxy_client() as http:
        resp = http.post(
            "/v1/messages/count_tokens",
            json={"model": "claude-sonnet-4-6", "messages": BODY["messages"]},
        )
    assert resp.status_code == 200
    assert resp.json()["input_tokens"] >= 1
    assert fake.seen[-1].path == "/v1/messages/count_tokens"


# --- the key ---------------------------------------------------------------------------


def test_passthrough_refuses_to_start_without_the_key(paths: Paths) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    settings = dataclasses.replace(
        load_gateway_settings(paths.gateway_toml),
        upstream=UpstreamSettings(mode="passthrough", api_key_env="AGENTZT_TEST_UPSTREAM_KEY"),
    )
    with pytest.raises(ConfigError, match="AGENTZT_TEST_UPSTREAM_KEY"):
        Gateway(paths, public_url="http://127.0.0.1:1", settings=settings, env={})
    assert not paths.gateway_key.exists()  # nothing written before the refusal


def test_the_gateway_command_refuses_passthrough_without_the_key(paths: Paths) -> None:
    toml = paths.gateway_toml.read_text().replace('mode = "mock"', 'mode = "passthrough"')
    paths.gateway_toml.write_text(toml)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(paths.home)}
    result = subprocess.run(
        [sys.executable, "-m", "agentzt", "--config", str(paths.config_dir),
         "--home", str(paths.home), "gateway", "--port", "0"],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "ANTHROPIC_API_KEY" in lines[0]
    assert "Traceback" not in result.stderr


def test_the_key_never_reaches_a_log_or_the_audit_trail(
    paths: Paths, fake: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script.cut_after = 2
    with passthrough_stack(paths, fake.url) as stack:
        post(stack)
        post(stack, {**BODY, "stream": True})
        assert ENTERPRISE_KEY not in repr(stack.gateway.upstream)
    assert ENTERPRISE_KEY not in caplog.text
    assert ENTERPRISE_KEY not in paths.audit_log.read_text()


def test_the_mock_upstream_never_needs_a_key(paths: Paths) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    gateway = Gateway(paths, public_url="http://127.0.0.1:1", env={})
    assert type(gateway.upstream).__name__ == "MockUpstream"


def test_a_stream_whose_decision_cannot_be_audited_is_refused_and_the_upstream_never_called(
    paths: Paths, fake: FakeAnthropic
) -> None:
    fake.script.endless = True
    with passthrough_stack(paths, fake.url) as stack:
        assert post(stack).status_code == 200  # the proxy holds a token now
        before = paths.audit_log.read_bytes()
        seen_before = len(fake.seen)
        stack.gateway.audit.close()
        resp = post(stack, {**BODY, "stream": True})
        assert resp.status_code == 503
        assert "event:" not in resp.text
        # Audit before acting: the decision event could not be written, so the gateway
        # never asked the upstream for this stream (nothing to close, nothing generated).
        assert fake.seen[seen_before:] == []
        assert fake.stream_closed == []
    assert paths.audit_log.read_bytes() == before


def test_a_stream_whose_outcome_cannot_be_audited_ends_in_an_error_event(
    paths: Paths, fake: FakeAnthropic
) -> None:
    fake.script.event_delay = 0.05
    with passthrough_stack(paths, fake.url) as stack, stack.proxy_client() as http:
        assert http.post("/v1/messages", json=BODY).status_code == 200
        with http.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as resp:
            chunks = resp.iter_bytes()
            assert next(chunks).startswith(b"event: message_start")
            stack.gateway.audit.close()  # the decision is logged; the outcome will not be
            rest = b"".join(chunks).decode()
    events = parse(rest)
    assert events[-1][0] == "error"
    assert all(name != "message_stop" for name, _ in events)


def test_an_agent_cannot_hold_more_open_streams_than_its_limit(
    paths: Paths, fake: FakeAnthropic
) -> None:
    toml = paths.gateway_toml.read_text().replace(
        "max_concurrent_streams = 8", "max_concurrent_streams = 2"
    )
    paths.gateway_toml.write_text(toml)
    fake.script.endless = True
    with passthrough_stack(paths, fake.url) as stack, stack.proxy_client() as http:
        assert http.post("/v1/messages", json=BODY).status_code == 200
        with (
            http.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as one,
            http.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as two,
        ):
            assert (one.status_code, two.status_code) == (200, 200)
            third = http.post("/v1/messages", json={**BODY, "stream": True})
            assert third.status_code == 429
            assert "too many open streams" in third.json()["error"]["message"]
            assert third.headers["retry-after"] == "1"
            assert http.post("/v1/messages", json=BODY).status_code == 200  # calls still pass
        # Closing a stream frees its slot.
        assert wait_for(lambda: fake.stream_closed.count("client_gone") == 2)
        fake.script.endless = False
        again = http.post("/v1/messages", json={**BODY, "stream": True})
        assert again.status_code == 200
