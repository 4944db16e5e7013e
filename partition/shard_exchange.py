"""The engine's ``Exchange`` for a run over n shards: rows and binding tables are bucketed by
the owner hash (``hashing``, ``buckets``) and moved by a ``Transport``.

The transport is a constructor argument (as distributed's P2P shuffle run takes its RPC): on a
Dask cluster it is the job's worker-to-worker collectives (``cluster/exchange.py``: direct
sockets or Dask RPC); in one process it is ``cluster/threads.py``'s, so any number of shards
run inside a test.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dask_datalog.engine.execution.evaluate import Bindings
from dask_datalog.engine.execution.exchange import Target

from dask_datalog.partition.buckets import bucket, split
from dask_datalog.partition.hashing import shard_of, shard_of_rows


@dataclass
class ExchangeStats:
    """What one shard's collectives cost: ``send_s`` sending (serialisation and transfer),
    ``wait_s`` waiting for the slowest peer (coordination), bytes that left and arrived."""

    rounds: int = 0
    send_s: float = 0.0
    wait_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0

    def snapshot(self) -> dict[str, float]:
        return {
            "rounds": self.rounds,
            "send_s": round(self.send_s, 6),
            "wait_s": round(self.wait_s, 6),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }


class Transport(Protocol):
    """One shard's end of the collectives of a group of ``size`` shards. Every shard calls
    them in the same order; any of them may raise to stop the run (a peer failed)."""

    rank: int
    size: int
    stats: ExchangeStats

    def alltoall(self, parts: Sequence[Any]) -> list[Any]:
        """Send ``parts[p]`` to shard p; what every shard sent to this one, by rank."""
        ...

    def allgather(self, part: Any) -> list[Any]:
        """Every shard's ``part``, by rank."""
        ...


def payload_bytes(payload: Any) -> int:
    """Bytes of array data in a message (arrays, possibly inside dicts, lists and tuples)."""
    if hasattr(payload, "nbytes"):
        return int(payload.nbytes)
    if isinstance(payload, dict):
        return sum(payload_bytes(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(v) for v in payload)
    return 0


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

    def take_stats(self) -> dict[str, Any]:
        now = self.transport.stats.snapshot()
        delta = {k: round(now[k] - self._reported[k], 6) for k in now}
        self._reported = now
        return delta
