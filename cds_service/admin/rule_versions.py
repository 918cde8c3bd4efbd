"""Rule-set versions: the one way the console and the CLI change the rules (docs/rule-versions.md).

``RuleVersions`` validates (the validator of ``cramp-cds rules validate``), saves drafts, deploys and rolls
back through the ``AdminStore``; every change is audited in the store's own transaction. Every replica
polls the deployment sequence (``DatabaseRuleSource``, through ``engine/reload.EngineSwitch``) and switches
to the deployed version within ``RULES_CHECK_SECONDS`` (2 s) of its next request.

In file mode (``CRAMP_RULES_SOURCE=file``) the file is authoritative: ``read_only`` is True, every change
raises ``RulesReadOnly`` with the reason, and ``active()`` is the file's rule set.

At start-up in database mode, ``start_from(text, source)`` seeds an empty database with the configured or
bundled rule set (active, audited as "system"), or offers a file version the database lacks as a draft
(an upgrade's new bundled rules are proposed, never silently deployed).
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable

from cds_service.engine.reload import RuleSourceUnavailable
from cds_service.ruleset.loader import RuleSet, RuleSetError, parse_ruleset
from cds_service.storage.admin_store import (
    SYSTEM_ACTOR, AdminStore, AdminStoreError, AdminStoreUnavailable, Deployment, DeploymentState, DraftSaved,
    NothingToRollBack, RuleSetVersion, UnknownVersion, VersionConflict, content_sha256,
)

log = logging.getLogger(__name__)

__all__ = [
    "AdminStoreError", "AdminStoreUnavailable", "DatabaseRuleSource", "NothingToRollBack", "Problem",
    "OpenedRules", "RuleSetInvalid", "RuleVersions", "RulesReadOnly", "StartOutcome", "UnknownVersion",
    "VersionConflict",
    "bundled_ruleset_text", "deployed_message", "draft_saved_message", "file_mode_reason", "next_version",
    "rolled_back_message", "unified_diff",
]

BUNDLED_SOURCE = "cds_service/data/ruleset.yaml"
PARSED_CACHE_SIZE = 16  # rule sets kept parsed (by content hash): deploy / rollback back and forth is instant


@dataclass(frozen=True)
class Problem:
    """One validation problem: the YAML line (None when unknown), the field path, the message."""

    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        return f"{f'line {self.line}: ' if self.line else ''}{self.field}: {self.message}"


class RuleSetInvalid(AdminStoreError):
    """The content is not a valid rule set; ``problems`` lists each at its line and field."""

    def __init__(self, problems: list[Problem], what: str = "the rule set") -> None:
        self.problems = problems
        self.what = what
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        listed = "; ".join(str(p) for p in problems[:5]) + more
        super().__init__(f"{what} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}): {listed}")


class RulesReadOnly(AdminStoreError):
    """File mode: the rules are changed in the file, not here."""


def bundled_ruleset_text() -> str:
    """The rule set shipped in the package, as text (what ``load_default_ruleset`` parses)."""
    return resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


def problems_of(error: RuleSetError) -> list[Problem]:
    return [Problem(line, field, message) for line, field, message in error.located]


# ---------------------------------------------------------------- version numbers

_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def next_version(after: str, taken: Callable[[str], bool] = lambda v: False) -> str:
    """The number after ``after`` that ``taken`` does not hold: ``2026.12.1`` -> ``2026.12.2``; a version of
    one or two parts gets a new part (``2026.12`` -> ``2026.12.1``); anything else ``.1`` appended."""
    after = after.strip()
    parts = after.split(".")
    match = _TRAILING_NUMBER.match(after)
    if len(parts) >= 3 and match:
        stem, number = match.group(1), int(match.group(2))
    else:
        stem, number = f"{after}.", 0
    while True:
        number += 1
        candidate = f"{stem}{number}"
        if not taken(candidate):
            return candidate


def unified_diff(old: str, new: str, old_label: str, new_label: str, context: int = 3) -> list[str]:
    """Unified diff lines (no trailing newlines) of two YAML texts."""
    return list(difflib.unified_diff(old.splitlines(), new.splitlines(), fromfile=old_label, tofile=new_label,
                                     n=context, lineterm=""))


def file_mode_reason(path: Path | None) -> str:
    """Why the rules cannot be changed here in file mode (the console and the CLI say the same)."""
    where = f"the file {path}" if path else f"the bundled rule set ({BUNDLED_SOURCE})"
    return (f"The rules come from {where} (CRAMP_RULES_SOURCE=file): change them there; "
            "set CRAMP_RULES_SOURCE=database to edit and deploy them here.")


# What a change says to the person who made it: the console's flash messages and the CLI's lines.
SWITCH_NOTE = "every replica switches to it within 2 s of its next request"


def draft_saved_message(version: RuleSetVersion, changed: bool = True) -> str:
    if version.status != "draft":
        return f"Version {version.version} is {version.status} with this content already: nothing saved."
    if not changed:
        return f"Draft {version.version} is unchanged (the same content was saved before)."
    return f"Saved draft {version.version} (not deployed)."


def deployed_message(state: DeploymentState, previous: str | None) -> str:
    was = f" (was {previous})" if previous and previous != state.version else ""
    return f"Deployed version {state.version}{was}: {SWITCH_NOTE}."


def rolled_back_message(state: DeploymentState, previous: str | None) -> str:
    return f"Rolled back from version {previous} to {state.version}: {SWITCH_NOTE}."


@dataclass(frozen=True)
class StartOutcome:
    """What ``start_from`` did, for the start-up log."""

    action: str  # seeded | offered | present | conflict | invalid
    version: str | None
    message: str


@dataclass(frozen=True)
class OpenedRules:
    """What the service serves at start in database mode (``RuleVersions.open``)."""

    state: DeploymentState  # the deployment the rule set was read at
    ruleset: RuleSet
    versions: int  # how many versions the database holds
    outcome: StartOutcome

    def summary(self) -> str:
        """The start-up line: ``database, version X (N versions[; seeded ...])``."""
        seeded = f"; {self.outcome.message}" if self.outcome.action == "seeded" else ""
        plural = "" if self.versions == 1 else "s"
        return f"database, version {self.ruleset.version} ({self.versions} version{plural}{seeded})"

    def unserved_file_version(self) -> str | None:
        """The version of the start-up file when it is not the one served (None: it is, or it is invalid)."""
        version = self.outcome.version
        return version if version and version != self.ruleset.version else None


# ---------------------------------------------------------------- the versions

class RuleVersions:
    """See the module docstring. ``base_dir``: where ``value_sets.*.file`` paths are looked up first (the
    configured rules file's folder); the package's data folder is always searched."""

    def __init__(self, store: AdminStore, *, base_dir: Path | None = None, read_only_reason: str | None = None,
                 file_rules: Callable[[], tuple[str, RuleSet]] | None = None) -> None:
        self.store = store
        self.base_dir = base_dir
        self.read_only_reason = read_only_reason
        self._file_rules = file_rules  # file mode: () -> (text, RuleSet) of the file now
        self._parsed: OrderedDict[str, RuleSet] = OrderedDict()
        self._parsed_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def file_mode(cls, store: AdminStore, path: Path | None, current: Callable[[], RuleSet], *,
                  read: Callable[[], str]) -> "RuleVersions":
        """Read-only versions over a rules file (``path``; None: the bundled file). ``current`` is the rule
        set the service serves now, ``read`` the file's text."""
        return cls(store, base_dir=path.parent if path else None, read_only_reason=file_mode_reason(path),
                   file_rules=lambda: (read(), current()))

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each deploy or rollback made through this object (this process's
        engine switch checks at once instead of at its next poll)."""
        self._listeners.append(listener)

    # --- reading ---------------------------------------------------------------------------------
    def active(self) -> tuple[RuleSetVersion, RuleSet]:
        """The version served (file mode: the file), with its parsed rule set. ``UnknownVersion`` when the
        database holds none (it is seeded at start)."""
        if self._file_rules is not None:
            text, ruleset = self._file_rules()
            return _file_version(text, ruleset), ruleset
        version = self.store.active_version()
        if version is None:
            raise UnknownVersion("no rule-set version is deployed yet")
        return version, self.ruleset_of(version)

    def active_record(self) -> RuleSetVersion:
        """The version served, without parsing it: pages that list or diff versions still work when the
        deployed content no longer passes this release's validator (``active`` raises ``RuleSetInvalid``)."""
        if self._file_rules is not None:
            return self.active()[0]
        version = self.store.active_version()
        if version is None:
            raise UnknownVersion("no rule-set version is deployed yet")
        return version

    def ruleset_of(self, version: str | RuleSetVersion) -> RuleSet:
        """The parsed rule set of a stored version (``UnknownVersion``; ``RuleSetInvalid`` when its content
        does not pass the validator of this release)."""
        record = version if isinstance(version, RuleSetVersion) else self._get(version)
        return self._parse(record.content, f"version {record.version}", record.content_sha256)

    def list_versions(self) -> list[RuleSetVersion]:
        return self.store.list_versions()

    def get_version(self, version: str) -> RuleSetVersion | None:
        return self.store.get_version(version)

    def deployment_state(self) -> DeploymentState:
        return self.store.deployment_state()

    def deployments(self, limit: int = 50) -> list[Deployment]:
        return self.store.deployments(limit)

    def rollback_target(self) -> RuleSetVersion | None:
        """The version a rollback would return to (None: there is none)."""
        target = self.store.rollback_target()
        return self.store.get_version(target.version) if target else None

    def next_version(self, after: str | None = None) -> str:
        """The proposed number of a new draft: after ``after`` (default: the active version), skipping
        every number the database holds."""
        if after is None:
            after = self.active()[0].version
        known = {v.version for v in self.store.list_versions()}
        return next_version(after, known.__contains__)

    def validate(self, content: str) -> list[Problem]:
        """Every problem of ``content`` (empty: valid), from the validator of ``cramp-cds rules validate``."""
        try:
            self._parse(content, "draft", content_sha256(content))
        except RuleSetInvalid as error:
            return error.problems
        return []

    def text_diff(self, a: str, b: str) -> list[str]:
        """Unified diff of version ``a``'s content against version ``b``'s (``UnknownVersion``)."""
        old, new = self._get(a), self._get(b)
        return unified_diff(old.content, new.content, f"version {old.version}", f"version {new.version}")

    # --- changing --------------------------------------------------------------------------------
    def save_draft(self, content: str, actor: str) -> RuleSetVersion:
        """Validate ``content`` and save it as a draft under its own ``version:`` (audited); the version
        stored (a draft; the active or a retired one when that number holds this very content already).

        ``RuleSetInvalid`` (problems at their lines), ``VersionConflict`` (the number was deployed with other
        content; the message proposes the next free one), ``RulesReadOnly`` in file mode.
        """
        return self.save_draft_result(content, actor).version

    def save_draft_result(self, content: str, actor: str) -> DraftSaved:
        """``save_draft``, saying also whether the draft is new and whether anything changed."""
        self._writable()
        ruleset = self._parse(content, "draft", content_sha256(content))
        try:
            return self.store.save_draft(ruleset.version, content, actor)
        except VersionConflict as error:
            raise VersionConflict(f"{error} The next free number is {self.next_version(ruleset.version)}.") from None

    def deploy(self, version: str, actor: str) -> DeploymentState:
        """Make ``version`` active on every replica (audited). Its content is validated again first: a
        draft saved by an older release may not pass this one (``RuleSetInvalid``)."""
        self._writable()
        record = self._get(version)
        self.ruleset_of(record)
        previous = self.store.deployment_state().version
        state = self.store.deploy(version, actor, detail={"content_sha256": record.content_sha256,
                                                          "previous": previous})
        log.info("rule set deployed: version %s (was %s) by %s, sequence %d", version, previous, actor,
                 state.sequence)
        self._changed()
        return state

    def rollback(self, actor: str) -> DeploymentState:
        """Return every replica to the version active before the current one was deployed (audited).
        ``NothingToRollBack`` at the first version."""
        self._writable()
        target = self.rollback_target()
        if target is not None:
            self.ruleset_of(target)  # refused before anything changes when it no longer validates
        previous = self.store.deployment_state().version
        state = self.store.rollback(actor)
        log.info("rule set rolled back: version %s -> %s by %s, sequence %d", previous, state.version, actor,
                 state.sequence)
        self._changed()
        return state

    def start_from(self, content: str, source: str) -> StartOutcome:
        """At start-up: seed an empty database with ``content`` (active, actor "system"), or add its version
        as a draft when the database lacks it. The content must be valid (``RuleSetInvalid``) only when it
        seeds; otherwise an invalid file is reported and the database's active version is served."""
        try:
            ruleset = self._parse(content, source, content_sha256(content))
        except RuleSetInvalid as error:
            if self.store.deployment_state().version is None:
                raise
            return StartOutcome("invalid", None, f"{source} is invalid and was not offered: {error}")
        version = ruleset.version
        if self.store.seed(version, content, SYSTEM_ACTOR, summary=f"seeded version {version} from {source}"):
            return StartOutcome("seeded", version, f"seeded the database with version {version} from {source}")
        existing = self.store.get_version(version)
        if existing is None:
            self.store.offer_version(version, content, SYSTEM_ACTOR,
                                     summary=f"offered version {version} from {source} as a draft (not deployed)")
            return StartOutcome("offered", version, f"version {version} from {source} added as a draft (not deployed)")
        if existing.content_sha256 != content_sha256(content):
            return StartOutcome("conflict", version, f"version {version} of {source} differs from the database's "
                                "version of that number: not offered (give the file a new version number)")
        return StartOutcome("present", version, f"version {version} of {source} is in the database ({existing.status})")

    def open(self, content: str, source: str) -> "OpenedRules":
        """At start-up in database mode: ``start_from(content, source)``, then the deployed version to serve.
        ``RuleSetInvalid`` when nothing valid can be served (an empty database and an invalid file, or a
        deployed version this release refuses: ``what`` names it), ``AdminStoreUnavailable``."""
        outcome = self.start_from(content, source)
        state = self.deployment_state()
        _, ruleset = self.active()
        return OpenedRules(state, ruleset, len(self.list_versions()), outcome)

    # --- internals -------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only_reason is not None:
            raise RulesReadOnly(self.read_only_reason)

    def _get(self, version: str) -> RuleSetVersion:
        record = self.store.get_version(version)
        if record is None:
            raise UnknownVersion(f"no rule-set version {version}")
        return record

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def _parse(self, content: str, source: str, digest: str) -> RuleSet:
        with self._parsed_lock:
            cached = self._parsed.get(digest)
            if cached is not None:
                self._parsed.move_to_end(digest)
                return cached
        try:
            ruleset = parse_ruleset(content, source, base_dir=self.base_dir)
        except RuleSetError as error:
            raise RuleSetInvalid(problems_of(error), source) from None
        with self._parsed_lock:
            self._parsed[digest] = ruleset
            while len(self._parsed) > PARSED_CACHE_SIZE:
                self._parsed.popitem(last=False)
        return ruleset


def _file_version(text: str, ruleset: RuleSet) -> RuleSetVersion:
    """File mode: the file as a version record (never stored)."""
    epoch = datetime.fromtimestamp(0, timezone.utc)
    return RuleSetVersion(version=ruleset.version, content=text, content_sha256=content_sha256(text),
                          status="active", created_by="file", created_at=epoch, updated_at=epoch,
                          deployed_by=None, deployed_at=None)


# ---------------------------------------------------------------- the engine's source in database mode

class DatabaseRuleSource:
    """``engine/reload.RuleSource`` over the deployed version: the state is (sequence, version), one
    primary-key read; a database that does not answer is ``RuleSourceUnavailable`` (the engine stays)."""

    def __init__(self, versions: RuleVersions) -> None:
        self.versions = versions

    def state(self) -> DeploymentState:
        try:
            return self.versions.deployment_state()
        except AdminStoreUnavailable as error:
            raise RuleSourceUnavailable(str(error)) from None

    def load(self) -> RuleSet:
        try:
            record, ruleset = self.versions.active()
        except AdminStoreUnavailable as error:
            raise RuleSourceUnavailable(str(error)) from None
        except UnknownVersion as error:
            raise RuleSourceUnavailable(str(error)) from None
        except RuleSetInvalid as error:
            raise RuleSetError(f"database {error.what}", [(p.field, p.message) for p in error.problems],
                               [p.line for p in error.problems]) from None
        return ruleset

    def describe(self) -> str:
        return "database"
