"""``cramp-cds keys`` end to end: a key pair made with the CLI, its JWKS and trusted-clients entry loaded by
the service as production runs it (not development mode), and tokens from ``keys token`` accepted for
their endpoint and refused for another audience or a second use. Plus what the files and tokens hold."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
import yaml
from click.testing import CliRunner

from cds_service.auth.trusted_clients import load_trusted_clients
from cds_service.cli.main import main
from cds_service.settings import Settings
from cds_service.web.app import create_app
from support.hook_requests import minimal_request

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://ehr.keys-test.example"
BASE_URL = "https://cds.keys-test.example"
SERVICE_PATH = "/cds-services/leg-cramp-patient-view"
PATIENT_KEY_SECRET = "keys-test-secret-0123456789abcdef"
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _token(key: Path, audience: str, *extra: str) -> str:
    return _cli("keys", "token", "--key", str(key), "--issuer", ISSUER, "--audience", audience, *extra).strip()


def _production_client(trusted_clients: Path, tmp_path: Path):
    settings = Settings(trusted_clients_path=trusted_clients, public_base_urls=BASE_URL,
                        patient_key_secret=PATIENT_KEY_SECRET, database_url=f"sqlite:///{tmp_path / 'cards.sqlite3'}")
    assert settings.development_mode is False
    return create_app(settings).test_client()


def _call(client, token: str):
    return client.post(SERVICE_PATH, json=minimal_request(), headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("algorithm", ["ES384", "RS384"])
def test_a_key_made_by_the_cli_signs_calls_the_service_accepts(tmp_path, algorithm):
    keys = tmp_path / "client"
    output = _cli("keys", "new", str(keys), "--algorithm", algorithm, "--issuer", ISSUER)
    assert f"alg: {algorithm}" in output
    client = _production_client(keys / "trusted-clients.yaml", tmp_path)
    endpoint = BASE_URL + SERVICE_PATH

    accepted = _call(client, _token(keys / "private-key.pem", endpoint))
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    assert "cards" in accepted.get_json()

    other_audience = _call(client, _token(keys / "private-key.pem", "https://elsewhere.example" + SERVICE_PATH))
    assert other_audience.status_code == 401
    assert 'error_description="audience"' in other_audience.headers["WWW-Authenticate"]
    assert other_audience.get_data() == b""

    unsigned = _call(client, "")  # no token at all: refused too (the app is not in development mode)
    assert unsigned.status_code == 401


def test_each_token_has_a_fresh_jti_and_is_refused_a_second_time(tmp_path):
    keys = tmp_path / "client"
    _cli("keys", "new", str(keys), "--issuer", ISSUER)
    client = _production_client(keys / "trusted-clients.yaml", tmp_path)
    endpoint = BASE_URL + SERVICE_PATH
    first, second = (_token(keys / "private-key.pem", endpoint) for _ in range(2))
    assert jwt.decode(first, options={"verify_signature": False})["jti"] != \
        jwt.decode(second, options={"verify_signature": False})["jti"]
    assert _call(client, first).status_code == 200
    replayed = _call(client, first)
    assert replayed.status_code == 401
    assert 'error_description="replayed"' in replayed.headers["WWW-Authenticate"]
    assert _call(client, second).status_code == 200


def test_token_carries_what_cds_hooks_requires(tmp_path):
    keys = tmp_path / "client"
    _cli("keys", "new", str(keys))
    jwks = json.loads((keys / "jwks.json").read_text())
    endpoint = BASE_URL + SERVICE_PATH
    before = int(time.time())
    token = _token(keys / "private-key.pem", endpoint, "--tenant", "t-1")
    after = int(time.time())

    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES384", "typ": "JWT", "kid": jwks["keys"][0]["kid"]}
    public_key = jwt.PyJWK(jwks["keys"][0]).key
    claims = jwt.decode(token, public_key, algorithms=["ES384"], audience=endpoint, issuer=ISSUER)
    assert claims["sub"] == ISSUER and claims["tenant"] == "t-1"
    assert before <= claims["iat"] <= after
    assert 0 < claims["exp"] - claims["iat"] <= 300  # CDS Hooks: at most 5 minutes
    uuid.UUID(claims["jti"])

    short = _token(keys / "private-key.pem", endpoint, "--lifetime", "60", "--subject", "client-42")
    short_claims = jwt.decode(short, options={"verify_signature": False})
    assert short_claims["exp"] - short_claims["iat"] == 60 and short_claims["sub"] == "client-42"
    too_long = CliRunner().invoke(main, ["keys", "token", "--key", str(keys / "private-key.pem"), "--issuer", ISSUER,
                                         "--audience", endpoint, "--lifetime", "301"])
    assert too_long.exit_code == 2 and "--lifetime" in too_long.output


@pytest.mark.parametrize("algorithm", ["ES384", "RS384"])
def test_key_files_private_key_owner_only_jwks_public_only(tmp_path, algorithm):
    keys = tmp_path / "client"
    _cli("keys", "new", str(keys), "--algorithm", algorithm, "--issuer", ISSUER)
    assert stat.S_IMODE((keys / "private-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert (keys / "private-key.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    for document in (json.loads((keys / "jwks.json").read_text()),
                     json.loads(_cli("keys", "jwks", "--key", str(keys / "private-key.pem")))):
        (jwk,) = document["keys"]
        assert not PRIVATE_JWK_MEMBERS & set(jwk), jwk
        assert jwk["alg"] == algorithm and jwk["use"] == "sig" and jwk["kty"] == algorithm[:2].replace("ES", "EC").replace("RS", "RSA")
    (client,) = load_trusted_clients(keys / "trusted-clients.yaml")
    assert client.issuer == ISSUER and client.algorithms == (algorithm,)
    assert client.jwks_file == (keys / "jwks.json").resolve()


def test_trusted_client_entry_inline_or_by_url_loads(tmp_path):
    keys = tmp_path / "client"
    _cli("keys", "new", str(keys), "--algorithm", "RS384")
    key = str(keys / "private-key.pem")

    inline = tmp_path / "inline.yaml"
    inline.write_text(_cli("keys", "trusted-client", "--key", key, "--issuer", ISSUER, "--tenant", "1234"))
    (client,) = load_trusted_clients(inline)
    assert client.jwks["keys"][0]["kid"] == json.loads((keys / "jwks.json").read_text())["keys"][0]["kid"]
    assert client.tenant == "1234" and client.algorithms == ("RS384",)

    by_url = tmp_path / "by-url.yaml"
    by_url.write_text(_cli("keys", "trusted-client", "--key", key, "--issuer", ISSUER,
                           "--jwks-url", "https://ehr.keys-test.example/jwks.json"))
    (client,) = load_trusted_clients(by_url)
    assert client.jwks_url == "https://ehr.keys-test.example/jwks.json"
    assert yaml.safe_load(by_url.read_text())["clients"][0].keys() == {"issuer", "jwks_url", "algorithms"}

    # The inline entry works against the service too (tenant required by it).
    http = _production_client(inline, tmp_path)
    endpoint = BASE_URL + SERVICE_PATH
    assert _call(http, _token(keys / "private-key.pem", endpoint, "--tenant", "1234")).status_code == 200
    wrong_tenant = _call(http, _token(keys / "private-key.pem", endpoint, "--tenant", "9"))
    assert wrong_tenant.status_code == 401


def test_new_never_overwrites_a_key_without_force(tmp_path):
    keys = tmp_path / "client"
    _cli("keys", "new", str(keys))
    pem = (keys / "private-key.pem").read_bytes()
    refused = CliRunner().invoke(main, ["keys", "new", str(keys)])
    assert refused.exit_code == 2
    assert "already exists" in refused.output and "--force" in refused.output
    assert (keys / "private-key.pem").read_bytes() == pem
    _cli("keys", "new", str(keys), "--force")
    assert (keys / "private-key.pem").read_bytes() != pem
    assert stat.S_IMODE((keys / "private-key.pem").stat().st_mode) == 0o600
    assert sorted(path.name for path in keys.iterdir()) == ["jwks.json", "private-key.pem"]  # no temporary left


def test_unusable_key_file_is_one_line_naming_it(tmp_path):
    not_a_key = tmp_path / "jwks.json"
    not_a_key.write_text('{"keys": []}')
    for path in (not_a_key, tmp_path / "missing.pem"):
        result = CliRunner().invoke(main, ["keys", "token", "--key", str(path), "--issuer", ISSUER,
                                           "--audience", BASE_URL + SERVICE_PATH])
        assert result.exit_code == 2
        assert str(path) in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    bad_audience = CliRunner().invoke(main, ["keys", "new", str(tmp_path / "k")])
    assert bad_audience.exit_code == 0
    result = CliRunner().invoke(main, ["keys", "token", "--key", str(tmp_path / "k" / "private-key.pem"),
                                       "--issuer", ISSUER, "--audience", "cds.example.org"])
    assert result.exit_code == 2 and "audience" in result.output


# ------------------------------------------------------------------ the documented commands, run as written


def _block_after(document: Path, heading: str) -> str:
    """The first ```sh/```bash block after ``heading`` in ``document``."""
    text = document.read_text()
    start = text.index(heading)
    match = re.search(r"```(?:sh|bash)\n(.*?)```", text[start:], re.S)
    assert match, f"no shell block after {heading!r} in {document}"
    return match[1]


def _run_script(script: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash -euo pipefail in its own process group (a server it starts in the background
    is stopped on exit, and the whole group is killed if it outlives ``timeout``)."""
    wrapped = "trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n" + script
    process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", wrapped], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the documented commands did not finish in {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _env_with_the_cli() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CRAMP_", "PROMETHEUS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_security_md_key_commands_run_as_documented(tmp_path):
    script = _block_after(ROOT / "docs" / "security.md", "## Client keys for testing")
    result = _run_script(script, tmp_path, _env_with_the_cli())
    assert result.returncode == 0, result.stderr
    keys = tmp_path / "client-keys"
    assert stat.S_IMODE((keys / "private-key.pem").stat().st_mode) == 0o600
    printed_entry = tmp_path / "printed.yaml"
    printed_entry.write_text(result.stdout[result.stdout.index("\nclients:") + 1:])
    (client,) = load_trusted_clients(printed_entry)
    assert client.issuer == "https://ehr.example.org" and client.tenant == "1234"
    token = (tmp_path / "token.txt").read_text().strip()
    (audience,) = re.findall(r"--audience (\S+)", script)
    app = create_app(Settings(trusted_clients_path=keys / "trusted-clients.yaml",
                              public_base_urls=audience.split("/cds-services/")[0],
                              patient_key_secret=PATIENT_KEY_SECRET, database_url="sqlite://")).test_client()
    assert _call(app, token).status_code == 200


def test_integration_md_walkthrough_signs_a_call_to_a_real_server(tmp_path):
    """The block as written (port 8081 swapped for a free one, one worker), against `cramp-cds serve`
    outside development mode; then the same call without a JWT, which the server refuses."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = _block_after(ROOT / "docs" / "integration.md", "### Signing calls with a client key")
    assert "127.0.0.1:8081" in script and "--port 8081" in script
    script = script.replace("127.0.0.1:8081", f"127.0.0.1:{port}").replace("--port 8081", f"--port {port}")
    fixture = re.search(r"--from-file (\S+)", script)[1]
    (tmp_path / fixture).parent.mkdir(parents=True)
    shutil.copy(ROOT / fixture, tmp_path / fixture)
    script += (f"\nif cramp-cds invoke --service-url http://127.0.0.1:{port} --from-file {fixture}; then exit 9; fi\n")
    env = {**_env_with_the_cli(), "CRAMP_WORKERS": "1"}
    result = _run_script(script, tmp_path, env)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert re.search(r"^\d+ cards?$", result.stdout, re.M), result.stdout
    # the unsigned call: one line, the cause first (cli/invoke.py)
    assert re.search(rf"^Error: 401 from http://127\.0\.0\.1:{port}/cds-services/\S+: missing \(request id \S+\)$",
                     result.stderr, re.M), result.stderr
    assert "DEVELOPMENT MODE" not in result.stderr
