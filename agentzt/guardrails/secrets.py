"""Secret redaction for the output guardrail.

``Redactor`` finds credentials in text, and in every string inside JSON-like data, and
replaces each with ``[REDACTED:<type>]``. The types are the names in ``KINDS``.

How it decides:

- Detection runs as ordered passes, most specific first (``KINDS`` order). Each marker is
  inert to the passes after it, so a secret is counted once, under its most specific type:
  an ``sk-ant-`` key assigned to ``api_key=`` is one ``anthropic-key``, a JWT after
  ``Bearer`` is one ``jwt``.
- ``generic-secret`` needs a secret-named key (``password``, ``pwd``, ``secret``,
  ``api_key``, ``*_token``, ``private_key``, ``credentials`` ...) in an assignment form
  (``k=v``, ``k: v``, ``"k": "v"``, ``K="v"``) or as a dict key, and a value that
  ``looks_like_secret``: at least 8 characters, not a placeholder, and Shannon entropy of
  at least ``min(3.0, log2(len) - 0.5)`` bits per character. Only the value is replaced.
- A bare UUID, git SHA or hex digest is not a secret; assigned to a secret-named key it is.
- Containers nested deeper than ``MAX_DEPTH`` are replaced whole by ``[REDACTED:too-deep]``
  and counted as ``too-deep``: fail closed, and the result stays serialisable by ``json``
  (whose encoder recurses). A reference cycle ends the same way.

Regex safety: every pattern is compiled once, and every unbounded repetition is possessive
or ends its pattern, so nothing backtracks over a long run. Patterns whose tail can still
fail after a run (the JWT's dots) start only at a token boundary, so each pass is linear.

Speed: strings shorter than any secret are skipped; a pass runs only when one of its
literal needles occurs in the text; patterns begin with a literal (boundary look-behinds
come after it) so the regex engine can skip ahead; and case-insensitive passes run over a
lowercased copy of the text whose offsets match the original's, because ``re.IGNORECASE``
is several times slower.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "MAX_DEPTH", "TOO_DEEP", "Redactor", "looks_like_secret"]

MAX_DEPTH = 128
"""Deepest container nesting walked; JSON bodies are parsed with a limit of 64."""

TOO_DEEP = "too-deep"
"""Counter name (and marker type) for a container replaced because it was nested too deep."""

# "pwd=" and an 8-character value; every token type is longer.
_SHORTEST_SECRET_TEXT = 12

MIN_SECRET_LENGTH = 8
# Random tokens of 16+ characters score 3.7-4 bits/char (hex) or 4.5+ (base64); repetitive
# values ("aaaaaaaa", "abcabcab", "xxxx-xxxx") score under 2. A string of n characters can
# score at most log2(n), so short values must come within half a bit of that maximum
# (mostly distinct characters), and long ones need 3.0.
ENTROPY_CAP = 3.0
ENTROPY_SLACK = 0.5

# A value that is only a stand-in for a secret: template syntax, an environment lookup,
# documentation wording, a number (counts, ports and timestamps far outnumber numeric
# secrets), or a marker left by an earlier pass.
_PLACEHOLDER = re.compile(
    r"your|example|placeholder|change[_-]?me|replace[_-]?me|dummy|\[REDACTED:"
    r"|os\.environ|getenv|process\.env"
    r"|\A(?:<.*>|\$\{.*\}|\$\(.*\)|\$[A-Za-z_]\w*|\{\{.*\}\}|\{%.*%\}|%\(\w*\)s|%\w+%|\d+)\Z",
    re.ASCII | re.IGNORECASE | re.DOTALL,
)
_PLACEHOLDER_WORDS = frozenset(
    {"none", "null", "nil", "undefined", "true", "false", "password", "passwd", "secret"}
    | {"required", "optional", "string", "hidden", "masked", "redacted", "default", "unset"}
)

# Key names that hold secrets, lowercase: they run over the folded text. No left boundary,
# so DB_PASSWORD and GITHUB_TOKEN match; the only suffixes allowed are the ones that keep
# the meaning (secret_key, token_value), so token_type, input_tokens and password_file do
# not.
_NAME = (
    r"(?:pass(?:word|wd|phrase)|pwd|secret|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|token|credentials?)"
    r"(?:[_.-](?:access[_-])?(?:key|token|value|hash))?"
)
# The key's closing quote (possibly JSON-escaped), the operator, the value's opening quote.
_ASSIGN = r"(?:\\?[\"'])?[ \t]{0,8}(?::=|=>|[:=])[ \t]{0,8}(?:\\?[\"'])?"
# A quoted value may hold spaces (passphrases); a bare one ends at space, quote or
# delimiter, or at a JSON escape (\\n, \\u00e9…, but not an escaped slash, which may be
# part of the value), as in text that was JSON-encoded. Runs of plain characters are taken
# whole ([…]++), which matches the same text as one character an iteration, six times faster.
_VALUE = (
    r"(?P<secret>(?<=\")[^\"\\\r\n]{1,200}(?=\\?\")"
    r"|(?<=')[^'\\\r\n]{1,200}(?=\\?')"
    r"|(?:[^\s\"'`,;&<>\\]++|\\/|\\(?![bfnrtu\"/\\]))++)"
)

_B64URL = "A-Za-z0-9_-"
# How many rejected candidates one pass looks inside (see _Detector.run).
_MAX_RETRIES = 32
# Rounds of all passes over one text; each round after the first runs only if the one
# before redacted something.
_MAX_ROUNDS = 4
# A "value" that is itself a secret-named key and its operator is the next assignment.
_KEY_AND_OPERATOR = re.compile(r"[a-z0-9_.-]*?" + _NAME + r"[\"']?[ \t]*(?::=|=>|[:=])", re.ASCII)


_MARKER = "[REDACTED:"


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``'s own character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def looks_like_secret(value: str) -> bool:
    """The ``generic-secret`` rule: long enough, not a placeholder, and high entropy."""
    # A value another pass already redacted part of is judged by what is left before
    # the marker, so a password glued to a token is not taken for a placeholder.
    value = value.split(_MARKER, 1)[0].strip()
    if _KEY_AND_OPERATOR.match(value.lower()):
        return False
    n = len(value)
    if n < MIN_SECRET_LENGTH or value.lower() in _PLACEHOLDER_WORDS:
        return False
    if _PLACEHOLDER.search(value):
        return False
    return shannon_entropy(value) >= min(ENTROPY_CAP, math.log2(n) - ENTROPY_SLACK)


def _has_digit(value: str) -> bool:
    return any(ch.isdigit() for ch in value)


def _looks_like_bearer(token: str) -> bool:
    # Prose says "the bearer of this letter" or "Bearer authentication"; real tokens are
    # random, so they carry a digit or an inner capital (P(neither) < 1e-3 at 32 chars).
    inner_capital = any(ch.isupper() for ch in token[1:])
    return looks_like_secret(token) and (_has_digit(token) or inner_capital)


def _always(_: str) -> bool:
    return True


def _fold(text: str) -> str:
    """Lowercase ``text`` keeping every offset: character i of the result is text[i]'s."""
    folded = text.lower()
    if len(folded) == len(text):
        # No character lowers to nothing, so equal lengths mean each lowered to exactly one.
        return folded
    # A few characters (U+0130) lower to two; keep those as they are, since every pattern
    # is ASCII-only anyway.
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)


@dataclass(frozen=True, slots=True)
class _Detector:
    """One pass: ``pattern`` has a group ``secret``; the rest of the match is kept."""

    kind: str
    pattern: re.Pattern[str]
    # The pass runs only when the folded text holds one of these lowercase substrings (none:
    # always, for patterns that begin with a literal and so scan as fast as the checks would)
    # and, for an assignment, an "=" or ":".
    needles: tuple[str, ...]
    assignment: bool
    accept: Callable[[str], bool]
    folded: bool  # the pattern is lowercase and runs over the folded text

    def run(self, text: str, folded: str, counts: Counter[str]) -> str:
        marker = f"[REDACTED:{self.kind}]"
        pieces: list[str] = []
        last = 0
        haystack = folded if self.folded else text
        position, retries = 0, _MAX_RETRIES
        while (match := self.pattern.search(haystack, position)) is not None:
            start, end = match.span("secret")
            # IMPORTANT: judge the original characters; entropy is case-sensitive.
            if self.accept(text[start:end]):
                pieces += (text[last:start], marker)
                last = position = end
                counts[self.kind] += 1
            elif retries and start > match.start():
                # IMPORTANT: a rejected value may hold the real assignment
                # ('token: password = "s3cr3t…"' first matches token → "password"), so
                # look again from the value. Bounded, so a chain of rejected candidates
                # ("password=password=…") stays linear.
                position, retries = start, retries - 1
            else:
                position = max(end, match.end())
        if not pieces:
            return text
        pieces.append(text[last:])
        return "".join(pieces)


def _starts(alphabet: str, prefix: str) -> str:
    """A look-behind, placed right after ``prefix``: the prefix starts a token when the
    character before it is not in ``alphabet``, or when that character ends a JSON
    escape (``\\n``, ``\\t``, ``\\u00e9``…), as in a secret written inside JSON text."""
    return (
        rf"(?:(?<![{alphabet}]{prefix})|(?<=\\[bfnrt]{prefix})"
        rf"|(?<=\\u[0-9A-Fa-f]{{4}}{prefix}))"
    )


def _detector(
    kind: str,
    pattern: str,
    *needles: str,
    assignment: bool = False,
    accept: Callable[[str], bool] = _always,
    folded: bool = False,
    dotall: bool = False,
) -> _Detector:
    flags = re.ASCII | (re.DOTALL if dotall else 0)
    return _Detector(kind, re.compile(pattern, flags), needles, assignment, accept, folded)


def _detectors() -> tuple[_Detector, ...]:
    """All passes, most specific first; the order is the precedence between types."""
    label = r"(?:[A-Z0-9]++ ){0,3}PRIVATE KEY(?: BLOCK)?-----"
    return (
        # IMPORTANT: a BEGIN without an END redacts to the end of the string (fail closed).
        _detector(
            "private-key",
            rf"(?P<secret>-----BEGIN {label}(?:.*?-----END {label}|.*))",
            "-----begin ",
            dotall=True,
        ),
        _detector("anthropic-key", rf"(?P<secret>sk-ant-[{_B64URL}]{{20,}}+)", "sk-ant-"),
        # Keys are random base62, so they carry a digit; slugs like "sk-learn-..." do not.
        _detector(
            "openai-key",
            rf"(?P<secret>sk-{_starts(_B64URL, 'sk-')}(?!ant-)[{_B64URL}]{{20,}}+)",
            "sk-",
            accept=_has_digit,
        ),
        _detector(
            "stripe-key",
            rf"(?P<secret>[rs]k_{_starts('A-Za-z0-9', '[rs]k_')}(?:live|test)_[A-Za-z0-9]{{16,}}+)",
            "k_live_",
            "k_test_",
        ),
        _detector(
            "aws-access-key",
            rf"(?P<secret>A{_starts('A-Z0-9', 'A')}(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{{16}})"
            r"(?![A-Z0-9])",
        ),
        _detector(
            "aws-secret-key",
            rf"(?:aws[_-]?)?secret[_-]?access[_-]?key{_ASSIGN}"
            # A "/" may be JSON-escaped ("\\/"), as in the key written inside JSON text.
            r"(?P<secret>(?:[a-z0-9+]|\\?/){40})(?![a-z0-9/+=])",
            "secret",
            assignment=True,
            accept=looks_like_secret,
            folded=True,
        ),
        _detector(
            "github-token",
            r"(?P<secret>gh[pousr]_[A-Za-z0-9]{36,}+|github_pat_[A-Za-z0-9_]{22,}+)",
        ),
        # The host stays readable; the path is the credential.
        _detector(
            "slack-webhook",
            # Slashes may be JSON-escaped ("\\/"), as in a URL inside JSON text.
            r"hooks\.slack\.com\\?/"
            r"(?P<secret>(?:services|workflows|triggers)\\?/[A-Za-z0-9/_+\\-]++)",
            "hooks.slack.com",
        ),
        _detector(
            "slack-token",
            rf"(?P<secret>xox{_starts('A-Za-z0-9', 'xox')}[abprs]-[A-Za-z0-9-]{{10,}}+)",
            "xox",
        ),
        _detector("google-api-key", rf"(?P<secret>AIza[{_B64URL}]{{35}})", "aiza"),
        # Header and payload, then a signature that alg "none" leaves empty; JWE adds two.
        _detector(
            "jwt",
            rf"(?P<secret>eyJ{_starts(_B64URL, 'eyJ')}[{_B64URL}]{{10,}}+\.[{_B64URL}]{{2,}}+"
            rf"\.[{_B64URL}]*+(?:\.[{_B64URL}]++){{0,2}})",
            "eyj",
        ),
        _detector(
            "bearer-token",
            # A tab may also be the JSON escape "\\t", as in a header quoted inside JSON text.
            rf"bearer{_starts('a-z0-9', 'bearer')}(?:[ \t]|\\t)+"
            r"(?P<secret>[a-z0-9._~+/-]{8,}+=*+)",
            "bearer",
            accept=_looks_like_bearer,
            folded=True,
        ),
        _detector(
            "generic-secret",
            _NAME + _ASSIGN + _VALUE,
            *("pass", "pwd", "secret", "key", "token", "credential"),
            assignment=True,
            accept=looks_like_secret,
            folded=True,
        ),
    )


_CONTAINERS = (dict, list, tuple)


class _Frame:
    """One container being rebuilt by the iterative walk."""

    __slots__ = ("changed", "keys", "out", "source", "values")

    def __init__(self, source: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> None:
        self.source = source
        # Snapshots, so a container changed by another thread cannot break the walk.
        self.keys: tuple[object, ...] | None = None
        if isinstance(source, dict):
            self.keys = tuple(source)
            self.values: tuple[object, ...] = tuple(source.values())
        else:
            self.values = tuple(source)
        self.out: list[object] = []
        self.changed = False

    def add(self, new: object, old: object) -> None:
        self.out.append(new)
        self.changed = self.changed or new is not old

    def build(self) -> object:
        if not self.changed:
            return self.source
        if self.keys is not None:
            return dict(zip(self.keys, self.out, strict=True))
        if isinstance(self.source, tuple):
            return tuple(self.out)
        return self.out


class Redactor:
    """Replaces secrets with ``[REDACTED:<type>]`` and counts them by type.

    Never mutates its input and never raises on content; the counter holds type names
    only, so no secret leaves through it.
    """

    def __init__(self) -> None:
        self._detectors = _detectors()
        self._secret_key = re.compile(_NAME + r"\Z", re.ASCII | re.IGNORECASE)

    def candidates(self, text: str, start: int = 0) -> list[tuple[int, int]]:
        """Spans (whole matches, key included) of every pattern over ``text[start:]``,
        accepted or not: where a secret could be. Used to keep cuts outside them."""
        folded = _fold(text)
        spans = []
        for detector in self._detectors:
            haystack = folded if detector.folded else text
            spans += [m.span() for m in detector.pattern.finditer(haystack, start)]
        return spans

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """Return ``text`` with every secret replaced, and the redactions by type."""
        counts: Counter[str] = Counter()
        return self._text(text, counts), counts

    def redact(self, value: object) -> tuple[object, Counter[str]]:
        """Redact every string in JSON-like ``value`` (dicts, lists, tuples, strings).

        Returns a new structure where anything changed (``value`` itself when nothing
        did) and the redactions by type. Dict keys are kept; a string under a
        secret-named key is redacted whole when it looks like a secret.
        """
        counts: Counter[str] = Counter()
        return self._walk(value, counts), counts

    def _text(self, text: str, counts: Counter[str]) -> str:
        if len(text) < _SHORTEST_SECRET_TEXT:
            return text
        # Prefilter: most passes run only when their needles occur, so ordinary prose costs
        # one lower() and a few substring searches.
        folded = _fold(text)
        contains = folded.__contains__  # map() over it runs no Python code per needle
        assignment = "=" in folded or ":" in folded
        found: Counter[str] = Counter()
        out = text
        # IMPORTANT: a redaction can expose a neighbour that an earlier pass skipped for
        # its look-around (two keys glued together), so the passes repeat until one finds
        # nothing: the result is then stable, and redacting it again changes nothing.
        for _ in range(_MAX_ROUNDS):
            before = sum(found.values())
            for detector in self._detectors:
                if detector.assignment and not assignment:
                    continue
                if detector.needles and not any(map(contains, detector.needles)):
                    continue
                redacted = detector.run(out, folded, found)
                if redacted is not out:
                    out, folded = redacted, _fold(redacted)
                    contains = folded.__contains__
            if sum(found.values()) == before:
                break
        if not found:
            return text
        counts.update(found)
        return out

    def _leaf(self, key: object, value: object, counts: Counter[str]) -> object:
        if not isinstance(value, str):
            return value
        redacted = self._text(value, counts)
        if (
            redacted is value
            and len(value) >= MIN_SECRET_LENGTH
            and isinstance(key, str)
            and self._secret_key.search(key)
            and looks_like_secret(value)
        ):
            counts["generic-secret"] += 1
            return "[REDACTED:generic-secret]"
        return redacted

    def _walk(self, root: object, counts: Counter[str]) -> object:
        # IMPORTANT: iterative, so no input depth can exhaust the Python stack.
        if not isinstance(root, _CONTAINERS):
            return self._leaf(None, root, counts)
        stack = [_Frame(root)]
        while True:
            frame = stack[-1]
            index = len(frame.out)
            if index == len(frame.values):
                stack.pop()
                built = frame.build()
                if not stack:
                    return built
                stack[-1].add(built, frame.source)
                continue
            child = frame.values[index]
            key = frame.keys[index] if frame.keys is not None else None
            if not isinstance(child, _CONTAINERS):
                frame.add(self._leaf(key, child, counts), child)
            elif len(stack) < MAX_DEPTH:
                stack.append(_Frame(child))
            else:
                # IMPORTANT: what is not walked is not returned (fail closed).
                counts[TOO_DEEP] += 1
                frame.add(f"[REDACTED:{TOO_DEEP}]", child)


KINDS = tuple(detector.kind for detector in _detectors())
"""Type names, in precedence order."""
