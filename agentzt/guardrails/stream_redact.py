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

from agentzt.guardrails.secrets import _NAME, Redactor, _fold

# A text that ends inside "key", 'key"', "key =", "key = val" or 'key: "a quoted val'.
_OPEN_ASSIGNMENT = re.compile(
    _NAME
    + r"(?:\\?[\"'])?[ \t]{0,8}"
    + r"(?:(?::=?|=>?)[ \t]{0,8}(?:\\?[\"'][^\"'\r\n]{0,200}|[^\s\"'`,;&<>]*))?\Z",
    re.ASCII,
)
_OPEN_BEARER = re.compile(r"bearer[ \t]*[a-z0-9._~+/=-]*\Z", re.ASCII)
# Every character any token-shaped secret can contain (keys, JWTs, webhook paths, bearer
# tokens), so no such secret extends across a character outside this set.
_TOKEN_PREFIX = re.compile(r"[A-Za-z0-9_\-./+=~]*", re.ASCII)
_WORD_PREFIX = re.compile(r"\S*")
_PEM_BEGIN = "-----begin"
_PEM_KEY_LABEL = r"(?:[a-z0-9]+ ){0,3}private key(?: block)?-----"
_PEM_KEY_BEGIN = re.compile(r"-----begin " + _PEM_KEY_LABEL, re.ASCII)
_PEM_KEY_END = re.compile(r"-----end " + _PEM_KEY_LABEL, re.ASCII)
# The longest key name with its assignment, and the longest quoted value, a generic
# secret can have: how far before the trailing word an open assignment can start.
_NAME_AND_ASSIGN = 64
_QUOTED_VALUE = 200


def _start_of(run: re.Pattern[str], text: str, index: int) -> int:
    """The start of the run of ``run`` characters that ends at ``index``.

    Matched on the reversed text: a regex anchored at the end (``[…]*\\Z``) would be
    tried from every position of a long run, which is quadratic.
    """
    found = run.match(text[:index][::-1])
    return index - (found.end() if found is not None else 0)


def _word_start(text: str) -> int:
    """The start of the trailing run of non-space characters."""
    if not text or text[-1].isspace():
        return len(text)
    return len(text) - len(text.rsplit(None, 1)[-1])


def hold_from(text: str) -> int:
    """The offset from which ``text`` must wait: a secret may still be completing there."""
    cut = _start_of(_TOKEN_PREFIX, text, len(text))
    folded = _fold(text)
    # An assignment or "bearer" still open at the end: its key may be any distance before
    # the end when the value is a long bare word, so look back past the trailing word.
    window = max(0, min(_word_start(text), len(text) - _QUOTED_VALUE) - _NAME_AND_ASSIGN)
    for pattern in (_OPEN_ASSIGNMENT, _OPEN_BEARER):
        match = pattern.search(folded, window)
        if match is not None:
            # Never cut inside a word: "…VCPWD" is the end of a key, not a name "pwd",
            # and "=K9!mSecret" the end of a value, not a name "secret".
            cut = min(cut, _start_of(_WORD_PREFIX, text, match.start()))
    return _outside_private_keys(folded, cut)


def _outside_private_keys(folded: str, cut: int) -> int:
    """Move ``cut`` back to the start of a private-key block it would fall inside.

    As the batch redactor does, a block runs from a private-key BEGIN line to the next
    private-key END line, or to the end of the text when there is none.
    """
    position = 0
    while (begin := folded.find(_PEM_BEGIN, position, cut)) >= 0:
        label = _PEM_KEY_BEGIN.match(folded, begin)
        if label is None:
            if folded.find("-----", begin + len(_PEM_BEGIN)) < 0:
                return begin  # the BEGIN line is still arriving
            position = begin + 1  # a complete BEGIN of something else (a certificate)
            continue
        end = _PEM_KEY_END.search(folded, label.end())
        if end is None or end.end() > cut:
            return begin
        position = end.end()
    return cut


class StreamRedactor:
    """Redacts one stream of text (one content block) delta by delta."""

    def __init__(self, redactor: Redactor, counts: Counter[str] | None = None) -> None:
        self._redactor = redactor
        self._pending = ""
        # Shared with the caller when given, so redactions already released are counted
        # even if the stream breaks before this block ends.
        self.counts: Counter[str] = counts if counts is not None else Counter()

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
