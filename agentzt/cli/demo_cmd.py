"""``agentzt demo``: the whole story end to end, in a throwaway state directory."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import shutil
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from starlette.applications import Starlette

import agentzt
from agentzt.audit import read_events
from agentzt.cli import app
from agentzt.cli.audit_cmd import events_table
from agentzt.cli.output import console
from agentzt.config import Paths, TlsSettings, load_gateway_settings
from agentzt.errors import AgentztError, ConfigError
from agentzt.identity import enroll, read_private_key
from agentzt.policy import load_policy
from agentzt.server import bind, running, url_of
from agentzt.tls import (
    TlsFiles,
    client_context,
    fingerprint,
    init_ca,
    server_context,
)
from agentzt.tls.pki import issue_agent_certificate

DEMO_AGENT = "demo-agent-1"


@dataclass(frozen=True)
class Expectation:
    call: str
    status: int
    error_type: str | None
    control: str
    # Text the answer must hold, and text it must not (checked on the full body).
    must_show: str | None = None
    must_hide: str | None = None


EXPECTED = [
    Expectation(
        "model claude-sonnet-4-6 (in role)", 200, None, "identity + token + role allow-list"
    ),
    Expectation("model claude-opus-4-8 (not in role)", 403, "permission_error", "deny by default"),
    Expectation("tool kb.search (in role)", 200, None, "tool allow-list"),
    Expectation("tool email.send (no standing scope)", 403, "permission_error", "least agency"),
    Expectation(
        "tool db.query: DELETE …", 400, "invalid_request_error", "parameter validation (SQL parser)"
    ),
    Expectation(
        "prompt: ignore all previous instructions…",
        403,
        "guardrail_blocked",
        "input guardrail (prompt injection)",
    ),
    Expectation(
        "tool web.fetch: page leaks an sk-ant-… key",
        200,
        None,
        "output guardrail (secret redaction, spotlighting)",
        must_show="[REDACTED:anthropic-key]",
        must_hide="sk-ant-",
    ),
    Expectation(
        "tool email.send + x-agentzt-elevate",
        200,
        None,
        "just-in-time elevation (single-use grant)",
    ),
    Expectation("model call with x-agentzt-task-id q3-report", 200, None, "task-bound token"),
    Expectation("POST /v1/tasks/q3-report/end", 200, None, "ending a task revokes its tokens"),
    Expectation(
        "model call under the ended task", 401, "authentication_error", "no token for a dead task"
    ),
    Expectation(
        "attacker replays the proxy's token: no proof / own key's proof",
        401,
        "authentication_error",
        "DPoP: a copied token alone is useless",
    ),
]


def demo_dir() -> Path:
    """The demo bundle: packaged inside a wheel, or the repository's ``demo/`` folder."""
    package = Path(agentzt.__file__).parent
    for candidate in (package / "_demo", package.parent / "demo"):
        if (candidate / "agent.py").is_file():
            return candidate
    raise ConfigError("the demo bundle (demo/agent.py) is missing from this installation")


def load_agent(directory: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("agentzt_demo_agent", directory / "agent.py")
    if spec is None or spec.loader is None:
        raise ConfigError(f"{directory / 'agent.py'}: cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _expected_text(e: Expectation) -> str:
    return f"{e.status} {e.error_type}" if e.error_type else str(e.status)


@app.command("demo")
def demo_cmd(
    mtls: Annotated[
        bool, typer.Option("--mtls", help="Run proxy↔gateway over mutual TLS with bound tokens.")
    ] = False,
) -> None:
    """Run the end-to-end demo on free loopback ports; exit 0 only if every step is as expected."""
    # Imported here: every agentzt process (the client proxy too) loads this module.
    from agentzt.gateway import Gateway, create_app
    from agentzt.gateway.audit_trail import verify_trail
    from agentzt.proxy import create_proxy_app

    bundle = demo_dir()
    agent = load_agent(bundle)
    with tempfile.TemporaryDirectory(prefix="agentzt-demo-") as tmp:
        paths = Paths(config_dir=Path(tmp) / "config", home=Path(tmp) / "home")
        shutil.copytree(bundle / "config", paths.config_dir)
        policy = load_policy(paths.policy_toml)
        enroll(
            registry_path=paths.agents_toml,
            key_path=paths.identity_key(DEMO_AGENT),
            agent_id=DEMO_AGENT,
            role="demo-agent",
            known_roles=policy.roles,
            description="agentzt demo",
        )
        console.print(
            f"[bold]agentzt demo[/] — enrolled [bold]{DEMO_AGENT}[/] (role demo-agent) in {tmp}"
        )
        started = time.perf_counter()
        settings = load_gateway_settings(paths.gateway_toml)
        server_tls = client_tls = None
        files = TlsFiles(paths.tls_dir)
        if mtls:
            now = dt.datetime.now(dt.UTC)
            _, server_cert = init_ca(files, now=now)
            issue_agent_certificate(files, paths.agents_toml, DEMO_AGENT, now=now)
            settings = dataclasses.replace(settings, tls=TlsSettings(mode="mtls"))
            server_tls = server_context(files)
            client_tls = client_context(files, DEMO_AGENT)
            console.print(
                f"mutual TLS: internal CA and gateway certificate "
                f"(sha256 {fingerprint(server_cert.certificate)[:23]}…), client certificate "
                f"CN={DEMO_AGENT}, URI spiffe://agentzt/agent/{DEMO_AGENT}"
            )
        gateway_sock = bind("127.0.0.1", 0)
        gateway_url = url_of(gateway_sock, "https" if mtls else "http")
        gateway = Gateway(paths, public_url=gateway_url, settings=settings)
        proxy_sock = bind("127.0.0.1", 0)
        proxy = create_proxy_app(
            agent_id=DEMO_AGENT,
            key=read_private_key(paths.identity_key(DEMO_AGENT)),
            gateway_url=gateway_url,
            tls=client_tls,
        )
        with (
            running(create_app(gateway), gateway_sock, server_tls) as gw,
            running(proxy, proxy_sock) as px,
        ):
            link = "mutual TLS 1.3" if mtls else "plain HTTP on loopback"
            console.print(
                f"gateway {gw.url}   client proxy {px.url}   (agent SDK base_url = proxy; "
                f"proxy → gateway over {link})\n"
            )
            outcomes = agent.run(px.url)
            outcomes.append(_replay_stolen(agent, proxy, gw.url, client_tls))
            refused = _anonymous_refused(gw.url, files.ca_cert) if mtls else None
        elapsed = time.perf_counter() - started
        ok = _render_steps(outcomes)
        events = read_events(paths.audit_log)
        if mtls:
            ok = _render_mtls(events, refused) and ok
        console.print(events_table(events, "Audit trail of this run"))
        try:
            report = verify_trail(paths, load_gateway_settings(paths.gateway_toml).audit)
            sealed = max((cp.size for _, cp in report.checkpoints), default=0)
            console.print(
                f"[green]audit chain verified[/]: {report.events} events, "
                f"head {report.head_hash[:16]}…, against the signed checkpoint at seq "
                f"{sealed} (written at shutdown, in the log directory and the witness)"
            )
            ok = ok and sealed == report.events
        except AgentztError as exc:
            console.print(f"[red]audit chain broken[/]: {exc.detail}")
            ok = False
    verdict = "[green]all steps as expected[/]" if ok else "[red]some steps were NOT as expected[/]"
    console.print(f"{verdict} ({elapsed:.2f} s)")
    if not ok:
        raise typer.Exit(1)


def _replay_stolen(
    agent: ModuleType, proxy: Starlette, gateway_url: str, tls: ssl.SSLContext | None
) -> object:
    """The token an attacker would find in the proxy's memory, handed to the demo's
    attacker (under mutual TLS it even holds the agent's client certificate)."""
    held = proxy.state.token_session.held()
    if held is None:
        return agent.Outcome(0, None, "the proxy held no token to steal", None)
    return agent.replay_stolen(gateway_url, held.value, tls)


def _anonymous_refused(url: str, ca: Path) -> str | None:
    """How the gateway refused a connection that shows no client certificate (None if it
    answered). Under TLS 1.3 the refusal arrives just after the client's handshake."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            answer = conn.recv(1024)
    except (ssl.SSLError, OSError) as exc:
        return str(getattr(exc, "reason", None) or type(exc).__name__)
    return None if answer else "connection closed"


def _render_mtls(events: list[dict[str, object]], refused: str | None) -> bool:
    """The mTLS evidence: every token bound to the client certificate, anonymous refused."""
    metas = [e.get("meta") for e in events if e.get("action") == "token.issue"]
    bound = [
        str(m["cnf"].get("x5t#S256"))
        for m in metas
        if isinstance(m, dict) and isinstance(m.get("cnf"), dict)
    ]
    all_bound = bool(metas) and len(bound) == len(metas)
    mark = {True: "[green]✓[/]", False: "[red]✗[/]"}
    thumbprint = f" (cnf x5t#S256 {bound[0][:16]}…)" if bound else ""
    console.print(
        f"{mark[all_bound]} {len(bound)} of {len(metas)} access tokens bound to the "
        f"client certificate{thumbprint}\n"
        f"{mark[refused is not None]} a connection without a client certificate: "
        f"{'refused (' + refused + ')' if refused else 'ANSWERED'}"
    )
    return all_bound and refused is not None


def _detail(expected: Expectation, outcome: object, body: str) -> str:
    """The summary, or, where a step checks the body, the passage that proves it."""
    if expected.must_show and expected.must_show in body:
        at = body.index(expected.must_show)
        return "…" + body[max(0, at - 30) : at + len(expected.must_show)]
    return str(getattr(outcome, "summary", ""))


def _render_steps(outcomes: list[object]) -> bool:
    table = Table(title="agentzt demo: every call went agent → client proxy → gateway")
    for column in ("#", "call", "expected", "actual", "control demonstrated", "detail", ""):
        table.add_column(column, overflow="fold")
    all_ok = len(outcomes) == len(EXPECTED)
    for number, (expected, outcome) in enumerate(zip(EXPECTED, outcomes, strict=False), start=1):
        status, error_type = getattr(outcome, "status", None), getattr(outcome, "error_type", None)
        body = str(getattr(outcome, "body", ""))
        ok = (
            status == expected.status
            and error_type == expected.error_type
            and (expected.must_show is None or expected.must_show in body)
            and (expected.must_hide is None or expected.must_hide not in body)
        )
        all_ok = all_ok and ok
        actual = f"{status} {error_type}" if error_type else str(status)
        table.add_row(
            str(number),
            expected.call,
            _expected_text(expected),
            actual,
            expected.control,
            Text(_detail(expected, outcome, body)[:70]),
            "[green]✓[/]" if ok else "[red]✗[/]",
        )
    console.print(table)
    return all_ok
