"""Secret redaction for text that arrives in pieces (streamed model answers).

A secret may be split across any number of deltas, so text cannot be released as it
comes: the tail that could still become (part of) a secret waits for the next delta.
The cut between what is released and what waits is placed so that redacting the
released part alone gives what redacting the whole text would. It starts at the end and
moves back:

- to the start of the trailing run of token characters (every token-shaped secret is
  one such run, so it goes out only once a character that cannot continue it arrives);
- to the start of the word holding a secret-named key or ``bearer`` while the text ends
  inside its assignment (``key``, ``key =``, ``key: "half a value``);
- out of every place a ``Redactor`` pattern matches across it (a key released without
  its value would leave the value unrecognised);
- to the start of a private-key block whose END has not arrived (a key spans lines).

Assignments and bearer tokens never span a line, so only the current line is searched.
Ordinary prose is held about one word. A hold that grows past ``MAX_HOLD`` (a huge
base64 run, an endless quoted value) is not released at all: it becomes
``[REDACTED:unverified]``, fail closed, which also bounds the work per delta.
"""

from __future__ import annotations

import re
from collections import Counter

from agentzt.guardrails.secrets import _NAME, Redactor, _fold

MAX_HOLD = 32 * 1024
UNVERIFIED = "unverified"
# A text that ends inside "key", 'key"', 'key\\', "key =", "key = val" or
# 'key: "a quoted val' (the quote may hold the other kind of quote, as in the batch).
_OPEN_ASSIGNMENT = re.compile(
    _NAME
    + r"(?:\\?[\"']?)[ \t]{0,8}"
    + r"(?:(?::=?|=>?)[ \t]{0,8}(?:\\?\"[^\"\r\n]*|\\?'[^'\r\n]*|\\|[^\s\"'`,;&<>]*))?\Z",
    re.ASCII,
)
_OPEN_BEARER = re.compile(r"bearer[ \t]*[a-z0-9._~+/=-]*\Z", re.ASCII)
# Every character any token-shaped secret can contain (keys, JWTs, webhook paths, bearer
# tokens), so no such secret extends across a character outside this set.
_RUN_CHARS = r"A-Za-z0-9_\-./+=~"
_TOKEN_PREFIX = re.compile(rf"[{_RUN_CHARS}]*", re.ASCII)
_ALL_TOKEN = re.compile(rf"[{_RUN_CHARS}]*\Z", re.ASCII)
_WORD_PREFIX = re.compile(r"\S*")
# As the batch pattern has them: case-sensitive.
_PEM_BEGIN = "-----BEGIN"
_PEM_KEY_LABEL = r"(?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"
_PEM_KEY_BEGIN = re.compile(r"-----BEGIN " + _PEM_KEY_LABEL, re.ASCII)
_PEM_KEY_END = re.compile(r"-----END " + _PEM_KEY_LABEL, re.ASCII)


def _start_of(run: re.Pattern[str], text: str, index: int) -> int:
    """The start of the run of ``run`` characters that ends at ``index``.

    Matched on the reversed text: a regex anchored at the end (``[…]*\\Z``) would be
    tried from every position of a long run, which is quadratic.
    """
    found = run.match(text[:index][::-1])
    return index - (found.end() if found is not None else 0)


def hold_from(text: str, redactor: Redactor) -> int:
    """The offset from which ``text`` must wait: a secret may still be completing there."""
    cut = _start_of(_TOKEN_PREFIX, text, len(text))
    line = text.rfind("\n", 0, cut) + 1
    folded = _fold(text)
    for pattern in (_OPEN_ASSIGNMENT, _OPEN_BEARER):
        match = pattern.search(folded, line)
        if match is not None:
            # Never cut inside a word: "…VCPWD" is the end of a key, not a name "pwd".
            cut = min(cut, _start_of(_WORD_PREFIX, text, match.start()))
    # IMPORTANT: each rule only moves the cut back, and one move can land inside what
    # the other rule protects (a private-key BEGIN glued to a bearer token), so both
    # apply again until the cut stays put.
    while True:
        moved = _outside_private_keys(text, _outside_candidates(text, cut, line, redactor))
        if moved == cut:
            return cut
        cut = moved
        line = text.rfind("\n", 0, cut) + 1


def _outside_candidates(text: str, cut: int, line: int, redactor: Redactor) -> int:
    """Move ``cut`` back until no pattern match spans it."""
    spans = redactor.candidates(text, line) if cut > line else []
    moved = True
    while moved:
        moved = False
        for start, end in spans:
            if start < cut < end:
                cut, moved = _start_of(_WORD_PREFIX, text, start), True
    return cut


def _outside_private_keys(text: str, cut: int) -> int:
    """Move ``cut`` back to the start of a private-key block it would fall inside.

    As the batch redactor does, a block runs from a private-key BEGIN line to the next
    private-key END line, or to the end of the text when there is none.
    """
    position = 0
    while (begin := text.find(_PEM_BEGIN, position, cut)) >= 0:
        label = _PEM_KEY_BEGIN.match(text, begin)
        if label is None:
            if text.find("-----", begin + len(_PEM_BEGIN)) < 0:
                # The BEGIN line is still arriving; keep a token run it ends intact.
                return _start_of(_TOKEN_PREFIX, text, begin)
            position = begin + 1  # a complete BEGIN of something else (a certificate)
            continue
        end = _PEM_KEY_END.search(text, label.end())
        if end is None or end.end() > cut:
            return _start_of(_TOKEN_PREFIX, text, begin)
        position = end.end()
    return cut


class StreamRedactor:
    """Redacts one stream of text (one content block) delta by delta."""

    def __init__(self, redactor: Redactor, counts: Counter[str] | None = None) -> None:
        self._redactor = redactor
        self._pending = ""
        # True while everything pending is one token run: the next all-token delta only
        # extends it, so nothing needs recomputing (a long base64 run stays linear).
        self._one_run = False
        self._parts: list[str] = []
        self._in_private_key = False
        self._held = 0
        self._tail = ""
        # What is held is one private-key block whose END has not been seen.
        self._key_open = False
        # Shared with the caller when given, so redactions already released are counted
        # even if the stream breaks before this block ends.
        self.counts: Counter[str] = counts if counts is not None else Counter()

    def feed(self, delta: str) -> str:
        """Take the next piece; return the text that is safe to release now (maybe "")."""
        if self._in_private_key:
            delta = self._swallow_key(delta)
            if not delta:
                return ""
        if (self._one_run and _ALL_TOKEN.match(delta)) or (
            # Inside a private key: a delta without a dash cannot complete its END line.
            self._key_open and "-" not in delta
        ):
            self._parts.append(delta)
            self._held += len(delta)
            return self._overflow() if self._held > MAX_HOLD else ""
        text = self._pending + "".join(self._parts) + delta
        self._parts, self._one_run = [], False
        cut = hold_from(text, self._redactor)
        self._pending = text[cut:]
        self._held = len(self._pending)
        self._one_run = bool(self._pending) and bool(_ALL_TOKEN.match(self._pending))
        self._key_open = bool(_PEM_KEY_BEGIN.match(self._pending)) and (
            _PEM_KEY_END.search(self._pending) is None
        )
        released = self._release(text[:cut])
        if self._held > MAX_HOLD:
            released += self._overflow()
        return released

    def flush(self) -> str:
        """The stream ended: release what waited, redacted as a whole."""
        text = self._pending + "".join(self._parts)
        self._pending, self._parts, self._one_run, self._held = "", [], False, 0
        self._key_open = False
        if self._in_private_key:
            return ""
        return self._release(text)

    @property
    def waiting(self) -> int:
        """Characters held back right now (for tests and metrics)."""
        return len(self._pending) + sum(map(len, self._parts))

    def _overflow(self) -> str:
        """A hold too long to verify: replaced, never released (fail closed)."""
        text = self._pending + "".join(self._parts)
        self._pending, self._parts, self._one_run, self._held = "", [], False, 0
        self._key_open = False
        begin = _outside_private_keys(text, len(text))
        if begin < len(text):
            # Inside a private key: everything until its END line is part of it.
            self._in_private_key = True
        self.counts[UNVERIFIED] += 1
        return f"[REDACTED:{UNVERIFIED}]"

    def _swallow_key(self, delta: str) -> str:
        """The rest of an overlong private key: dropped up to its END line."""
        self._tail += delta
        end = _PEM_KEY_END.search(self._tail)
        if end is None:
            self._tail = self._tail[-256:]  # enough to see an END line split in two
            return ""
        rest = self._tail[end.end() :]
        self._tail, self._in_private_key = "", False
        return rest

    def _release(self, text: str) -> str:
        if not text:
            return text
        clean, counts = self._redactor.redact_text(text)
        self.counts.update(counts)
        return clean
