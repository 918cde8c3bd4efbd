"""A loopback FHIR Bulk Data server (https://hl7.org/fhir/uv/bulkdata/export.html) for the ``$export``
client's tests (cds_service/fhir/bulk_export.py): a real HTTP server on 127.0.0.1 and a free port.

    with BulkDataServer(resources, token="t0ken", polls_before_ready=2) as server:
        server.base_url           # http://127.0.0.1:PORT/fhir
        server.requests           # every request: (method, path, query, had the right bearer token)

It follows the spec where a client can tell:

* kick-off ``GET [base]/Patient/$export`` or ``[base]/Group/[id]/$export`` only; ``Accept:
  application/fhir+json`` and ``Prefer: respond-async`` required (else 400 OperationOutcome);
  ``_outputFormat`` one of the NDJSON names; ``_type`` known resource types; answers ``202`` with
  ``Content-Location`` (the status URL);
* the status URL answers ``202`` with ``Retry-After`` (``retry_after`` seconds, given as an HTTP date that
  many seconds ahead when ``retry_after_date``) and ``X-Progress`` for ``polls_before_ready`` polls, then ``200`` and the manifest
  (``requiresAccessToken: true``; one output file per type with data; ``error`` files when
  ``error_file`` is set);
* every call needs ``Authorization: Bearer <token>`` (401 OperationOutcome without), downloads included;
* ``DELETE`` on the status URL cancels (202); afterwards the status URL is 404;
* ``fail_status``: the status URL answers that HTTP status with an OperationOutcome (a failed export);
  ``output_origin``: the manifest's file URLs use that origin instead (a file on another host).

It also answers plain searches (``GET [base]/Patient``, ``GET [base]/Condition?patient=ID``, one page) over
the same resources, for the dry run's "FHIR server" source (``fhir/crawler.py``); ``open_searches``: without
the token.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

NDJSON_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
KNOWN_TYPES = {"Patient", "Condition", "MedicationRequest", "MedicationStatement", "Observation", "Procedure",
               "ServiceRequest", "Medication", "Encounter", "Claim", "ExplanationOfBenefit", "Immunization",
               "AllergyIntolerance", "CarePlan", "DiagnosticReport", "Group"}


def outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    authorised: bool
    headers: dict[str, str]


@dataclass
class _Export:
    types: list[str] | None
    polls: int = 0
    deleted: bool = False


class BulkDataServer:
    def __init__(self, resources: list[dict[str, Any]], *, token: str = "bulk-token", polls_before_ready: int = 2,
                 retry_after: int = 3, retry_after_date: bool = False, fail_status: int | None = None,
                 output_origin: str | None = None, error_file: bool = False, groups: tuple[str, ...] = ("all",),
                 open_searches: bool = False):
        self.resources = resources
        self.token = token
        self.polls_before_ready = polls_before_ready
        self.retry_after = retry_after
        self.retry_after_date = retry_after_date
        self.fail_status = fail_status
        self.output_origin = output_origin
        self.error_file = error_file
        self.groups = groups
        self.open_searches = open_searches
        self.requests: list[Seen] = []
        self.searches = 0
        self.exports: dict[str, _Export] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.origin}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "BulkDataServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ what the tests read

    def seen(self, method: str, path_part: str) -> list[Seen]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    def by_type(self, types: list[str] | None) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for resource in self.resources:
            kind = resource["resourceType"]
            if types is None or kind in types:
                grouped.setdefault(kind, []).append(resource)
        return grouped

    # ------------------------------------------------------------ the handler

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                      content_type: str = "application/fhir+json") -> None:
                data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if data:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> tuple[str, dict[str, list[str]], bool]:
                parts = urlsplit(self.path)
                authorised = self.headers.get("Authorization") == f"Bearer {server.token}"
                with server._lock:
                    server.requests.append(Seen(self.command, parts.path, parse_qs(parts.query), authorised,
                                                {k.lower(): v for k, v in self.headers.items()}))
                return parts.path, parse_qs(parts.query), authorised

            def do_GET(self) -> None:
                path, query, authorised = self._record()
                segments = [s for s in path.split("/") if s]
                is_search = len(segments) == 2 and segments[0] == "fhir" and segments[1] in KNOWN_TYPES
                if not authorised and not (is_search and server.open_searches):
                    self._send(401, outcome("login", "a bearer token is required"),
                               {"WWW-Authenticate": "Bearer"})
                    return
                if segments[:1] == ["files"]:
                    self._file(segments[1:])
                elif segments[:2] == ["fhir", "$export-status"] and len(segments) == 3:
                    self._status(segments[2])
                elif segments == ["fhir", "Patient", "$export"] or (
                        len(segments) == 4 and segments[:2] == ["fhir", "Group"] and segments[3] == "$export"):
                    if len(segments) == 4 and segments[2] not in server.groups:
                        self._send(404, outcome("not-found", f"no Group {segments[2]}"))
                        return
                    self._kick_off(query)
                elif is_search:
                    self._search(segments[1], query)
                else:
                    self._send(404, outcome("not-found", "unknown path"))

            def _search(self, kind: str, query: dict[str, list[str]]) -> None:
                """A plain FHIR search (one page), as ``fhir/crawler.py`` reads a server: Patient, or a type
                by ``patient=``; ``_include=MedicationRequest:medication`` adds the Medications."""
                found = server.by_type([kind]).get(kind, [])
                if kind != "Patient":
                    wanted = f"Patient/{query.get('patient', [''])[0]}"
                    found = [r for r in found if (r.get("subject") or r.get("patient") or {}).get("reference")
                             == wanted]
                entries = [{"resource": r, "search": {"mode": "match"}} for r in found]
                if "MedicationRequest:medication" in query.get("_include", []):
                    refs = {(r.get("medicationReference") or {}).get("reference") for r in found}
                    entries += [{"resource": m, "search": {"mode": "include"}}
                                for m in server.by_type(["Medication"]).get("Medication", [])
                                if f"Medication/{m['id']}" in refs]
                server.searches += 1
                self._send(200, {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                                 "entry": entries})

            def do_DELETE(self) -> None:
                path, _, authorised = self._record()
                if not authorised:
                    self._send(401, outcome("login", "a bearer token is required"))
                    return
                segments = [s for s in path.split("/") if s]
                export = server.exports.get(segments[-1]) if segments[:2] == ["fhir", "$export-status"] else None
                if export is None or export.deleted:
                    self._send(404, outcome("not-found", "no such export"))
                    return
                export.deleted = True
                self._send(202, outcome("informational", "export cancelled"))

            def _kick_off(self, query: dict[str, list[str]]) -> None:
                if self.headers.get("Accept") != "application/fhir+json":
                    self._send(400, outcome("invalid", "Accept must be application/fhir+json"))
                    return
                if self.headers.get("Prefer") != "respond-async":
                    self._send(400, outcome("invalid", "Prefer: respond-async is required"))
                    return
                formats = query.get("_outputFormat", ["application/fhir+ndjson"])
                if formats[0] not in NDJSON_FORMATS:
                    self._send(400, outcome("invalid", f"unsupported _outputFormat {formats[0]}"))
                    return
                types = None
                if "_type" in query:
                    types = [t for value in query["_type"] for t in value.split(",") if t]
                    unknown = [t for t in types if t not in KNOWN_TYPES]
                    if unknown:
                        self._send(400, outcome("not-supported", f"unknown _type {', '.join(unknown)}"))
                        return
                job = uuid.uuid4().hex
                server.exports[job] = _Export(types)
                self._send(202, outcome("informational", "export started"),
                           {"Content-Location": f"{server.base_url}/$export-status/{job}"})

            def _status(self, job: str) -> None:
                export = server.exports.get(job)
                if export is None or export.deleted:
                    self._send(404, outcome("not-found", "no such export (expired or cancelled)"))
                    return
                if server.fail_status is not None:
                    self._send(server.fail_status, outcome("exception", "the export failed: out of disk space"))
                    return
                export.polls += 1
                if export.polls <= server.polls_before_ready:
                    retry = (formatdate(timeval=time.time() + server.retry_after, usegmt=True)
                             if server.retry_after_date else str(server.retry_after))
                    self._send(202, None, {"Retry-After": retry,
                                           "X-Progress": f"{export.polls} of {server.polls_before_ready} steps"})
                    return
                origin = server.output_origin or server.origin
                output = [{"type": kind, "url": f"{origin}/files/{job}/{kind}.ndjson", "count": len(items)}
                          for kind, items in sorted(server.by_type(export.types).items())]
                errors = [{"type": "OperationOutcome", "url": f"{origin}/files/{job}/OperationOutcome.ndjson"}] \
                    if server.error_file else []
                self._send(200, {"transactionTime": "2026-12-02T09:00:00Z",
                                 "request": f"{server.base_url}/Patient/$export",
                                 "requiresAccessToken": True, "output": output, "error": errors},
                           content_type="application/json")

            def _file(self, segments: list[str]) -> None:
                if len(segments) != 2 or segments[0] not in server.exports:
                    self._send(404, outcome("not-found", "no such file"))
                    return
                export = server.exports[segments[0]]
                kind = segments[1].removesuffix(".ndjson")
                if kind == "OperationOutcome":
                    lines = [outcome("processing", "1 resource could not be exported")]
                else:
                    lines = server.by_type(export.types).get(kind, [])
                body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines).encode()
                self._send(200, body, content_type="application/fhir+ndjson")

        return Handler


def resources_of_bundles(bundles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every resource of these Bundles, ``urn:uuid:`` references rewritten to ``Type/id`` (as an EHR's
    export holds them)."""
    out = []
    for bundle in bundles:
        urns = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle.get("entry", []) if str(e.get("fullUrl", "")).startswith("urn:uuid:")}
        text = json.dumps([e["resource"] for e in bundle.get("entry", [])])
        for urn, ref in urns.items():
            text = text.replace(f'"{urn}"', f'"{ref}"')
        out += json.loads(text)
    return out
