"""``cramp-cds load-fixtures URL``: loads ``fhir_fixtures/*/request.json`` and FHIR transaction Bundles
(Synthea) into a FHIR server with stable ids (``PUT Type/id``): one transaction Bundle per source file, or
one PUT per resource when the server offers no transactions (docs/integration.md)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import click

from cds_service.cli.failure import InputError, server_failure
from cds_service.fhir.errors import FhirError
from cds_service.fhir.reader import FhirReader

TRANSACTION_TIMEOUT_SECONDS = 120.0
NO_TRANSACTIONS = (404, 405, 501)  # a server refusing the Bundle as unsupported


def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{what} {path}: not valid JSON ({exc})") from None


@dataclass
class LoadReport:
    written: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    mode: str = "transaction"

    def lines(self) -> list[str]:
        out = [f"loaded ({self.mode}): {sum(self.written.values())} resources"]
        out += [f"  {kind}: {count}" for kind, count in sorted(self.written.items())]
        out += [f"FAILED: {failure}" for failure in self.failures]
        return out


def _walk_references(node: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: (mapping.get(value, value) if key == "reference" and isinstance(value, str)
                      else _walk_references(value, mapping)) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk_references(item, mapping) for item in node]
    return node


def transaction_resources(bundle: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The resources of a transaction/collection Bundle with their own ids kept; ``urn:uuid:`` (and absolute
    ``fullUrl``) references rewritten to ``Type/id``. InputError names the entry without an id."""
    entries = bundle.get("entry") or []
    mapping: dict[str, str] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not resource.get("resourceType"):
            raise InputError(f"{source}: entry[{index}].resource: missing or without resourceType")
        if not resource.get("id"):
            raise InputError(f"{source}: entry[{index}].resource.id: needed for a stable id")
        if isinstance(entry.get("fullUrl"), str):
            mapping[entry["fullUrl"]] = f"{resource['resourceType']}/{resource['id']}"
    return [_walk_references(entry["resource"], mapping) for entry in entries]


def fixture_resources(request_body: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """A fixture request's prefetch resources. Fixture ids (c1, o1...) are unique only within one file, so every
    resource but the Patient gets the patient id as prefix (``fixture-05-c1``); references follow."""
    context = request_body.get("context") or {}
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str):
        raise InputError(f"{source}: context.patientId: missing")
    resources: list[dict[str, Any]] = []
    for key, value in (request_body.get("prefetch") or {}).items():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in value.get("entry") or []
                          if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        elif value.get("resourceType") != "OperationOutcome":
            resources.append(value)
    mapping: dict[str, str] = {}
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for index, resource in enumerate(resources):
        kind, rid = resource.get("resourceType"), resource.get("id")
        if not kind or not rid:
            raise InputError(f"{source}: prefetch resource {index}: resourceType and id are needed")
        new_id = rid if kind == "Patient" or rid.startswith(f"{patient_id}-") else f"{patient_id}-{rid}"
        mapping[f"{kind}/{rid}"] = f"{kind}/{new_id}"
        unique[(kind, rid)] = {**resource, "id": new_id}
    return [_walk_references(resource, mapping) for resource in unique.values()]


def _put_entry(resource: Mapping[str, Any]) -> dict[str, Any]:
    ref = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": ref, "resource": resource, "request": {"method": "PUT", "url": ref}}


def _failure_text(error: FhirError) -> str:
    return error.reason + (f" ({error.detail})" if error.detail else "")


def _put_each(reader: FhirReader, resources: list[dict[str, Any]], source: str, report: LoadReport) -> None:
    for resource in resources:
        ref = f"{resource['resourceType']}/{resource['id']}"
        try:
            reader.write("PUT", ref, resource)
        except FhirError as error:
            report.failures.append(f"{source}: PUT {ref}: {_failure_text(error)}")
        else:
            report.written[resource["resourceType"]] += 1


def _supports_transactions(capability: Mapping[str, Any]) -> bool:
    for rest in capability.get("rest") or []:
        if isinstance(rest, dict) and rest.get("mode") == "server":
            return any(isinstance(i, dict) and i.get("code") == "transaction" for i in rest.get("interaction") or [])
    return False


def load_sources(base_url: str, sources: Iterable[tuple[str, list[dict[str, Any]]]],
                 reader: FhirReader | None = None, token: str | None = None,
                 progress: Callable[[str], None] | None = None) -> LoadReport:
    """PUT every source's resources (``Type/id``) into the FHIR server: one transaction Bundle per source, or one
    PUT per resource when the server does not offer transactions (or refuses the Bundle as unsupported).
    A server that cannot be read at all is a ``RunError`` (one line)."""
    reader = reader or FhirReader(base_url, token=token)
    try:
        capability = reader.read("metadata", expected="CapabilityStatement")
    except FhirError as error:
        raise server_failure(error, "FHIR server", base_url) from None
    report = LoadReport(mode="transaction" if _supports_transactions(capability) else "individual PUTs")
    for source, resources in sources:
        if report.mode == "transaction":
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [_put_entry(r) for r in resources]}
            try:
                reader.write("POST", "", bundle, timeout=TRANSACTION_TIMEOUT_SECONDS)
            except FhirError as error:
                if error.status not in NO_TRANSACTIONS:
                    report.failures.append(f"{source}: transaction: {_failure_text(error)}")
                    continue
                report.mode = "individual PUTs"  # the server refuses transactions after all
            else:
                report.written.update(r["resourceType"] for r in resources)
                if progress:
                    progress(f"{source}: {len(resources)} resources")
                continue
        _put_each(reader, resources, source, report)
        if progress:
            progress(f"{source}: {len(resources)} resources")
    return report


def fixture_sources(fixtures_dir: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    files = sorted(fixtures_dir.glob("*/request.json"))
    if not files:
        raise InputError(f"--fixtures {fixtures_dir}: no */request.json in it")
    return [(str(path), fixture_resources(read_json_file(path, "fixture"), str(path))) for path in files]


def synthea_sources(directory: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    files = sorted(directory.glob("*.json")) if directory.is_dir() else [directory]
    sources = []
    for path in files:
        bundle = read_json_file(path, "--synthea")
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            continue  # e.g. a manifest next to the bundles
        sources.append((str(path), transaction_resources(bundle, str(path))))
    if not sources:
        raise InputError(f"--synthea {directory}: no FHIR Bundle files in it")
    return sources


@click.command("load-fixtures")
@click.argument("url")
@click.option("--fixtures", "fixtures_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of hand-worked fixtures (*/request.json). [default: ./fhir_fixtures if present]")
@click.option("--synthea", "synthea_dir", type=click.Path(path_type=Path), default=None,
              help="Folder (or file) of FHIR transaction Bundles, e.g. ../shared/data/synthea-r4.")
@click.option("--fhir-token", default=None, help="Bearer token for the FHIR server.")
def load_fixtures(url: str, fixtures_dir: Path | None, synthea_dir: Path | None, fhir_token: str | None) -> None:
    """Load fixtures and transaction Bundles into a FHIR server with stable ids (PUT Type/id)."""
    if fixtures_dir is None and Path("fhir_fixtures").is_dir():
        fixtures_dir = Path("fhir_fixtures")
    for option, path in (("--fixtures", fixtures_dir), ("--synthea", synthea_dir)):
        if path is not None and not path.exists():
            raise InputError(f"{option} {path}: no such file or folder")
    if fixtures_dir is None and synthea_dir is None:
        raise InputError("nothing to load: give --fixtures and/or --synthea (no ./fhir_fixtures here)")
    sources = (fixture_sources(fixtures_dir) if fixtures_dir else []) + (
        synthea_sources(synthea_dir) if synthea_dir else [])
    report = load_sources(url, sources, token=fhir_token)
    click.echo(f"{len(sources)} source file(s) into {url}")
    for line in report.lines():
        click.echo(line)
    if report.failures:
        raise click.exceptions.Exit(1)
