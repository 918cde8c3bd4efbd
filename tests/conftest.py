"""Shared fixtures: the ../shared material, a development-mode app on a fixed clock, its test client,
and a guard against network access.

No test writes into the working tree: every test runs in a temporary directory of its own (so a relative
path, such as the default database ``./leg-cramp-cds.sqlite3`` of ``Settings()`` or of a server started
without CRAMP_DATABASE_URL, lands there), Hypothesis keeps its files in a temporary directory, and the
session fails if the repository gained a database, log or ignored file during the run.

Helpers live in tests/support/ (``from support.hook_requests import minimal_request, PATIENT_ID``); this
file holds only fixtures and the session hooks.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import responses

from support.app import REPO, SHARED_DIR, make_app


class NetworkGuard:
    """Outbound calls attempted during a test: through ``requests`` (refused by ``responses``) or any
    raw socket (refused too). The service may catch the refusal, so tests assert ``attempts == []``."""

    def __init__(self, mock: responses.RequestsMock) -> None:
        self._mock = mock
        self.sockets: list[Any] = []

    @property
    def attempts(self) -> list[str]:
        return [call.request.url for call in self._mock.calls] + [repr(a) for a in self.sockets]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        guard = NetworkGuard(mock)

        def refuse(sock: socket.socket, address: Any, *args: Any) -> None:
            guard.sockets.append(address)
            raise ConnectionRefusedError(f"test forbids network access (to {address!r})")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket.socket, "connect_ex", refuse)
        yield guard
    assert guard.attempts == [], f"the service made outbound calls: {guard.attempts}"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared material not found at {SHARED_DIR} (expected next to the repository as ../shared)")
    return SHARED_DIR


@pytest.fixture
def app():
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


# --- the working tree stays as it was ---------------------------------------------------------------------
# build/card-screenshots/: the card screenshots test_card_page.py keeps for people on purpose (gitignored)
NOT_WORKING_TREE = {".git", ".venv", ".venv-fhir", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                    "card-screenshots"}
TEST_ARTEFACT_SUFFIXES = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal", ".sqlite", ".db", ".log")
_BEFORE = pytest.StashKey[dict]()
_HYPOTHESIS_HOME = pytest.StashKey[Path]()


def _repository_files() -> dict[str, int]:
    """Every file of the working tree (caches and virtual environments aside), with its mtime."""
    files = {}
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO)
        if not NOT_WORKING_TREE.intersection(relative.parts) and path.is_file():
            files[str(relative)] = path.stat().st_mtime_ns
    return files


def _test_artefacts(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Files written during the run that a test could have left: databases, logs, anything git ignores.
    (Source files are left out: other work may change them while the suite runs.)"""
    written = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    if not written:
        return []
    ignored = subprocess.run(["git", "check-ignore", "--stdin"], cwd=REPO, input="\n".join(written),
                             capture_output=True, text=True).stdout.split()
    return sorted(set(ignored) | {name for name in written if name.endswith(TEST_ARTEFACT_SUFFIXES)})


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_BEFORE] = _repository_files()
    hypothesis_home = Path(tempfile.mkdtemp(prefix="cramp-hypothesis-"))  # (not ./.hypothesis)
    config.stash[_HYPOTHESIS_HOME] = hypothesis_home
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:  # pragma: no cover - hypothesis comes with the test extra
        return
    set_hypothesis_home_dir(hypothesis_home)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    home = config.stash.get(_HYPOTHESIS_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
    before = config.stash.get(_BEFORE, None)
    if before is None:
        return
    left = _test_artefacts(before, _repository_files())
    if left:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("=", "the test run wrote into the working tree (tests must use tmp_path)", red=True)
            reporter.write_line(", ".join(left))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (the default database ./leg-cramp-cds.sqlite3 first) resolve in a directory of this
    test's own, never in the working tree."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
