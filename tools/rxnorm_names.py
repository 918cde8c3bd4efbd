"""A small parser of RxNorm concept names (the normal forms RxNorm gives its drug concepts).

RxNorm names its drug concepts by a fixed grammar (RxNorm Technical Documentation, "Naming conventions"):

    term type   name                                                    example
    ---------   -----------------------------------------------------   ------------------------------------------
    SCDC        ingredient strength                                     Quinine 325 MG
    SBDC        ingredient strength [Brand]                             Quinine Sulfate 324 MG [Qualaquin]
    SCD         [quantity] component / component ... dose-form          24 HR Lovastatin 20 MG Extended Release ...
    SBD         SCD [Brand]                                             ... Oral Capsule [Qualaquin]
    SCDF        ingredient / ingredient ... dose-form                   Quinine Oral Capsule
    SBDF        SCDF [Brand]                                            Quinine Oral Capsule [Qualaquin]
    SCDG/SBDG   ingredient / ... group, or Brand group                  Quinine Pill, Qualaquin Pill
    GPCK/BPCK   {n (SCD) / m (SCD)} Pack [Brand]
    IN/PIN      an ingredient alone (read as a strengthless "form")     quinine, Quinine Sulfate

``parse_name`` reads a name into its parts by that grammar alone: it knows no drug. Telling "Quinine Pill"
(SCDG) from "Qualaquin Pill" (SBDG), or "Quinine Sulfate" (a salt of quinine) from another ingredient,
needs the drug table's names: ``tools/build_drug_table.py`` does that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A strength or quantity: a number and an upper-case RxNorm unit ("325 MG", "10 MG/ML", "12 HR", "0.09 MG/ACTUAT").
_AMOUNT = r"\d[\d.,]*\s+[A-Z%]+(?:/[A-Z]+)*"
_QUANTITY_PREFIX = re.compile(rf"^(?P<quantity>{_AMOUNT})\s+(?=\D)")
_BRAND_SUFFIX = re.compile(r"^(?P<body>.*\S)\s+\[(?P<brand>[^\[\]]+)\]$")
_PACK = re.compile(r"^\{(?P<parts>.*)\}\s+Pack$")
_PACK_PART = re.compile(r"\((?P<drug>[^()]+)\)")
_COMPONENT = re.compile(rf"^(?P<name>.+?)\s+(?P<strength>{_AMOUNT})(?:\s+(?P<form>.+))?$")
#: Dose-form groups end in "Pill" or "... Product" (Pill, Oral Product, Injectable Product, ...).
_GROUP = re.compile(r"\s(?:Pill|Product)$")
_SEPARATOR = re.compile(r"\s+/\s+")


@dataclass(frozen=True)
class Component:
    """One ``/``-separated part of a name: the ingredient text as written (salt included), its strength
    (``None`` for a form or group name), and, on the last part of a strengthless name, the dose form
    still attached (``tail=True``: "Triamterene Oral Tablet", "Quinine Pill")."""

    text: str
    strength: str | None = None
    tail: bool = False


@dataclass(frozen=True)
class ParsedName:
    """A name read by the grammar: ``shape`` is one of component, drug, form, group, pack, unparsed;
    ``brand`` the bracketed brand (``None`` if none); ``components`` the ingredient parts, in order."""

    name: str
    shape: str
    components: tuple[Component, ...]
    brand: str | None = None
    dose_form: str | None = None
    quantity: str | None = None
    pack: tuple[ParsedName, ...] = ()

    @property
    def term_type(self) -> str:
        """The RxNorm term type the grammar alone implies. Two need the drug table's names, and
        ``tools/build_drug_table.py`` settles them: a group is SBDG when its text is a brand ("Qualaquin
        Pill"), and a bare strengthless name is IN/PIN when it is an ingredient with its salt ("Quinine
        Sulfate"), else SCDF ("Quinine Oral Capsule"); here they read SCDG and SCDF."""
        if self.shape == "unparsed":
            return "?"
        branded = self.brand is not None
        return {
            "component": ("SCDC", "SBDC"),
            "drug": ("SCD", "SBD"),
            "form": ("SCDF", "SBDF"),
            "group": ("SCDG", "SBDG"),
            "pack": ("GPCK", "BPCK"),
        }[self.shape][branded]


def _split_brand(name: str) -> tuple[str, str | None]:
    match = _BRAND_SUFFIX.match(name)
    return (match.group("body"), match.group("brand").strip()) if match else (name, None)


def parse_name(name: str) -> ParsedName:
    """Read one RxNorm drug name (see the module docstring). Never raises: a name outside the grammar
    has the shape "unparsed", its ``/``-separated parts kept as text."""
    name = " ".join(name.split())
    body, brand = _split_brand(name)
    pack = _PACK.match(body)
    if pack:
        drugs = tuple(parse_name(m.group("drug")) for m in _PACK_PART.finditer(pack.group("parts")))
        components = tuple(c for drug in drugs for c in drug.components)
        return ParsedName(name, "pack", components, brand, "Pack", pack=drugs)

    quantity = None
    prefix = _QUANTITY_PREFIX.match(body)
    if prefix:
        quantity, body = prefix.group("quantity"), body[prefix.end():]

    parts = _SEPARATOR.split(body)
    strengths = [_COMPONENT.match(part) for part in parts]
    if all(strengths):
        components = tuple(Component(m.group("name"), m.group("strength")) for m in strengths)
        forms = [m.group("form") for m in strengths if m.group("form")]
        if forms and strengths[-1].group("form") and len(forms) == 1:
            return ParsedName(name, "drug", components, brand, forms[0], quantity)
        if not forms and quantity is None:
            return ParsedName(name, "component", components, brand)
    if not any(strengths):
        *heads, last = parts
        components = (*(Component(p) for p in heads), Component(last, tail=True))
        if _GROUP.search(last):
            return ParsedName(name, "group", components, brand)
        return ParsedName(name, "form", components, brand)
    # mixed strengths, or a dose form in the middle: not an RxNorm normal form
    return ParsedName(name, "unparsed", tuple(Component(p, tail=True) for p in parts), brand)
