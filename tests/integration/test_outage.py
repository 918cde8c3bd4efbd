"""A database or Redis that stops answering (STATUS.md rev rows), with the real components: PostgreSQL and
Redis reached through a loopback TCP proxy the test stops and restarts, and a SQLite file another
connection holds locked.

What must hold during the outage: hook calls answer 200 with their cards; a JWT replayed to the same
replica is still refused (each replica falls back to its own memory); feedback is a 503 OperationOutcome
with Retry-After, never a 200 unless stored; /readyz stays 200 and lists the degradation; every fallback
is logged with the exception type (never the token) and counted. After it: everything recovers by itself.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from datetime import timedelta
from typing import Any, Callable

import pytest
from support.feedback import NOW, dvt_request, feedback_rows, fresh_postgres_database, overridden, postgres_url
from support.security import TestIssuer, secure_app

from cds_service.storage import store as store_module

SERVICE = "/cds-services/leg-cramp-patient-view"
FEEDBACK = SERVICE + "/feedback"
RECOVERY_SECONDS = 20  # generous: the replay store is asked again 2 s after a failure (replay.RETRY_SECONDS)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``stop()`` refuses new connections and cuts the open ones
    (the database "went away"), ``start()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.hanging = False
        self.hung: list[socket.socket] = []
        self.start()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def hang(self) -> None:
        """The host stops answering: open connections are cut, new ones are accepted and never served."""
        self.hanging = True
        with self._lock:
            connections, self._open = self._open, []
        for connection in connections:
            _close(connection)

    def stop(self) -> None:
        self.hanging = False
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # shutdown first: a bare close() leaves the accept() in progress listening
        with self._lock:
            connections, self._open = self._open, []
        for connection in connections + self.hung:
            _close(connection)
        self.hung = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            if self.hanging:
                self.hung.append(client)  # held open, never answered
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


_APPS: list[Any] = []  # every Replica's app: each counts into its own registry (web/metrics.py)


def _counter(name: str, **labels: str) -> float:
    """A counter's value, added up over the replicas made so far (as one process-wide registry would)."""
    from cds_service.web.metrics import metrics_of

    return sum(metrics_of(app).registry.get_sample_value(name + "_total", labels) or 0.0 for app in _APPS)


class Replica:
    """One service process as production runs it (JWT authentication on), seen through its test client."""

    def __init__(self, directory, issuer: TestIssuer, **settings: Any) -> None:
        directory.mkdir(exist_ok=True)
        self.app = secure_app(directory, issuer, **settings)
        _APPS.append(self.app)
        self.client = self.app.test_client()
        self.issuer = issuer

    def hook(self, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        headers = headers or self.issuer.headers(SERVICE)
        response = self.client.post(SERVICE, json=dvt_request(), headers=headers)
        return response.status_code, headers, response.get_json(silent=True)

    def feedback(self, card_uuid: str, minutes: int) -> Any:
        item = overridden(card_uuid, at=NOW + timedelta(minutes=minutes))
        return self.client.post(FEEDBACK, json={"feedback": [item]}, headers=self.issuer.headers(FEEDBACK))

    def readyz(self) -> dict:
        response = self.client.get("/readyz")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()


def _cards(answer: Any) -> list[str]:
    return [card["source"]["topic"]["code"] for card in answer["cards"]]


def _eventually(check: Callable[[], bool], seconds: float = RECOVERY_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.2)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged():
    """The service's log records (on its own logger: configure_logging replaces the root's handlers)."""
    handler = _Records()
    logger = logging.getLogger("cds_service")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _assert_outage_logged_without_tokens(logged: _Records, issuer: TestIssuer, message: str) -> None:
    records = [r for r in logged.records if r.getMessage().startswith(message)]
    assert records and all(getattr(r, "error_type", "") for r in records), message
    for record in logged.records:
        text = record.getMessage() + " " + repr(record.__dict__)
        assert not any(token in text for token in issuer.minted), "a token was logged"


# --- PostgreSQL ------------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_outage_serves_cards_refuses_feedback_and_recovers(tmp_path, monkeypatch, logged) -> None:
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        proxy = TcpProxy((host, port))
        try:
            issuer = TestIssuer.create()
            replica = Replica(tmp_path / "a", issuer, database_url=postgres_url("127.0.0.1", proxy.port, name))
            status, _, answer = replica.hook()
            assert status == 200 and _cards(answer), answer
            expected_cards = _cards(answer)
            card = answer["cards"][0]["uuid"]
            assert replica.feedback(card, minutes=1).status_code == 200
            assert replica.readyz() == {"status": "ready"}
            counts = {op: _counter("cramp_ledger_unavailable", operation=op)
                      for op in ("record_shown", "suppression_check", "feedback")}
            fallbacks = _counter("cramp_replay_fallback", store="database")

            proxy.stop()  # the database goes away
            status, headers, answer = replica.hook()
            assert (status, _cards(answer)) == (200, expected_cards)
            assert replica.hook(headers)[0] == 401  # a replay to the same replica is still refused
            assert replica.hook()[0] == 200
            refused = replica.feedback(card, minutes=2)
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) > 0
            assert refused.get_json()["resourceType"] == "OperationOutcome"
            degraded = replica.readyz()["degraded"]
            assert any(item.startswith("database: not reachable (") for item in degraded), degraded
            assert any(item.startswith("replay store (database)") for item in degraded), degraded
            assert _counter("cramp_replay_fallback", store="database") >= fallbacks + 2
            assert _counter("cramp_ledger_unavailable", operation="record_shown") >= counts["record_shown"] + 2
            assert _counter("cramp_ledger_unavailable", operation="feedback") == counts["feedback"] + 1
            _assert_outage_logged_without_tokens(logged, issuer, "JWT replay store unavailable")
            _assert_outage_logged_without_tokens(logged, issuer, "cards shown not recorded")

            proxy.start()  # back: nothing to restart
            _eventually(lambda: replica.hook()[0] == 200 and replica.readyz() == {"status": "ready"})
            status, headers, answer = replica.hook()
            assert (status, _cards(answer)) == (200, expected_cards)
            assert replica.feedback(answer["cards"][0]["uuid"], minutes=3).status_code == 200
            assert replica.feedback(card, minutes=4).status_code == 200
            assert len(feedback_rows(replica.app.extensions["leg_cramp_store"])) == 3
            other = Replica(tmp_path / "b", issuer, database_url=postgres_url(host, port, name))
            assert other.hook(headers)[0] == 401  # shared again: the other replica knows the token
        finally:
            proxy.stop()


@pytest.mark.postgres
def test_postgres_host_not_answering_costs_one_connect_timeout_not_one_per_call(tmp_path, monkeypatch) -> None:
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        proxy = TcpProxy((host, port))
        try:
            issuer = TestIssuer.create()
            replica = Replica(tmp_path / "a", issuer, database_url=postgres_url("127.0.0.1", proxy.port, name))
            status, _, answer = replica.hook()
            assert status == 200 and _cards(answer)
            expected_cards = _cards(answer)

            proxy.hang()  # connections are accepted, never answered: each attempt waits connect_timeout
            answers = [replica.hook() for _ in range(5)]
            assert [(status, _cards(body)) for status, _, body in answers] == [(200, expected_cards)] * 5
            assert replica.hook(answers[-1][1])[0] == 401
            assert "degraded" in replica.readyz()
            # one attempt waited its timeout; the calls after it did not ask the database again
            assert len(proxy.hung) <= 2, len(proxy.hung)

            proxy.stop()
            proxy.start()
            _eventually(lambda: replica.hook()[0] == 200 and replica.readyz() == {"status": "ready"})
        finally:
            proxy.stop()


# --- SQLite ----------------------------------------------------------------------------------------------
def test_sqlite_locked_by_another_connection_serves_cards_and_refuses_feedback(tmp_path, logged) -> None:
    path = tmp_path / "cards.sqlite3"
    issuer = TestIssuer.create()
    replica = Replica(tmp_path / "a", issuer, database_url=f"sqlite:///{path}")
    status, _, answer = replica.hook()
    assert status == 200 and _cards(answer)
    expected_cards, card = _cards(answer), answer["cards"][0]["uuid"]
    with replica.app.extensions["leg_cramp_store"].engine.connect() as connection:
        busy_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert 0 < busy_ms <= 1000  # no call waits seconds on a lock (it was 5000)
    shown = _counter("cramp_ledger_unavailable", operation="record_shown")

    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process writing for a long time
    try:
        status, headers, answer = replica.hook()
        assert (status, _cards(answer)) == (200, expected_cards)
        assert replica.hook(headers)[0] == 401
        refused = replica.feedback(card, minutes=1)
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert _counter("cramp_ledger_unavailable", operation="record_shown") >= shown + 1
        assert "replay store (database)" in " ".join(replica.readyz().get("degraded", []))
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # /readyz alone sees the recovery (its probe, once the retry interval has passed): no hook call needed
    _eventually(lambda: replica.readyz() == {"status": "ready"})
    _assert_outage_logged_without_tokens(logged, issuer, "cards shown not recorded")
    assert replica.feedback(card, minutes=2).status_code == 200
    assert len(feedback_rows(replica.app.extensions["leg_cramp_store"])) == 1


def test_store_timeouts_are_short() -> None:
    assert store_module.LOCK_TIMEOUT_MS <= 1000
    assert store_module.CONNECT_TIMEOUT_SECONDS <= 2
    assert store_module.WRITE_QUEUE_SECONDS <= 1


# --- Redis -----------------------------------------------------------------------------------------------
def _redis_or_skip() -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping()
    except redis.exceptions.RedisError:
        pytest.skip("no Redis answering on 127.0.0.1:6379")


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_nothing_listening_falls_back_to_memory(tmp_path, logged) -> None:
    pytest.importorskip("redis")
    issuer = TestIssuer.create()
    replica = Replica(tmp_path / "a", issuer, redis_url=f"redis://127.0.0.1:{_unused_port()}/15")
    fallbacks = _counter("cramp_replay_fallback", store="redis")
    status, headers, answer = replica.hook()
    assert status == 200 and _cards(answer)
    assert replica.hook(headers)[0] == 401
    assert _counter("cramp_replay_fallback", store="redis") >= fallbacks + 1
    assert any(item.startswith("replay store (redis): not reachable (ConnectionError)")
               for item in replica.readyz()["degraded"])
    _assert_outage_logged_without_tokens(logged, issuer, "JWT replay store unavailable")


def test_redis_outage_through_a_proxy_falls_back_and_recovers(tmp_path) -> None:
    _redis_or_skip()
    proxy = TcpProxy(("127.0.0.1", 6379))
    try:
        issuer = TestIssuer.create()
        url = f"redis://127.0.0.1:{proxy.port}/15"
        first, second = Replica(tmp_path / "a", issuer, redis_url=url), Replica(tmp_path / "b", issuer, redis_url=url)
        status, headers, _ = first.hook()
        assert status == 200 and second.hook(headers)[0] == 401  # shared

        proxy.stop()
        status, headers, answer = first.hook()
        assert status == 200 and _cards(answer)
        assert first.hook(headers)[0] == 401
        assert "replay store (redis)" in " ".join(first.readyz()["degraded"])

        proxy.start()
        _eventually(lambda: first.hook()[0] == 200 and first.readyz() == {"status": "ready"})
        status, headers, _ = first.hook()
        assert status == 200 and second.hook(headers)[0] == 401  # shared again
    finally:
        proxy.stop()
