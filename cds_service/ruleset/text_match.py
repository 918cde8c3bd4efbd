"""Whole-word matching of a record's text against rule-set terms, with negation and uncertainty cues
(RULES.md, Text fallback for Conditions).

A term or cue matches as whole words, case-insensitively, with any run of spaces between its words; a
side of it that is not a word character (the ``?`` cue, the ``/`` of ``r/o``) needs no word boundary, so
``?`` matches anywhere in the text. Each text is judged on its own: a text that holds a cue matches no
term at all ("no leg cramps", "? varicose veins", "history of leg cramps").
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping


def _pattern(phrase: str) -> str:
    words = phrase.strip().split()
    body = r"\s+".join(re.escape(word) for word in words)
    start = r"(?<!\w)" if re.match(r"\w", words[0]) else ""
    end = r"(?!\w)" if re.search(r"\w$", words[-1]) else ""
    return start + body + end


def _alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first, so that "nocturnal leg cramps" is reported rather than "leg cramps" inside it.
    ordered = sorted({p for p in phrases if p.strip()}, key=len, reverse=True)
    if not ordered:
        return None
    return re.compile("|".join(_pattern(p) for p in ordered), re.IGNORECASE)


class TextMatcher:
    """Value-set name -> terms, and the cues that stop a text from matching."""

    def __init__(self, terms: Mapping[str, Iterable[str]], cues: Iterable[str]) -> None:
        self._terms = {name: pattern for name, phrases in terms.items()
                       if (pattern := _alternation(phrases)) is not None}
        self._cues = _alternation(cues)

    def cue_in(self, text: str) -> str | None:
        """The first negation / uncertainty cue in ``text``, if any."""
        found = self._cues.search(text) if self._cues is not None else None
        return found.group(0) if found else None

    def match(self, texts: Iterable[str | None]) -> dict[str, str]:
        """Value-set name -> the first clean text (no cue) holding one of its terms."""
        hits: dict[str, str] = {}
        for text in texts:
            if not text or self.cue_in(text) is not None:
                continue
            for name, pattern in self._terms.items():
                if name not in hits and pattern.search(text):
                    hits[name] = text
        return hits


def text_problems(terms: Mapping[str, list[str]], cues: list[str]) -> list[tuple[tuple, str]]:
    """Problems with the term and cue lists (paths relative to ``condition_text``): an empty phrase, and a
    term that holds a cue (it could never match)."""
    problems: list[tuple[tuple, str]] = []
    for index, cue in enumerate(cues):
        if not cue.strip():
            problems.append((("cues", index), "empty cue"))
    cue_matcher = TextMatcher({}, cues)
    for name, phrases in terms.items():
        if not phrases:
            problems.append((("terms", name), "lists no term"))
        for index, phrase in enumerate(phrases):
            if not re.search(r"\w", phrase):
                problems.append((("terms", name, index), f"term {phrase!r} holds no word"))
            elif (held := cue_matcher.cue_in(phrase)) is not None:
                problems.append((("terms", name, index), f"term {phrase!r} holds the cue {held!r}: it could never match"))
    return problems
