"""The agent-side client proxy: token session and forwarding to the gateway."""

from agentzt.proxy.app import create_proxy_app
from agentzt.proxy.session import TokenSession

__all__ = ["TokenSession", "create_proxy_app"]
