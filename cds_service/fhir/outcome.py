"""What one prefetch key's fetch gave (the engine's ``prefetch.Fetcher`` returns one per key).

Defined here, below the engine, so that the FHIR client does not import the engine: the engine imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FetchOutcome:
    resources: list[dict[str, Any]] | None  # None: could not be had
    complete: bool = True
    reason: str | None = None  # why it failed or stopped: safe to show a client (no URL, no patient id)
