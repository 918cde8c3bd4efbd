"""Is the address the server is about to listen on free? Checked before gunicorn starts, so that a busy
port stops the start with one line naming the way to choose another (gunicorn itself retries five times
and then says only "Can't connect")."""

from __future__ import annotations

import errno
import socket

from cds_service.settings import SettingsError

HOW_TO_CHOOSE = "choose another port: PORT=N scripts/run-dev, cramp-cds serve --port N, or CRAMP_BIND=HOST:N"


def check_bind_free(bind: str) -> None:
    """SettingsError when ``bind`` ("HOST:PORT", "[::1]:PORT"; "unix:PATH" is not checked) is in use.

    Bound with SO_REUSEADDR, as gunicorn binds: a port left in TIME_WAIT by a stopped server is free."""
    if bind.startswith("unix:"):
        return
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SettingsError(f"port {port} on {host} is already in use: {HOW_TO_CHOOSE}") from None
            raise SettingsError(f"cannot listen on {bind}: {error.strerror}") from None
