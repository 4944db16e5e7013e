"""What a run over n shards needs from the layer that moves data: a ``Transport``, one shard's
end of the collectives of its group, and what they cost (``TransportStats``). Implementations:
``LocalTransport`` (one shard: nothing moves), spmd/threads.py (shards as threads of a test
process), spmd/mesh.py (direct sockets between Dask workers) and cluster/runtime/comm.py
(Dask's comms: tcp, tls, ucx)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class TransportStats:
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

    kind: str  # what moves the data, for the statistics: local, threads, mesh, comm
    rank: int
    size: int
    stats: TransportStats

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


class LocalTransport:
    """The group of one: every collective hands the part back."""

    kind = "local"
    rank = 0
    size = 1

    def __init__(self) -> None:
        self.stats = TransportStats()

    def alltoall(self, parts: Sequence[Any]) -> list[Any]:
        if len(parts) != 1:
            raise ValueError(f"{len(parts)} parts for 1 shard")
        self.stats.rounds += 1
        return [parts[0]]

    def allgather(self, part: Any) -> list[Any]:
        return self.alltoall([part])


class Rounds:
    """What a transport between processes does around each round, whatever moves the bytes: the
    round's number, the stop check (at most every ``poll_s``, also when rounds never wait), the
    statistics. ``run(parts, exchange)`` calls ``exchange(seq, {peer: part})``, which returns
    what each peer sent and when this shard's sends were done."""

    def __init__(self, rank: int, size: int, check: Callable[[], None], poll_s: float):
        self.rank, self.size, self.check, self.poll_s = rank, size, check, poll_s
        self.seq = 0
        self.stats = TransportStats()
        self._checked = time.monotonic()

    def run(self, parts: Sequence[Any], exchange: Callable[[int, dict[int, Any]], tuple[dict[int, Any], float]]) -> list[Any]:
        if len(parts) != self.size:
            raise ValueError(f"{len(parts)} parts for {self.size} shards")
        self.seq += 1
        self.stats.rounds += 1
        now = time.monotonic()
        if now - self._checked >= self.poll_s:
            self._checked = now
            self.check()
        peers = [p for p in range(self.size) if p != self.rank]
        t0 = time.perf_counter()
        received, sent_at = exchange(self.seq, {p: parts[p] for p in peers})
        self.stats.send_s += sent_at - t0
        self.stats.wait_s += time.perf_counter() - sent_at
        self.stats.bytes_sent += sum(payload_bytes(parts[p]) for p in peers)
        self.stats.bytes_received += sum(payload_bytes(received[p]) for p in peers)
        received[self.rank] = parts[self.rank]
        return [received[p] for p in range(self.size)]
