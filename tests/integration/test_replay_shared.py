"""JWT replay protection shared by replicas: a token used on one service process is refused on another
that shares the database (default) or Redis (CRAMP_REDIS_URL)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from support.hook_requests import minimal_request
from support.feedback import ServerProcess, fresh_postgres_database, postgres_url
from support.security import PUBLIC_BASE_URL, TestIssuer, secure_app, write_trusted_clients
from cds_service.storage.replay import PROBE_ISSUER, FallbackReplayCache, MemoryReplayCache, ReplayStoreUnavailable
from cds_service.storage.store import CardStore

SERVICE = "/cds-services/leg-cramp-patient-view"


def _two_replicas(tmp_path, issuer, **settings):
    return [secure_app(tmp_path / name, issuer, **settings).test_client() for name in ("a", "b")]


def test_replayed_jwt_is_refused_by_another_replica_sharing_the_database(tmp_path):
    issuer = TestIssuer.create()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    first, second = _two_replicas(tmp_path, issuer, database_url=database)
    headers = issuer.headers(SERVICE)
    assert first.post(SERVICE, json=minimal_request(), headers=headers).status_code == 200
    replay = second.post(SERVICE, json=minimal_request(), headers=headers)
    assert replay.status_code == 401 and replay.data == b""
    assert second.post(SERVICE, json=minimal_request(), headers=issuer.headers(SERVICE)).status_code == 200


def test_store_forgets_token_ids_once_expired(tmp_path):
    now = [datetime(2026, 6, 15, 12, tzinfo=timezone.utc)]
    store = CardStore(f"sqlite:///{tmp_path / 'db.sqlite3'}", "secret", clock=lambda: now[0])
    expires = (now[0] + timedelta(minutes=5)).timestamp()
    assert store.seen_before("jti-1", "https://ehr.example", expires) is False
    assert store.seen_before("jti-1", "https://ehr.example", expires) is True
    assert store.seen_before("jti-1", "https://other.example", expires) is False  # per issuer
    now[0] += timedelta(minutes=6)
    assert store.seen_before("jti-1", "https://ehr.example", expires + 600) is False


def test_store_keeps_no_raw_token_ids(tmp_path):
    store = CardStore(f"sqlite:///{tmp_path / 'db.sqlite3'}", "secret")
    jti = f"visible-{uuid.uuid4()}"
    store.seen_before(jti, "https://ehr.example", datetime.now(timezone.utc).timestamp() + 60)
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT token_key FROM jwt_seen").fetchall()
    assert rows and all(jti not in row[0] for row in rows)


def _redis_url() -> str | None:
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
    except redis.exceptions.RedisError:
        return None
    return url


def test_replayed_jwt_is_refused_across_replicas_with_redis(tmp_path):
    url = _redis_url()
    if url is None:
        pytest.skip("no Redis answering on 127.0.0.1:6379")
    issuer = TestIssuer.create()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _two_replicas(tmp_path, issuer, redis_url=url)
    headers = issuer.headers(SERVICE)
    assert first.post(SERVICE, json=minimal_request(), headers=headers).status_code == 200
    assert second.post(SERVICE, json=minimal_request(), headers=headers).status_code == 401


# --- PostgreSQL (the real driver: psycopg 3 reports rowcount -1 for INSERT ... ON CONFLICT DO NOTHING) ---
@pytest.fixture
def postgres_database(monkeypatch):
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        yield postgres_url(host, port, name)


@pytest.mark.postgres
def test_one_token_four_times_to_one_replica_on_postgres(tmp_path, postgres_database):
    issuer = TestIssuer.create()
    client = secure_app(tmp_path, issuer, database_url=postgres_database).test_client()
    headers = issuer.headers(SERVICE)
    statuses = [client.post(SERVICE, json=minimal_request(), headers=headers).status_code for _ in range(4)]
    assert statuses == [200, 401, 401, 401]


@pytest.mark.postgres
def test_one_token_at_two_replicas_at_once_on_postgres_is_accepted_once(tmp_path, postgres_database):
    issuer = TestIssuer.create()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    replicas = _two_replicas(tmp_path, issuer, database_url=postgres_database)
    body = minimal_request()
    rounds = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(25):
            headers = issuer.headers(SERVICE)
            start = threading.Barrier(2)

            def post(replica, headers=headers, start=start):
                start.wait()
                return replica.post(SERVICE, json=body, headers=headers).status_code

            rounds.append(sorted(pool.map(post, replicas)))
    assert rounds == [[200, 401]] * 25


@pytest.mark.postgres
def test_store_replay_answers_on_postgres(postgres_database):
    store = CardStore(postgres_database, "secret")
    expires = datetime.now(timezone.utc).timestamp() + 60
    assert [store.seen_before("jti-pg", "https://ehr.example", expires) for _ in range(3)] == [False, True, True]


@pytest.mark.postgres
def test_one_token_at_two_server_processes_sharing_postgres_is_accepted_once(tmp_path, postgres_database):
    """Two real `cramp-cds serve` (gunicorn, 2 workers each), the same token at both at once."""
    issuer = TestIssuer.create()
    env = {"CRAMP_DEV_MODE": "0", "CRAMP_TRUSTED_CLIENTS_FILE": str(write_trusted_clients(tmp_path, issuer)),
           "CRAMP_PUBLIC_BASE_URL": PUBLIC_BASE_URL}
    servers = [ServerProcess(postgres_database, tmp_path / f"{name}.log", workers=2, threads=1, env=env)
               for name in ("first", "second")]
    try:
        for server in servers:
            server.wait_healthy()
        body = minimal_request()
        rounds = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            for _ in range(25):
                headers = issuer.headers(SERVICE)
                start = threading.Barrier(2)

                def post(server, headers=headers, start=start):
                    start.wait()
                    return server.post(SERVICE, body, headers=headers)[0]

                rounds.append(sorted(pool.map(post, servers)))
    finally:
        for server in servers:
            server.stop()
    assert rounds == [[200, 401]] * 25


# --- FallbackReplayCache: the outage logic, with a shared cache that can be switched off -------------------
class _SwitchableShared:
    """A shared cache (MemoryReplayCache) that raises ReplayStoreUnavailable while ``down``."""

    def __init__(self) -> None:
        self.cache, self.down, self.calls, self.issuers = MemoryReplayCache(), False, 0, []

    def seen_before(self, jti, issuer, expires_at):
        self.calls += 1
        self.issuers.append(issuer)
        if self.down:
            raise ReplayStoreUnavailable("OperationalError")
        return self.cache.seen_before(jti, issuer, expires_at)


def test_fallback_uses_memory_while_the_shared_cache_is_down_and_asks_it_again_later():
    shared, now = _SwitchableShared(), [100.0]
    cache = FallbackReplayCache(shared, "database", monotonic=lambda: now[0], retry_seconds=2.0)
    other_replica = FallbackReplayCache(shared, "database")
    exp = datetime.now(timezone.utc).timestamp() + 300
    assert cache.seen_before("before", "iss", exp) is False
    assert other_replica.seen_before("before", "iss", exp) is True  # shared

    shared.down = True
    assert cache.seen_before("before", "iss", exp) is True  # accepted here before the outage: still refused
    assert cache.seen_before("during", "iss", exp) is False
    assert cache.degradation().startswith("replay store (database): not reachable (OperationalError)")
    calls = shared.calls
    assert cache.seen_before("during", "iss", exp) is True  # a replay to this replica
    assert cache.seen_before("during-2", "iss", exp) is False
    assert shared.calls == calls  # within the retry interval the shared cache is not asked

    shared.down = False
    now[0] += 2.5
    assert cache.seen_before("after", "iss", exp) is False
    assert cache.degradation() is None
    assert other_replica.seen_before("after", "iss", exp) is True  # shared again


def test_readiness_asks_a_shared_cache_that_was_down_once_its_retry_time_has_come():
    """/readyz's degradation recovers without a hook call: after the retry interval it asks the shared
    cache itself (a throwaway probe token); before it, and while the store stays down, it does not hammer it."""
    shared, now = _SwitchableShared(), [100.0]
    cache = FallbackReplayCache(shared, "redis", monotonic=lambda: now[0], retry_seconds=2.0)
    exp = datetime.now(timezone.utc).timestamp() + 300
    shared.down = True
    assert cache.seen_before("during", "iss", exp) is False  # the outage begins
    calls = shared.calls
    assert cache.degradation().startswith("replay store (redis): not reachable")
    assert shared.calls == calls  # within the retry interval: not asked
    now[0] += 2.5
    assert cache.degradation().startswith("replay store (redis): not reachable")  # asked, still down
    assert shared.calls == calls + 1
    assert cache.degradation() is not None and shared.calls == calls + 1  # the retry time moved on
    shared.down = False
    now[0] += 2.5
    assert cache.degradation() is None  # recovered by the probe alone
    assert shared.calls == calls + 2
    assert shared.issuers[-2:] == [PROBE_ISSUER, PROBE_ISSUER]  # probes never spend a client's jti
    assert cache.seen_before("during", "iss", exp) is True  # memory still refuses what it accepted meanwhile

