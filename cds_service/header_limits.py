"""Request-header limits, the same for the server process and the application (docs/security.md).

A CDS client's JWT may be up to 16 KiB (``MAX_TOKEN_BYTES``), so its ``Authorization`` header must get
through both gunicorn and the application. Above the application's limits, the application answers 431
with an OperationOutcome and the security headers. gunicorn's own limits sit above the application's
(``gunicorn_conf.build``), so only a header larger still meets gunicorn's bare 431 (or 414 for a request
line over ``SERVER_REQUEST_LINE_BYTES``): those never reach the application.
"""

from __future__ import annotations

from typing import Mapping

#: The longest CDS client JWT accepted (the compact JWS, without "Bearer ").
MAX_TOKEN_BYTES = 16 * 1024
#: One header line, "Name: value": an ``Authorization: Bearer <16 KiB token>`` fits with room to spare.
MAX_HEADER_FIELD_BYTES = 17 * 1024
#: All header lines of one request together.
MAX_HEADER_BYTES = 64 * 1024

#: gunicorn's ``limit_request_field_size``: above the application's limit, so the application answers first.
SERVER_HEADER_FIELD_BYTES = 32 * 1024
#: gunicorn's ``limit_request_line`` (its largest allowed value); CDS Hooks URLs are short.
SERVER_REQUEST_LINE_BYTES = 8190


def header_over_limit(environ: Mapping[str, object]) -> str | None:
    """Why this request's headers are too large (a message naming the limit), or None when they fit.

    Sizes are those of the header lines as sent (``Name: value``), from the WSGI environ.
    """
    total = 0
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        size = len(name) + 2 + len(str(value))
        if size > MAX_HEADER_FIELD_BYTES:
            header = name.replace("_", "-").title()
            return f"The {header} header is larger than the limit of {MAX_HEADER_FIELD_BYTES} bytes per header."
        total += size
    if total > MAX_HEADER_BYTES:
        return f"The request headers are larger than the limit of {MAX_HEADER_BYTES} bytes in all."
    return None
