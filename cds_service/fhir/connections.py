"""Which HTTP connections a hook request's FHIR fetches are using, so that the deadline can close them.

``fhir_client.FhirFetcher`` runs each key on a thread and answers at the deadline; a key still running is
abandoned. Its thread may be blocked reading a server that drip-feeds its answer: each read gets a byte, so
no socket timeout ever fires, and the thread (and its socket) lived on for as long as the server liked (one
worker held 27 threads and 26 sockets, issue 11 item 10). Here:

* ``TrackingAdapter`` (requests' adapter) makes connections that, on each request they send, record the
  ``InFlight`` of the key thread sending it (``InFlight.run`` sets it for the thread);
* ``InFlight.abandon`` shuts down the sockets of connections still in use by that request's keys, which
  wakes the blocked read: the thread ends at once. A connection a finished key gave back to the shared pool,
  or that another request is using, has another owner and is left alone.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, TypeVar

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

T = TypeVar("T")

_OWNERSHIP = threading.Lock()  # who is using a connection: changed and read under this lock
_current = threading.local()  # the InFlight of the key being fetched on this thread, if any


class InFlight:
    """The HTTP connections one hook request's key threads are using right now (see the module docstring)."""

    def __init__(self) -> None:
        self.abandoned = False
        self.connections: set[Any] = set()  # every connection a key of this request sent on

    def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` (one key) on this thread, its connections claimed for this request until it returns."""
        _current.inflight, _current.claimed = self, []
        try:
            return work()
        finally:
            with _OWNERSHIP:
                for connection in _current.claimed:
                    if getattr(connection, "_cramp_owner", None) is self:
                        connection._cramp_owner = None
            _current.inflight, _current.claimed = None, []

    def abandon(self) -> int:
        """Shut down every connection still claimed for this request; returns how many."""
        closed = 0
        with _OWNERSHIP:
            self.abandoned = True
            for connection in self.connections:
                if getattr(connection, "_cramp_owner", None) is not self:
                    continue
                sock = getattr(connection, "sock", None)
                if sock is None:
                    continue
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: wakes a blocked read
                    closed += 1
                except OSError:
                    pass  # already closed by its own thread
            self.connections.clear()
        return closed


def _claim(connection: Any) -> None:
    """Called by a connection about to send a request: it belongs to this thread's key until the key returns."""
    inflight = getattr(_current, "inflight", None)
    with _OWNERSHIP:
        connection._cramp_owner = inflight
        if inflight is not None and not inflight.abandoned:
            inflight.connections.add(connection)
            _current.claimed.append(connection)


class _TrackedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _claim(self)
        super().request(*args, **kwargs)


class _TrackedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _claim(self)
        super().request(*args, **kwargs)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_TRACKED_POOLS = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class TrackingAdapter(HTTPAdapter):
    """requests' adapter, with connections that say which hook request is using them (``InFlight``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_TRACKED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_TRACKED_POOLS)
        return manager
