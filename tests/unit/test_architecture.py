"""The import contracts in .importlinter (ARCHITECTURE.md, issue 12): they hold, and each would catch the
violations the issue found.

``lint-imports`` reads the import graph statically (grimp), so a probe module written into a copy of the
package is enough to show that a contract breaks: the copy is checked before and after the probe, and the
probe's import must appear in the broken contract's report only after.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACT_IDS = ("layers", "flask", "requests", "database", "prometheus", "engine", "storage-ledger", "independence",
                "independence-wire", "acyclic")


def _lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    selection = [arg for contract in contracts for arg in ("--contract", contract)]
    # lint-imports puts its working directory first on sys.path: the copy in tmp_path, not the editable install.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *selection],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_import_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in CONTRACT_IDS:  # every contract was checked, none silently dropped from the file
        assert f"[importlinter:contract:{contract}]" in (ROOT / ".importlinter").read_text(encoding="utf-8")
    assert f"Contracts: {len(CONTRACT_IDS)} kept, 0 broken." in result.stdout


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """The package's Python sources and the contracts, copied to tmp_path (data files are not needed)."""
    shutil.copytree(ROOT / "cds_service", tmp_path / "cds_service",
                    ignore=shutil.ignore_patterns("__pycache__", "data", "*.pyc"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


# (contract id, probe modules {path under cds_service/: source, or None to add an import to that module},
#  a line the broken contract must report)
VIOLATIONS = [
    pytest.param("engine", {"engine/zz_probe.py": "from cds_service.web import metrics\n"},
                 "cds_service.engine.zz_probe -> cds_service.web.metrics", id="engine-imports-metrics"),
    pytest.param("layers", {"engine/zz_probe.py": "from cds_service.web import metrics\n"},
                 "cds_service.engine.zz_probe -> cds_service.web.metrics", id="engine-above-web-layer"),
    pytest.param("flask", {"engine/zz_probe.py": "import flask\n"},
                 "cds_service.engine.zz_probe -> flask", id="engine-imports-flask"),
    pytest.param("flask", {"cli/zz_probe.py": "from flask import Flask\n"},
                 "cds_service.cli.zz_probe -> flask", id="cli-imports-flask"),
    pytest.param("prometheus", {"fhir/zz_probe.py": "import prometheus_client\n"},
                 "cds_service.fhir.zz_probe -> prometheus_client", id="fhir-imports-prometheus"),
    pytest.param("storage-ledger", {"storage/zz_probe.py": "from cds_service.engine.pipeline import Engine\n"},
                 "cds_service.storage.zz_probe -> cds_service.engine.pipeline", id="storage-imports-pipeline"),
    pytest.param("layers", {"storage/zz_probe.py": "from cds_service.web import app\n"},
                 "cds_service.storage.zz_probe -> cds_service.web.app", id="storage-above-web-layer"),
    pytest.param("layers", {"hooks/zz_probe.py": "from cds_service.engine import orders\n"},
                 "cds_service.hooks.zz_probe -> cds_service.engine.orders", id="hooks-request-imports-orders"),
    pytest.param("layers", {"hooks/zz_probe.py": "from typing import TYPE_CHECKING\n"
                                                 "if TYPE_CHECKING:\n    from cds_service.engine import orders\n"},
                 "cds_service.hooks.zz_probe -> cds_service.engine.orders", id="cycle-hidden-behind-type-checking"),
    pytest.param("acyclic", {"engine/zz_left.py": "from cds_service.engine import zz_right\n",
                             "engine/zz_right.py": "from cds_service.engine import zz_left\n"},
                 "No cycles are allowed in cds_service.engine.", id="cycle-between-siblings"),
    pytest.param("requests", {"cli/zz_probe.py": "import requests\n"},
                 "cds_service.cli.zz_probe -> requests", id="requests-outside-fhir-cli"),
    pytest.param("requests", {"auth/zz_probe.py": "import requests\n"},
                 "cds_service.auth.zz_probe -> requests", id="requests-outside-fhir-auth"),
    pytest.param("requests", {"admin/zz_probe.py": "def crawl():\n    import requests\n"},
                 "cds_service.admin.zz_probe -> requests", id="requests-imported-in-a-function"),
    pytest.param("database", {"web/zz_probe.py": "import sqlalchemy\n"},
                 "cds_service.web.zz_probe -> sqlalchemy", id="sqlalchemy-outside-storage"),
    pytest.param("database", {"serve/zz_probe.py": "import redis\n"},
                 "cds_service.serve.zz_probe -> redis", id="redis-outside-storage"),
    pytest.param("layers", {"storage/zz_probe.py": "from cds_service.auth import verifier\n"},
                 "cds_service.storage.zz_probe -> cds_service.auth.verifier", id="storage-above-auth"),
    pytest.param("independence", {"admin/zz_probe.py": "from cds_service.auth import verifier\n"},
                 "cds_service.admin.zz_probe -> cds_service.auth.verifier", id="admin-knows-auth"),
    pytest.param("layers", {"ruleset/zz_probe.py": "from cds_service.fhir import client\n"},
                 "cds_service.ruleset.zz_probe -> cds_service.fhir.client", id="ruleset-knows-fhir"),
    pytest.param("independence-wire", {"hooks/cards.py": None},
                 "cds_service.hooks.cards -> cds_service.hooks.feedback", id="card-model-knows-feedback-model"),
    pytest.param("layers", {"zz_probe/__init__.py": ""},
                 "cds_service.zz_probe", id="new-package-not-placed-in-a-layer"),
]


@pytest.mark.parametrize(("contract", "probes", "reported"), VIOLATIONS)
def test_import_contract_fails_on_violation(package_copy: Path, contract: str, probes: dict[str, str | None],
                                            reported: str) -> None:
    before = _lint_imports(package_copy, contract)
    assert reported not in before.stdout, before.stdout  # the probe, not today's code, breaks it

    for relative, source in probes.items():
        probe = package_copy / "cds_service" / relative
        probe.parent.mkdir(exist_ok=True)
        if source is None:  # append an import to an existing module
            source = probe.read_text(encoding="utf-8") + "\nfrom cds_service.hooks import feedback  # probe\n"
        probe.write_text(source, encoding="utf-8")
    after = _lint_imports(package_copy, contract)

    assert after.returncode == 1, after.stdout + after.stderr
    assert "BROKEN" in after.stdout
    assert reported in after.stdout, after.stdout
