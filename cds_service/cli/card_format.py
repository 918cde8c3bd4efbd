"""A CDS Hooks response as readable text for the terminal (``cramp-cds invoke``): each card's indicator,
summary, source, detail (Markdown made plain), suggestions with their actions, links and override reasons."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence


def _markdown_to_text(text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"\1 <\2>", text)
    return text


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line.strip() else line.rstrip() for line in text.splitlines())


def format_cards(response: Mapping[str, Any], suppressed: Sequence[str] = ()) -> str:
    """``suppressed``: the card ids the service held back after an override (its X-Cramp-Suppressed-Cards)."""
    cards = response.get("cards") or []
    count = f"{len(cards)} card{'s' if len(cards) != 1 else ''}"
    if suppressed:
        count += f"; suppressed after an override: {', '.join(suppressed)} (docs/feedback.md, suppression)"
    out: list[str] = [count]
    for number, card in enumerate(cards, 1):
        out.append("")
        indicator = str(card.get("indicator", "?")).upper()
        out.append(f"[{number}] {indicator}: {card.get('summary', '')}")
        source = card.get("source") or {}
        topic = (source.get("topic") or {}).get("code")
        out.append(f"    source: {source.get('label', '?')}" + (f" (card {topic})" if topic else ""))
        if card.get("detail"):
            out.append(_indent(_markdown_to_text(str(card["detail"]))))
        for suggestion in card.get("suggestions") or []:
            recommended = " (recommended)" if suggestion.get("isRecommended") else ""
            out.append(f"    suggestion: {suggestion.get('label', '')}{recommended}")
            for action in suggestion.get("actions") or []:
                resource = action.get("resource") or {}
                code = resource.get("code") or {}
                coding: dict[str, Any] = next(iter(code.get("coding") or []), {})
                what = code.get("text") or coding.get("display") or ""
                codes = f" [{coding.get('system', '')}|{coding.get('code', '')}]" if coding else ""
                out.append(f"      - {action.get('type', '?')} {resource.get('resourceType', '')}: "
                           f"{what}{codes}" + (f" ({action['description']})" if action.get("description") else ""))
        if card.get("selectionBehavior"):
            out.append(f"    selection: {card['selectionBehavior']}")
        for link in card.get("links") or []:
            out.append(f"    link ({link.get('type', '?')}): {link.get('label', '')} <{link.get('url', '')}>")
        reasons = [r.get("display") or r.get("code") for r in card.get("overrideReasons") or [] if isinstance(r, dict)]
        if reasons:
            out.append(f"    override reasons: {', '.join(str(r) for r in reasons)}")
    for action in response.get("systemActions") or []:
        out.append(f"system action: {action.get('type', '?')} {(action.get('resource') or {}).get('resourceType', '')}")
    return "\n".join(out) + "\n"
