"""Text normalization for the local guardrail, and the hidden views an attacker can use.

``normalize`` turns text into the one form the phrase rules are written against: NFKC,
casefolded, invisible characters removed, look-alike letters folded to Latin, whitespace
collapsed. ``hidden_views`` returns what the text says once decoded or reshaped: Unicode
tag characters read back as ASCII, base64, hex and percent-encoded runs decoded (twice
deep), leetspeak read as letters, letter-by-letter spacing closed up, and punctuation
between words dropped.

All of it is bounded: decoding stops after ``MAX_VIEWS`` views or ``MAX_DECODED_CHARS``
characters, only the first 64 KiB of an encoded run is decoded, and every pattern here is
linear, so hostile input cannot buy unbounded work.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Callable, Iterator
from urllib.parse import unquote_to_bytes

__all__ = [
    "MAX_DECODED_CHARS",
    "MAX_DEPTH",
    "MAX_VIEWS",
    "has_tag_text",
    "hidden_views",
    "is_disguised",
    "normalize",
    "read_hidden",
]

MAX_DEPTH = 2
MAX_VIEWS = 16
MAX_DECODED_CHARS = 256 * 1024
# Only the first _MAX_RUN characters of an encoded run are decoded: a longer run is
# binary data or padding, and decoding all of it is what a hostile input would want.
_MAX_RUN = 65536
_MIN_RUN = 16

# Format characters that render as nothing, plus the few non-Cf code points that do the
# same (combining grapheme joiner, Hangul fillers, variation selectors). A literal list
# instead of a scan of unicodedata over all code points keeps import time near zero.
_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f\U000e0100-\U000e01ef"
)
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE}]+")

# Letters from other scripts that look like Latin ones, after casefolding (so lower case
# only). Escapes, not literals, so the source itself cannot be misread. Fullwidth and
# mathematical letters need no entry: NFKC already maps them.
# One (look-alikes, Latin) pair of equal-length strings per script.
_CONFUSABLES = (
    # Cyrillic
    ("\u0430\u0432\u0435\u0451\u04bb\u0456\u0457\u0458\u043a\u043c\u043d\u043e", "abeehiijkmho"),
    ("\u043f\u0440\u0441\u0455\u0442\u0443\u0445\u0501\u051b\u051d\u044c\u04cf", "npcstyxdqwbl"),
    # Greek
    ("\u03b1\u03b2\u03b3\u03b5\u03b7\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4\u03c5", "abyenikvoptu"),
    ("\u03c7\u03c9\u03f2\u03f3", "xwcj"),
    # Armenian
    ("\u0585\u057d\u0570\u0578\u0581", "ouhng"),
    # Latin look-alikes: IPA, small capitals, dotless i and j
    ("\u0261\u0131\u0237\u0251\u0269\u028f\u026a\u1d00\u1d04\u1d05\u1d07\u1d0f", "gijaiyiacdeo"),
    ("\u1d1c\u0280\ua731\u0274", "ursn"),
)
_CONFUSABLE_TABLE = str.maketrans(
    "".join(alike for alike, _ in _CONFUSABLES), "".join(latin for _, latin in _CONFUSABLES)
)
_CONFUSABLE_CLASS = "".join(alike for alike, _ in _CONFUSABLES)
# Curly and modifier apostrophes read as "'", so "don\u2019t tell the user" is still seen.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2018\u2019\u02bc\u2032", "'"))

_LEET_TABLE = str.maketrans("013457@$", "oieastas")
# Two leet characters around letters ("1gn0r3", "h4x0r"); one alone is an ordinary id.
_LEET_HINT_RE = re.compile(r"[013457@$][a-z]+[013457@$]")

# A word disguised for the rules: an invisible character between two letters, or Latin
# letters beside a look-alike from another script, or fullwidth Latin in running text.
_DISGUISE_RE = re.compile(
    f"[^\\W\\d_][{_INVISIBLE}]+[^\\W\\d_]"
    f"|[a-zA-Z][{_CONFUSABLE_CLASS}]|[{_CONFUSABLE_CLASS}][a-zA-Z]"
    "|[\uff21-\uff3a\uff41-\uff5a]{3}",
    re.IGNORECASE,
)

# Single letters separated by one space or dot ("i g n o r e", "i.g.n.o.r.e"). A run of
# two or more spaces between such runs is the word gap the attacker left. The hint
# patterns start with a literal or a class so the engine can skip ahead cheaply.
_SPACED_HINT_RE = re.compile(r"[ .*_-]\w[ .*_-]\w[ .*_-]")
_SPACED_RE = re.compile(r"(?<!\w)\w([ .*_\-])\w(?!\w)(?:\1\w(?!\w))+")
_SPACED_SEP_RE = re.compile(r"[ .*_\-]")
# Words each followed by punctuation ("IGNORE. ALL. PREVIOUS."), read with the marks gone.
_PUNCTUATED_HINT_RE = re.compile(r"[.,;:!*|/~_-] ?\w{1,16}[.,;:!*|/~_-] ?\w{1,16}[.,;:!*|/~_-]")
_PUNCTUATED_RE = re.compile(r"(?:\b\w{1,16}[.,;:!*|/~_-]+\s*){4,}")
_PUNCTUATION_RE = re.compile(r"[.,;:!*|/~_-]+")

_TAG_RUN_RE = re.compile("(\U0001f3f4)?([\U000e0020-\U000e007e]{4,})")
# IMPORTANT: each run pattern starts with a literal or behind a lookbehind that fails
# inside a run, so the engine never restarts a run at every character of it.
_BASE64_RE = re.compile(f"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{{{_MIN_RUN},{_MAX_RUN}}}")
_HEX_RE = re.compile(f"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{{2}}){{8,{_MAX_RUN // 2}}}")
_ESCAPED_HEX_RE = re.compile(r"(?:\\x[0-9a-fA-F]{2}){4,8192}")
# Percent escapes with a few literal characters between them ("t%65ll m%65 y%6fur").
_PERCENT_RE = re.compile(r"%[0-9a-fA-F]{2}(?:[^%\n]{0,12}%[0-9a-fA-F]{2}){2,8192}[^%\s]{0,12}")
_WORD_START_RE = re.compile(r"[^%\s]{0,12}$")
_B64_URLSAFE = bytes.maketrans(b"-_", b"+/")


def normalize(text: str) -> str:
    """The form the phrase rules match: NFKC, casefolded, invisibles gone, look-alikes Latin."""
    if text.isascii():
        # ASCII is already NFKC and has no invisible or look-alike letters: only case and
        # spacing need work, and this path is what keeps ordinary traffic fast.
        return " ".join(text.lower().split())
    text = _INVISIBLE_RE.sub("", text)
    text = unicodedata.normalize("NFKC", text).casefold().translate(_CONFUSABLE_TABLE)
    text = text.translate(_APOSTROPHES)
    return " ".join(text.split())


def is_disguised(text: str) -> bool:
    """True when ``text`` hides words from a plain reading: invisible or look-alike letters."""
    return not text.isascii() and _DISGUISE_RE.search(text) is not None


def has_tag_text(text: str) -> bool:
    """True when ``text`` carries Unicode tag characters other than a flag emoji's."""
    return not text.isascii() and any(not flag for flag, _ in _TAG_RUN_RE.findall(text))


class _Budget:
    """How many more views, and decoded characters, this call may still produce."""

    __slots__ = ("chars", "exhausted", "views")

    def __init__(self) -> None:
        self.views = MAX_VIEWS
        self.chars = MAX_DECODED_CHARS
        # Set once something decodable was left unread; the caller must not treat the
        # views as the whole story, or padding would hide a payload past the budget.
        self.exhausted = False

    def take(self, text: str) -> bool:
        if self.views <= 0 or len(text) > self.chars:
            self.exhausted = True
            return False
        self.views -= 1
        self.chars -= len(text)
        return True


def _as_text(data: bytes) -> str | None:
    """``data`` as text, when it is UTF-8 and reads as text rather than binary."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 4:
        return None
    # A sample decides: counting characters in Python is the slow part of decoding.
    sample = text[:4096]
    readable = sum(1 for ch in sample if ch.isprintable() or ch in "\t\n\r")
    letters = sum(1 for ch in sample if ch.isalpha() or ch == " ")
    return text if readable >= 0.95 * len(sample) and letters >= 0.5 * len(sample) else None


def _from_base64(run: str) -> bytes:
    data = run.encode("ascii").translate(_B64_URLSAFE)
    data = data[: len(data) - len(data) % 4 if len(data) % 4 == 1 else len(data)]
    return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)


def _from_hex(run: str) -> bytes:
    return bytes.fromhex(re.sub(r"[^0-9a-fA-F]", "", run.replace("\\x", "")))


_DECODERS: tuple[tuple[re.Pattern[str], Callable[[str], bytes]], ...] = (
    (_ESCAPED_HEX_RE, _from_hex),
    (_PERCENT_RE, unquote_to_bytes),
    (_HEX_RE, _from_hex),
    (_BASE64_RE, _from_base64),
)


def _candidates(source: str) -> dict[re.Pattern[str], str]:
    """The part of ``source`` each decoder needs to look at, or nothing.

    These checks run at C speed and skip most text; the run patterns are slow per
    character, so they only see what could hold a run.
    """
    parts: dict[re.Pattern[str], str] = {}
    if "\\x" in source:
        parts[_ESCAPED_HEX_RE] = source
    if "%" in source:
        parts[_PERCENT_RE] = source
    words = source.split()
    if max(map(len, words), default=0) >= _MIN_RUN:
        # Base64 and hex runs hold no whitespace, so only long words can be one.
        long_words = " ".join(word for word in words if len(word) >= _MIN_RUN)
        parts[_HEX_RE] = parts[_BASE64_RE] = long_words
    return parts


def _run(pattern: re.Pattern[str], match: re.Match[str], source: str) -> str:
    """The matched run; a percent run also takes the start of the word it begins in."""
    if pattern is not _PERCENT_RE:
        return match.group()
    head = _WORD_START_RE.search(source, max(0, match.start() - 12), match.start())
    return (head.group() if head else "") + match.group()


def _decoded(source: str, budget: _Budget) -> Iterator[str]:
    """Each encoded run in ``source`` that decodes to readable text, within the budget."""
    if not source.isascii():
        for flag, run in _TAG_RUN_RE.findall(source):
            # A tag run after U+1F3F4 is a subdivision flag emoji, the one honest use of tags.
            if not flag:
                yield "".join(chr(ord(ch) - 0xE0000) for ch in run)
    parts = _candidates(source)
    for pattern, decode in _DECODERS:
        part = parts.get(pattern)
        if part is None:
            continue
        for match in pattern.finditer(part):
            if budget.views <= 0:
                budget.exhausted = True
                return
            try:
                text = _as_text(decode(_run(pattern, match, part)))
            except (binascii.Error, ValueError):
                continue
            if text is not None:
                yield text


def _reshaped(normal: str, raw: str) -> Iterator[str]:
    """Leetspeak read as letters, s p a c e d letters closed up, punctuation. between. words."""
    if _LEET_HINT_RE.search(normal):
        yield normal.translate(_LEET_TABLE)
    if _SPACED_HINT_RE.search(raw):
        yield _SPACED_RE.sub(lambda m: _SPACED_SEP_RE.sub("", m.group()), raw)
    if _PUNCTUATED_HINT_RE.search(normal):
        yield _PUNCTUATED_RE.sub(lambda m: _PUNCTUATION_RE.sub(" ", m.group()), normal)


def hidden_views(text: str, normal: str | None = None) -> tuple[str, ...]:
    """Normalized views of what ``text`` says once reshaped or decoded.

    At most three reshaped views and ``MAX_VIEWS`` decoded ones. ``normal`` is
    ``normalize(text)`` when the caller has it already. Views equal to it, or to each
    other, are left out.
    """
    return read_hidden(text, normal)[0]


def read_hidden(text: str, normal: str | None = None) -> tuple[tuple[str, ...], bool]:
    """``hidden_views`` and whether the decoding budget ran out before everything was read."""
    normal = normalize(text) if normal is None else normal
    budget = _Budget()
    seen = {normal}
    views: list[str] = []

    def add(view: str, budgeted: bool = True) -> bool:
        if view in seen or (budgeted and not budget.take(view)):
            return False
        seen.add(view)
        views.append(view)
        return True

    # Reshaped views are at most three, each as long as the text, so they are not charged
    # to the budget: padding a text past it must not switch them off.
    for reshaped in _reshaped(normal, text):
        add(normalize(reshaped), budgeted=False)
    frontier = [text]
    for _ in range(MAX_DEPTH):
        # A decoded view is decoded again, so base64 inside base64 is read too.
        frontier = [
            raw for source in frontier for raw in _decoded(source, budget) if add(normalize(raw))
        ]
    return tuple(views), budget.exhausted
