"""What every request gets from the app's own hooks (web/app.py, web/request_context.py), built once at app
creation and cheap per call: the security headers once each (a view's own kept), the request id, and no
session opened outside the admin console."""

from __future__ import annotations

import re

from flask import Response
from support.app import make_app
from support.hook_requests import SERVICE_URL, minimal_request

from cds_service.web.app import SECURITY_HEADERS, ConsoleOnlySessions


def test_a_cds_call_gets_each_security_header_once(client):
    response = client.post(SERVICE_URL, json=minimal_request())
    assert response.status_code == 200
    for header, value in SECURITY_HEADERS.items():
        assert response.headers.getlist(header) == [value]


def test_a_header_the_view_set_is_kept():
    app = make_app()

    @app.get("/own-csp")
    def own_csp() -> Response:
        return Response("x", headers={"content-security-policy": "default-src 'self'", "Cache-Control": "max-age=1"})

    response = app.test_client().get("/own-csp")
    assert response.headers.getlist("Content-Security-Policy") == ["default-src 'self'"]
    assert response.headers.getlist("Cache-Control") == ["max-age=1"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_generated_request_ids_are_32_hex_characters_and_differ(client):
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_a_session_is_opened_on_the_console_paths_only():
    app = make_app()
    assert isinstance(app.session_interface, ConsoleOnlySessions)
    assert app.secret_key, "the console is on in the test app: its session must work"
    interface = app.session_interface
    for path, console in (("/admin", True), ("/admin/rules", True), (SERVICE_URL, False), ("/healthz", False),
                          ("/administrator", False)):
        with app.test_request_context(path):
            from flask import request

            session = interface.open_session(app, request)
            assert interface.is_null_session(session) is not console, path
