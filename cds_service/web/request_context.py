"""The request id: one per HTTP request, carried by every log line written while serving it.

A client's ``X-Request-ID`` is kept when it is sane (1-128 characters of ``A-Z a-z 0-9 . _ : -``, so it
cannot inject anything into logs or headers); otherwise a new one is generated. The id is echoed in the
response's ``X-Request-ID`` header. ``logs.JsonFormatter`` adds it to each record as ``request_id``.

The id lives in a context variable: gthread workers serve one request per thread, and each thread has
its own context.
"""

from __future__ import annotations

import contextvars
import os
import re

from flask import Flask, Response, g, request

HEADER = "X-Request-ID"
_ENVIRON_KEY = "HTTP_X_REQUEST_ID"  # the WSGI name of HEADER, read without building the headers view
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("cramp_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this thread, or None outside a request."""
    return _current.get()


def request_id_from(header: str | None) -> str:
    """The client's id when sane, else a fresh one (32 hex characters, 128 random bits: the form uuid4().hex
    gave, without building a UUID object for each request)."""
    if header and _SANE.match(header):
        return header
    return os.urandom(16).hex()


def init_app(app: Flask) -> None:
    """Assign an id before every request, echo it after, forget it at teardown."""

    @app.before_request
    def assign_request_id() -> None:
        request_id = request_id_from(request.environ.get(_ENVIRON_KEY))
        g.request_id = request_id
        g.request_id_token = _current.set(request_id)

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers[HEADER] = request_id
        return response

    @app.teardown_request
    def forget_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            _current.reset(token)
