"""The offline prompt-injection detector: phrase and structure rules over normalized text.

``LocalDetector.scan`` reads every text segment of a conversation and returns one
``Verdict``. Each segment is normalized (see ``normalize``) and matched against the rules
in ``RULES``; its hidden views (decoded base64, hex, percent-encoding, tag characters,
leetspeak, spaced-out letters, punctuation between words) are matched too, and a rule
that matches only there adds the ``obfuscation`` category, because hiding an
instruction is itself a signal.

Risk combines across the whole conversation: each category counts 1, 2 or 3 points for
its strongest low, medium or high match, and the total lifts the verdict (2 points make
medium, 4 make high), so two medium signals, or a medium with an ``obfuscation``, are high.

Mentions versus instructions, the trade-off: text that *discusses* injection quotes the
same phrases it warns about. A match introduced by a mention marker ("like", "such as",
"e.g.", "the phrase", "detects", ...) or quoted in a segment that talks about attacks is
downgraded to ``low_risk`` and adds no points. This keeps security training, red-team
notes and guardrail code from being blocked, at a price: an attacker who writes "for
example, ignore previous instructions ..." gets ``low_risk`` too. Two things limit that:
the downgrade stops at ``low_risk`` (a policy can still deny at low), and it is cancelled
for the whole segment when the segment also carries an exfiltration or concealment
instruction that is not itself a mention, since discussion has no reason to aim those at
the reader.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from agentzt.guardrails.normalize import has_tag_text, is_disguised, normalize, read_hidden
from agentzt.guardrails.rules import HIGH, LOW, MEDIUM, RULES, Rule
from agentzt.guardrails.verdict import RISK_LEVELS, Verdict

__all__ = ["RULES", "LocalDetector", "Rule"]

# A match with one of these shortly before it is being talked about, not given as an order.
_MENTION_BEFORE = re.compile(
    r"(?<![\w./@-])(?:like(?! this| so)|such as|e\.?g|i\.e|phrases?|called|known as|"
    r"examples?|the string|says?|saying|contain(?:s|ing)?|(?:starts?|begins?) "
    r"with|quoted?|patterns?|detects?|detecting|blocks?|filter(?:s|ing)?|flag(?:s|ged)?|"
    r"defend(?:s|ing)?|match(?:es|ing)?|attempt(?:s|ed)?|tries|tried)(?![\w/@-]|\.\w)"
)
_QUOTE_BEFORE = re.compile(r"[\"'`\u201c\u2018\u00ab]\s?$")
_LEAD_IN = re.compile(r"\.?\s*[,:]\s*")
# Vocabulary of text about attacks; a quoted match in such text is an example, not an order.
_DISCUSSION = re.compile(
    r"\b(?:prompt injection|injection|jailbreaks?|attacks?|attackers?|defen[cs]es?|defend|"
    r"detect\w*|filter\w*|guardrails?|red team|security|classifier|regex|unit test|"
    r"training|malicious|mitigat\w*|exploit\w*|threat|flagged|tester)\b"
)
_MENTION_WINDOW = 60
_NEAR_WINDOW = 200
# A segment's own exfiltration or concealment order cancels the mention downgrade.
_AIMED_AT_READER = frozenset({"exfiltration", "concealment"})
_POINTS = {LOW: 1, MEDIUM: 2, HIGH: 3}
_CACHE_MAX_TEXT = 64 * 1024
_CACHE_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class _Hit:
    rule: str
    category: str
    risk: str
    mention: bool = False


_OBFUSCATED = _Hit("obfuscation.hidden_payload", "obfuscation", MEDIUM)
_DISGUISED = _Hit("obfuscation.disguised_text", "obfuscation", MEDIUM)
_TAGGED = _Hit("obfuscation.tag_characters", "obfuscation", MEDIUM)
# More encoded text than the decoding budget reads: fail closed rather than trust the rest.
_UNREAD = _Hit("obfuscation.decoding_budget", "obfuscation", MEDIUM)


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    pattern: re.Pattern[str]
    near: re.Pattern[str] | None


class _NearIndex:
    """Where each ``near`` pattern occurs in one text, found once and then looked up.

    Checking ``near`` first, by bisection, is what keeps a flood of anchor words cheap:
    the rule's own pattern (often with a long gap) runs only where ``near`` allows it.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._starts: dict[re.Pattern[str], list[int]] = {}

    def allows(self, compiled: _Compiled, pos: int) -> bool:
        if compiled.near is None:
            return True
        starts = self._starts.get(compiled.near)
        if starts is None:
            starts = [m.start() for m in compiled.near.finditer(self._text)]
            self._starts[compiled.near] = starts
        i = bisect.bisect_left(starts, pos - _NEAR_WINDOW)
        return i < len(starts) and starts[i] <= pos + _NEAR_WINDOW


def _is_mention(text: str, start: int, discussion: bool) -> bool:
    before = text[max(0, start - _MENTION_WINDOW) : start]
    if discussion and _QUOTE_BEFORE.search(before) is not None:
        return True
    markers = list(_MENTION_BEFORE.finditer(before))
    # "For example, ignore all previous instructions": a marker, a comma or colon, then the
    # order itself is how an attacker borrows the downgrade; that is not a mention.
    return bool(markers) and not _LEAD_IN.fullmatch(before, markers[-1].end())


_Trie = dict[str, "_Trie"]


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex for exactly ``words``, factored by shared prefixes.

    Python's engine tries the branches of an alternation one by one; factored as a trie,
    each position costs one branch per letter instead of one per word.
    """
    trie: _Trie = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: _Trie) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return f"(?<![a-z]){emit(trie)}(?![a-z])"


@dataclass(frozen=True, slots=True)
class _AnchorGroup:
    """The rules tried where one anchor word stands.

    Rules without ``near`` are merged into one pattern of optional lookaheads, one
    capturing group per rule, so a single ``match`` call says which of them match here;
    a flood of one anchor word then costs one call per occurrence, not one per rule.
    """

    merged: re.Pattern[str] | None
    merged_rules: tuple[Rule, ...]
    gated: tuple[_Compiled, ...]


def _group(compiled: list[_Compiled]) -> _AnchorGroup:
    plain = tuple(c.rule for c in compiled if c.near is None)
    merged = "".join(f"(?:(?=({rule.pattern}))|)" for rule in plain)
    return _AnchorGroup(
        re.compile(merged) if plain else None, plain, tuple(c for c in compiled if c.near)
    )


class _Matcher:
    """The compiled rules, and the reading of one normalized text against them."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        by_anchor: dict[str, list[_Compiled]] = {}
        self._unanchored: list[_Compiled] = []
        for rule in rules:
            compiled = _Compiled(
                rule, re.compile(rule.pattern), re.compile(rule.near) if rule.near else None
            )
            if compiled.pattern.groups:
                raise ValueError(f"rule {rule.id} has a capturing group; use (?:...)")
            if not rule.anchors:
                self._unanchored.append(compiled)
            for word in rule.anchors.split():
                by_anchor.setdefault(word, []).append(compiled)
        self._groups = {word: _group(compiled) for word, compiled in by_anchor.items()}
        self._anchors = re.compile(_trie_pattern(self._groups))

    def _matches(self, text: str) -> Iterator[tuple[Rule, int]]:
        """Each rule that matches ``text``, once, with where its first match starts."""
        done: set[str] = set()
        near = _NearIndex(text)
        # One pass finds the anchor words; a rule is tried only where one of them stands.
        for anchor in self._anchors.finditer(text):
            pos = anchor.start()
            group = self._groups[anchor.group()]
            if group.merged is not None:
                # Every lookahead is optional, so this always matches; the groups say which.
                found = group.merged.match(text, pos)
                spans = found.groups() if found is not None else ()
                for rule, span in zip(group.merged_rules, spans, strict=False):
                    if span is not None and rule.id not in done:
                        done.add(rule.id)
                        yield rule, pos
            for compiled in group.gated:
                if compiled.rule.id in done or not near.allows(compiled, pos):
                    continue
                if compiled.pattern.match(text, pos) is not None:
                    done.add(compiled.rule.id)
                    yield compiled.rule, pos
        for compiled in self._unanchored:
            for match in compiled.pattern.finditer(text):
                if near.allows(compiled, match.start()):
                    yield compiled.rule, match.start()
                    break

    def hits(self, text: str) -> list[_Hit]:
        found = list(self._matches(text))
        if not found:
            return []
        discussion = _DISCUSSION.search(text) is not None
        hits = [
            _Hit(rule.id, rule.category, rule.risk, _is_mention(text, start, discussion))
            for rule, start in found
        ]
        # IMPORTANT: an exfiltration or concealment order that is not itself a mention means
        # the segment is talking to the reader, so nothing in it counts as a mention.
        if any(hit.category in _AIMED_AT_READER and not hit.mention for hit in hits):
            return [_Hit(hit.rule, hit.category, hit.risk) for hit in hits]
        return hits


class _Cache:
    """A bounded LRU of segment results, keyed by a digest of the segment.

    Keying by digest rather than text means conversation content (which may hold
    secrets) is not kept alive by the cache. BLAKE2b at 128 bits makes a collision
    impractical to find, so one segment cannot borrow another's result.
    """

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._items: OrderedDict[bytes, tuple[_Hit, ...]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> bytes:
        data = text.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, digest_size=16).digest()

    def get(self, key: bytes) -> tuple[_Hit, ...] | None:
        with self._lock:
            hits = self._items.get(key)
            if hits is not None:
                self._items.move_to_end(key)
            return hits

    def put(self, key: bytes, hits: tuple[_Hit, ...]) -> None:
        with self._lock:
            self._items[key] = hits
            self._items.move_to_end(key)
            while len(self._items) > self._entries:
                self._items.popitem(last=False)


class LocalDetector:
    """Offline prompt-injection detector over every text segment of a conversation.

    Build one at start-up (the rules compile here) and share it: ``scan`` is pure apart
    from its bounded, locked cache, and safe to call from any thread.
    """

    name = "local"

    def __init__(self) -> None:
        self._matcher = _Matcher(RULES)
        self._cache = _Cache(_CACHE_ENTRIES)

    def scan(self, texts: Iterable[str]) -> Verdict:
        """One verdict over all ``texts``: highest risk, combined categories and rule ids."""
        hits: set[_Hit] = set()
        for text in texts:
            if text:
                hits.update(self._segment(text))
        if not hits:
            return Verdict("no_risk", provider=self.name)
        return Verdict(
            _combined_risk(hits),
            categories=tuple(sorted({hit.category for hit in hits})),
            provider=self.name,
            rules=tuple(sorted({hit.rule for hit in hits})),
        )

    def _segment(self, text: str) -> tuple[_Hit, ...]:
        if len(text) > _CACHE_MAX_TEXT:
            return self._read(text)
        key = _Cache.key(text)
        hits = self._cache.get(key)
        if hits is None:
            hits = self._read(text)
            self._cache.put(key, hits)
        return hits

    def _read(self, text: str) -> tuple[_Hit, ...]:
        """The hits in one segment: its visible text first, then its hidden views."""
        normal = normalize(text)
        hits = self._matcher.hits(normal)
        if hits and is_disguised(text):
            hits.append(_DISGUISED)
        if has_tag_text(text):
            hits.append(_TAGGED)
        visible = {hit.rule for hit in hits}
        views, exhausted = read_hidden(text, normal)
        if exhausted:
            hits.append(_UNREAD)
        for view in views:
            for hit in self._matcher.hits(view):
                if hit.rule not in visible:
                    hits.append(hit)
                    if not hit.mention:
                        hits.append(_OBFUSCATED)
        return tuple(set(hits))


def _combined_risk(hits: Iterable[_Hit]) -> str:
    """The strongest single hit, lifted by the points its distinct categories add up to."""
    strongest = 0
    points: dict[str, int] = {}
    for hit in hits:
        risk = LOW if hit.mention else hit.risk
        strongest = max(strongest, RISK_LEVELS.index(risk))
        if not hit.mention:
            points[hit.category] = max(points.get(hit.category, 0), _POINTS[hit.risk])
    total = sum(points.values())
    lifted = 3 if total >= 4 else 2 if total >= 2 else 1 if total else 0
    return RISK_LEVELS[max(strongest, lifted)]
