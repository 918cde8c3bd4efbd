"""What the engine and the stores report while they work, as an interface: they are told an observer,
they never import the metrics library. ``web/metrics.py`` implements it with prometheus_client; the CLI
and the admin tools run with ``NULL_OBSERVER``.

    EngineObserver    one hook call: its evaluation time, each prefetch key's outcome, the cards returned,
                      the records skipped, an all-clear refused over incomplete data
    StorageObserver   the card ledger or the shared JWT replay cache did not answer
    Observer          both, as one object (what the web layer builds per application)

Every value passed is low-cardinality by construction: service ids, prefetch keys, card ids, resource types
and fixed reasons; never a patient id, a hookInstance or a URL.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

#: How a prefetch key was satisfied (``prefetch.key_outcomes``).
KEY_OUTCOMES = ("sent", "fetched", "not_checked", "incomplete")


class EngineObserver(Protocol):
    def evaluation_finished(self, service_id: str, seconds: float) -> None:
        """The engine's own work for one call, prefetch to cards."""

    def prefetch_keys_resolved(self, service_id: str, outcomes: Mapping[str, str]) -> None:
        """Prefetch key -> one of ``KEY_OUTCOMES``, for each key of the service that has data or lacks it."""

    def cards_returned(self, service_id: str, cards: Sequence[tuple[str, str]]) -> None:
        """(card id, indicator) of each card in the response."""

    def records_skipped(self, service_id: str, by_resource_type: Mapping[str, int]) -> None:
        """Records left out of one call as invalid or another patient's, counted by resource type."""

    def all_clear_refused(self, service_id: str, keys: Sequence[str]) -> None:
        """No card over required keys whose pages were not all read: answered 412 instead."""


class StorageObserver(Protocol):
    def ledger_unavailable(self, operation: str) -> None:
        """``operation``: "record_shown", "suppression_check" or "feedback"."""

    def replay_fallback(self, store: str) -> None:
        """A JWT replay check answered from memory: ``store`` ("database", "redis") did not answer."""


class Observer(EngineObserver, StorageObserver, Protocol):
    """Everything reported by one application's engine and stores."""


class NullObserver:
    """Reports nowhere: the CLI, the admin tools, tests that don't look."""

    def evaluation_finished(self, service_id: str, seconds: float) -> None:
        pass

    def prefetch_keys_resolved(self, service_id: str, outcomes: Mapping[str, str]) -> None:
        pass

    def cards_returned(self, service_id: str, cards: Sequence[tuple[str, str]]) -> None:
        pass

    def records_skipped(self, service_id: str, by_resource_type: Mapping[str, int]) -> None:
        pass

    def all_clear_refused(self, service_id: str, keys: Sequence[str]) -> None:
        pass

    def ledger_unavailable(self, operation: str) -> None:
        pass

    def replay_fallback(self, store: str) -> None:
        pass


NULL_OBSERVER: Observer = NullObserver()
