"""RuleVersions (admin/rule_versions.py) on a real SQLite database, and the engine switch over its
DatabaseRuleSource (engine/reload.py): validation at line and field, drafts, version numbers, diff,
deploy / rollback, start-up seeding, file mode, a database that stops answering."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cds_service.admin.rule_versions import (
    DatabaseRuleSource, NothingToRollBack, RuleSetInvalid, RulesReadOnly, RuleVersions, UnknownVersion,
    VersionConflict, bundled_ruleset_text, next_version,
)
from cds_service.engine.reload import EngineSwitch, FileRuleSource, RuleSourceUnavailable
from cds_service.ruleset.loader import RuleSet, load_default_ruleset
from cds_service.storage.admin_store import AdminStore
from cds_service.storage.store import CardStore

BUNDLED = bundled_ruleset_text()
BUNDLED_VERSION = load_default_ruleset().version


def variant(version: str, threshold: str = "3") -> str:
    """The bundled rule set under another version number, with another venous-index threshold."""
    text = BUNDLED.replace(f'version: "{BUNDLED_VERSION}"', f'version: "{version}"', 1)
    head, _, tail = text.partition("\nvenous_index:")
    assert tail.split("\n")[1] == "  threshold: 3"
    return head + "\nvenous_index:" + tail.replace("  threshold: 3", f"  threshold: {threshold}", 1)


@pytest.fixture
def card_store(tmp_path):
    store = CardStore(f"sqlite:///{tmp_path / 'rules.sqlite3'}", "x" * 32)
    yield store
    store.close()


@pytest.fixture
def versions(card_store) -> RuleVersions:
    versions = RuleVersions(AdminStore(card_store.engine))
    assert versions.start_from(BUNDLED, "bundled").action == "seeded"
    return versions


# ---------------------------------------------------------------- numbers and diff

@pytest.mark.parametrize("after, expected", [
    ("2026.12.1", "2026.12.2"), ("2026.12", "2026.12.1"), ("7", "7.1"), ("2026.12.9", "2026.12.10"),
    ("2026.12.1-rc", "2026.12.1-rc.1"), ("1.2.3.4", "1.2.3.5"),
])
def test_next_version(after, expected) -> None:
    assert next_version(after) == expected


def test_next_version_skips_numbers_the_database_holds(versions) -> None:
    versions.save_draft(variant("2026.12.2"), "alice")
    assert versions.next_version() == "2026.12.3"
    assert versions.next_version("2026.12.2") == "2026.12.3"


def test_text_diff_shows_the_changed_threshold(versions) -> None:
    versions.save_draft(variant("2026.12.2", "2"), "alice")
    diff = versions.text_diff(BUNDLED_VERSION, "2026.12.2")
    assert diff[:2] == [f"--- version {BUNDLED_VERSION}", "+++ version 2026.12.2"]
    assert "-  threshold: 3" in diff and "+  threshold: 2" in diff
    assert f'-version: "{BUNDLED_VERSION}"' in diff


# ---------------------------------------------------------------- validate and drafts

def test_validate_reports_each_problem_at_its_line_and_field(versions) -> None:
    bad = variant("2026.12.2").replace("    statin: 0.5", "    statin: -1")
    [problem] = versions.validate(bad)
    assert problem.field == "contributors.points.statin" and "negative" in problem.message
    assert bad.splitlines()[problem.line - 1].strip() == "statin: -1"
    assert versions.validate(variant("2026.12.2")) == []


def test_invalid_yaml_is_refused_with_its_line(versions) -> None:
    broken = variant("2026.12.2").replace("title:", "title: [unclosed", 1)
    with pytest.raises(RuleSetInvalid) as caught:
        versions.save_draft(broken, "alice")
    [problem] = caught.value.problems
    assert problem.line is not None and "not valid YAML" in problem.message
    assert versions.get_version("2026.12.2") is None


def test_save_draft_takes_the_yaml_version_and_refuses_a_deployed_number_for_other_content(versions) -> None:
    saved = versions.save_draft(variant("2026.12.2", "2"), "alice")
    assert (saved.version, saved.status, saved.created_by) == ("2026.12.2", "draft", "alice")
    with pytest.raises(VersionConflict) as caught:
        versions.save_draft(variant(BUNDLED_VERSION, "2"), "alice")
    message = str(caught.value)
    assert f"version {BUNDLED_VERSION} is already used" in message
    assert "The next free number is 2026.12.3." in message


def test_deploy_and_rollback_audit_and_notify_this_process(versions) -> None:
    notified: list[str] = []
    versions.on_change(lambda: notified.append("changed"))
    versions.save_draft(variant("2026.12.2", "2"), "alice")
    assert versions.rollback_target() is None
    state = versions.deploy("2026.12.2", "dora")
    assert state.version == "2026.12.2"
    record, ruleset = versions.active()
    assert record.version == "2026.12.2" and ruleset.spec.venous_index.threshold == 2
    assert versions.rollback_target().version == BUNDLED_VERSION
    assert versions.rollback("dora").version == BUNDLED_VERSION
    with pytest.raises(NothingToRollBack):
        versions.rollback("dora")
    assert notified == ["changed", "changed"]
    audit = versions.store.audit_log()
    assert [(e.actor, e.action) for e in audit] == [
        ("dora", "rollback"), ("dora", "deploy"), ("alice", "draft-saved"), ("system", "seed")]
    assert audit[1].detail["previous"] == BUNDLED_VERSION


def test_deploy_refuses_an_unknown_version_and_content_this_release_does_not_accept(versions) -> None:
    with pytest.raises(UnknownVersion, match="no rule-set version 9.9.9"):
        versions.deploy("9.9.9", "dora")
    versions.store.save_draft("2026.12.5", "version: '2026.12.5'\n", "old-release")  # stored without validation
    with pytest.raises(RuleSetInvalid, match="version 2026.12.5 is invalid"):
        versions.deploy("2026.12.5", "dora")
    assert versions.deployment_state().version == BUNDLED_VERSION


# ---------------------------------------------------------------- start-up

def test_start_offers_a_new_file_version_as_a_draft_and_never_deploys_it(versions) -> None:
    outcome = versions.start_from(variant("2027.1.1"), "ruleset.yaml")
    assert (outcome.action, outcome.version) == ("offered", "2027.1.1")
    assert versions.get_version("2027.1.1").status == "draft"
    assert versions.active()[0].version == BUNDLED_VERSION
    assert versions.start_from(variant("2027.1.1"), "ruleset.yaml").action == "present"
    conflict = versions.start_from(variant("2027.1.1", "4"), "ruleset.yaml")
    assert conflict.action == "conflict" and "new version number" in conflict.message


def test_start_with_an_invalid_file_serves_the_database_but_refuses_an_empty_one(versions, tmp_path) -> None:
    invalid = variant("2027.1.1").replace("    statin: 0.5", "    statin: -1")
    assert versions.start_from(invalid, "ruleset.yaml").action == "invalid"
    empty = RuleVersions(AdminStore(CardStore(f"sqlite:///{tmp_path / 'empty.sqlite3'}", "x" * 32).engine))
    with pytest.raises(RuleSetInvalid, match="contributors.points.statin"):
        empty.start_from(invalid, "ruleset.yaml")


def test_file_mode_is_read_only_and_shows_the_file(card_store, tmp_path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BUNDLED)
    versions = RuleVersions.file_mode(AdminStore(card_store.engine), path, load_default_ruleset,
                                      read=path.read_text)
    assert versions.read_only and str(path) in versions.read_only_reason
    record, ruleset = versions.active()
    assert (record.version, record.status, record.content) == (BUNDLED_VERSION, "active", BUNDLED)
    for change in (lambda: versions.save_draft(variant("2027.1.1"), "a"), lambda: versions.deploy("x", "a"),
                   lambda: versions.rollback("a")):
        with pytest.raises(RulesReadOnly, match="CRAMP_RULES_SOURCE=file"):
            change()


# ---------------------------------------------------------------- the engine switch over a rule source

class FakeEngine:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_switch_follows_deploys_at_its_poll_and_rollback(versions) -> None:
    clock = Clock()
    switch = EngineSwitch(DatabaseRuleSource(versions), FakeEngine(versions.active()[1]), FakeEngine,
                          check_every=2.0, monotonic=clock)
    versions.save_draft(variant("2026.12.2", "2"), "alice")
    versions.deploy("2026.12.2", "dora")
    assert switch.current().ruleset.version == BUNDLED_VERSION  # not polled yet: at most every 2 s
    clock.now = 2.0
    assert switch.current().ruleset.version == "2026.12.2"
    versions.rollback("dora")
    switch.check_now()
    assert switch.current().ruleset.version == BUNDLED_VERSION


def test_switch_keeps_serving_when_the_database_stops_answering_and_warns_once(versions, card_store, tmp_path,
                                                                              caplog) -> None:
    clock = Clock()
    switch = EngineSwitch(DatabaseRuleSource(versions), FakeEngine(versions.active()[1]), FakeEngine,
                          check_every=2.0, monotonic=clock)
    database = tmp_path / "rules.sqlite3"
    card_store.engine.dispose()
    database.rename(tmp_path / "moved.sqlite3")
    database.mkdir()  # every new connection fails
    with caplog.at_level(logging.WARNING, logger="cds_service.engine.reload"):
        for step in range(1, 4):
            clock.now = 11.0 * step  # past the retry delay of a source that did not answer
            assert switch.current().ruleset.version == BUNDLED_VERSION
    warnings = [r.getMessage() for r in caplog.records if r.name == "cds_service.engine.reload"]
    assert len(warnings) == 1 and "rule source not checked (database)" in warnings[0]
    assert "serving version " + BUNDLED_VERSION in warnings[0]


def test_switch_keeps_the_last_valid_version_when_the_deployed_one_is_invalid(versions, caplog) -> None:
    switch = EngineSwitch(DatabaseRuleSource(versions), FakeEngine(versions.active()[1]), FakeEngine,
                          check_every=0.0)
    versions.store.save_draft("2026.12.5", "version: '2026.12.5'\n", "old-release")
    versions.store.deploy("2026.12.5", "someone")  # bypassing RuleVersions' validation
    with caplog.at_level(logging.WARNING, logger="cds_service.engine.reload"):
        assert switch.current().ruleset.version == BUNDLED_VERSION
        assert switch.current().ruleset.version == BUNDLED_VERSION
    warnings = [r.getMessage() for r in caplog.records if r.name == "cds_service.engine.reload"]
    assert len(warnings) == 1 and "database version 2026.12.5 is invalid" in warnings[0]


class UnavailableSource:
    def __init__(self) -> None:
        self.asked = 0

    def state(self):
        self.asked += 1
        raise RuleSourceUnavailable("down")

    def load(self):
        raise AssertionError("never loaded while the state cannot be read")

    def describe(self) -> str:
        return "test source"


def test_a_source_that_does_not_answer_is_asked_again_only_after_the_retry_delay() -> None:
    ruleset = load_default_ruleset()
    source, clock = UnavailableSource(), Clock()
    switch = EngineSwitch(source, FakeEngine(ruleset), FakeEngine, check_every=2.0, monotonic=clock)
    for now in (2.0, 4.0, 6.0, 11.9):
        clock.now = now
        assert switch.current().ruleset is ruleset
    assert source.asked == 2  # at start and at 2 s; not again before 2 + UNAVAILABLE_RETRY_SECONDS
    clock.now = 12.0
    switch.current()
    assert source.asked == 3


def test_file_source_state_is_mtime_and_size(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    source = FileRuleSource(path)
    assert source.state() is None and source.describe() == str(path)
    path.write_text(BUNDLED)
    assert source.state()[1] == len(BUNDLED.encode()) and source.load().version == BUNDLED_VERSION


# ---------------------------------------------------------------- the CLI says the same

def test_cli_publish_deploy_rollback_and_versions(tmp_path, versions, card_store) -> None:
    from click.testing import CliRunner

    from cds_service.cli.main import CliContext, main

    url = str(card_store.engine.url)
    runner = CliRunner()

    def run(*args: str, env: dict | None = None):
        return runner.invoke(main, ["rules", *args], obj=CliContext(env={"USER": "x", **(env or {})}))

    bad = tmp_path / "bad.yaml"
    bad.write_text(variant("2026.12.2").replace("    statin: 0.5", "    statin: -1"))
    result = run("publish", str(bad), "--database-url", url)
    assert result.exit_code == 1
    assert f"{bad}:" in result.output and ": contributors.points.statin: negative points" in result.output
    taken = tmp_path / "taken.yaml"
    taken.write_text(variant(BUNDLED_VERSION, "2"))
    result = run("publish", str(taken), "--database-url", url)
    assert result.exit_code == 1 and "The next free number is 2026.12.2." in result.output
    good = tmp_path / "good.yaml"
    good.write_text(variant("2026.12.2", "2"))
    result = run("publish", str(good), "--database-url", url, "--actor", "alice")
    assert result.exit_code == 0 and "Saved draft 2026.12.2 (not deployed)." in result.output
    result = run("deploy", "2026.12.2", "--database-url", url, "--actor", "dora")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Deployed version 2026.12.2 (was {BUNDLED_VERSION}): every replica switches")
    assert run("deploy", "9.9", "--database-url", url).exit_code == 2
    listing = run("versions", "--database-url", url).output
    assert "* 2026.12.2" in listing and "Active: 2026.12.2 (deployment 2)" in listing
    result = run("rollback", "--database-url", url, "--actor", "dora")
    assert result.exit_code == 0 and f"Rolled back from version 2026.12.2 to {BUNDLED_VERSION}" in result.output
    assert run("rollback", "--database-url", url).exit_code == 1
    result = run("deploy", "2026.12.2", "--database-url", url, env={"CRAMP_RULES_SOURCE": "file"})
    assert result.exit_code == 2 and "CRAMP_RULES_SOURCE=file" in result.output
    assert [e.actor for e in versions.store.audit_log()][:3] == ["dora", "dora", "alice"]
    assert run("versions", "--database-url", f"sqlite:///{tmp_path / 'none.sqlite3'}").exit_code == 2


# ---------------------------------------------------------------- the app's wiring (web/app.py)

def _app(tmp_path, caplog, **settings):
    from cds_service.settings import Settings
    from cds_service.web.app import create_app

    class Lines(logging.Handler):  # on the logger itself: create_app replaces the root's handlers
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("rules"):
                self.lines.append(record.getMessage())

    logger, handler = logging.getLogger("cds_service.web.app"), Lines()
    logger.addHandler(handler)
    try:
        app = create_app(Settings(development_mode=True, database_url=f"sqlite:///{tmp_path / 'app.sqlite3'}",
                                  **settings))
    finally:
        logger.removeHandler(handler)
    return app, handler.lines


def test_database_mode_seeds_once_offers_a_new_file_version_and_says_which_is_served(tmp_path, caplog) -> None:
    app, lines = _app(tmp_path, caplog)
    assert lines == [f"rules: database, version {BUNDLED_VERSION} (1 version; seeded the database with version "
                     f"{BUNDLED_VERSION} from cds_service/data/ruleset.yaml)"]
    assert isinstance(app.extensions["leg_cramp_admin_store"], AdminStore)
    assert app.extensions["leg_cramp_rule_versions"].read_only is False
    newer = tmp_path / "newer.yaml"
    newer.write_text(variant("2027.1.1", "2"))
    app, lines = _app(tmp_path, caplog, rules_path=newer)
    assert lines[0] == f"rules: version 2027.1.1 from {newer} added as a draft (not deployed)"
    assert lines[1] == f"rules: database, version {BUNDLED_VERSION} (2 versions)"
    assert "is not the version served" in lines[2] and "cramp-cds rules deploy 2027.1.1" in lines[2]
    assert app.extensions["leg_cramp_engine"].ruleset.version == BUNDLED_VERSION
    versions = app.extensions["leg_cramp_rule_versions"]
    versions.deploy("2027.1.1", "dora")
    client = app.test_client()
    client.get("/healthz")  # the deploying process switches at its next request
    assert app.extensions["leg_cramp_engine"].ruleset.version == "2027.1.1"
    _, lines = _app(tmp_path, caplog)  # a restart serves the deployed version, not the bundled one
    assert lines == ["rules: database, version 2027.1.1 (2 versions)"]


def test_file_mode_serves_the_file_read_only(tmp_path, caplog) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(variant("2027.1.1", "2"))
    app, lines = _app(tmp_path, caplog, rules_path=path, rules_source="file")
    assert lines == [f"rules: file {path}, version 2027.1.1 (reloaded when it changes)"]
    versions = app.extensions["leg_cramp_rule_versions"]
    assert versions.read_only and str(path) in versions.read_only_reason
    assert versions.active()[0].version == "2027.1.1"
    assert versions.store.list_versions() == []  # nothing seeded: the file is authoritative


def test_an_engine_given_to_create_app_is_served_as_it_is(tmp_path, caplog) -> None:
    from cds_service.settings import Settings
    from cds_service.web.app import create_app
    from support.app import make_app

    engine = make_app().extensions["leg_cramp_engine"]
    app = create_app(Settings(development_mode=True, database_url=f"sqlite:///{tmp_path / 'e.sqlite3'}"),
                     engine=engine)
    assert app.extensions["leg_cramp_engine"] is engine and "leg_cramp_engines" not in app.extensions
    assert app.extensions["leg_cramp_rule_versions"].active()[0].version == BUNDLED_VERSION


def test_a_deployed_version_this_release_refuses_stops_the_start_naming_it(tmp_path, caplog) -> None:
    from cds_service.ruleset.loader import RuleSetError

    app, _ = _app(tmp_path, caplog)
    store = app.extensions["leg_cramp_admin_store"]
    store.save_draft("2026.12.5", "version: '2026.12.5'\n", "old-release")
    store.deploy("2026.12.5", "someone")  # bypassing RuleVersions' validation
    with pytest.raises(RuleSetError) as refused:
        _app(tmp_path, caplog)
    message = str(refused.value)
    assert message.startswith("version 2026.12.5 (deploy a valid one: cramp-cds rules deploy VERSION")
    assert "title: required key is missing" in message
