"""A small client for calling a CDS Hooks service (what ``cramp-cds invoke`` needs): its discovery, and one
hook call. It follows ``fhir/session.py``'s policy (a timeout on every call, no redirects, no retries: a
hook call is not idempotent for the card ledger) and raises ``fhir/errors.py``'s types when the service
cannot be reached; an HTTP answer of any status is returned, with what a person needs to find it in the
service's log (``X-Request-ID``) and the coarse reason a 401 gives (``WWW-Authenticate``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

import requests

from cds_service.fhir.errors import Invalid
from cds_service.fhir.reader import outcome_diagnostics
from cds_service.fhir.session import build_session, error_from_exception

TIMEOUT_SECONDS = 30.0
_ERROR_DESCRIPTION = re.compile(r'error_description="([^"]*)"')


@dataclass(frozen=True)
class HookAnswer:
    """One answer of the service, whatever its status."""

    status: int
    body: Any  # the JSON, or None
    text: str
    request_id: str | None
    www_authenticate: str | None
    suppressed_header: str | None = None  # X-Cramp-Suppressed-Cards: the card ids held back after an override

    @property
    def suppressed_cards(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in (self.suppressed_header or "").split(",") if part.strip())

    @property
    def auth_category(self) -> str | None:
        """The category a 401's ``WWW-Authenticate`` names (``error_description``), if any."""
        match = _ERROR_DESCRIPTION.search(self.www_authenticate or "")
        return match.group(1) if match else None

    @property
    def diagnostics(self) -> str | None:
        """What an OperationOutcome answer says, its issues' diagnostics joined (the service's own words)."""
        if not isinstance(self.body, dict) or self.body.get("resourceType") != "OperationOutcome":
            return None
        texts = [str(i.get("diagnostics")) for i in self.body.get("issue") or [] if isinstance(i, dict)
                 and i.get("diagnostics")]
        return "; ".join(texts) or outcome_diagnostics(self.body)


class HooksClient:
    def __init__(self, base_url: str, *, session: requests.Session | None = None,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or build_session(pool_size=2, user_agent="cramp-cds integration CLI")
        self.timeout = timeout

    def endpoint(self, service_id: str) -> str:
        return f"{self.base_url}/cds-services/{service_id}"

    def discovery(self) -> HookAnswer:
        return self._send("GET", f"{self.base_url}/cds-services", None, {})

    def call(self, service_id: str, body: Mapping[str, Any], *, bearer: str | None = None,
             as_of: str | None = None) -> HookAnswer:
        """One hook call; ``as_of`` (X-Cramp-As-Of) asks a development-mode service to evaluate at that time."""
        headers = {"Content-Type": "application/json"}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if as_of:
            headers["X-Cramp-As-Of"] = as_of
        return self._send("POST", self.endpoint(service_id), json.dumps(body), headers)

    def _send(self, method: str, url: str, data: str | None, headers: dict[str, str]) -> HookAnswer:
        try:
            response = self.session.request(method, url, data=data, timeout=self.timeout, allow_redirects=False,
                                            headers={"Accept": "application/json", **headers})
        except requests.RequestException as exc:
            raise error_from_exception(exc, url) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if 300 <= response.status_code < 400:
            raise Invalid(f"HTTP {response.status_code}: redirects are not followed", url=url,
                          status=response.status_code)
        return HookAnswer(response.status_code, body, response.text, response.headers.get("X-Request-ID"),
                          response.headers.get("WWW-Authenticate"), response.headers.get("X-Cramp-Suppressed-Cards"))
