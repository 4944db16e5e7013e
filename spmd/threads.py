"""Shards as threads of one process: a ``partition.exchange.Transport`` whose collectives meet
at a barrier. It runs the same shard code as a Dask cluster (``shard.evaluate_shard``,
``output.write_outputs``), so tests run any number of shards in one process, and messages go
through pickle as on a real transport (what cannot travel fails here too)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dask_datalog.engine.errors import Aborted, Suspended
from dask_datalog.partition.transport import TransportStats, payload_bytes

T = TypeVar("T")
TIMEOUT_S = 300.0  # a round that long means a shard diverged: fail rather than hang


class _Group:
    """The mailboxes of one group: ``slots[destination][source]``, reused every round between
    two barriers (all written, then all read)."""

    def __init__(self, size: int, timeout: float):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.slots: list[list[bytes | None]] = [[None] * size for _ in range(size)]

    def wait(self) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise Aborted("another shard of the group failed") from None


class ThreadTransport:
    """One shard's end of a ``_Group``."""

    kind = "threads"

    def __init__(self, group: _Group, rank: int):
        self.group = group
        self.rank = rank
        self.size = group.size
        self.stats = TransportStats()

    def alltoall(self, parts: Sequence[Any]) -> list[Any]:
        if len(parts) != self.size:
            raise ValueError(f"{len(parts)} parts for {self.size} shards")
        self.stats.rounds += 1
        for p, part in enumerate(parts):
            self.group.slots[p][self.rank] = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            if p != self.rank:
                self.stats.bytes_sent += payload_bytes(part)
        self.group.wait()
        received = [pickle.loads(message) for message in self.group.slots[self.rank]]  # type: ignore[arg-type]
        self.group.wait()  # everyone has read before the next round overwrites the slots
        self.stats.bytes_received += sum(payload_bytes(r) for p, r in enumerate(received) if p != self.rank)
        return received

    def allgather(self, part: Any) -> list[Any]:
        return self.alltoall([part] * self.size)


def run_in_threads(size: int, shard: Callable[[ThreadTransport], T], timeout: float = TIMEOUT_S) -> list[T]:
    """``shard(transport)`` on ``size`` threads, one per rank; their results by rank. The first
    failure stops the others (their collectives raise ``Aborted``) and is raised here."""
    group = _Group(size, timeout)
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def body(rank: int) -> None:
        try:
            results[rank] = shard(ThreadTransport(group, rank))
        except Suspended as error:  # every shard stops at the same boundary: nobody waits on it
            errors[rank] = error
        except BaseException as error:  # handed to the caller below, never dropped
            errors[rank] = error
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(rank,), name=f"shard-{rank}") for rank in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures = [e for e in errors if e is not None]
    if failures:
        raise next((e for e in failures if not isinstance(e, Aborted)), failures[0])
    return results
