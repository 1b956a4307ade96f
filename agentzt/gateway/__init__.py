"""The gateway: the policy enforcement point in front of models and tools."""

from agentzt.gateway.app import create_app
from agentzt.gateway.service import Gateway

__all__ = ["Gateway", "create_app"]
