"""``email.send``: a simulated mail sender that never sends anything.

It is the demo's high-blast-radius tool: no role has it in standing scope, so calling it
takes a just-in-time grant. That is the policy's job; this module only validates the
message and answers as a mail queue would.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from agentzt.errors import ToolParameterError
from agentzt.tools.base import Tool

__all__ = ["EMAIL_SEND"]

MAX_ADDRESS_LENGTH = 254
MAX_SUBJECT_LENGTH = 200
MAX_BODY_LENGTH = 10_000

# One plain addr-spec: dot-atom local part, a domain of dot-separated labels with a
# top-level label of letters. No display names, comments, quoted local parts or lists,
# so a single recipient is exactly what reaches the (simulated) mailer.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


def _check(arguments: Mapping[str, Any]) -> None:
    """Require a single plain address and a one-line subject.

    jsonschema's "email" format only looks for an "@", so the address is checked here.
    """
    # IMPORTANT: CR or LF in a header field is header injection (a smuggled Bcc:) for a
    # real mailer; the address pattern and the subject check both exclude them.
    if _ADDRESS.fullmatch(str(arguments["to"])) is None:
        raise ToolParameterError("arguments.to: must be a single plain email address")
    if any(ch in "\r\n" for ch in str(arguments["subject"])):
        raise ToolParameterError("arguments.subject: must be a single line")


def _handle(arguments: Mapping[str, Any]) -> dict[str, Any]:
    # IMPORTANT: simulated; nothing leaves the process.
    to = str(arguments["to"])
    message = {"to": to, "subject": str(arguments["subject"]), "body": str(arguments["body"])}
    canonical = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return {"status": "queued", "message_id": f"<{digest[:32]}@agentzt.invalid>", "to": to}


EMAIL_SEND = Tool(
    name="email.send",
    description="Send an email to one recipient (simulated: the message is queued, "
    "never delivered).",
    schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "to": {"type": "string", "format": "email", "maxLength": MAX_ADDRESS_LENGTH},
            "subject": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_LENGTH},
            "body": {"type": "string", "minLength": 1, "maxLength": MAX_BODY_LENGTH},
        },
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
    },
    handler=_handle,
    check=_check,
)
