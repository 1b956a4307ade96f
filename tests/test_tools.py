"""The toolbox: listing, schema validation, tool checks, and each built-in tool's output."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from jsonschema.exceptions import SchemaError

import agentzt.tools
from agentzt.errors import NotFoundError, ToolParameterError
from agentzt.tools import (
    FAKE_LEAKED_KEY,
    INJECTION_PAYLOAD,
    Tool,
    ToolBox,
    default_toolbox,
)

CANARY = "CANARY-7f3a9c"
BUILT_INS = ("db.query", "email.send", "kb.search", "web.fetch")


@pytest.fixture(scope="module")
def toolbox() -> ToolBox:
    return default_toolbox()


def test_public_api() -> None:
    assert set(agentzt.tools.__all__) == {
        "DB_QUERY",
        "EMAIL_SEND",
        "FAKE_LEAKED_KEY",
        "INJECTION_PAYLOAD",
        "KB_SEARCH",
        "WEB_FETCH",
        "Tool",
        "ToolBox",
        "default_toolbox",
        "read_only_statement",
        "run_read_only",
    }
    for name in agentzt.tools.__all__:
        assert getattr(agentzt.tools, name) is not None


def test_names_lists_the_built_ins(toolbox: ToolBox) -> None:
    assert toolbox.names() == BUILT_INS


def _string_schemas(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if schema.get("type") == "string":
        yield schema
    for child in schema.get("properties", {}).values():
        yield from _string_schemas(child)


@pytest.mark.parametrize("name", BUILT_INS)
def test_describe_returns_the_listing_shape(toolbox: ToolBox, name: str) -> None:
    entry = toolbox.describe(name)
    assert set(entry) == {"name", "description", "input_schema"}
    assert entry["name"] == name
    assert entry["description"]
    schema = entry["input_schema"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"]
    assert set(schema["required"]) <= set(schema["properties"])
    strings = list(_string_schemas(schema))
    assert strings
    assert all(isinstance(s.get("maxLength"), int) for s in strings)
    json.dumps(entry)


def test_describe_returns_a_copy(toolbox: ToolBox) -> None:
    toolbox.describe("kb.search")["input_schema"]["properties"].clear()
    assert "query" in toolbox.describe("kb.search")["input_schema"]["properties"]


@pytest.mark.parametrize("method", ["describe", "validate", "run"])
def test_unknown_tool_is_not_found(toolbox: ToolBox, method: str) -> None:
    name = f"shell.exec-{CANARY}"
    with pytest.raises(NotFoundError) as caught:
        if method == "describe":
            toolbox.describe(name)
        elif method == "validate":
            toolbox.validate(name, {})
        else:
            toolbox.run(name, {})
    assert caught.value.detail == "unknown tool"
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    "arguments",
    [[], "sql", None, 3, [{"sql": "SELECT 1"}]],
    ids=["list", "string", "null", "number", "list_of_object"],
)
def test_arguments_must_be_an_object(toolbox: ToolBox, arguments: object) -> None:
    with pytest.raises(ToolParameterError, match=r"^arguments: type$"):
        toolbox.validate("db.query", arguments)


LONG = "x" * 10_001

SCHEMA_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("kb_missing_query", "kb.search", {}, "arguments.query: required"),
    ("kb_query_wrong_type", "kb.search", {"query": 42}, "arguments.query: type"),
    ("kb_query_empty", "kb.search", {"query": ""}, "arguments.query: minLength"),
    ("kb_query_too_long", "kb.search", {"query": "q" * 501}, "arguments.query: maxLength"),
    ("kb_top_k_zero", "kb.search", {"query": "vpn", "top_k": 0}, "arguments.top_k: minimum"),
    ("kb_top_k_too_big", "kb.search", {"query": "vpn", "top_k": 11}, "arguments.top_k: maximum"),
    ("kb_top_k_string", "kb.search", {"query": "vpn", "top_k": "3"}, "arguments.top_k: type"),
    ("kb_top_k_bool", "kb.search", {"query": "vpn", "top_k": True}, "arguments.top_k: type"),
    ("kb_top_k_fraction", "kb.search", {"query": "vpn", "top_k": 2.5}, "arguments.top_k: type"),
    ("kb_extra", "kb.search", {"query": "vpn", "k": 1}, "arguments: additionalProperties"),
    ("db_missing_sql", "db.query", {"max_rows": 5}, "arguments.sql: required"),
    ("db_sql_wrong_type", "db.query", {"sql": ["SELECT 1"]}, "arguments.sql: type"),
    ("db_sql_too_long", "db.query", {"sql": "S" * 4001}, "arguments.sql: maxLength"),
    ("db_max_rows_zero", "db.query", {"sql": "SELECT 1", "max_rows": 0}, "max_rows: minimum"),
    ("db_max_rows_big", "db.query", {"sql": "SELECT 1", "max_rows": 101}, "max_rows: maximum"),
    ("db_extra", "db.query", {"sql": "SELECT 1", "db": "x"}, "arguments: additionalProperties"),
    ("web_missing_url", "web.fetch", {}, "arguments.url: required"),
    ("web_url_wrong_type", "web.fetch", {"url": {"href": "x"}}, "arguments.url: type"),
    ("web_url_too_long", "web.fetch", {"url": "https://a.example/" + "p" * 2040}, "maxLength"),
    ("web_file_url", "web.fetch", {"url": "file:///etc/passwd"}, "http or https URL"),
    ("web_javascript_url", "web.fetch", {"url": "javascript:alert(1)"}, "http or https URL"),
    ("web_ftp_url", "web.fetch", {"url": "ftp://files.example/x"}, "http or https URL"),
    ("web_no_host", "web.fetch", {"url": "https:///path"}, "http or https URL"),
    ("web_relative", "web.fetch", {"url": "/etc/passwd"}, "http or https URL"),
    ("web_space", "web.fetch", {"url": "http://exa mple.com/"}, "http or https URL"),
    ("web_newline", "web.fetch", {"url": "http://example.com/\r\nX: y"}, "http or https URL"),
    ("web_bad_port", "web.fetch", {"url": "http://example.com:99999/"}, "http or https URL"),
    ("web_credentials", "web.fetch", {"url": "https://u:p@example.com/"}, "credentials"),
    ("web_extra", "web.fetch", {"url": "https://a.example", "m": 1}, "additionalProperties"),
    (
        "email_missing_subject",
        "email.send",
        {"to": "bob@example.com", "body": "hi"},
        "arguments.subject: required",
    ),
    (
        "email_not_an_address",
        "email.send",
        {"to": "not-an-email", "subject": "s", "body": "b"},
        "arguments.to: format",
    ),
    (
        "email_no_domain_dot",
        "email.send",
        {"to": "bob@localhost", "subject": "s", "body": "b"},
        "arguments.to: must be a single plain email address",
    ),
    (
        "email_header_injection",
        "email.send",
        {"to": "bob@example.com\r\nBcc: eve@example.com", "subject": "s", "body": "b"},
        "arguments.to: must be a single plain email address",
    ),
    (
        "email_two_recipients",
        "email.send",
        {"to": "bob@example.com,eve@example.com", "subject": "s", "body": "b"},
        "arguments.to: must be a single plain email address",
    ),
    (
        "email_to_too_long",
        "email.send",
        {"to": "b" * 250 + "@example.com", "subject": "s", "body": "b"},
        "arguments.to: maxLength",
    ),
    (
        "email_subject_newline",
        "email.send",
        {"to": "bob@example.com", "subject": "hi\nBcc: eve@example.com", "body": "b"},
        "arguments.subject: must be a single line",
    ),
    (
        "email_subject_empty",
        "email.send",
        {"to": "bob@example.com", "subject": "", "body": "b"},
        "arguments.subject: minLength",
    ),
    (
        "email_body_too_long",
        "email.send",
        {"to": "bob@example.com", "subject": "s", "body": LONG},
        "arguments.body: maxLength",
    ),
    (
        "email_extra",
        "email.send",
        {"to": "bob@example.com", "subject": "s", "body": "b", "cc": "eve@example.com"},
        "arguments: additionalProperties",
    ),
]


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [case[1:] for case in SCHEMA_CASES],
    ids=[case[0] for case in SCHEMA_CASES],
)
def test_invalid_arguments_are_rejected(
    toolbox: ToolBox, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ToolParameterError) as caught:
        toolbox.validate(tool, arguments)
    assert expected in caught.value.detail
    # The caller is told what failed: the detail is built never to carry a value.
    assert caught.value.message == caught.value.detail


CANARY_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("too_long", "kb.search", {"query": CANARY * 50}),
    ("wrong_type", "kb.search", {"query": [CANARY]}),
    ("extra_key", "kb.search", {"query": "vpn", CANARY: CANARY}),
    ("bad_format", "email.send", {"to": CANARY, "subject": "s", "body": "b"}),
    ("bad_address", "email.send", {"to": f"{CANARY}@x", "subject": "s", "body": "b"}),
    ("bad_scheme", "web.fetch", {"url": f"file:///{CANARY}"}),
    ("write_sql", "db.query", {"sql": f"DELETE FROM {CANARY}"}),  # noqa: S608 (a canary)
    ("bad_function", "db.query", {"sql": f"SELECT {CANARY.replace('-', '_')}(1)"}),
    ("garbage_sql", "db.query", {"sql": f"{CANARY} (("}),
    ("bad_max_rows", "db.query", {"sql": "SELECT 1", "max_rows": CANARY}),
]


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [case[1:] for case in CANARY_CASES],
    ids=[case[0] for case in CANARY_CASES],
)
def test_error_never_echoes_the_value(
    toolbox: ToolBox, tool: str, arguments: dict[str, Any]
) -> None:
    with pytest.raises(ToolParameterError) as caught:
        toolbox.validate(tool, arguments)
    exc = caught.value
    for text in (str(exc), exc.detail, exc.message):
        assert CANARY not in text
        assert CANARY.replace("-", "_") not in text
        assert CANARY.lower() not in text.lower()


def test_validate_fills_defaults_and_returns_a_new_mapping(toolbox: ToolBox) -> None:
    submitted = {"query": "vpn"}
    assert toolbox.validate("kb.search", submitted) == {"query": "vpn", "top_k": 3}
    assert submitted == {"query": "vpn"}
    assert toolbox.validate("db.query", {"sql": "SELECT 1"}) == {"sql": "SELECT 1", "max_rows": 20}
    assert toolbox.validate("kb.search", {"query": "vpn", "top_k": 7})["top_k"] == 7


def _echo(arguments: Mapping[str, Any]) -> Any:
    return dict(arguments)


def test_toolbox_checks_schemas_at_build_time() -> None:
    broken = Tool("t.broken", "broken", {"type": "object", "maxProperties": -1}, _echo)
    with pytest.raises(SchemaError):
        ToolBox({"t.broken": broken})


def test_toolbox_refuses_a_misnamed_registration() -> None:
    tool = Tool("t.real", "d", {"type": "object"}, _echo)
    with pytest.raises(ValueError, match="named"):
        ToolBox({"t.alias": tool})


def test_toolbox_keeps_its_own_copy_of_the_schema() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 3}},
        "required": ["a"],
        "additionalProperties": False,
    }
    box = ToolBox({"t.copy": Tool("t.copy", "d", schema, _echo)})
    schema["properties"]["a"]["maxLength"] = 1000
    with pytest.raises(ToolParameterError, match="maxLength"):
        box.validate("t.copy", {"a": "long"})
    assert box.describe("t.copy")["input_schema"]["properties"]["a"]["maxLength"] == 3


def test_check_runs_after_the_schema_and_run_calls_the_handler() -> None:
    seen: list[Mapping[str, Any]] = []

    def check(arguments: Mapping[str, Any]) -> None:
        seen.append(arguments)
        if arguments["a"] == "bad":
            raise ToolParameterError("arguments.a: not allowed")

    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 3}},
        "required": ["a"],
        "additionalProperties": False,
    }
    box = ToolBox({"t.check": Tool("t.check", "d", schema, _echo, check)})
    with pytest.raises(ToolParameterError, match="maxLength"):
        box.validate("t.check", {"a": "toolong"})
    assert seen == []  # the schema failed first; the check never saw unvalidated input
    with pytest.raises(ToolParameterError, match="not allowed"):
        box.validate("t.check", {"a": "bad"})
    assert box.run("t.check", box.validate("t.check", {"a": "ok"})) == {"a": "ok"}
    assert len(seen) == 2


def _call(toolbox: ToolBox, name: str, arguments: dict[str, Any]) -> Any:
    output = toolbox.run(name, toolbox.validate(name, arguments))
    json.dumps(output)  # every tool's output is JSON
    return output


def test_kb_search_finds_the_relevant_article(toolbox: ToolBox) -> None:
    output = _call(toolbox, "kb.search", {"query": "How do I connect to the VPN?"})
    results = output["results"]
    assert results[0]["id"] == "KB-001"
    assert set(results[0]) == {"id", "title", "snippet", "score"}
    assert "VPN" in results[0]["snippet"]
    assert len(results) <= 3
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s <= 1 for s in scores)


def test_kb_search_is_deterministic(toolbox: ToolBox) -> None:
    arguments = {"query": "lost laptop security key password", "top_k": 10}
    first = _call(toolbox, "kb.search", arguments)
    assert all(_call(toolbox, "kb.search", arguments) == first for _ in range(3))
    assert len(first["results"]) > 3
    assert len(_call(toolbox, "kb.search", {**arguments, "top_k": 2})["results"]) == 2


@pytest.mark.parametrize(
    "query", ["zebra quantum", "the and of", "???"], ids=["no_match", "stopwords", "punctuation"]
)
def test_kb_search_without_matches_is_empty(toolbox: ToolBox, query: str) -> None:
    assert _call(toolbox, "kb.search", {"query": query}) == {"results": []}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tool tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
def test_web_fetch_returns_the_deliberately_hostile_page(toolbox: ToolBox) -> None:
    url = "https://partners.example.com/notes?x=1"
    output = _call(toolbox, "web.fetch", {"url": url})
    assert output["url"] == url
    assert output["status"] == 200
    assert output["content_type"] == "text/html"
    assert FAKE_LEAKED_KEY in output["body"]
    assert INJECTION_PAYLOAD in output["body"]
    assert "Ignore all previous instructions" in INJECTION_PAYLOAD
    assert "~/.ssh" in INJECTION_PAYLOAD


def test_fake_key_is_key_shaped_and_obviously_fake() -> None:
    assert re.fullmatch(r"sk-ant-api03-[A-Za-z0-9_-]{60}", FAKE_LEAKED_KEY)
    assert "FAKE" in FAKE_LEAKED_KEY


@pytest.mark.usefixtures("no_network")
def test_email_send_is_simulated_and_deterministic(toolbox: ToolBox) -> None:
    message = {"to": "bob@example.com", "subject": "Hello", "body": "Quarterly report."}
    first = _call(toolbox, "email.send", message)
    assert first["status"] == "queued"
    assert first["to"] == "bob@example.com"
    assert re.fullmatch(r"<[0-9a-f]{32}@agentzt\.invalid>", first["message_id"])
    assert _call(toolbox, "email.send", dict(message)) == first
    other = _call(toolbox, "email.send", {**message, "body": "Different."})
    assert other["message_id"] != first["message_id"]


@pytest.mark.parametrize(
    "url",
    ["http://example.com", "HTTPS://Example.COM:8443/a/b?c=d#e", "http://[::1]:8080/"],
    ids=["http", "https_upper_port", "ipv6"],
)
def test_web_fetch_accepts_http_urls(toolbox: ToolBox, url: str) -> None:
    assert toolbox.validate("web.fetch", {"url": url}) == {"url": url}
