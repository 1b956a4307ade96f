"""The built-in tools: a JSON Schema for each tool's arguments, and its handler.

``default_toolbox()`` builds the ``ToolBox`` the gateway uses, once, at start-up:

    kb.search    search the IT policy knowledge base
    db.query     one read-only SELECT against an in-memory demo database
    web.fetch    simulated fetch of an http(s) URL (no network; a deliberately hostile page)
    email.send   simulated send of one email (high blast radius; JIT grant only)

``ToolBox.validate`` raises ``ToolParameterError`` and ``ToolBox.run`` runs the handler;
both raise ``NotFoundError`` for an unknown tool.
"""

from agentzt.tools.base import Tool, ToolBox, default_toolbox
from agentzt.tools.db import DB_QUERY, run_read_only
from agentzt.tools.email import EMAIL_SEND
from agentzt.tools.kb import KB_SEARCH
from agentzt.tools.sql import read_only_statement
from agentzt.tools.web import FAKE_LEAKED_KEY, INJECTION_PAYLOAD, WEB_FETCH

__all__ = [
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
]
