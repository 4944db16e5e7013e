"""The engine's ``Exchange`` for a run over n shards: rows and binding tables are bucketed by
the owner hash (``hashing``, ``buckets``) and moved by a ``Transport`` (transport.py).

The transport is a constructor argument (as distributed's P2P shuffle run takes its RPC): on a
Dask cluster the phase's worker-to-worker connections (spmd/mesh.py, cluster/runtime/comm.py);
in one process threads (spmd/threads.py), so any number of shards run inside a test.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

from dask_datalog.engine.execution.bindings import Bindings
from dask_datalog.engine.execution.exchange import Target
from dask_datalog.engine.values import Made, agreed_made
from dask_datalog.partition.buckets import bucket, split
from dask_datalog.partition.hashing import shard_of, shard_of_rows
from dask_datalog.partition.transport import Transport


class ShardExchange:
    """``engine.exchange.Exchange`` over a transport: one all-to-all per ``route`` or
    ``repartition``, with only non-empty blocks in the messages."""

    def __init__(self, transport: Transport, xp: Any):
        self.transport = transport
        self.rank = transport.rank
        self.size = transport.size
        self.xp = xp
        self._reported = transport.stats.snapshot()

    def route(self, blocks: dict[Target, Any], count: int, flags: int = 0) -> tuple[dict[Target, list[Any]], int, int]:
        parts: list[dict[Target, Any]] = [{} for _ in range(self.size)]
        for (name, key), rows in blocks.items():
            if key is None:  # a replicated relation: every shard gets all of it
                for part in parts:
                    part[(name, key)] = rows
                continue
            owners = shard_of_rows(rows, key, self.size, self.xp)
            for part, block in zip(parts, split(*bucket(rows, owners, self.size, self.xp))):
                if block.shape[0]:
                    part[(name, key)] = block
        received = self.transport.alltoall([(count, flags, part) for part in parts])
        arrived: dict[Target, list[Any]] = {}
        for _, _, part in received:
            for target, rows in part.items():
                arrived.setdefault(target, []).append(rows)
        return arrived, sum(c for c, _, _ in received), functools.reduce(operator.or_, (f for _, f, _ in received), 0)

    def repartition(self, b: Bindings | None, key: tuple[str, ...]) -> Bindings | None:
        parts: list[Any] = [None] * self.size
        if b is not None and b.n:
            owners = shard_of([b.col(v) for v in key], self.size, self.xp)
            for p, block in enumerate(split(*bucket(b.table, owners, self.size, self.xp))):
                parts[p] = (b.names, block) if block.shape[0] else None
        received = [r for r in self.transport.alltoall(parts) if r is not None]
        if not received:
            return None
        names = received[0][0]
        tables = [t for _, t in received]
        return Bindings(tables[0] if len(tables) == 1 else self.xp.concatenate(tables), names)

    def owned(self, columns: list[Any]) -> Any | None:
        return shard_of(columns, self.size, self.xp) == self.rank

    def share(self, n: int) -> tuple[int, int]:
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def agree(self, made: Made) -> Made:
        return agreed_made(self.transport.allgather(made))

    def agree_count(self, count: int) -> tuple[int, int]:
        counts = self.transport.allgather(count)
        return sum(counts[: self.rank]), sum(counts)

    def take_stats(self) -> dict[str, Any]:
        now = self.transport.stats.snapshot()
        delta = {k: round(now[k] - self._reported[k], 6) for k in now}
        self._reported = now
        return delta
