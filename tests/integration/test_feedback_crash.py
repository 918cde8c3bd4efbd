"""Crash safety: every feedback answered 200 is in the database, even when the server is SIGKILLed
(master and workers at once) in the middle of a load of feedback.

`cramp-cds serve` runs in development mode on 127.0.0.1 and a free port, on a temporary SQLite file.
Bounded: at most MAX_REQUESTS feedback posts, and about 20 s.
"""

from __future__ import annotations

import http.client
import threading
import time
from datetime import datetime, timedelta, timezone

from support.feedback import SERVICE_ID, ServerProcess, cramps_request, feedback_rows, instant, overridden

from cds_service.storage.store import CardStore

MAX_REQUESTS = 300
SENDERS = 4
KILL_AFTER_ACKED = 60


def test_feedback_answered_200_survives_sigkill_mid_load(tmp_path) -> None:
    database = tmp_path / "cards.sqlite3"
    server = ServerProcess(f"sqlite:///{database}", tmp_path / "server.log", workers=2, threads=4)
    acked: list[tuple[str, str]] = []
    sent = 0
    lock = threading.Lock()
    stop = threading.Event()
    try:
        server.wait_healthy()
        cards = [server.cards(cramps_request(f"crash-{n}"))[0]["uuid"] for n in range(4)]
        base = datetime.now(timezone.utc) - timedelta(minutes=1)

        def send(worker: int) -> None:
            nonlocal sent
            while not stop.is_set():
                with lock:
                    if sent >= MAX_REQUESTS:
                        return
                    number = sent
                    sent += 1
                item = overridden(cards[number % len(cards)], at=base + timedelta(milliseconds=number))
                try:
                    status, _ = server.post(f"/cds-services/{SERVICE_ID}/feedback", {"feedback": [item]}, timeout=5)
                except (OSError, http.client.HTTPException):
                    # The server is gone: a refused or reset connection (OSError), or a response cut off
                    # mid-body by the kill (http.client.IncompleteRead, which is not an OSError).
                    return
                if status == 200:
                    with lock:
                        acked.append((item["card"], item["outcomeTimestamp"]))

        threads = [threading.Thread(target=send, args=(n,), daemon=True) for n in range(SENDERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 15
        while len(acked) < KILL_AFTER_ACKED and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        server.kill()  # mid-load: the senders still have requests in flight
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        stop.set()
        server.stop()

    assert acked, f"no feedback was acknowledged before the kill:\n{server.log_path.read_text()[-2000:]}"
    assert sent < MAX_REQUESTS or len(acked) >= KILL_AFTER_ACKED
    store = CardStore(f"sqlite:///{database}", None, migrate=False)
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        stored = {(row["card_uuid"], instant(row["outcome_timestamp"])) for row in feedback_rows(store)}
    finally:
        store.close()
    print(f"sent {sent}, acknowledged {len(acked)}, stored {len(stored)}")
    missing = [item for item in acked if item not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged feedback items are not in the database"
