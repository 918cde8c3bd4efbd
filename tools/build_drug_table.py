#!/usr/bin/env python3
"""Build the drug table (cds_service/data/drugs/*.csv) from the shared clinical material.

Sources, all under ``--shared`` (default ``../shared``):

- ``clinical/codes.json`` -> ``medications``: ingredient RxCUIs, verification status and subclass;
- ``clinical/RULES.md`` -> "Concept boundaries": the anticoagulant and long-acting beta-agonist lists;
- ``clinical/vsac/*.json``: every RxNorm entry of every ValueSet expansion;
- ``clinical/rxnorm-sandbox-medications.csv``: the RxNorm concepts a real CDS client (the CDS Hooks
  Sandbox) sends for every ingredient and brand of the table: clinical and branded drugs, their
  components and dose-form groups;
- ``clinical/drug-codes-seen.csv``: every relevant code in the shared Synthea data, with its stated
  ingredients and class (these win over names: some displays are misspelled or brand-only);
- ``clinical/brand-names.csv``: brand names -> ingredients (classes are re-derived and cross-checked).

The ingredients (and salts, brands) come from the first, second and last two sources; every RxNorm
concept of the VSAC expansions and of the sandbox list is then mapped to those ingredients by its RxNorm
name (``tools/rxnorm_names.py`` reads the name: "A 5 MG / B 10 MG Oral Tablet [Brand]", "A Pill",
"Brand Pill", "A 325 MG"), and the mapping is cross-checked against a whole-word search of the name for
every known ingredient and brand: any disagreement stops the build. A concept whose ingredients have no
class (aspirin, clopidogrel, albuterol, inhaled steroids) is still mapped (so its code is known) and is
listed as holding no ingredient of interest.

Output (sorted rows, ``\\n`` line ends, so the build is deterministic):

- ``ingredients.csv``     ingredient,rxcui,classes,verification,source
- ``clinical_drugs.csv``  rxcui,display,tty,ingredients,classes,source  (tty: the RxNorm term type its
  name shows; empty for a code known only from drug-codes-seen.csv, whose displays are not RxNorm's)
- ``brand_names.csv``     brand,ingredients,classes

Multi-valued cells are ``+``-separated. The build prints a summary (the sandbox concepts mapped, per
term type, and those of no interest). Run from the repo root::

    python tools/build_drug_table.py --shared ../shared --out cds_service/data/drugs
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rxnorm_names import ParsedName, parse_name  # noqa: E402  (a sibling module of this script)

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

#: Words RxNorm adds to an ingredient to name its precise ingredient (salt, ester, hydrate):
#: "Quinine Sulfate", "Warfarin Sodium", "dabigatran etexilate". A component whose name is a known
#: ingredient followed by any other word stops the build, so a new word is looked at, not guessed.
SALT_WORDS = frozenset(
    "sodium calcium magnesium potassium sulfate bisulfate hydrochloride dihydrochloride hydrobromide "
    "etexilate mesylate tosylate maleate fumarate tartrate succinate xinafoate trifenatate propionate "
    "furoate acetate citrate bromide anhydrous monohydrate dihydrate".split()
)


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
    tty: str = ""


@dataclass(frozen=True)
class MappedName:
    """An RxNorm concept read by its name: its term type and the table's ingredients it holds."""

    rxcui: str
    name: str
    tty: str
    ingredients: frozenset[str]


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


# --------------------------------------------------------------------------- RxNorm names -> ingredients


def read_sandbox_medications(path: Path) -> list[tuple[str, str]]:
    """(rxcui, name) of every concept in rxnorm-sandbox-medications.csv."""
    with path.open(newline="", encoding="utf-8") as f:
        return [(row["rxcui"].strip(), row["name"].strip()) for row in csv.DictReader(f)]


class NameMapper:
    """Maps an RxNorm concept to the table's ingredients by its name.

    The name is read by ``rxnorm_names.parse_name``; each component's ingredient text must be a known
    ingredient, alone or with salt words ("Quinine Sulfate" -> quinine), or hold no known name at all
    (an ingredient of no interest, such as amlodipine in "Amlodipine 5 MG / Atorvastatin 10 MG").
    A brand is known from brand-names.csv, or learned from the branded concepts ("... [Bayer Aspirin]")
    so that its dose-form group ("Bayer Aspirin Pill") maps too. Every result is cross-checked against
    a whole-word search of the name for every ingredient and brand name.
    """

    def __init__(self, table: dict[str, Ingredient], brands: list[tuple[str, set[str], set[str]]]) -> None:
        self._ingredients = sorted(table, key=lambda n: (-len(n), n))  # longest first: "ethacrynic acid"
        self._listed = {brand.lower(): frozenset(names) for brand, names, _classes in brands}
        self._learned: dict[str, set[frozenset[str]]] = {}
        self._pattern = name_pattern([*table, *self._listed])
        self._ingredient_pattern = name_pattern(table)

    # ------------------------------------------------------------ components

    def _ingredient_of(self, text: str, tail: bool, name: str) -> tuple[str | None, list[str]]:
        """The known ingredient a component's text starts with, and the words after it."""
        lowered = " ".join(text.lower().split())
        for ingredient in self._ingredients:
            if lowered == ingredient or lowered.startswith(ingredient + " "):
                rest = lowered[len(ingredient):].split()
                unknown = [w for w in rest if w not in SALT_WORDS]
                if unknown and not tail:  # a tail also holds the dose form ("... Oral Tablet", "... Pill")
                    raise ValueError(f"{name!r}: {text!r} reads as {ingredient} + {unknown}: "
                                     "add the salt to SALT_WORDS if it is one")
                return ingredient, rest
        inside = ingredients_in(text, self._ingredient_pattern)
        if inside:
            raise ValueError(f"{name!r}: component {text!r} holds {sorted(inside)} but not as its ingredient")
        return None, []

    def _components(self, parsed: ParsedName) -> frozenset[str]:
        found = (self._ingredient_of(c.text, c.tail, parsed.name)[0] for c in parsed.components)
        return frozenset(i for i in found if i)

    # ------------------------------------------------------------ brands

    def learn_brands(self, names: list[tuple[str, str]]) -> None:
        """Brand -> ingredients, from every branded drug, component and form in ``names``."""
        for _rxcui, name in names:
            parsed = parse_name(name)
            if parsed.brand and parsed.shape in ("drug", "component", "form", "pack"):
                self._learned.setdefault(parsed.brand.lower(), set()).add(self._components(parsed))

    def _brand_ingredients(self, brand: str, name: str) -> frozenset[str]:
        key = brand.lower()
        if key in self._listed:
            return self._listed[key]
        learned = self._learned.get(key, set())
        if len(learned) != 1:
            raise ValueError(f"{name!r}: brand {brand!r} has {len(learned)} ingredient sets {learned}")
        return next(iter(learned))

    def _group_brand(self, name: str) -> str | None:
        """The longest known brand that a group name starts with ("Bayer Aspirin Pill" -> Bayer Aspirin)."""
        lowered = name.lower()
        brands = [b for b in (*self._listed, *self._learned) if lowered.startswith(b + " ")]
        return max(brands, key=len) if brands else None

    # ------------------------------------------------------------ concepts

    def map(self, rxcui: str, name: str) -> MappedName:
        parsed = parse_name(name)
        if parsed.shape == "unparsed":
            raise ValueError(f"{rxcui} {name!r}: not an RxNorm normal-form name")
        if parsed.shape == "group" and (brand := self._group_brand(parsed.name)):
            tty, ingredients = "SBDG", self._brand_ingredients(brand, name)
        elif parsed.shape == "form" and len(parsed.components) == 1 and parsed.brand is None:
            tty, ingredients = self._bare_name(parsed)
        else:
            tty, ingredients = parsed.term_type, self._components(parsed)
        if parsed.brand and parsed.brand.lower() in self._listed:
            listed = self._listed[parsed.brand.lower()]
            if listed != ingredients:
                raise ValueError(f"{rxcui} {name!r}: {sorted(ingredients)} but brand-names.csv says {sorted(listed)}")
        by_words = self._whole_words(name)
        if by_words != ingredients:
            raise ValueError(f"{rxcui} {name!r}: read as {sorted(ingredients)}, whole words say {sorted(by_words)}")
        return MappedName(rxcui, name, tty, ingredients)

    def _bare_name(self, parsed: ParsedName) -> tuple[str, frozenset[str]]:
        """A strengthless name of one part: an ingredient (IN), with its salt (PIN), a brand (BN), or an
        ingredient and its dose form (SCDF)."""
        text = parsed.components[0].text
        if text.lower() in self._listed or text.lower() in self._learned:
            return "BN", self._brand_ingredients(text, parsed.name)
        ingredient, rest = self._ingredient_of(text, True, parsed.name)
        if ingredient is None:
            return "SCDF", frozenset()
        tty = "IN" if not rest else "PIN" if set(rest) <= SALT_WORDS else "SCDF"
        return tty, frozenset({ingredient})

    def _whole_words(self, name: str) -> frozenset[str]:
        found = ingredients_in(name, self._pattern)
        return frozenset().union(*(self._listed.get(n, frozenset({n})) for n in found))


# --------------------------------------------------------------------------- assembly


def add_mapped(mapped: MappedName, drugs: dict[str, ClinicalDrug], source: str) -> None:
    drug = drugs.setdefault(mapped.rxcui, ClinicalDrug(mapped.rxcui, mapped.name, set(mapped.ingredients),
                                                       tty=mapped.tty))
    if drug.ingredients != mapped.ingredients:
        raise ValueError(f"{source} {mapped.rxcui}: ingredients {sorted(mapped.ingredients)} "
                         f"vs {sorted(drug.ingredients)} ({sorted(drug.sources)})")
    drug.tty = drug.tty or mapped.tty
    drug.sources.add(source)


def add_sandbox(names: list[tuple[str, str]], mapper: NameMapper, drugs: dict[str, ClinicalDrug],
                report: dict[str, list]) -> None:
    """Every sandbox concept: mapped to its ingredients, or reported as holding none of interest."""
    for rxcui, name in names:
        mapped = mapper.map(rxcui, name)
        report["sandbox"].append(mapped)
        if mapped.ingredients:
            add_mapped(mapped, drugs, "rxnorm-sandbox")


def add_vsac(entries, mapper: NameMapper, table: dict[str, Ingredient], drugs: dict[str, ClinicalDrug],
             report: dict[str, list]) -> None:
    """Ingredient-level entries confirm ingredients; clinical drugs are mapped by their RxNorm name."""
    # latest expansion version first, so the display kept is the most recent one
    for oid, _version, code, display in sorted(entries, key=lambda e: (e[1], e[0]), reverse=True):
        source = f"vsac:{oid}"
        mapped = mapper.map(code, display)
        if mapped.tty == "IN":
            add_ingredient(table, next(iter(mapped.ingredients)), rxcui=code, source=source)
        elif not mapped.ingredients:
            report["unmapped"].append((code, display, oid))
        else:
            add_mapped(mapped, drugs, source)
            report["mapped"].add(code)


def add_seen_drugs(rows, table: dict[str, Ingredient], drugs: dict[str, ClinicalDrug],
                   report: dict[str, list]) -> None:
    """drug-codes-seen.csv rows: stated ingredients win; disagreements with an RxNorm name are errors."""
    ingredient_codes = {i.rxcui for i in table.values() if i.rxcui}
    for row in rows:
        code = row["rxcui"].strip()
        if code in ingredient_codes:
            continue
        stated = {n.strip().lower() for n in row["ingredients"].split("+")}
        drug = drugs.setdefault(code, ClinicalDrug(code, row["display_as_seen"].strip(), stated))
        if drug.ingredients != stated:
            raise ValueError(f"drug-codes-seen.csv {code}: {stated} but its RxNorm name {drug.display!r} "
                             f"says {drug.ingredients}")
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


def classes_of(ingredients, table: dict[str, Ingredient]) -> set[str]:
    return set().union(*(table[n].classes for n in ingredients))


def drug_rows(drugs: dict[str, ClinicalDrug], table: dict[str, Ingredient]) -> list[list[str]]:
    return [[d.rxcui, d.display, d.tty, join(d.ingredients), join(classes_of(d.ingredients, table)), join(d.sources)]
            for d in drugs.values()]


def brand_rows(brands) -> list[list[str]]:
    return [[brand, join(names), join(classes)] for brand, names, classes in brands]


# --------------------------------------------------------------------------- main


def build(shared: Path, out: Path) -> dict[str, list]:
    clinical = shared / "clinical"
    table: dict[str, Ingredient] = {}
    drugs: dict[str, ClinicalDrug] = {}
    report: dict[str, list] = {"mapped": set(), "unmapped": [], "seen_text_mismatch": [], "sandbox": []}

    read_codes_json(clinical / "codes.json", table)
    read_rules(clinical / "RULES.md", table)
    seen = read_drug_codes_seen(clinical / "drug-codes-seen.csv")
    add_seen_ingredients(seen, table)
    brands = read_brands(clinical / "brand-names.csv", table)
    check_classes(table)
    # the ingredients are all known now; the RxNorm concepts are mapped to them by name
    sandbox = read_sandbox_medications(clinical / "rxnorm-sandbox-medications.csv")
    mapper = NameMapper(table, brands)
    mapper.learn_brands(sandbox)
    add_sandbox(sandbox, mapper, drugs, report)
    add_vsac(read_vsac(clinical / "vsac"), mapper, table, drugs, report)
    add_seen_drugs(seen, table, drugs, report)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "ingredients.csv", ["ingredient", "rxcui", "classes", "verification", "source"],
              ingredient_rows(table))
    write_csv(out / "clinical_drugs.csv", ["rxcui", "display", "tty", "ingredients", "classes", "source"],
              drug_rows(drugs, table))
    write_csv(out / "brand_names.csv", ["brand", "ingredients", "classes"], brand_rows(brands))
    report["counts"] = [len(table), len(drugs), len(brands)]
    report["of_no_interest"] = [m for m in report["sandbox"] if not classes_of(m.ingredients, table)]
    return report


def print_sandbox_summary(report: dict[str, list]) -> None:
    """Per term type, the sandbox concepts mapped to an ingredient with a class, and the list of those
    holding no ingredient of interest (only unclassed ones such as aspirin, or none the table knows)."""
    no_interest = report["of_no_interest"]
    skipped = {m.rxcui for m in no_interest}
    mapped = [m for m in report["sandbox"] if m.rxcui not in skipped]

    def by_tty(items) -> str:
        counts = Counter(m.tty for m in items)
        return ", ".join(f"{tty} {n}" for tty, n in sorted(counts.items())) or "none"

    print(f"rxnorm-sandbox-medications.csv: {len(report['sandbox'])} concepts, {len(mapped)} mapped to an "
          f"ingredient of interest, {len(no_interest)} of no interest")
    print(f"  mapped, by term type: {by_tty(mapped)}")
    print(f"  of no interest, by term type: {by_tty(no_interest)}")
    for m in sorted(no_interest, key=lambda m: (m.name.lower(), m.rxcui)):
        held = join(m.ingredients) or "no ingredient of the table"
        print(f"  of no interest: {m.rxcui} {m.tty} {m.name} ({held})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="shared material root")
    parser.add_argument("--out", type=Path, default=Path("cds_service/data/drugs"), help="output directory")
    args = parser.parse_args(argv)
    report = build(args.shared, args.out)
    n_ingredients, n_drugs, n_brands = report["counts"]
    print(f"ingredients: {n_ingredients}, clinical drugs: {n_drugs}, brands: {n_brands}")
    print(f"VSAC clinical drugs mapped: {len(report['mapped'])}, unmapped: {len(report['unmapped'])}")
    print_sandbox_summary(report)
    for code, display, oid in report["unmapped"]:
        print(f"  unmapped {code} {display!r} ({oid})", file=sys.stderr)
    for code, display, found in report["seen_text_mismatch"]:
        print(f"  drug-codes-seen {code} {display!r}: text alone finds {found or 'nothing'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
