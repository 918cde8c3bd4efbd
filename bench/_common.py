"""Helpers shared by the load benchmarks (bench_load.py, soak.py): request bodies from the Synthea
patients, starting and stopping a gunicorn-served app on loopback, a paced (open-loop) load generator,
worker RSS. Benchmarks only: nothing here ships in the package.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
SERVICE_PATH = "/cds-services/leg-cramp-patient-view"
BASELINE_PATH = "/baseline"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def synthea_bodies(limit: int | None = None) -> list[bytes]:
    """patient-view requests with full prefetch, one per Synthea patient."""
    sys.path.insert(0, str(ROOT))
    from cds_service.admin.population import iter_bundle_files

    if not SYNTHEA.is_dir():
        raise SystemExit(f"Synthea patients not found at {SYNTHEA} (../shared next to the repository)")
    records = list(iter_bundle_files([SYNTHEA]))[:limit]
    return [json.dumps(r.hook_request()).encode() for r in records]


def discovery_prefetch(prefetch: dict, templates) -> dict:
    """What a FHIR server answers to the service's own discovery templates for a patient whose data is
    ``prefetch`` (a population record's, every resource of each type): each key's Bundle keeps the entries
    the template's search parameters select (``code=`` any coding's code in the list, ``status=`` the
    status), as an EHR sends it. Medications included with the requests stay only when a kept request
    names them."""
    from urllib.parse import parse_qsl

    chosen: dict = {}
    for template in templates:
        value = prefetch.get(template.key)
        if template.key == "patient" or not isinstance(value, dict):
            if value is not None:
                chosen[template.key] = value
            continue
        params = [(name, set(values.split(","))) for name, values in parse_qsl(template.query.split("?", 1)[-1])
                  if name != "patient"]

        def selected(resource: dict) -> bool:
            for name, values in params:
                if name == "code" and not any(c.get("code") in values
                                              for c in (resource.get("code") or {}).get("coding") or []):
                    return False
                if name == "status" and resource.get("status") not in values:
                    return False
            return True

        entries = [e for e in value.get("entry") or [] if e["resource"].get("resourceType") != "Medication"
                   and selected(e["resource"])]
        named = {(e["resource"].get("medicationReference") or {}).get("reference") for e in entries}
        entries += [e for e in value.get("entry") or [] if e["resource"].get("resourceType") == "Medication"
                    and f"Medication/{e['resource'].get('id')}" in named]
        chosen[template.key] = {**value, "entry": entries}
    return chosen


def synthea_discovery_bodies(limit: int | None = None) -> list[bytes]:
    """patient-view requests as an EHR sends them after reading our discovery (``discovery_prefetch``)."""
    sys.path.insert(0, str(ROOT))
    from cds_service.admin.population import iter_bundle_files
    from cds_service.engine.pipeline import Engine

    templates = Engine.default().registry.get("leg-cramp-patient-view").templates
    records = list(iter_bundle_files([SYNTHEA]))[:limit]
    return [json.dumps({**r.hook_request(), "prefetch": discovery_prefetch(r.prefetch, templates)}).encode()
            for r in records]


def write_bodies(bodies: list[bytes], directory: Path) -> list[Path]:
    paths = []
    for index, body in enumerate(bodies):
        path = directory / f"body-{index:03d}.json"
        path.write_bytes(body)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    path: str
    log_path: Path
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(kind: str, *, workers: int | None, threads: int | None, extra_env: dict | None = None,
                 production: "ProductionPath | None" = None) -> Server:
    """``kind``: "service" (cramp-cds serve --dev, or without --dev on ``production``: signed requests,
    the replay check, production logging) or "baseline" (bench/baseline_app.py), same gunicorn settings."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cramp-bench-{kind}-"))
    port = free_port()
    options = ["--port", str(port)]
    if workers:
        options += ["--workers", str(workers)]
    if threads:
        options += ["--threads", str(threads)]
    if kind == "service":
        dev = [] if production else ["--dev"]
        command = [sys.executable, "-m", "cds_service.cli.main", "serve", *dev, *options]
        path = SERVICE_PATH
    else:
        command = [sys.executable, str(ROOT / "bench" / "baseline_app.py"), *options]
        path = BASELINE_PATH
    env = {
        **os.environ,
        "CRAMP_DATABASE_URL": f"sqlite:///{workdir / 'cards.sqlite3'}",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        # Not read in development mode; without --dev (a run with client JWTs) the audience is this URL.
        "CRAMP_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        **(production.server_env(workdir) if production else {}),
        **(extra_env or {}),
    }
    if production:
        env.pop("CRAMP_DEV_MODE", None)
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    server = Server(kind, process, port, path, log_path, workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{kind} server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        server.stop()
        raise SystemExit(f"{kind} server not healthy within 30 s")
    time.sleep(0.5)  # let every worker finish booting
    return server


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (/proc/<pid>/stat); a process gone adds 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of the line, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """Resident set size in MiB (psutil when installed, else /proc/<pid>/status VmRSS)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def warm_up(server: Server, bodies: list[bytes], rounds: int = 2, production: "ProductionPath | None" = None) -> None:
    """Every worker imports and compiles what it needs before the timed runs."""
    duration = max(1.0, rounds * len(bodies) / 200.0)
    tokens = production.tokens(server, int(200 * duration) + 1) if production else None
    results = paced_load(server, bodies, rate=200.0, duration=duration, threads=8, tokens=tokens)
    if results.errors:
        raise SystemExit(f"warm-up against {server.name}: {results.errors} errors ({results.error_kinds})")


# --------------------------------------------------------------------------- paced load (open loop)

@dataclass
class PacedResult:
    rate: float
    duration: float
    sent: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, from the scheduled send time

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


def paced_load(server: Server, bodies: list[bytes], *, rate: float, duration: float, threads: int = 16,
               on_window=None, window_seconds: float = 30.0, tokens: list[str] | None = None) -> PacedResult:
    """Send ``rate`` requests per second for ``duration`` seconds at fixed inter-arrival times.

    Request i is due at start + i / rate; a pool of threads, each with its own keep-alive connection,
    takes the next due request. Latency counts from the *due* time, so a stalled server cannot hide its
    queueing (no coordinated omission). ``on_window(index, window_result)`` is called every
    ``window_seconds`` with that window's figures. ``tokens``: request i carries ``Bearer tokens[i]``
    (made ahead, one fresh jti each; at least rate x duration of them).
    """
    result = PacedResult(rate, duration)
    total = int(rate * duration)
    lock = threading.Lock()
    next_index = [0]
    start = time.perf_counter() + 0.2
    window: list[PacedResult] = [PacedResult(rate, window_seconds)]

    def record(latency: float | None, error: str | None) -> None:
        with lock:
            for target in (result, window[0]):
                target.sent += 1
                if error:
                    target.errors += 1
                    target.error_kinds[error] = target.error_kinds.get(error, 0) + 1
                else:
                    target.latencies.append(latency)

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= total:
                break
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            body = bodies[index % len(bodies)]
            try:
                headers = {"Content-Type": "application/json"}
                if tokens is not None:
                    headers["Authorization"] = f"Bearer {tokens[index % len(tokens)]}"
                connection.request("POST", server.path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                error = None if response.status == 200 else f"http_{response.status}"
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            record(time.perf_counter() - due, error)
        connection.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    if on_window is not None:
        index = 0
        while any(thread.is_alive() for thread in pool):
            end = start + (index + 1) * window_seconds
            while time.perf_counter() < end and any(thread.is_alive() for thread in pool):
                time.sleep(0.2)
            with lock:
                finished, window[0] = window[0], PacedResult(rate, window_seconds)
            on_window(index, finished)
            index += 1
    for thread in pool:
        thread.join()
    result.duration = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- wrk (closed loop, max throughput)

WRK_SCRIPT = """
-- Posts the request bodies listed in BODIES_LIST, round robin; prints a JSON summary at the end.
local paths = {}
for line in io.lines(os.getenv("BODIES_LIST")) do paths[#paths + 1] = line end
local bodies = {}
for i, p in ipairs(paths) do
  local f = assert(io.open(p, "rb")); bodies[i] = f:read("*a"); f:close()
end
-- TOKENS_LIST (optional): one client JWT per line, each sent once (a fresh jti per request).
local tokens = {}
local tokens_path = os.getenv("TOKENS_LIST")
if tokens_path and tokens_path ~= "" then
  for line in io.lines(tokens_path) do tokens[#tokens + 1] = line end
end
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local headers = nil
  if #tokens > 0 then
    -- past the last token the request goes without one: a 401, counted as an error (never a replay)
    headers = {["Content-Type"] = "application/json"}
    if counter <= #tokens then headers["Authorization"] = "Bearer " .. tokens[counter] end
  end
  return wrk.format(nil, nil, headers, bodies[(counter % #bodies) + 1])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def have_wrk() -> bool:
    from shutil import which

    return which("wrk") is not None


def run_wrk(server: Server, body_paths: list[Path], *, duration: float, connections: int, threads: int = 1,
            tokens: list[str] | None = None) -> dict:
    """Closed-loop maximum throughput. ``tokens``: one per request, made ahead (run out: 401 errors)."""
    workdir = server.workdir
    tokens_list = workdir / "tokens.txt"
    tokens_list.write_text("".join(f"{t}\n" for t in tokens or []))
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    listing = workdir / "bodies.txt"
    listing.write_text("\n".join(str(p) for p in body_paths) + "\n")
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
               "-s", str(script), server.url]
    workers = server.worker_pids()
    cpu_before = cpu_seconds(workers)
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "BODIES_LIST": str(listing),
                                                               "TOKENS_LIST": str(tokens_list) if tokens else ""},
                         timeout=duration + 60)
    worker_cpu = cpu_seconds(workers) - cpu_before
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout}\n{out.stderr}")
    figures = json.loads(line[len("WRK_JSON "):])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["errors"] = sum(figures[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    # The server's workers' CPU a request answered (gunicorn master excluded): the cost the throughput
    # ratio reflects, without the load generator's share of the 2 cores.
    figures["cpu_ms"] = worker_cpu * 1000 / max(1, figures["requests"])
    return figures


# --------------------------------------------------------------------------- the production path

@dataclass
class ProductionPath:
    """The service as deployed: no development mode, a trusted client whose signed JWT (ES384, a fresh
    jti each, made ahead with auth/client_keys.py) every request carries, the replay check on
    ``replay`` ("database": the card store's database, SQLite unless ``database_url``; or "redis"), and
    production logging (one JSON ``hook answered`` line per request, no per-request warning)."""

    replay: str = "database"
    database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    issuer: str = "https://ehr.bench.example"

    def __post_init__(self) -> None:
        from cds_service.auth import client_keys

        self._keys = client_keys
        self._key = client_keys.generate_private_key("ES384")

    @property
    def name(self) -> str:
        store = "redis" if self.replay == "redis" else (
            "postgres" if (self.database_url or "").startswith("postgresql") else "sqlite")
        return f"prod/{store}"

    def server_env(self, workdir: Path) -> dict[str, str]:
        import yaml

        (workdir / "jwks.json").write_text(json.dumps(self._keys.public_jwks(self._key)))
        entry = self._keys.trusted_client_entry(self.issuer, algorithm="ES384", jwks_file="jwks.json")
        (workdir / "trusted-clients.yaml").write_text(yaml.safe_dump({"clients": [entry]}))
        env = {"CRAMP_TRUSTED_CLIENTS_FILE": str(workdir / "trusted-clients.yaml"),
               "CRAMP_PATIENT_KEY_SECRET": "bench-patient-key-secret-0123456789"}
        if self.database_url:
            env["CRAMP_DATABASE_URL"] = self.database_url
        if self.replay == "redis":
            env["CRAMP_REDIS_URL"] = self.redis_url
        return env

    def tokens(self, server: Server, count: int) -> list[str]:
        """``count`` signed tokens for ``server``'s endpoint, made now (they live 5 minutes)."""
        audience = f"http://127.0.0.1:{server.port}{server.path}"
        return [self._keys.make_client_token(self._key, issuer=self.issuer, audience=audience) for _ in range(count)]


@contextmanager
def postgres_database(host: str = "127.0.0.1", port: int = 5432):
    """A fresh PostgreSQL database for one benchmark run (dropped after): its SQLAlchemy URL."""
    import uuid

    import psycopg

    name = f"cramp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"host={host} port={port} user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@{host}:{port}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
