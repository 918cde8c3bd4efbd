"""JWT replay protection: each accepted token's (issuer, ``jti``) is remembered until the token expires.

    ReplayCache             the protocol ``auth.ClientAuthenticator`` calls: ``seen_before(jti, issuer, expires_at)``
    MemoryReplayCache       in this process only (one worker; and every replica's fallback)
    RedisReplayCache        shared by processes, on Redis (CRAMP_REDIS_URL): ``SET key 1 NX EX ttl``
    store.CardStore         shared by processes, on the database (the default): table ``jwt_seen``; its SQL
                            stays in store.py, the only module that speaks SQL
    FallbackReplayCache     a shared cache, backed by this process's memory for when it cannot answer

A shared cache that cannot answer (database or Redis down, locked, timed out) raises
``ReplayStoreUnavailable``. ``FallbackReplayCache`` then answers from this process's memory for the outage
(STATUS.md: the call is served; a replay to the same replica is still refused), logs the outage once with
the exception type, counts every call so answered (``cramp_replay_fallback_total``), and asks the shared
cache again ``RETRY_SECONDS`` later: recovery needs nothing from an operator.

This module imports neither Flask, SQLAlchemy nor redis. Every class here may be shared by threads.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import threading
import time
import uuid
from typing import Any, Callable, Protocol, runtime_checkable

from cds_service.engine.observer import NULL_OBSERVER, StorageObserver
from cds_service.settings import SettingsError

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: After the shared cache failed, calls use memory only for this long before it is asked again, so an
#: unreachable database costs one connection attempt per interval, not one per call.
RETRY_SECONDS = 2.0
# The issuer of /readyz's probe tokens (FallbackReplayCache.degradation), each with a random jti: a probe
# can never collide with a client's token.
PROBE_ISSUER = "urn:leg-cramp-cds:readiness-probe"


class ReplayStoreUnavailable(Exception):
    """The shared replay cache could not answer. ``error_type`` is the underlying exception's type name;
    the message never holds a token, a URL or a password."""

    def __init__(self, error_type: str) -> None:
        super().__init__(error_type)
        self.error_type = error_type


@runtime_checkable
class ReplayCache(Protocol):
    """Remembers the ``jti`` of accepted tokens until they expire."""

    def seen_before(self, jti: str, issuer: str, expires_at: float) -> bool:
        """Atomically: True if (issuer, jti) was recorded and has not expired; else record it, return False."""
        ...


def token_key(jti: str, issuer: str) -> str:
    """What a shared cache stores for a token: a hash, never the raw ``jti``."""
    return hashlib.sha256(f"{issuer}\x00{jti}".encode("utf-8")).hexdigest()


class MemoryReplayCache:
    """A thread-safe, in-process ``ReplayCache``; entries are dropped once they expire.

    Per process: with several gunicorn workers or replicas, use a shared cache (the database or Redis).
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def seen_before(self, jti: str, issuer: str, expires_at: float) -> bool:
        key = (issuer, jti)
        with self._lock:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                when, old = heapq.heappop(self._heap)
                if self._expiry.get(old) == when:
                    del self._expiry[old]
            known = self._expiry.get(key)
            if known is not None and known > now:
                return True
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return False

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for when in self._expiry.values() if when > now)


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import RedisError
    except ImportError:  # a duck-typed client (tests): only socket errors
        return (OSError,)
    return (RedisError, OSError)


class RedisReplayCache:
    """A ``ReplayCache`` shared by processes, on Redis: ``SET key 1 NX EX ttl`` is the atomic test-and-record.

    ``client`` is a ``redis.Redis`` (or anything with ``set(name, value, nx=, ex=)``); redis is imported
    only to know its exception types. Raises ``ReplayStoreUnavailable`` when Redis does not answer.
    """

    def __init__(self, client: Any, *, prefix: str = "cramp-cds:jti:", clock: Clock = time.time) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._errors = _redis_errors()

    @classmethod
    def from_url(cls, url: str) -> "RedisReplayCache":
        """On the Redis at ``url`` (CRAMP_REDIS_URL), with short timeouts: a Redis that does not answer costs a
        call half a second, then the fallback answers. Raises ``SettingsError`` without the redis package."""
        try:
            import redis
        except ImportError:
            raise SettingsError("CRAMP_REDIS_URL is set but the redis package is not installed "
                                "(pip install 'leg-cramp-cds[redis]')") from None
        return cls(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5))

    def seen_before(self, jti: str, issuer: str, expires_at: float) -> bool:
        ttl = max(1, math.ceil(expires_at - self._clock()))
        try:
            return not self._client.set(self._prefix + token_key(jti, issuer), b"1", nx=True, ex=ttl)
        except self._errors as exc:
            raise ReplayStoreUnavailable(type(exc).__name__) from None


class FallbackReplayCache:
    """``shared`` (the database or Redis), with this process's memory when it cannot answer.

    Every accepted token is also kept in memory, so a replay to this replica is refused whether or not the
    shared cache answers; memory holds each token until it expires (the JWT lifetime is capped, 1 h by
    default). ``name`` ("database", "redis") labels the log line, the metric and ``/readyz``.
    """

    def __init__(
        self,
        shared: ReplayCache,
        name: str,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        retry_seconds: float = RETRY_SECONDS,
        observer: StorageObserver = NULL_OBSERVER,
    ) -> None:
        self.name = name
        self._observer = observer  # counts the checks answered from memory (web/metrics.py)
        self._shared = shared
        self._local = MemoryReplayCache(clock)
        self._clock = clock
        self._monotonic = monotonic
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._failure: str | None = None  # the exception type of the outage under way, if any
        self._retry_at = 0.0

    def seen_before(self, jti: str, issuer: str, expires_at: float) -> bool:
        if self._local.seen_before(jti, issuer, expires_at):
            return True  # this replica accepted it already: a replay, whatever the shared cache says
        if not self._may_ask_shared():
            self._observer.replay_fallback(self.name)
            return False
        try:
            replayed = self._shared.seen_before(jti, issuer, expires_at)
        except ReplayStoreUnavailable as exc:
            self._outage(exc.error_type)
            self._observer.replay_fallback(self.name)
            return False
        self._recovered()
        return replayed

    def degradation(self) -> str | None:
        """For ``/readyz``: what is degraded, or None.

        During an outage, once its retry time has come, the shared cache is asked first (a throwaway token of
        ``PROBE_ISSUER`` that expires within a second), so a store that answers again shows as recovered
        without waiting for the next hook call, and one still down pushes the next retry on as a call would.
        """
        if self._failure is not None and self._may_ask_shared():
            self._probe_shared()
        failure = self._failure
        if failure is None:
            return None
        return f"replay store ({self.name}): not reachable ({failure}); this replica's memory is used"

    def _probe_shared(self) -> None:
        try:
            self._shared.seen_before(f"probe-{uuid.uuid4().hex}", PROBE_ISSUER, self._clock() + 1)
        except ReplayStoreUnavailable as exc:
            self._outage(exc.error_type)
        else:
            self._recovered()

    def _may_ask_shared(self) -> bool:
        with self._lock:
            return self._failure is None or self._monotonic() >= self._retry_at

    def _outage(self, error_type: str) -> None:
        with self._lock:
            first = self._failure is None
            self._failure = error_type
            self._retry_at = self._monotonic() + self._retry_seconds
        if first:
            log.error("JWT replay store unavailable: each replica uses its own memory until it answers",
                      extra={"replay_store": self.name, "error_type": error_type})

    def _recovered(self) -> None:
        with self._lock:
            was_down, self._failure = self._failure is not None, None
        if was_down:
            log.warning("JWT replay store answers again", extra={"replay_store": self.name})
