"""Promise 5 of the audit log: no credentials in it.

Canary secrets of real shapes go through every route of a real gateway and client proxy
(prompts, tool arguments, headers, form fields, paths, malformed bodies, upstream
answers); then every byte the audit trail wrote (log files, archives, checkpoints, the
witness copy) is searched for any piece of them, and for any piece of the real
credentials the test used (access tokens, DPoP proofs, client assertions, elevation
grants, the operator credential, the keys). Values kept for correlation must be the
keyed HMAC ``agentzt audit hash`` computes.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import re
import secrets
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from conftest import enroll_agent, roomy_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fake_anthropic import FakeAnthropic, fake_anthropic

from agentzt.audit import Correlator
from agentzt.config import Paths, UpstreamSettings, load_gateway_settings
from agentzt.gateway import Gateway, create_app
from agentzt.identity import Prover, SigningKey, make_assertion, new_jti, read_private_key
from agentzt.proxy import create_proxy_app
from agentzt.proxy.session import TokenSession
from agentzt.server import BackgroundServer, bind, url_of

AGENT = "agent-1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded"
REQUEST_ID = "x-agentzt-request-id"
# Request ids and task ids are identifiers the caller chooses and the log records by
# design (PROTOCOL.md: request_id on every event; meta.task, --task); a secret that fits
# their grammar is recorded as one. So secrets go into those places only in the shapes
# the grammar refuses, which must then not be echoed.
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# A piece of a secret this long found anywhere in the trail counts as a leak: enough to
# rule out chance (base64: 2^96 values), short enough to catch a secret cut to a prefix.
WINDOW = 16


# --- the secrets --------------------------------------------------------------------------


def _random(alphabet: str, size: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(size))


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Secret:
    """A credential and the random parts of it that must never show up in the trail
    (a fixed prefix such as ``sk-ant-api03-`` or a JWT header is not evidence)."""

    name: str
    value: str
    random_parts: tuple[str, ...]

    def pieces(self) -> set[bytes]:
        """Every WINDOW-long piece of each random part, as written raw, JSON-escaped and
        percent-encoded, plus the whole value in those forms."""
        found: set[bytes] = set()
        texts = [self.value]
        for part in self.random_parts:
            texts += [part[i : i + WINDOW] for i in range(max(1, len(part) - WINDOW + 1))]
        for text in texts:
            for form in (text, json.dumps(text)[1:-1], quote(text, safe="")):
                found.add(form.encode())
        return found


def flat(value: str) -> str:
    """``value`` on one line, as a header or a one-line field can carry it."""
    return " ".join(value.split())


def jwt_secret(name: str, token: str) -> Secret:
    """A compact JWS: its signature is what makes it unique (headers repeat)."""
    signature = token.rsplit(".", 1)[1]
    return Secret(name, token, (signature,))


def pem_secret(name: str, pem: str) -> Secret:
    body = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    return Secret(name, pem, tuple(body))


def canaries() -> dict[str, Secret]:
    """Fresh canaries of the shapes secret scanners know, random on every run."""
    anthropic = "sk-ant-api03-" + _random(ALNUM + "-_", 93) + "AA"
    aws_id = "AKIA" + _random(string.ascii_uppercase + string.digits, 16)
    # A "/" always, as in most real AWS secrets, so it is never a valid identifier.
    aws_secret = _random(ALNUM + "+/", 19) + "/" + _random(ALNUM + "+/", 20)
    github = "ghp_" + _random(ALNUM, 36)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    header = _b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": _random(ALNUM, 12), "iat": int(time.time()), "role": "admin"}
    payload = _b64u(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}"
    mac = hmac.digest(secrets.token_bytes(32), signing_input.encode(), "sha256")
    jwt = f"{signing_input}.{_b64u(mac)}"
    noise = secrets.token_urlsafe(32)
    found = [
        Secret("anthropic-key", anthropic, (anthropic[len("sk-ant-api03-") :],)),
        Secret("aws-access-key-id", aws_id, (aws_id[4:],)),
        Secret("aws-secret-access-key", aws_secret, (aws_secret,)),
        Secret("github-token", github, (github[4:],)),
        pem_secret("pem-private-key", pem),
        Secret("jwt", jwt, (payload, _b64u(mac))),
        Secret("random-high-entropy", noise, (noise,)),
    ]
    return {s.name: s for s in found}


# --- the stack ------------------------------------------------------------------------------


@dataclass
class Trail:
    """A gateway (passthrough to a fake Anthropic API, with a canary enterprise key), a
    client proxy, and everything secret the test handled."""

    paths: Paths
    gateway: Gateway
    gateway_url: str
    proxy_url: str
    proxy_session: Callable[[], TokenSession]
    upstream: FakeAnthropic
    canaries: dict[str, Secret]
    enterprise_key: str
    stop: Callable[[], None]
    used: list[Secret] = field(default_factory=list)
    # request id -> the token value the call presented, for the HMAC check.
    presented: dict[str, str] = field(default_factory=dict)

    def use(self, secret: Secret) -> str:
        self.used.append(secret)
        return secret.value

    @property
    def issuer(self) -> str:
        return self.gateway.issuer

    @property
    def key(self) -> SigningKey:
        return read_private_key(self.paths.identity_key(AGENT))

    def assertion(self) -> str:
        made = make_assertion(
            self.key, AGENT, audience=self.gateway.token_endpoint, now=time.time()
        )
        return self.use(jwt_secret("client-assertion", made))

    def proof(self, method: str, url: str, token: str | None = None) -> str:
        made = Prover(self.key, new_jti).proof(method, url, now=time.time(), access_token=token)
        return self.use(jwt_secret("dpop-proof", made))

    def token(self, client: httpx.Client, *, dpop: bool = False, **form: str) -> str:
        """A real access token from the token endpoint (bearer, or DPoP-bound)."""
        fields = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
            **form,
        }
        request_id = f"issue-{secrets.token_hex(4)}"
        headers = {"content-type": FORM, REQUEST_ID: request_id}
        if dpop:
            headers["dpop"] = self.proof("POST", self.gateway.token_endpoint)
        resp = client.post("/v1/token", content=urlencode(fields), headers=headers)
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        self.use(jwt_secret("access-token", token))
        self.presented[request_id] = token
        return token

    def held_tokens(self) -> None:
        """The tokens the proxy holds right now are credentials used in the test too."""
        session = self.proxy_session()
        for task in (None, *TASKS):
            held = session.held(task)
            if held is not None:
                self.use(jwt_secret("proxy-access-token", held.value))

    def operator(self) -> str:
        return self.use(
            Secret(
                "operator-credential", op := self.paths.operator_token.read_text().strip(), (op,)
            )
        )

    def audit_files(self) -> list[Path]:
        witness = self.paths.witness_dir(self.gateway.settings.audit.witness_dir)
        assert witness is not None
        roots = [self.paths.audit_log.parent, witness]
        files = [p for root in roots for p in sorted(root.rglob("*")) if p.is_file()]
        assert self.paths.audit_log in files
        assert any(p.parent == witness for p in files), "no witness checkpoint was written"
        return files


TASKS = ("task-one", "task-two")


def key_material(paths: Paths) -> list[Secret]:
    """The private keys and secrets the gateway and the agent hold on disk."""
    found = [
        pem_secret("gateway-signing-key", paths.gateway_key.read_text()),
        pem_secret("checkpoint-key", paths.checkpoint_key.read_text()),
        pem_secret("agent-key", paths.identity_key(AGENT).read_text()),
    ]
    hmac_key = paths.audit_hmac_key.read_text().strip()
    found.append(Secret("audit-hmac-key", hmac_key, (hmac_key,)))
    return found


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[Trail]:
    paths = roomy_config(tmp_path)
    # The probes fail at the OAuth endpoints on purpose, many times a minute.
    toml = paths.gateway_toml.read_text()
    roomy = toml.replace(
        "token_failures_per_minute_per_address = 60",
        "token_failures_per_minute_per_address = 100000",
    )
    assert roomy != toml
    paths.gateway_toml.write_text(roomy)
    enroll_agent(paths, AGENT, "demo-agent")
    found = canaries()
    enterprise = "sk-ant-api03-" + _random(ALNUM + "-_", 93) + "AA"
    upstream_key = Secret("enterprise-upstream-key", enterprise, (enterprise[13:],))
    with fake_anthropic() as upstream:
        settings = dataclasses.replace(
            load_gateway_settings(paths.gateway_toml),
            upstream=UpstreamSettings(mode="passthrough", base_url=upstream.url),
        )
        sock = bind("127.0.0.1", 0)
        gateway = Gateway(
            paths,
            public_url=url_of(sock),
            settings=settings,
            env={"ANTHROPIC_API_KEY": enterprise},
        )
        gw_server = BackgroundServer(create_app(gateway), sock).start()
        proxy = create_proxy_app(
            agent_id=AGENT,
            key=read_private_key(paths.identity_key(AGENT)),
            gateway_url=gw_server.url,
        )
        px_server = BackgroundServer(proxy, bind("127.0.0.1", 0)).start()

        def stop() -> None:
            px_server.stop()
            gw_server.stop()

        made = Trail(
            paths=paths,
            gateway=gateway,
            gateway_url=gw_server.url,
            proxy_url=px_server.url,
            proxy_session=lambda: proxy.state.token_session,
            upstream=upstream,
            canaries=found,
            enterprise_key=enterprise,
            stop=stop,
        )
        made.used.append(upstream_key)
        try:
            yield made
        finally:
            made.stop()


# --- finding leaks --------------------------------------------------------------------------


def _paths_holding(value: Any, piece: str, at: str = "") -> list[str]:
    """The JSON paths in ``value`` whose string (key or value) contains ``piece``."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            if piece in key:
                found.append(f"{at}.{key} (key)")
            found += _paths_holding(item, piece, f"{at}.{key}")
        return found
    if isinstance(value, list):
        return [
            p for i, item in enumerate(value) for p in _paths_holding(item, piece, f"{at}[{i}]")
        ]
    return [at or "."] if isinstance(value, str) and piece in value else []


def leaks(files: list[Path], watched: list[Secret]) -> list[str]:
    """One line per (secret, file line) where any piece of a watched secret occurs."""
    found: list[str] = []
    for path in files:
        data = path.read_bytes()
        for secret in watched:
            pieces = [p for p in secret.pieces() if p in data]
            if not pieces:
                continue
            for line in data.splitlines():
                hit = next((p for p in pieces if p in line), None)
                if hit is None:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    found.append(f"{secret.name}: in {path.name}: {line[:200]!r}")
                    continue
                fields = _paths_holding(event, hit.decode())
                found.append(
                    f"{secret.name}: {path.name} seq {event.get('seq')} request "
                    f"{event.get('request_id')} action {event.get('action')} field "
                    f"{fields or '(escaped form)'}"
                )
    return found


def all_events(paths: Paths) -> list[dict[str, Any]]:
    log = paths.audit_log
    files = [*sorted(log.parent.glob(f"{log.stem}-*{log.suffix}")), log]
    return [json.loads(line) for f in files for line in f.read_bytes().splitlines()]


# --- the probes -----------------------------------------------------------------------------

MODEL = "claude-sonnet-4-6"


def in_free_text(secret: Secret) -> str:
    """``secret`` as it would sit in free text the gateway does log on purpose (an
    elevation reason, an upstream's error message), which it redacts by shape. A bare
    random string there (the AWS secret key has no prefix either) is indistinguishable
    from a ticket number, so those two go in the way people write them: assigned."""
    value = flat(secret.value)
    if secret.name == "aws-secret-access-key":
        return f"aws_secret_access_key={value}"
    if secret.name == "random-high-entropy":
        return f"secret={value}"
    return value


def headers_full_of(c: dict[str, Secret], request_id: str) -> dict[str, str]:
    """Credentials an agent might send along by mistake, in the headers that carry them."""
    pem_line = c["pem-private-key"].random_parts[0]
    return {
        REQUEST_ID: request_id,
        "authorization": f"Bearer {c['jwt'].value}",
        "x-api-key": c["anthropic-key"].value,
        "cookie": f"session={c['random-high-entropy'].value}; gh={c['github-token'].value}",
        "x-whatever": f"{c['aws-access-key-id'].value}:{c['aws-secret-access-key'].value}",
        "x-request-id": c["random-high-entropy"].value,
        "x-amz-security-token": pem_line,
        "anthropic-beta": c["github-token"].value,
    }


def prompt_of(c: dict[str, Secret]) -> str:
    """Text with every canary in it, as a user pasting configuration would send."""
    return (
        "Please check this config for mistakes:\n"
        f"ANTHROPIC_API_KEY={c['anthropic-key'].value}\n"
        f"aws_access_key_id = {c['aws-access-key-id'].value}\n"
        f"aws_secret_access_key = {c['aws-secret-access-key'].value}\n"
        f"GITHUB_TOKEN={c['github-token'].value}\n"
        f"session: {c['jwt'].value}\n"
        f"salt {c['random-high-entropy'].value}\n"
        f"{c['pem-private-key'].value}"
    )


def message_body(c: dict[str, Secret], **extra: Any) -> dict[str, Any]:
    text = prompt_of(c)
    return {
        "model": MODEL,
        "max_tokens": 64,
        "system": [{"type": "text", "text": f"You are a helper. Internal key: {text}"}],
        "metadata": {"user_id": c["random-high-entropy"].value},
        "tools": [
            {
                "name": "lookup",
                "description": f"Looks things up with {c['github-token'].value}",
                "input_schema": {"type": "object", "properties": {}},
            }
        ],
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": [{"type": "text", "text": text}]},
            {"role": "user", "content": [{"type": "text", "text": f"and again: {text}"}]},
        ],
        **extra,
    }


def tool_arguments(c: dict[str, Secret]) -> list[tuple[str, dict[str, Any]]]:
    """Each canary in the arguments of every tool of the default toolbox."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for secret in c.values():
        one_line = flat(secret.value)
        # The SQL is the probe's payload (no injection risk: the tool runs read-only
        # statements against a throwaway database).
        sql = f"SELECT name FROM employees WHERE name = '{one_line}'"  # noqa: S608
        calls += [
            ("kb.search", {"query": f"rotate {one_line}"}),
            ("db.query", {"sql": sql}),
            ("web.fetch", {"url": f"https://example.com/login?token={quote(secret.value)}"}),
            ("web.fetch", {"url": f"https://admin:{quote(secret.value, safe='')}@example.com/"}),
        ]
    return calls


def malformed_bodies(c: dict[str, Secret]) -> list[bytes]:
    """JSON bodies the gateway must refuse, each carrying canaries."""
    anthropic, noise = c["anthropic-key"].value, c["random-high-entropy"].value
    github, aws = c["github-token"].value, c["aws-secret-access-key"].value
    return [
        # Cut short.
        f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "{anthropic}'.encode(),
        # Duplicate keys.
        f'{{"model": "{MODEL}", "max_tokens": 8, "x": "{noise}", "x": "{github}"}}'.encode(),
        # NaN, an invalid escape and a lone surrogate.
        f'{{"model": "{MODEL}", "max_tokens": NaN, "k": "{aws}"}}'.encode(),
        f'{{"model": "{MODEL}", "k": "\\x{noise}"}}'.encode(),
        f'{{"model": "{MODEL}", "k": "\\ud800{github}"}}'.encode(),
        # Not UTF-8.
        b'{"model": "' + MODEL.encode() + b'", "k": "\xff' + anthropic.encode() + b'"}',
        # Valid JSON of the wrong shape: an array, a string, an unknown field named by a
        # secret, an unreadable content source, a bad model name.
        json.dumps([anthropic, noise]).encode(),
        json.dumps(github).encode(),
        json.dumps({**message_body(c), anthropic: noise}).encode(),
        json.dumps(
            {
                "model": MODEL,
                "max_tokens": 8,
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": github}}]}
                ],
            }
        ).encode(),
        json.dumps({**message_body(c), "model": noise}).encode(),
        json.dumps({**message_body(c), "max_tokens": aws}).encode(),
    ]


def through_the_proxy(trail: Trail) -> None:
    """What an agent sends its proxy: prompts, system prompts, tool definitions and
    arguments, headers, task ids and JIT requests."""
    c = trail.canaries
    with httpx.Client(base_url=trail.proxy_url, timeout=30) as http:
        # Whole, streamed, and refused (max_tokens over the role's limit).
        for number, (body, status) in enumerate(
            [
                (message_body(c), 200),
                (message_body(c, stream=True), 200),
                (message_body(c, max_tokens=10**6), 400),
            ]
        ):
            resp = http.post(
                "/v1/messages", json=body, headers=headers_full_of(c, f"px-msg-{number}")
            )
            assert resp.status_code == status, resp.text
            trail.held_tokens()
        counted = {k: v for k, v in message_body(c).items() if k != "metadata"}
        resp = http.post(
            "/v1/messages/count_tokens", json=counted, headers=headers_full_of(c, "px-count")
        )
        assert resp.status_code == 200, resp.text
        for number, (tool, arguments) in enumerate(tool_arguments(c)):
            resp = http.post(
                f"/v1/tools/{tool}",
                json={"arguments": arguments},
                headers=headers_full_of(c, f"px-tool-{number}"),
            )
            assert resp.status_code in (200, 400, 403), resp.text
        # A secret as the name of an argument no tool takes.
        resp = http.post(
            "/v1/tools/kb.search",
            json={"arguments": {"query": "vpn", c["github-token"].value: c["jwt"].value}},
            headers={REQUEST_ID: "px-tool-extra-argument"},
        )
        assert resp.status_code == 400, resp.text
        # A JIT grant asked for through the proxy, with a reason and a message full of
        # secrets; the email goes out only with the grant.
        for number, secret in enumerate(c.values()):
            one_line = flat(secret.value)
            reason = in_free_text(secret)
            resp = http.post(
                "/v1/tools/email.send",
                json={
                    "arguments": {
                        "to": "ops@example.com",
                        "subject": f"key {one_line}"[:200],
                        "body": f"Here it is: {secret.value}",
                    }
                },
                headers={
                    REQUEST_ID: f"px-jit-{number}",
                    "x-agentzt-elevate": "tool:email.send",
                    "x-agentzt-elevate-reason": f"send the rotated key {reason}",
                    "x-agentzt-elevation": c["jwt"].value,
                },
            )
            assert resp.status_code == 200, resp.text
        # Task ids: the proxy gets a task token for a well-formed one; a secret, which
        # is not one, is refused.
        for task in TASKS:
            resp = http.post(
                "/v1/tools/kb.search",
                json={"arguments": {"query": c["anthropic-key"].value}},
                headers={REQUEST_ID: f"px-{task}", "x-agentzt-task-id": task},
            )
            assert resp.status_code == 200, resp.text
            trail.held_tokens()
        for secret in c.values():
            value = flat(secret.value)
            if IDENTIFIER.fullmatch(value):
                continue
            resp = http.post(
                "/v1/tools/kb.search",
                json={"arguments": {"query": "vpn"}},
                headers={REQUEST_ID: f"px-task-{secret.name}", "x-agentzt-task-id": value},
            )
            assert resp.status_code == 400, resp.text
        resp = http.post(f"/v1/tasks/{TASKS[0]}/end", headers=headers_full_of(c, "px-end"))
        assert resp.status_code == 200, resp.text


def upstream_echoes(trail: Trail) -> None:
    """An upstream that answers with secrets: in the answer (whole and streamed), and in
    an error message that echoes the request and the enterprise key."""
    c = trail.canaries
    enterprise = trail.enterprise_key
    shaped = [in_free_text(s) for s in c.values()]
    trail.upstream.script.message = {
        "id": "msg_echo",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": prompt_of(c)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 5},
    }
    with httpx.Client(base_url=trail.proxy_url, timeout=30) as http:
        for number, stream in enumerate([False, True]):
            body = {
                "model": MODEL,
                "max_tokens": 64,
                "stream": stream,
                "messages": [{"role": "user", "content": "show me the config"}],
            }
            resp = http.post("/v1/messages", json=body, headers={REQUEST_ID: f"up-echo-{number}"})
            assert resp.status_code == 200, resp.text
        for number, status in enumerate([400, 401, 429, 500]):
            trail.upstream.script.status = status
            trail.upstream.script.error_message = (
                f"invalid x-api-key {enterprise}; request had " + " ".join(shaped)
            )
            body = {
                "model": MODEL,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello"}],
            }
            resp = http.post("/v1/messages", json=body, headers={REQUEST_ID: f"up-error-{number}"})
            assert resp.status_code >= 400
    trail.upstream.script = type(trail.upstream.script)()


def at_the_oauth_endpoints(trail: Trail) -> None:
    """Token, revoke and introspect: secrets in every form field and header, next to the
    real assertions, proofs, tokens and the operator credential."""
    c = trail.canaries
    with httpx.Client(base_url=trail.gateway_url, timeout=30) as http:

        def form(path: str, request_id: str, fields: dict[str, str], **headers: str) -> int:
            resp = http.post(
                path,
                content=urlencode(fields),
                headers={"content-type": FORM, REQUEST_ID: request_id, **headers},
            )
            if path == "/v1/token" and resp.status_code == 200:
                # Issued after all (an extra field is ignored): a credential too.
                token = resp.json()["access_token"]
                trail.use(jwt_secret("access-token", token))
                trail.presented[request_id] = token
            return resp.status_code

        base = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
        for secret in c.values():
            tag, value, one_line = secret.name, secret.value, flat(secret.value)

            def signed(**fields: str) -> dict[str, str]:
                return {**base, "client_assertion": trail.assertion(), **fields}

            # (what, form fields, headers, the statuses that may answer)
            cases: list[tuple[str, dict[str, str], dict[str, str], set[int]]] = [
                ("assertion", {**base, "client_assertion": value}, {}, {400, 401}),
                ("type", signed(client_assertion_type=value), {}, {400}),
                ("grant", signed(grant_type=value), {}, {400}),
                ("scope", signed(scope=f"tool:kb.search {value}"), {}, {400}),
                ("client", signed(client_id=value), {}, {400}),
                # An unknown field is ignored, so the token is issued.
                ("extra", signed(**{value[:40]: value}), {}, {200}),
                ("dpop", signed(), {"dpop": one_line}, {400}),
                (
                    "auth",
                    {**base, "client_assertion": value},
                    {"authorization": f"Basic {one_line}", "cookie": f"a={one_line}"},
                    {400, 401},
                ),
            ]
            if not IDENTIFIER.fullmatch(value):
                cases.append(("task", signed(task_id=value), {}, {400}))
            for what, fields, headers, statuses in cases:
                assert form("/v1/token", f"tok-{what}-{tag}", fields, **headers) in statuses
            resp = http.post(
                "/v1/token",
                json={"client_assertion": secret.value},
                headers={REQUEST_ID: f"tok-json-{tag}"},
            )
            assert resp.status_code == 400

        bearer = trail.token(http)
        bound = trail.token(http, dpop=True)
        doomed = trail.token(http)
        operator = trail.operator()
        trail.presented.update({"rv-agent": doomed, "in-real": bearer, "in-bound": bound})
        as_operator = {"authorization": f"Bearer {operator}"}
        by_assertion = {"client_assertion_type": ASSERTION_TYPE}
        for secret in c.values():
            tag = secret.name
            trail.presented[f"rv-op-{tag}"] = secret.value
            trail.presented[f"in-op-{tag}"] = secret.value
            wrong_operator = {"authorization": f"Bearer {flat(secret.value)}"}
            revocations = [
                ("/v1/revoke", "rv-op", {"token": secret.value}, as_operator, {200}),
                ("/v1/introspect", "in-op", {"token": secret.value}, as_operator, {200}),
                ("/v1/revoke", "rv-bad-op", {"token": bearer}, wrong_operator, {401}),
                ("/v1/introspect", "in-bad-op", {"token": bearer}, wrong_operator, {401}),
                (
                    "/v1/revoke",
                    "rv-assertion",
                    {"token": bearer, **by_assertion, "client_assertion": secret.value},
                    {},
                    {400, 401},
                ),
            ]
            for path, what, fields, headers, statuses in revocations:
                assert form(path, f"{what}-{tag}", fields, **headers) in statuses
        assert form("/v1/introspect", "in-real", {"token": bearer}, **as_operator) == 200
        assert form("/v1/introspect", "in-bound", {"token": bound}, **as_operator) == 200
        own = {"token": doomed, **by_assertion, "client_assertion": trail.assertion()}
        assert form("/v1/revoke", "rv-agent", own) == 200


def at_the_gateway_directly(trail: Trail) -> None:
    """Resource calls straight to the gateway with real tokens: secrets in headers, in the
    elevation reason, in paths and query strings, and in malformed bodies."""
    c = trail.canaries
    with httpx.Client(base_url=trail.gateway_url, timeout=30) as http:
        bearer = trail.token(http)
        bound = trail.token(http, dpop=True)

        def dpop(method: str, path: str) -> dict[str, str]:
            return {
                "authorization": f"DPoP {bound}",
                "dpop": trail.proof(method, trail.issuer + path, bound),
            }

        def call(
            method: str, path: str, request_id: str, token: str | None = bearer, **kw: Any
        ) -> httpx.Response:
            headers = {REQUEST_ID: request_id, **kw.pop("headers", {})}
            if token is not None and "authorization" not in headers:
                headers["authorization"] = f"Bearer {token}"
                trail.presented[request_id] = token
            return http.request(method, path, headers=headers, **kw)

        for secret in c.values():
            tag = secret.name
            one_line = flat(secret.value)
            junk = {
                "x-api-key": one_line,
                "cookie": f"sid={one_line}",
                "x-whatever": one_line,
                "x-request-id": one_line,
                "x-agentzt-agent-id": one_line,
                "x-forwarded-for": one_line,
                "user-agent": one_line,
            }
            # Junk credentials in place of the token.
            for scheme in ("Bearer", "DPoP", "Basic", "token"):
                resp = call(
                    "GET",
                    "/v1/models",
                    f"gw-auth-{scheme}-{tag}",
                    None,
                    headers={"authorization": f"{scheme} {one_line}"},
                )
                assert resp.status_code == 401
            resp = http.get(
                "/v1/models",
                headers=[
                    ("authorization", f"Bearer {bearer}"),
                    ("authorization", f"Bearer {one_line}"),
                    (REQUEST_ID, f"gw-two-auth-{tag}"),
                ],
            )
            assert resp.status_code == 401
            # A real token with junk riding along, and a DPoP-bound token with a junk proof.
            resp = call(
                "POST", "/v1/messages", f"gw-junk-{tag}", json=message_body(c), headers=junk
            )
            assert resp.status_code in (200, 403), resp.text
            resp = call(
                "GET",
                "/v1/models",
                f"gw-proof-{tag}",
                None,
                headers={"authorization": f"DPoP {bound}", "dpop": one_line},
            )
            assert resp.status_code == 401
            trail.presented[f"gw-proof-{tag}"] = bound
            # A forged elevation grant, and secrets in the task header.
            resp = call(
                "POST",
                "/v1/tools/email.send",
                f"gw-grant-{tag}",
                json={"arguments": {"to": "a@example.com", "subject": "s", "body": "b"}},
                headers={"x-agentzt-elevation": one_line},
            )
            assert resp.status_code == 403
            if not IDENTIFIER.fullmatch(one_line):
                resp = call(
                    "GET", "/v1/tools", f"gw-task-{tag}", headers={"x-agentzt-task-id": one_line}
                )
                assert resp.status_code == 400
            reason = in_free_text(secret)
            resp = call(
                "POST",
                "/v1/elevate",
                f"gw-elevate-{tag}",
                json={"kind": "tool", "name": "email.send", "reason": f"need it: {reason}"},
            )
            assert resp.status_code == 200, resp.text
            trail.use(jwt_secret("elevation-grant", resp.json()["elevation_grant"]))
            resp = call(
                "POST",
                "/v1/elevate",
                f"gw-elevate-denied-{tag}",
                json={"kind": "tool", "name": "db.query", "reason": f"need it: {reason}"},
            )
            assert resp.status_code == 403
            for bad in (
                {"kind": one_line, "name": "email.send", "reason": "r"},
                {"kind": "tool", "name": one_line, "reason": "r"},
                {"kind": "tool", "name": "email.send", "reason": "r", one_line[:60]: 1},
                {"kind": "tool", "name": "email.send", "reason": secret.value + "\x00"},
            ):
                resp = call("POST", "/v1/elevate", f"gw-elevate-bad-{tag}", json=bad)
                assert resp.status_code == 400, resp.text
            # Paths and query strings.
            quoted = quote(secret.value, safe="")
            for method, path in (
                ("POST", f"/v1/tools/{quoted}"),
                ("GET", f"/v1/{quoted}"),
                *(
                    []
                    if IDENTIFIER.fullmatch(secret.value)
                    else [("POST", f"/v1/tasks/{quoted}/end")]
                ),
                ("GET", f"/v1/models?key={quoted}"),
                ("DELETE", f"/v1/tools/{quoted}"),
                ("GET", f"/{quoted}"),
            ):
                resp = call(
                    method,
                    path,
                    f"gw-path-{tag}",
                    json={"arguments": {}} if method == "POST" else None,
                )
                assert resp.status_code in (200, 400, 401, 403, 404), (path, resp.text)
            # DPoP-bound calls carrying secrets in the body.
            resp = call(
                "POST",
                "/v1/tools/kb.search",
                f"gw-bound-{tag}",
                None,
                json={"arguments": {"query": one_line[:400]}},
                headers=dpop("POST", "/v1/tools/kb.search"),
            )
            assert resp.status_code == 200, resp.text
            trail.presented[f"gw-bound-{tag}"] = bound
        # A task of its own, ended, with a grant presented on the way.
        task_token = trail.token(http, task_id="task-direct")
        resp = call(
            "POST",
            "/v1/tasks/task-direct/end",
            "gw-end",
            task_token,
            headers={"x-agentzt-task-id": "task-direct"},
        )
        assert resp.status_code in (200, 401), resp.text
        resp = call("POST", "/v1/tasks/task-direct/end", "gw-end-2", task_token)
        assert resp.status_code in (200, 401), resp.text


# Request ids each probe must have got into the log: proof that it reached the gateway.
REACHED = {
    "proxy": {"px-msg-0", "px-msg-1", "px-count", "px-tool-0", "px-jit-0", "px-task-one"}
    | {"px-end"},
    "upstream": {"up-echo-0", "up-echo-1", "up-error-0", "up-error-1"},
    "oauth": {"tok-assertion-jwt", "tok-dpop-jwt", "rv-op-jwt", "in-op-jwt", "rv-bad-op-jwt"}
    | {"rv-agent", "in-real", "in-bound"},
    "gateway": {"gw-auth-Bearer-jwt", "gw-junk-jwt", "gw-proof-jwt", "gw-grant-jwt"}
    | {"gw-elevate-jwt", "gw-path-jwt", "gw-bound-jwt", "gw-end"},
    "malformed": {f"{where}-bad-{n}" for where in ("px", "gw") for n in range(12)},
}


def malformed_requests(trail: Trail) -> None:
    """Bodies the gateway refuses, through the proxy and straight to every JSON route."""
    c = trail.canaries
    with httpx.Client(base_url=trail.proxy_url, timeout=30) as http:
        for number, body in enumerate(malformed_bodies(c)):
            resp = http.post(
                "/v1/messages",
                content=body,
                headers={"content-type": "application/json", REQUEST_ID: f"px-bad-{number}"},
            )
            assert resp.status_code in (400, 403), (number, resp.text)
    with httpx.Client(base_url=trail.gateway_url, timeout=30) as http:
        bearer = trail.token(http)
        for number, body in enumerate(malformed_bodies(c)):
            request_id = f"gw-bad-{number}"
            trail.presented[request_id] = bearer
            for path in ROUTES_TAKING_JSON:
                resp = http.post(
                    path,
                    content=body,
                    headers={
                        "authorization": f"Bearer {bearer}",
                        "content-type": "application/json",
                        REQUEST_ID: request_id,
                    },
                )
                # count_tokens takes no max_tokens, so it does not refuse a bad one.
                assert resp.status_code in (200, 400, 403), (number, path, resp.text)


ROUTES_TAKING_JSON = (
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/tools/kb.search",
    "/v1/elevate",
)
PROBES: dict[str, Callable[[Trail], None]] = {
    "proxy": through_the_proxy,
    "upstream": upstream_echoes,
    "oauth": at_the_oauth_endpoints,
    "gateway": at_the_gateway_directly,
    "malformed": malformed_requests,
}


@pytest.mark.parametrize("probe", list(PROBES), ids=list(PROBES))
def test_no_secret_reaches_the_audit_trail(trail: Trail, probe: str) -> None:
    PROBES[probe](trail)
    trail.held_tokens()
    # Shut down first: the final checkpoint is part of the trail too.
    trail.stop()
    events = all_events(trail.paths)
    assert REACHED[probe] <= {e["request_id"] for e in events}
    files = trail.audit_files()
    watched = [*trail.canaries.values(), *trail.used, *key_material(trail.paths)]
    found = leaks(files, watched)
    assert not found, "secrets in the audit trail:\n" + "\n".join(found)


def test_token_hmacs_are_the_keyed_hash_of_the_token_presented(trail: Trail) -> None:
    at_the_oauth_endpoints(trail)
    at_the_gateway_directly(trail)
    through_the_proxy(trail)
    malformed_requests(trail)
    trail.held_tokens()
    trail.stop()
    correlate = Correlator(bytes.fromhex(trail.paths.audit_hmac_key.read_text().strip()))
    events = all_events(trail.paths)
    checked = 0
    for event in events:
        expected = trail.presented.get(event["request_id"])
        if expected is not None and "token_hmac" in event["meta"]:
            assert event["meta"]["token_hmac"] == correlate(expected), event
            checked += 1
    assert checked > 50
    # Every HMAC in the log is that of a value the test sent or received as a token.
    known = {correlate(s.value) for s in trail.used} | {
        correlate(s.value) for s in trail.canaries.values()
    }
    unexplained = [e for e in events if e["meta"].get("token_hmac") not in (None, *known)]
    assert not unexplained
    # Issuance records the HMAC of the token it hands out.
    issued = [e for e in events if e["action"] == "token.issue"]
    assert issued and all(e["meta"]["token_hmac"] in known for e in issued)


def test_the_search_finds_a_secret_cut_short_escaped_or_encoded(tmp_path: Path) -> None:
    """The zero-leak checks above mean something only if the search would see a leak."""
    c = canaries()
    pem, aws, noise = c["pem-private-key"], c["aws-secret-access-key"], c["random-high-entropy"]
    written = {
        "escaped.jsonl": json.dumps({"reason": pem.value}).encode() + b"\n",
        "prefix.jsonl": json.dumps({"reason": f"field '{noise.value[:WINDOW]}'"}).encode(),
        "encoded.jsonl": json.dumps(
            {"resource": f"/v1/tools/{quote(aws.value, safe='')}"}
        ).encode(),
        "clean.jsonl": json.dumps({"reason": "[REDACTED:private-key]"}).encode(),
    }
    for name, data in written.items():
        (tmp_path / name).write_bytes(data)
    found = {name: leaks([tmp_path / name], [pem, aws, noise]) for name in sorted(written)}
    assert [len(found[name]) for name in sorted(written)] == [0, 1, 1, 1]
    assert "field ['.reason']" in found["escaped.jsonl"][0]
