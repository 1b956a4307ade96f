"""Streamed answers: the stream redactor, the SSE parser and the stream guard.

The claim under test: however a text is split into deltas, what a ``StreamRedactor``
releases (every ``feed`` plus ``flush``) is exactly ``Redactor().redact_text(text)[0]``,
so no part of a secret leaves early, while ordinary prose waits at most one word.

Every sample secret is built here from a seeded generator and spells FAKE; none is a real
credential.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentzt import sse
from agentzt.errors import AuditWriteError, UpstreamError
from agentzt.gateway import mock_upstream
from agentzt.gateway.stream_guard import StreamGuard
from agentzt.guardrails.secrets import Redactor
from agentzt.guardrails.stream_redact import StreamRedactor, hold_from

BASE62 = string.ascii_letters + string.digits
B64URL = BASE62 + "-_"
B64 = BASE62 + "+/"
UPPER32 = string.ascii_uppercase + "234567"

REDACTOR = Redactor()


def filler(alphabet: str, n: int, seed: int) -> str:
    """``n`` characters from ``alphabet``, the same on every run."""
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


def batch(text: str) -> str:
    return REDACTOR.redact_text(text)[0]


def stream(deltas: Iterable[str]) -> tuple[str, StreamRedactor]:
    """Feed ``deltas`` one by one; return everything released and the redactor."""
    redactor = StreamRedactor(REDACTOR)
    released = [redactor.feed(delta) for delta in deltas]
    released.append(redactor.flush())
    return "".join(released), redactor


def fragments(secret: str, width: int = 8) -> list[str]:
    """Every ``width``-character window of ``secret``: none may reach the agent."""
    return [secret[i : i + width] for i in range(len(secret) - width + 1)]


def assert_no_fragment(out: str, secret: str) -> None:
    leaked = [piece for piece in fragments(secret) if piece in out]
    assert not leaked, f"part of the secret was released: {leaked[:3]}"


# ---------------------------------------------------------------------------------------
# Samples: a snippet as a model would write it, the part the batch redactor replaces,
# and the random part that must never be released.


@dataclass(frozen=True)
class Sample:
    id: str
    kind: str
    snippet: str
    secret: str  # the exact text the batch Redactor replaces with the marker
    distinct: str  # seeded random part of the secret

    @property
    def redacted(self) -> str:
        return self.snippet.replace(self.secret, f"[REDACTED:{self.kind}]")


def token_sample(
    id_: str, kind: str, prefix: str, random_part: str, template: str = "{}"
) -> Sample:
    secret = prefix + random_part
    return Sample(id_, kind, template.format(secret), secret, random_part)


PEM_BODY = [filler(B64, 64, seed) for seed in range(300, 306)]
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(PEM_BODY)
    + "\nFAKE\n-----END RSA PRIVATE KEY-----"
)
GENERIC = "FAKE" + filler(BASE62 + "!@#%^*", 20, 3)
GENERIC_BARE = "FAKE" + filler(BASE62, 20, 4)
PASSPHRASE = "FAKE horse battery staple 42"
JWT_RANDOM = filler(B64URL, 43, 2)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # {"alg":"HS256","typ":"JWT"}
    ".eyJzdWIiOiJmYWtlLXVzZXIiLCJub3RlIjoiRkFLRSJ9."  # {"sub":"fake-user","note":"FAKE"}
    + JWT_RANDOM
)

SAMPLES = [
    token_sample("anthropic", "anthropic-key", "sk-ant-api03-FAKE", filler(B64URL, 89, 1) + "AA"),
    token_sample("openai-proj", "openai-key", "sk-proj-FAKE0", filler(B64URL, 60, 7)),
    token_sample("stripe", "stripe-key", "sk_live_FAKE", filler(BASE62, 20, 27)),
    token_sample("aws-access", "aws-access-key", "AKIAFAKE", filler(UPPER32, 12, 9)),
    token_sample(
        "aws-secret-ini",
        "aws-secret-key",
        "FAKE",
        filler(B64, 36, 11),
        "aws_secret_access_key = {}",
    ),
    token_sample("github-ghp", "github-token", "ghp_FAKE", filler(BASE62, 32, 13)),
    token_sample(
        "github-pat",
        "github-token",
        "github_pat_11FAKE",
        filler(BASE62, 16, 18) + "_" + filler(BASE62, 59, 19),
    ),
    token_sample(
        "slack-webhook",
        "slack-webhook",
        "services/T0FAKE000/B0FAKE000/",
        filler(BASE62, 24, 25),
        "POST https://hooks.slack.com/{}",
    ),
    token_sample(
        "slack-token", "slack-token", "xoxb-000000000000-0000000000000-FAKE", filler(BASE62, 20, 20)
    ),
    token_sample("google", "google-api-key", "AIzaFAKE", filler(B64URL, 31, 26)),
    Sample("jwt", "jwt", JWT, JWT, JWT_RANDOM),
    token_sample(
        "bearer",
        "bearer-token",
        "FAKE",
        filler(BASE62 + "-._~", 36, 31),
        "Authorization: Bearer {}",
    ),
    Sample("generic-quoted", "generic-secret", f'password = "{GENERIC}"', GENERIC, GENERIC[4:]),
    Sample(
        "generic-bare-env",
        "generic-secret",
        f"export DB_PASSWORD={GENERIC_BARE}",
        GENERIC_BARE,
        GENERIC_BARE[4:],
    ),
    Sample(
        "generic-passphrase",
        "generic-secret",
        f'client_secret: "{PASSPHRASE}"',
        PASSPHRASE,
        "horse battery staple",
    ),
    Sample("private-key", "private-key", PEM, PEM, PEM_BODY[2]),
]


def _json_context(snippet: str) -> str:
    # A tool result quoted back by the model: the snippet JSON-escaped inside a string.
    return '{"tool": "grep", "match": ' + json.dumps(snippet) + ', "line": 12}'


CONTEXTS: dict[str, Callable[[str], str]] = {
    "start": lambda s: f"{s} was found in the deploy log.",
    "middle": lambda s: f"I found this value: {s} in the old deploy script, rotate it now.",
    "end": lambda s: f"The leaked credential is {s}",
    "json": _json_context,
    "after-newline": lambda s: f"Here it is:\n{s}\nKeep it safe.",
}

CASES = [
    pytest.param(sample, context, id=f"{sample.id}-{context}")
    for sample in SAMPLES
    for context in CONTEXTS
]


def case_texts(sample: Sample, context: str) -> tuple[str, str, str]:
    """(full text, the expected batch output, the distinctive part as it appears)."""
    wrap = CONTEXTS[context]
    text = wrap(sample.snippet)
    expected = wrap(sample.redacted)
    distinct = json.dumps(sample.distinct)[1:-1] if context == "json" else sample.distinct
    return text, expected, distinct


def test_samples_cover_at_least_ten_kinds() -> None:
    assert len({sample.kind for sample in SAMPLES}) >= 10


@pytest.mark.parametrize(("sample", "context"), CASES)
def test_batch_redacts_every_sample(sample: Sample, context: str) -> None:
    text, expected, distinct = case_texts(sample, context)
    out, counts = REDACTOR.redact_text(text)
    assert distinct in text  # the table itself is sound
    assert out == expected
    assert counts == Counter({sample.kind: 1})
    assert_no_fragment(out, distinct)


@pytest.mark.parametrize(("sample", "context"), CASES)
def test_two_deltas_split_at_every_offset_equal_batch(sample: Sample, context: str) -> None:
    text, expected, distinct = case_texts(sample, context)
    assert batch(text) == expected
    for cut in range(len(text) + 1):
        out, redactor = stream([text[:cut], text[cut:]])
        assert out == expected, f"split at {cut}: {text[:cut]!r} | {text[cut:]!r}"
        assert redactor.counts == Counter({sample.kind: 1}), f"split at {cut}"
        assert_no_fragment(out, distinct)


@pytest.mark.parametrize(("sample", "context"), CASES)
def test_one_character_at_a_time_equals_batch(sample: Sample, context: str) -> None:
    text, expected, distinct = case_texts(sample, context)
    redactor = StreamRedactor(REDACTOR)
    released = ""
    for ch in text:
        released += redactor.feed(ch)
        # At no point has any part of the secret been released.
        assert_no_fragment(released, distinct)
    released += redactor.flush()
    assert released == expected
    assert redactor.counts == Counter({sample.kind: 1})


def test_released_text_is_always_a_prefix_of_the_batch_output() -> None:
    # Text released early is final: it never has to be taken back.
    text = " ".join(CONTEXTS["middle"](sample.snippet) for sample in SAMPLES)
    expected = batch(text)
    redactor = StreamRedactor(REDACTOR)
    released = ""
    for i in range(0, len(text), 5):
        released += redactor.feed(text[i : i + 5])
        assert expected.startswith(released)
    released += redactor.flush()
    assert released == expected


def test_hold_from_of_empty_and_plain_text() -> None:
    redactor = Redactor()
    assert hold_from("", redactor) == 0
    assert hold_from("plain words end here. ", redactor) == len("plain words end here. ")
    assert hold_from("plain words end her", redactor) == len("plain words end ")


# ---------------------------------------------------------------------------------------
# Property: random text of prose, secrets, punctuation, newlines and JSON, split anywhere.
#
# Every element is followed by a separator that ends in whitespace or in a character no
# bare value or token contains, and an unterminated PEM block is left out: the known
# failures around those shapes have their own tests below.

PROSE_WORDS = [
    "The",
    "quick",
    "report",
    "was",
    "uploaded",
    "at",
    "noon",
    "token",
    "password",
    "secret",
    "key",
    "api",
    "bearer",
    "Bearer",
    "value",
    "is",
    "-----",
    "END",
    "=",
    ":",
    "naïve",
    "Zürich",
    "東京",
]
PUNCTUATION = ['"', "'", "{", "}", "[", "]", "(", ")", ",", ".", "!", "?", "\\", "/", "-"]
NEWLINES = ["\n", "\r\n", "\n\n"]
JSON_FRAGMENTS = [
    '{"id": 42, "ok": true}',
    '"count": 3',
    '{"query": "vpn", "limit": 10}',
    "[1, 2, 3]",
    '{"note": null}',
]
SEPARATORS = [" ", "\n", ", ", " (", "; ", "\r\n", "! ", ". ", "<", "\t"]
ELEMENTS = (
    PROSE_WORDS
    + PUNCTUATION
    + NEWLINES
    + JSON_FRAGMENTS
    + [sample.snippet for sample in SAMPLES]
    + [_json_context(SAMPLES[0].snippet), _json_context(PEM)]
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_split_of_mixed_text_equals_batch(data: st.DataObject) -> None:
    parts = data.draw(
        st.lists(st.tuples(st.sampled_from(ELEMENTS), st.sampled_from(SEPARATORS)), max_size=30)
    )
    text = "".join(element + separator for element, separator in parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    out, redactor = stream(deltas)
    expected, counts = REDACTOR.redact_text(text)
    assert out == expected
    assert redactor.counts == counts


# ---------------------------------------------------------------------------------------
# Latency: prose goes out about one word late.

PROSE = (
    "The quick brown fox jumps over the lazy dog while the shipment leaves Rotterdam on "
    "Tuesday, and tracking updates follow every fifteen minutes until it reaches the port. "
    "Partners should check that their certificates have not expired, then retry with a "
    "short back-off; support answers within one business day."
)


def test_words_with_trailing_space_are_released_at_once() -> None:
    redactor = StreamRedactor(REDACTOR)
    released = ""
    sent = ""
    for word in ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]:
        sent += word + " "
        released += redactor.feed(word + " ")
        assert redactor.waiting <= len(word)
        # The space after a word proves it complete: nothing waits at all.
        assert released == sent
        assert redactor.waiting == 0
    assert redactor.flush() == ""


def test_long_paragraph_is_never_held_more_than_one_word() -> None:
    words = PROSE.split(" ")
    # As a model streams it: each delta is a space and the next word.
    deltas = [words[0]] + [" " + word for word in words[1:]]
    redactor = StreamRedactor(REDACTOR)
    released = ""
    sent = ""
    for delta in deltas:
        sent += delta
        released += redactor.feed(delta)
        last_word = delta.strip()
        assert redactor.waiting <= len(last_word), f"held {sent[len(released) :]!r}"
        assert sent.startswith(released)
        assert sent[len(released) :] in ("", last_word)
    released += redactor.flush()
    assert released == PROSE


def test_secret_named_word_is_held_then_released_by_a_plain_continuation() -> None:
    redactor = StreamRedactor(REDACTOR)
    released = redactor.feed("Please rotate the token")
    assert released == "Please rotate the "
    released += redactor.feed(" count is 5 ")
    assert released == "Please rotate the token count is 5 "
    assert redactor.waiting == 0
    # With the space already there, "token " could still become "token = <value>": it
    # waits past its word, until the continuation shows it is not an assignment.
    redactor = StreamRedactor(REDACTOR)
    released = redactor.feed("Please rotate the ") + redactor.feed("token ")
    assert released == "Please rotate the "
    assert redactor.waiting == len("token ")
    released += redactor.feed("count is 5 ")
    assert released == "Please rotate the token count is 5 "
    assert redactor.waiting == 0
    assert redactor.flush() == ""


def test_open_assignment_is_held_until_its_quote_closes() -> None:
    redactor = StreamRedactor(REDACTOR)
    released = ""
    for delta in ["config: ", "password", " = ", '"', GENERIC[:9], GENERIC[9:]]:
        released += redactor.feed(delta)
        assert released == "config: "
    released += redactor.feed('" and more text ')
    assert released == 'config: password = "[REDACTED:generic-secret]" and more text '
    assert redactor.waiting == 0


# ---------------------------------------------------------------------------------------
# A private key spans lines: nothing of it goes out before its END line.


def test_private_key_body_waits_for_end_line() -> None:
    redactor = StreamRedactor(REDACTOR)
    released = redactor.feed("Here is the file:\n")
    assert released == "Here is the file:\n"
    for delta in ["-----BEG", "IN RSA PRIVATE ", "KEY-----\n"]:
        released += redactor.feed(delta)
    for line in PEM_BODY:
        for i in range(0, len(line), 16):
            released += redactor.feed(line[i : i + 16])
        released += redactor.feed("\n")
        assert released == "Here is the file:\n"
    released += redactor.feed("FAKE\n-----END RSA PRIV")
    released += redactor.feed("ATE KEY-----")
    released += redactor.feed("\nDone. Keep it ")
    released += redactor.feed("safe. ")
    assert released == "Here is the file:\n[REDACTED:private-key]\nDone. Keep it safe. "
    assert redactor.waiting == 0
    assert redactor.flush() == ""
    assert redactor.counts == Counter({"private-key": 1})


def test_private_key_without_end_redacts_to_the_end_at_flush() -> None:
    text = "key:\n-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_BODY[:3]) + "\nand then"
    assert batch(text) == "key:\n[REDACTED:private-key]"  # the batch rule: fail closed
    redactor = StreamRedactor(REDACTOR)
    released = ""
    for i in range(0, len(text), 7):
        released += redactor.feed(text[i : i + 7])
        assert released == "key:\n"
    released += redactor.flush()
    assert released == batch(text)
    for line in PEM_BODY[:3]:
        assert_no_fragment(released, line)


# ---------------------------------------------------------------------------------------
# Known failures of the streamed == batch claim (each a leak or a different redaction).


def _word_by_word(text: str) -> list[str]:
    words = text.split(" ")
    return [word + " " for word in words[:-1]] + [words[-1]]


def test_token_ending_in_a_key_name_is_not_split_by_the_hold() -> None:
    # An AWS access key whose last three characters spell PWD (a secret key name).
    key = "AKIAFAKE" + filler(UPPER32, 9, 60) + "PWD"
    text = f"use {key} for the upload"
    assert batch(text) == "use [REDACTED:aws-access-key] for the upload"
    out, _ = stream(_word_by_word(text))
    assert key not in out
    assert out == batch(text)


def test_bare_password_ending_in_a_key_name_is_not_split_by_the_hold() -> None:
    text = "The db password=K9!mSecret and the user is admin"
    assert batch(text) == "The db password=[REDACTED:generic-secret] and the user is admin"
    out, _ = stream(_word_by_word(text))
    assert "K9!m" not in out
    assert out == batch(text)


def test_camel_case_aws_secret_key_keeps_its_type() -> None:
    value = "FAKE" + filler(B64, 36, 12)
    text = f'{{"SecretAccessKey": "{value}"}}'
    expected, counts = REDACTOR.redact_text(text)
    assert expected == '{"SecretAccessKey": "[REDACTED:aws-secret-key]"}'
    out, redactor = stream([text[:25], text[25:]])
    assert out == expected
    assert redactor.counts == counts


def test_key_name_with_a_kelvin_sign_is_held_like_batch_sees_it() -> None:
    # Batch lowercases with str.lower(), which maps U+212A KELVIN SIGN to ASCII "k", so
    # "api_\u212aey" is a secret-named key there; the stream's ASCII-only fold misses it.
    text = 'creds: api_\u212aey: "Zq8k 9xR4vB7nQ" done'
    assert batch(text) == 'creds: api_\u212aey: "[REDACTED:generic-secret]" done'
    out, _ = stream(_word_by_word(text))
    assert "9xR4vB7nQ" not in out
    assert out == batch(text)


def test_long_bare_value_is_held_past_the_lookback() -> None:
    value = "FAKE" + filler(BASE62 + "!@#%", 396, 3)
    text = f"password={value} end"
    assert batch(text) == "password=[REDACTED:generic-secret] end"
    out, _ = stream(text)  # one character a delta
    assert value[-40:] not in out
    assert out == batch(text)


def test_unterminated_private_key_before_another_pem_block_stays_redacted() -> None:
    text = (
        "-----BEGIN RSA PRIVATE KEY-----\n"
        + PEM_BODY[0]
        + "\n-----BEGIN CERTIFICATE-----\nMIICFAKE\n-----END CERTIFICATE-----\n"
        + PEM_BODY[1]
        + "\n"
    )
    assert batch(text) == "[REDACTED:private-key]"  # BEGIN without its END: to the end
    out, _ = stream(text.splitlines(keepends=True))
    assert PEM_BODY[1] not in out
    assert out == batch(text)


@pytest.mark.parametrize(
    "text",
    [
        'token: password = "Zq8kL2pW9xR4vB7n"',
        "secret: password: Zq8kL2pW9xR4vB7n",
        'token: "set your password=Zq8kL2pW9xR4vB7n"',
    ],
    ids=["rejected-bare-value", "key-name-as-value", "placeholder-quoted-value"],
)
def test_assignment_inside_a_rejected_value_is_still_redacted(text: str) -> None:
    # Found by streaming: the stream redacts "password ... Zq8k..." on its own, the batch
    # Redactor does not, since its rejected first candidate consumed the second assignment.
    assert batch("password = Zq8kL2pW9xR4vB7n") == "password = [REDACTED:generic-secret]"
    out, counts = REDACTOR.redact_text(text)
    assert "Zq8kL2pW9xR4vB7n" not in out
    assert counts == Counter({"generic-secret": 1})


# ---------------------------------------------------------------------------------------
# The SSE parser.

Event = tuple[str, dict[str, Any]]


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _parse_async(parts: Iterable[bytes]) -> list[Event]:
    return [event async for event in sse.events(_chunks(parts))]


def parse(parts: Iterable[bytes]) -> list[Event]:
    return asyncio.run(_parse_async(list(parts)))


def mock_events(text: str | None = None) -> list[Event]:
    answer = mock_upstream.message(
        {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi there"}]}
    )
    if text is not None:
        answer["content"] = [{"type": "text", "text": text}]
    return mock_upstream.stream_events(answer)


def encode_all(events: list[Event]) -> bytes:
    return b"".join(sse.encode(name, data) for name, data in events)


def test_encode_and_error_frame_round_trip() -> None:
    frame = sse.error_frame("api_error", "upstream model API failed")
    assert frame.endswith(b"\n\n")
    assert parse([frame]) == [
        (
            "error",
            {
                "type": "error",
                "error": {"type": "api_error", "message": "upstream model API failed"},
            },
        )
    ]
    data = {"type": "content_block_delta", "index": 0, "delta": {"text": "Zürich 東京\n"}}
    assert parse([sse.encode("content_block_delta", data)]) == [("content_block_delta", data)]


MOCK = mock_events()
MULTI_LINE = {
    "type": "content_block_delta",
    "index": 0,
    "delta": {"type": "text_delta", "text": "multi line"},
}
SSE_STREAM = (
    b": keep-alive comment\n\n"
    + encode_all(MOCK[:4])
    + b"event: ping\n\n"  # no data: skipped
    + b'event: content_block_delta\nid: 7\ndata: {"type": "content_block_delta",\n'
    + b'data: "index": 0, "delta": {"type": "text_delta", "text": "multi line"}}\n\n'
    + b'data:{"type":"no_event_name"}\n\n'
    + b": another comment\n"
    + encode_all(MOCK[4:])
)
SSE_EXPECTED = [
    *MOCK[:4],
    ("content_block_delta", MULTI_LINE),
    ("message", {"type": "no_event_name"}),
    *MOCK[4:],
]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_sse_split_at_every_offset_gives_the_same_events(line_end: bytes) -> None:
    raw = SSE_STREAM.replace(b"\n", line_end)
    assert parse([raw]) == SSE_EXPECTED

    async def every_split() -> None:
        for cut in range(len(raw) + 1):
            got = await _parse_async([raw[:cut], raw[cut:]])
            assert got == SSE_EXPECTED, f"split at {cut}: {raw[cut - 5 : cut + 5]!r}"
        got = await _parse_async([raw[i : i + 1] for i in range(len(raw))])
        assert got == SSE_EXPECTED

    asyncio.run(every_split())


def test_sse_multi_line_data_and_default_event_name() -> None:
    events = parse([SSE_STREAM])
    assert ("message", {"type": "no_event_name"}) in events
    assert ("content_block_delta", MULTI_LINE) in events
    names = [name for name, _ in events]
    assert names.count("ping") == 1  # the ping with data is kept, the one without is not


def test_sse_last_event_without_blank_line_is_parsed() -> None:
    assert parse([b'event: x\ndata: {"a": 1}']) == [("x", {"a": 1})]
    assert parse([b"\n\n\n", b": only a comment"]) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"event: x\ndata: {not json}\n\n",
        b"event: x\ndata: [1, 2]\n\n",
        b'event: x\ndata: "text"\n\n',
        b"event: x\ndata: 42\n\n",
        b'event: x\ndata: {"t": "\xff\xfe"}\n\n',
    ],
    ids=["invalid-json", "array", "string", "number", "not-utf8"],
)
def test_sse_bad_event_is_an_upstream_error(raw: bytes) -> None:
    good = sse.encode("ping", {"type": "ping"})
    with pytest.raises(UpstreamError):
        parse([good, raw[:5], raw[5:], good])


def test_sse_utf8_split_inside_a_character_is_fine() -> None:
    raw = sse.encode("x", {"t": "東京"})
    cut = raw.index("東".encode()) + 1
    assert parse([raw[:cut], raw[cut:]]) == [("x", {"t": "東京"})]


def test_sse_oversized_event_is_an_upstream_error() -> None:
    # Network-sized chunks of one event that never ends within MAX_EVENT_BYTES.
    payload = b'event: x\ndata: {"t": "' + b"a" * (2 * sse.MAX_EVENT_BYTES) + b'"}\n\n'
    chunk = 64 * 1024
    with pytest.raises(UpstreamError):
        parse(payload[i : i + chunk] for i in range(0, len(payload), chunk))
    # Just under the limit is fine.
    size = sse.MAX_EVENT_BYTES - 100
    small = b'event: x\ndata: {"t": "' + b"a" * size + b'"}\n\n'
    assert parse(small[i : i + chunk] for i in range(0, len(small), chunk)) == [
        ("x", {"t": "a" * size})
    ]


# ---------------------------------------------------------------------------------------
# The stream guard.


@dataclass
class Run:
    events: list[Event]  # what the agent received, parsed back
    raw: bytes
    finishes: list[tuple[str, dict[str, Any]]]
    frames_before_finish: list[int]


async def _source(events: list[Event], error: Exception | None) -> AsyncIterator[Event]:
    for event in events:
        yield event
    if error is not None:
        raise error


def run_guard(
    events: list[Event],
    *,
    redactor: Redactor | None = REDACTOR,
    error: Exception | None = None,
    finish_error: Exception | None = None,
    stop_after: int | None = None,
    stop_when: Callable[[list[bytes]], bool] | None = None,
) -> Run:
    frames: list[bytes] = []
    finishes: list[tuple[str, dict[str, Any]]] = []
    before: list[int] = []

    def finish(outcome: str, meta: dict[str, Any]) -> Future[dict[str, Any]]:
        # The gateway hands the outcome event to its audit writer and gets a future back;
        # here that write has already succeeded (or failed) when the guard looks at it.
        finishes.append((outcome, meta))
        before.append(len(frames))
        written: Future[dict[str, Any]] = Future()
        if finish_error is not None:
            written.set_exception(finish_error)
        else:
            written.set_result({"action": "model.response", "reason": outcome, "meta": meta})
        return written

    async def drive() -> None:
        guard = StreamGuard(redactor, finish)
        gen = guard.frames(_source(events, error))
        async for frame in gen:
            frames.append(frame)
            if stop_after is not None and len(frames) >= stop_after:
                break
            if stop_when is not None and stop_when(frames):
                break
        await gen.aclose()  # type: ignore[attr-defined]

    asyncio.run(drive())
    raw = b"".join(frames)
    return Run(parse([raw]), raw, finishes, before)


def texts_of(events: list[Event]) -> str:
    return "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )


def split_text_deltas(events: list[Event], width: int) -> list[Event]:
    """The same stream with every text delta cut into ``width``-character pieces."""
    out: list[Event] = []
    for name, data in events:
        delta = data.get("delta")
        if name == "content_block_delta" and isinstance(delta, dict) and "text" in delta:
            text = delta["text"]
            for i in range(0, len(text), width):
                out.append((name, {**data, "delta": {**delta, "text": text[i : i + width]}}))
        else:
            out.append((name, data))
    return out


def test_guard_relays_a_clean_mock_stream_and_finishes_before_message_stop() -> None:
    events = mock_events()
    reply = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    run = run_guard(events)
    assert texts_of(run.events) == reply
    assert [name for name, _ in run.events if name != "content_block_delta"] == [
        name for name, _ in events if name != "content_block_delta"
    ]
    assert run.events[-1] == ("message_stop", {"type": "message_stop"})
    assert run.events[0] == events[0]
    assert run.finishes == [("completed", {"usage": {"input_tokens": 2, "output_tokens": 18}})]
    # finish ran before message_stop was handed to the agent.
    frames = run.raw.split(b"\n\n")[:-1]
    assert run.frames_before_finish == [len(frames) - 1]


def test_guard_redacts_a_secret_split_across_text_deltas() -> None:
    key = SAMPLES[0].secret
    text = f"Sure. The key in the file is {key} and it was rotated yesterday."
    events = split_text_deltas(mock_events(text), 7)
    run = run_guard(events)
    assert texts_of(run.events) == batch(text)
    assert "[REDACTED:anthropic-key]" in texts_of(run.events)
    assert_no_fragment(run.raw.decode(), SAMPLES[0].distinct)
    # The held tail went out as a delta before content_block_stop.
    names = [name for name, _ in run.events]
    stop = names.index("content_block_stop")
    assert names[stop - 1] == "content_block_delta"
    assert "content_block_delta" not in names[stop:]
    outcome, meta = run.finishes[0]
    assert len(run.finishes) == 1
    assert outcome == "completed"
    assert meta["redactions"] == {"anthropic-key": 1}
    assert meta["usage"]["input_tokens"] == 2


def thinking_events(pieces: list[str]) -> list[Event]:
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 9}}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        ),
    ]
    for piece in pieces:
        delta = {"type": "thinking_delta", "thinking": piece}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 30}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def test_guard_redacts_thinking_and_flushes_as_thinking_delta() -> None:
    token = SAMPLES[5].secret  # github token
    text = f"I should not repeat {token}"
    run = run_guard(thinking_events([text[:30], text[30:45], text[45:]]))
    deltas = [data["delta"] for name, data in run.events if name == "content_block_delta"]
    assert all(delta["type"] == "thinking_delta" for delta in deltas)
    assert "".join(delta["thinking"] for delta in deltas) == batch(text)
    assert token not in run.raw.decode()
    assert run.finishes == [
        (
            "completed",
            {"usage": {"input_tokens": 9, "output_tokens": 30}, "redactions": {"github-token": 1}},
        )
    ]


def tool_events(pieces: list[str]) -> list[Event]:
    block = {"type": "tool_use", "id": "toolu_01FAKE", "name": "kb.search", "input": {}}
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 11}}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
    ]
    for piece in pieces:
        delta = {"type": "input_json_delta", "partial_json": piece}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def test_guard_holds_tool_input_until_block_stop_and_redacts_it_whole() -> None:
    pieces = ['{"query": "v', 'pn", "password": "Zq8kL2pW9xR4vB7n"}']
    run = run_guard(tool_events(pieces))
    names = [name for name, _ in run.events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    delta = run.events[2][1]["delta"]
    assert delta["type"] == "input_json_delta"
    assert json.loads(delta["partial_json"]) == {
        "query": "vpn",
        "password": "[REDACTED:generic-secret]",
    }
    assert "Zq8kL2pW9xR4vB7n" not in run.raw.decode()
    assert run.finishes == [
        (
            "completed",
            {
                "usage": {"input_tokens": 11, "output_tokens": 12},
                "redactions": {"generic-secret": 1},
            },
        )
    ]


def test_guard_nothing_is_released_before_the_tool_block_stops() -> None:
    pieces = ['{"query": "v', 'pn", "password": "Zq8kL2pW9xR4vB7n"}']
    # Stop the stream right after the last piece: the held input never goes out.
    run = run_guard(tool_events(pieces)[:4])
    assert "content_block_delta" not in [name for name, _ in run.events]
    assert run.finishes[0][0] == "upstream_ended_early"


def test_guard_upstream_error_ends_with_an_error_event() -> None:
    events = mock_events()[:5]  # message_start, ping, block start, two deltas
    run = run_guard(events, error=UpstreamError("connection reset by peer"))
    assert run.events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "upstream model API failed"}},
    )
    assert "connection reset" not in run.raw.decode()  # the detail stays private
    assert "message_stop" not in [name for name, _ in run.events]
    assert run.finishes == [("upstream_error", {"usage": {"input_tokens": 2, "output_tokens": 1}})]


def test_guard_upstream_ended_early() -> None:
    events = [event for event in mock_events() if event[0] != "message_stop"]
    run = run_guard(events)
    assert run.events[-1][0] == "error"
    assert run.events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in run.events]
    assert run.finishes == [
        ("upstream_ended_early", {"usage": {"input_tokens": 2, "output_tokens": 18}})
    ]


def test_guard_agent_disconnect_is_finished_once() -> None:
    run = run_guard(mock_events(), stop_after=3)
    assert len(run.events) == 3
    assert run.finishes == [
        ("agent_disconnected", {"usage": {"input_tokens": 2, "output_tokens": 1}})
    ]


def test_guard_audit_failure_replaces_message_stop_with_an_error() -> None:
    run = run_guard(mock_events(), finish_error=AuditWriteError("disk full"))
    assert run.events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "api_error", "message": "audit log unavailable; request refused"},
        },
    )
    assert "message_stop" not in [name for name, _ in run.events]
    assert [outcome for outcome, _ in run.finishes] == ["completed"]


def test_guard_without_redactor_changes_nothing() -> None:
    key = SAMPLES[0].secret
    text = f"Sure. The key in the file is {key} and it was rotated yesterday."
    events = split_text_deltas(mock_events(text), 7)
    tool = tool_events(['{"query": "v', 'pn", "password": "Zq8kL2pW9xR4vB7n"}'])
    for source in (events, tool):
        run = run_guard(source, redactor=None)
        assert run.events == source
        assert run.raw == encode_all(source)
        outcome, meta = run.finishes[0]
        assert len(run.finishes) == 1
        assert outcome == "completed"
        assert "redactions" not in meta


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [
        ("error", "upstream_error"),
        ("early", "upstream_ended_early"),
        ("leave", "agent_disconnected"),
    ],
)
def test_guard_counts_redactions_already_released_when_the_stream_breaks(
    ending: str, outcome: str
) -> None:
    # The agent has received "[REDACTED:anthropic-key]"; the audit record must say so.
    key = SAMPLES[0].secret
    text = f"The key is {key} and more words follow here"
    events = split_text_deltas(mock_events(text), 10)
    stop = next(i for i, (name, _) in enumerate(events) if name == "content_block_stop")
    events = events[:stop]  # the text block never closes
    if ending == "error":
        run = run_guard(events, error=UpstreamError("reset"))
    elif ending == "early":
        run = run_guard(events)
    else:
        run = run_guard(
            events + [("ping", {"type": "ping"})] * 3,
            stop_when=lambda frames: b"[REDACTED:anthropic-key]" in b"".join(frames),
        )
    assert "[REDACTED:anthropic-key]" in texts_of(run.events)
    assert [o for o, _ in run.finishes] == [outcome]
    assert run.finishes[0][1].get("redactions") == {"anthropic-key": 1}
