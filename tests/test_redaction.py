"""The output guardrail's secret redaction: every type, nesting, negatives, limits, speed.

Every sample secret is built here at run time from a seeded generator and spells FAKE;
none is a real credential. The one key-shaped literal in source is the example secret
from AWS's own documentation, kept as a negative.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import string
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentzt.guardrails.secrets import KINDS, MAX_DEPTH, TOO_DEEP, Redactor, looks_like_secret
from agentzt.tools.web import FAKE_LEAKED_KEY, PAGE_BODY

BASE62 = string.ascii_letters + string.digits
B64URL = BASE62 + "-_"
B64 = BASE62 + "+/"
UPPER32 = string.ascii_uppercase + "234567"


def filler(alphabet: str, n: int, seed: int) -> str:
    """``n`` characters from ``alphabet``, the same on every run."""
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64u_json(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def pem(label: str, block: str = "PRIVATE KEY") -> str:
    body = "\n".join(filler(B64, 64, seed) for seed in range(300, 306))
    return f"-----BEGIN {label}{block}-----\n{body}\nFAKE\n-----END {label}{block}-----"


ANTHROPIC = "sk-ant-api03-FAKE" + filler(B64URL, 89, 1) + "AA"
JWT = (
    b64u_json({"alg": "HS256", "typ": "JWT"})
    + "."
    + b64u_json({"sub": "fake-user", "note": "FAKE"})
    + "."
    + filler(B64URL, 43, 2)
)
JWT_NONE = b64u_json({"alg": "none"}) + "." + b64u_json({"sub": "FAKE"}) + "."
GENERIC = "FAKE" + filler(BASE62 + "!@#%^*", 20, 3)
HEX64 = filler("0123456789abcdef", 64, 4)


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    kind: str
    secret: str

    @property
    def expected(self) -> str:
        return self.text.replace(self.secret, f"[REDACTED:{self.kind}]")


def token_case(id_: str, kind: str, secret: str, template: str = "leaked: {} (end)") -> Case:
    return Case(id_, template.format(secret), kind, secret)


CASES = [
    token_case("anthropic-api03", "anthropic-key", ANTHROPIC),
    token_case("anthropic-admin01", "anthropic-key", "sk-ant-admin01-FAKE" + filler(B64URL, 80, 5)),
    token_case("openai-classic", "openai-key", "sk-FAKE" + filler(BASE62, 44, 6)),
    token_case("openai-proj", "openai-key", "sk-proj-FAKE0" + filler(B64URL, 150, 7)),
    token_case("openai-svcacct", "openai-key", "sk-svcacct-FAKE0" + filler(B64URL, 120, 8)),
    token_case("aws-akia", "aws-access-key", "AKIAFAKE" + filler(UPPER32, 12, 9)),
    token_case("aws-asia", "aws-access-key", "ASIAFAKE" + filler(UPPER32, 12, 10)),
    token_case(
        "aws-secret-ini",
        "aws-secret-key",
        "FAKE" + filler(B64, 36, 11),
        "[default]\naws_secret_access_key = {}\n",
    ),
    token_case(
        "aws-secret-json",
        "aws-secret-key",
        "FAKE" + filler(B64, 36, 12),
        '{{"SecretAccessKey": "{}"}}',
    ),
    token_case("github-ghp", "github-token", "ghp_FAKE" + filler(BASE62, 32, 13)),
    token_case("github-gho", "github-token", "gho_FAKE" + filler(BASE62, 32, 14)),
    token_case("github-ghu", "github-token", "ghu_FAKE" + filler(BASE62, 32, 15)),
    token_case("github-ghs", "github-token", "ghs_FAKE" + filler(BASE62, 32, 16)),
    token_case("github-ghr", "github-token", "ghr_FAKE" + filler(BASE62, 32, 17)),
    token_case(
        "github-pat",
        "github-token",
        "github_pat_11FAKE" + filler(BASE62, 16, 18) + "_" + filler(BASE62, 59, 19),
    ),
    *(
        token_case(
            f"slack-{kind}",
            "slack-token",
            f"{kind}-000000000000-0000000000000-FAKE" + filler(BASE62, 20, 20 + i),
        )
        for i, kind in enumerate(("xoxb", "xoxp", "xoxa", "xoxr", "xoxs"))
    ),
    token_case(
        "slack-webhook",
        "slack-webhook",
        "services/T0FAKE000/B0FAKE000/" + filler(BASE62, 24, 25),
        "POST https://hooks.slack.com/{}",
    ),
    token_case("google-api-key", "google-api-key", "AIzaFAKE" + filler(B64URL, 31, 26)),
    token_case("stripe-sk-live", "stripe-key", "sk_live_FAKE" + filler(BASE62, 20, 27)),
    token_case("stripe-sk-test", "stripe-key", "sk_test_FAKE" + filler(BASE62, 20, 28)),
    token_case("stripe-rk-live", "stripe-key", "rk_live_FAKE" + filler(BASE62, 20, 29)),
    token_case("stripe-rk-test", "stripe-key", "rk_test_FAKE" + filler(BASE62, 20, 30)),
    token_case("jwt", "jwt", JWT),
    token_case("jwt-alg-none", "jwt", JWT_NONE),
    token_case(
        "bearer-header",
        "bearer-token",
        "FAKE" + filler(BASE62 + "-._~", 36, 31),
        "Authorization: Bearer {}\r\nAccept: */*",
    ),
    token_case(
        "bearer-lowercase", "bearer-token", "fake0" + filler(BASE62, 30, 32), "curl -H 'bearer {}'"
    ),
    # A JWT after Bearer is one redaction, under the more specific type.
    token_case("bearer-jwt", "jwt", JWT, "Authorization: Bearer {}"),
    *(
        token_case(f"private-key-{label.strip().lower() or 'pkcs8'}", "private-key", pem(label))
        for label in ("RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA ", "")
    ),
    token_case("private-key-pgp", "private-key", pem("PGP ", "PRIVATE KEY BLOCK")),
    # IMPORTANT: a BEGIN without an END redacts to the end of the string (fail closed).
    Case(
        "private-key-truncated",
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIFAKE" + filler(B64, 200, 33),
        "private-key",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIFAKE" + filler(B64, 200, 33),
    ),
    token_case(
        "private-key-json-escaped",
        "private-key",
        pem("").replace("\n", "\\n"),
        '{{"type": "service_account", "private_key": "{}\\n"}}',
    ),
    *(
        token_case(f"generic-{id_}", "generic-secret", GENERIC, template)
        for id_, template in (
            ("password-eq", "password={}"),
            ("passwd-colon", "passwd: {}"),
            ("pwd-eq", "pwd={}"),
            ("secret-eq", "secret={} # rotate yearly"),
            ("api-key-spaced", "api_key = {}"),
            ("apikey-colon", "apikey: {}"),
            ("access-token-query", "https://app.example/cb?access_token={}&state=1"),
            ("auth-token-dq", 'auth_token="{}"'),
            ("client-secret-sq", "client_secret: '{}'"),
            ("private-key-name", "private_key={}"),
            ("json", '{{"user": "svc", "password": "{}"}}'),
            ("json-escaped", '{{\\"client_secret\\": \\"{}\\"}}'),
            ("env-upper", 'DB_PASSWORD="{}"'),
            ("shell-export", "export SERVICE_API_KEY='{}'"),
            ("mixed-case", "Password: {}"),
            ("yaml", "db:\n  user: svc\n  password: {}\n"),
            ("secret-key-suffix", "SECRET_KEY = '{}'"),
        )
    ),
    token_case(
        "generic-passphrase", "generic-secret", "FAKE horse battery staple 42", 'password: "{}"'
    ),
    # A bare digest is not a secret (see NEGATIVES); assigned to a secret-named key it is.
    token_case("generic-hex-digest", "generic-secret", HEX64, "webhook_secret={}"),
    # Specific beats generic: one redaction, of the specific type, key name kept.
    token_case("anthropic-in-assignment", "anthropic-key", ANTHROPIC, "api_key={}"),
    token_case("anthropic-in-env", "anthropic-key", ANTHROPIC, 'ANTHROPIC_API_KEY="{}"'),
    token_case("jwt-in-assignment", "jwt", JWT, "access_token={}"),
]


def test_kinds_are_the_public_type_names() -> None:
    assert set(KINDS) == {
        "anthropic-key",
        "openai-key",
        "aws-access-key",
        "aws-secret-key",
        "github-token",
        "slack-token",
        "slack-webhook",
        "google-api-key",
        "stripe-key",
        "jwt",
        "bearer-token",
        "private-key",
        "generic-secret",
    }
    assert KINDS[-1] == "generic-secret"  # generic runs last: specific types win


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_type_is_redacted(redactor: Redactor, case: Case) -> None:
    out, counts = redactor.redact_text(case.text)
    assert case.secret in case.text  # the table itself is sound
    assert out == case.expected
    assert case.secret not in out
    assert counts == Counter({case.kind: 1})
    # Markers are inert: redacting the output again finds nothing.
    assert redactor.redact_text(out) == (out, Counter())


def test_bearer_keeps_the_scheme_word(redactor: Redactor) -> None:
    token = "FAKE0" + filler(BASE62, 30, 40)
    out, _ = redactor.redact_text(f"Authorization: Bearer {token}")
    assert out == "Authorization: Bearer [REDACTED:bearer-token]"


def test_generic_keeps_the_key_name(redactor: Redactor) -> None:
    out, _ = redactor.redact_text(f'{{"password": "{GENERIC}"}}')
    assert out == '{"password": "[REDACTED:generic-secret]"}'


def test_offsets_survive_characters_that_lowercase_to_two(redactor: Redactor) -> None:
    # U+0130 lowercases to two characters; case-insensitive passes must still cut the
    # secret out of the original text at the right place.
    text = f"\u0130\u0130 Password={GENERIC} \u0130 Bearer FAKE0{filler(BASE62, 30, 41)}"
    out, counts = redactor.redact_text(text)
    assert (
        out
        == "\u0130\u0130 Password=[REDACTED:generic-secret] \u0130 Bearer [REDACTED:bearer-token]"
    )
    assert counts == Counter({"generic-secret": 1, "bearer-token": 1})


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        (GENERIC, True),
        (HEX64, True),
        ("Tr0ub4dor&3", True),
        ("P@ssw0rd!", True),
        ("hunter22", True),  # weak, but a password: 8 characters, 2.75 bits >= 2.5
        ("database", False),  # 2.41 bits/char: too repetitive for 8 characters
        ("aaaaaaaaaaaaaaaa", False),
        ("abcabcabcabc", False),
        ("1234567890123", False),  # numbers are counts, ports and timestamps
        ("xxxx-xxxx-xxxx", False),
        ("changeme", False),
        ("CHANGE_ME_PLEASE", False),
        ("<your-api-key>", False),
        ("${API_KEY}", False),
        ("$API_KEY_VALUE", False),
        ("{{ vault_secret }}", False),
        ("%(password)s", False),
        ("your-secret-here", False),
        ("sk-example-0000", False),
        ("NULL", False),
        ("short", False),
    ],
)
def test_looks_like_secret(value: str, secret: bool) -> None:
    assert looks_like_secret(value) is secret


def test_real_generated_keys_are_redacted(redactor: Redactor) -> None:
    key = Ed25519PrivateKey.generate()
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.OpenSSH):
        encoded = key.private_bytes(
            serialization.Encoding.PEM, fmt, serialization.NoEncryption()
        ).decode()
        out, counts = redactor.redact_text(f"cat id_ed25519\n{encoded}$ ")
        assert out == "cat id_ed25519\n[REDACTED:private-key]\n$ "
        assert counts == Counter({"private-key": 1})


def test_demo_page_leaks_exactly_one_anthropic_key(redactor: Redactor) -> None:
    out, counts = redactor.redact_text(PAGE_BODY)
    assert counts == Counter({"anthropic-key": 1})
    assert FAKE_LEAKED_KEY not in out
    assert "ANTHROPIC_API_KEY=[REDACTED:anthropic-key]" in out


def anthropic_response(text: str) -> dict[str, object]:
    return {
        "id": "msg_01FAKE",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [
            {"type": "text", "text": f"Here is what I found:\n{text}"},
            {
                "type": "tool_use",
                "id": "toolu_01FAKE",
                "name": "email.send",
                "input": {"x": [{"y": text}, 3, None, True]},
            },
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1234, "output_tokens": 56},
    }


def tool_output(text: str) -> dict[str, object]:
    return {"ok": True, "output": {"rows": [{"note": text}, ("tuple", text)], "count": 2}}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_nested_secrets_are_redacted_and_counted(redactor: Redactor, case: Case) -> None:
    data = {"response": anthropic_response(case.text), "tool": tool_output(case.text)}
    out, counts = redactor.redact(data)
    assert counts == Counter({case.kind: 4})
    assert out == {
        "response": anthropic_response(case.expected),
        "tool": tool_output(case.expected),
    }
    assert case.secret not in json.dumps(out)


@pytest.mark.parametrize(
    ("key", "value", "redacted"),
    [
        ("password", GENERIC, True),
        ("DB_PASSWORD", GENERIC, True),
        ("client_secret", HEX64, True),
        ("x-api-key", GENERIC, True),
        ("password", "changeme", False),
        ("password", "short", False),
        ("sha256", HEX64, False),
        ("token_type", GENERIC, False),
        ("input_tokens", GENERIC, False),
    ],
    ids=[
        "password",
        "env-name",
        "hex-under-secret-name",
        "header-name",
        "placeholder",
        "short",
        "digest-under-plain-name",
        "token-type",
        "token-count",
    ],
)
def test_string_under_secret_named_key(
    redactor: Redactor, key: str, value: str, redacted: bool
) -> None:
    out, counts = redactor.redact({"auth": {key: value}})
    if redacted:
        assert out == {"auth": {key: "[REDACTED:generic-secret]"}}
        assert counts == Counter({"generic-secret": 1})
    else:
        assert out == {"auth": {key: value}}
        assert not counts


def test_specific_type_under_secret_key_counts_once(redactor: Redactor) -> None:
    out, counts = redactor.redact({"api_key": ANTHROPIC, "password": f"Bearer {JWT}"})
    assert out == {"api_key": "[REDACTED:anthropic-key]", "password": "Bearer [REDACTED:jwt]"}
    assert counts == Counter({"anthropic-key": 1, "jwt": 1})


NEGATIVES = {
    "prose": "The shipment left Rotterdam on Tuesday; tracking updates follow every 15 minutes.",
    "uuid": "request 123e4567-e89b-12d3-a456-426614174000 completed",
    "git-sha": "fixed in commit 9fceb02d0ae598e95dc970b74767f19372d61af8 on main",
    # Decision: a bare 64-hex digest is a checksum, not a credential.
    "sha256-in-prose": f"sha256: {HEX64} (verify before installing)",
    "stripe-publishable": "pk_live_FAKE" + filler(BASE62, 20, 50),
    "stripe-publishable-test": "stripe.js key pk_test_FAKE" + filler(BASE62, 20, 51),
    "angle-placeholder": "password: <your password here>",
    "angle-placeholder-dq": 'password: "<your-password>"',
    # Decision: changeme is a well-known default placeholder, not a live credential.
    "changeme": "password=changeme",
    "shell-variable": 'DB_PASSWORD="${DB_PASSWORD}"',
    "template": 'api_key: "{{ secret }}"',
    "env-lookup": 'password = os.environ["DB_PASSWORD"]',
    "stars": "password: ****************",
    "x-mask": "token=xxxxxxxxxxxxxxxx",
    "none": "password=None",
    "null": "api_key: null",
    "true": "secret: true",
    "false": "pwd=false",
    "required": "password: required",
    "short": "pwd=abc123",
    "digits-only": "token_count: 12345678",
    "bearer-prose": "Give this to the bearer of this letter, without delay.",
    "bearer-scheme-prose": "Bearer authentication is described in RFC 6750.",
    "token-type": '{"token_type": "Bearer", "expires_in": 3600}',
    "max-tokens": '"max_tokens": 1024, "input_tokens": 12345678',
    "sk-slug": "the sk-learn-compatible-estimators-pipeline page",
    "sk-inside-word": "task-3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d",
    "aws-docs-example": "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "redaction-marker": "api_key=[REDACTED:anthropic-key]",
    "empty": "",
}


@pytest.mark.parametrize("text", list(NEGATIVES.values()), ids=list(NEGATIVES))
def test_non_secrets_are_left_alone(redactor: Redactor, text: str) -> None:
    out, counts = redactor.redact_text(text)
    assert out == text
    assert not counts
    data = anthropic_response(text)
    assert redactor.redact(data) == (data, Counter())
    assert redactor.redact(data)[0] is data  # fast path: nothing redacted, nothing copied


@pytest.mark.parametrize(
    "value", [None, 7, 2.5, True, "plain text", [], {}, ()], ids=lambda v: type(v).__name__
)
def test_scalars_and_empties_come_back_unchanged(redactor: Redactor, value: object) -> None:
    out, counts = redactor.redact(value)
    assert out is value
    assert not counts


def test_string_root_and_tuple_type(redactor: Redactor) -> None:
    assert redactor.redact(ANTHROPIC) == ("[REDACTED:anthropic-key]", Counter({"anthropic-key": 1}))
    out, _ = redactor.redact(("a", ANTHROPIC))
    assert out == ("a", "[REDACTED:anthropic-key]")


def test_input_is_not_mutated(redactor: Redactor) -> None:
    data = {"response": anthropic_response(ANTHROPIC), "tool": tool_output(JWT)}
    before = copy.deepcopy(data)
    out, counts = redactor.redact(data)
    assert data == before
    assert out != data
    assert counts == Counter({"anthropic-key": 2, "jwt": 2})
    # Unchanged branches may be shared; changed ones are new objects.
    assert isinstance(out, dict)
    assert out["response"] is not data["response"]


def nested_lists(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def nested_dicts(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


@pytest.mark.parametrize("build", [nested_lists, nested_dicts], ids=["lists", "dicts"])
def test_deep_nesting_fails_closed(
    redactor: Redactor, build: Callable[[int, object], object]
) -> None:
    data = build(10_000, f"key {ANTHROPIC}")
    out, counts = redactor.redact(data)
    # Beyond MAX_DEPTH the subtree is replaced, not returned raw, and the result stays
    # serialisable by json (whose encoder recurses).
    assert counts == Counter({TOO_DEEP: 1})
    encoded = json.dumps(out)
    assert ANTHROPIC not in encoded
    assert f"[REDACTED:{TOO_DEEP}]" in encoded


def test_json_depth_64_is_walked_in_full(redactor: Redactor) -> None:
    data = json.loads(json.dumps(nested_dicts(64, f"key {ANTHROPIC}")))
    out, counts = redactor.redact(data)
    assert MAX_DEPTH > 64
    assert counts == Counter({"anthropic-key": 1})
    assert ANTHROPIC not in json.dumps(out)


def test_reference_cycle_terminates(redactor: Redactor) -> None:
    loop: list[object] = [ANTHROPIC]
    loop.append(loop)
    out, counts = redactor.redact(loop)
    assert counts[TOO_DEEP] == 1
    assert ANTHROPIC not in json.dumps(out)


def test_counter_holds_type_names_only(redactor: Redactor) -> None:
    text = " ".join(case.text for case in CASES)
    out, counts = redactor.redact_text(text)
    assert set(counts) <= set(KINDS)
    for case in CASES:
        assert case.secret not in out
        assert all(case.secret not in name for name in counts)


ADVERSARIAL: dict[str, Callable[[], str]] = {
    "sk-run": lambda: "sk-" + "a" * 1_000_000,
    "pem-no-end": lambda: "-----BEGIN RSA PRIVATE KEY-----" + "A" * 1_000_000,
    "password-eq-repeated": lambda: "password=" * 100_000,
    "eyj-repeated": lambda: "eyJ" * 300_000,
    "sk-ant-repeated": lambda: "sk-ant-" * 150_000,
    "bearer-repeated": lambda: "Bearer " * 150_000,
    "json-key-repeated": lambda: '"api_key": "' * 90_000,
    "open-quote-run": lambda: 'password="' + "a" * 1_000_000,
    "begin-repeated": lambda: "-----BEGIN " * 100_000,
    "akia-repeated": lambda: "AKIA" * 250_000,
    "jwt-dots": lambda: "eyJ" + "a" * 20 + "." + "eyJ" * 300_000,
    "pem-headers": lambda: "-----BEGIN A B C D PRIVATE KEY-----" * 30_000,
}


@pytest.mark.parametrize("build", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_adversarial_inputs_finish_quickly(redactor: Redactor, build: Callable[[], str]) -> None:
    text = build()
    started = time.perf_counter()
    redactor.redact_text(text)
    elapsed = time.perf_counter() - started
    print(f"\n  {text[:16]!r:>20} x {len(text):>9} chars: {elapsed * 1000:6.1f} ms", end="")
    # A guard against super-linear matching, not a speed target: backtracking that is
    # quadratic in a megabyte takes minutes. The slowest case here ("password=" repeated:
    # each of the 32 bounded re-scans reads the rest of the text) takes about 1.3 s on an
    # idle 2-core machine and 2.8 s with four test workers on it, hence the headroom.
    assert elapsed < 10.0


def typical_response(secret: str = "") -> dict[str, object]:
    """About 2 KB of ordinary assistant prose, as an Anthropic Messages response."""
    prose = (
        "Partners submit shipment updates to the tracking API every 15 minutes. Rate limits "
        "apply per partner account; contact partner support to raise them. If uploads fail, "
        "check that the partner certificate has not expired and retry with back-off. Each "
        "API key is rotated yearly; access tokens expire after an hour. "
    ) * 6
    return {
        "id": "msg_01FAKE",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": prose + secret}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 812, "output_tokens": 431},
    }


@pytest.mark.parametrize("secret", ["", f"key: {ANTHROPIC}"], ids=["clean", "one-secret"])
def test_typical_response_cost(redactor: Redactor, secret: str) -> None:
    data = typical_response(secret)
    assert 1900 < len(json.dumps(data)) < 2300 + len(secret)
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        _, counts = redactor.redact(data)
    per_call = (time.perf_counter() - started) / rounds * 1e6
    print(f"\n  2 KB response ({len(counts)} secret types): {per_call:.1f} µs", end="")
    assert sum(counts.values()) == (1 if secret else 0)
