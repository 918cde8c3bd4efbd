"""A FHIR Bulk Data Access client (https://hl7.org/fhir/uv/bulkdata/export.html): the ``$export`` of an
EHR's patients, for the admin console's dry runs (``admin/dry_run.py``) and nothing on the hook path.

    client = BulkExportClient("https://ehr.example.org/fhir", token="...", group_id=None)
    files = client.export(folder)          # kick-off, poll, download: [Path of each NDJSON file]

1. **Kick-off**: ``GET [base]/Patient/$export`` (or ``[base]/Group/[id]/$export``) with
   ``Accept: application/fhir+json``, ``Prefer: respond-async``, ``_outputFormat=application/fhir+ndjson``
   and ``_type`` limited to the types the prefetch reads (``population.READ_TYPES``, passed in). The
   server answers ``202 Accepted`` with ``Content-Location``: the status URL.
2. **Polling** the status URL: ``202`` while in progress (``X-Progress`` is passed to ``on_progress``),
   waiting what ``Retry-After`` says (seconds or an HTTP date; else ``DEFAULT_POLL_SECONDS``, each wait at
   most ``MAX_POLL_SECONDS``) within ``max_wait_seconds`` in all, then ``Unavailable(cause="deadline")``.
   ``429`` is waited out the same way. ``200`` brings the manifest.
3. **Downloads**: each ``output`` file streamed to the folder (``<n>.<Type>.ndjson``), with the bearer
   token when the manifest says ``requiresAccessToken``. The manifest's ``error`` files (OperationOutcomes)
   are downloaded too and counted (``BulkExport.error_files``).
4. **Cancel**: ``DELETE`` on the status URL (``cancel``), also done when ``should_stop`` says so while
   polling, or when the download fails part-way (the server may then free the files).

Policy (``fhir/session.py``): one session, a timeout on every call, no redirects followed, no cookies.
The status URL and every output URL must be on the export server's origin (scheme, host and port) or under
an entry of ``allowed_output_prefixes``; anything else is refused (``RefusedByPolicy``) and nothing is sent
there, so a manifest cannot send the bearer token elsewhere. Errors are ``fhir/errors.py`` types: a 4xx or
5xx with an OperationOutcome carries its diagnostics in ``detail``; ``404``/``410`` on the status URL means
the export expired or is unknown (``NotFound``). The token is never logged, nor put in an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlencode, urljoin

import requests

from cds_service.fhir.errors import FhirError, Invalid, NotFound, RefusedByPolicy, TooLarge, Unavailable
from cds_service.fhir.reader import outcome_diagnostics, parse_json, read_body
from cds_service.fhir.session import (FHIR_JSON, ServerBase, build_session, error_for_status,
                                      error_from_exception, parse_server_url, retry_after_seconds)

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
TIMEOUT_SECONDS = 30.0
DEFAULT_POLL_SECONDS = 5.0  # when the server gives no Retry-After
MIN_POLL_SECONDS = 0.0
MAX_POLL_SECONDS = 120.0  # one wait, whatever Retry-After asks
DEFAULT_MAX_WAIT_SECONDS = 6 * 3600.0  # the whole export
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 8 * 1024 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


class ExportCancelled(Exception):
    """``should_stop`` asked to stop; the export was cancelled on the server (DELETE)."""


@dataclass(frozen=True)
class ExportFile:
    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True)
class Manifest:
    transaction_time: str | None
    request: str | None
    requires_access_token: bool
    output: tuple[ExportFile, ...]
    error: tuple[ExportFile, ...]


@dataclass(frozen=True)
class BulkExport:
    """What ``export`` downloaded."""

    manifest: Manifest
    files: tuple[Path, ...]  # the output NDJSON files, in manifest order
    error_files: tuple[Path, ...]  # the OperationOutcome NDJSON files the server reported
    polls: int


class BulkExportClient:
    """One export from one server (see the module docstring)."""

    def __init__(self, base_url: str, *, token: str | None = None, group_id: str | None = None,
                 types: Iterable[str] = (), since: str | None = None, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS, timeout: float = TIMEOUT_SECONDS,
                 allowed_output_prefixes: Iterable[str] = (),
                 on_progress: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        try:
            self.base, _ = parse_server_url(self.base_url)
        except ValueError as exc:
            raise RefusedByPolicy(f"not a usable FHIR base URL: it {exc}", url=base_url) from None
        if group_id is not None and (not group_id or "/" in group_id or "?" in group_id or "#" in group_id):
            raise RefusedByPolicy("not a usable Group id", url=base_url)
        self._origin = ServerBase(self.base.scheme, self.base.host, self.base.port, ())
        self._allowed: list[ServerBase] = [self._origin]
        for prefix in allowed_output_prefixes:
            try:
                self._allowed.append(parse_server_url(prefix)[0])
            except ValueError as exc:
                raise RefusedByPolicy(f"allowed output prefix {prefix!r}: it {exc}") from None
        self._token = token
        self.session = session or build_session(pool_size=2)  # no token here: sent only where it may go
        self.group_id = group_id
        self.types = tuple(types)
        self.since = since
        self._sleep = sleep
        self._clock = clock
        self.max_wait_seconds = max_wait_seconds
        self.timeout = timeout
        self._on_progress = on_progress or (lambda _text: None)
        self._should_stop = should_stop or (lambda: False)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "BulkExportClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the whole export

    def export(self, folder: Path) -> BulkExport:
        """Kick off, poll until the manifest, download every file into ``folder``."""
        status_url = self.kick_off()
        manifest, polls = self.wait(status_url)  # cancels on the server itself when it gives up
        try:
            files = self.download_all(manifest.output, folder, manifest.requires_access_token, "output")
            errors = self.download_all(manifest.error, folder, manifest.requires_access_token, "error")
        except BaseException:
            self._delete_quietly(status_url)
            raise
        self._delete_quietly(status_url)  # done with it: the server may free the files (spec: optional)
        return BulkExport(manifest, tuple(files), tuple(errors), polls)

    # ------------------------------------------------------------ kick-off

    def kick_off_url(self) -> str:
        path = f"Group/{self.group_id}/$export" if self.group_id else "Patient/$export"
        params = {"_outputFormat": NDJSON}
        if self.types:
            params["_type"] = ",".join(self.types)
        if self.since:
            params["_since"] = self.since
        return f"{self.base_url}/{path}?{urlencode(params, safe=',$:')}"

    def kick_off(self) -> str:
        """The status URL (``Content-Location`` of the 202)."""
        url = self.kick_off_url()
        response = self._call("GET", url, headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
                              authorised=True)
        with response:
            if response.status_code != 202:
                raise self._error(response, url, what="the export kick-off")
            location = response.headers.get("Content-Location")
        if not location:
            raise Invalid("the export kick-off answered 202 without a Content-Location", url=url, status=202)
        return self._checked_url(urljoin(url, location), "the status URL")

    # ------------------------------------------------------------ polling

    def wait(self, status_url: str) -> tuple[Manifest, int]:
        """Poll ``status_url`` until the manifest; (manifest, number of polls)."""
        started = self._clock()
        polls = 0
        while True:
            if self._should_stop():
                self.cancel(status_url)
                raise ExportCancelled()
            polls += 1
            response = self._call("GET", status_url, headers={"Accept": FHIR_JSON}, authorised=True)
            with response:
                status = response.status_code
                if status == 200:
                    body = parse_json(read_body(response, max_bytes=MAX_MANIFEST_BYTES, url=status_url),
                                      url=status_url, status=200)
                    return parse_manifest(body, status_url), polls
                if status not in (202, 429):
                    raise self._error(response, status_url, what="the export status")
                progress = response.headers.get("X-Progress")
                delay = retry_after_seconds(response.headers.get("Retry-After"))
            if progress:
                self._on_progress(progress[:100])
            delay = DEFAULT_POLL_SECONDS if delay is None else delay
            delay = min(max(delay, MIN_POLL_SECONDS), MAX_POLL_SECONDS)
            waited = self._clock() - started
            if waited + delay > self.max_wait_seconds:
                self._delete_quietly(status_url)
                raise Unavailable(f"the export was not ready within {self.max_wait_seconds:g} s; cancelled",
                                  cause="deadline", url=status_url)
            self._sleep(delay)

    def cancel(self, status_url: str) -> None:
        """``DELETE`` the export (202 expected; 404/410: already gone, fine)."""
        response = self._call("DELETE", status_url, headers={"Accept": FHIR_JSON}, authorised=True)
        with response:
            if response.status_code in (200, 202, 204, 404, 410):
                return
            raise self._error(response, status_url, what="the export cancel")

    def _delete_quietly(self, status_url: str) -> None:
        try:
            self.cancel(status_url)
        except FhirError as error:
            log.info("bulk export: DELETE of the status URL failed", extra={"server": error.server,
                                                                            "status": error.status})

    # ------------------------------------------------------------ downloads

    def download_all(self, files: Iterable[ExportFile], folder: Path, requires_token: bool,
                     prefix: str) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for number, item in enumerate(files, start=1):
            if self._should_stop():
                raise ExportCancelled()
            safe_type = "".join(c for c in item.type if c.isalnum())[:64] or "Resource"
            target = folder / f"{prefix}-{number:04d}.{safe_type}.ndjson"
            self.download(item.url, target, requires_token)
            written.append(target)
        return written

    def download(self, url: str, target: Path, requires_token: bool) -> int:
        """Stream one file to ``target``; its size in bytes."""
        url = self._checked_url(url, "an output URL")
        response = self._call("GET", url, headers={"Accept": NDJSON}, authorised=requires_token, stream=True)
        size = 0
        with response:
            if response.status_code != 200:
                raise self._error(response, url, what="a download")
            try:
                with target.open("wb") as handle:
                    for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                        size += len(chunk)
                        if size > MAX_FILE_BYTES:
                            raise TooLarge("an export file is too large", url=url, status=200)
                        handle.write(chunk)
            except requests.RequestException as exc:
                error = error_from_exception(exc, url)
                error.reason = "the connection failed while downloading an export file"
                raise error from None
        return size

    # ------------------------------------------------------------ one call

    def _call(self, method: str, url: str, *, headers: dict[str, str], authorised: bool,
              stream: bool = True) -> requests.Response:
        headers = dict(headers)
        if authorised and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            return self.session.request(method, url, headers=headers, timeout=self.timeout,
                                        allow_redirects=False, stream=stream)
        except requests.RequestException as exc:
            raise error_from_exception(exc, url) from None

    def _checked_url(self, url: str, what: str) -> str:
        try:
            target, path_query = parse_server_url(url, allow_query=True)
        except ValueError as exc:
            raise RefusedByPolicy(f"{what} is not usable: it {exc}", url=url) from None
        if not any(target.is_under(allowed) for allowed in self._allowed):
            raise RefusedByPolicy(f"{what} is not on the export server ({self._origin.origin}) nor allowlisted;"
                                  " not fetched", url=url)
        return target.origin + path_query

    @staticmethod
    def _error(response: requests.Response, url: str, *, what: str) -> FhirError:
        status = response.status_code
        try:
            body = parse_json(read_body(response, max_bytes=MAX_MANIFEST_BYTES, url=url), url=url, status=status)
        except FhirError:
            body = None
        error = error_for_status(status, url) or Invalid(f"HTTP {status}", url=url, status=status)
        if isinstance(error, NotFound) and "status" in what:
            error.reason = f"HTTP {status}: the export expired or is unknown to the server"
        elif status == 202 or 200 <= status < 300:
            error = Invalid(f"{what} answered HTTP {status}", url=url, status=status)
        else:
            error.reason = f"{what}: {error.reason}"
        error.args = (error.reason,)
        error.detail = outcome_diagnostics(body)
        return error


def parse_manifest(body: Any, url: str) -> Manifest:
    """The completion manifest, checked: ``output`` and ``error`` lists of {type, url[, count]}."""
    if not isinstance(body, dict):
        raise Invalid("the export manifest is not a JSON object", url=url, status=200)
    if body.get("resourceType") == "OperationOutcome":
        error = Invalid("the export status answered an OperationOutcome", url=url, status=200)
        error.detail = outcome_diagnostics(body)
        raise error

    def files(key: str) -> tuple[ExportFile, ...]:
        items = body.get(key) or []
        if not isinstance(items, list):
            raise Invalid(f"the export manifest's {key} is not a list", url=url, status=200)
        found = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("type"), str) \
                    or not isinstance(item.get("url"), str):
                raise Invalid(f"an entry of the export manifest's {key} has no type or url", url=url, status=200)
            count = item.get("count")
            found.append(ExportFile(item["type"], urljoin(url, item["url"]),
                                    count if isinstance(count, int) else None))
        return tuple(found)

    requires = body.get("requiresAccessToken")
    if not isinstance(requires, bool):
        raise Invalid("the export manifest has no requiresAccessToken true/false", url=url, status=200)
    return Manifest(
        transaction_time=body.get("transactionTime") if isinstance(body.get("transactionTime"), str) else None,
        request=body.get("request") if isinstance(body.get("request"), str) else None,
        requires_access_token=requires,
        output=files("output"),
        error=files("error"),
    )


__all__ = ["BulkExport", "BulkExportClient", "ExportCancelled", "ExportFile", "Manifest", "parse_manifest"]
