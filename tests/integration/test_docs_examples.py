"""Every example command in the operator and integrator docs runs (issue 16 item 2).

Each fenced ``sh``/``bash`` block of DOCS is run here, in order, in a sandbox laid out like a checkout
(its fixtures, tools, .venv and .venv-fhir, ``../shared`` beside it, and the files the docs assume you have:
``trusted-clients.yaml``, ``patient-key-secret``, ``/etc/cramp/...``), with ``.venv/bin`` on PATH (the
README's activation line), against loopback servers only: ports 8080, 8081 and 8090 become free ports,
``0.0.0.0`` becomes 127.0.0.1, ``/etc/cramp/`` and ``/var/lib/cramp/`` the sandbox's. A block that cannot run
like that carries an HTML comment on the line before its fence, which this test reads:

    <!-- example: server URL -->      starts a server in the foreground: run in the background until URL
                                      answers 200; it serves the doc's later blocks, stopped at the end
                                      (or when a later server block wants its port)
    <!-- example: synopsis ... -->    a usage line or a call to someone else's servers: every --option of
                                      each `cramp-cds COMMAND` line must be one `cramp-cds COMMAND --help` lists
    <!-- example: docker -->          needs a Docker engine: tools/check-docker-commands runs the Dockerfile's
                                      commands without one
    <!-- example: not-run REASON -->  with the reason written out

Any other block runs with ``bash -euo pipefail`` and must exit 0: an unmarked block that cannot run fails.
A ``yaml`` block whose first line is ``# NAME`` is the file NAME (sekmet.yaml).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.cli.main import main
from support.live_service import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/configuration.md", "docs/security.md", "deploy/README.md", "docs/integration.md")
KINDS = ("run", "server", "synopsis", "docker", "not-run")
MARK = re.compile(r"^<!--\s*example:\s*([\w-]+)\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")
PORTS = ("8080", "8081", "8090")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str
    kind: str
    note: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks_of(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        previous = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        mark = MARK.match(previous)
        found.append(Block(doc, index + 1, opening[1], "\n".join(lines[index + 1:end]) + "\n",
                           mark[1] if mark else "run", mark[2] if mark else ""))
        index = end + 1
    return found


def shell_blocks(doc: str) -> list[Block]:
    return [block for block in blocks_of(doc) if block.lang in ("sh", "bash")]


def _help_options(command: str) -> set[str]:
    result = CliRunner().invoke(main, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(--[a-z][a-z-]*)", result.output))


@pytest.mark.parametrize("doc", DOCS)
def test_every_shell_block_is_run_or_marked_with_what_covers_it(doc: str) -> None:
    blocks = shell_blocks(doc)
    assert blocks, f"{doc}: no shell examples found"
    for block in blocks:
        assert block.kind in KINDS, f"{block}: unknown example mark {block.kind!r} (one of {KINDS})"
        if block.kind == "not-run":
            assert len(block.note) > 20, f"{block}: a not-run example must say why"
        if block.kind == "server":
            assert block.note.startswith("http://127.0.0.1:"), f"{block}: a server mark names the URL to wait for"
        if block.kind == "docker":
            assert re.search(r"^\s*docker ", block.text, re.M), f"{block}: marked docker but runs no docker command"
            assert os.access(ROOT / "tools" / "check-docker-commands", os.X_OK)
        if block.kind == "synopsis":
            joined = block.text.replace("\\\n", " ")
            calls = re.findall(r"^\s*cramp-cds ([a-z][a-z-]*(?: [a-z][a-z-]*)?)(.*)$", joined, re.M)
            assert calls, f"{block}: a synopsis with no cramp-cds command"
            for command, rest in calls:
                words = command.split()
                group = words[0] if len(words) == 1 or words[1].startswith("-") else command
                unknown = set(re.findall(r"(--[a-z][a-z-]*)", rest)) - _help_options(group)
                assert not unknown, f"{block}: cramp-cds {group} has no option {sorted(unknown)}"


def test_a_docker_block_is_the_only_kind_left_to_check_docker_commands() -> None:
    """The Docker blocks name the image tools/check-docker-commands builds from: the repository's Dockerfile."""
    docker = [block for doc in DOCS for block in shell_blocks(doc) if block.kind == "docker"]
    assert {block.doc for block in docker} == {"README.md", "deploy/README.md"}
    assert all("docker build" in block.text or "docker compose" in block.text for block in docker)


# ------------------------------------------------------------------------------------ running them

class Sandbox:
    """A checkout-like directory and the loopback rewrites of the docs' commands."""

    def __init__(self, base: Path) -> None:
        from cds_service.auth import client_keys

        self.repo = base / "work" / "repo"
        self.repo.mkdir(parents=True)
        for name in ("fhir_fixtures", "tools", "deploy", ".venv", ".venv-fhir"):
            if (ROOT / name).exists():
                (self.repo / name).symlink_to(ROOT / name)
        if (ROOT.parent / "shared").exists():
            (base / "work" / "shared").symlink_to(ROOT.parent / "shared")
        self.etc = base / "etc-cramp"
        self.var = base / "var-lib-cramp"
        self.etc.mkdir()
        self.var.mkdir()
        key = client_keys.generate_private_key()
        import yaml

        clients = yaml.safe_dump({"clients": [client_keys.trusted_client_entry(
            "https://ehr.example.org", algorithm="ES384", jwks=client_keys.public_jwks(key))]})
        for folder in (self.repo, self.etc):
            (folder / "trusted-clients.yaml").write_text(clients)
            (folder / "patient-key-secret").write_text("docs-example-secret-0123456789abcdef\n")
        shutil.copy(ROOT / "cds_service" / "data" / "ruleset.yaml", self.etc / "ruleset.yaml")
        self.ports = {port: str(free_port()) for port in PORTS}
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith("CRAMP_") and key not in ("PROMETHEUS_MULTIPROC_DIR", "VIRTUAL_ENV")}
        self.env.update({"PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "HOME": str(base),
                         "CRAMP_WORKERS": "1"})  # one worker each: the machine's cores are shared
        self.servers: dict[str, tuple[subprocess.Popen, Block]] = {}
        self.logs = base / "logs"
        self.logs.mkdir()

    def rewrite(self, text: str) -> str:
        text = re.sub(r"\b(8080|8081|8090)\b", lambda m: self.ports[m[1]], text)
        text = text.replace("0.0.0.0", "127.0.0.1")
        return text.replace("/etc/cramp/", f"{self.etc}/").replace("/var/lib/cramp/", f"{self.var}/")

    def _log(self, block: Block) -> Path:
        return self.logs / f"{block.doc.replace('/', '_')}-{block.line}.log"

    def run(self, block: Block) -> None:
        log = self._log(block)
        with open(log, "wb") as out:  # a file, not a pipe: a block's background jobs keep it open
            process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", self.rewrite(block.text)], cwd=self.repo,
                                       env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = process.wait(timeout=300)
            finally:
                _stop_group(process)
        assert code == 0, f"{block} exited {code}:\n{block.text}\n{log.read_text()[-3000:]}"

    def start_server(self, block: Block) -> None:
        url = self.rewrite(block.note.split()[0])
        port = url.split(":")[2].split("/")[0]
        if port in self.servers:  # the doc's previous server on that port: the reader stopped it
            self.stop(port)
        out = open(self._log(block), "wb")
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", self.rewrite(block.text)], cwd=self.repo,
                                   env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.servers[port] = (process, block)
        deadline = time.monotonic() + 120  # a hang guard on a shared machine, not a speed target
        while True:
            assert process.poll() is None, f"{block} exited {process.returncode}:\n{self._log(block).read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{block}: {url} never answered 200"
            time.sleep(0.3)

    def stop(self, port: str) -> None:
        process, block = self.servers.pop(port)
        _stop_group(process)
        assert "Traceback" not in self._log(block).read_text(), f"{block}:\n{self._log(block).read_text()[-3000:]}"

    def stop_all(self) -> None:
        for port in list(self.servers):
            self.stop(port)


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    time.sleep(0.5)  # the group's other members (gunicorn workers) finish their own graceful exit
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_an_unmarked_block_that_cannot_run_here_fails(tmp_path: Path) -> None:
    """What an unmarked Docker example would do: the runner fails it, naming the block."""
    sandbox = Sandbox(tmp_path)
    block = Block("README.md", 1, "sh", "docker build -t leg-cramp-cds .\n", "run", "")
    sandbox.env["PATH"] = f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin"  # no Docker CLI (this one has /usr/local/bin/docker)
    if shutil.which("docker", path=sandbox.env["PATH"]):
        pytest.skip("docker is in /usr/bin here")
    with pytest.raises(AssertionError, match=r"README.md:1 exited 127"):
        sandbox.run(block)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_commands_run_against_loopback_servers(doc: str, tmp_path: Path) -> None:
    if doc == "docs/integration.md" and not (ROOT / ".venv-fhir" / "bin" / "sekmet").exists():
        pytest.skip("sekmet-fhir is not installed (tools/setup-fhir-server)")
    if all(block.kind not in ("run", "server") for block in shell_blocks(doc)):
        pytest.skip(f"{doc}: every example is marked (docker, synopsis, not-run); checked above")
    sandbox = Sandbox(tmp_path)
    ran = 0
    try:
        for block in blocks_of(doc):
            if block.lang == "yaml" and block.text.startswith("# "):
                name = block.text.splitlines()[0][2:].strip()
                (sandbox.repo / name).write_text(sandbox.rewrite(block.text))
            elif block.lang in ("sh", "bash") and block.kind == "run":
                sandbox.run(block)
                ran += 1
            elif block.lang in ("sh", "bash") and block.kind == "server":
                sandbox.start_server(block)
                ran += 1
    finally:
        sandbox.stop_all()
    assert ran, f"{doc}: no example was run"
