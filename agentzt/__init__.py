"""agentzt: a zero-trust gateway between AI agents and the models and tools they call."""

__version__ = "0.1.0"

__all__ = ["__version__"]
