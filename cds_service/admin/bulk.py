"""Patients from FHIR bulk data (NDJSON: one resource per line, e.g. a ``$export`` output folder), grouped
per patient by the ``subject`` / ``patient`` reference, and turned into the same ``PatientRecord`` a
Bundle file gives (``population.record_from_resources``).

Two passes, so that neither the reading nor the grouping is serial and no parsed resource crosses a
process boundary (docs/perf-dry-run.md):

1. ``locate_patients`` scans the files in byte ranges (``CHUNK_BYTES``; over a process pool when the
   files are large), parsing the lines of read types, and keeps per patient only *where* its resources
   are: its Patient line, the runs of consecutive lines that hold its resources, and the Medications its
   records reference (``LocatedPatient``: a few integers, cheap to send anywhere).
2. ``read_located`` (in the dry run's worker, ``simulation.run_shard``) reads those byte ranges again,
   each run parsed as one JSON array (one orjson call, no Python per line). Every line of a run was found
   in pass 1 to be this patient's resource of a read type, so pass 2 need not ask again; a file changed
   in between (size or modification time) is refused instead.

Only the resource types a prefetch holds (``population.READ_TYPES``) are parsed: a bulk export is mostly
Claims, ExplanationOfBenefits and Encounters, which no rule reads. A line that begins with its
``resourceType`` (as bulk exports write them) is skipped from that prefix without JSON parsing when its
type is not read; any other line is parsed (orjson) to learn its type. A malformed line of a skipped
type is therefore not reported. No reference is rewritten: bulk data already uses ``Type/id``.

Used by the admin tooling (``rules simulate``, the console's dry runs); the service itself never reads
files of patients. ``Medication`` resources (which name no patient) are attached to every patient whose
medication records reference them; other resources that name no patient are skipped.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from cds_service.admin.population import (
    READ_TYPES, BundleError, PatientRecord, cyclic_gc_paused, record_from_resources,
)

NDJSON_SUFFIXES = (".ndjson", ".jsonl")
# `{"resourceType":"Claim",` at the start of a line: the top-level type, read without parsing the line.
_LEADING_TYPE = re.compile(rb'[ \t]*\{[ \t]*"resourceType"[ \t]*:[ \t]*"([A-Za-z]{1,64})"[ \t]*[,}]')
_READ_TYPES = frozenset(kind.encode() for kind in READ_TYPES)
_SKIPPED = object()
# A scan reads this much of a file at a time: the unit the pool balances, and a worker's memory bound.
CHUNK_BYTES = 16 * 2**20
# Below this many bytes in all, the files are scanned in this process: a pool would cost more than it saves.
PARALLEL_SCAN_BYTES = 32 * 2**20

Span = tuple[int, int, int]  # (index of the file, first byte, end byte): whole lines of that file
Stamp = tuple[int, int]  # a file's (size, modification time in ns) when pass 1 read it


def is_ndjson(path: Path) -> bool:
    return path.name.lower().endswith(NDJSON_SUFFIXES)


def _patient_id(reference: Any) -> str | None:
    """``Patient/123``, ``https://x/fhir/Patient/123`` or ``Patient/123/_history/2`` -> ``123``."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    text = reference["reference"]
    if text.startswith("Patient/") and text.count("/") == 1 and text != "Patient/Patient":
        return text[8:] or None  # the usual form, without splitting (it is asked of every resource)
    parts = text.split("/")
    if "Patient" in parts:
        index = len(parts) - 1 - parts[::-1].index("Patient")
        if index + 1 < len(parts) and parts[index + 1]:
            return parts[index + 1]
    return None


def _owner(resource: dict[str, Any]) -> str | None:
    return _patient_id(resource.get("subject")) or _patient_id(resource.get("patient"))


def _medication_refs(resource: dict[str, Any]) -> list[str]:
    if "medicationReference" not in resource:
        return []
    reference = (resource.get("medicationReference") or {}).get("reference")
    if isinstance(reference, str) and not reference.startswith("#"):
        return [reference.rsplit("/", 1)[-1]]
    return []


def _parse_line(data: bytes, start: int, end: int) -> dict[str, Any] | object:
    """The resource on the line ``data[start:end]``; ``_SKIPPED`` for a blank line or one of a type the
    prefetch does not read (not parsed when its prefix names the type). Raises ``ValueError`` with the
    reason for a line that is not a resource."""
    leading = _LEADING_TYPE.match(data, start, end)
    if leading is not None and leading.group(1) not in _READ_TYPES:
        return _SKIPPED
    line = data[start:end]
    if leading is None and not line.strip():
        return _SKIPPED
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise ValueError("not a FHIR resource (no resourceType)")
    return resource if resource["resourceType"] in READ_TYPES else _SKIPPED


def _lines(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of ``data``, without its newline; no copy of the data."""
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", start)
        end = size if end < 0 else end
        yield start, end
        start = end + 1


# ---------------------------------------------------------------- pass 1: where each patient is

@dataclass
class ChunkScan:
    """What one byte range of one file holds, with offsets from the range's start. ``error``: the first
    line that is not a resource, as (line number within the range, reason); the scan stops there."""

    lines: int = 0
    patients: list[tuple[str, int, int]] = field(default_factory=list)  # (id, start, end)
    runs: list[tuple[str, int, int]] = field(default_factory=list)  # (owner, start, end)
    medication_refs: list[tuple[str, str]] = field(default_factory=list)  # (owner, Medication id)
    medications: list[tuple[str, int, int]] = field(default_factory=list)  # (id, start, end)
    error: tuple[int, str] | None = None


def scan_chunk(path: str, start: int, end: int) -> ChunkScan:
    """Pass 1 over ``path[start:end]`` (whole lines). A run is a stretch of consecutive lines each holding
    a resource of one patient (a read type other than Patient and Medication): a file of one type grouped
    by patient, as exports write them, gives one run per patient."""
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
    except OSError as exc:  # removed or unreadable since the ranges were planned
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    scan = ChunkScan()
    run_owner: str | None = None  # the owner of scan.runs[-1] while it may still grow
    with cyclic_gc_paused():
        for number, (line_start, line_end) in enumerate(_lines(data), start=1):
            scan.lines = number
            try:
                resource = _parse_line(data, line_start, line_end)
            except ValueError as exc:
                scan.error = (number, str(exc))
                return scan
            if not isinstance(resource, dict):
                run_owner = None
                continue
            kind = resource["resourceType"]
            owner = None
            if kind == "Patient":
                if not resource.get("id"):
                    scan.error = (number, "Patient without an id")
                    return scan
                scan.patients.append((str(resource["id"]), line_start, line_end))
            elif kind == "Medication":
                if resource.get("id"):
                    scan.medications.append((str(resource["id"]), line_start, line_end))
            else:
                owner = _owner(resource)
            if owner is None:
                run_owner = None
                continue
            if owner == run_owner:
                scan.runs[-1] = (owner, scan.runs[-1][1], line_end)
            else:
                scan.runs.append((owner, line_start, line_end))
                run_owner = owner
            scan.medication_refs += [(owner, ref) for ref in _medication_refs(resource)]
    return scan


@dataclass(frozen=True, slots=True)  # a million of them in a large run: no per-instance dict
class LocatedPatient:
    """Where one patient's resources are in the NDJSON ``files`` (one tuple shared by every patient of a
    read, so a pickled shard holds it once; ``stamps``: each file as pass 1 found it): its Patient line,
    the runs of lines holding its resources in file order, and the Medications its records reference,
    in the order of their ids."""

    files: tuple[str, ...]
    stamps: tuple[Stamp, ...]
    source: str  # the name of its Patient's file
    patient_id: str
    patient: Span
    resources: tuple[Span, ...]
    medications: tuple[Span, ...]


def _stamp(path: Path) -> Stamp:
    try:
        status = path.stat()
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    return status.st_size, status.st_mtime_ns


def _chunks(paths: list[Path], size: int) -> list[tuple[int, str, int, int]]:
    """(file index, path, start, end) ranges of at most about ``size`` bytes, each ending after a newline."""
    chunks = []
    for index, path in enumerate(paths):
        try:
            total = path.stat().st_size
            with path.open("rb") as handle:
                start = 0
                while start < total:
                    handle.seek(min(start + size, total))
                    handle.readline()  # to the end of the line the nominal boundary falls in
                    end = min(handle.tell(), total)
                    chunks.append((index, str(path), start, end))
                    start = end
        except OSError as exc:
            raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    return chunks


def _scan_all(chunks: list[tuple[int, str, int, int]], jobs: int) -> list[ChunkScan]:
    total = sum(end - start for _, _, start, end in chunks)
    if jobs <= 1 or len(chunks) <= 1 or total < PARALLEL_SCAN_BYTES:
        return [scan_chunk(path, start, end) for _, path, start, end in chunks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(scan_chunk, *zip(*[(path, start, end) for _, path, start, end in chunks])))


def _raise_first_error(paths: list[Path], chunks: list[tuple[int, str, int, int]], scans: list[ChunkScan]) -> None:
    """The first bad line in file and line order, numbered in its file (the chunks before it were scanned
    to their end, so their line counts are whole)."""
    lines_before = 0
    for (index, _, start, _), scan in zip(chunks, scans):
        lines_before = 0 if start == 0 else lines_before
        if scan.error is not None:
            number, reason = scan.error
            raise BundleError(f"{paths[index]}:{lines_before + number}: {reason}")
        lines_before += scan.lines


def locate_patients(paths: list[Path], jobs: int | None = None) -> list[LocatedPatient]:
    """Pass 1: every patient in ``paths`` (read together: a Patient file and its Condition, Observation ...
    files), in the order their Patient resources appear, on ``jobs`` processes (default: CPU count).
    Raises ``BundleError`` naming the file and line of the first bad line."""
    stamps = tuple(_stamp(path) for path in paths)  # before the scan: a change during it is caught too
    chunks = _chunks(paths, CHUNK_BYTES)
    scans = _scan_all(chunks, jobs or os.cpu_count() or 1)
    _raise_first_error(paths, chunks, scans)
    files = tuple(str(path) for path in paths)
    names = [path.name for path in paths]  # one string per file, shared by its patients
    patients: list[tuple[int, str, Span]] = []  # (file index, id, its line)
    runs: dict[str, list[Span]] = {}
    wanted: dict[str, set[str]] = {}
    medications: dict[str, Span] = {}  # the last of an id wins, as a dict of resources would keep it
    for (index, _, offset, _), scan in zip(chunks, scans):
        patients += [(index, pid, (index, offset + s, offset + e)) for pid, s, e in scan.patients]
        for owner, s, e in scan.runs:
            runs.setdefault(owner, []).append((index, offset + s, offset + e))
        for owner, ref in scan.medication_refs:
            wanted.setdefault(owner, set()).add(ref)
        medications.update((mid, (index, offset + s, offset + e)) for mid, s, e in scan.medications)
    return [
        LocatedPatient(files, stamps, names[index], pid, span, tuple(runs.get(pid, ())),
                       tuple(medications[m] for m in sorted(wanted.get(pid, ())) if m in medications))
        for index, pid, span in patients
    ]


# ---------------------------------------------------------------- pass 2: one patient's record

def _read_spans(located: LocatedPatient, spans: list[Span]) -> list[bytes]:
    """The bytes of each span, each file opened once and checked to be as pass 1 found it."""
    out: list[bytes] = []
    handles: dict[int, int] = {}
    try:
        for index, start, end in spans:
            if index not in handles:
                handles[index] = os.open(located.files[index], os.O_RDONLY)
                status = os.fstat(handles[index])
                if (status.st_size, status.st_mtime_ns) != located.stamps[index]:
                    raise BundleError(f"{located.files[index]}: changed since its patients were located")
            out.append(os.pread(handles[index], end - start, start))
    except OSError as exc:
        raise BundleError(f"{exc.filename or located.source}: cannot be read ({exc.strerror})") from None
    finally:
        for handle in handles.values():
            os.close(handle)
    return out


def _run_resources(block: bytes, where: str) -> list[dict[str, Any]]:
    """The resources of a run's lines (each a resource, pass 1 found): one JSON array, one parse."""
    try:
        return orjson.loads(b"[" + block.replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"{where}: not valid JSON ({exc.msg})") from None


def read_located(located: LocatedPatient) -> PatientRecord:
    """Pass 2: the patient's record from its byte ranges. Raises ``BundleError`` (a file changed since
    pass 1, or cannot be read)."""
    blocks = _read_spans(located, [located.patient, *located.resources, *located.medications])
    with cyclic_gc_paused():
        entries = [resource for block in blocks for resource in _run_resources(block, located.source)]
        return record_from_resources(entries, located.source)


def read_ndjson(paths: list[Path], jobs: int | None = 1) -> Iterator[PatientRecord]:
    """Every patient in ``paths``, in the order their Patient resources appear (both passes, here).
    Raises ``BundleError`` naming the file and line."""
    for located in locate_patients(paths, jobs):
        yield read_located(located)


def write_ndjson(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Write resources as one NDJSON file per resource type (``<Type>.ndjson``), as a bulk export does."""
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in records:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    written = []
    for kind, resources in sorted(by_type.items()):
        path = folder / f"{kind}.ndjson"
        path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in resources), encoding="utf-8")
        written.append(path)
    return written
