"""Shards of work on a Dask distributed cluster, for populations past one machine (``rules simulate
--cluster tcp://host:port``). Optional: ``pip install 'leg-cramp-cds[distributed]'``.

``map_shards`` cuts the items into shards (``SHARD_SIZE``) and runs each as one Dask task (the dry run's
``simulation.run_shard``), sending the shared arguments (the rule sets) once to every worker; results come
back in the order of the items. Workers need this package installed, at the same version.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

SHARD_SIZE = 64
CONNECT_TIMEOUT_SECONDS = 10


class ClusterError(ValueError):
    """The cluster cannot be used (Dask not installed, scheduler unreachable); names the address."""


def shards(items: Sequence[Item], size: int) -> list[list[Item]]:
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


def map_shards(address: str, function: Callable[..., list[Result]], items: Sequence[Item],
               shard_size: int | None = None, **shared: Any) -> Iterator[Result]:
    """``function(shard, **shared)`` for each shard of ``items`` on the cluster at ``address``."""
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
        [sent] = client.scatter([shared], broadcast=True)  # once per worker, not once per shard
        futures = client.map(_call, shards(items, shard_size or SHARD_SIZE), function=function, shared=sent,
                             pure=False)
        try:
            for future in futures:  # in order: the report lists patients as the sources do
                yield from future.result()
        finally:
            client.cancel(futures)


def _call(shard: list[Any], function: Callable[..., list[Any]], shared: dict[str, Any]) -> list[Any]:
    return function(shard, **shared)
