"""The tool model and the toolbox that validates and runs tools.

A ``Tool`` pairs a JSON Schema for its arguments with a synchronous handler. The
``ToolBox`` is built once at start-up: it checks and compiles every schema then, so the
hot path only validates. Validation is two steps, in this order: the JSON Schema, then
the tool's own semantic ``check``. Both raise ``ToolParameterError`` whose detail names
the argument path and the rule that failed, never the submitted value.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from agentzt.errors import NotFoundError, ToolParameterError

__all__ = ["Tool", "ToolBox", "default_toolbox"]

Arguments = Mapping[str, Any]


@dataclass(frozen=True)
class Tool:
    """A built-in tool: its name, what it does, its argument schema and its code.

    ``schema`` is a JSON Schema (draft 2020-12) for the arguments object. ``handler``
    takes validated arguments and returns JSON-serializable output. ``check``, when set,
    runs after the schema and raises ``ToolParameterError`` for arguments the schema
    cannot express (a URL scheme, a read-only SQL statement).
    """

    name: str
    description: str
    schema: Mapping[str, Any]
    handler: Callable[[Arguments], Any]
    check: Callable[[Arguments], None] | None = None
    # Top-level output fields that carry third-party content (a fetched page). The
    # gateway spotlights them as data before the agent, and later a model, reads them.
    untrusted_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Compiled:
    tool: Tool
    schema: dict[str, Any]
    validator: Draft202012Validator
    properties: frozenset[str]
    defaults: Mapping[str, Any]


class ToolBox:
    """The tools the gateway offers, with their schemas compiled once.

    Build it at start-up from ``{name: Tool}``. A schema that is not valid JSON Schema
    raises ``jsonschema.SchemaError`` here, so a broken tool stops start-up rather than
    the first call.
    """

    def __init__(self, tools: Mapping[str, Tool]) -> None:
        compiled: dict[str, _Compiled] = {}
        for name, tool in tools.items():
            if name != tool.name:
                raise ValueError(f"tool registered as {name!r} is named {tool.name!r}")
            # A private deep copy: later changes to the caller's dict cannot make the
            # listed schema and the enforced schema disagree.
            schema = copy.deepcopy(dict(tool.schema))
            Draft202012Validator.check_schema(schema)
            validator = Draft202012Validator(
                schema, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
            properties: Mapping[str, Any] = schema.get("properties", {})
            defaults = {
                key: spec["default"] for key, spec in properties.items() if "default" in spec
            }
            compiled[name] = _Compiled(tool, schema, validator, frozenset(properties), defaults)
        self._tools = compiled
        # Sorted once here: the gateway asks for the names on every tool call.
        self._names = tuple(sorted(compiled))

    def names(self) -> tuple[str, ...]:
        """The tool names, sorted."""
        return self._names

    def describe(self, name: str) -> dict[str, Any]:
        """The listing entry for one tool: ``name``, ``description``, ``input_schema``."""
        entry = self._get(name)
        return {
            "name": entry.tool.name,
            "description": entry.tool.description,
            "input_schema": copy.deepcopy(entry.schema),
        }

    def validate(self, name: str, arguments: object) -> Arguments:
        """Return the arguments, checked and with schema defaults filled in.

        Raises ``NotFoundError`` for an unknown tool and ``ToolParameterError`` when the
        arguments are not an object, fail the schema, or fail the tool's check. The
        result is a new dict; the caller passes it to ``run``.
        """
        entry = self._get(name)
        if not isinstance(arguments, dict):
            raise ToolParameterError("arguments: type")
        error = best_match(entry.validator.iter_errors(arguments))
        if error is not None:
            raise ToolParameterError(_describe_error(error, entry.properties))
        checked: dict[str, Any] = {**entry.defaults, **arguments}
        if entry.tool.check is not None:
            entry.tool.check(checked)
        return checked

    def untrusted_fields(self, name: str) -> tuple[str, ...]:
        return self._get(name).tool.untrusted_fields

    def run(self, name: str, arguments: Arguments) -> Any:
        """Run the tool's handler on arguments that ``validate`` returned."""
        return self._get(name).tool.handler(arguments)

    def _get(self, name: str) -> _Compiled:
        entry = self._tools.get(name)
        if entry is None:
            # IMPORTANT: the name comes from the request path; it is not echoed.
            raise NotFoundError("unknown tool")
        return entry


def _describe_error(error: ValidationError, properties: frozenset[str]) -> str:
    """Name the failed argument and keyword, e.g. ``arguments.sql: maxLength``.

    IMPORTANT: jsonschema's own message quotes the offending value; it must never reach
    the detail. Only schema-declared property names and list indices are rendered.
    """
    path = _render_path(error.absolute_path, properties)
    keyword = str(error.validator)
    if keyword == "required" and isinstance(error.instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [key for key in required if isinstance(key, str) and key not in error.instance]
        if missing and missing[0] in properties:
            return f"{path}.{missing[0]}: required"
    return f"{path}: {keyword}"


def _render_path(path: Iterable[str | int], properties: frozenset[str]) -> str:
    rendered = "arguments"
    for segment in path:
        if isinstance(segment, int):
            rendered += f"[{segment}]"
        elif segment in properties:
            rendered += f".{segment}"
        else:
            # A key the schema does not declare is attacker data.
            rendered += ".<key>"
    return rendered


def default_toolbox() -> ToolBox:
    """The toolbox of the four built-in tools."""
    # Imported here because every tool module imports ``Tool`` from this one.
    from agentzt.tools.db import DB_QUERY
    from agentzt.tools.email import EMAIL_SEND
    from agentzt.tools.kb import KB_SEARCH
    from agentzt.tools.web import WEB_FETCH

    return ToolBox({tool.name: tool for tool in (KB_SEARCH, DB_QUERY, WEB_FETCH, EMAIL_SEND)})
