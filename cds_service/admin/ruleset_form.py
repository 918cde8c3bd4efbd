"""The draft editor's form: every number, list and wording field of the rule set, grouped by card, with its
value read from the draft's YAML and the validator's problems placed at their field (docs/admin-rules.md).

The form's structure comes from a valid rule set (the version the draft started from, ``RuleSetView``); its
values from the draft's current text, which may not validate yet, so an invalid draft shows again with every
value the admin typed and each problem next to its input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from cds_service.admin.ruleset_edit import form_values
from cds_service.admin.ruleset_view import ENTRY_KINDS, RuleSetView, Setting

ENTRY_KIND_TITLES = {"codes": "Codes", "prefixes": "Prefixes (ICD-10-CM)", "ranges": "Category ranges",
                     "exclude": "Never matches"}


class ProblemLike(Protocol):
    line: int | None
    field: str
    message: str


@dataclass(frozen=True)
class FormField:
    field: str  # the input's name: the dotted path into the YAML
    label: str
    kind: str  # integer | number | list | text | boolean | choice
    value: str
    unit: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return "f-" + re.sub(r"[^A-Za-z0-9_-]", "_", self.field.replace(".", "--"))


@dataclass(frozen=True)
class FormSection:
    title: str
    anchor: str
    fields: tuple[FormField, ...]
    note: str = ""

    @property
    def has_errors(self) -> bool:
        return any(field.errors for field in self.fields)


@dataclass(frozen=True)
class DraftForm:
    sections: tuple[FormSection, ...]
    value_sets: tuple[FormSection, ...]
    problems: tuple[ProblemLike, ...]  # every problem, for the list beside the YAML
    unplaced: tuple[ProblemLike, ...]  # problems about no form field (they show beside the YAML only)
    readable: bool  # False: the YAML does not parse, so the form cannot show its values

    @property
    def fields(self) -> tuple[FormField, ...]:
        return tuple(f for section in (*self.sections, *self.value_sets) for f in section.fields)


def _base_path(problem_field: str) -> str:
    """``value_sets.pregnancy.codes[0]`` -> ``value_sets.pregnancy.codes``."""
    return re.sub(r"\[\d+\]", "", problem_field)


def field_of_problem(problem_field: str, fields: Iterable[str]) -> str | None:
    """The form field a problem is about: the field itself, the field holding it (a list entry), or None."""
    path = _base_path(problem_field)
    known = set(fields)
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _placed(settings: Iterable[Setting], seen: set[str]) -> list[Setting]:
    fresh = []
    for setting in settings:
        if setting.field not in seen:
            seen.add(setting.field)
            fresh.append(setting)
    return fresh


def _sections(view: RuleSetView) -> tuple[list[tuple[str, str, list[Setting], str]], list[tuple[str, str, list[Setting]]]]:
    seen: set[str] = set()
    sections = [("General", "form-general", _placed(view.general, seen), "")]
    for card in view.cards:
        settings = _placed(card.settings, seen)
        shared = [s for s in card.settings if s not in settings]
        note = (f"{len(shared)} more of its settings are edited with an earlier card." if shared else "")
        sections.append((f"{card.card_id} ({card.evaluation})", f"form-{card.card_id}", settings, note))
    sections.append(("Windows", "form-windows", _placed(view.windows, seen), ""))
    sections.append(("Observations", "form-observations", _placed(view.observations, seen), ""))
    value_sets = []
    for value_set in view.value_sets:
        settings = [Setting(f"{value_set.field}.source", "Source", value_set.source, "text")]
        settings += [Setting(f"{value_set.field}.{kind}", ENTRY_KIND_TITLES[kind], value_set.refs(kind), "list",
                             help="one '<system alias>|<code>' a line") for kind in ENTRY_KINDS]
        value_sets.append((value_set.name, f"form-vs-{value_set.name}", settings))
    return sections, value_sets


def build_form(view: RuleSetView, content: str, problems: Iterable[ProblemLike] = (),
               errors: dict[str, str] | None = None) -> DraftForm:
    """The form for the draft ``content``, structured by ``view``; ``errors``: field -> message of a form
    value that could not be applied (a wrong type)."""
    problems = tuple(problems)
    card_sections, value_set_sections = _sections(view)
    all_fields = [s.field for _, _, settings, _ in card_sections for s in settings]
    all_fields += [s.field for _, _, settings in value_set_sections for s in settings]
    values = form_values(content, all_fields)
    by_field: dict[str, list[str]] = {}
    unplaced: list[ProblemLike] = []
    for problem in problems:
        target = field_of_problem(problem.field, all_fields)
        if target is None:
            unplaced.append(problem)
        else:
            where = f"line {problem.line}: " if problem.line else ""
            by_field.setdefault(target, []).append(f"{where}{problem.field}: {problem.message}")
    for field, message in (errors or {}).items():
        by_field.setdefault(field, []).append(message)

    def field_of(setting: Setting) -> FormField:
        value = values[setting.field] if values is not None else setting.form_value
        return FormField(setting.field, setting.label, setting.kind, value, setting.unit, setting.help,
                         setting.choices, tuple(by_field.get(setting.field, ())))

    sections = tuple(FormSection(title, anchor, tuple(field_of(s) for s in settings), note)
                     for title, anchor, settings, note in card_sections)
    value_sets = tuple(FormSection(title, anchor, tuple(field_of(s) for s in settings))
                       for title, anchor, settings in value_set_sections)
    return DraftForm(sections, value_sets, problems, tuple(unplaced), values is not None)


def submitted_fields(form: Any, names: Iterable[str]) -> dict[str, str]:
    """The form's inputs among ``names`` that the request holds (a form that could not show its values
    sends none)."""
    return {name: form[name] for name in names if name in form}
