"""``cramp-cds check-server URL``: reads ``URL/metadata`` and says whether the searches the service needs
are declared (docs/integration.md). Exit 1 when a required one is missing, the FHIR version is not 4.0.x
or JSON is not offered, or the server cannot be read (one line naming the cause)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import click

from cds_service.cli.failure import server_failure
from cds_service.fhir.errors import FhirError
from cds_service.fhir.reader import FhirReader

NEEDED_SEARCHES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    # (label, resource type, search parameters, required)
    ("Patient read", "Patient", (), True),
    ("Condition search by patient", "Condition", ("patient",), True),
    ("MedicationRequest search by patient and status", "MedicationRequest", ("patient", "status"), False),
    ("MedicationStatement search by patient", "MedicationStatement", ("patient",), False),
    ("Observation search by patient and code", "Observation", ("patient", "code"), False),
)


@dataclass
class CheckResult:
    label: str
    supported: bool
    required: bool
    note: str


def check_capabilities(capability: Mapping[str, Any]) -> tuple[list[CheckResult], list[str], bool]:
    """(one result per needed search, general lines, ok). ok is False when a required search is missing,
    the FHIR version is not 4.0.x or JSON is not offered."""
    lines: list[str] = []
    ok = True
    version = str(capability.get("fhirVersion", ""))
    version_ok = version.startswith("4.0.")
    ok &= version_ok
    lines.append(f"FHIR version: {version or 'not stated'} ({'R4, fine' if version_ok else 'MUST be 4.0.x (R4)'})")
    formats = [str(f) for f in capability.get("format") or []]
    json_ok = any("json" in f for f in formats)
    ok &= json_ok
    lines.append(f"formats: {', '.join(formats) or 'none stated'}" + ("" if json_ok else " (JSON is required)"))
    rest = next((r for r in capability.get("rest") or [] if isinstance(r, dict) and r.get("mode") == "server"), None)
    resources = {r.get("type"): r for r in (rest or {}).get("resource") or [] if isinstance(r, dict)}
    results = []
    for label, resource_type, params, required in NEEDED_SEARCHES:
        resource = resources.get(resource_type)
        if resource is None:
            results.append(CheckResult(label, False, required, f"{resource_type} is not in the CapabilityStatement"))
            continue
        interactions = {i.get("code") for i in resource.get("interaction") or [] if isinstance(i, dict)}
        wanted = "read" if not params else "search-type"
        missing = [] if wanted in interactions else [f"interaction {wanted}"]
        declared = {p.get("name") for p in resource.get("searchParam") or [] if isinstance(p, dict)}
        missing += [f"search parameter {p}" for p in params if p not in declared]
        if missing:
            results.append(CheckResult(label, False, required, "missing: " + ", ".join(missing)))
        else:
            shown = f"{wanted}" + (f" with {', '.join(params)}" if params else "")
            results.append(CheckResult(label, True, required, shown))
    ok &= all(r.supported for r in results if r.required)
    return results, lines, ok


@click.command("check-server")
@click.argument("url")
@click.option("--fhir-token", default=None, help="Bearer token, if the server wants one for /metadata.")
def check_server(url: str, fhir_token: str | None) -> None:
    """Read URL/metadata and report whether the searches this service needs are supported.

    Exit 1 when the Patient read or the Condition search is missing, the FHIR version is not 4.0.x or JSON
    is not offered; the other searches are optional (the cards then say what could not be checked).
    """
    try:
        capability = FhirReader(url, token=fhir_token).read("metadata", expected="CapabilityStatement")
    except FhirError as error:
        raise server_failure(error, "FHIR server", url) from None
    results, lines, ok = check_capabilities(capability)
    software = capability.get("software") or {}
    click.echo(f"server: {url} ({software.get('name', 'unnamed')} {software.get('version', '')})".rstrip())
    for line in lines:
        click.echo(line)
    for result in results:
        mark = "ok " if result.supported else ("MISSING" if result.required else "missing")
        need = "required" if result.required else "optional"
        click.echo(f"  [{mark}] {result.label} ({need}): {result.note}")
    click.echo("result: " + ("the service can fetch what it needs from this server" if ok
                             else "NOT usable: see the lines marked MISSING / MUST"))
    if not ok:
        raise click.exceptions.Exit(1)
