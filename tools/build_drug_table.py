#!/usr/bin/env python3
"""Build the drug table (cds_service/data/drugs/*.csv) from the shared clinical material.

Sources, all under ``--shared`` (default ``../shared``):

- ``clinical/codes.json`` -> ``medications``: ingredient RxCUIs, verification status and subclass;
- ``clinical/RULES.md`` -> "Concept boundaries": the anticoagulant and long-acting beta-agonist lists;
- ``clinical/vsac/*.json``: every RxNorm entry of every ValueSet expansion (clinical drugs, SCD/SBD,
  are mapped to ingredients by whole-word matching of the known ingredient names in their display);
- ``clinical/drug-codes-seen.csv``: every relevant code in the shared Synthea data, with its stated
  ingredients and class (these win over text matching: some displays are misspelled or brand-only);
- ``clinical/brand-names.csv``: brand names -> ingredients (classes are re-derived and cross-checked).

Output (sorted rows, ``\\n`` line ends, so the build is deterministic):

- ``ingredients.csv``     ingredient,rxcui,classes,verification,source
- ``clinical_drugs.csv``  rxcui,display,ingredients,classes,source
- ``brand_names.csv``     brand,ingredients,classes

Multi-valued cells are ``+``-separated. Run from the repo root::

    python tools/build_drug_table.py --shared ../shared --out cds_service/data/drugs
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

#: The class vocabulary of the drug table.
CLASSES = (
    "loop",
    "thiazide",
    "potassium-sparing",
    "laba",
    "statin",
    "anticoagulant",
    "quinine",
    "carbonic-anhydrase-inhibitor",
)

#: Source wording (codes.json subclass, brand-names.csv class) -> class vocabulary ("" = no class).
CLASS_ALIASES = {
    "loop": "loop",
    "thiazide": "thiazide",
    "thiazide-like": "thiazide",
    "potassium-sparing": "potassium-sparing",
    "potassium-sparing (mra)": "potassium-sparing",
    "aldosterone antagonist": "potassium-sparing",
    "laba": "laba",
    "statin": "statin",
    "anticoagulant": "anticoagulant",
    "quinine": "quinine",
    "cramp treatment to avoid": "quinine",
    "carbonic anhydrase inhibitor": "carbonic-anhydrase-inhibitor",
    "carbonic-anhydrase-inhibitor": "carbonic-anhydrase-inhibitor",
    "none": "",
    "": "",
}

#: RULES.md "Concept boundaries" bullets -> the class their ingredients get.
RULES_BULLETS = {"Anticoagulant": "anticoagulant", "Long-acting beta-agonist": "laba"}

#: Ingredients the brief names as "of no interest": mapped by code or name, but no class.
#: (aspirin is named in RULES.md: "Antiplatelets (clopidogrel, aspirin) are not anticoagulants".)
RULES_UNCLASSED = ("aspirin", "clopidogrel")


@dataclass
class Ingredient:
    name: str
    rxcui: str = ""
    classes: set[str] = field(default_factory=set)
    verification: str = ""
    sources: set[str] = field(default_factory=set)


@dataclass
class ClinicalDrug:
    rxcui: str
    display: str
    ingredients: set[str]
    sources: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- helpers


def normalise_class(label: str) -> str:
    key = label.strip().lower()
    if key not in CLASS_ALIASES:
        raise ValueError(f"unknown drug class label {label!r}: add it to CLASS_ALIASES")
    return CLASS_ALIASES[key]


def normalise_classes(labels: str) -> set[str]:
    return {c for c in (normalise_class(part) for part in labels.split("+")) if c}


def join(values) -> str:
    return "+".join(sorted(values))


def add_ingredient(table: dict[str, Ingredient], name: str, *, rxcui: str = "",
                   classes: set[str] = frozenset(), verification: str = "", source: str) -> None:
    """Add or merge one ingredient; an RxCUI conflict between sources is an error."""
    name = name.strip().lower()
    entry = table.setdefault(name, Ingredient(name))
    if rxcui:
        if entry.rxcui and entry.rxcui != rxcui:
            raise ValueError(f"{name}: RxCUI {entry.rxcui} vs {rxcui} ({source})")
        entry.rxcui = rxcui
    entry.classes |= set(classes)
    if verification and not entry.verification:
        entry.verification = verification
    entry.sources.add(source)


def name_pattern(names) -> re.Pattern[str]:
    """One case-insensitive whole-word regex, longest names first."""
    alternatives = sorted(set(names), key=lambda n: (-len(n), n))
    body = "|".join(r"\s+".join(map(re.escape, n.split())) for n in alternatives)
    return re.compile(rf"\b(?:{body})\b", re.IGNORECASE)


def ingredients_in(display: str, pattern: re.Pattern[str]) -> set[str]:
    return {" ".join(m.group(0).lower().split()) for m in pattern.finditer(display)}


# --------------------------------------------------------------------------- readers


def read_codes_json(path: Path, table: dict[str, Ingredient]) -> None:
    medications = json.loads(path.read_text(encoding="utf-8"))["medications"]
    for group in medications.values():
        if not isinstance(group, dict):
            continue
        for item in group.get("ingredients", []):
            system = item.get("rxnormSystem", RXNORM)
            if system != RXNORM:
                raise ValueError(f"{item['name']}: unexpected system {system}")
            sources = item.get("sources") or ["codes.json"]
            for src in sources:
                add_ingredient(
                    table, item["name"], rxcui=item.get("rxcui") or "",
                    classes=normalise_classes(item.get("subclass") or ""),
                    verification=item.get("verification", ""), source=f"codes.json:{src}",
                )


def rules_bullet(text: str, title: str) -> str:
    """The text of the "- **title**: ..." bullet, continuation lines joined."""
    match = re.search(rf"^- \*\*{re.escape(title)}\*\*:(.*?)(?=^\S|^- |\Z)", text, re.M | re.S)
    if not match:
        raise ValueError(f"RULES.md: no bullet '**{title}**'")
    return " ".join(match.group(1).split())


def parse_rules_list(bullet: str) -> list[tuple[str, str]]:
    """'warfarin 11289, formoterol, ... (note)' -> [(name, rxcui or '')]."""
    listing = bullet.split("(", 1)[0]
    pairs = []
    for item in listing.split(","):
        match = re.fullmatch(r"\s*([a-z][a-z \-]*?)(?:\s+(\d+))?\s*", item)
        if not match:
            raise ValueError(f"RULES.md: cannot read list item {item!r}")
        pairs.append((match.group(1), match.group(2) or ""))
    return pairs


def read_rules(path: Path, table: dict[str, Ingredient]) -> None:
    text = path.read_text(encoding="utf-8")
    for title, cls in RULES_BULLETS.items():
        for name, rxcui in parse_rules_list(rules_bullet(text, title)):
            add_ingredient(table, name, rxcui=rxcui, classes={cls},
                           verification="specified" if rxcui else "name-only", source="RULES.md")
    anticoagulant_bullet = rules_bullet(text, "Anticoagulant")
    for name in RULES_UNCLASSED:
        if name not in anticoagulant_bullet:
            raise ValueError(f"RULES.md no longer names {name} as a non-anticoagulant")
        add_ingredient(table, name, verification="name-only", source="RULES.md")


def read_drug_codes_seen(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def add_seen_ingredients(rows, table: dict[str, Ingredient]) -> None:
    """Ingredients named in drug-codes-seen.csv; their stated class must agree with the table."""
    for row in rows:
        names = [n.strip().lower() for n in row["ingredients"].split("+")]
        stated = normalise_classes(row["class"])
        for name in names:
            if name not in table:
                add_ingredient(table, name, classes=stated if len(names) == 1 else set(),
                               verification="name-only", source="drug-codes-seen.csv")
        derived = set().union(*(table[n].classes for n in names))
        if derived != stated:
            raise ValueError(f"drug-codes-seen.csv {row['rxcui']}: class {stated} but table says {derived}")


def read_brands(path: Path, table: dict[str, Ingredient]) -> list[tuple[str, set[str], set[str]]]:
    """Brand rows, with classes re-derived from the ingredients and checked against the file."""
    brands = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            names = {n.strip().lower() for n in row["ingredients"].split("+")}
            for name in sorted(names - table.keys()):
                add_ingredient(table, name, verification="name-only", source="brand-names.csv")
            derived = set().union(*(table[n].classes for n in names))
            stated = normalise_classes(row["class"])
            if derived != stated:
                raise ValueError(f"brand-names.csv {row['brand']}: class {stated} but ingredients say {derived}")
            brands.append((row["brand"].strip(), names, derived))
    return brands


def read_vsac(vsac_dir: Path) -> list[tuple[str, str, str, str]]:
    """(oid, version, code, display) of every RxNorm entry in every expansion."""
    entries = []
    for path in sorted(vsac_dir.glob("valueset-*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        oid = path.stem.removeprefix("valueset-")
        for item in resource.get("expansion", {}).get("contains", []):
            if item.get("system") == RXNORM:
                entries.append((oid, item.get("version", ""), item["code"], item.get("display", "")))
    return entries


# --------------------------------------------------------------------------- assembly


def add_vsac(entries, table: dict[str, Ingredient], drugs: dict[str, ClinicalDrug],
             report: dict[str, list]) -> None:
    """Ingredient-level entries confirm ingredients; clinical drugs are mapped by display."""
    by_name = {i.name: i for i in table.values()}
    pattern = name_pattern(by_name)
    # latest expansion version first, so the display kept is the most recent one
    for oid, _version, code, display in sorted(entries, key=lambda e: (e[1], e[0]), reverse=True):
        source = f"vsac:{oid}"
        name = display.strip().lower()
        if name in by_name:
            add_ingredient(table, name, rxcui=code, source=source)
            continue
        found = ingredients_in(display, pattern)
        if not found:
            report["unmapped"].append((code, display, oid))
            continue
        drug = drugs.setdefault(code, ClinicalDrug(code, display, found))
        if drug.ingredients != found:
            raise ValueError(f"VSAC {code}: ingredients {found} vs {drug.ingredients}")
        drug.sources.add(source)
        report["mapped"].add(code)


def add_seen_drugs(rows, table: dict[str, Ingredient], drugs: dict[str, ClinicalDrug],
                   report: dict[str, list]) -> None:
    """drug-codes-seen.csv rows: stated ingredients win; disagreements with VSAC are errors."""
    ingredient_codes = {i.rxcui for i in table.values() if i.rxcui}
    for row in rows:
        code = row["rxcui"].strip()
        if code in ingredient_codes:
            continue
        stated = {n.strip().lower() for n in row["ingredients"].split("+")}
        drug = drugs.setdefault(code, ClinicalDrug(code, row["display_as_seen"].strip(), stated))
        if drug.ingredients != stated:
            raise ValueError(f"drug-codes-seen.csv {code}: {stated} but VSAC display says {drug.ingredients}")
        drug.sources.add("drug-codes-seen.csv")
        found = ingredients_in(row["display_as_seen"], name_pattern(table))
        if found != stated:
            report["seen_text_mismatch"].append((code, row["display_as_seen"], sorted(found)))


def check_classes(table: dict[str, Ingredient]) -> None:
    for ingredient in table.values():
        unknown = ingredient.classes - set(CLASSES)
        if unknown:
            raise ValueError(f"{ingredient.name}: classes {unknown} outside the vocabulary")


# --------------------------------------------------------------------------- writers


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(sorted(rows))


def ingredient_rows(table: dict[str, Ingredient]) -> list[list[str]]:
    return [[i.name, i.rxcui, join(i.classes), i.verification, join(i.sources)] for i in table.values()]


def drug_rows(drugs: dict[str, ClinicalDrug], table: dict[str, Ingredient]) -> list[list[str]]:
    rows = []
    for d in drugs.values():
        classes = set().union(*(table[n].classes for n in d.ingredients))
        rows.append([d.rxcui, d.display, join(d.ingredients), join(classes), join(d.sources)])
    return rows


def brand_rows(brands) -> list[list[str]]:
    return [[brand, join(names), join(classes)] for brand, names, classes in brands]


# --------------------------------------------------------------------------- main


def build(shared: Path, out: Path) -> dict[str, list]:
    clinical = shared / "clinical"
    table: dict[str, Ingredient] = {}
    drugs: dict[str, ClinicalDrug] = {}
    report: dict[str, list] = {"mapped": set(), "unmapped": [], "seen_text_mismatch": []}

    read_codes_json(clinical / "codes.json", table)
    read_rules(clinical / "RULES.md", table)
    seen = read_drug_codes_seen(clinical / "drug-codes-seen.csv")
    add_seen_ingredients(seen, table)
    brands = read_brands(clinical / "brand-names.csv", table)
    add_vsac(read_vsac(clinical / "vsac"), table, drugs, report)
    add_seen_drugs(seen, table, drugs, report)
    check_classes(table)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "ingredients.csv", ["ingredient", "rxcui", "classes", "verification", "source"],
              ingredient_rows(table))
    write_csv(out / "clinical_drugs.csv", ["rxcui", "display", "ingredients", "classes", "source"],
              drug_rows(drugs, table))
    write_csv(out / "brand_names.csv", ["brand", "ingredients", "classes"], brand_rows(brands))
    report["counts"] = [len(table), len(drugs), len(brands)]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="shared material root")
    parser.add_argument("--out", type=Path, default=Path("cds_service/data/drugs"), help="output directory")
    args = parser.parse_args(argv)
    report = build(args.shared, args.out)
    n_ingredients, n_drugs, n_brands = report["counts"]
    print(f"ingredients: {n_ingredients}, clinical drugs: {n_drugs}, brands: {n_brands}")
    print(f"VSAC clinical drugs mapped: {len(report['mapped'])}, unmapped: {len(report['unmapped'])}")
    for code, display, oid in report["unmapped"]:
        print(f"  unmapped {code} {display!r} ({oid})", file=sys.stderr)
    for code, display, found in report["seen_text_mismatch"]:
        print(f"  drug-codes-seen {code} {display!r}: text alone finds {found or 'nothing'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
