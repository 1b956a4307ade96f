"""``kb.search``: search a small built-in knowledge base of IT policy articles.

The articles belong to the fictional Halcyon Freight. Scoring is plain token overlap,
title words counting double, so results are deterministic and easy to reason about in
tests and demos; there is no index, embedding or I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentzt.tools.base import Tool

__all__ = ["ARTICLES", "KB_SEARCH", "Article", "search"]

MAX_QUERY_LENGTH = 500
MAX_TOP_K = 10
DEFAULT_TOP_K = 3
_SNIPPET_LENGTH = 200


@dataclass(frozen=True)
class Article:
    """One knowledge-base article."""

    id: str
    title: str
    body: str


ARTICLES: tuple[Article, ...] = (
    Article(
        "KB-001",
        "Connecting to the corporate VPN",
        "All remote work goes through the Halcyon VPN. Install the VPN client from the "
        "self-service portal and sign in with your network account and MFA. Split "
        "tunnelling is disabled, so all traffic passes through the VPN. If the VPN drops "
        "repeatedly, restart the client and open a ticket with the service desk.",
    ),
    Article(
        "KB-002",
        "Password rotation and complexity",
        "Network account passwords must be at least 14 characters and are rotated every "
        "180 days. The password manager generates and stores passwords; never reuse a "
        "password across systems. Service account passwords are rotated by IT every 90 "
        "days and are never shared by email or chat.",
    ),
    Article(
        "KB-003",
        "Onboarding checklist for new employees",
        "Before day one, the manager requests a laptop, a phone if needed, and access to "
        "team systems. On day one the new employee enrolls MFA, completes security "
        "awareness training and signs the acceptable use policy. Onboarding finishes "
        "when the manager confirms access in the onboarding ticket.",
    ),
    Article(
        "KB-004",
        "Expense policy and receipts",
        "Submit expenses within 30 days in the expense tool with an itemised receipt for "
        "every item over 25 EUR. Travel must be booked through the travel desk. "
        "Hardware and software purchases are not expenses; request them through IT.",
    ),
    Article(
        "KB-005",
        "Multi-factor authentication (MFA)",
        "MFA is required for email, the VPN and every business system. Use the "
        "authenticator app or a hardware security key. A lost MFA device or security key "
        "must be reported to the service desk at once so it can be revoked.",
    ),
    Article(
        "KB-006",
        "Laptop and device security",
        "Company laptops use full-disk encryption and lock after five minutes. Do not "
        "install unapproved software or disable endpoint protection. Report a lost or "
        "stolen laptop or phone to the service desk within one hour.",
    ),
    Article(
        "KB-007",
        "Reporting phishing and suspicious email",
        "Use the Report Phishing button to report suspicious email. Do not click links or "
        "open attachments from unknown senders. IT never asks for your password by email; "
        "a message that does is phishing.",
    ),
    Article(
        "KB-008",
        "Requesting access to systems",
        "Access to business systems is requested through a ticket and approved by the "
        "system owner and your manager. Access follows least privilege and is reviewed "
        "every quarter; unused access is removed.",
    ),
    Article(
        "KB-009",
        "Offboarding and returning equipment",
        "When an employee leaves, the manager opens an offboarding ticket. Accounts are "
        "disabled on the last day and the laptop, phone and security key are returned "
        "to IT within five working days.",
    ),
    Article(
        "KB-010",
        "Wi-Fi and guest network",
        "Staff devices use the HF-Staff Wi-Fi network with certificate sign-in. Visitors "
        "use the HF-Guest Wi-Fi network, which has internet access only. Do not connect "
        "company laptops to the guest network.",
    ),
)

_STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how",
     "i", "if", "in", "is", "it", "my", "of", "on", "or", "the", "to", "what", "when",
     "where", "which", "who", "with", "you", "your", "can", "should", "must", "we", "our"}
)  # fmt: skip
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _tokens(text: str) -> set[str]:
    """Lower-case words without stopwords, with a crude plural fold ("keys" -> "key")."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return words


@dataclass(frozen=True)
class _Indexed:
    article: Article
    title_tokens: frozenset[str]
    body_tokens: frozenset[str]


_INDEX = tuple(
    _Indexed(a, frozenset(_tokens(a.title)), frozenset(_tokens(a.body))) for a in ARTICLES
)


def search(query: str, top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
    """The best ``top_k`` articles for ``query``, best first.

    Each query word found in an article's body scores 1, in its title 2 more; the score
    is normalised to 0..1 by the best possible. Ties go to the lower article id.
    Articles that match nothing are left out.
    """
    wanted = _tokens(query)
    if not wanted:
        return []
    best_possible = 3 * len(wanted)
    scored: list[tuple[int, str, _Indexed]] = []
    for entry in _INDEX:
        points = sum(
            (1 if word in entry.body_tokens else 0) + (2 if word in entry.title_tokens else 0)
            for word in wanted
        )
        if points:
            scored.append((-points, entry.article.id, entry))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [
        {
            "id": entry.article.id,
            "title": entry.article.title,
            "snippet": _snippet(entry.article.body, wanted),
            "score": round(-negative / best_possible, 3),
        }
        for negative, _, entry in scored[:top_k]
    ]


def _snippet(body: str, wanted: set[str]) -> str:
    """The body sentence sharing the most words with the query, cut to a fixed length."""
    sentences = _SENTENCE.split(body)
    best = max(sentences, key=lambda sentence: len(_tokens(sentence) & wanted))
    if len(best) <= _SNIPPET_LENGTH:
        return best
    return best[: _SNIPPET_LENGTH - 1].rstrip() + "…"


def _handle(arguments: Mapping[str, Any]) -> dict[str, Any]:
    top_k = int(arguments.get("top_k", DEFAULT_TOP_K))
    return {"results": search(str(arguments["query"]), max(1, min(top_k, MAX_TOP_K)))}


KB_SEARCH = Tool(
    name="kb.search",
    description="Search the IT policy knowledge base (VPN, passwords, MFA, onboarding, "
    "expenses, devices, access). Returns the best matching articles with a snippet.",
    schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_LENGTH},
            "top_k": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TOP_K,
                "default": DEFAULT_TOP_K,
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    handler=_handle,
)
