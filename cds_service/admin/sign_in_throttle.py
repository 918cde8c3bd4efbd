"""The admin console's sign-in throttle: at most ``max_failures`` attempts per (user name, address) within
``window`` seconds that did not succeed; past them, that pair is refused until the oldest leaves the window.

Every attempt counts from the moment it begins, before its password is checked, and is forgotten only when
it succeeds: parallel attempts (an argon2 check takes tens of milliseconds, a worker has several threads)
cannot slip past the limit between a check and its failure being written. A refused attempt is not
counted, so retrying while throttled does not extend the wait.

Where the counts live (``attempts``): the database by default in the console (``StoredAttempts``: one
count for every worker and replica; without it each process would allow its own ``max_failures``), or this
process's memory (``MemoryAttempts``: tests, and a store without the table). Keys are SHA-256 hashes:
neither the user name nor the address is stored in clear.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

MAX_FAILURES = 5
WINDOW_SECONDS = 15 * 60


def throttle_key(username: str, address: str) -> str:
    return hashlib.sha256(f"{username}\n{address}".encode("utf-8")).hexdigest()


class Attempts(Protocol):
    def record(self, key: str, at: float, window_start: float) -> tuple[Any, list[float]]:
        """Record an attempt at ``at``: a handle for ``discard`` and the times of the key's attempts since
        ``window_start``, oldest first, this one included."""

    def discard(self, handle: Any) -> None: ...

    def clear(self, key: str) -> None: ...


class SignInThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW_SECONDS, *,
                 attempts: Attempts | None = None, clock: Callable[[], float] | None = None) -> None:
        """``clock``: seconds; wall time (``time.time``) for counts shared between processes, the default
        there, else ``time.monotonic``."""
        self.max_failures, self.window = max_failures, window
        self._attempts = attempts if attempts is not None else MemoryAttempts()
        self._clock = clock or (time.time if isinstance(self._attempts, StoredAttempts) else time.monotonic)

    def begin(self, username: str, address: str) -> float:
        """Count an attempt of this pair: 0.0 when it may go ahead, else the seconds until one may (and the
        attempt is not counted)."""
        now = self._clock()
        handle, times = self._attempts.record(throttle_key(username, address), now, now - self.window)
        if len(times) <= self.max_failures:
            return 0.0
        self._attempts.discard(handle)
        others = times[:-1]  # this attempt is the newest (give or take one racing it: the wait is an estimate)
        # one may go ahead once all but max_failures - 1 of the others have left the window
        freeing = others[len(others) - self.max_failures]
        return max(0.0, freeing + self.window - now)

    def succeeded(self, username: str, address: str) -> None:
        self._attempts.clear(throttle_key(username, address))


class MemoryAttempts:
    """This process's counts, bounded: ``max_keys`` pairs (the least recently tried dropped first), and per
    pair the newest ``per_key`` attempts (more than any limit needs)."""

    def __init__(self, max_keys: int = 10_000, per_key: int = 64) -> None:
        self._max_keys, self._per_key = max_keys, per_key
        self._times: OrderedDict[str, list[tuple[float, int]]] = OrderedDict()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._times)

    def record(self, key: str, at: float, window_start: float) -> tuple[tuple[str, int], list[float]]:
        with self._lock:
            handle = (key, next(self._ids))
            recent = [entry for entry in self._times.get(key, []) if entry[0] >= window_start]
            recent.append((at, handle[1]))
            self._times[key] = recent[-self._per_key:]
            self._times.move_to_end(key)
            while len(self._times) > self._max_keys:
                self._times.popitem(last=False)
            return handle, sorted(at for at, _ in self._times[key])

    def discard(self, handle: tuple[str, int]) -> None:
        key, attempt = handle
        with self._lock:
            if key in self._times:
                self._times[key] = [entry for entry in self._times[key] if entry[1] != attempt]

    def clear(self, key: str) -> None:
        with self._lock:
            self._times.pop(key, None)


class AttemptStore(Protocol):
    """The part of storage.admin_store.AdminStore the stored counts use."""

    def record_sign_in_attempt(self, throttle_key: str, at: datetime,
                               window_start: datetime) -> tuple[int, list[datetime]]: ...
    def discard_sign_in_attempt(self, attempt_id: int) -> None: ...
    def clear_sign_in_attempts(self, throttle_key: str) -> None: ...


class StoredAttempts:
    """The counts in the database (table admin_sign_in_attempts), on wall-clock seconds."""

    def __init__(self, store: AttemptStore) -> None:
        self._store = store

    def record(self, key: str, at: float, window_start: float) -> tuple[int, list[float]]:
        attempt_id, times = self._store.record_sign_in_attempt(key, _utc(at), _utc(window_start))
        return attempt_id, [moment.timestamp() for moment in times]

    def discard(self, handle: int) -> None:
        self._store.discard_sign_in_attempt(handle)

    def clear(self, key: str) -> None:
        self._store.clear_sign_in_attempts(key)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)
