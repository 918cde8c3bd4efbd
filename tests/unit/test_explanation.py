"""admin/explanation.py: the explanation of one patient-view result as a typed model, rendered as text (what
``rules explain`` prints) and as an escaped HTML fragment (the console's Try-it page)."""

from __future__ import annotations

import re
from datetime import date
from html.parser import HTMLParser

import pytest
from support.chart_builder import CPT, condition, hook_request, observation, service_request, text_condition

from cds_service.admin.explanation import (Explanation, explain, render_explanation_html, render_explanation_page,
                                           render_explanation_text)
from cds_service.admin.simulation import build_engines
from cds_service.engine.registry import PATIENT_VIEW_SERVICE
from cds_service.hooks.request import parse_hook_request
from cds_service.ruleset.loader import load_default_ruleset

DAY = date(2026, 6, 15)
HOSTILE = '<script>alert("x")</script> & "quotes"'


@pytest.fixture(scope="module")
def ruleset():
    return load_default_ruleset()


def run(ruleset, resources, **kwargs):
    engine = build_engines([ruleset], DAY)[0]
    return engine.run(engine.registry.get(PATIENT_VIEW_SERVICE), parse_hook_request(hook_request(resources, **kwargs)))


@pytest.fixture(scope="module")
def venous(ruleset):
    """Leg cramps, venous insufficiency and skin changes by ICD-10-CM code, a low potassium, a duplex ordered
    long ago, a condition known by its text, and procedures not sent (not checked)."""
    resources = [condition("R25.2"), condition("I87.2"), condition("I83.0"), text_condition("Varicose veins"),
                 observation("2823-3", value=3.1, unit="mmol/L"), service_request((CPT, "93970"), age=400)]
    return run(ruleset, resources, birth_date="1960-01-01", omit=("procedures",))


def test_model_holds_facts_with_records_and_each_evaluation(ruleset, venous):
    e = explain(venous, ruleset, patient_label="p.json", rules_label="rules.yaml", day=DAY)
    assert isinstance(e, Explanation)
    assert e.patient_reference == "Patient/p1" and e.age_years == 66 and e.ruleset_version == ruleset.version
    facts = {f.name: f for f in e.facts}
    assert {"age", "documented_leg_cramps", "low_potassium"} <= set(facts)
    assert facts["low_potassium"].note == "latest potassium 3.1 mmol/L"
    source = facts["documented_leg_cramps"].sources[0]
    assert source.reference.startswith("Condition/") and source.code == "ICD-10-CM R25.2"
    assert source.date == date(2026, 3, 7)
    assert e.conditions.total == 4 and e.conditions.by_text == 1 and e.conditions.by_code == 3
    assert [(o.kind, o.low) for o in e.observations] == [("potassium", True)]
    assert [x.key for x in e.evaluations] == ["red_flag", "venous", "contributors"]
    venous_entry = e.evaluations[1]
    assert venous_entry.card_id == "venous-duplex-workup" and venous_entry.fired
    assert venous_entry.threshold == ruleset.spec.venous_index.threshold
    items = {i.item: i.points for i in venous_entry.items}
    assert items["venous_skin_changes"] == 4 and items["venous_insufficiency"] == 3
    assert venous_entry.score == sum(items.values())
    assert "procedures" in e.not_checked and "procedures" in e.evaluations[0].not_checked
    assert e.shown == ("venous-duplex-workup",)


def test_text_rendering_reads_the_model(ruleset, venous):
    e = explain(venous, ruleset, patient_label="p.json", rules_label="rules.yaml", day=DAY)
    text = render_explanation_text(e)
    assert text.splitlines()[:3] == ["Patient/p1 from p.json",
                                     f"Rule set rules.yaml (version {ruleset.version}); as of 2026-06-15 (12:00 UTC)",
                                     "Age: 66"]
    assert "Varicose veins (recognised by its name)" in text
    assert "  potassium: 3.1 mmol/L (low) - Observation/" in text
    assert f"venous-duplex-workup: FIRED, score {e.evaluations[1].score:g} vs threshold 3" in text
    assert "    varicose_veins: 3 point(s)\n        Condition/c" in text
    assert "C contributors -> conservative-care: FIRED, score 2 (documented cramps: no threshold)" in text
    assert "missing (venous-duplex-workup): bmi_absent bmi_30_or_over, would add 1" in text
    assert "Card shown after precedence: venous-duplex-workup" in text
    assert not text.endswith("\n")


class _Collector(HTMLParser):
    """Tags and attributes of an HTML text, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]

    def handle_data(self, data):
        self.text += data


def test_html_fragment_escapes_everything_and_uses_classes_only(ruleset):
    result = run(ruleset, [condition("R25.2"), text_condition(f"Varicose veins {HOSTILE}")])
    e = explain(result, ruleset, patient_label=f"file {HOSTILE}.json", rules_label=HOSTILE, day=DAY)
    html = render_explanation_html(e)
    parsed = _Collector()
    parsed.feed(html)
    assert "script" not in parsed.tags and "style" not in parsed.attributes and "style" not in parsed.tags
    assert not any(name.startswith("on") for name in parsed.attributes)
    assert HOSTILE in parsed.text  # shown, as text
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert html.startswith('<section class="explanation">') and html.endswith("</section>")
    assert {"table", "ul", "dl", "h3"} <= set(parsed.tags)


def test_html_fragment_shows_points_thresholds_and_what_was_not_checked(ruleset, venous):
    html = render_explanation_html(explain(venous, ruleset, patient_label="p.json", rules_label="r", day=DAY))
    section = re.search(r'<section class="evaluation fired" data-card-id="venous-duplex-workup".*?</section>', html)
    assert section, html
    assert '<span class="threshold">3</span>' in section[0]
    assert '<th scope="row">venous_skin_changes</th><td class="points">4</td>' in section[0]
    assert "keys this rule reads that could not be checked: procedures" in html
    assert '<dd class="shown">venous-duplex-workup</dd>' in html


def test_standalone_page_has_cards_and_explanation_and_loads_nothing(ruleset, venous):
    e = explain(venous, ruleset, patient_label="p.json", rules_label="r", day=DAY)
    page = render_explanation_page(e, venous.response)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<script" not in page
    assert 'data-card-id="venous-duplex-workup"' in page and '<section class="explanation">' in page
    assert "<link" not in page and not re.search(r"""src\s*=""", page)


def test_explain_refuses_an_order_hook_result(ruleset, venous):
    class OrderResult:
        facts = venous.facts
        evaluation = object()

    with pytest.raises(TypeError, match="patient-view"):
        explain(OrderResult(), ruleset, patient_label="x", rules_label="y", day=DAY)
