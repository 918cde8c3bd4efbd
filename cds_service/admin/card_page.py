"""A CDS Hooks response's cards as one self-contained HTML page, styled like a CDS client's card list.

For looking at a card as a clinician sees it, without an EHR: ``cramp-cds invoke --html FILE``,
``cramp-cds render-cards response.json --html FILE``, and the browser tests (tests/integration/test_card_page.py).
Each card shows its summary with the indicator's colour, the detail (CDS Hooks markdown, rendered with
markdown-it-py: CommonMark plus tables, raw HTML in the markdown escaped, only http(s) and mailto links),
the source as a link, suggestions as buttons, links, and the override reasons a clinician would pick from.

Everything from the response is escaped; the page loads nothing (inline CSS, no script, no CDN), so it
opens the same offline. Machine-readable parts (the explanation ``extension``, suggestion resources with
their references) are not shown: a clinician never sees them.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping

from markdown_it import MarkdownIt

INDICATOR_LABELS = {"critical": "Critical", "warning": "Warning", "info": "Info"}
_SAFE_SCHEMES = ("http://", "https://", "mailto:")

_CSS = """
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; background: #eef1f5; color: #1f2933;
       font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page-title { font-size: 13px; font-weight: 600; color: #52606d; text-transform: uppercase;
              letter-spacing: .06em; margin: 0 0 12px; }
.no-cards { background: #fff; border-radius: 6px; padding: 16px 20px; color: #52606d; }
.card { background: #fff; border-radius: 6px; border-left: 8px solid #9aa5b1; margin: 0 0 18px;
        box-shadow: 0 1px 3px rgba(15, 23, 42, .15); max-width: 920px; overflow: hidden; }
.card.critical { border-left-color: #c81e1e; }
.card.warning { border-left-color: #e8930c; }
.card.info { border-left-color: #1c64f2; }
.card-head { display: flex; align-items: flex-start; gap: 12px; padding: 14px 20px 6px; }
.indicator { flex: none; font-size: 11px; font-weight: 700; text-transform: uppercase; letter-spacing: .05em;
             border-radius: 3px; padding: 3px 7px; color: #fff; background: #9aa5b1; margin-top: 2px; }
.critical .indicator { background: #c81e1e; }
.warning .indicator { background: #b96d00; }
.info .indicator { background: #1c64f2; }
.summary { font-size: 17px; font-weight: 650; margin: 0; }
.source { padding: 0 20px 8px; font-size: 13px; color: #52606d; }
.source a { color: #1a56db; }
.detail { padding: 4px 20px 8px; border-top: 1px solid #e4e7eb; }
.detail p { margin: 8px 0; }
.detail ul { margin: 6px 0 8px 22px; padding: 0; }
.detail table { border-collapse: collapse; margin: 8px 0 10px; font-size: 14px; width: 100%; }
.detail th, .detail td { border: 1px solid #d2d6dc; padding: 5px 8px; text-align: left; vertical-align: top; }
.detail th { background: #f4f5f7; font-weight: 600; }
.detail em { color: #52606d; }
.actions { padding: 10px 20px 14px; border-top: 1px solid #e4e7eb; background: #fafbfc; }
.actions h3 { font-size: 12px; font-weight: 600; color: #52606d; text-transform: uppercase;
              letter-spacing: .05em; margin: 2px 0 8px; }
.suggestion { display: inline-block; margin: 0 8px 8px 0; padding: 7px 14px; border-radius: 4px;
              border: 1px solid #1a56db; background: #1a56db; color: #fff; font: inherit; font-weight: 600; }
.suggestion.recommended::after { content: " (recommended)"; font-weight: 400; }
.suggestion-actions { margin: -4px 0 10px 2px; font-size: 13px; color: #52606d; list-style: none; padding: 0; }
.links a { display: inline-block; margin: 0 14px 6px 0; color: #1a56db; }
.dismiss { font-size: 13px; color: #52606d; margin-top: 4px; }
.dismiss span { display: inline-block; border: 1px solid #cbd2d9; border-radius: 12px; padding: 1px 9px;
                margin: 3px 6px 0 0; background: #fff; }
"""


def _markdown() -> MarkdownIt:
    # CommonMark + tables; html=False escapes any raw HTML in the detail; linkify off (only explicit links).
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.validateLink = lambda url: url.strip().lower().startswith(_SAFE_SCHEMES)  # type: ignore[method-assign]
    return md


_MD = _markdown()


def render_markdown(text: str) -> str:
    """A card detail (CDS Hooks: GitHub-flavoured markdown) as HTML, with raw HTML escaped."""
    return _MD.render(text)


def _safe_url(url: Any) -> str | None:
    if isinstance(url, str) and url.strip().lower().startswith(("http://", "https://")):
        return url
    return None


def _link(url: Any, label: str) -> str:
    safe = _safe_url(url)
    if safe is None:
        return escape(label)
    return f'<a href="{escape(safe, quote=True)}" rel="noopener noreferrer">{escape(label)}</a>'


def _suggestions(card: Mapping[str, Any]) -> str:
    parts = []
    for suggestion in card.get("suggestions") or []:
        recommended = " recommended" if suggestion.get("isRecommended") else ""
        parts.append(f'<button type="button" class="suggestion{recommended}">'
                     f'{escape(str(suggestion.get("label", "")))}</button>')
        actions = [str(a.get("description", "")) for a in suggestion.get("actions") or [] if a.get("description")]
        if actions:
            parts.append('<ul class="suggestion-actions">'
                         + "".join(f"<li>{escape(a)}</li>" for a in actions) + "</ul>")
    if not parts:
        return ""
    choose = "Choose one" if card.get("selectionBehavior") == "at-most-one" else "Suggestions"
    return f"<h3>{choose}</h3>" + "".join(parts)


def _links(card: Mapping[str, Any]) -> str:
    links = card.get("links") or []
    if not links:
        return ""
    return '<h3>Links</h3><div class="links">' + "".join(
        _link(link.get("url"), str(link.get("label", ""))) for link in links) + "</div>"


def _override_reasons(card: Mapping[str, Any]) -> str:
    reasons = [str(r.get("display") or r.get("code", "")) for r in card.get("overrideReasons") or []]
    if not reasons:
        return ""
    return '<div class="dismiss">Dismiss: ' + "".join(f"<span>{escape(r)}</span>" for r in reasons) + "</div>"


def render_card(card: Mapping[str, Any]) -> str:
    indicator = str(card.get("indicator", ""))
    css_class = indicator if indicator in INDICATOR_LABELS else "unknown"
    source = card.get("source") or {}
    topic = (source.get("topic") or {}).get("code")
    footer = _suggestions(card) + _links(card) + _override_reasons(card)
    return "".join([
        f'<article class="card {css_class}"' + (f' data-card-id="{escape(str(topic), quote=True)}"' if topic else "")
        + ">",
        '<div class="card-head">',
        f'<span class="indicator">{escape(INDICATOR_LABELS.get(indicator, indicator or "card"))}</span>',
        f'<h2 class="summary">{escape(str(card.get("summary", "")))}</h2>',
        "</div>",
        f'<div class="source">Source: {_link(source.get("url"), str(source.get("label", "")))}</div>',
        f'<div class="detail">{render_markdown(str(card["detail"]))}</div>' if card.get("detail") else "",
        f'<div class="actions">{footer}</div>' if footer else "",
        "</article>",
    ])


def render_page(response: Mapping[str, Any], title: str = "CDS Hooks cards") -> str:
    """The whole page for a CDS Hooks response (``{"cards": [...]}``)."""
    cards: Iterable[Mapping[str, Any]] = response.get("cards") or []
    body = "".join(render_card(card) for card in cards) or '<p class="no-cards">No cards were returned.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f'<body><p class="page-title">{escape(title)}</p>{body}</body></html>\n'
    )


def write_card_page(response: Mapping[str, Any], path: Path, title: str = "CDS Hooks cards") -> None:
    path.write_text(render_page(response, title), encoding="utf-8")
