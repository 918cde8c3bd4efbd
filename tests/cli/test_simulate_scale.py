"""``rules simulate`` at scale (issue 15): bulk NDJSON parses only the resource types a prefetch reads, in
two passes (patients located in byte ranges, then each read by the worker that evaluates it) that give
what the one-pass reader gave; a server's records travel to worker processes as orjson bytes; and a shard
of patients runs on a Dask cluster (``--cluster``) with the same answers as the embedded process pool."""

from __future__ import annotations

import json
import pickle
import socket
from datetime import date
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cds_service.admin import bulk, cluster
from cds_service.admin.bulk import read_ndjson, write_ndjson
from cds_service.admin.bulk import read_located
from cds_service.admin.population import (
    TEMPLATE_TYPES, BundleError, PatientRecord, iter_bundle_files, record_from_bundle, record_from_resources, searchset,
)
from cds_service.admin.simulation import Task, build_engines, collect_tasks, evaluate_record, simulate
from cds_service.cli.main import main
from cds_service.ruleset.loader import load_default_ruleset

ROOT = Path(__file__).resolve().parents[2]
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
needs_synthea = pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared Synthea data not found at {SYNTHEA}")
AS_OF = date(2021, 3, 11)


def full_rewrite_record(bundle: dict, source: str) -> PatientRecord:
    """The reader before issue 15, as the oracle: every resource of every type rewritten, then filtered."""
    refs = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle["entry"] if str(e.get("fullUrl", "")).startswith("urn:uuid:")}

    def rewrite(node):
        if isinstance(node, dict):
            return {k: (refs.get(v, v) if k == "reference" and isinstance(v, str) else rewrite(v)) for k, v in node.items()}
        return [rewrite(i) for i in node] if isinstance(node, list) else node

    resources = [rewrite(e["resource"]) for e in bundle["entry"]]
    [patient] = [r for r in resources if r["resourceType"] == "Patient"]
    prefetch = {"patient": patient}
    for key, kind in TEMPLATE_TYPES.items():
        prefetch[key] = searchset([r for r in resources if r["resourceType"] == kind])
    return PatientRecord(str(patient["id"]), source, prefetch)


def synthea_as_ndjson(folder: Path) -> list[dict]:
    """All Synthea bundles as one bulk export (``Type/id`` references, one file per type); the bundles."""
    bundles, resources = [], []
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(path.read_text())
        bundles.append(bundle)
        text = json.dumps([e["resource"] for e in bundle["entry"]])
        for entry in bundle["entry"]:
            ref = f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
            text = text.replace(f'"{entry["fullUrl"]}"', json.dumps(ref))
        resources += json.loads(text)
    write_ndjson(resources, folder)
    return bundles


def outcomes(results) -> dict:
    return {r.patient_id: (r.error, r.runs) for r in results}


@needs_synthea
def test_every_synthea_patient_same_prefetch_and_answers_from_ndjson_bundles_and_the_old_reader(tmp_path):
    bundles = synthea_as_ndjson(tmp_path)
    old = {r.patient_id: r for r in (full_rewrite_record(b, "old") for b in bundles)}
    from_bundles = {r.patient_id: r for r in iter_bundle_files([SYNTHEA])}
    from_ndjson = {r.patient_id: r for r in read_ndjson(sorted(tmp_path.glob("*.ndjson")))}
    assert len(old) == 31 and old.keys() == from_bundles.keys() == from_ndjson.keys()
    for patient_id, record in old.items():
        assert from_bundles[patient_id].prefetch == record.prefetch, patient_id
        assert from_ndjson[patient_id].prefetch == record.prefetch, patient_id

    engines = build_engines([load_default_ruleset()], AS_OF)
    expected = outcomes(evaluate_record(r, engines) for r in old.values())
    assert sum(bool(runs and runs[0].shown) for _, runs in expected.values()) > 0  # some card is shown
    ruleset = load_default_ruleset()
    for source, jobs in ((tmp_path, 2), (SYNTHEA, 1)):
        simulation = simulate([None], [ruleset], collect_tasks([str(source)], []), AS_OF, jobs)
        assert outcomes(simulation.results) == expected


def one_pass_reader(paths: list[Path]) -> dict[str, dict]:
    """The NDJSON reader before the two passes, as the oracle: every line of a read type parsed (json),
    grouped by owner in one pass; Medications by id (the last wins), attached when referenced."""
    patients, by_owner, medications = [], {}, {}
    for path in paths:
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            resource = json.loads(line)
            kind = resource["resourceType"]
            if kind not in bulk.READ_TYPES:
                continue
            if kind == "Patient":
                patients.append((path.name, resource))
            elif kind == "Medication":
                medications[str(resource["id"])] = resource
            else:
                owner = bulk._patient_id(resource.get("subject")) or bulk._patient_id(resource.get("patient"))
                if owner is not None:
                    by_owner.setdefault(owner, []).append(resource)
    prefetches = {}
    for source, patient in patients:
        mine = by_owner.get(str(patient["id"]), [])
        wanted = sorted({r["medicationReference"]["reference"].rsplit("/", 1)[-1] for r in mine
                         if not r.get("medicationReference", {}).get("reference", "#").startswith("#")})
        entries = [patient, *mine, *(medications[m] for m in wanted if m in medications)]
        prefetches[str(patient["id"])] = record_from_resources(entries, source).prefetch
    return prefetches


def synthea_interleaved(folder: Path) -> Path:
    """Every Synthea patient in one file, their resources dealt out in turn (patients not grouped, types
    mixed: many short runs), with CRLF line ends and blank lines."""
    per_type = synthea_as_ndjson(folder / "per-type") and sorted((folder / "per-type").glob("*.ndjson"))
    resources = [json.loads(line) for path in per_type for line in path.read_text().splitlines()]
    queues: dict[str, list] = {}
    for resource in resources:
        owner = bulk._owner(resource) if resource["resourceType"] != "Patient" else resource["id"]
        queues.setdefault(owner or "-", []).append(resource)
    lines = []
    while any(queues.values()):
        for queue in queues.values():
            if queue:
                lines.append(json.dumps(queue.pop(0)))
        lines.append("")
    path = folder / "export.ndjson"
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    return path


WHOLE_FILES = bulk.CHUNK_BYTES  # larger than any test file: one chunk per file
MEDICATION_LINES = [
    '{"resourceType":"Medication","id":"m1","code":{"text":"first m1"}}',
    '{"resourceType":"Patient","id":"p1"}',
    '{"resourceType":"MedicationRequest","id":"r1","subject":{"reference":"Patient/p1"},'
    '"medicationReference":{"reference":"Medication/m2"}}',
    '{"resourceType":"MedicationRequest","id":"r2","subject":{"reference":"Patient/p1"},'
    '"medicationReference":{"reference":"Medication/m1"}}',
    '{"resourceType":"Patient","id":"p2"}',
    '{"resourceType":"MedicationStatement","id":"s1","subject":{"reference":"https://x/fhir/Patient/p2/_history/3"},'
    '"medicationReference":{"reference":"#contained"}}',
    '{"resourceType":"Condition","id":"c0","subject":{"reference":"Patient/nobody"}}',
    '{"resourceType":"Observation","id":"o0"}',
    '{"resourceType":"Medication","id":"m1","code":{"text":"second m1: the last wins"}}',
    '{"resourceType":"Condition","id":"c2","subject":{"reference":"Patient/p2"}}',
    '{"resourceType":"Patient","id":"p1"}',
    '{"resourceType":"Medication","id":"m2"}',
]


@pytest.mark.parametrize("layout", ["per-type", "interleaved", "medications"])
@pytest.mark.parametrize("chunks,jobs", [("whole files", 1), ("small", 1), ("small", 2)])
def test_two_pass_reader_equals_the_one_pass_reader(tmp_path, monkeypatch, layout, chunks, jobs):
    if layout != "medications" and not SYNTHEA.is_dir():
        pytest.skip(f"shared Synthea data not found at {SYNTHEA}")
    if layout == "per-type":
        synthea_as_ndjson(tmp_path)
        paths = sorted(tmp_path.glob("*.ndjson"))
    elif layout == "interleaved":
        paths = [synthea_interleaved(tmp_path)]
    else:
        paths = [tmp_path / "a.ndjson", tmp_path / "b.ndjson"]
        paths[0].write_text("\n".join(MEDICATION_LINES[:6]) + "\n")
        paths[1].write_text("\n".join(MEDICATION_LINES[6:]))  # no newline at the end
    # small chunks cut the files mid-patient; the pool scans them even though the files are small
    chunk_bytes = WHOLE_FILES if chunks == "whole files" else 100 if layout == "medications" else 2048
    monkeypatch.setattr(bulk, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(bulk, "PARALLEL_SCAN_BYTES", 0)
    assert len(bulk._chunks(paths, chunk_bytes)) > (len(paths) if chunks == "small" else 0)
    located = bulk.locate_patients(paths, jobs)
    expected = one_pass_reader(paths)
    assert [lp.patient_id for lp in located] == [pid for pid in expected] + (["p1"] if layout == "medications" else [])
    for lp in located:
        assert read_located(lp).prefetch == expected[lp.patient_id], lp.patient_id
    if layout == "medications":
        p1 = read_located(located[0]).prefetch["medicationRequests"]["entry"]
        assert [(e["resource"]["id"], e["search"]["mode"]) for e in p1] == [
            ("r1", "match"), ("r2", "match"), ("m1", "include"), ("m2", "include")]
        assert p1[2]["resource"]["code"]["text"] == "second m1: the last wins"
        assert [e["resource"]["id"] for e in read_located(located[1]).prefetch["conditions"]["entry"]] == ["c2"]
    if layout == "per-type" and chunks == "whole files":
        # a file grouped by patient: one run per patient and file, whatever its size
        assert max(len(lp.resources) for lp in located) <= len(paths)


def test_a_bad_line_is_numbered_in_its_file_across_chunks(tmp_path, monkeypatch):
    path = tmp_path / "Observation.ndjson"
    good = [f'{{"resourceType":"Observation","id":"o{i}","subject":{{"reference":"Patient/p"}}}}' for i in range(400)]
    path.write_text("\n".join(['{"resourceType":"Patient","id":"p"}', *good, '{"resourceType":"Observation", oops',
                               *good, "[1]"]) + "\n")
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(bulk, "PARALLEL_SCAN_BYTES", 0)
    for jobs in (1, 2):
        with pytest.raises(BundleError, match=r"Observation.ndjson:402: not valid JSON"):
            bulk.locate_patients([path], jobs)


def test_a_file_gone_before_its_scan_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match=r"Patient.ndjson: cannot be read \(No such file or directory\)"):
        bulk.scan_chunk(str(tmp_path / "Patient.ndjson"), 0, 10)


def test_a_file_changed_after_locating_is_refused_not_misread(tmp_path):
    path = tmp_path / "Patient.ndjson"
    path.write_text('{"resourceType":"Patient","id":"p1"}\n{"resourceType":"Condition","id":"c","subject":{"reference":"Patient/p1"}}\n')
    [located] = bulk.locate_patients([path])
    path.write_text('{"resourceType":"Patient","id":"p2"}\n{"resourceType":"Condition","id":"c","subject":{"reference":"Patient/p2"}}\n')
    with pytest.raises(BundleError, match="changed since its patients were located"):
        read_located(located)
    simulation = simulate([None], [load_default_ruleset()], [Task(located=located)], AS_OF, 1)
    assert [(r.patient_id, r.error) for r in simulation.results] == [
        ("p1", f"{path}: changed since its patients were located")]


def test_unread_types_are_skipped_before_json_parsing(tmp_path, monkeypatch):
    path = tmp_path / "mixed.ndjson"
    lines = [
        '{"resourceType":"Patient","id":"p1"}',
        '{"resourceType":"Claim","patient":{"reference":"Patient/p1"}, this is not JSON',  # never parsed
        '{"resourceType": "ExplanationOfBenefit" , "id":"e"}',
        '{"id":"c1","resourceType":"Condition","subject":{"reference":"Patient/p1"}}',  # type not first: parsed
        '{"contained":[{"resourceType":"Claim"}],"resourceType":"Encounter","subject":{"reference":"Patient/p1"}}',
        '{"resourceType":"ClaimResponse","id":"cr"}',
        '',
        '{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}',
    ]
    path.write_text("\n".join(lines) + "\n")
    parsed = []
    real_loads = orjson.loads
    monkeypatch.setattr(bulk.orjson, "loads", lambda data: parsed.append(data) or real_loads(data))
    [record] = read_ndjson([path])
    # pass 1 (where each patient is) parses Patient, Condition, Encounter (type not first), Observation;
    # pass 2 (the record) parses again only the lines it keeps, a run of lines as one array.
    assert [bytes(data) for data in parsed[:4]] == [lines[i].encode() for i in (0, 3, 4, 7)]
    assert [r for data in parsed[4:] for r in real_loads(data)] == [json.loads(lines[i]) for i in (0, 3, 7)]
    assert not any(b"not JSON" in bytes(data) or b"ClaimResponse" in bytes(data) for data in parsed)
    assert [e["resource"]["id"] for e in record.prefetch["conditions"]["entry"]] == ["c1"]
    assert [e["resource"]["id"] for e in record.prefetch["observations"]["entry"]] == ["o1"]


def test_malformed_line_of_a_read_type_names_file_and_line(tmp_path):
    path = tmp_path / "Condition.ndjson"
    path.write_text('{"resourceType":"Patient","id":"p1"}\n{"resourceType":"Condition", oops\n')
    with pytest.raises(BundleError, match=r"Condition.ndjson:2: not valid JSON"):
        list(read_ndjson([path]))
    path.write_text('["resourceType"]\n')
    with pytest.raises(BundleError, match=r"Condition.ndjson:1: not a FHIR resource"):
        list(read_ndjson([path]))


def test_bundle_reader_rewrites_only_read_types():
    bundle = {"resourceType": "Bundle", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}},
        {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Condition", "id": "c",
                                               "subject": {"reference": "urn:uuid:p"}}},
        {"resource": {"resourceType": "Claim", "id": "x", "patient": {"reference": "urn:uuid:p"}}},
    ]}
    record = record_from_bundle(bundle)
    assert record.prefetch["conditions"]["entry"][0]["resource"]["subject"] == {"reference": "Patient/p"}
    assert "Claim" not in json.dumps(record.prefetch)


def test_record_pickles_as_orjson_bytes_and_round_trips():
    record = PatientRecord("p", "src", {"patient": {"resourceType": "Patient", "id": "p", "x": [1.5, None, "é"]}})
    data = pickle.dumps(record)
    assert orjson.dumps(record.prefetch) in data
    assert pickle.loads(data) == record


# ---------------------------------------------------------------- Dask distributed

@pytest.fixture
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    # The scheduler always serves HTTP (health, metrics): on 127.0.0.1 and a free port, never 0.0.0.0:8787,
    # which a second run on the same machine holds (its "port in use" warning fails the test).
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0", worker_dashboard_address=None) as local:
        yield local


@needs_synthea
@pytest.mark.parametrize("source", ["bundles", "ndjson"])
def test_simulate_on_a_dask_cluster_equals_the_process_pool(dask_cluster, tmp_path, monkeypatch, source):
    if source == "ndjson":
        synthea_as_ndjson(tmp_path)  # the Dask workers read each shard's patients from their byte ranges
        assert all(task.located is not None for task in collect_tasks([str(tmp_path)], []))
    folder = tmp_path if source == "ndjson" else SYNTHEA
    address = dask_cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    monkeypatch.setattr(cluster, "SHARD_SIZE", 4)  # 31 patients: 8 shards over the 2 workers
    runner = CliRunner()

    def report(*options):
        result = runner.invoke(main, ["rules", "simulate", "--as-of", "2021-03-11", "--format", "json",
                                      "--rules", str(ROOT / "cds_service" / "data" / "ruleset.yaml"),
                                      *options, str(folder)])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    on_cluster = report("--cluster", address)
    assert on_cluster["patients"] == 31
    # the scheduler computed the 8 shards on its workers
    counts = {name: prefix.state_counts["memory"] for name, prefix in dask_cluster.scheduler.task_prefixes.items()}
    assert counts.get("call") == 8, counts  # dask names the prefix after _call
    assert on_cluster == report("--jobs", "1") == report("--jobs", "2")


def test_unreachable_cluster_is_one_line_exit_2(monkeypatch, tmp_path):
    pytest.importorskip("distributed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_SECONDS", 1)
    (tmp_path / "Patient.ndjson").write_text('{"resourceType":"Patient","id":"p1"}\n')
    result = CliRunner().invoke(main, ["rules", "simulate", "--rules", str(ROOT / "cds_service" / "data" / "ruleset.yaml"),
                                       "--cluster", f"tcp://127.0.0.1:{port}", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"tcp://127.0.0.1:{port}: Dask scheduler not reachable" in result.output
    assert "Traceback" not in result.output


@needs_synthea
def test_spawned_workers_build_their_engines_and_answer_as_forked_ones(monkeypatch):
    """Forked workers inherit the engines built here; spawned ones (macOS, Windows) parse the rule set
    again from its source. Both answer alike."""
    from cds_service.admin import simulation

    tasks = collect_tasks([str(SYNTHEA)], [])[:6]
    ruleset = load_default_ruleset()
    forked = simulate([None], [ruleset], tasks, AS_OF, 2)
    monkeypatch.setattr(simulation, "POOL_START_METHOD", "spawn")
    spawned = simulate([None], [ruleset], tasks, AS_OF, 2)
    assert outcomes(spawned.results) == outcomes(forked.results) and len(forked.results) == 6


def test_jobs_bounds_the_ndjson_scan_too(monkeypatch, tmp_path):
    """``--jobs 1`` is one process for reading bulk NDJSON as for evaluating it (pass 1 ran on every core)."""
    from cds_service.admin import simulation

    scans: list[int | None] = []
    real_locate = simulation.locate_patients

    def locate(paths, jobs=None):
        scans.append(jobs)
        return real_locate(paths, jobs)

    monkeypatch.setattr(simulation, "locate_patients", locate)
    (tmp_path / "Patient.ndjson").write_text('{"resourceType":"Patient","id":"p1","birthDate":"1950-01-01"}\n')
    result = CliRunner().invoke(main, ["rules", "simulate", "--rules", str(ROOT / "cds_service" / "data" / "ruleset.yaml"),
                                       "--jobs", "1", "--as-of", "2021-03-11", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert scans == [1]
