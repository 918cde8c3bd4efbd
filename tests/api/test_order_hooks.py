"""The order hooks (RULES.md, Order hooks; docs/order-hooks.md), through HTTP:

- the hand-worked ``fhir_fixtures/order-*`` scenarios: card ids (source.topic.code), indicators, the drug
  classes named (card extension), suggestions; every card valid (card_model) and citing its records;
- the CDS Hooks library's order examples (../shared/spec/artifacts/examples-extracted/hooks-library-5d04c4d),
  sent with ``hook`` / ``hookInstance`` added and a minimal Patient prefetch (``-wrapped`` fragments wrapped):

    example                     what it holds                                      answer
    --------------------------  -------------------------------------------------  ------------------------------
    order-select-00-valid       PractitionerRole user; selections NutritionOrder +  200, no card (amoxicillin /
                                MedicationRequest amoxicillin/clavulanate 617993    clavulanate is no cramp drug)
    order-select-01-valid       same, Practitioner user; its dosage puts            200, no card (dosage is not
                                doseQuantity straight in dosageInstruction (STU3)   read, so not validated)
    order-select-02-valid       selections[1] names MedicationOrder (DSTU2, retired 400 naming context.selections[1]
                                in R4; MedicationRequest replaced it)
    order-sign-00-valid         NutritionOrder + MedicationRequest 617993           200, no card
    order-sign-01-valid         same, Practitioner user                             200, no card
    order-sign-02-wrapped       draftOrders entry[1] is a MedicationOrder (DSTU2)   400 naming context.draftOrders.
                                                                                    entry[1].resource.resourceType
  (A medication order the service cannot read is refused rather than silently passed: a DSTU2 quinine
  order would otherwise get no warning.)

- 400s naming the field, hook mismatch, optional conditions, rule-set checks and suppression; and
  patient-view unchanged (the order rules never run there).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.card_kinds import assert_detail_cites_records, assert_no_resource_ids, card_id, explanation
from cds_service.clock import fixed_clock
from cds_service.engine.pipeline import Engine
from cds_service.hooks.cards import Card, CdsResponse
from cds_service.ruleset.card_ids import (DRUG_ORDER_CARD_IDS, DRUG_ORDER_LABA, DRUG_ORDER_POTASSIUM_SPARING,
                                          DRUG_ORDER_THIAZIDE, LEGACY_DRUG_ORDER, ORDER_CARD_IDS, QUININE_FOR_CRAMPS)
from cds_service.ruleset.loader import RuleSetError, load_default_ruleset, parse_ruleset
from cds_service.settings import Settings
from cds_service.web.app import create_app
from support.hook_requests import NOW, PATIENT_ID, SERVICE_URL, minimal_request, patient_resource, searchset

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"
ORDER_SCENARIOS = sorted(p for p in FIXTURES.glob("order-*") if (p / "request.json").exists())
SELECT_URL = "/cds-services/leg-cramp-order-select"
SIGN_URL = "/cds-services/leg-cramp-order-sign"
URLS = {"order-select": SELECT_URL, "order-sign": SIGN_URL}
LIBRARY = Path("spec", "artifacts", "examples-extracted", "hooks-library-5d04c4d")
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _app(now: str = NOW):
    return create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(now))


def classes_named(card: dict[str, Any]) -> list[str]:
    return [item["item"] for item in explanation(card)["items"]]


def suggestion_actions(card: dict[str, Any]) -> list[str]:
    return sorted(f"{a['type']} {a.get('resourceId', '')}".strip()
                  for s in card.get("suggestions", []) for a in s.get("actions", []))


def assert_valid_cards(body: dict[str, Any]) -> list[dict[str, Any]]:
    CdsResponse.model_validate(body)
    for card in body["cards"]:
        Card.model_validate(card)
        assert "Rule set " in card["detail"]
        assert card["overrideReasons"] and card["source"]["topic"]["code"] == explanation(card)["rule"]
        if card.get("suggestions"):
            assert card["selectionBehavior"] == "at-most-one"
        assert_no_resource_ids(card)  # records are named by drug and code; ids stay in the extension
    return body["cards"]


# ------------------------------------------------------------------------------- hand-worked fixtures


def test_order_fixtures_cover_both_cards_and_both_hooks():
    ids, hooks = set(), set()
    for folder in ORDER_SCENARIOS:
        ids |= {c["id"] for c in yaml.safe_load((folder / "expected.yaml").read_text())["cards"]}
        hooks.add(json.loads((folder / "request.json").read_text())["hook"])
    assert QUININE_FOR_CRAMPS in ids and ids & set(DRUG_ORDER_CARD_IDS) and ids <= set(ORDER_CARD_IDS)
    assert hooks == {"order-select", "order-sign"}
    assert len(ORDER_SCENARIOS) >= 8


@pytest.mark.parametrize("folder", ORDER_SCENARIOS, ids=[p.name for p in ORDER_SCENARIOS])
def test_order_fixture_matches_hand_worked_expectation(folder: Path, no_network):
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    body = json.loads((folder / "request.json").read_text())
    response = _app(expected["now"]).test_client().post(URLS[body["hook"]], json=body)
    assert response.status_code == expected.get("status", 200), response.get_data(as_text=True)
    cards = assert_valid_cards(response.get_json())
    assert [card_id(c) for c in cards] == [c["id"] for c in expected["cards"]]
    for card, want in zip(cards, expected["cards"]):
        assert_detail_cites_records(card, body)
        assert card["indicator"] == want["indicator"]
        assert classes_named(card) == want["items"]
        assert suggestion_actions(card) == sorted(want.get("suggestions", []))
    text = response.get_data(as_text=True)
    assert "Fixture" not in text  # the patient's name never comes back


def test_combination_gives_one_card_per_class_and_no_statin_card(no_network):
    """Maxzide (hydrochlorothiazide + triamterene, by text) and atorvastatin (by code) for a crampy patient:
    the thiazide card and the potassium-sparing card, each naming its own class; nothing for the statin."""
    body = json.loads((FIXTURES / "order-03-maxzide-text-atorvastatin-code" / "request.json").read_text())
    cards = _app().test_client().post(SIGN_URL, json=body).get_json()["cards"]
    assert sorted(card_id(c) for c in cards) == sorted([DRUG_ORDER_POTASSIUM_SPARING, DRUG_ORDER_THIAZIDE])
    by_id = {card_id(c): c for c in cards}
    assert explanation(by_id[DRUG_ORDER_THIAZIDE])["items"][0]["drugClasses"] == ["thiazide"]
    assert explanation(by_id[DRUG_ORDER_POTASSIUM_SPARING])["items"][0]["drugClasses"] == ["potassium-sparing"]
    assert "1.48" in by_id[DRUG_ORDER_THIAZIDE]["detail"] and "2.12" in by_id[DRUG_ORDER_POTASSIUM_SPARING]["detail"]
    for card in cards:
        assert "Garrison 2012" in card["detail"] and "1.16" not in card["detail"] and "1.20" not in card["detail"]


def test_quinine_card_without_conditions_says_what_was_not_checked(no_network):
    body = json.loads((FIXTURES / "order-08-quinine-conditions-missing" / "request.json").read_text())
    card = _app().test_client().post(SELECT_URL, json=body).get_json()["cards"][0]
    assert "Could not be checked: conditions" in card["detail"]
    result = Engine.default(clock=fixed_clock(NOW)).invoke("leg-cramp-order-select", body)
    assert [(o.card_id, o.not_checked) for o in result.evaluation.shown] == [(QUININE_FOR_CRAMPS, ("conditions",))]
    assert "FDA" in card["summary"] and "malaria" in card["detail"]


# ------------------------------------------------------------------------------- hooks library examples

LIBRARY_EXPECTED: dict[str, tuple[int, str | None]] = {
    "order-select-00-valid.json": (200, None),
    "order-select-01-valid.json": (200, None),
    "order-select-02-valid.json": (400, "context.selections[1]"),
    "order-sign-00-valid.json": (200, None),
    "order-sign-01-valid.json": (200, None),
    "order-sign-02-wrapped.json": (400, "context.draftOrders.entry[1].resource.resourceType"),
}


def _library_request(shared_dir: Path, name: str) -> dict[str, Any]:
    text = (shared_dir / LIBRARY / name).read_text(encoding="utf-8")
    example = json.loads("{" + text + "}" if name.endswith("-wrapped.json") else text)
    hook = "order-select" if name.startswith("order-select") else "order-sign"
    patient_id = example["context"]["patientId"]
    return {"hook": hook, "hookInstance": f"library-{name}", **example,
            "prefetch": {"patient": {"resourceType": "Patient", "id": patient_id, "birthDate": "1970-01-01"}}}


def test_every_library_order_example_is_covered(shared_dir: Path):
    assert {p.name for p in (shared_dir / LIBRARY).glob("order-*.json")} == set(LIBRARY_EXPECTED)


@pytest.mark.parametrize("name", sorted(LIBRARY_EXPECTED))
def test_library_order_example(shared_dir: Path, name: str, client, no_network):
    body = _library_request(shared_dir, name)
    status, field = LIBRARY_EXPECTED[name]
    response = client.post(URLS[body["hook"]], json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 200:
        assert assert_valid_cards(response.get_json()) == []
    else:
        issue = response.get_json()["issue"][0]
        assert field in issue["diagnostics"] and issue["expression"] == [field]
        if "MedicationOrder" in json.dumps(body):
            assert "MedicationOrder" in issue["diagnostics"] and "MedicationRequest" in issue["diagnostics"]


# ------------------------------------------------------------------------------- 400s and hook checks


def med_request(rid: str, text: str | None = None, code: str | None = None, **extra: Any) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if code:
        concept["coding"] = [{"system": RX, "code": code}]
    if text:
        concept["text"] = text
    return {"resourceType": "MedicationRequest", "id": rid, "status": "draft", "intent": "order",
            "medicationCodeableConcept": concept, "subject": {"reference": f"Patient/{PATIENT_ID}"}, **extra}


def order_request(hook: str = "order-sign", orders: list[dict[str, Any]] | None = None,
                  selections: list[Any] | None = None, conditions: list[dict[str, Any]] | None = None,
                  **context: Any) -> dict[str, Any]:
    orders = orders if orders is not None else [med_request("q1", "quinine sulfate 324 MG Oral Capsule")]
    ctx: dict[str, Any] = {"userId": "Practitioner/example", "patientId": PATIENT_ID,
                           "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                           "entry": [{"resource": r} for r in orders]}}
    if hook == "order-select":
        ctx["selections"] = selections if selections is not None else [f"MedicationRequest/{orders[0]['id']}"]
    ctx.update(context)
    return minimal_request(hook=hook, context=ctx, prefetch={"patient": patient_resource(),
                                                             "conditions": searchset(*(conditions or []))})


def cramp_condition(cid: str = "c1") -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R25.2",
                                 "display": "Cramp and spasm"}]},
            "onsetDateTime": "2025-01-10"}


def _without_draft_orders() -> dict[str, Any]:
    body = order_request()
    del body["context"]["draftOrders"]
    return body


def _with_context(hook: str = "order-sign", **changes: Any) -> dict[str, Any]:
    body = order_request(hook)
    body["context"].update(changes)
    return body


def _entry_without_type() -> dict[str, Any]:
    body = order_request()
    del body["context"]["draftOrders"]["entry"][0]["resource"]["resourceType"]
    return body


BAD_CONTEXTS = [
    ("order-sign without draftOrders", SIGN_URL, _without_draft_orders, "context.draftOrders"),
    ("draftOrders not a Bundle", SIGN_URL, lambda: _with_context(draftOrders={"resourceType": "List"}),
     "context.draftOrders"),
    ("draftOrders entry without resourceType", SIGN_URL, _entry_without_type,
     "context.draftOrders.entry[0].resource.resourceType"),
    ("draftOrders entry without resource", SIGN_URL,
     lambda: _with_context(draftOrders={"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:x"}]}),
     "context.draftOrders.entry[0].resource"),
    ("order-select without selections", SELECT_URL,
     lambda: order_request("order-sign") | {"hook": "order-select"}, "context.selections"),
    ("selections empty", SELECT_URL, lambda: order_request("order-select", selections=[]), "context.selections"),
    ("selection not in draftOrders", SELECT_URL,
     lambda: order_request("order-select", selections=["MedicationRequest/q1", "MedicationRequest/absent"]),
     "context.selections[1]"),
    ("selection of another type with that id", SELECT_URL,
     lambda: order_request("order-select", selections=["ServiceRequest/q1"]), "context.selections[0]"),
    ("selection not Type/id", SELECT_URL, lambda: order_request("order-select", selections=["q1"]),
     "context.selections[0]"),
    ("selection not a string", SELECT_URL, lambda: order_request("order-select", selections=[7]),
     "context.selections[0]"),
    ("hook patient-view to the order-sign service", SIGN_URL, lambda: minimal_request(), "hook"),
    ("order-sign body to the order-select service", SELECT_URL, lambda: order_request("order-sign"), "hook"),
    ("order-select body to the patient-view service", SERVICE_URL, lambda: order_request("order-select"), "hook"),
]


@pytest.mark.parametrize("name, url, make, field", BAD_CONTEXTS, ids=[row[0] for row in BAD_CONTEXTS])
def test_bad_order_context_is_400_naming_the_field(name, url, make, field, client, no_network):
    response = client.post(url, json=make())
    assert response.status_code == 400, response.get_data(as_text=True)
    issue = response.get_json()["issue"][0]
    assert field in issue["diagnostics"], issue
    assert "Traceback" not in response.get_data(as_text=True)


def test_missing_patient_is_still_412(client, no_network):
    body = order_request()
    del body["prefetch"]["patient"]
    response = client.post(SIGN_URL, json=body)
    assert response.status_code == 412
    assert "patient" in response.get_json()["issue"][0]["diagnostics"]


# ------------------------------------------------------------------------------- rules and reading


def test_discovery_lists_order_services_with_optional_conditions(client):
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    assert services["leg-cramp-order-select"]["hook"] == "order-select"
    assert services["leg-cramp-order-sign"]["hook"] == "order-sign"
    for service_id in ("leg-cramp-order-select", "leg-cramp-order-sign"):
        assert services[service_id]["prefetch"] == {"patient": "Patient/{{context.patientId}}",
                                                    "conditions": "Condition?patient={{context.patientId}}"}
    engine = Engine.default()
    required = {t.key: t.required for t in engine.registry.get("leg-cramp-order-sign").templates}
    assert required == {"patient": True, "conditions": False}
    assert {t.key: t.required for t in engine.registry.get("leg-cramp-patient-view").templates}["conditions"]


def test_one_card_per_class_and_quinine_first(client, no_network):
    orders = [med_request("f1", "Lasix 40 mg"), med_request("f2", code="197732"),
              med_request("s1", "Advair Diskus"), med_request("q1", "Qualaquin 324 mg")]
    cards = assert_valid_cards(client.post(SIGN_URL, json=order_request(orders=orders,
                                                                        conditions=[cramp_condition()])).get_json())
    # Lasix and furosemide 80 MG (loop diuretics) give no card (RULES.md: ASR 1.20, not significant)
    assert [(card_id(c), classes_named(c)) for c in cards] == [
        ("quinine-for-cramps", ["quinine"]), (DRUG_ORDER_LABA, ["laba"])]
    assert explanation(cards[1])["items"][0]["records"] == ["MedicationRequest/s1"]


def test_invalid_draft_order_is_skipped_and_reported(client, no_network):
    orders = [med_request("s1", "salmeterol 50 MCG inhaler"), med_request("bad", "furosemide", authoredOn="yesterday"),
              med_request("other", "furosemide", subject={"reference": "Patient/someone-else"})]
    cards = assert_valid_cards(client.post(SIGN_URL, json=order_request(orders=orders,
                                                                        conditions=[cramp_condition()])).get_json())
    assert [(card_id(c), classes_named(c)) for c in cards] == [(DRUG_ORDER_LABA, ["laba"])]
    assert "Data may be incomplete: 2 records could not be read and were left out" in cards[0]["detail"]
    assert "1 medication order: invalid FHIR R4 (authoredOn" in cards[0]["detail"]
    assert "1 medication order: refers to another patient" in cards[0]["detail"]
    skipped = explanation(cards[0])["skippedRecords"]  # the ids, for machines only
    assert [s["record"] for s in skipped] == ["MedicationRequest/bad", "MedicationRequest/other"]


def test_statuses_judged_and_orders_without_id(client, no_network):
    no_id = med_request("x", "quinine 200 mg")
    del no_id["id"]
    cancelled = med_request("c", "Qualaquin", status="cancelled")
    cards = client.post(SIGN_URL, json=order_request(orders=[no_id, cancelled])).get_json()["cards"]
    assert [card_id(c) for c in cards] == ["quinine-for-cramps"]
    assert explanation(cards[0])["items"][0]["records"] == ["context.draftOrders.entry[0]"]
    assert "suggestions" not in cards[0]  # nothing to delete without an id
    resigned = client.post(SIGN_URL, json=order_request(orders=[med_request("a", "Qualaquin", status="active")]))
    assert [card_id(c) for c in resigned.get_json()["cards"]] == ["quinine-for-cramps"]


def test_patient_view_is_unchanged_by_order_rules(client, no_network):
    """A chart with an active quinine order and documented cramps: patient-view runs A/B/C only."""
    quinine = med_request("q1", "Qualaquin 324 mg") | {"status": "active"}
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(cramp_condition()),
                                     "medicationRequests": searchset(quinine)})
    cards = client.post(SERVICE_URL, json=body).get_json()["cards"]
    assert [card_id(c) for c in cards] == ["conservative-care"]
    assert "Quinine is not recommended" in cards[0]["detail"]


def test_disabled_order_card_is_not_shown(no_network):
    spec = load_default_ruleset().spec
    settings = spec.cards["quinine-for-cramps"].model_copy(update={"enabled": False})
    ruleset = load_default_ruleset()
    ruleset.spec = spec.model_copy(update={"cards": {**spec.cards, "quinine-for-cramps": settings}})
    engine = Engine(ruleset, Engine.default().drugs, clock=fixed_clock(NOW))
    result = engine.invoke("leg-cramp-order-sign", order_request())
    assert result.response == {"cards": []}
    assert [o.card_id for o in result.evaluation.outcomes] == ["quinine-for-cramps"]


class OverriddenLedger:
    def __init__(self) -> None:
        self.asked: list[tuple[str, datetime]] = []
        self.shown: list[Any] = []

    def patient_key(self, patient_id: str) -> str:
        return "key"

    overridden = ("quinine-for-cramps",)

    def overridden_rules(self, patient_key: str, windows: dict[str, datetime]) -> set[str]:
        self.asked += windows.items()
        return {rule for rule in windows if rule in self.overridden}

    def record_shown(self, cards: list[Any]) -> None:
        self.shown += cards


def test_overridden_order_card_is_suppressed_for_its_days(no_network):
    ledger = OverriddenLedger()
    engine = Engine(load_default_ruleset(), Engine.default().drugs, clock=fixed_clock(NOW), ledger=ledger)
    orders = [med_request("q1", "Qualaquin"), med_request("a1", code="316049")]
    result = engine.invoke("leg-cramp-order-sign", order_request(orders=orders, conditions=[cramp_condition()]))
    assert [card_id(c) for c in result.response["cards"]] == [DRUG_ORDER_THIAZIDE]
    days = {rule: (fixed_clock(NOW)() - since).days for rule, since in ledger.asked}
    # the class card is checked under its own id and under the id overrides were recorded under before
    assert days == {"quinine-for-cramps": 30, DRUG_ORDER_THIAZIDE: 90, LEGACY_DRUG_ORDER: 90}
    assert [(s.rule, s.service_id, s.indicator) for s in ledger.shown] == [
        (DRUG_ORDER_THIAZIDE, "leg-cramp-order-sign", "info")]


def test_override_under_the_former_single_id_suppresses_every_class_card(no_network):
    """Feedback recorded before 2026-12 under cramp-associated-drug-order carries over to each class id."""
    ledger = OverriddenLedger()
    ledger.overridden = (LEGACY_DRUG_ORDER,)
    engine = Engine(load_default_ruleset(), Engine.default().drugs, clock=fixed_clock(NOW), ledger=ledger)
    orders = [med_request("t1", "chlorthalidone 25 MG"), med_request("k1", "spironolactone 25 MG"),
              med_request("l1", "salmeterol 50 MCG inhaler")]
    body = order_request(orders=orders, conditions=[cramp_condition()])
    result = engine.invoke("leg-cramp-order-sign", copy.deepcopy(body))
    assert [o.card_id for o in result.evaluation.shown] == [DRUG_ORDER_POTASSIUM_SPARING, DRUG_ORDER_THIAZIDE,
                                                            DRUG_ORDER_LABA]
    assert result.response == {"cards": []}
    ledger.overridden = (DRUG_ORDER_THIAZIDE,)  # an override of one class hides only that class
    result = engine.invoke("leg-cramp-order-sign", copy.deepcopy(body))
    assert [card_id(c) for c in result.response["cards"]] == [DRUG_ORDER_POTASSIUM_SPARING, DRUG_ORDER_LABA]


# ------------------------------------------------------------------------------- rule set


def _default_yaml() -> dict[str, Any]:
    from importlib import resources
    return yaml.safe_load(resources.files("cds_service").joinpath("data/ruleset.yaml").read_text())


def test_default_order_rules_hold_rules_md():
    spec = load_default_ruleset().spec
    assert spec.order_rules.order_classes == {"quinine": ["quinine"], "potassium-sparing": ["potassium-sparing"],
                                              "thiazide": ["thiazide"], "laba": ["laba"]}
    assert spec.order_rules.cards == {"quinine-for-cramps": ["quinine"], DRUG_ORDER_POTASSIUM_SPARING: ["potassium-sparing"],
                                      DRUG_ORDER_THIAZIDE: ["thiazide"], DRUG_ORDER_LABA: ["laba"]}
    assert spec.cards["quinine-for-cramps"].indicator == "warning"
    assert {spec.cards[c].indicator for c in DRUG_ORDER_CARD_IDS} == {"info"}


INVALID_ORDER_RULES = [
    ("unknown order class", lambda d: d["order_rules"]["order_classes"].update(nsaid=["nsaid"]),
     "order_rules.order_classes.nsaid", "unknown order class"),
    ("unknown drug class", lambda d: d["order_rules"]["order_classes"]["thiazide"].append("osmotic"),
     "order_rules.order_classes.thiazide[1]", "unknown drug class 'osmotic'"),
    ("card judges an undefined class", lambda d: d["order_rules"]["cards"]["quinine-for-cramps"].append("nsaid"),
     "order_rules.cards.quinine-for-cramps[1]", "not in order_rules.order_classes"),
    # (yaml.safe_dump sorts the keys: the thiazide card is read before the quinine card)
    ("class judged twice", lambda d: d["order_rules"]["cards"][DRUG_ORDER_THIAZIDE].append("quinine"),
     "order_rules.cards.quinine-for-cramps[0]", f"already judged by {DRUG_ORDER_THIAZIDE}"),
    ("statins as an order class", lambda d: d["order_rules"]["order_classes"].update(statin=["statin"]),
     "order_rules.order_classes.statin", "unknown order class"),
    ("the former single card id", lambda d: d["order_rules"]["cards"].update({LEGACY_DRUG_ORDER: ["laba"]}),
     f"order_rules.cards.{LEGACY_DRUG_ORDER}", "one card per drug class"),
    ("unknown order card", lambda d: d["order_rules"]["cards"].update({"nsaid-card": ["quinine"]}),
     "order_rules.cards.nsaid-card", "unknown card id"),
    ("missing order card settings", lambda d: d["cards"].pop("quinine-for-cramps"), "cards",
     "missing settings for quinine-for-cramps"),
    ("unknown key", lambda d: d["order_rules"].update(colour="red"), "order_rules.colour", "unknown key"),
    ("no statuses", lambda d: d["order_rules"].update(statuses=[]), "order_rules.statuses", "at least 1"),
]


@pytest.mark.parametrize("name, change, path, message", INVALID_ORDER_RULES, ids=[r[0] for r in INVALID_ORDER_RULES])
def test_invalid_order_rules_name_path_and_problem(name, change, path, message):
    data = _default_yaml()
    change(data)
    with pytest.raises(RuleSetError) as info:
        parse_ruleset(yaml.safe_dump(data), "custom.yaml")
    assert any(p == path and message in m for p, m in info.value.problems), info.value.problems


def test_order_classes_are_rule_set_data(no_network):
    """Rule parameters are data: an admin who puts loop diuretics in the thiazide order class gets that card
    for furosemide; the default gives none."""
    data = _default_yaml()
    data["order_rules"]["order_classes"]["thiazide"].append("loop")
    engine = Engine(parse_ruleset(yaml.safe_dump(data), "custom.yaml"), Engine.default().drugs, clock=fixed_clock(NOW))
    body = order_request(orders=[med_request("f1", "furosemide 40 MG")], conditions=[cramp_condition()])
    assert [card_id(c) for c in engine.invoke("leg-cramp-order-sign", copy.deepcopy(body)).response["cards"]] == [
        DRUG_ORDER_THIAZIDE]
    assert Engine.default(clock=fixed_clock(NOW)).invoke("leg-cramp-order-sign", body).response == {"cards": []}


# ------------------------------------------------------------------------------- classes (Revision 2026-12 point 5)

CLASS_TABLE = [
    # draft order, the cards it gives a patient with documented cramps (hand-read from RULES.md, Order hooks)
    ("spironolactone (aldosterone antagonist)", "spironolactone 25 MG Oral Tablet", [DRUG_ORDER_POTASSIUM_SPARING]),
    ("eplerenone (aldosterone antagonist)", "eplerenone 25 MG Oral Tablet", [DRUG_ORDER_POTASSIUM_SPARING]),
    ("amiloride", "amiloride 5 MG Oral Tablet", [DRUG_ORDER_POTASSIUM_SPARING]),
    ("hydrochlorothiazide", "hydrochlorothiazide 25 MG Oral Tablet", [DRUG_ORDER_THIAZIDE]),
    ("chlorthalidone (thiazide-like)", "chlorthalidone 25 MG Oral Tablet", [DRUG_ORDER_THIAZIDE]),
    ("indapamide (thiazide-like)", "indapamide 1.25 MG Oral Tablet", [DRUG_ORDER_THIAZIDE]),
    ("metolazone (thiazide-like)", "metolazone 5 MG Oral Tablet", [DRUG_ORDER_THIAZIDE]),
    ("Dyazide: each class", "Dyazide 37.5/25 oral capsule", [DRUG_ORDER_POTASSIUM_SPARING, DRUG_ORDER_THIAZIDE]),
    ("salmeterol", "salmeterol 50 MCG/ACTUAT inhaler", [DRUG_ORDER_LABA]),
    ("formoterol", "formoterol 20 MCG/2ML inhalation solution", [DRUG_ORDER_LABA]),
    ("vilanterol combination", "fluticasone furoate / vilanterol inhaler", [DRUG_ORDER_LABA]),
    ("furosemide (loop): none", "furosemide 40 MG Oral Tablet", []),
    ("bumetanide (loop): none", "bumetanide 1 MG Oral Tablet", []),
    ("atorvastatin (statin): none", "atorvastatin 20 MG Oral Tablet", []),
    ("simvastatin (statin): none", "simvastatin 20 MG Oral Tablet", []),
    ("acetazolamide: none", "acetazolamide 250 MG Oral Tablet", []),
]


@pytest.mark.parametrize("name, text, cards", CLASS_TABLE, ids=[r[0] for r in CLASS_TABLE])
def test_cramp_associated_classes(name, text, cards, no_network):
    engine = Engine.default(clock=fixed_clock(NOW))
    body = order_request(orders=[med_request("o1", text)], conditions=[cramp_condition()])
    result = engine.invoke("leg-cramp-order-sign", body)
    assert [card_id(c) for c in result.response["cards"]] == cards
    assert [o.order_class for o in result.evaluation.shown] == [c.removeprefix(LEGACY_DRUG_ORDER + "-") for c in cards]


CRAMP_RECORDS = [
    ("undotted ICD-10-CM", {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R252"}]}, True),
    ("lower case", {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "g47.62"}]}, True),
    ("text only", {"text": "Nocturnal leg cramps"}, True),
    ("display only, uncoded", {"coding": [{"display": "Leg cramps at night"}]}, True),
    ("negated text", {"text": "No leg cramps"}, False),
    ("uncertain text", {"text": "? leg cramps"}, False),
]


@pytest.mark.parametrize("name, code, fires", CRAMP_RECORDS, ids=[r[0] for r in CRAMP_RECORDS])
def test_cramp_record_read_on_order_hooks(name, code, fires, no_network):
    """Text-matched and undotted cramp records count on the order hooks like coded ones."""
    cramps = cramp_condition() | {"code": code}
    body = order_request(orders=[med_request("t1", "chlorthalidone 25 MG")], conditions=[cramps])
    result = Engine.default(clock=fixed_clock(NOW)).invoke("leg-cramp-order-sign", body)
    assert [card_id(c) for c in result.response["cards"]] == ([DRUG_ORDER_THIAZIDE] if fires else [])
    if fires:
        assert result.evaluation.shown[0].cramps[0].resource_id == "c1"


def test_legacy_override_in_the_real_store_suppresses_class_cards_for_90_days(tmp_path, no_network):
    """A card ledger (SQLite file, the default store) holding an override recorded before 2026-12 under
    cramp-associated-drug-order: the thiazide card is suppressed for that patient for 90 days, then shown."""
    from datetime import timedelta

    from cds_service.engine.ledger import ShownCard
    from cds_service.hooks.feedback import FeedbackItem
    from cds_service.storage.store import CardStore

    shown_at = fixed_clock(NOW)()
    store = CardStore(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "secret-for-tests", clock=lambda: shown_at)
    key = store.patient_key(PATIENT_ID)
    store.record_shown([ShownCard("0b7c6a3e-7d1f-4f0e-9d43-5f0a3c2b1a00", (), "leg-cramp-order-sign", LEGACY_DRUG_ORDER,
                                  "2026.11.1", "info", "old-hook-instance", key, shown_at)])
    store.record_feedback("leg-cramp-order-sign", [FeedbackItem.model_validate({
        "card": "0b7c6a3e-7d1f-4f0e-9d43-5f0a3c2b1a00", "outcome": "overridden",
        "overrideReason": {"reason": {"code": "cds-not-applicable",
                                      "system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"}},
        "outcomeTimestamp": shown_at.isoformat()})])
    body = order_request(orders=[med_request("t1", "chlorthalidone 25 MG")], conditions=[cramp_condition()])

    def cards_on(day: int) -> list[str]:
        engine = Engine(load_default_ruleset(), Engine.default().drugs,
                        clock=lambda: shown_at + timedelta(days=day), ledger=store)
        return [card_id(c) for c in engine.invoke("leg-cramp-order-sign", copy.deepcopy(body)).response["cards"]]

    try:
        assert cards_on(1) == [] and cards_on(89) == []
        assert cards_on(91) == [DRUG_ORDER_THIAZIDE]
    finally:
        store.close()
