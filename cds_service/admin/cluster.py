"""The population dry run on a Dask distributed cluster (``rules simulate --cluster tcp://host:port``), for
populations past one machine. Optional: ``pip install 'leg-cramp-cds[distributed]'``.

The patients are cut into shards (``SHARD_SIZE``); each shard is one Dask task running
``simulation.run_shard`` on a worker, which builds its engines once per run from the rule sets sent with
the tasks (no rule file needs to exist on the workers). Results come back in the order of the patients.
Bundle-file sources are read by the workers (the paths must be on a filesystem they share); NDJSON and
FHIR-server sources are read here and their records sent. Workers need this package installed, at the
same version.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Iterator

from cds_service.admin.simulation import PatientResult, SourceError, Task, run_shard
from cds_service.ruleset.loader import RuleSet

SHARD_SIZE = 64
CONNECT_TIMEOUT_SECONDS = 10


class ClusterError(SourceError):
    """The cluster cannot be used (Dask not installed, scheduler unreachable); names the address."""


def shards(tasks: list[Task], size: int = SHARD_SIZE) -> list[list[Task]]:
    return [tasks[start:start + size] for start in range(0, len(tasks), size)]


def run_on_cluster(address: str, tasks: list[Task], rule_sets: list[RuleSet], as_of: date,
                   shard_size: int | None = None) -> Iterator[PatientResult]:
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError(f"{address}: Dask distributed is not installed "
                           "(pip install 'leg-cramp-cds[distributed]')") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"{address}: Dask scheduler not reachable ({type(exc).__name__})") from None
    with client:
        run_key = str(uuid.uuid4())
        [rules] = client.scatter([rule_sets], broadcast=True)
        futures = client.map(run_shard, shards(tasks, shard_size or SHARD_SIZE), rule_sets=rules, as_of=as_of,
                             run_key=run_key, pure=False)
        try:
            for future in futures:  # in order: the report lists patients as the sources do
                yield from future.result()
        finally:
            client.cancel(futures)
