"""The CDS Hooks response model (cds_service/hooks/cards.py): the spec's invariants cds-resp-1..7 and the
2.0 field rules, as a table of invalid cards, and every card example of the spec as valid ones.

Invariants (../shared/spec/artifacts/HL7-cds-hooks@fb10ca7/input/fsh/invariants/cds-resp-*.fsh):
    cds-resp-1  selectionBehavior at-most-one implies at most one isRecommended suggestion
    cds-resp-2  a delete action carries resourceId and no resource
    cds-resp-3  appContext only on smart links
    cds-resp-4  every override-reason Coding has a display
    cds-resp-5  every suggestion action has a description
    cds-resp-6  suggestions imply selectionBehavior
    cds-resp-7  actionSelectionBehavior is all | any | at-most-one

Spec erratum: the 2.0.1 example spec201-17 (= 3.0 ballot spec300-20) has a card with no ``indicator``,
which both specs make REQUIRED (2.0 §Card; CDSHooksResponse.fsh ``cards.indicator 1..1``). The model is
right to reject it; ``test_spec_card_example_missing_indicator_is_the_only_fault`` pins that down.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from pydantic import ValidationError

from cds_service.hooks.cards import Action, CdsResponse, Coding, Source

EXAMPLES = Path("spec", "artifacts", "examples-extracted")
VALID_CARD_EXAMPLES = ["spec-2.0.1/spec201-16-valid.json", "spec-3.0.0-ballot/spec300-19-valid.json"]
INDICATORLESS_CARD_EXAMPLES = ["spec-2.0.1/spec201-17-valid.json", "spec-3.0.0-ballot/spec300-20-valid.json"]
OTHER_RESPONSE_EXAMPLES = [  # cards: [] and systemActions
    "spec-2.0.1/spec201-09-valid.json", "spec-2.0.1/spec201-15-valid.json",
    "spec-3.0.0-ballot/spec300-12-valid.json", "spec-3.0.0-ballot/spec300-18-valid.json",
]


def card(**fields: Any) -> dict[str, Any]:
    """A valid card with one suggestion, one link and one override reason; fields override."""
    base: dict[str, Any] = {
        "uuid": "card-1",
        "summary": "Leg cramps: conservative care",
        "detail": "Stay hydrated.",
        "indicator": "info",
        "source": {"label": "Leg-cramp CDS", "url": "https://example.org/rules",
                   "icon": "https://example.org/icon.png",
                   "topic": {"system": "https://example.org/cards", "code": "conservative-care"}},
        "selectionBehavior": "at-most-one",
        "suggestions": [suggestion()],
        "overrideReasons": [{"system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes",
                             "code": "patient-refuses", "display": "Patient declined"}],
        "links": [{"label": "Education", "url": "https://medlineplus.gov/musclecramps.html", "type": "absolute"}],
    }
    base.update(fields)
    return base


def suggestion(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "label": "Order a magnesium level",
        "uuid": "sugg-1",
        "isRecommended": True,
        "actions": [{"type": "create", "description": "Order serum magnesium",
                     "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"}}],
    }
    base.update(fields)
    return base


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.pop(key)


def response(c: dict[str, Any]) -> dict[str, Any]:
    return {"cards": [c]}


def validate(c: dict[str, Any]) -> CdsResponse:
    return CdsResponse.model_validate(response(c))


# (id, card, text the ValidationError must contain)
INVALID = [
    # -- invariants
    ("cds-resp-1 two recommended with at-most-one",
     card(suggestions=[suggestion(), suggestion(uuid="sugg-2", label="Other")]), "cds-resp-1"),
    ("cds-resp-2 delete without resourceId",
     card(suggestions=[suggestion(actions=[{"type": "delete", "description": "Remove"}])]), "cds-resp-2"),
    ("cds-resp-2 delete with resource",
     card(suggestions=[suggestion(actions=[{"type": "delete", "description": "Remove", "resourceId": "ServiceRequest/1",
                                            "resource": {"resourceType": "ServiceRequest", "id": "1"}}])]),
     "cds-resp-2"),
    ("cds-resp-3 appContext on absolute link",
     card(links=[{"label": "x", "url": "https://example.org", "type": "absolute", "appContext": "{}"}]), "cds-resp-3"),
    ("cds-resp-4 override reason without display",
     card(overrideReasons=[{"system": "http://example.org/reasons", "code": "refused"}]), "cds-resp-4"),
    ("cds-resp-5 action without description",
     card(suggestions=[suggestion(actions=[{"type": "create", "resource": {"resourceType": "ServiceRequest"}}])]),
     "cds-resp-5"),
    ("cds-resp-6 suggestions without selectionBehavior",
     {k: v for k, v in card().items() if k != "selectionBehavior"}, "cds-resp-6"),
    ("cds-resp-7 actionSelectionBehavior outside value set",
     card(suggestions=[suggestion(actionSelectionBehavior="one-or-more")]), "cds-resp-7"),
    # -- 2.0 field rules
    ("summary 140 characters", card(summary="x" * 140), "cards.0.summary: String should have at most 139"),
    ("summary empty", card(summary=""), "cards.0.summary: String should have at least 1"),
    ("summary missing", {k: v for k, v in card().items() if k != "summary"}, "cards.0.summary: Field required"),
    ("indicator missing", {k: v for k, v in card().items() if k != "indicator"}, "cards.0.indicator: Field required"),
    ("indicator hard-stop (CDS Hooks 1.0 value)", card(indicator="hard-stop"), "cards.0.indicator: Input should be"),
    ("indicator wrong case", card(indicator="Warning"), "cards.0.indicator: Input should be"),
    ("source missing", {k: v for k, v in card().items() if k != "source"}, "cards.0.source: Field required"),
    ("source label missing", card(source={"url": "https://example.org"}), "cards.0.source.label: Field required"),
    ("source url relative", card(source={"label": "x", "url": "/rules"}), "cards.0.source.url: Value error, must be an absolute"),
    ("source icon relative", card(source={"label": "x", "icon": "icon.png"}), "cards.0.source.icon: Value error, must be an absolute"),
    ("source icon not http", card(source={"label": "x", "icon": "ftp://example.org/icon.png"}), "cards.0.source.icon: Value error, must be an absolute"),
    ("source topic without code", card(source={"label": "x", "topic": {"system": "https://example.org"}}), "cards.0.source.topic.code: Field required"),
    ("selectionBehavior outside value set", card(selectionBehavior="all"), "cards.0.selectionBehavior: Input should be"),
    ("suggestion label missing",
     card(suggestions=[{k: v for k, v in suggestion().items() if k != "label"}]), "cards.0.suggestions.0.label: Field required"),
    ("action type outside value set",
     card(suggestions=[suggestion(actions=[{"type": "modify", "description": "x", "resource": {}}])]), "cards.0.suggestions.0.actions.0.type: Input should be"),
    ("create action without resource",
     card(suggestions=[suggestion(actions=[{"type": "create", "description": "x"}])]), "a create action carries the resource"),
    ("update action without resource",
     card(suggestions=[suggestion(actions=[{"type": "update", "description": "x"}])]), "a update action carries the resource"),
    ("link type outside value set", card(links=[{"label": "x", "url": "https://example.org", "type": "web"}]), "cards.0.links.0.type: Input should be"),
    ("link url missing", card(links=[{"label": "x", "type": "absolute"}]), "cards.0.links.0.url: Field required"),
    ("link label missing", card(links=[{"url": "https://example.org", "type": "absolute"}]), "cards.0.links.0.label: Field required"),
    ("absolute link with relative url", card(links=[{"label": "x", "url": "/education", "type": "absolute"}]),
     "cards.0.links.0: Value error, must be an absolute"),
    ("override reason Coding without system",
     card(overrideReasons=[{"code": "refused", "display": "Refused"}]), "cards.0.overrideReasons.0.system: Field required"),
]


def _messages(exc: ValidationError) -> str:
    """``loc: msg`` per error, without the input values that pydantic's str() adds."""
    return "\n".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors())


@pytest.mark.parametrize("invalid, needle", [pytest.param(c, n, id=i) for i, c, n in INVALID])
def test_invalid_card_is_rejected_naming_the_rule(invalid: dict[str, Any], needle: str) -> None:
    validate(card())  # the base card itself is valid
    with pytest.raises(ValidationError) as raised:
        validate(invalid)
    assert needle in _messages(raised.value)


def test_null_optional_field_is_rejected() -> None:
    """CDS Hooks 2.0 §JSON (checklist A.2): absent optional fields are omitted, never null."""
    with pytest.raises(ValidationError):
        validate(card(detail=None))


VALID = [
    ("base card", card()),
    ("minimal card", {"summary": "s", "indicator": "critical", "source": {"label": "x"}}),
    ("summary 139 characters", card(summary="x" * 139)),
    ("any: several recommended", card(selectionBehavior="any",
                                      suggestions=[suggestion(), suggestion(uuid="sugg-2", label="Other")])),
    ("at-most-one: one recommended of two", card(suggestions=[suggestion(), suggestion(isRecommended=False)])),
    ("selectionBehavior without suggestions", {k: v for k, v in card().items() if k != "suggestions"}),
    ("delete with resourceId", card(suggestions=[suggestion(actions=[
        {"type": "delete", "description": "Remove", "resourceId": "ServiceRequest/1"}])])),
    ("suggestion without actions", card(suggestions=[{"label": "Consider stretching"}])),
    *[(f"actionSelectionBehavior {v}", card(suggestions=[suggestion(actionSelectionBehavior=v)]))
      for v in ("all", "any", "at-most-one")],
    ("smart link with appContext", card(links=[{"label": "App", "url": "https://smart.example.org/launch",
                                                 "type": "smart", "appContext": "{\"a\":1}", "autolaunchable": True}])),
    ("extension on card", card(extension={"org.example.explanation": {"score": 1}})),
    ("http (not https) absolute link", card(links=[{"label": "x", "url": "http://example.org", "type": "absolute"}])),
]


@pytest.mark.parametrize("valid", [pytest.param(c, id=i) for i, c in VALID])
def test_valid_card_is_accepted(valid: dict[str, Any]) -> None:
    parsed = validate(valid)
    assert parsed.cards[0].summary == valid["summary"]


def test_system_actions_need_no_description() -> None:
    """3.0 makes action.description optional for systemActions; cds-resp-5 is about suggestion actions."""
    CdsResponse.model_validate({"cards": [], "systemActions": [{"type": "update", "resource": {"resourceType": "X"}}]})


def test_response_without_cards_is_rejected() -> None:
    with pytest.raises(ValidationError):
        CdsResponse.model_validate({"systemActions": []})


def _load(shared_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((shared_dir / EXAMPLES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", VALID_CARD_EXAMPLES + OTHER_RESPONSE_EXAMPLES)
def test_spec_response_example_validates(shared_dir: Path, name: str) -> None:
    example = _load(shared_dir, name)
    parsed = CdsResponse.model_validate(example)
    assert len(parsed.cards) == len(example["cards"])


@pytest.mark.parametrize("name", INDICATORLESS_CARD_EXAMPLES)
def test_spec_card_example_missing_indicator_is_the_only_fault(shared_dir: Path, name: str) -> None:
    """Spec erratum (see module docstring): rejected for the missing indicator, and for nothing else."""
    example = _load(shared_dir, name)
    with pytest.raises(ValidationError) as raised:
        CdsResponse.model_validate(example)
    errors = raised.value.errors()
    assert [(e["type"], e["loc"]) for e in errors] == [("missing", ("cards", 0, "indicator"))]
    fixed = copy.deepcopy(example)
    fixed["cards"][0]["indicator"] = "info"
    CdsResponse.model_validate(fixed)


@pytest.mark.parametrize("name", ["spec-2.0.1/spec201-10-valid.json", "spec-3.0.0-ballot/spec300-13-valid.json"])
def test_spec_source_example_validates(shared_dir: Path, name: str) -> None:
    Source.model_validate(_load(shared_dir, name)["source"])


@pytest.mark.parametrize("name", [
    "spec-2.0.1/spec201-11-valid.json", "spec-2.0.1/spec201-12-valid.json", "spec-2.0.1/spec201-13-valid.json",
    "spec-3.0.0-ballot/spec300-14-valid.json", "spec-3.0.0-ballot/spec300-15-valid.json",
    "spec-3.0.0-ballot/spec300-16-valid.json",
])
def test_spec_action_example_validates(shared_dir: Path, name: str) -> None:
    Action.model_validate(_load(shared_dir, name))


@pytest.mark.parametrize("name", ["spec-2.0.1/spec201-14-valid.json", "spec-3.0.0-ballot/spec300-17-valid.json"])
def test_spec_override_reasons_example_validates(shared_dir: Path, name: str) -> None:
    reasons = _load(shared_dir, name)["overrideReasons"]
    validate(card(overrideReasons=reasons))
    assert all(Coding.model_validate(r).display for r in reasons)
