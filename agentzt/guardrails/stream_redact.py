"""Secret redaction for text that arrives in pieces (streamed model answers).

A secret may be split across any number of deltas, so text cannot be released as it
comes: the tail that could still be the start of a secret waits for the next delta. How
much waits is the smallest tail that any ``Redactor`` pattern could still complete:

- the trailing run of token characters (every token-shaped secret is one such run, so a
  run is released only once a character that cannot continue it has arrived);
- from a secret-named key (``password``, ``api_key``, ``*_token`` ...) onwards, while the
  text ends inside its assignment (``key``, ``key =``, ``key: "half a value``): the
  ``generic-secret`` pattern needs the key and its value together;
- from ``bearer`` onwards while the text ends inside ``bearer <token>``;
- from a ``-----BEGIN`` until its ``-----END …-----`` arrives (a private key spans lines).

Everything before that tail is redacted with the batch ``Redactor`` and released; the
cut always falls between two characters no pattern joins (a non-token character, or
just before a key name), so redacting the released part alone finds exactly what
redacting the whole text would. Ordinary prose releases each word when the next space
arrives: the added latency is one word.
"""

from __future__ import annotations

import re
from collections import Counter

from agentzt.guardrails.secrets import _NAME, Redactor

# Every character any token-shaped secret pattern can contain (keys, JWTs, webhook paths,
# bearer tokens), so no such secret extends across a character outside this set.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_\-./+=~]*\Z", re.ASCII)
# A text that ends inside "key", 'key"', "key =", "key = val" or 'key: "a quoted val'.
_OPEN_ASSIGNMENT = re.compile(
    _NAME
    + r"(?:\\?[\"'])?[ \t]{0,8}"
    + r"(?:(?::=?|=>?)[ \t]{0,8}(?:\\?[\"'][^\"'\r\n]{0,200}|[^\s\"'`,;&<>]*))?\Z",
    re.ASCII,
)
_OPEN_BEARER = re.compile(r"bearer[ \t]*[a-z0-9._~+/=-]*\Z", re.ASCII)
_PEM_BEGIN = "-----begin"
_PEM_END = re.compile(r"-----end [^\r\n]*?-----", re.ASCII)
# How far back from the end an open assignment or bearer prefix can start.
_LOOKBACK = 320


def _fold(text: str) -> str:
    # ASCII-only lowercasing keeps every offset (the patterns above are ASCII).
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def hold_from(text: str) -> int:
    """The offset from which ``text`` must wait: a secret may still be completing there."""
    cut = len(text)
    run = _TOKEN_RUN.search(text)
    if run is not None:
        cut = run.start()
    window_start = max(0, len(text) - _LOOKBACK)
    folded = _fold(text[window_start:])
    for pattern in (_OPEN_ASSIGNMENT, _OPEN_BEARER):
        match = pattern.search(folded)
        if match is not None:
            cut = min(cut, window_start + match.start())
    # A private key spans lines and spaces: never cut inside one, complete or not.
    begin = _fold(text[:cut]).rfind(_PEM_BEGIN)
    if begin >= 0:
        end = _PEM_END.search(_fold(text), begin)
        if end is None or end.end() > cut:
            cut = begin
    return cut


class StreamRedactor:
    """Redacts one stream of text (one content block) delta by delta."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = ""
        self.counts: Counter[str] = Counter()

    def feed(self, delta: str) -> str:
        """Take the next piece; return the text that is safe to release now (maybe "")."""
        text = self._pending + delta
        cut = hold_from(text)
        self._pending = text[cut:]
        return self._release(text[:cut])

    def flush(self) -> str:
        """The stream ended: release what waited, redacted as a whole."""
        text, self._pending = self._pending, ""
        return self._release(text)

    @property
    def waiting(self) -> int:
        """Characters held back right now (for tests and metrics)."""
        return len(self._pending)

    def _release(self, text: str) -> str:
        if not text:
            return text
        clean, counts = self._redactor.redact_text(text)
        self.counts.update(counts)
        return clean
