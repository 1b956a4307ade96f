"""The identity package on its own: keys, the replay cache, the token profiles and the
registry. No server; time is a parameter, never slept through."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from forge import b64u, b64u_decode, compact, hs256, public_pem, to_json

from agentzt.errors import (
    BadAlgorithmError,
    ConfigError,
    EnrollmentError,
    ExpiredTokenError,
    ImmatureTokenError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    LifetimeTooLongError,
    MalformedTokenError,
    MissingClaimError,
    ReplayedTokenError,
    TokenError,
    UnknownAgentError,
    UsageError,
)
from agentzt.identity import (
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    AssertionVerifier,
    Registry,
    ReplayCache,
    SigningKey,
    VerifyKey,
    enroll,
    load_registry,
    make_assertion,
    read_private_key,
)
from agentzt.identity.keys import check_public_key, write_private_key

T0 = 1_700_000_000
AGENT = "agent-1"
ISSUER = "https://gw.test"
AUDIENCE = f"{ISSUER}/v1/token"
MAX_AGE = 60
ACCESS_TTL = 300
P = 2**255 - 19  # the field prime of Curve25519

# RFC 8037, appendix A.1 and A.3: a known Ed25519 key and its RFC 7638 thumbprint.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

# A point of order 8 (from the list of the eight small-order points in "Taming the many
# EdDSAs", Chalkias et al. 2020).
ORDER_8_POINT = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


# --- helpers ---------------------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Passed as a claim value to delete that claim.
DROP: Any = object()


def assertion_claims(**changes: Any) -> dict[str, Any]:
    """A valid client assertion's claims at T0, with ``changes`` applied (DROP deletes)."""
    claims: dict[str, Any] = {
        "iss": AGENT,
        "sub": AGENT,
        "aud": AUDIENCE,
        "iat": T0,
        "exp": T0 + MAX_AGE,
        "jti": "jti-0001",
    }
    for name, value in changes.items():
        if value is DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


ASSERTION_HEADER = {"alg": "EdDSA", "typ": "JWT", "kid": AGENT}


class Keys:
    """The agent's key, a stranger's key, and the gateway's key."""

    def __init__(self) -> None:
        self.agent = SigningKey.generate()
        self.other = SigningKey.generate()
        self.gateway = SigningKey.generate()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def assertion_verifier(
    keys: Keys, clock: FakeClock, replay: ReplayCache | None = None
) -> AssertionVerifier:
    registered = {AGENT: keys.agent.public}

    def key_lookup(agent_id: str) -> VerifyKey:
        try:
            return registered[agent_id]
        except KeyError:
            raise UnknownAgentError("no such agent") from None

    return AssertionVerifier(
        audience=AUDIENCE,
        key_lookup=key_lookup,
        replay=replay if replay is not None else ReplayCache(clock),
        clock=clock,
        max_age=MAX_AGE,
    )


def access_verifier(keys: Keys, clock: FakeClock) -> AccessTokenVerifier:
    return AccessTokenVerifier(keys.gateway.public, issuer=ISSUER, max_ttl=ACCESS_TTL, clock=clock)


# --- keys ------------------------------------------------------------------------------


def test_pem_round_trip_keeps_the_key() -> None:
    key = SigningKey.generate()
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    restored = SigningKey.from_pem(pem, source="test")
    assert restored.public.raw == key.public.raw
    # The restored key signs what the original's public key accepts.
    key.public.verify(b"message", restored.sign(b"message"))
    # Another library reads the same file as an Ed25519 key with the same public half.
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert loaded.public_key().public_bytes_raw() == key.public.raw


def test_known_answer_rfc8037_key() -> None:
    key = SigningKey(b64u_decode(RFC8037_D))
    assert key.public.b64url == RFC8037_X
    assert key.public.kid == RFC8037_THUMBPRINT


def test_written_key_file_is_0600_and_reads_back(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "keys" / "agent.key"
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_private_key(path).public.raw == key.public.raw
    # Created exclusively: an existing key is never overwritten in place.
    with pytest.raises(FileExistsError):
        write_private_key(path, SigningKey.generate())
    assert read_private_key(path).public.raw == key.public.raw


@pytest.mark.parametrize(
    "pem",
    [b"", b"not a pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
    ids=["empty", "text", "bad-der"],
)
def test_from_pem_refuses_garbage_with_config_error(pem: bytes) -> None:
    with pytest.raises(ConfigError, match=r"somewhere\.key"):
        SigningKey.from_pem(pem, source="somewhere.key")


def _mixed_order_point() -> bytes:
    """A valid prime-order key plus a point of order 8: canonical, on the curve, but not
    in the prime-order subgroup."""
    return nacl.bindings.crypto_core_ed25519_add(SigningKey.generate().public.raw, ORDER_8_POINT)


BAD_PUBLIC_KEYS: list[tuple[str, Callable[[], bytes]]] = [
    ("all-zero", lambda: bytes(32)),
    ("identity", lambda: b"\x01" + bytes(31)),
    ("order-8", lambda: ORDER_8_POINT),
    ("order-2", lambda: (P - 1).to_bytes(32, "little")),
    # Every encoding with y >= p is non-canonical; y = p + 1 encodes the identity again
    # and is what a decoder that reduces mod p would silently accept.
    ("non-canonical-p-plus-1", lambda: (P + 1).to_bytes(32, "little")),
    ("non-canonical-p", lambda: P.to_bytes(32, "little")),
    ("mixed-order", _mixed_order_point),
    ("empty", lambda: b""),
    ("31-bytes", lambda: SigningKey.generate().public.raw[:31]),
    ("33-bytes", lambda: SigningKey.generate().public.raw + b"\x00"),
    ("64-bytes", lambda: SigningKey.generate().public.raw * 2),
]


@pytest.mark.parametrize(
    "make_raw", [case for _, case in BAD_PUBLIC_KEYS], ids=[name for name, _ in BAD_PUBLIC_KEYS]
)
def test_bad_public_keys_are_refused(make_raw: Callable[[], bytes]) -> None:
    raw = make_raw()
    with pytest.raises(ValueError):
        check_public_key(raw)
    with pytest.raises(ValueError):
        VerifyKey(raw)
    with pytest.raises(ValueError):
        VerifyKey.from_b64url(b64u(raw))


def test_generated_public_key_passes() -> None:
    raw = SigningKey.generate().public.raw
    check_public_key(raw)
    assert VerifyKey(raw).raw == raw
    assert VerifyKey.from_b64url(b64u(raw)).raw == raw


def test_kid_is_the_rfc7638_thumbprint() -> None:
    key = SigningKey.generate().public
    # RFC 7638: the required members only, sorted, no whitespace, then SHA-256, base64url.
    members = {"kty": "OKP", "crv": "Ed25519", "x": b64u(key.raw)}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert key.kid == b64u(hashlib.sha256(canonical).digest())
    jwk = key.jwk()
    assert {name: jwk[name] for name in ("kty", "crv", "x", "kid")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64u(key.raw),
        "kid": key.kid,
    }
    # A public JWK never carries the private part.
    assert "d" not in jwk


def test_verify_accepts_a_good_signature() -> None:
    key = SigningKey.generate()
    key.public.verify(b"hello", key.sign(b"hello"))


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("message", "signature_of"),
    [
        (b"hellp", lambda s: s),
        (b"hello!", lambda s: s),
        (b"", lambda s: s),
        (b"hello", lambda s: _flip(s, 0)),
        (b"hello", lambda s: _flip(s, 40)),
        (b"hello", lambda s: _flip(s, 63)),
        (b"hello", lambda s: s[:63]),
        (b"hello", lambda s: b""),
        (b"hello", lambda s: s + b"\x00"),
        # The signature's last byte moved into the message: lengths must not slide.
        (b"\x00hello", lambda s: s[:63]),
    ],
    ids=[
        "modified-message",
        "extended-message",
        "empty-message",
        "sig-first-byte",
        "sig-middle-byte",
        "sig-last-byte",
        "short-signature",
        "empty-signature",
        "long-signature",
        "sliding-boundary",
    ],
)
def test_verify_rejects(message: bytes, signature_of: Callable[[bytes], bytes]) -> None:
    key = SigningKey.generate()
    signature = signature_of(key.sign(b"hello"))
    with pytest.raises(InvalidSignatureError):
        key.public.verify(message, signature)


def test_verify_rejects_another_keys_signature() -> None:
    with pytest.raises(InvalidSignatureError):
        SigningKey.generate().public.verify(b"hello", SigningKey.generate().sign(b"hello"))


# --- replay cache ----------------------------------------------------------------------


def test_replay_second_use_is_refused(clock: FakeClock) -> None:
    cache = ReplayCache(clock)
    cache.use("a", until=T0 + 60)
    with pytest.raises(ReplayedTokenError):
        cache.use("a", until=T0 + 60)
    cache.use("b", until=T0 + 60)  # other keys are independent
    assert len(cache) == 2


def test_replay_entry_is_kept_until_expiry_then_forgotten(clock: FakeClock) -> None:
    cache = ReplayCache(clock)
    cache.use("a", until=T0 + 60)
    clock.now = T0 + 60  # at the expiry instant the entry still counts
    with pytest.raises(ReplayedTokenError):
        cache.use("a", until=T0 + 120)
    clock.now = T0 + 61
    cache.use("a", until=T0 + 121)  # forgotten, so accepted again
    assert len(cache) == 1


def test_replay_cache_full_refuses_new_keys(clock: FakeClock) -> None:
    cache = ReplayCache(clock, max_entries=2)
    cache.use("a", until=T0 + 10)
    cache.use("b", until=T0 + 20)
    with pytest.raises(ReplayedTokenError):
        cache.use("c", until=T0 + 30)
    # Refusing did not evict a live key: "a" is still remembered.
    with pytest.raises(ReplayedTokenError):
        cache.use("a", until=T0 + 30)
    clock.now = T0 + 11  # "a" expires, which frees one slot
    cache.use("c", until=T0 + 30)
    with pytest.raises(ReplayedTokenError):
        cache.use("d", until=T0 + 30)


# --- client assertions -----------------------------------------------------------------


def test_make_assertion_verifies(keys: Keys, clock: FakeClock) -> None:
    token = make_assertion(keys.agent, AGENT, audience=AUDIENCE, now=T0)
    assert assertion_verifier(keys, clock).verify(token) == AGENT


def test_hand_built_base_assertion_verifies(keys: Keys, clock: FakeClock) -> None:
    """The base every failure case below starts from is itself accepted."""
    token = compact(ASSERTION_HEADER, assertion_claims(), keys.agent)
    assert assertion_verifier(keys, clock).verify(token) == AGENT


@pytest.mark.parametrize(
    ("now", "ttl"),
    [(T0 + MAX_AGE + 30, MAX_AGE), (T0 - 30, MAX_AGE), (T0, 1)],
    ids=["exp-plus-skew", "iat-minus-skew", "one-second-lifetime"],
)
def test_assertion_boundaries_accepted(keys: Keys, now: float, ttl: int) -> None:
    token = make_assertion(keys.agent, AGENT, audience=AUDIENCE, now=T0, ttl=ttl)
    assert assertion_verifier(keys, FakeClock(now)).verify(token) == AGENT


def test_assertion_replay_is_refused(keys: Keys, clock: FakeClock) -> None:
    verifier = assertion_verifier(keys, clock)
    token = make_assertion(keys.agent, AGENT, audience=AUDIENCE, now=T0)
    verifier.verify(token)
    with pytest.raises(ReplayedTokenError):
        verifier.verify(token)
    # A different token carrying a jti already used is the same use.
    verifier.verify(compact(ASSERTION_HEADER, assertion_claims(jti="jti-0001"), keys.agent))
    other = assertion_claims(jti="jti-0001", iat=T0 - 1, exp=T0 + MAX_AGE - 1)
    with pytest.raises(ReplayedTokenError):
        verifier.verify(compact(ASSERTION_HEADER, other, keys.agent))


def test_rejected_assertion_does_not_burn_its_jti(keys: Keys, clock: FakeClock) -> None:
    verifier = assertion_verifier(keys, clock)
    forged = compact(ASSERTION_HEADER, assertion_claims(jti="victim"), keys.other)
    with pytest.raises(InvalidSignatureError):
        verifier.verify(forged)
    assert verifier.verify(compact(ASSERTION_HEADER, assertion_claims(jti="victim"), keys.agent))


def _raw_payload(text: str) -> bytes:
    return text.encode("utf-8")


BASE_JSON = f'"iss":"{AGENT}","sub":"{AGENT}","aud":"{AUDIENCE}","iat":{T0},"jti":"j"'

AssertionCase = tuple[
    str, Callable[[Keys], object], float, type[TokenError] | type[UnknownAgentError]
]

ASSERTION_CASES: list[AssertionCase] = [
    (
        "expired",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(), k.agent),
        T0 + MAX_AGE + 31,
        ExpiredTokenError,
    ),
    (
        "lifetime-over-max-age",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(exp=T0 + MAX_AGE + 1), k.agent),
        T0,
        LifetimeTooLongError,
    ),
    (
        "exp-before-iat",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(exp=T0 - 1), k.agent),
        T0,
        LifetimeTooLongError,
    ),
    (
        "iat-in-future",
        lambda k: compact(
            ASSERTION_HEADER, assertion_claims(iat=T0 + 31, exp=T0 + 31 + MAX_AGE), k.agent
        ),
        T0,
        ImmatureTokenError,
    ),
    (
        "nbf-in-future",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(nbf=T0 + 31), k.agent),
        T0,
        ImmatureTokenError,
    ),
    (
        "wrong-aud",
        lambda k: compact(
            ASSERTION_HEADER, assertion_claims(aud="https://other.test/v1/token"), k.agent
        ),
        T0,
        InvalidAudienceError,
    ),
    (
        "aud-is-issuer",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(aud=ISSUER), k.agent),
        T0,
        InvalidAudienceError,
    ),
    (
        "aud-prefix",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(aud=AUDIENCE[:-1]), k.agent),
        T0,
        InvalidAudienceError,
    ),
    (
        "aud-extended",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(aud=AUDIENCE + "/"), k.agent),
        T0,
        InvalidAudienceError,
    ),
    (
        "aud-list",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(aud=[AUDIENCE]), k.agent),
        T0,
        MissingClaimError,
    ),
    (
        "iss-not-sub",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(iss="agent-2"), k.agent),
        T0,
        MissingClaimError,
    ),
    (
        "kid-not-sub",
        lambda k: compact({**ASSERTION_HEADER, "kid": "agent-2"}, assertion_claims(), k.agent),
        T0,
        MissingClaimError,
    ),
    (
        "exp-string",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(exp=str(T0 + 60)), k.agent),
        T0,
        MissingClaimError,
    ),
    (
        "exp-boolean",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(exp=True), k.agent),
        T0,
        MissingClaimError,
    ),
    (
        "exp-nan",
        lambda k: compact(ASSERTION_HEADER, _raw_payload("{" + BASE_JSON + ',"exp":NaN}'), k.agent),
        T0,
        MalformedTokenError,
    ),
    (
        "exp-infinity-literal",
        lambda k: compact(
            ASSERTION_HEADER, _raw_payload("{" + BASE_JSON + ',"exp":Infinity}'), k.agent
        ),
        T0,
        MalformedTokenError,
    ),
    (
        "exp-overflows-to-inf",
        lambda k: compact(
            ASSERTION_HEADER, _raw_payload("{" + BASE_JSON + ',"exp":1e999}'), k.agent
        ),
        T0,
        MissingClaimError,
    ),
    (
        "iat-null",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(iat=None), k.agent),
        T0,
        MissingClaimError,
    ),
    (
        "duplicate-sub",
        lambda k: compact(
            ASSERTION_HEADER,
            _raw_payload("{" + BASE_JSON + f',"exp":{T0 + 60},"sub":"agent-2"}}'),
            k.agent,
        ),
        T0,
        MalformedTokenError,
    ),
    (
        "duplicate-same-value",
        lambda k: compact(
            ASSERTION_HEADER,
            _raw_payload("{" + BASE_JSON + f',"exp":{T0 + 60},"jti":"j"}}'),
            k.agent,
        ),
        T0,
        MalformedTokenError,
    ),
    (
        "payload-array",
        lambda k: compact(ASSERTION_HEADER, to_json([assertion_claims()]), k.agent),
        T0,
        MalformedTokenError,
    ),
    (
        "payload-string",
        lambda k: compact(ASSERTION_HEADER, to_json("agent-1"), k.agent),
        T0,
        MalformedTokenError,
    ),
    (
        "payload-not-json",
        lambda k: compact(ASSERTION_HEADER, b"\xff\xfe not json", k.agent),
        T0,
        MalformedTokenError,
    ),
    (
        "alg-none-unsigned",
        lambda k: (
            f"{b64u(to_json({**ASSERTION_HEADER, 'alg': 'none'}))}."
            f"{b64u(to_json(assertion_claims()))}."
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "alg-none-signed",
        lambda k: compact({**ASSERTION_HEADER, "alg": "none"}, assertion_claims(), k.agent),
        T0,
        BadAlgorithmError,
    ),
    (
        "alg-missing",
        lambda k: compact({"typ": "JWT", "kid": AGENT}, assertion_claims(), k.agent),
        T0,
        BadAlgorithmError,
    ),
    (
        "alg-ed25519-spelling",
        lambda k: compact({**ASSERTION_HEADER, "alg": "Ed25519"}, assertion_claims(), k.agent),
        T0,
        BadAlgorithmError,
    ),
    (
        "hs256-raw-public-key",
        lambda k: hs256(
            {**ASSERTION_HEADER, "alg": "HS256"}, assertion_claims(), k.agent.public.raw
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "hs256-b64url-public-key",
        lambda k: hs256(
            {**ASSERTION_HEADER, "alg": "HS256"},
            assertion_claims(),
            k.agent.public.b64url.encode("ascii"),
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "hs256-pem-public-key",
        lambda k: hs256(
            {**ASSERTION_HEADER, "alg": "HS256"}, assertion_claims(), public_pem(k.agent.public)
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "header-jwk",
        lambda k: compact(
            {**ASSERTION_HEADER, "jwk": k.other.public.jwk()}, assertion_claims(), k.agent
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "header-jku",
        lambda k: compact(
            {**ASSERTION_HEADER, "jku": "https://evil.test/jwks.json"}, assertion_claims(), k.agent
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "header-x5u",
        lambda k: compact(
            {**ASSERTION_HEADER, "x5u": "https://evil.test/cert.pem"}, assertion_claims(), k.agent
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "header-x5c",
        lambda k: compact({**ASSERTION_HEADER, "x5c": ["MIIB"]}, assertion_claims(), k.agent),
        T0,
        BadAlgorithmError,
    ),
    (
        # No critical extension is understood, so any "crit" is refused.
        "header-crit-unknown",
        lambda k: compact({**ASSERTION_HEADER, "crit": ["exp"]}, assertion_claims(), k.agent),
        T0,
        BadAlgorithmError,
    ),
    (
        # RFC 7797 b64 is an extension pyjwt understands, so our own refusal must fire.
        "header-crit-b64",
        lambda k: compact(
            {**ASSERTION_HEADER, "b64": True, "crit": ["b64"]}, assertion_claims(), k.agent
        ),
        T0,
        BadAlgorithmError,
    ),
    (
        "typ-access-token",
        lambda k: compact({**ASSERTION_HEADER, "typ": "at+jwt"}, assertion_claims(), k.agent),
        T0,
        BadAlgorithmError,
    ),
    (
        "signed-by-other-key",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(), k.other),
        T0,
        InvalidSignatureError,
    ),
    (
        "signature-stripped",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(), k.agent).rsplit(".", 1)[0] + ".",
        T0,
        InvalidSignatureError,
    ),
    (
        "payload-swapped",
        lambda k: _swap_payload(
            compact(ASSERTION_HEADER, assertion_claims(), k.agent),
            assertion_claims(jti="other"),
        ),
        T0,
        InvalidSignatureError,
    ),
    (
        "unknown-agent",
        lambda k: compact(
            {**ASSERTION_HEADER, "kid": "ghost"},
            assertion_claims(iss="ghost", sub="ghost"),
            k.other,
        ),
        T0,
        UnknownAgentError,
    ),
    (
        "one-megabyte",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(pad="a" * 1_000_000), k.agent),
        T0,
        MalformedTokenError,
    ),
    (
        "two-segments",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(), k.agent).rsplit(".", 1)[0],
        T0,
        MalformedTokenError,
    ),
    (
        "four-segments",
        lambda k: compact(ASSERTION_HEADER, assertion_claims(), k.agent) + ".AAAA",
        T0,
        MalformedTokenError,
    ),
    ("garbage-base64", lambda k: "!!!.@@@.###", T0, MalformedTokenError),
    ("header-not-json", lambda k: f"{b64u(b'nope')}.{b64u(b'{}')}.AAAA", T0, MalformedTokenError),
    ("empty-string", lambda k: "", T0, MalformedTokenError),
    ("none", lambda k: None, T0, MalformedTokenError),
    ("bytes", lambda k: b"a.b.c", T0, MalformedTokenError),
]


def _swap_payload(token: str, claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64u(to_json(claims))}.{signature}"


@pytest.mark.parametrize(
    ("make_token", "now", "error"),
    [case[1:] for case in ASSERTION_CASES],
    ids=[case[0] for case in ASSERTION_CASES],
)
def test_assertion_refused(
    keys: Keys,
    make_token: Callable[[Keys], object],
    now: float,
    error: type[Exception],
) -> None:
    with pytest.raises(error) as info:
        assertion_verifier(keys, FakeClock(now)).verify(make_token(keys))
    assert type(info.value) is error


@pytest.mark.parametrize(
    "claim", ["exp", "iat", "iss", "aud", "sub", "jti"], ids=lambda c: f"no-{c}"
)
def test_assertion_missing_claim_refused(keys: Keys, clock: FakeClock, claim: str) -> None:
    token = compact(ASSERTION_HEADER, assertion_claims(**{claim: DROP}), keys.agent)
    with pytest.raises(MissingClaimError) as info:
        assertion_verifier(keys, clock).verify(token)
    assert type(info.value) is MissingClaimError


@pytest.mark.parametrize("claim", ["iss", "sub", "jti", "aud"], ids=lambda c: f"empty-{c}")
def test_assertion_empty_string_claim_refused(keys: Keys, clock: FakeClock, claim: str) -> None:
    token = compact(ASSERTION_HEADER, assertion_claims(**{claim: ""}), keys.agent)
    with pytest.raises(TokenError):
        assertion_verifier(keys, clock).verify(token)


# --- access tokens ---------------------------------------------------------------------

SCOPE = ["model:claude-haiku-4-5", "tool:kb.search"]


def access_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": AGENT,
        "aud": ISSUER,
        "client_id": AGENT,
        "role": "demo-agent",
        "scope": " ".join(SCOPE),
        "iat": T0,
        "exp": T0 + ACCESS_TTL,
        "jti": "at-0001",
    }
    for name, value in changes.items():
        if value is DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def access_header(keys: Keys, **changes: Any) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "at+jwt", "kid": keys.gateway.public.kid, **changes}


def test_access_token_issue_and_verify(keys: Keys, clock: FakeClock) -> None:
    issuer = AccessTokenIssuer(keys.gateway, issuer=ISSUER, ttl=ACCESS_TTL, clock=clock)
    token, issued = issuer.issue(AGENT, "demo-agent", SCOPE)
    claims = access_verifier(keys, clock).verify(token)
    assert isinstance(claims, AccessClaims)
    assert claims == issued
    assert claims.agent_id == AGENT
    assert claims.role == "demo-agent"
    assert claims.scope == frozenset(SCOPE)
    assert (claims.iat, claims.exp) == (T0, T0 + ACCESS_TTL)
    header_b64, payload_b64, _ = token.split(".")
    header = json.loads(b64u_decode(header_b64))
    payload = json.loads(b64u_decode(payload_b64))
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": keys.gateway.public.kid}
    assert payload["iss"] == payload["aud"] == ISSUER
    assert payload["client_id"] == payload["sub"] == AGENT
    assert payload["scope"] == " ".join(SCOPE)


def test_hand_built_access_token_verifies(keys: Keys, clock: FakeClock) -> None:
    token = compact(access_header(keys), access_claims(), keys.gateway)
    assert access_verifier(keys, clock).verify(token).scope == frozenset(SCOPE)
    mime_typ = compact(access_header(keys, typ="application/at+jwt"), access_claims(), keys.gateway)
    assert access_verifier(keys, clock).verify(mime_typ).agent_id == AGENT


ACCESS_CASES: list[tuple[str, Callable[[Keys], object], type[TokenError]]] = [
    (
        "client-assertion-as-access-token",
        lambda k: make_assertion(k.gateway, AGENT, audience=ISSUER, now=T0),
        BadAlgorithmError,
    ),
    (
        "typ-missing",
        lambda k: compact(
            {"alg": "EdDSA", "kid": k.gateway.public.kid}, access_claims(), k.gateway
        ),
        BadAlgorithmError,
    ),
    (
        "wrong-kid",
        lambda k: compact(access_header(k, kid=k.other.public.kid), access_claims(), k.gateway),
        BadAlgorithmError,
    ),
    (
        "wrong-issuer",
        lambda k: compact(access_header(k), access_claims(iss="https://evil.test"), k.gateway),
        InvalidIssuerError,
    ),
    (
        "wrong-audience",
        lambda k: compact(access_header(k), access_claims(aud=AUDIENCE), k.gateway),
        InvalidAudienceError,
    ),
    (
        "signed-by-agent-key",
        lambda k: compact(access_header(k), access_claims(), k.agent),
        InvalidSignatureError,
    ),
    (
        "expired",
        lambda k: compact(access_header(k), access_claims(iat=T0 - 331, exp=T0 - 31), k.gateway),
        ExpiredTokenError,
    ),
    (
        "lifetime-over-ttl",
        lambda k: compact(access_header(k), access_claims(exp=T0 + ACCESS_TTL + 1), k.gateway),
        LifetimeTooLongError,
    ),
    (
        "scope-missing",
        lambda k: compact(access_header(k), access_claims(scope=DROP), k.gateway),
        MissingClaimError,
    ),
    (
        "role-not-string",
        lambda k: compact(access_header(k), access_claims(role=["demo-agent"]), k.gateway),
        MissingClaimError,
    ),
    (
        "hs256-gateway-public-key",
        lambda k: hs256(access_header(k, alg="HS256"), access_claims(), k.gateway.public.raw),
        BadAlgorithmError,
    ),
]


@pytest.mark.parametrize(
    ("make_token", "error"),
    [case[1:] for case in ACCESS_CASES],
    ids=[case[0] for case in ACCESS_CASES],
)
def test_access_token_refused(
    keys: Keys, clock: FakeClock, make_token: Callable[[Keys], object], error: type[TokenError]
) -> None:
    with pytest.raises(error) as info:
        access_verifier(keys, clock).verify(make_token(keys))
    assert type(info.value) is error


# --- registry --------------------------------------------------------------------------

ROLES: dict[str, object] = {"demo-agent": object(), "ops-agent": object()}


class Home:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.registry = root / "config" / "agents.toml"
        self.keys = root / "home" / "identities"

    def key(self, agent_id: str) -> Path:
        return self.keys / f"{agent_id}.key"

    def enroll(self, agent_id: str, role: str = "demo-agent", *, force: bool = False) -> Any:
        return enroll(
            registry_path=self.registry,
            key_path=self.key(agent_id),
            agent_id=agent_id,
            role=role,
            known_roles=ROLES,
            force=force,
        )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its mode and, for files, its bytes."""
    result: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        result[str(path.relative_to(root))] = (st.st_mode, content)
    return result


def test_enroll_writes_key_and_registry_entry(home: Home) -> None:
    record = home.enroll("agent-1")
    key_path = home.key("agent-1")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = read_private_key(key_path)
    assert key.public.raw == record.public_key.raw
    document = tomllib.loads(home.registry.read_text("utf-8"))
    entry = document["agents"]["agent-1"]
    assert entry["public_key"] == b64u(key.public.raw)
    assert entry["role"] == "demo-agent"
    assert entry["status"] == "active"
    loaded = load_registry(home.registry)
    assert loaded["agent-1"].public_key.raw == key.public.raw
    # No staging files are left behind.
    assert sorted(p.name for p in home.keys.iterdir()) == ["agent-1.key"]
    assert sorted(p.name for p in home.registry.parent.iterdir()) == ["agents.toml"]


def test_enroll_keeps_other_agents(home: Home) -> None:
    first = home.enroll("agent-1")
    home.enroll("agent-2", "ops-agent")
    loaded = load_registry(home.registry)
    assert set(loaded) == {"agent-1", "agent-2"}
    assert loaded["agent-1"].public_key.raw == first.public_key.raw
    assert loaded["agent-2"].role == "ops-agent"


def test_enroll_accepts_63_character_id(home: Home) -> None:
    agent_id = "a" * 63
    home.enroll(agent_id)
    assert agent_id in load_registry(home.registry)


REFUSALS: list[tuple[str, str, str, type[Exception]]] = [
    ("empty", "", "demo-agent", UsageError),
    ("upper-case", "UPPER", "demo-agent", UsageError),
    ("dot-dot-slash", "../x", "demo-agent", UsageError),
    ("slash", "a/b", "demo-agent", UsageError),
    ("space", "a b", "demo-agent", UsageError),
    ("64-chars", "a" * 64, "demo-agent", UsageError),
    ("200-chars", "a" * 200, "demo-agent", UsageError),
    ("leading-dash", "-lead", "demo-agent", UsageError),
    ("leading-dot", ".hidden", "demo-agent", UsageError),
    ("cyrillic-homoglyph", "\u0430gent-2", "demo-agent", UsageError),
    ("trailing-newline", "agent-2\n", "demo-agent", UsageError),
    ("nul-byte", "agent\x002", "demo-agent", UsageError),
    ("unknown-role", "agent-2", "no-such-role", UsageError),
    ("existing-id", "agent-1", "demo-agent", EnrollmentError),
]


@pytest.mark.parametrize(
    ("agent_id", "role", "error"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_enroll_refusal_writes_nothing(
    home: Home, agent_id: str, role: str, error: type[Exception]
) -> None:
    home.enroll("agent-1")
    before = snapshot(home.root)
    with pytest.raises(error) as info:
        home.enroll(agent_id, role)
    assert type(info.value) is error
    assert snapshot(home.root) == before


def test_enroll_refuses_when_only_the_key_file_exists(home: Home) -> None:
    home.enroll("agent-1")
    write_private_key(home.key("agent-2"), SigningKey.generate())
    before = snapshot(home.root)
    with pytest.raises(EnrollmentError):
        home.enroll("agent-2")
    assert snapshot(home.root) == before


def test_enroll_force_replaces_the_key(home: Home) -> None:
    old = home.enroll("agent-1")
    old_pem = home.key("agent-1").read_bytes()
    new = home.enroll("agent-1", "ops-agent", force=True)
    assert new.public_key.raw != old.public_key.raw
    assert home.key("agent-1").read_bytes() != old_pem
    assert stat.S_IMODE(home.key("agent-1").stat().st_mode) == 0o600
    assert read_private_key(home.key("agent-1")).public.raw == new.public_key.raw
    loaded = load_registry(home.registry)
    assert loaded["agent-1"].public_key.raw == new.public_key.raw
    assert loaded["agent-1"].role == "ops-agent"
    assert sorted(p.name for p in home.keys.iterdir()) == ["agent-1.key"]


def _write_registry(path: Path, agents: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps({"agents": agents}).encode("utf-8"))


@pytest.mark.parametrize(
    "raw",
    [b"\x01" + bytes(31), ORDER_8_POINT, bytes(32)],
    ids=["identity", "order-8", "all-zero"],
)
def test_load_registry_refuses_small_order_key(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "agents.toml"
    _write_registry(path, {"bad-agent": {"public_key": b64u(raw), "role": "demo-agent"}})
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert str(path) in str(info.value)
    assert "agents.bad-agent.public_key" in str(info.value)


def test_disabled_and_unknown_agents_look_the_same(home: Home) -> None:
    home.enroll("agent-1")
    home.enroll("agent-2")
    document = tomllib.loads(home.registry.read_text("utf-8"))
    document["agents"]["agent-2"]["status"] = "disabled"
    home.registry.write_bytes(tomli_w.dumps(document).encode("utf-8"))
    registry = Registry(home.registry)
    assert registry.active("agent-1").agent_id == "agent-1"
    with pytest.raises(UnknownAgentError) as disabled:
        registry.active("agent-2")
    with pytest.raises(UnknownAgentError) as unknown:
        registry.active("nobody")
    assert type(disabled.value) is type(unknown.value) is UnknownAgentError
    assert str(disabled.value) == str(unknown.value)
    assert disabled.value.message == unknown.value.message
    assert disabled.value.detail == unknown.value.detail


def test_registry_sees_enrollment_without_restart(home: Home) -> None:
    home.enroll("agent-1")
    registry = Registry(home.registry)
    with pytest.raises(UnknownAgentError):
        registry.active("agent-2")
    home.enroll("agent-2")
    # The file changed on disk; the next lookup re-reads it.
    os.utime(home.registry, ns=(1, 1))
    assert registry.active("agent-2").role == "demo-agent"
