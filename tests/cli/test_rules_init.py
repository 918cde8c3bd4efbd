"""``cramp-cds rules init [PATH]``: the bundled rule set written to a file to start from, which validates; an
existing file is kept unless --force."""

from __future__ import annotations

from importlib import resources

from click.testing import CliRunner

from cds_service.cli.main import main

BUNDLED = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


def test_init_writes_the_bundled_rule_set_which_validates(tmp_path):
    path = tmp_path / "my-rules.yaml"
    runner = CliRunner()
    result = runner.invoke(main, ["rules", "init", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text(encoding="utf-8") == BUNDLED
    assert f"Wrote the bundled rule set (version 2026.12.1) to {path}." in result.stdout
    assert f"cramp-cds rules validate {path}" in result.stdout  # what to do next
    assert f"cramp-cds rules simulate --rules {path}" in result.stdout and "/admin/rules" in result.stdout
    validated = runner.invoke(main, ["rules", "validate", str(path)])
    assert validated.exit_code == 0 and validated.stdout.startswith(f"OK: {path} (version 2026.12.1")


def test_init_default_path_is_ruleset_yaml_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["rules", "init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ruleset.yaml").read_text(encoding="utf-8") == BUNDLED


def test_init_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("mine\n", encoding="utf-8")
    runner = CliRunner()
    refused = runner.invoke(main, ["rules", "init", str(path)])
    assert refused.exit_code == 2 and "exists" in refused.output and "--force" in refused.output
    assert path.read_text(encoding="utf-8") == "mine\n"
    forced = runner.invoke(main, ["rules", "init", "--force", str(path)])
    assert forced.exit_code == 0 and path.read_text(encoding="utf-8") == BUNDLED


def test_init_unwritable_path_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["rules", "init", str(tmp_path / "no-such-folder" / "rules.yaml")])
    assert result.exit_code == 2 and "cannot be written" in result.output and "Traceback" not in result.output
