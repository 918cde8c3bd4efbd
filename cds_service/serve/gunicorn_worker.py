"""The gunicorn worker the service runs in: gthread, accepting no more connections than it has threads.

gunicorn's gthread worker accepts up to ``worker_connections`` (1000) connections and queues those its threads
can't take yet inside itself. Behind calls hanging on a slow FHIR server (each up to
``CRAMP_FHIR_DEADLINE_SECONDS``) a request that carries its prefetch then waited seconds while other workers had
free threads (issue 11 item 10: 3.7 s for a 7 ms call). With keep-alive off (the default, ``CRAMP_KEEPALIVE=0``)
this worker stops accepting while every thread is busy, so new requests stay in the shared listen queue for a
worker with a free thread. With keep-alive on, gunicorn's own limit is kept: idle kept-alive connections need
room beyond the threads.

A new connection's thread first waits for the request to arrive (a client that sends nothing must not hold a
thread): gunicorn makes, registers and closes an epoll selector for it, for every connection, three system
calls and their Python objects (py-spy, issue 15). Here a connection whose request has already arrived, the
usual case, skips that wait (one non-blocking peek); only a silent one goes through gunicorn's.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class ThreadBoundWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.cfg.keepalive:
            self.worker_connections = self.cfg.threads

    def handle(self, conn: Any) -> Any:
        if not conn.initialized and not conn.data_ready and request_arrived(conn.sock):
            conn.data_ready = True  # gunicorn's own flag: the data is there, no selector needed
        return super().handle(conn)


def request_arrived(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes to read now (or the client closed it: reading then ends the connection)."""
    try:
        sock.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # reset or the like: let gunicorn's handling of the read see it
    return True
