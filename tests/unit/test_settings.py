"""Settings from the environment (cds_service/settings.py and gunicorn_conf.py), as a table: every numeric
variable has a range, and every refusal is one line that names the variable. Then the start refusals
(`cramp-cds serve` exits 2 with that line): CRAMP_PUBLIC_BASE_URL outside development mode, a missing
trusted-clients file, the forwarded-header trust.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.auth.trusted_clients import TrustedClientsError
from cds_service.cli.main import CliContext, main
from cds_service.serve import gunicorn_conf
from cds_service.settings import Settings, SettingsError, env_float, env_int
from cds_service.web.app import create_app

SECRET = "test-secret-0123456789abcdef"

# (variable, value, the message's start); each must be refused with one line naming the variable.
REFUSED_APP = [
    ("CRAMP_MAX_BODY_BYTES", "-5", "CRAMP_MAX_BODY_BYTES: expected a whole number from 1024 to 1073741824"),
    ("CRAMP_MAX_BODY_BYTES", "0", "CRAMP_MAX_BODY_BYTES: expected a whole number from 1024"),
    ("CRAMP_MAX_BODY_BYTES", "2000000000", "CRAMP_MAX_BODY_BYTES: expected a whole number from 1024"),
    ("CRAMP_MAX_BODY_BYTES", "16MB", "CRAMP_MAX_BODY_BYTES: expected a whole number"),
    ("CRAMP_MAX_BODY_BYTES", "1e6", "CRAMP_MAX_BODY_BYTES: expected a whole number"),
    ("CRAMP_MAX_RESOURCES", "0", "CRAMP_MAX_RESOURCES: expected a whole number from 1 to 1000000"),
    ("CRAMP_MAX_RESOURCES", "-1", "CRAMP_MAX_RESOURCES: expected a whole number from 1"),
    ("CRAMP_MAX_RESOURCES", "many", "CRAMP_MAX_RESOURCES: expected a whole number"),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "-1", "CRAMP_FHIR_DEADLINE_SECONDS: expected a number from 0.1 to 25"),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "0", "CRAMP_FHIR_DEADLINE_SECONDS: expected a number from 0.1 to 25"),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "60", "CRAMP_FHIR_DEADLINE_SECONDS: expected a number from 0.1 to 25"),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "nan", "CRAMP_FHIR_DEADLINE_SECONDS: expected a number"),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "inf", "CRAMP_FHIR_DEADLINE_SECONDS: expected a number"),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "3s", "CRAMP_FHIR_DEADLINE_SECONDS: expected a number"),
    ("CRAMP_PATIENT_KEY_SECRET", "short", "CRAMP_PATIENT_KEY_SECRET: must be at least 16 characters"),
    ("CRAMP_DEV_MODE", "maybe", "CRAMP_DEV_MODE: expected true/false"),
    ("CRAMP_PUBLIC_BASE_URL", "cds.example.org", "CRAMP_PUBLIC_BASE_URL: 'cds.example.org' is not an http(s) base URL"),
    ("CRAMP_PUBLIC_BASE_URL", "ftp://cds.example.org", "CRAMP_PUBLIC_BASE_URL: 'ftp://cds.example.org' is not"),
    ("CRAMP_PUBLIC_BASE_URL", "https://cds.example.org?x=1", "CRAMP_PUBLIC_BASE_URL:"),
    ("CRAMP_PUBLIC_BASE_URL", "https://user:pw@cds.example.org", "CRAMP_PUBLIC_BASE_URL:"),
    ("CRAMP_PUBLIC_BASE_URL", "https://cds.example.org:99999", "CRAMP_PUBLIC_BASE_URL:"),
    ("CRAMP_PUBLIC_BASE_URL", "https://ok.example, http://", "CRAMP_PUBLIC_BASE_URL: 'http://' is not"),
    ("CRAMP_PUBLIC_BASE_URL", "https://cds.example.org/cds-services/",
     "CRAMP_PUBLIC_BASE_URL: 'https://cds.example.org/cds-services/' ends with /cds-services; give the base URL"),
    ("CRAMP_TRUSTED_CLIENTS_FILE", "/nonexistent/trusted-clients.yaml",
     "CRAMP_TRUSTED_CLIENTS_FILE: no such file: /nonexistent/trusted-clients.yaml"),
]

REFUSED_SERVER = [
    ("CRAMP_WORKERS", "0", "CRAMP_WORKERS: expected a whole number from 1 to 64"),
    ("CRAMP_WORKERS", "-2", "CRAMP_WORKERS: expected a whole number from 1 to 64"),
    ("CRAMP_WORKERS", "1000", "CRAMP_WORKERS: expected a whole number from 1 to 64"),
    ("CRAMP_WORKERS", "two", "CRAMP_WORKERS: expected a whole number"),
    ("CRAMP_THREADS", "0", "CRAMP_THREADS: expected a whole number from 1 to 64"),
    ("CRAMP_THREADS", "65", "CRAMP_THREADS: expected a whole number from 1 to 64"),
    ("CRAMP_KEEPALIVE", "-1", "CRAMP_KEEPALIVE: expected a whole number from 0 to 300"),
    ("CRAMP_KEEPALIVE", "3600", "CRAMP_KEEPALIVE: expected a whole number from 0 to 300"),
    ("CRAMP_MAX_REQUESTS", "-1", "CRAMP_MAX_REQUESTS: expected a whole number from 0 to 10000000"),
    ("CRAMP_MAX_REQUESTS", "1.5", "CRAMP_MAX_REQUESTS: expected a whole number"),
    ("CRAMP_BIND", "0.0.0.0", "CRAMP_BIND: expected HOST:PORT"),
    ("CRAMP_BIND", "0.0.0.0:0", "CRAMP_BIND: expected HOST:PORT with a port from 1 to 65535"),
    ("CRAMP_BIND", "0.0.0.0:70000", "CRAMP_BIND: expected HOST:PORT with a port from 1 to 65535"),
    ("CRAMP_WORKER_CLASS", "eventlet", "CRAMP_WORKER_CLASS: expected one of sync, gthread"),
    ("CRAMP_ACCESS_LOG", "sometimes", "CRAMP_ACCESS_LOG: expected true/false"),
    ("CRAMP_LOG_LEVEL", "LOUD", "CRAMP_LOG_LEVEL: expected one of"),
    ("CRAMP_FORWARDED_ALLOW_IPS", "*", "CRAMP_FORWARDED_ALLOW_IPS: '*' is not an IP address or network"),
    ("CRAMP_FORWARDED_ALLOW_IPS", "10.0.0.1, nginx", "CRAMP_FORWARDED_ALLOW_IPS: 'nginx' is not"),
    ("FORWARDED_ALLOW_IPS", "*", "FORWARDED_ALLOW_IPS: not read by this service; name your proxies in "
                                 "CRAMP_FORWARDED_ALLOW_IPS"),
]


def _refusal(build, env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        build(env)
    return str(caught.value)


@pytest.mark.parametrize(("name", "value", "message"), REFUSED_APP, ids=[f"{n}={v}" for n, v, _ in REFUSED_APP])
def test_settings_refuse_each_bad_value_in_one_line_naming_it(name: str, value: str, message: str) -> None:
    text = _refusal(Settings.from_env, {name: value})
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.mark.parametrize(("name", "value", "message"), REFUSED_SERVER,
                         ids=[f"{n}={v}" for n, v, _ in REFUSED_SERVER])
def test_server_settings_refuse_each_bad_value_in_one_line_naming_it(name: str, value: str, message: str) -> None:
    text = _refusal(gunicorn_conf.build, {name: value})
    assert text.startswith(message), text
    assert "\n" not in text


ACCEPTED_APP = [
    ("CRAMP_MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
    ("CRAMP_MAX_BODY_BYTES", " 1073741824 ", "max_body_bytes", 1024 ** 3),
    ("CRAMP_MAX_BODY_BYTES", "", "max_body_bytes", 16 * 1024 * 1024),
    ("CRAMP_MAX_RESOURCES", "", "max_resources", 20_000),
    ("CRAMP_MAX_RESOURCES", "1", "max_resources", 1),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "0.1", "fhir_deadline_seconds", 0.1),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "25", "fhir_deadline_seconds", 25.0),
    ("CRAMP_FHIR_DEADLINE_SECONDS", "", "fhir_deadline_seconds", 3.0),
    ("CRAMP_PUBLIC_BASE_URL", "https://cds.example.org/", "public_base_urls", ("https://cds.example.org",)),
    ("CRAMP_PUBLIC_BASE_URL", " https://a.example/cramp , http://127.0.0.1:8080 ", "public_base_urls",
     ("https://a.example/cramp", "http://127.0.0.1:8080")),
    ("CRAMP_PUBLIC_BASE_URL", "", "public_base_urls", ()),
]


@pytest.mark.parametrize(("name", "value", "field", "expected"), ACCEPTED_APP,
                         ids=[f"{n}={v!r}" for n, v, _, _ in ACCEPTED_APP])
def test_settings_accept_the_ends_of_each_range(name: str, value: str, field: str, expected: object) -> None:
    assert getattr(Settings.from_env({name: value}), field) == expected


ACCEPTED_SERVER = [
    ("CRAMP_WORKERS", "1", "workers", 1),
    ("CRAMP_WORKERS", "64", "workers", 64),
    ("CRAMP_THREADS", "64", "threads", 64),
    ("CRAMP_KEEPALIVE", "0", "keepalive", 0),
    ("CRAMP_MAX_REQUESTS", "0", "max_requests", 0),
    ("CRAMP_BIND", "[::1]:8080", "bind", ["[::1]:8080"]),
    ("CRAMP_BIND", "unix:/run/cramp.sock", "bind", ["unix:/run/cramp.sock"]),
    ("CRAMP_FORWARDED_ALLOW_IPS", "", "forwarded_allow_ips", ""),
    ("CRAMP_FORWARDED_ALLOW_IPS", "172.28.0.10, 10.1.0.0/16,::1", "forwarded_allow_ips", "172.28.0.10,10.1.0.0/16,::1"),
]


@pytest.mark.parametrize(("name", "value", "option", "expected"), ACCEPTED_SERVER,
                         ids=[f"{n}={v!r}" for n, v, _, _ in ACCEPTED_SERVER])
def test_server_settings_accept_the_ends_of_each_range(name: str, value: str, option: str, expected: object) -> None:
    assert gunicorn_conf.build({name: value})[option] == expected


def test_server_trusts_no_forwarded_headers_by_default_and_fits_16_kib_tokens() -> None:
    options = gunicorn_conf.build({})
    assert options["forwarded_allow_ips"] == ""
    assert options["limit_request_field_size"] > len("Authorization: Bearer ") + 16 * 1024


def test_ranged_helpers_are_reusable() -> None:
    env = {"X_COUNT": "7", "X_RATIO": "0.5", "X_BAD": "-1"}
    assert env_int(env, "X_COUNT", 1, minimum=1, maximum=10) == 7
    assert env_int(env, "X_UNSET", 3, minimum=1, maximum=10) == 3
    assert env_float(env, "X_RATIO", 1.0, minimum=0.0, maximum=1.0) == 0.5
    with pytest.raises(SettingsError, match=r"^X_BAD: expected a whole number from 0 to 5, got '-1'$"):
        env_int(env, "X_BAD", 1, minimum=0, maximum=5)
    with pytest.raises(SettingsError, match=r"^X_BAD: expected a number from 0 to 1, got '-1'$"):
        env_float(env, "X_BAD", 1.0, minimum=0.0, maximum=1.0)
    assert math.isfinite(env_float({}, "X", 2.5, minimum=0, maximum=3))


# ------------------------------------------------------------------- refusals at start (`cramp-cds serve`)


def _serve(env: dict[str, str], *args: str):
    started: list[object] = []
    context = CliContext(env=env, run_server=lambda factory, options: started.append(options))
    result = CliRunner().invoke(main, ["serve", *args], obj=context)
    return result, started


def test_serve_refuses_to_start_without_the_public_base_url(tmp_path: Path) -> None:
    env = {"CRAMP_PATIENT_KEY_SECRET": SECRET, "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    result, started = _serve(env)
    assert result.exit_code == 2, result.output
    assert not started
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "CRAMP_PUBLIC_BASE_URL: required outside development mode" in lines[0], result.output
    # With it (and the patient key secret, also required), the server starts; --dev needs neither.
    result, started = _serve({**env, "CRAMP_PUBLIC_BASE_URL": "https://cds.example.org"})
    assert result.exit_code == 0 and started, result.output
    result, started = _serve({"CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'dev.sqlite3'}"}, "--dev")
    assert result.exit_code == 0 and started, result.output


def test_serve_names_the_variable_of_a_missing_trusted_clients_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    env = {"CRAMP_PATIENT_KEY_SECRET": SECRET, "CRAMP_PUBLIC_BASE_URL": "https://cds.example.org",
           "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "CRAMP_TRUSTED_CLIENTS_FILE": str(missing)}
    result, started = _serve(env)
    assert result.exit_code == 2 and not started
    assert f"CRAMP_TRUSTED_CLIENTS_FILE: no such file: {missing}" in result.output


def test_an_unreadable_trusted_clients_file_is_reported_with_the_variable(tmp_path: Path) -> None:
    """Settings built in code (not from the environment) reach the file only in create_app."""
    settings = Settings(database_url="sqlite://", patient_key_secret=SECRET, public_base_urls="https://cds.example.org",
                        trusted_clients_path=tmp_path / "gone.yaml")
    with pytest.raises(TrustedClientsError, match=r"^CRAMP_TRUSTED_CLIENTS_FILE: .*gone\.yaml: cannot read the file"):
        create_app(settings)


@pytest.mark.parametrize(("name", "value"), [("CRAMP_MAX_BODY_BYTES", "-5"), ("CRAMP_FHIR_DEADLINE_SECONDS", "-1"),
                                             ("CRAMP_WORKERS", "0")])
def test_serve_exits_2_on_an_out_of_range_number(name: str, value: str) -> None:
    result, started = _serve({name: value, "CRAMP_DATABASE_URL": "sqlite://"}, "--dev")
    assert result.exit_code == 2 and not started
    assert f"{name}: expected" in result.output


@pytest.mark.parametrize(("option", "bounds"), [("--workers", gunicorn_conf.WORKERS_RANGE),
                                                ("--threads", gunicorn_conf.THREADS_RANGE)])
def test_serve_options_have_the_variables_ranges(option: str, bounds: tuple[int, int]) -> None:
    for value, accepted in ((bounds[0], True), (bounds[1], True), (bounds[0] - 1, False), (bounds[1] + 1, False)):
        result, started = _serve({"CRAMP_DATABASE_URL": "sqlite://"}, "--dev", option, str(value))
        assert (result.exit_code == 0 and bool(started)) is accepted, (option, value, result.output)
        if not accepted:
            assert result.exit_code == 2 and option in result.output
