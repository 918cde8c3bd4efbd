"""The card store on every hook call: the replay insert (one statement, its durability on SQLite), the
suppression query (one for all of a call's candidate cards), ``record_shown``, and how many connection
checkouts a hook call costs. Real SQLite files; the replay semantics also on PostgreSQL (marked postgres),
through psycopg, the driver production uses.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import event
from support.feedback import (NOW, SECRET, SERVICE_ID, Service, accepted, dvt_request, fresh_postgres_database,
                              overridden, postgres_url, track_stores)
from support.hook_requests import PATIENT_ID, minimal_request, patient_resource, searchset

from cds_service.engine.ledger import ShownCard
from cds_service.hooks.feedback import parse_feedback
from cds_service.storage.replay import ReplayStoreUnavailable
from cds_service.storage import store as store_module
from cds_service.storage.store import CardStore, _statements

ISSUER = "https://ehr.example"
FULL, NORMAL = 2, 1  # PRAGMA synchronous
SUGGESTION = "3f0e8a52-8c1d-4d6e-9a41-0b6f5c2d7e19"


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch) -> Iterator[str]:
    stores = track_stores(monkeypatch)
    yield f"sqlite:///{tmp_path / 'cards.sqlite3'}"
    for store in stores:
        store.close()


@pytest.fixture
def postgres_database(monkeypatch) -> Iterator[str]:
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        yield postgres_url(host, port, name)


def _clocked_store(url: str, now: list[datetime]) -> CardStore:
    return CardStore(url, SECRET, clock=lambda: now[0])


def _shown(patient_key: str, rule: str = "conservative-care") -> ShownCard:
    return ShownCard(str(uuid.uuid4()), (SUGGESTION,), SERVICE_ID, rule, "2026.12.1", "info", str(uuid.uuid4()),
                     patient_key, NOW)


def _overridden_at(store: CardStore, card: ShownCard, at: datetime) -> None:
    items = parse_feedback({"feedback": [overridden(card.card_uuid, at=at)]})
    assert store.record_feedback(SERVICE_ID, items).stored == 1


# --- the replay insert: same answers, across stores and databases -----------------------------------------
def _replay_semantics(url: str) -> None:
    """Two stores on one database (two replicas): a live token is a replay at either; once expired, its row
    is taken over by the next use of the same (issuer, jti), which is then live again."""
    now = [NOW]
    first, second = _clocked_store(url, now), _clocked_store(url, now)
    expires = (NOW + timedelta(minutes=5)).timestamp()
    assert first.seen_before("jti-1", ISSUER, expires) is False
    assert second.seen_before("jti-1", ISSUER, expires) is True
    assert first.seen_before("jti-1", ISSUER, expires) is True
    assert second.seen_before("jti-1", "https://other.example", expires) is False  # per issuer
    now[0] = NOW + timedelta(minutes=5, seconds=1)  # expired: the row may be reused
    later = (now[0] + timedelta(minutes=5)).timestamp()
    assert second.seen_before("jti-1", ISSUER, later) is False
    assert first.seen_before("jti-1", ISSUER, later) is True  # reused with the new expiry: live again
    now[0] = NOW + timedelta(minutes=9)  # before the new expiry: still a replay
    assert first.seen_before("jti-1", ISSUER, later) is True
    with first.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM jwt_seen").scalar() == 2  # one row per token


def test_replay_on_two_stores_sharing_a_sqlite_file(sqlite_url) -> None:
    _replay_semantics(sqlite_url)


@pytest.mark.postgres
def test_replay_on_two_stores_sharing_postgres(postgres_database) -> None:
    _replay_semantics(postgres_database)


@pytest.mark.postgres
def test_expired_token_taken_over_by_two_stores_at_once_on_postgres_is_accepted_once(postgres_database) -> None:
    """ON CONFLICT DO UPDATE ... WHERE re-reads the row the other transaction committed: one winner."""
    now = [NOW]
    stores = [_clocked_store(postgres_database, now) for _ in range(2)]
    expires = (NOW + timedelta(minutes=5)).timestamp()
    rounds = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for n in range(20):
            jti = f"jti-{n}"
            now[0] = NOW
            assert stores[0].seen_before(jti, ISSUER, expires) is False
            now[0] = NOW + timedelta(minutes=6)  # expired for both
            start = threading.Barrier(2)

            def use(store: CardStore, jti: str = jti, start: threading.Barrier = start) -> bool:
                start.wait()
                return store.seen_before(jti, ISSUER, expires + 600)

            rounds.append(sorted(pool.map(use, stores)))
    assert rounds == [[False, True]] * 20


def test_replay_inserts_of_many_threads_and_two_stores_beside_durable_writes_each_accept_a_token_once(
        sqlite_url) -> None:
    """The replay insert waits for SQLite's lock, not for this process's write turn: under threads of two
    stores (two workers) and FULL writes holding the lock meanwhile, no call times out, no token is accepted
    twice, every fresh one once."""
    stores = [CardStore(sqlite_url, SECRET, clock=lambda: NOW) for _ in range(2)]
    expires = (NOW + timedelta(minutes=5)).timestamp()
    key = stores[0].patient_key("patient-1")

    def use(n: int) -> bool:
        store = stores[n % 2]
        if n % 10 == 0:  # a FULL transaction (an fsync) among the replay inserts
            store.record_shown([_shown(key)])
        return store.seen_before(f"jti-{n // 2}", ISSUER, expires)  # every token twice, once at each store

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(use, range(400)))
    assert sorted(answers[0::2] + answers[1::2]).count(False) == 200  # one acceptance per token
    assert all(answers[n] != answers[n + 1] for n in range(0, 400, 2))
    with stores[0].engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM cards_shown").scalar() == 40


def _expired_tokens_are_purged_every_so_many_inserts(url: str, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "REPLAY_PURGE_EVERY", 4)
    now = [NOW]
    store = _clocked_store(url, now)
    for n in range(3):  # inserts 1-3: expiring a minute from NOW
        assert store.seen_before(f"old-{n}", ISSUER, (NOW + timedelta(minutes=1)).timestamp()) is False
    now[0] = NOW + timedelta(minutes=2)  # those three have expired
    assert store.seen_before("live", ISSUER, (now[0] + timedelta(minutes=5)).timestamp()) is False  # insert 4
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM jwt_seen").scalar() == 1  # the live one only
    assert store.seen_before("live", ISSUER, (now[0] + timedelta(minutes=5)).timestamp()) is True


def test_expired_tokens_are_purged_every_so_many_inserts_on_sqlite(sqlite_url, monkeypatch) -> None:
    _expired_tokens_are_purged_every_so_many_inserts(sqlite_url, monkeypatch)


@pytest.mark.postgres
def test_expired_tokens_are_purged_every_so_many_inserts_on_postgres(postgres_database, monkeypatch) -> None:
    _expired_tokens_are_purged_every_so_many_inserts(postgres_database, monkeypatch)


def _rows(path: Any, table: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def test_sqlite_hot_path_writes_the_rows_sqlalchemy_would(tmp_path) -> None:
    """The hook path's statements run on the driver's connection (sqlite_hot_path): the rows they write are
    byte for byte those SQLAlchemy's statements write, which feedback, the report and suppression read."""
    fast, reference = CardStore(f"sqlite:///{tmp_path / 'fast.sqlite3'}", SECRET, clock=lambda: NOW), \
        CardStore(f"sqlite:///{tmp_path / 'reference.sqlite3'}", SECRET, clock=lambda: NOW)
    issued = NOW.astimezone(timezone(timedelta(hours=-5)))  # an aware time in another zone: stored as UTC
    card = ShownCard(str(uuid.uuid4()), (SUGGESTION, "second-suggestion"), SERVICE_ID, "conservative-care",
                     "2026.12.1", "info", str(uuid.uuid4()), fast.patient_key("patient-1"), issued)
    expires = NOW + timedelta(minutes=5, microseconds=250)
    fast.record_shown([card])
    assert fast.seen_before("jti-1", ISSUER, expires.timestamp()) is False
    statements = _statements("sqlite")
    with reference.engine.begin() as connection:
        connection.execute(statements.record_shown, [{
            "card_uuid": card.card_uuid, "service_id": card.service_id, "rule": card.rule,
            "ruleset_version": card.ruleset_version, "indicator": card.indicator,
            "hook_instance": card.hook_instance, "patient_key": card.patient_key, "issued_at": card.issued_at,
            "suggestion_uuids": list(card.suggestion_uuids)}])
        connection.execute(statements.record_token, {
            "token_key": store_module.token_key("jti-1", ISSUER),
            "expires_at": datetime.fromtimestamp(expires.timestamp(), timezone.utc), "now": NOW})
    for table in ("cards_shown", "jwt_seen"):
        assert _rows(tmp_path / "fast.sqlite3", table) == _rows(tmp_path / "reference.sqlite3", table), table
    assert _rows(tmp_path / "fast.sqlite3", "cards_shown")[0][7] == NOW.strftime("%Y-%m-%d %H:%M:%S.%f")
    fast.close(), reference.close()


# --- durability: NORMAL for the replay insert only, on the same pooled connection ------------------------
def _trace_driver(store: CardStore, traced: Callable[[sqlite3.Connection, str], None]) -> None:
    """``traced(connection, sql)`` for every statement SQLite runs on the store's connections from now on,
    whether sent through SQLAlchemy or on the driver's connection (sqlite_hot_path): each checkout is traced."""
    event.listen(store.engine, "checkout",
                 lambda raw, record, proxy: raw.set_trace_callback(functools.partial(traced, raw)))


def _statements_run(store: CardStore) -> list[str]:
    """The first word of every statement run on the store's connections from now on."""
    run: list[str] = []
    _trace_driver(store, lambda raw, sql: run.append(sql.split()[0].upper()))
    return run


def _levels_at_each_insert(store: CardStore) -> list[tuple[str, int, int]]:
    """(table, PRAGMA synchronous, DBAPI connection id) at each INSERT, read on the connection running it."""
    seen: list[tuple[str, int, int]] = []

    def level(raw: sqlite3.Connection, sql: str) -> None:
        if sql.startswith("INSERT INTO"):
            seen.append((sql.split()[2], raw.execute("PRAGMA synchronous").fetchone()[0], id(raw)))

    _trace_driver(store, level)
    return seen


def test_replay_insert_alone_runs_at_synchronous_normal_feedback_and_cards_shown_at_full(sqlite_url) -> None:
    store = CardStore(sqlite_url, SECRET, clock=lambda: NOW)
    seen = _levels_at_each_insert(store)
    expires = (NOW + timedelta(minutes=5)).timestamp()
    card = _shown(store.patient_key("patient-1"))

    assert store.seen_before("a", ISSUER, expires) is False
    store.record_shown([card])  # right after a replay insert, on the same connection
    assert store.seen_before("b", ISSUER, expires) is False
    _overridden_at(store, card, NOW + timedelta(minutes=1))
    assert store.seen_before("c", ISSUER, expires) is False
    _overridden_at(store, card, NOW + timedelta(minutes=2))

    assert [(table, level) for table, level, _ in seen] == [
        ("jwt_seen", NORMAL), ("cards_shown", FULL), ("jwt_seen", NORMAL), ("feedback", FULL),
        ("jwt_seen", NORMAL), ("feedback", FULL)]
    assert len({connection for _, _, connection in seen}) == 1, "not one pooled connection: the test proves nothing"
    with store.engine.connect() as connection:  # and the file is WAL, which makes NORMAL safe from corruption
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_failed_replay_insert_leaves_no_weaker_durability_for_the_next_writer(sqlite_url, tmp_path) -> None:
    store = CardStore(sqlite_url, SECRET, clock=lambda: NOW)
    seen = _levels_at_each_insert(store)
    card = _shown(store.patient_key("patient-1"))
    store.record_shown([card])
    locker = sqlite3.connect(tmp_path / "cards.sqlite3", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: the replay insert fails
    try:
        with pytest.raises(ReplayStoreUnavailable):
            store.seen_before("a", ISSUER, (NOW + timedelta(minutes=5)).timestamp())
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    _overridden_at(store, card, NOW + timedelta(minutes=1))
    assert [(table, level) for table, level, _ in seen] == [("cards_shown", FULL), ("feedback", FULL)]


def test_without_wal_the_replay_insert_keeps_full() -> None:
    """In memory (no WAL possible) NORMAL would not be the WAL's corruption-safe NORMAL: FULL stays."""
    store = CardStore("sqlite://", SECRET, clock=lambda: NOW)
    seen = _levels_at_each_insert(store)
    assert store.seen_before("a", ISSUER, (NOW + timedelta(minutes=5)).timestamp()) is False
    assert [(table, level) for table, level, _ in seen] == [("jwt_seen", FULL)]


# --- suppression: one query for all of a call's candidates ------------------------------------------------
def test_overridden_rules_answers_every_window_in_one_query(sqlite_url) -> None:
    store = CardStore(sqlite_url, SECRET, clock=lambda: NOW + timedelta(days=1))
    key = store.patient_key("patient-1")
    old, recent, accepted_only = _shown(key, "conservative-care"), _shown(key, "venous-duplex-workup"), \
        _shown(key, "elevated-cramp-risk")
    store.record_shown([old, recent, accepted_only, _shown(store.patient_key("patient-2"), "quinine-for-cramps")])
    _overridden_at(store, old, NOW - timedelta(days=40))
    _overridden_at(store, old, NOW - timedelta(days=20))  # the latest override of the rule is what counts
    _overridden_at(store, recent, NOW - timedelta(days=1))
    store.record_feedback(SERVICE_ID, parse_feedback({"feedback": [accepted(accepted_only.card_uuid, [SUGGESTION])]}))
    statements = _statements_run(store)

    windows = {"conservative-care": NOW - timedelta(days=30), "venous-duplex-workup": NOW - timedelta(days=30),
               "elevated-cramp-risk": NOW - timedelta(days=90), "quinine-for-cramps": NOW - timedelta(days=90)}
    assert store.overridden_rules(key, windows) == {"conservative-care", "venous-duplex-workup"}
    assert store.overridden_rules(key, {**windows, "conservative-care": NOW - timedelta(days=10)}) == {
        "venous-duplex-workup"}  # its latest override is 20 days old: outside a 10-day window
    assert store.overridden_rules(store.patient_key("patient-2"), windows) == set()  # overrides are per patient
    assert statements.count("SELECT") == 3
    assert store.overridden_rules(key, {}) == set() and statements.count("SELECT") == 3  # nothing asked


# --- connection checkouts per hook call -------------------------------------------------------------------
def _checkouts(store: CardStore) -> list[int]:
    count = [0]
    event.listen(store.engine, "checkout", lambda *args: count.__setitem__(0, count[0] + 1))
    return count


def _order_sign(*drugs: str) -> dict[str, Any]:
    """An order-sign call for a patient with documented leg cramps, drafting ``drugs`` (text only)."""
    orders = [{"resourceType": "MedicationRequest", "id": f"m{n}", "status": "draft", "intent": "order",
               "medicationCodeableConcept": {"text": text}, "subject": {"reference": f"Patient/{PATIENT_ID}"}}
              for n, text in enumerate(drugs)]
    cramps = {"resourceType": "Condition", "id": "c1", "subject": {"reference": f"Patient/{PATIENT_ID}"},
              "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                             "code": "active"}]},
              "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R25.2"}]},
              "onsetDateTime": "2025-01-10"}
    context = {"userId": "Practitioner/example", "patientId": PATIENT_ID,
               "draftOrders": {"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": order} for order in orders]}}
    return minimal_request(hook="order-sign", context=context,
                           prefetch={"patient": patient_resource(), "conditions": searchset(cramps)})


def test_a_hook_call_asks_the_ledger_once_whatever_its_candidates(sqlite_url) -> None:
    service = Service(sqlite_url)  # development mode: no replay insert here (counted below)
    checkouts, statements = _checkouts(service.store), _statements_run(service.store)
    # three drug-class cards, each also asked under the id overrides were recorded under before the split
    answer = service.app.test_client().post("/cds-services/leg-cramp-order-sign",
                                            json=_order_sign("chlorthalidone 25 MG", "spironolactone 25 MG",
                                                             "salmeterol 50 MCG inhaler"))
    assert answer.status_code == 200 and len(answer.get_json()["cards"]) == 3
    assert (statements.count("SELECT"), checkouts[0]) == (1, 2)  # one suppression query, one record_shown for the three cards
    checkouts[0] = 0
    assert len(service.cards(dvt_request())) == 1
    assert checkouts[0] == 1  # a critical card is never suppressed: no query; record_shown
    checkouts[0] = 0
    assert service.cards(minimal_request()) == []
    assert checkouts[0] == 0  # no candidate card: the ledger is not asked
    assert service.store.seen_before("jti", ISSUER, (NOW + timedelta(minutes=5)).timestamp()) is False
    assert checkouts[0] == 1  # the replay insert: one checkout, one statement


def test_sqlite_checkouts_send_no_ping(sqlite_url) -> None:
    """pool_pre_ping is off for SQLite (a file has no server to lose): no SELECT 1 before each statement."""
    store = CardStore(sqlite_url, SECRET, clock=lambda: NOW)
    sent: list[str] = []
    event.listen(store.engine, "connect", lambda dbapi, record: dbapi.set_trace_callback(sent.append))
    store.close()  # the pool again, so every connection from now on is traced
    for n in range(3):
        store.seen_before(f"jti-{n}", ISSUER, (NOW + timedelta(minutes=5)).timestamp())
    assert sent and not [s for s in sent if s.strip().upper() == "SELECT 1"], sent
