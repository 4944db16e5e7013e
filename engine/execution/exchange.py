"""The seam between the engine's semi-naive loop and the other shards of a run.

The loop (evaluate.py) is the only one: it runs every rule version on this shard's data and
calls an ``Exchange`` at the points where a run over several shards must communicate. Those
points are declared here and nowhere else, in the manner of Soufflé's semi-naive translation
(the loop and its exit are fixed; variants plug in through declared hooks):

- ``route``: where rows go. Head tuples at the end of an iteration, input rows at load, deltas
  to the other copies of a relation: each block names its target (relation, copy key) and ends
  up on the shards that hold that copy. It also sums a count over all shards, which is how
  every shard learns whether anything moved anywhere (the fixpoint test, at no extra round),
  and ORs request bits (``control.SAVE``/``STOP``), so all shards checkpoint at one boundary.
- ``repartition``: a binding table re-partitioned by the hash of some variables, before a step
  routed ``exchange``.
- ``owned``: the rows of an everywhere-identical binding table that this shard owns.
- ``share``: the block of a replicated relation's rows this shard scans (``slice``).
- ``agree``: the texts symbol-making functors made on any shard and the table lacks (or the
  records a step made), so every shard appends the same values in the same order and ids stay
  the same everywhere; ``agree_count``: where this shard's part of a run-wide sequence
  (``autoinc``) starts.

A single shard uses ``LocalExchange``: every row is already where it belongs.
``partition.exchange.ShardExchange`` is the implementation for n shards; it takes its
transport in the constructor, so n shards run as well in one test process as on a cluster.
"""

from __future__ import annotations

from typing import Any, Protocol

from dask_datalog.engine.plan import Key
from dask_datalog.engine.values import Made

Target = tuple[str, Key | None]  # (relation, copy key); None: the relation's only copy, whole


class Exchange(Protocol):
    """One shard's end of a run's communication. Every shard calls the collective methods
    (``route``, ``repartition``) the same number of times in the same order."""

    rank: int
    size: int

    def route(self, blocks: dict[Target, Any], count: int, flags: int = 0) -> tuple[dict[Target, list[Any]], int, int]:
        """Send each block of packed rows to the shards holding its target: by the owners of
        the target's key, or to every shard for key None. Returns what arrived here, per
        target (blocks from every sender, this one included), ``count`` summed over all
        shards and ``flags`` ORed over all shards. Collective."""
        ...

    def repartition(self, b: Any | None, key: tuple[str, ...]) -> Any | None:
        """The rows of a binding table (``evaluate.Bindings``; None: this shard has none)
        moved to the owners of the ``key`` variables' values; the table of what this shard
        now holds, or None. Collective."""
        ...

    def owned(self, columns: list[Any]) -> Any | None:
        """Boolean mask of the rows this shard owns, by the hash of ``columns``; None when it
        owns them all."""
        ...

    def share(self, n: int) -> tuple[int, int]:
        """The contiguous block [lo, hi) of n rows this shard handles."""
        ...

    def agree(self, made: Made) -> Made:
        """``values.agreed_made`` of every shard's ``made`` (texts made here that the symbol
        table lacks, or records the record table lacks): what every shard appends. Collective."""
        ...

    def agree_count(self, count: int) -> tuple[int, int]:
        """(the sum of ``count`` over the shards of lower rank, its sum over all shards): where
        this shard's share of a run-wide sequence (``autoinc``) starts, and how far it goes.
        Collective."""
        ...

    def take_stats(self) -> dict[str, Any]:
        """Communication since the last call (bytes, rounds, time), for an iteration's record;
        empty when there is none."""
        ...


class LocalExchange:
    """One shard: every collective is the identity."""

    rank = 0
    size = 1

    def route(self, blocks: dict[Target, Any], count: int, flags: int = 0) -> tuple[dict[Target, list[Any]], int, int]:
        return {target: [rows] for target, rows in blocks.items()}, count, flags

    def repartition(self, b: Any | None, key: tuple[str, ...]) -> Any | None:
        return b

    def owned(self, columns: list[Any]) -> Any | None:
        return None

    def share(self, n: int) -> tuple[int, int]:
        return 0, n

    def agree(self, made: Made) -> Made:
        return made

    def agree_count(self, count: int) -> tuple[int, int]:
        return 0, count

    def take_stats(self) -> dict[str, Any]:
        return {}
