"""The card store's three hook-path calls, in process, against the bare driver doing the same write.

    python bench/bench_store_ops.py [--calls 2000] [--quick]

On a fresh SQLite file (WAL, as the service opens it), CPU (process time) and wall time per call of
``CardStore.seen_before`` (the replay insert), ``record_shown`` (one card, synchronous=FULL: an fsync),
``overridden_rules`` (the suppression query, two rules), and, as the baseline of the same run, the replay
insert written directly on ``sqlite3`` (BEGIN IMMEDIATE, the same INSERT ... ON CONFLICT ... RETURNING,
COMMIT; synchronous=NORMAL as the service's replay insert). The ratio store / bare driver is what the
store adds on each call: since the statements run on the driver connection (storage/sqlite_hot_path.py),
the pool checkout, the token's key (an HMAC), value conversion and the store's bookkeeping (6-15x through
SQLAlchemy's execution layer before; 1-3x now, record_shown more for its fsync at FULL).
Benchmarks only; nothing here ships.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds_service.engine.ledger import ShownCard  # noqa: E402
from cds_service.storage.store import CardStore  # noqa: E402


def per_call(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """(CPU us, wall us) per call, after one call to warm up."""
    call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        call()
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


def bare_replay_insert(path: Path) -> Callable[[], object]:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("CREATE TABLE jwt_seen (token_key VARCHAR(64) PRIMARY KEY, expires_at DATETIME NOT NULL)")
    statement = ("INSERT INTO jwt_seen (token_key, expires_at) VALUES (?, ?) ON CONFLICT (token_key) DO UPDATE "
                 "SET expires_at = excluded.expires_at WHERE jwt_seen.expires_at < ? RETURNING token_key")

    def insert() -> object:
        connection.execute("BEGIN IMMEDIATE")
        row = connection.execute(statement, (uuid.uuid4().hex, "2026-12-02 12:05:00.000000",
                                             "2026-12-02 12:00:00.000000")).fetchone()
        connection.execute("COMMIT")
        return row

    return insert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls of each operation [2000]")
    parser.add_argument("--quick", action="store_true", help="a smoke run (50 calls)")
    args = parser.parse_args(argv)
    calls = 50 if args.quick else args.calls
    directory = Path(tempfile.mkdtemp(prefix="cramp-bench-store-"))
    store = CardStore(f"sqlite:///{directory / 'cards.sqlite3'}", "bench-patient-key-secret-0123456789")
    now = datetime.now(timezone.utc)
    patient_key = store.patient_key("bench-patient")
    expires = time.time() + 300
    windows = {"conservative-care": now - timedelta(days=30), "venous-duplex-workup": now - timedelta(days=30)}

    def shown() -> None:
        store.record_shown([ShownCard(str(uuid.uuid4()), (str(uuid.uuid4()),), "leg-cramp-patient-view",
                                      "conservative-care", "bench", "info", str(uuid.uuid4()), patient_key, now)])

    figures = {
        "bare sqlite3 replay insert (baseline)": per_call(bare_replay_insert(directory / "bare.sqlite3"), calls),
        "CardStore.seen_before": per_call(lambda: store.seen_before(uuid.uuid4().hex, "bench", expires), calls),
        "CardStore.record_shown (1 card)": per_call(shown, calls),
        "CardStore.overridden_rules (2 rules)": per_call(lambda: store.overridden_rules(patient_key, windows), calls),
    }
    store.close()
    baseline_cpu = figures["bare sqlite3 replay insert (baseline)"][0]
    print(f"SQLite (WAL) at {directory}, {calls} calls each; CPU and wall time per call")
    for name, (cpu, wall) in figures.items():
        print(f"   {name:40s} cpu {cpu:8.1f} us   wall {wall:8.1f} us   cpu / baseline {cpu / baseline_cpu:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
