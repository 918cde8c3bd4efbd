"""How the integration commands fail: one line, its cause first (issue 16 item 1).

    InputError (exit 2)   bad usage or input: a file, a field, an option; the message names it
    RunError (exit 1)     a server could not be reached or answered wrongly

``server_failure`` turns a typed ``FhirError`` (fhir/errors.py) into that line, from its type and
``cause``, e.g. ``FHIR server http://127.0.0.1:9 is not answering (connection refused)``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import click

from cds_service.fhir.errors import AuthFailed, FhirError, NotFound, RefusedByPolicy, Unavailable


class InputError(click.ClickException):
    """Bad usage or input (a file, a field, an option): exit 2, the message names what is wrong."""

    exit_code = 2


class RunError(click.ClickException):
    """A server could not be reached or answered wrongly: exit 1."""

    exit_code = 1


def _as_http(url: str) -> str:
    return urlunsplit(("http", *urlsplit(url)[1:]))


def describe(error: FhirError, role: str, base: str) -> str:
    """The one line for ``error`` met talking to ``role`` (``FHIR server``, ``CDS service``) at ``base``."""
    base = base.rstrip("/")
    if isinstance(error, Unavailable):
        if error.cause in ("connection_refused", "connection"):
            return f"{role} {base} is not answering ({error.reason})"
        if error.cause == "plain_http":
            return f"{role} {base} speaks plain HTTP, not TLS: use {_as_http(base)}"
        if error.cause in ("timeout", "deadline"):
            return f"{role} {base} did not answer in time ({error.reason})"
        if error.cause in ("dns", "tls"):
            return f"{role} {base}: {error.reason}"
        return f"{role} {base} is unavailable: {error.reason} for {error.url}"
    detail = f" ({error.detail})" if error.detail else ""
    if isinstance(error, AuthFailed):
        return f"{role} {base} refused the credentials ({error.reason}{detail}) for {error.url}: check --fhir-token"
    if isinstance(error, NotFound):
        return f"{error.url}: not found ({error.reason}{detail})"
    if isinstance(error, RefusedByPolicy):
        return f"{error.url or base}: {error.reason}"
    return f"{error.url or base}: {error.reason}{detail}"


def server_failure(error: FhirError, role: str, base: str) -> RunError:
    return RunError(describe(error, role, base))
