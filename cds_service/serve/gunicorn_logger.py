"""Gunicorn's logger, doing no access-log work when the access log is off (the default, CRAMP_ACCESS_LOG).

Gunicorn counts its access log as enabled whenever ``logconfig_dict`` is set, which this service always sets
(its own logs as JSON lines, gunicorn_conf.json_logconfig). It then computed the access-log atoms (headers,
times, the request line) for every request, only for the ``gunicorn.access`` logger, held at CRITICAL, to drop
the line: 3-5 % of a worker's time on the served path (py-spy, issue 15). Here the access log is on only when
``accesslog`` is set, which gunicorn_conf does for CRAMP_ACCESS_LOG=true.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger


class ServiceLogger(Logger):
    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)
