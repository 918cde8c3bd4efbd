"""deploy/: the compose file parses and describes 3 replicas behind a load balancer sharing PostgreSQL
and Redis; its environment requires the public base URL and the secrets, trusts X-Forwarded-* from nginx
only, and passes the service's own settings checks; nginx.conf passes ``nginx -t`` when nginx is installed
(replica host names swapped for loopback addresses, since they only resolve inside the compose network),
and in front of a real replica lets a 16 KiB token through."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_file_describes_replicas_behind_a_load_balancer():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    replicas = [name for name in services if name.startswith("cds-")]
    assert len(replicas) == 3
    for name in replicas:
        service = services[name]
        env = service["environment"]
        assert env["CRAMP_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "CRAMP_DEV_MODE" not in env
        assert service["stop_grace_period"] == "35s"  # > gunicorn's graceful_timeout (30 s)
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {"lb", "postgres", "redis"} <= set(services)
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]
    upstreams = re.findall(r"server (cds-\d):8080", (DEPLOY / "nginx.conf").read_text())
    assert sorted(upstreams) == sorted(replicas)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (optional: apt-get install nginx-light)")
def test_nginx_conf_syntax(tmp_path: Path):
    conf = re.sub(r"server cds-\d:8080", "server 127.0.0.1:8080", (DEPLOY / "nginx.conf").read_text())
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    out = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
         "-g", f"pid {tmp_path}/nginx.pid; error_log stderr;"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr


def _compose_env(overrides: dict[str, str]) -> dict[str, str]:
    """A replica's environment as compose would give it: ${VAR:?...} and ${VAR:-default} filled in."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    env = dict(compose["services"]["cds-1"]["environment"])

    def fill(match: re.Match) -> str:
        name, operator = match[1], match[2]
        assert operator == ":?", f"{name} must be required (${{{name}:?...}}), not defaulted"
        return overrides[name]

    return {key: re.sub(r"\$\{(\w+)(:[?-])[^}]*\}", fill, str(value)) for key, value in env.items()}


def test_compose_requires_the_public_base_url_and_the_secrets():
    text = (DEPLOY / "compose.yaml").read_text()
    for name in ("CRAMP_PUBLIC_BASE_URL", "CRAMP_PATIENT_KEY_SECRET", "POSTGRES_PASSWORD"):
        assert re.search(r"\$\{" + name + r":\?", text), f"{name} must be required"
    env = _compose_env({"CRAMP_PUBLIC_BASE_URL": "https://cds.example.org", "CRAMP_PATIENT_KEY_SECRET": "s" * 32,
                        "POSTGRES_PASSWORD": "pw"})
    assert env["CRAMP_PUBLIC_BASE_URL"] == "https://cds.example.org"


def test_compose_trusts_forwarded_headers_from_nginx_only():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    lb_address = services["lb"]["networks"]["cramp"]["ipv4_address"]
    subnet = ipaddress.ip_network(compose["networks"]["cramp"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(lb_address) in subnet
    for name in (n for n in services if n.startswith("cds-")):
        env = services[name]["environment"]
        assert "FORWARDED_ALLOW_IPS" not in env  # gunicorn's own variable: refused by gunicorn_conf
        assert env["CRAMP_FORWARDED_ALLOW_IPS"] == lb_address
        assert "cramp" in services[name]["networks"]


def test_compose_environment_is_accepted_by_the_service(tmp_path: Path):
    """The replicas' environment passes the service's own settings checks (what `serve` runs first)."""
    from cds_service.serve import gunicorn_conf
    from cds_service.settings import Settings

    env = _compose_env({"CRAMP_PUBLIC_BASE_URL": "https://cds.example.org", "CRAMP_PATIENT_KEY_SECRET": "s" * 32,
                        "POSTGRES_PASSWORD": "pw"})
    env["CRAMP_TRUSTED_CLIENTS_FILE"] = str(DEPLOY / "trusted-clients.example.yaml")  # mounted at /config/
    settings = Settings.from_env(env)
    assert settings.required_public_base_urls() == ("https://cds.example.org",)
    options = gunicorn_conf.build(env)
    assert options["forwarded_allow_ips"] == "172.28.0.10"


def test_nginx_header_buffers_fit_a_16_kib_token():
    from cds_service.header_limits import MAX_HEADER_FIELD_BYTES

    size = re.search(r"large_client_header_buffers\s+\d+\s+(\d+)k;", (DEPLOY / "nginx.conf").read_text())
    assert size and int(size[1]) * 1024 > MAX_HEADER_FIELD_BYTES


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (optional: apt-get install nginx-light)")
def test_through_nginx_a_16_kib_token_is_served_and_a_larger_header_gets_the_replicas_431(tmp_path: Path):
    """deploy/nginx.conf in front of a real replica (`cramp-cds serve`, production mode): the EHR's URL is
    nginx's, which is the replica's CRAMP_PUBLIC_BASE_URL."""
    import json

    from support.hook_requests import SERVICE_URL, minimal_request
    from support.security import SecureServer, TestIssuer, free_port, http_request, padded_token

    issuer = TestIssuer.create()
    lb_port = free_port()
    lb = f"http://127.0.0.1:{lb_port}"
    with SecureServer(tmp_path, issuer, public_base_url=lb, CRAMP_FORWARDED_ALLOW_IPS="127.0.0.1") as replica:
        conf = re.sub(r"server cds-\d:8080 ", f"server 127.0.0.1:{replica.port} ", (DEPLOY / "nginx.conf").read_text())
        conf = conf.replace("listen 80;", f"listen 127.0.0.1:{lb_port};")
        (tmp_path / "logs").mkdir()
        (tmp_path / "nginx.conf").write_text(conf)
        nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                                  "-g", f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx.err;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(lb_port, nginx, tmp_path / "nginx.err")
            body = json.dumps(minimal_request()).encode()
            token = padded_token(issuer, lb + SERVICE_URL, 16 * 1024)
            assert 16 * 1024 - 2 <= len(token) <= 16 * 1024
            status, _, answer = http_request(lb, "POST", SERVICE_URL, {"Authorization": f"Bearer {token}"}, body)
            assert status == 200, answer[:300]
            direct = issuer.token(SERVICE_URL, aud=replica.base + SERVICE_URL)  # the replica's own address
            status, _, _ = http_request(lb, "POST", SERVICE_URL, {"Authorization": f"Bearer {direct}"}, body)
            assert status == 401
            status, headers, answer = http_request(lb, "POST", SERVICE_URL, {"X-Padding": "p" * 20_000}, body)
            assert status == 431 and json.loads(answer)["resourceType"] == "OperationOutcome"
            assert headers["X-Content-Type-Options"] == "nosniff"
        finally:
            nginx.terminate()
            nginx.wait(10)


def _wait_for_port(port: int, process: subprocess.Popen, errors: Path) -> None:
    import socket
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {errors.read_text(errors='replace')[-1000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("nginx did not listen in time")
