"""The service's gunicorn worker (serve/gunicorn_worker.py): a connection whose request has arrived skips
gunicorn's per-connection selector; a silent one still waits in gunicorn's (it must not hold a thread)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from gunicorn.workers.gthread import ThreadWorker

from cds_service.serve.gunicorn_worker import ThreadBoundWorker, request_arrived


def test_request_arrived_peeks_without_reading():
    ours, client = socket.socketpair()
    with ours, client:
        ours.setblocking(False)
        assert request_arrived(ours) is False
        client.sendall(b"POST / HTTP/1.1\r\n")
        assert request_arrived(ours) is True
        assert ours.recv(100) == b"POST / HTTP/1.1\r\n"  # nothing consumed by the peek


def test_a_closed_connection_counts_as_arrived_so_that_reading_ends_it():
    ours, client = socket.socketpair()
    with ours:
        client.close()
        ours.setblocking(False)
        assert request_arrived(ours) is True


def _handled(monkeypatch, sent: bytes) -> SimpleNamespace:
    seen = {}
    monkeypatch.setattr(ThreadWorker, "handle", lambda self, conn: seen.setdefault("data_ready", conn.data_ready))
    ours, client = socket.socketpair()
    with ours, client:
        ours.setblocking(False)
        if sent:
            client.sendall(sent)
        conn = SimpleNamespace(sock=ours, initialized=False, data_ready=False)
        ThreadBoundWorker.handle(object.__new__(ThreadBoundWorker), conn)
    return SimpleNamespace(**seen)


def test_handle_marks_an_arrived_request_ready_and_leaves_a_silent_one_to_gunicorn(monkeypatch):
    assert _handled(monkeypatch, b"GET / HTTP/1.1\r\n\r\n").data_ready is True
    assert _handled(monkeypatch, b"").data_ready is False
