"""Rule-set deploys reach every replica without downtime (docs/rule-versions.md), on PostgreSQL
(127.0.0.1:5432; skipped when it does not answer unless CRAMP_REQUIRE_POSTGRES=1).

Two apps sharing one database, and two real `cramp-cds serve` processes (two gunicorn workers each): a
draft with a lowered threshold deployed through RuleVersions (or the CLI) is answered by every one of
them within a bounded poll; a rollback brings the old version back; two deploys at once end with one
consistent active version. No wall-clock assertion: polls only bound the wait (hang guards).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner
from support.feedback import SECRET, ServerProcess, fresh_postgres_database, hook_request, postgres_url

from cds_service.admin.rule_versions import RuleSetInvalid, RuleVersions, VersionConflict, bundled_ruleset_text
from cds_service.cli.main import CliContext, main
from cds_service.ruleset.loader import load_default_ruleset
from cds_service.settings import Settings
from cds_service.storage.admin_store import AdminStore
from cds_service.storage.store import CardStore
from cds_service.web.app import create_app

pytestmark = pytest.mark.postgres

SERVICE = "/cds-services/leg-cramp-patient-view"
OLD = load_default_ruleset().version
NEW = "2026.12.2"
POLL_SECONDS = 15.0  # a hang guard: replicas poll the deployment every 2 s


def lowered(version: str = NEW, threshold: int = 2) -> str:
    """The bundled rule set with the contributors' threshold lowered (3 -> 2) under another version."""
    text = bundled_ruleset_text().replace(f'version: "{OLD}"', f'version: "{version}"', 1)
    head, _, tail = text.partition("\ncontributors:")
    assert "\n  threshold: 3\n" in tail.split("\n\n")[0] + "\n"
    return head + "\ncontributors:" + tail.replace("  threshold: 3", f"  threshold: {threshold}", 1)


# fixture 02 scores 2 on the contributors: no card at threshold 3, elevated-cramp-risk at 2
BELOW_THRESHOLD = hook_request("02")
OLD_ANSWER: list[tuple[str, str]] = []
NEW_ANSWER = [("elevated-cramp-risk", NEW)]


def rules_of(cards: list[dict]) -> list[tuple[str, str]]:
    return [(e["rule"], e["ruleSetVersion"]) for e in (c["extension"]["org.leg-cramp-cds.explanation"] for c in cards)]


def wait_for(answer: Callable[[], object], expected: object, *, times: int = 1) -> object:
    """Ask until ``expected`` comes ``times`` times in a row, or POLL_SECONDS pass; the last answer."""
    deadline = time.monotonic() + POLL_SECONDS
    streak, last = 0, None
    while time.monotonic() < deadline:
        last = answer()
        streak = streak + 1 if last == expected else 0
        if streak >= times:
            return last
        time.sleep(0.05 if streak else 0.2)
    return last


@pytest.fixture
def database_url(monkeypatch) -> Iterator[str]:
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        yield postgres_url(host, port, name)


def app_on(database_url: str):
    return create_app(Settings(development_mode=True, database_url=database_url, patient_key_secret=SECRET))


def answer_of(app) -> Callable[[], list[tuple[str, str]]]:
    client = app.test_client()

    def answer() -> list[tuple[str, str]]:
        response = client.post(SERVICE, json=BELOW_THRESHOLD)
        assert response.status_code == 200, response.get_json()
        return rules_of(response.get_json()["cards"])

    return answer


def test_two_apps_switch_to_a_deployed_draft_and_back_on_rollback(database_url) -> None:
    first, second = app_on(database_url), app_on(database_url)
    versions: RuleVersions = first.extensions["leg_cramp_rule_versions"]
    assert versions.deployment_state() == (1, OLD)  # seeded once, by the first app
    assert answer_of(first)() == OLD_ANSWER and answer_of(second)() == OLD_ANSWER

    versions.save_draft(lowered(), "alice")
    assert answer_of(second)() == OLD_ANSWER  # a draft changes nothing
    versions.deploy(NEW, "dora")
    assert answer_of(first)() == NEW_ANSWER  # the deploying process checks at its next request
    assert wait_for(answer_of(second), NEW_ANSWER) == NEW_ANSWER  # the other at its next poll

    second.extensions["leg_cramp_rule_versions"].rollback("dora")
    assert wait_for(answer_of(first), OLD_ANSWER) == OLD_ANSWER
    assert answer_of(second)() == OLD_ANSWER
    actions = [(e.actor, e.action, e.to_version) for e in versions.store.audit_log()]
    assert actions[:3] == [("dora", "rollback", OLD), ("dora", "deploy", NEW), ("alice", "draft-saved", NEW)]


def test_concurrent_deploys_from_two_apps_end_with_one_consistent_active_version(database_url) -> None:
    first, second = app_on(database_url), app_on(database_url)
    one, other = first.extensions["leg_cramp_rule_versions"], second.extensions["leg_cramp_rule_versions"]
    one.save_draft(lowered("2026.12.2"), "alice")
    one.save_draft(lowered("2026.12.3"), "alice")
    barrier = threading.Barrier(2, timeout=10)
    errors: list[Exception] = []

    def deploy(versions: RuleVersions, version: str) -> None:
        barrier.wait()
        try:
            versions.deploy(version, "dora")
        except Exception as error:  # noqa: BLE001 (asserted below: none expected)
            errors.append(error)

    threads = [threading.Thread(target=deploy, args=(one, "2026.12.2")),
               threading.Thread(target=deploy, args=(other, "2026.12.3"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    sequence, active = one.deployment_state()
    assert sequence == 3 and active in ("2026.12.2", "2026.12.3")
    statuses = {v.version: v.status for v in one.list_versions()}
    assert [v for v, s in statuses.items() if s == "active"] == [active]
    assert [d.version for d in one.deployments()][0] == active
    expected = [("elevated-cramp-risk", active)]
    assert wait_for(answer_of(first), expected) == expected
    assert wait_for(answer_of(second), expected) == expected


def test_a_taken_version_number_and_invalid_yaml_are_refused(database_url) -> None:
    versions = app_on(database_url).extensions["leg_cramp_rule_versions"]
    with pytest.raises(VersionConflict) as conflict:
        versions.save_draft(lowered(OLD), "alice")
    assert f"version {OLD} is already used" in str(conflict.value)
    assert f"The next free number is {NEW}." in str(conflict.value)
    broken = lowered().replace("  threshold: 2", "  threshold: [2", 1)
    with pytest.raises(RuleSetInvalid) as invalid:
        versions.save_draft(broken, "alice")
    [problem] = invalid.value.problems
    assert problem.line is not None and "not valid YAML" in problem.message
    negative = lowered().replace("    statin: 0.5", "    statin: -1")
    [problem] = versions.validate(negative)
    assert problem.field == "contributors.points.statin"
    assert negative.splitlines()[problem.line - 1].strip() == "statin: -1"
    assert versions.get_version(NEW) is None


def test_two_serve_processes_follow_a_cli_deploy_and_rollback(database_url, tmp_path) -> None:
    """Two gunicorn servers, two workers each: every worker answers with the deployed version (asked until
    several answers in a row agree, so that both workers of a server have served one), then the old one."""
    servers = [ServerProcess(database_url, tmp_path / f"server-{n}.log", workers=2, threads=2) for n in (1, 2)]
    runner = CliRunner()

    def cli(*args: str):
        result = runner.invoke(main, ["rules", *args, "--database-url", database_url], obj=CliContext(env={}))
        assert result.exit_code == 0, result.output
        return result.output

    def answer_of_server(server: ServerProcess) -> Callable[[], list[tuple[str, str]]]:
        return lambda: rules_of(server.cards(BELOW_THRESHOLD))

    try:
        for server in servers:
            server.wait_healthy(60)
        for server in servers:
            assert answer_of_server(server)() == OLD_ANSWER
        draft = tmp_path / "lowered.yaml"
        draft.write_text(lowered())
        assert "Saved draft 2026.12.2 (not deployed)." in cli("publish", str(draft), "--actor", "alice")
        assert "Deployed version 2026.12.2" in cli("deploy", NEW, "--actor", "dora")
        for server in servers:
            assert wait_for(answer_of_server(server), NEW_ANSWER, times=8) == NEW_ANSWER, server.log_path.read_text()
        assert f"to {OLD}" in cli("rollback", "--actor", "dora")
        for server in servers:
            assert wait_for(answer_of_server(server), OLD_ANSWER, times=8) == OLD_ANSWER, server.log_path.read_text()
    finally:
        for server in servers:
            server.stop()
    store = CardStore(database_url, None)
    audit = AdminStore(store.engine).audit_log()
    store.close()
    assert [(e.actor, e.action) for e in audit][:3] == [
        ("dora", "rollback"), ("dora", "deploy"), ("alice", "draft-saved")]
    assert [e.action for e in audit].count("seed") == 1  # two servers started at once seeded once
