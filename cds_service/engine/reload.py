"""Rule-set reload without downtime, from a source of rule sets: a file (``CRAMP_RULES_SOURCE=file`` with
``CRAMP_RULES_FILE``) or the versions deployed in the database (``admin/rule_versions.DatabaseRuleSource``).

``EngineSwitch`` holds the current ``Engine``. A request takes the engine once, at its start
(``current()``), and keeps it to the end: a reload builds a whole new Engine and swaps one reference
(atomic under the GIL), so requests in flight finish with the engine they started with.

A ``RuleSource`` has three methods: ``state()`` (a cheap token that changes when the rules do: a file's
mtime and size, the database's deployment sequence), ``load()`` (the ``RuleSet``) and ``describe()``
(for the log). A reload happens when:

* the source's state changed: ``current()`` asks for it at most every ``check_every`` seconds, from the
  request path (no extra thread, no dependency);
* SIGHUP reached this process (``install_sighup``; the handler only sets a flag, the next request
  reloads). Under gunicorn, ``kill -HUP <master pid>`` is gunicorn's own graceful reload instead: new
  workers start (each reads the rules) and the old ones finish their requests first (docs/rule-set.md).

An invalid new rule set is not used: the last valid one stays, and one warning lists the problems (the
same state is not retried until it changes again). A source that cannot answer (``RuleSourceUnavailable``:
the database is down) keeps the current engine too, with one warning until it answers again. Only one
thread reloads at a time; the others go on with the current engine.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Hashable, Protocol

from cds_service.engine.pipeline import Engine
from cds_service.ruleset.loader import RuleSet, RuleSetError, load_ruleset

log = logging.getLogger(__name__)

FileState = tuple[int, int] | None  # (mtime_ns, size), None when the file cannot be read
UNAVAILABLE_RETRY_SECONDS = 10.0  # a source that did not answer is asked again after this long, not every check


class RuleSourceUnavailable(Exception):
    """The source cannot be read now (the database does not answer); the message says why, without secrets."""


class RuleSource(Protocol):
    def state(self) -> Hashable:
        """A cheap token, equal as long as the rules are the same (``RuleSourceUnavailable``)."""

    def load(self) -> RuleSet:
        """The rule set now (``RuleSetError`` when invalid, ``RuleSourceUnavailable``)."""

    def describe(self) -> str:
        """Where the rules come from, for the log (``file /path``, ``database``)."""


def _file_state(path: Path) -> FileState:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


class FileRuleSource:
    """A rules file: its state is (mtime, size)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def state(self) -> FileState:
        return _file_state(self.path)

    def load(self) -> RuleSet:
        return load_ruleset(self.path)

    def describe(self) -> str:
        return str(self.path)


def _problems(error: RuleSetError) -> str:
    return "; ".join(f"{f'line {line}: ' if line else ''}{path}: {message}" for line, path, message in error.located)


class EngineSwitch:
    def __init__(self, source: RuleSource | Path, engine: Engine, build: Callable[[RuleSet], Engine], *,
                 check_every: float = 2.0, monotonic: Callable[[], float] = time.monotonic,
                 state: Hashable = None) -> None:
        """``state``: the source's state ``engine`` was built from, when the caller read it (else read now)."""
        self.source: RuleSource = FileRuleSource(source) if isinstance(source, (str, Path)) else source
        self._engine = engine
        self._build = build
        self._check_every = check_every
        self._monotonic = monotonic
        self._unavailable = False  # the source did not answer at the last check (warned once)
        self._state = state if state is not None else self._read_state()
        self._next_check = monotonic() + check_every
        self._lock = threading.Lock()
        self._hup = threading.Event()

    @property
    def path(self) -> Path | None:
        """The rules file of a file source (None for another source)."""
        return getattr(self.source, "path", None)

    @property
    def engine(self) -> Engine:
        return self._engine

    def current(self) -> Engine:
        """The engine for a new request, after a reload if one is due."""
        now = self._monotonic()
        if self._hup.is_set() or now >= self._next_check:
            self._maybe_reload(now)
        return self._engine

    def request_reload(self) -> None:
        """Ask for a reload at the next request (signal-safe: only sets a flag)."""
        self._hup.set()

    def check_now(self) -> None:
        """Make the next request check the source (after a deploy from this process: no 2 s wait here)."""
        self._next_check = 0.0

    def reload(self, reason: str = "requested") -> bool:
        """Reload now; True when a new rule set took effect."""
        with self._lock:
            return self._reload_locked(reason)

    def _maybe_reload(self, now: float) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking or reloading: go on with the current engine
        try:
            self._next_check = now + self._check_every
            if self._hup.is_set():
                self._hup.clear()
                self._reload_locked("SIGHUP")
                return
            state = self._read_state()
            if state is _UNKNOWN:  # a database that does not answer may make each check wait its timeout
                self._next_check = now + max(self._check_every, UNAVAILABLE_RETRY_SECONDS)
            elif state != self._state:
                self._reload_locked("source changed" if self.path is None else "file changed")
        finally:
            self._lock.release()

    def _read_state(self) -> Hashable:
        """The source's state, or ``_UNKNOWN`` when it does not answer (one warning until it answers)."""
        try:
            state = self.source.state()
        except RuleSourceUnavailable as error:
            self._source_unavailable(error)
            return _UNKNOWN
        if self._unavailable:
            self._unavailable = False
            log.warning("rule source answers again: %s", self.source.describe())
        return state

    def _source_unavailable(self, error: RuleSourceUnavailable) -> None:
        if not self._unavailable:
            self._unavailable = True
            log.warning("rule source not checked (%s): %s; serving version %s until it answers",
                        self.source.describe(), error, self._engine.ruleset.version)

    def _reload_locked(self, reason: str) -> bool:
        state = self._read_state()
        old = self._engine.ruleset.version
        where = self.source.describe()
        try:
            engine = self._build(self.source.load())
        except RuleSourceUnavailable as error:
            self._source_unavailable(error)
            return False  # state unchanged: tried again at the next check
        except RuleSetError as error:
            self._state = state  # don't retry the same bad rules on every check
            log.warning("rule set not reloaded (%s): %s is invalid, keeping version %s: %s",
                        reason, error.source or where, old, _problems(error))
            return False
        if state is not _UNKNOWN:
            self._state = state
        self._engine = engine  # one reference swap: requests in flight keep the engine they took
        log.info("rule set reloaded (%s): %s, version %s -> %s", reason, where, old, engine.ruleset.version)
        return True

    def install_sighup(self) -> bool:
        """Reload on SIGHUP in this process; only from the main thread, and only when nothing else (a
        gunicorn master, say) handles SIGHUP here. Returns whether the handler was installed."""
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None):
            return False
        signal.signal(signal.SIGHUP, lambda signum, frame: self.request_reload())
        # (a file: worth a line at start; the database is polled anyway, SIGHUP only checks it at once)
        log.log(logging.INFO if self.path else logging.DEBUG, "SIGHUP reloads the rule set %s (pid %d)",
                self.source.describe(), os.getpid())
        return True


_UNKNOWN = object()  # a state that never equals another: the source did not answer


# ---------------------------------------------------------------- across gunicorn's graceful reload
#
# ``kill -HUP <master>`` makes gunicorn fork new workers, which build their app from the file. So that an
# invalid file then does not stop the workers from booting (gunicorn halts when a worker fails to boot),
# the last valid rule set of each file is remembered in the process: the master remembers it at start
# (``cramp-cds serve`` builds the app once before forking) and on every HUP (``on_reload``), and forked
# workers inherit it.

_LAST_VALID: dict[str, RuleSet] = {}


def load_ruleset_keeping_last_valid(path: Path) -> RuleSet:
    """``load_ruleset(path)``; when the file is invalid but a valid version was loaded before in this
    process (or its parent), log one warning and return that one. Raises RuleSetError otherwise (start
    refused)."""
    key = str(Path(path).resolve())
    try:
        ruleset = load_ruleset(path)
    except RuleSetError as error:
        last = _LAST_VALID.get(key)
        if last is None:
            raise
        log.warning("rule set %s is invalid, keeping version %s: %s", path, last.version, _problems(error))
        return last
    _LAST_VALID[key] = ruleset
    return ruleset


def gunicorn_on_reload(server: object) -> None:
    """gunicorn ``on_reload`` hook (in the master, on HUP, before new workers fork): re-read the file."""
    rules = os.environ.get("CRAMP_RULES_FILE")
    if rules:
        try:
            load_ruleset_keeping_last_valid(Path(rules))
        except RuleSetError as error:
            log.warning("rule set %s is invalid and none was loaded before: %s", rules, error)


def gunicorn_post_worker_init(worker: object) -> None:
    """gunicorn ``post_worker_init`` hook: SIGHUP sent to one worker reloads its rule set in place."""
    app = getattr(worker, "wsgi", None)
    switch = getattr(app, "extensions", {}).get("leg_cramp_engines") if app is not None else None
    if switch is not None:
        switch.install_sighup()
