"""The drug table: RxNorm codes and drug names -> ingredients and drug classes.

Medication records usually carry clinical-drug codes (SCD/SBD), not ingredients. The table holds
both (``data/drugs/clinical_drugs.csv`` and ``data/drugs/ingredients.csv``, built from the shared
clinical material by ``tools/build_drug_table.py``), plus brand names (``data/drugs/brand_names.csv``).

Matching is code first; only when no coding's code is in the table does it fall back to a
case-insensitive whole-word match of ingredient and brand names in the text and the displays, and the
match says so (``method="text"``). Class vocabulary: loop, thiazide, potassium-sparing, laba, statin,
anticoagulant, quinine, carbonic-anhydrase-inhibitor; an ingredient of no interest has no class.

A match keeps each ingredient with its own classes (``DrugMatch.by_ingredient``): a combination such as
Dyazide is triamterene (potassium-sparing) + hydrochlorothiazide (thiazide), never both ingredients under
both classes; ``DrugMatch.ingredients_in(drug_class)`` names the ingredients that put a drug in a class.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
RXNORM_SYSTEMS = frozenset({RXNORM, "urn:oid:2.16.840.1.113883.6.88"})

_DATA_PACKAGE = "cds_service"
_DATA_DIR = ("data", "drugs")

Row = Mapping[str, str]


#: ((ingredient, its classes), ...) sorted by ingredient; an ingredient of no interest has no class.
IngredientClasses = tuple[tuple[str, frozenset[str]], ...]


@dataclass(frozen=True)
class DrugMatch:
    ingredients: frozenset[str]
    classes: frozenset[str]  # the union of the ingredients' classes
    method: str  # "code" or "text"
    matched: str  # the RxCUI, or the word/brand that matched ("+"-joined when several did)
    by_ingredient: IngredientClasses = ()

    def ingredients_in(self, drug_class: str) -> tuple[str, ...]:
        """The ingredients that put this drug in ``drug_class``, sorted (Dyazide, thiazide ->
        ("hydrochlorothiazide",))."""
        return tuple(name for name, classes in self.by_ingredient if drug_class in classes)


def _split(cell: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (cell or "").split("+") if part.strip())


def _name_key(name: str) -> str:
    return " ".join(name.lower().split())


def _compile_names(names: Iterable[str]) -> re.Pattern[str] | None:
    """One whole-word, case-insensitive regex over all names, longest first."""
    alternatives = sorted(set(names), key=lambda n: (-len(n), n))
    if not alternatives:
        return None
    body = "|".join(r"\s+".join(map(re.escape, n.split())) for n in alternatives)
    return re.compile(rf"\b(?:{body})\b", re.IGNORECASE)


def _union(matches: Iterable[DrugMatch], method: str) -> DrugMatch | None:
    matches = list(matches)
    if not matches:
        return None
    by_ingredient = dict(pair for m in matches for pair in m.by_ingredient)
    return DrugMatch(
        ingredients=frozenset().union(*(m.ingredients for m in matches)),
        classes=frozenset().union(*(m.classes for m in matches)),
        method=method,
        matched="+".join(sorted({part for m in matches for part in m.matched.split("+")})),
        by_ingredient=tuple(sorted(by_ingredient.items())),
    )


class DrugTable:
    """Immutable lookup of RxCUIs and names; build with :meth:`load_default` or :meth:`from_rows`."""

    def __init__(
        self,
        ingredient_classes: Mapping[str, frozenset[str]],
        codes: Mapping[str, frozenset[str]],
        names: Mapping[str, frozenset[str]],
        spellings: Mapping[str, str] | None = None,
    ) -> None:
        self._ingredient_classes = dict(ingredient_classes)
        self._codes = dict(codes)  # rxcui -> ingredients
        self._names = dict(names)  # lowercase ingredient or brand name -> ingredients
        self._spellings = dict(spellings or {})  # lowercase brand -> brand as written in the table
        self._pattern = _compile_names(self._names)

    # ------------------------------------------------------------------ construction

    @classmethod
    def load_default(cls) -> DrugTable:
        """The table shipped in the package (works from an installed wheel too)."""
        folder = resources.files(_DATA_PACKAGE).joinpath(*_DATA_DIR)

        def read(name: str) -> list[dict[str, str]]:
            # Traversable.open promises only mode and encoding; csv wants newline="", so wrap the bytes
            with io.TextIOWrapper(folder.joinpath(name).open("rb"), encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))

        return cls.from_rows(read("ingredients.csv"), read("clinical_drugs.csv"), read("brand_names.csv"))

    @classmethod
    def from_rows(cls, ingredients: Iterable[Row], clinical_drugs: Iterable[Row], brands: Iterable[Row]) -> DrugTable:
        """Rows shaped like the CSVs (``ingredient,rxcui,classes``; ``rxcui,ingredients,classes``;
        ``brand,ingredients,classes``); other columns are ignored. A drug's or brand's ``classes`` must be
        those of its ingredients (ValueError otherwise): each class belongs to one of its ingredients."""
        ingredient_classes: dict[str, frozenset[str]] = {}
        codes: dict[str, frozenset[str]] = {}
        names: dict[str, frozenset[str]] = {}
        brand_spelling: dict[str, str] = {}

        for row in ingredients:
            name = _name_key(row["ingredient"])
            ingredient_classes[name] = _split(row.get("classes"))
            names[name] = frozenset({name})
            rxcui = (row.get("rxcui") or "").strip()
            if rxcui:
                codes[rxcui] = frozenset({name})

        def members_of(row: Row, label: str) -> frozenset[str]:
            members = frozenset(_name_key(n) for n in _split(row["ingredients"]))
            derived = frozenset().union(*(ingredient_classes.get(n, frozenset()) for n in members))
            if "classes" in row and _split(row["classes"]) != derived:
                raise ValueError(f"drug table {label}: classes {sorted(_split(row['classes']))} are not "
                                 f"those of its ingredients {sorted(members)} ({sorted(derived)})")
            return members

        for row in clinical_drugs:
            codes[row["rxcui"].strip()] = members_of(row, row["rxcui"])

        for row in brands:
            key = _name_key(row["brand"])
            names[key] = members_of(row, row["brand"])
            brand_spelling[key] = row["brand"].strip()

        return cls(ingredient_classes, codes, names, brand_spelling)

    # ------------------------------------------------------------------ lookups

    def _match(self, ingredients: frozenset[str], method: str, matched: str) -> DrugMatch:
        by_ingredient = tuple((name, self.classes_of(name)) for name in sorted(ingredients))
        return DrugMatch(
            ingredients=ingredients,
            classes=frozenset().union(*(classes for _name, classes in by_ingredient)),
            method=method,
            matched=matched,
            by_ingredient=by_ingredient,
        )

    def match_code(self, system: str | None, code: str | None) -> DrugMatch | None:
        """An RxNorm code (clinical or branded drug, component, dose-form group, or ingredient) in the
        table, else None."""
        if system not in RXNORM_SYSTEMS or not code:
            return None
        code = code.strip()
        ingredients = self._codes.get(code)
        if ingredients is None:
            return None
        return self._match(ingredients, "code", code)

    def match_text(self, text: str | None) -> DrugMatch | None:
        """Whole-word ingredient and brand names in ``text`` (case-insensitive), else None."""
        if not text or self._pattern is None:
            return None
        found = {_name_key(m.group(0)) for m in self._pattern.finditer(text)}
        if not found:
            return None
        return self._match(
            frozenset().union(*(self._names[n] for n in found)),
            "text",
            "+".join(sorted(self._spellings.get(n, n) for n in found)),
        )

    def match_medication(
        self, codings: Iterable[tuple[str | None, str | None, str | None]], text: str | None
    ) -> DrugMatch | None:
        """Code first (union over every coding in the table); only when no code is known, the text
        fallback over ``text`` and every coding display; None when neither matches."""
        codings = list(codings)
        by_code = _union(
            (m for system, code, _display in codings if (m := self.match_code(system, code))), "code"
        )
        if by_code is not None:
            return by_code
        texts = [text, *(display for _system, _code, display in codings)]
        return _union((m for t in texts if (m := self.match_text(t))), "text")

    def classes_of(self, ingredient: str) -> frozenset[str]:
        return self._ingredient_classes.get(_name_key(ingredient), frozenset())

    @property
    def ingredient_names(self) -> frozenset[str]:
        return frozenset(self._ingredient_classes)

    @property
    def codes(self) -> frozenset[str]:
        """Every RxCUI the table maps (ingredients, drugs, components, groups)."""
        return frozenset(self._codes)
