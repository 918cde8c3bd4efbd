"""deploy/kubernetes/: the kustomize base and production overlay render with ``kubectl kustomize``, every
document validates against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), and
the properties deploy/kubernetes/README.md promises hold: probes on /healthz and /readyz, a rolling update
that never has an unavailable replica, a pre-stop pause and a grace period longer than gunicorn's graceful
timeout, the rule set from a ConfigMap, secrets from a Secret, a PDB over the Deployment's pods, sizing
that fits the measured worker memory, a hardened pod, and (production) a released image tag.

The production overlay renders only with its git-ignored secrets/ files: the tests render copies of the
tree with test secrets written in, and check that without them the overlay refuses to render.

kubectl is needed (``kubectl kustomize``); without it the tests skip, unless CRAMP_REQUIRE_KUBECTL=1.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = {"base": "base", "production": "overlays/production"}
# Validated against the oldest Kubernetes these manifests claim (README) and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Measured (deploy/kubernetes/README.md, Sizing): the gunicorn master and one worker's steady RSS, and the
# tracemalloc peak of one 5,000-resource evaluation (bench/bench_scaling.py).
MASTER_MIB, WORKER_MIB, LARGE_CHART_PEAK_MIB = 53, 96, 41
MIN_KUSTOMIZE_MAJOR = 5
TEST_PATIENT_KEY_SECRET = "k8s-test-secret-0123456789abcdef"


def _unavailable(reason: str) -> None:
    if os.environ.get("CRAMP_REQUIRE_KUBECTL") == "1":
        pytest.fail(f"{reason}, and CRAMP_REQUIRE_KUBECTL=1")
    pytest.skip(f"{reason} (needed for `kubectl kustomize`; CI sets CRAMP_REQUIRE_KUBECTL=1)")


@functools.cache
def _kubectl() -> str:
    """kubectl with kustomize v5 or later (`labels`, `patches`; Debian's kubernetes-client 1.20 has v2)."""
    path = shutil.which("kubectl")
    if path is None:
        _unavailable("kubectl not installed")
    version = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    kustomize = json.loads(version.stdout or "{}").get("kustomizeVersion", "") if version.returncode == 0 else ""
    major = re.match(r"v(\d+)", kustomize)
    if major is None or int(major[1]) < MIN_KUSTOMIZE_MAJOR:
        _unavailable(f"kubectl's kustomize is {kustomize or 'unknown'}, older than v{MIN_KUSTOMIZE_MAJOR}")
    return path


def _kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)


def _write_production_secrets(tree: Path) -> None:
    secrets = tree / OVERLAYS["production"] / "secrets"
    secrets.mkdir()
    (secrets / "cramp.env").write_text(
        f"CRAMP_PATIENT_KEY_SECRET={TEST_PATIENT_KEY_SECRET}\n"
        "CRAMP_DATABASE_URL=postgresql+psycopg://cramp:test-password@postgres.db.svc:5432/cramp\n"
        "CRAMP_REDIS_URL=redis://redis.db.svc:6379/0\n"
    )
    shutil.copy(ROOT / "deploy" / "trusted-clients.example.yaml", secrets / "trusted-clients.yaml")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay's documents, rendered from a copy of deploy/kubernetes with the production secrets."""
    tree = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, tree, ignore=shutil.ignore_patterns("secrets"))
    _write_production_secrets(tree)
    documents = {}
    for name, relative in OVERLAYS.items():
        result = _kustomize(tree / relative)
        assert result.returncode == 0, f"kubectl kustomize {relative}: {result.stderr}"
        documents[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return documents


def _one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in documents if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container["env"]}


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()
    return float(number) * (1024 if unit == "Gi" else 1)


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# ------------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_validates_against_the_kubernetes_schemas(rendered, overlay, version):
    kinds = []
    for document in rendered[overlay]:
        kubernetes_validate.validate(document, version, strict=True)  # raises ValidationError
        kinds.append(document["kind"])
    expected = {"ConfigMap", "Secret", "Service", "Deployment", "PodDisruptionBudget"}
    if overlay == "production":
        expected.add("HorizontalPodAutoscaler")
    assert sorted(kinds) == sorted(expected)


def test_the_schema_check_catches_a_misspelt_field(rendered):
    """The validation above could fail: strict mode refuses a field Kubernetes does not know."""
    deployment = yaml.safe_load(yaml.safe_dump(_one(rendered["base"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_production_does_not_render_without_its_secrets(tmp_path):
    """The base's placeholder secrets never reach production: without secrets/ the overlay fails."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree, ignore=shutil.ignore_patterns("secrets"))
    result = _kustomize(tree / OVERLAYS["production"])
    assert result.returncode != 0
    assert "secrets/cramp.env" in result.stderr


def test_production_replaces_the_placeholder_secrets(rendered):
    import base64

    for overlay, placeholder in (("base", True), ("production", False)):
        secret = _one(rendered[overlay], "Secret")
        value = base64.b64decode(secret["data"]["CRAMP_PATIENT_KEY_SECRET"]).decode()
        assert value.startswith("PLACEHOLDER") is placeholder
        assert set(secret["data"]) == {"CRAMP_PATIENT_KEY_SECRET", "CRAMP_DATABASE_URL", "CRAMP_REDIS_URL",
                                       "trusted-clients.yaml"}
    assert base64.b64decode(_one(rendered["production"], "Secret")["data"]["CRAMP_PATIENT_KEY_SECRET"]).decode() \
        == TEST_PATIENT_KEY_SECRET


# ------------------------------------------------------------------------------------ the properties


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_readiness_on_readyz_liveness_on_healthz(rendered, overlay):
    container = _container(rendered[overlay])
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port_names[container[probe]["httpGet"]["port"]] == 8080
    assert _env(container)["CRAMP_BIND"]["value"] == "0.0.0.0:8080"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rolling_update_drops_no_request(rendered, overlay):
    from cds_service.serve import gunicorn_conf

    deployment = _one(rendered[overlay], "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = int(pre_stop[1])
    # Longer than the endpoint removal takes to reach kube-proxy and ingresses (a few seconds), and than
    # two readiness periods.
    assert pause >= 2 * pod["containers"][0]["readinessProbe"]["periodSeconds"]
    graceful = gunicorn_conf.build({})["graceful_timeout"]
    # The grace period runs from the start of the preStop hook: pause + gunicorn's drain, with margin.
    assert pod["terminationGracePeriodSeconds"] > pause + graceful
    assert pod["terminationGracePeriodSeconds"] > gunicorn_conf.build({})["timeout"]
    assert "command" not in pod["containers"][0] and "args" not in pod["containers"][0]  # the image's CMD: gunicorn as PID 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb_and_service_select_the_deployments_pods(rendered, overlay):
    documents = rendered[overlay]
    deployment = _one(documents, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items()
    pdb = _one(documents, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] and pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _one(documents, "Service")
    assert service["spec"]["selector"] and service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 3
    assert pdb["spec"]["maxUnavailable"] < replicas


def test_production_scales_out_with_an_autoscaler(rendered):
    base, production = (_one(rendered[name], "Deployment") for name in ("base", "production"))
    hpa = _one(rendered["production"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": production["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == production["spec"]["replicas"] > base["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    base_requests = _container(rendered["base"])["resources"]["requests"]
    production_requests = _container(rendered["production"])["resources"]["requests"]
    assert _cores(production_requests["cpu"]) > _cores(base_requests["cpu"])
    assert _mebibytes(production_requests["memory"]) > _mebibytes(base_requests["memory"])


def test_production_runs_a_released_image_never_latest(rendered):
    image = _container(rendered["production"])["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest" and "/" not in tag, image
    assert "/" in name, "production pulls from a registry"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_fit_the_measured_workers(rendered, overlay):
    """README arithmetic: request >= master + workers x steady worker RSS; limit adds one large chart's
    peak per worker (one thread each); CRAMP_WORKERS = CPU request + 1, as gunicorn_conf's default would be
    if it could see the pod's share instead of the node's cores."""
    container = _container(rendered[overlay])
    workers = int(_env(container)["CRAMP_WORKERS"]["value"])
    threads = int(_env(container)["CRAMP_THREADS"]["value"])
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert workers == int(_cores(requests["cpu"])) + 1
    assert _mebibytes(requests["memory"]) >= MASTER_MIB + workers * WORKER_MIB
    assert _mebibytes(limits["memory"]) >= MASTER_MIB + workers * (WORKER_MIB + threads * LARGE_CHART_PEAK_MIB)
    assert _cores(limits["cpu"]) >= _cores(requests["cpu"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_hardened(rendered, overlay):
    deployment = _one(rendered[overlay], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user cramp
    assert "--uid 10001" in (ROOT / "Dockerfile").read_text()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    writable = {"/tmp", _env(container)["PROMETHEUS_MULTIPROC_DIR"]["value"]}
    for path in writable:
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be an emptyDir (the root is read-only)"
    assert len({mounts[path] for path in writable}) == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_each_pod(rendered, overlay):
    deployment = _one(rendered[overlay], "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == _container(rendered[overlay])["ports"][0]["containerPort"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rule_set_and_secrets_are_mounted_where_the_settings_point(rendered, overlay):
    documents = rendered[overlay]
    container = _container(documents)
    env = _env(container)
    pod = _one(documents, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    config_map, secret = _one(documents, "ConfigMap"), _one(documents, "Secret")

    rules_dir, _, rules_key = env["CRAMP_RULES_FILE"]["value"].rpartition("/")
    (rules_volume,) = [name for name, mount in mounts.items() if mount["mountPath"] == rules_dir]
    assert volumes[rules_volume]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "subPath" not in mounts[rules_volume]  # a subPath mount never sees an edited ConfigMap
    assert config_map["data"][rules_key] == (ROOT / "cds_service" / "data" / "ruleset.yaml").read_text(), (
        "deploy/kubernetes/base/ruleset.yaml differs from the bundled rule set: "
        "cp cds_service/data/ruleset.yaml deploy/kubernetes/base/ruleset.yaml"
    )

    clients_dir, _, clients_key = env["CRAMP_TRUSTED_CLIENTS_FILE"]["value"].rpartition("/")
    (clients_volume,) = [name for name, mount in mounts.items() if mount["mountPath"] == clients_dir]
    assert volumes[clients_volume]["secret"]["secretName"] == secret["metadata"]["name"]
    assert clients_key in secret["data"]
    for name in ("CRAMP_PATIENT_KEY_SECRET", "CRAMP_DATABASE_URL", "CRAMP_REDIS_URL"):
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": secret["metadata"]["name"], "key": name}
        assert name in secret["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_read_by_the_service_and_documented(rendered, overlay):
    code = (ROOT / "cds_service" / "settings.py").read_text() + (ROOT / "cds_service" / "serve" / "gunicorn_conf.py").read_text()
    reference = (ROOT / "docs" / "configuration.md").read_text()
    env = _env(_container(rendered[overlay]))
    for name in env:
        assert f'"{name}"' in code, f"{name} is read by neither settings.py nor gunicorn_conf.py"
        assert name in reference, f"{name} is not in docs/configuration.md"
    assert "CRAMP_DEV_MODE" not in env
    assert env["CRAMP_PUBLIC_BASE_URL"]["value"].startswith("https://")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_configuration_starts_the_service(rendered, overlay, tmp_path):
    """The pod's environment, with the ConfigMap and Secret files written where they are mounted (under
    tmp_path) and the cluster's PostgreSQL/Redis swapped for SQLite and the loopback Redis, passes the
    service's and gunicorn's settings checks, and the app (not in development mode) answers the probes."""
    import base64

    from cds_service.serve import gunicorn_conf
    from cds_service.settings import Settings
    from cds_service.web.app import create_app

    documents = rendered[overlay]
    container = _container(documents)
    config_map, secret = _one(documents, "ConfigMap"), _one(documents, "Secret")
    env: dict[str, str] = {}
    for name, entry in _env(container).items():
        if "value" in entry:
            env[name] = entry["value"]
        else:
            env[name] = base64.b64decode(secret["data"][entry["valueFrom"]["secretKeyRef"]["key"]]).decode()
    for variable, files in (("CRAMP_RULES_FILE", config_map["data"]), ("CRAMP_TRUSTED_CLIENTS_FILE", None)):
        path = tmp_path / env[variable].lstrip("/")
        path.parent.mkdir(parents=True)
        key = path.name
        text = files[key] if files is not None else base64.b64decode(secret["data"][key]).decode()
        path.write_text(text)
        env[variable] = str(path)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    assert env["CRAMP_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["CRAMP_REDIS_URL"].startswith("redis://")
    env["CRAMP_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cards.sqlite3'}"
    env["CRAMP_REDIS_URL"] = "redis://127.0.0.1:6379/0"

    options = gunicorn_conf.build(env)
    assert options["workers"] == int(env["CRAMP_WORKERS"])
    settings = Settings.from_env(env)
    assert not settings.development_mode
    client = create_app(settings).test_client()
    assert client.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200
    ready = client.get(container["readinessProbe"]["httpGet"]["path"])
    assert ready.status_code == 200, ready.get_data(as_text=True)
    assert client.post("/cds-services/leg-cramp-patient-view", json={}).status_code == 401  # authentication on


# A pod's filesystem in a private mount namespace: every mount read-only but /dev (gunicorn's heartbeat
# files go to /dev/shm), a tmpfs at /tmp and at the metrics directory, the ConfigMap and Secret files under
# /run/cramp. Runs the image's CMD with all capabilities dropped. (Not as uid 10001: this machine's Python
# lives under /root, which only root may enter.) The checkout and its Python may live under /tmp (a CI
# clone): the host's /tmp is bound at /run/host-tmp first, and each of $KEEP under /tmp is bound back,
# read-only, at its own path on the new tmpfs.
_POD_FILESYSTEM = r"""
set -eu
mount -t tmpfs -o size=16m tmpfs /run
mkdir -p /run/cramp/rules /run/cramp/clients "$METRICS_DIR" /run/host-tmp
mount --bind /tmp /run/host-tmp
cp "$SOURCE/ruleset.yaml" /run/cramp/rules/ && cp "$SOURCE/trusted-clients.yaml" /run/cramp/clients/
findmnt -rn -o TARGET | while read -r target; do
    case "$target" in /proc*|/sys*|/dev*|/mnt/sandboxing*) continue ;; esac
    mount -o remount,bind,ro "$target"
done
mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp
for path in $KEEP; do
    case "$path" in /tmp/*) ;; *) continue ;; esac
    mkdir -p "$path"
    mount --bind "/run/host-tmp/${path#/tmp/}" "$path"
    mount -o remount,bind,ro "$path"
done
mount -t tmpfs -o size=64m tmpfs "$METRICS_DIR"
cd /
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all "$@"
"""


def test_the_pod_runs_on_a_read_only_root_with_only_its_empty_dirs_writable(rendered, tmp_path):
    """The production pod's environment and files, gunicorn as the image runs it, on a read-only filesystem:
    it starts, is ready, answers a call signed with a `cramp-cds keys` key, serves /metrics (written to the
    metrics emptyDir), and exits 0 on SIGTERM."""
    import base64
    import signal
    import socket
    import sys
    import time
    import urllib.request

    from cds_service.auth import client_keys
    from support.hook_requests import minimal_request

    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, unshare and setpriv (util-linux) for a private read-only mount namespace")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")

    documents = rendered["production"]
    container = _container(documents)
    config_map, secret = _one(documents, "ConfigMap"), _one(documents, "Secret")
    env = {name: entry["value"] for name, entry in _env(container).items() if "value" in entry}
    for name, entry in _env(container).items():
        if "valueFrom" in entry:
            env[name] = base64.b64decode(secret["data"][entry["valueFrom"]["secretKeyRef"]["key"]]).decode()

    issuer = "https://ehr.pod-test.example"
    key = client_keys.generate_private_key()
    source = tmp_path / "source"
    source.mkdir()
    (source / "ruleset.yaml").write_text(config_map["data"]["ruleset.yaml"])
    (source / "trusted-clients.yaml").write_text(yaml.safe_dump({"clients": [client_keys.trusted_client_entry(
        issuer, algorithm="ES384", jwks=client_keys.public_jwks(key))]}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = env["CRAMP_PUBLIC_BASE_URL"]
    env.update({
        "CRAMP_BIND": f"127.0.0.1:{port}",  # the pod binds 0.0.0.0:8080; here, loopback and a free port
        "CRAMP_WORKERS": "2",
        "CRAMP_RULES_FILE": "/run/cramp/rules/ruleset.yaml",
        "CRAMP_TRUSTED_CLIENTS_FILE": "/run/cramp/clients/trusted-clients.yaml",
        "CRAMP_DATABASE_URL": "sqlite:////tmp/cards.sqlite3",  # the cluster's PostgreSQL is not here
        "CRAMP_REDIS_URL": "redis://127.0.0.1:6379/0",
        "PATH": os.environ["PATH"], "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1",
        "SOURCE": str(source), "METRICS_DIR": "/run/cramp/metrics",
        # the code the pod runs, wherever this checkout and its Python are (under /tmp in a CI clone)
        "KEEP": " ".join(str(Path(p).resolve()) for p in (ROOT, sys.prefix, sys.base_prefix)),
    })
    env["PROMETHEUS_MULTIPROC_DIR"] = env["METRICS_DIR"]
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:cds_service.serve.gunicorn_conf", "cds_service.serve.wsgi:app"]
    server = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", _POD_FILESYSTEM, "pod", *gunicorn],
                              env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    local = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # a hang guard on a loaded machine, not a speed target
        while True:
            try:
                with urllib.request.urlopen(local + "/readyz", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:  # refused, or accepted by the master before a worker has booted
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the pod never became ready"
                time.sleep(0.2)
        path = "/cds-services/leg-cramp-patient-view"
        token = client_keys.make_client_token(key, issuer=issuer, audience=base_url + path)
        request = urllib.request.Request(local + path, data=json.dumps(minimal_request()).encode(), headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200 and "cards" in json.load(response)
        with urllib.request.urlopen(local + "/metrics", timeout=10) as response:
            assert "cramp_requests_total" in response.read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        stderr = server.stderr.read().decode()
        server.stderr.close()
    assert server.returncode == 0, stderr[-3000:]
    assert "Read-only file system" not in stderr, stderr[-3000:]


def test_readme_secrets_commands_make_a_production_overlay_that_renders(tmp_path):
    """deploy/kubernetes/README.md, "Secrets", run as written (your trusted-clients file: the example one),
    in a copy of the tree; then its first block's `kubectl kustomize` commands (not the cluster ones)."""
    import base64

    readme = (KUBERNETES / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    (secrets_block,) = [block for block in blocks if "secrets/cramp.env" in block]
    shutil.copytree(KUBERNETES, tmp_path / "deploy" / "kubernetes", ignore=shutil.ignore_patterns("secrets"))
    script = secrets_block.replace("/path/to/your/trusted-clients.yaml",
                                   str(ROOT / "deploy" / "trusted-clients.example.yaml"))
    made = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert _mode(tmp_path / "deploy/kubernetes/overlays/production/secrets") == 0o700

    render_lines = [line.split("#")[0].split("|")[0].strip() for line in blocks[0].splitlines()
                    if line.startswith("kubectl kustomize")]
    assert len(render_lines) == 2
    for line in render_lines:
        result = subprocess.run([_kubectl(), *line.split()[1:]], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
    production = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    secret = _one(production, "Secret")
    assert re.fullmatch(r"[0-9a-f]{64}", base64.b64decode(secret["data"]["CRAMP_PATIENT_KEY_SECRET"]).decode())
    assert "PASSWORD" in base64.b64decode(secret["data"]["CRAMP_DATABASE_URL"]).decode()  # yours to fill in


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
