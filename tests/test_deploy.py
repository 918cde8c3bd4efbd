"""deploy/: the compose file parses and describes 3 replicas behind a load balancer sharing PostgreSQL
and Redis; nginx.conf passes ``nginx -t`` when nginx is installed (replica host names swapped for
loopback addresses, since they only resolve inside the compose network)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


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
