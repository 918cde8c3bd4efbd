"""The gunicorn worker the service runs in: gthread, accepting no more connections than it has threads.

gunicorn's gthread worker accepts up to ``worker_connections`` (1000) connections and queues those its threads
can't take yet inside itself. Behind calls hanging on a slow FHIR server (each up to
``CRAMP_FHIR_DEADLINE_SECONDS``) a request that carries its prefetch then waited seconds while other workers had
free threads (issue 11 item 10: 3.7 s for a 7 ms call). With keep-alive off (the default, ``CRAMP_KEEPALIVE=0``)
this worker stops accepting while every thread is busy, so new requests stay in the shared listen queue for a
worker with a free thread. With keep-alive on, gunicorn's own limit is kept: idle kept-alive connections need
room beyond the threads.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.gthread import ThreadWorker


class ThreadBoundWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.cfg.keepalive:
            self.worker_connections = self.cfg.threads
