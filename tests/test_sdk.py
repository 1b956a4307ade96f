"""The unmodified official ``anthropic`` SDK, sync and async, pointed at the client proxy.

Every test drives the real chain on loopback ports: SDK -> client proxy -> gateway ->
upstream, where the upstream is the offline ``mock`` or, in ``passthrough`` mode, the
recording fake Anthropic API of ``fake_anthropic``. The agent holds a distinctive dummy
key so the tests can prove it never travels past the proxy.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
import tomli_w
from anthropic.types import Message, MessageParam, ToolUseBlock
from conftest import REPO, TEST_ROLES, Stack, enroll_agent
from fake_anthropic import (
    ENTERPRISE_KEY,
    FakeAnthropic,
    Script,
    fake_anthropic,
    passthrough_stack,
)

from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app, mock_upstream
from agentzt.identity import read_private_key
from agentzt.policy import load_policy
from agentzt.proxy import create_proxy_app
from agentzt.server import BackgroundServer, bind, running, url_of

DUMMY_KEY = "sk-ant-agent-dummy-DO-NOT-FORWARD-123"
MODEL = "claude-sonnet-4-6"
OUTSIDE_MODEL = "claude-opus-4-8"  # in policy.toml, but not in demo-agent's role
PROMPT = "Summarise our VPN onboarding steps in three short bullet points"
USER: list[MessageParam] = [{"role": "user", "content": PROMPT}]
MODES = ["mock", "passthrough"]
FLAVORS = ["sync", "async"]

TOOL_DEF = {
    "name": "kb_search",
    "description": "Search the internal knowledge base",
    "input_schema": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
    },
}
TOOL_INPUT = {"query": "vpn"}
TOOL_BLOCK = {"type": "tool_use", "id": "toolu_01", "name": "kb_search", "input": TOOL_INPUT}


def tool_message(model: str = MODEL) -> dict[str, Any]:
    """An assistant answer that calls kb_search, as the Messages API returns it."""
    return {
        "id": "msg_tool_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [TOOL_BLOCK],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 9},
    }


# The JSON of the tool input, cut where a model might cut it.
TOOL_PIECES = ['{"query": "v', 'pn"}']


def tool_events() -> list[tuple[str, dict[str, Any]]]:
    """The tool-use answer streamed with its input in two ``input_json_delta`` pieces."""
    events = mock_upstream.stream_events(tool_message())
    out: list[tuple[str, dict[str, Any]]] = []
    for name, data in events:
        delta = data.get("delta", {})
        if name == "content_block_delta" and delta.get("type") == "input_json_delta":
            for piece in TOOL_PIECES:
                out.append(
                    (
                        name,
                        {
                            "type": "content_block_delta",
                            "index": data["index"],
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
        else:
            out.append((name, data))
    return out


def expected_text(messages: Sequence[Mapping[str, object]], max_tokens: int = 256) -> str:
    """What the deterministic mock answers (the fake upstream answers the same)."""
    body = {"model": MODEL, "max_tokens": max_tokens, "messages": messages}
    text: str = mock_upstream.message(body)["content"][0]["text"]
    return text


# --- the chain under test ----------------------------------------------------------------


@dataclass
class Env:
    mode: str
    stack: Stack
    fake: FakeAnthropic | None

    @property
    def url(self) -> str:
        assert self.stack.proxy_url is not None
        return self.stack.proxy_url


@pytest.fixture(autouse=True)
def _clean_sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK reads these; a developer's shell must not change what the tests send.
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def _shared_paths(tmp_path_factory: pytest.TempPathFactory, name: str) -> Paths:
    """The conftest ``paths`` layout (shipped gateway.toml, policy.toml plus the test roles)
    with demo-agent's rate limit raised, so a module-scoped stack never trips it; the
    tests that change state (rate limit, disabled agent) build fresh stacks instead."""
    root = tmp_path_factory.mktemp(name)
    config = root / "config"
    config.mkdir()
    (config / "gateway.toml").write_bytes((REPO / "config" / "gateway.toml").read_bytes())
    policy = (REPO / "config" / "policy.toml").read_text() + TEST_ROLES
    raised = policy.replace("requests_per_minute = 120", "requests_per_minute = 100000")
    assert raised != policy
    (config / "policy.toml").write_text(raised)
    return Paths(config_dir=config, home=root / "home")


@pytest.fixture(scope="module")
def shared_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Gateway (mock upstream) and proxy for agent-1 (demo-agent), as conftest's ``stack``."""
    paths = _shared_paths(tmp_path_factory, "sdk-mock")
    key = enroll_agent(paths, "agent-1", "demo-agent")
    gateway_sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(gateway_sock))
    proxy = create_proxy_app(agent_id="agent-1", key=key, gateway_url=url_of(gateway_sock))
    with (
        running(create_app(gateway), gateway_sock) as gw,
        running(proxy, bind("127.0.0.1", 0)) as px,
    ):
        yield Stack(paths=paths, gateway=gateway, gateway_url=gw.url, proxy_url=px.url)


@pytest.fixture(scope="module")
def shared_passthrough(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, FakeAnthropic]]:
    paths = _shared_paths(tmp_path_factory, "sdk-passthrough")
    with fake_anthropic() as fake, passthrough_stack(paths, fake.url) as stack:
        yield stack, fake


def _fresh(fake: FakeAnthropic) -> FakeAnthropic:
    """The shared fake with the default script and nothing seen yet."""
    fake.script = Script()
    fake.seen.clear()
    return fake


@pytest.fixture(params=MODES)
def env(request: pytest.FixtureRequest) -> Env:
    if request.param == "mock":
        return Env("mock", request.getfixturevalue("shared_mock"), None)
    stack, fake = request.getfixturevalue("shared_passthrough")
    return Env("passthrough", stack, _fresh(fake))


@pytest.fixture
def passthrough(shared_passthrough: tuple[Stack, FakeAnthropic]) -> Env:
    stack, fake = shared_passthrough
    return Env("passthrough", stack, _fresh(fake))


@pytest.fixture(params=MODES)
def fresh_env(request: pytest.FixtureRequest, paths: Paths) -> Iterator[Env]:
    """A stack of its own (conftest's ``stack``, or ``passthrough_stack``) for a test that
    changes state the shared stacks must keep."""
    if request.param == "mock":
        yield Env("mock", request.getfixturevalue("stack"), None)
        return
    with fake_anthropic() as fake, passthrough_stack(paths, fake.url) as stack:
        yield Env("passthrough", stack, fake)


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _method(client: Any, path: str) -> Any:
    target = client
    for part in path.split("."):
        target = getattr(target, part)
    return target


def sdk(flavor: str, url: str, path: str, /, *, api_key: str = DUMMY_KEY, **kwargs: Any) -> Any:
    """``client.<path>(**kwargs)`` with a fresh sync or async client; returns the result."""
    if flavor == "sync":
        with anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0) as client:
            return _method(client, path)(**kwargs)

    async def main() -> Any:
        async with anthropic.AsyncAnthropic(base_url=url, api_key=api_key, max_retries=0) as client:
            return await _method(client, path)(**kwargs)

    return asyncio.run(main())


def raw_events(flavor: str, url: str, **kwargs: Any) -> list[Any]:
    """Every event of ``messages.create(stream=True)``, in order."""
    if flavor == "sync":
        with anthropic.Anthropic(base_url=url, api_key=DUMMY_KEY, max_retries=0) as client:
            return list(client.messages.create(stream=True, **kwargs))

    async def main() -> list[Any]:
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key=DUMMY_KEY, max_retries=0
        ) as client:
            stream = await client.messages.create(stream=True, **kwargs)
            return [event async for event in stream]

    return asyncio.run(main())


def helper_stream(flavor: str, url: str, **kwargs: Any) -> tuple[list[str], Message]:
    """``messages.stream(...)``: the text_stream pieces and the final message."""
    if flavor == "sync":
        with (
            anthropic.Anthropic(base_url=url, api_key=DUMMY_KEY, max_retries=0) as client,
            client.messages.stream(**kwargs) as stream,
        ):
            pieces = list(stream.text_stream)
            return pieces, stream.get_final_message()

    async def main() -> tuple[list[str], Message]:
        async with (
            anthropic.AsyncAnthropic(base_url=url, api_key=DUMMY_KEY, max_retries=0) as client,
            client.messages.stream(**kwargs) as stream,
        ):
            pieces = [piece async for piece in stream.text_stream]
            return pieces, await stream.get_final_message()

    return asyncio.run(main())


def raw_create(flavor: str, url: str, **kwargs: Any) -> tuple[int, Message]:
    """``messages.with_raw_response.create``: the HTTP status and the parsed message."""
    if flavor == "sync":
        with anthropic.Anthropic(base_url=url, api_key=DUMMY_KEY, max_retries=0) as client:
            raw = client.messages.with_raw_response.create(**kwargs)
            return raw.status_code, raw.parse()

    async def main() -> tuple[int, Message]:
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key=DUMMY_KEY, max_retries=0
        ) as client:
            raw = await client.messages.with_raw_response.create(**kwargs)
            return raw.status_code, await raw.parse()

    return asyncio.run(main())


def sdk_anthropic_version() -> str:
    """The ``anthropic-version`` this SDK sends by default."""
    with anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key=DUMMY_KEY) as client:
        return str(client.default_headers["anthropic-version"])


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict), exc.body
    error = exc.body["error"]
    assert isinstance(error, dict)
    return error


# --- 1. messages.create --------------------------------------------------------------------


def test_create_returns_text_usage_and_stop_reason(env: Env, flavor: str) -> None:
    message = sdk(flavor, env.url, "messages.create", model=MODEL, max_tokens=256, messages=USER)
    assert isinstance(message, Message)
    assert message.role == "assistant"
    assert message.model == MODEL
    assert text_of(message) == expected_text(USER)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    if env.fake is not None:
        [seen] = env.fake.seen
        assert seen.path == "/v1/messages"
        assert seen.body["messages"] == USER
        assert seen.body["max_tokens"] == 256


# --- 2. messages.create(stream=True) -------------------------------------------------------


def test_raw_stream_has_the_event_sequence_and_same_text(env: Env, flavor: str) -> None:
    whole = sdk(flavor, env.url, "messages.create", model=MODEL, max_tokens=256, messages=USER)
    events = raw_events(flavor, env.url, model=MODEL, max_tokens=256, messages=USER)
    types = [event.type for event in events]
    assert types[0] == "message_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(types)
    start, stop = types.index("content_block_start"), types.index("content_block_stop")
    deltas = [i for i, t in enumerate(types) if t == "content_block_delta"]
    assert deltas and start < min(deltas) and max(deltas) < stop
    text = "".join(
        event.delta.text
        for event in events
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == text_of(whole) == expected_text(USER)
    assert events[0].message.usage.input_tokens > 0
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens > 0


# --- 3. messages.stream helper ---------------------------------------------------------------


def test_stream_helper_text_stream_matches_final_message(env: Env, flavor: str) -> None:
    pieces, final = helper_stream(flavor, env.url, model=MODEL, max_tokens=256, messages=USER)
    assert len(pieces) > 1, "the answer should arrive in several pieces"
    assert "".join(pieces) == text_of(final) == expected_text(USER)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


NON_ASCII = "Café ☕ — 日本語のテキスト, emoji 🚀🚀 and ünïcödé. " * 3


def test_stream_helper_keeps_non_ascii_text_intact(passthrough: Env, flavor: str) -> None:
    """Multi-byte text survives the upstream's chunking, the stream guard's hold-back and
    the proxy's chunk relay, streamed and not."""
    assert passthrough.fake is not None
    answer = mock_upstream.message({"model": MODEL, "messages": USER})
    answer["content"] = [{"type": "text", "text": NON_ASCII}]
    passthrough.fake.script.message = answer
    pieces, final = helper_stream(
        flavor, passthrough.url, model=MODEL, max_tokens=256, messages=USER
    )
    assert "".join(pieces) == NON_ASCII == text_of(final)
    whole = sdk(
        flavor, passthrough.url, "messages.create", model=MODEL, max_tokens=256, messages=USER
    )
    assert text_of(whole) == NON_ASCII


# --- 4. system prompt and content-block arrays ---------------------------------------------


BLOCK_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "Hello there."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Hi, how can I help?"}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Where is the VPN guide?"},
            {"type": "text", "text": "A link is enough."},
        ],
    },
]


@pytest.mark.parametrize(
    "system",
    [
        "You are a concise IT helpdesk assistant.",
        [
            {"type": "text", "text": "You are a concise IT helpdesk assistant."},
            {"type": "text", "text": "Answer in one sentence."},
        ],
    ],
    ids=["system-string", "system-blocks"],
)
def test_system_prompt_and_content_blocks_accepted(env: Env, flavor: str, system: Any) -> None:
    status, message = raw_create(
        flavor, env.url, model=MODEL, max_tokens=256, system=system, messages=BLOCK_MESSAGES
    )
    assert status == 200
    assert text_of(message) == expected_text(BLOCK_MESSAGES)
    if env.fake is not None:
        [seen] = env.fake.seen
        assert seen.body["system"] == system
        assert seen.body["messages"] == BLOCK_MESSAGES


# --- 5. tool use (passthrough) ---------------------------------------------------------------


def test_tool_use_round_trip(passthrough: Env, flavor: str) -> None:
    fake = passthrough.fake
    assert fake is not None
    fake.script.message = tool_message()
    message = sdk(
        flavor,
        passthrough.url,
        "messages.create",
        model=MODEL,
        max_tokens=256,
        tools=[TOOL_DEF],
        messages=USER,
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert isinstance(block, ToolUseBlock)
    assert (block.id, block.name, block.input) == ("toolu_01", "kb_search", TOOL_INPUT)
    assert fake.seen[0].body["tools"] == [TOOL_DEF]

    # The agent runs the tool and sends the result back in the conversation.
    fake.script.message = None
    conversation = [
        *USER,
        {"role": "assistant", "content": [TOOL_BLOCK]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": "The VPN guide is at kb/it/vpn-onboarding.",
                }
            ],
        },
    ]
    status, answer = raw_create(
        flavor,
        passthrough.url,
        model=MODEL,
        max_tokens=256,
        tools=[TOOL_DEF],
        messages=conversation,
    )
    assert status == 200
    assert answer.stop_reason == "end_turn"
    assert fake.seen[-1].body["messages"] == conversation


def test_streamed_tool_use_final_message(passthrough: Env, flavor: str) -> None:
    assert passthrough.fake is not None
    passthrough.fake.script.events = tool_events()
    pieces, final = helper_stream(
        flavor, passthrough.url, model=MODEL, max_tokens=256, tools=[TOOL_DEF], messages=USER
    )
    assert pieces == []
    assert final.stop_reason == "tool_use"
    [block] = final.content
    assert isinstance(block, ToolUseBlock)
    assert (block.id, block.name, block.input) == ("toolu_01", "kb_search", TOOL_INPUT)


def test_raw_stream_releases_tool_input_as_one_delta_at_block_stop(
    passthrough: Env, flavor: str
) -> None:
    assert passthrough.fake is not None
    upstream = tool_events()
    assert sum(1 for _, d in upstream if d.get("delta", {}).get("type") == "input_json_delta") == 2
    passthrough.fake.script.events = upstream
    events = raw_events(
        flavor, passthrough.url, model=MODEL, max_tokens=256, tools=[TOOL_DEF], messages=USER
    )
    types = [event.type for event in events]
    assert types == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[1], events[2]
    assert start.content_block.type == "tool_use"
    assert start.content_block.id == "toolu_01"
    # Held until the upstream's block stopped, then released whole, just before the stop.
    assert delta.delta.type == "input_json_delta"
    assert json.loads(delta.delta.partial_json) == TOOL_INPUT
    assert events[3].index == delta.index == start.index


# --- 6. count_tokens and models.list -------------------------------------------------------


def test_count_tokens(env: Env, flavor: str) -> None:
    counted = sdk(flavor, env.url, "messages.count_tokens", model=MODEL, messages=USER)
    assert counted.input_tokens > 0
    body = {"model": MODEL, "messages": USER}
    assert counted.input_tokens == mock_upstream.estimate_tokens(body)
    if env.fake is not None:
        [seen] = env.fake.seen
        assert seen.path == "/v1/messages/count_tokens"
        assert seen.headers["x-api-key"] == ENTERPRISE_KEY


def test_models_list_is_exactly_the_role_models_in_order(env: Env, flavor: str) -> None:
    allowed = load_policy(env.stack.paths.policy_toml).roles["demo-agent"].models
    assert allowed, "demo-agent must allow some models"
    if flavor == "sync":
        with anthropic.Anthropic(base_url=env.url, api_key=DUMMY_KEY, max_retries=0) as c:
            ids = [model.id for model in c.models.list()]
    else:

        async def main() -> list[str]:
            async with anthropic.AsyncAnthropic(
                base_url=env.url, api_key=DUMMY_KEY, max_retries=0
            ) as c:
                return [model.id async for model in c.models.list()]

        ids = asyncio.run(main())
    assert ids == list(allowed)
    assert OUTSIDE_MODEL not in ids
    if env.fake is not None:
        # The gateway answers from policy; the upstream is never asked.
        assert env.fake.seen == []


# --- 7. typed exceptions -------------------------------------------------------------------


def test_model_outside_role_is_permission_denied(env: Env, flavor: str) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        sdk(flavor, env.url, "messages.create", model=OUTSIDE_MODEL, max_tokens=64, messages=USER)
    assert info.value.status_code == 403
    error = error_of(info.value)
    assert error["type"] == "permission_error"
    assert error["message"] == f"model '{OUTSIDE_MODEL}' is not allowed for this agent's role"
    assert error["message"] in str(info.value)
    # The envelope's request id is the one echoed in the header and written to the audit log.
    request_id = info.value.response.headers["x-agentzt-request-id"]
    assert isinstance(info.value.body, dict), info.value.body
    assert info.value.body["request_id"] == request_id
    audited = [
        json.loads(line)
        for line in env.stack.paths.audit_log.read_text().splitlines()
        if request_id in line
    ]
    assert [(e["action"], e["decision"], e["status"]) for e in audited] == [
        ("model.call", "deny", 403)
    ]
    assert audited[0]["resource"] == f"model:{OUTSIDE_MODEL}"
    if env.fake is not None:
        assert env.fake.seen == []


def test_max_tokens_over_role_limit_is_bad_request(env: Env, flavor: str) -> None:
    limit = load_policy(env.stack.paths.policy_toml).roles["demo-agent"].limits.max_output_tokens
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(flavor, env.url, "messages.create", model=MODEL, max_tokens=limit + 1, messages=USER)
    assert info.value.status_code == 400
    error = error_of(info.value)
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"max_tokens is above this agent's limit of {limit}"
    if env.fake is not None:
        assert env.fake.seen == []


def test_streamed_call_denied_before_streaming_raises_typed_error(env: Env, flavor: str) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        helper_stream(flavor, env.url, model=OUTSIDE_MODEL, max_tokens=64, messages=USER)
    assert info.value.status_code == 403
    assert error_of(info.value)["type"] == "permission_error"


def test_rate_limit_raises_rate_limit_error_with_retry_after(stack: Stack, flavor: str) -> None:
    enroll_agent(stack.paths, "agent-limited", "limited-agent")
    role = load_policy(stack.paths.policy_toml).roles["limited-agent"]
    per_minute = role.limits.requests_per_minute
    app = create_proxy_app(
        agent_id="agent-limited",
        key=read_private_key(stack.paths.identity_key("agent-limited")),
        gateway_url=stack.gateway_url,
    )
    server = BackgroundServer(app, bind("127.0.0.1", 0)).start()
    model = role.models[0]
    max_tokens = role.limits.max_output_tokens
    try:

        async def calls_async() -> None:
            async with anthropic.AsyncAnthropic(
                base_url=server.url, api_key=DUMMY_KEY, max_retries=0
            ) as client:
                for _ in range(per_minute):
                    message = await client.messages.create(
                        model=model, max_tokens=max_tokens, messages=USER
                    )
                    assert message.usage.output_tokens <= max_tokens
                await client.messages.create(model=model, max_tokens=max_tokens, messages=USER)

        with pytest.raises(anthropic.RateLimitError) as info:
            if flavor == "sync":
                with anthropic.Anthropic(
                    base_url=server.url, api_key=DUMMY_KEY, max_retries=0
                ) as client:
                    for _ in range(per_minute):
                        message = client.messages.create(
                            model=model, max_tokens=max_tokens, messages=USER
                        )
                        assert message.usage.output_tokens <= max_tokens
                    client.messages.create(model=model, max_tokens=max_tokens, messages=USER)
            else:
                asyncio.run(calls_async())
    finally:
        server.stop()
    exc = info.value
    assert exc.status_code == 429
    assert error_of(exc)["type"] == "rate_limit_error"
    assert error_of(exc)["message"] == "rate limit exceeded"
    retry_after = exc.response.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1


def _set_status(paths: Paths, agent_id: str, status: str) -> None:
    registry = tomllib.loads(paths.agents_toml.read_text())
    registry["agents"][agent_id]["status"] = status
    paths.agents_toml.write_text(tomli_w.dumps(registry))


def test_disabled_agent_gets_authentication_error(fresh_env: Env, flavor: str) -> None:
    env = fresh_env
    # A first call works, so the proxy holds a token the gateway issued while active.
    first = sdk(flavor, env.url, "messages.create", model=MODEL, max_tokens=64, messages=USER)
    assert first.stop_reason == "end_turn"
    _set_status(env.stack.paths, "agent-1", "disabled")
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(flavor, env.url, "messages.create", model=MODEL, max_tokens=64, messages=USER)
    assert info.value.status_code == 401
    error = error_of(info.value)
    assert error["type"] == "authentication_error"
    assert error["message"] == "authentication failed"
    if env.fake is not None:
        assert len(env.fake.seen) == 1


UPSTREAM_ERRORS = [
    pytest.param(529, "overloaded_error", None, anthropic.InternalServerError, id="529"),
    pytest.param(429, "rate_limit_error", "7", anthropic.RateLimitError, id="429"),
]


@pytest.mark.parametrize(("status", "error_type", "retry_after", "expected"), UPSTREAM_ERRORS)
@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_upstream_error_surfaces_as_sdk_exception(
    passthrough: Env,
    flavor: str,
    streamed: bool,
    status: int,
    error_type: str,
    retry_after: str | None,
    expected: type[anthropic.APIStatusError],
) -> None:
    fake = passthrough.fake
    assert fake is not None
    upstream_message = f"upstream says {error_type}, try later"
    fake.script.status = status
    fake.script.error_type = error_type
    fake.script.error_message = upstream_message
    fake.script.retry_after = retry_after
    with pytest.raises(expected) as info:
        if streamed:
            helper_stream(flavor, passthrough.url, model=MODEL, max_tokens=64, messages=USER)
        else:
            sdk(
                flavor,
                passthrough.url,
                "messages.create",
                model=MODEL,
                max_tokens=64,
                messages=USER,
            )
    exc = info.value
    assert isinstance(exc, anthropic.APIStatusError)
    assert exc.status_code == status
    error = error_of(exc)
    assert error["type"] == error_type
    assert error["message"] == upstream_message
    assert upstream_message in str(exc)
    if retry_after is not None:
        assert exc.response.headers.get("retry-after") == retry_after
    assert len(fake.seen) == 1


@pytest.mark.parametrize("helper", [False, True], ids=["create", "stream-helper"])
def test_upstream_error_event_mid_stream_raises(
    passthrough: Env, flavor: str, helper: bool
) -> None:
    """An ``error`` event after the stream began (the API's mid-stream overload) reaches the
    SDK, which raises with the upstream's error type and message."""
    assert passthrough.fake is not None
    events = mock_upstream.stream_events(mock_upstream.message({"model": MODEL, "messages": USER}))
    first_delta = next(i for i, (name, _) in enumerate(events) if name == "content_block_delta")
    error = {"type": "overloaded_error", "message": "Overloaded, mid-stream"}
    passthrough.fake.script.events = [
        *events[: first_delta + 1],
        ("error", {"type": "error", "error": error}),
    ]
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": USER}
    with pytest.raises(anthropic.APIStatusError) as info:
        if helper:
            helper_stream(flavor, passthrough.url, **kwargs)
        else:
            raw_events(flavor, passthrough.url, **kwargs)
    assert error_of(info.value) == error


# --- 8. credentials and headers ------------------------------------------------------------


def _exercise_everything(flavor: str, url: str, headers: dict[str, str]) -> None:
    """One of each call that reaches the upstream, with ``headers`` on every one."""
    kwargs: dict[str, Any] = {"model": MODEL, "messages": USER, "extra_headers": headers}
    sdk(flavor, url, "messages.create", max_tokens=64, **kwargs)
    raw_events(flavor, url, max_tokens=64, **kwargs)
    helper_stream(flavor, url, max_tokens=64, **kwargs)
    sdk(flavor, url, "messages.count_tokens", **kwargs)
    sdk(flavor, url, "models.list", extra_headers=headers)


def test_upstream_sees_only_the_enterprise_key_and_allowed_headers(
    passthrough: Env, flavor: str
) -> None:
    fake = passthrough.fake
    assert fake is not None
    headers = {"anthropic-beta": "tools-2024-04-04", "x-custom-agent": "1"}
    _exercise_everything(flavor, passthrough.url, headers)
    assert [seen.path for seen in fake.seen] == [
        "/v1/messages",
        "/v1/messages",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ]
    version = sdk_anthropic_version()
    for seen in fake.seen:
        names = {name.lower() for name in seen.headers}
        assert seen.headers["x-api-key"] == ENTERPRISE_KEY
        # The SDK's own version, not the gateway's fallback.
        assert seen.headers["anthropic-version"] == version
        assert seen.headers["anthropic-beta"] == "tools-2024-04-04"
        assert "x-custom-agent" not in names
        # Neither the proxy's bearer token nor the SDK's own headers travel on.
        assert "authorization" not in names
        assert not [name for name in names if name.startswith("x-stainless")]
        assert not [name for name in names if name.startswith("x-agentzt")]
        for value in seen.headers.values():
            assert DUMMY_KEY not in value
        assert DUMMY_KEY not in json.dumps(seen.body)


def test_anthropic_version_the_agent_sets_reaches_the_upstream(passthrough: Env) -> None:
    assert passthrough.fake is not None
    version = "2023-01-01"
    sdk(
        "sync",
        passthrough.url,
        "messages.create",
        model=MODEL,
        max_tokens=64,
        messages=USER,
        extra_headers={"anthropic-version": version},
    )
    [seen] = passthrough.fake.seen
    assert seen.headers["anthropic-version"] == version


def test_beta_resource_betas_reach_the_upstream(passthrough: Env, flavor: str) -> None:
    """``client.beta.messages`` (``?beta=true`` and a comma-joined anthropic-beta) works
    through the chain, and the beta models list is the role's."""
    assert passthrough.fake is not None
    betas = ["tools-2024-04-04", "token-efficient-tools-2025-02-19"]
    message = sdk(
        flavor,
        passthrough.url,
        "beta.messages.create",
        model=MODEL,
        max_tokens=256,
        messages=USER,
        betas=betas,
    )
    assert text_of(message) == expected_text(USER)
    counted = sdk(
        flavor,
        passthrough.url,
        "beta.messages.count_tokens",
        model=MODEL,
        messages=USER,
        betas=betas,
    )
    assert counted.input_tokens > 0
    assert [seen.path for seen in passthrough.fake.seen] == [
        "/v1/messages",
        "/v1/messages/count_tokens",
    ]
    for seen in passthrough.fake.seen:
        # The SDK may add its own beta (token counting) after the ones asked for.
        assert seen.headers["anthropic-beta"].split(",")[: len(betas)] == betas
        assert seen.headers["x-api-key"] == ENTERPRISE_KEY
    page = sdk(flavor, passthrough.url, "beta.models.list")
    allowed = load_policy(passthrough.stack.paths.policy_toml).roles["demo-agent"].models
    assert [model.id for model in page.data] == list(allowed)


def test_bearer_auth_token_is_not_forwarded(passthrough: Env) -> None:
    assert passthrough.fake is not None
    with anthropic.Anthropic(
        base_url=passthrough.url, auth_token=DUMMY_KEY, max_retries=0
    ) as client:
        message = client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert message.stop_reason == "end_turn"
    [seen] = passthrough.fake.seen
    assert seen.headers["x-api-key"] == ENTERPRISE_KEY
    assert "authorization" not in {name.lower() for name in seen.headers}
    assert DUMMY_KEY not in json.dumps(seen.headers)
    assert DUMMY_KEY not in passthrough.stack.paths.audit_log.read_text()


def test_audit_log_holds_neither_key(env: Env, flavor: str) -> None:
    _exercise_everything(
        flavor, env.url, {"anthropic-beta": "tools-2024-04-04", "x-custom-agent": "1"}
    )
    # A denied call and an upstream error are audited too.
    with pytest.raises(anthropic.PermissionDeniedError):
        sdk(flavor, env.url, "messages.create", model=OUTSIDE_MODEL, max_tokens=64, messages=USER)
    if env.fake is not None:
        env.fake.script.status = 529
        env.fake.script.error_type = "overloaded_error"
        with pytest.raises(anthropic.APIStatusError):
            sdk(flavor, env.url, "messages.create", model=MODEL, max_tokens=64, messages=USER)
    log = env.stack.paths.audit_log.read_text()
    assert "model.call" in log
    assert DUMMY_KEY not in log
    assert ENTERPRISE_KEY not in log
    assert ENTERPRISE_KEY[len("sk-ant-") :] not in log
