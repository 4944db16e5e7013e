"""Worker-to-worker collectives for one job, without the scheduler or the client in the path.

Every worker of a job runs one long-running task (``tasks.py``) that executes the same plan,
so all of them reach the same collectives in the same order: a collective is named by its
sequence number, and each worker sends its part to every peer and then waits for the peers'
parts. Messages travel as direct RPCs between workers (``worker.rpc(peer).datalog_put``),
handled by ``DatalogPlugin``, which files them in the job's mailbox; NumPy/CuPy payloads go
through Dask's serialisation as frames (no pickling of array data). A peer may run ahead by
one collective, so the mailbox buffers by sequence number.

Measured on the 2-core machine (BRIEF section 4, and this layer's chain benchmark): a task
per iteration costs 10-30 ms through the scheduler; one round of these RPCs costs ~1-3 ms.

A job that fails anywhere must not leave its peers waiting forever: the failing worker's
exception reaches the client, which aborts the job on every worker (``abort``), and a waiting
worker also gives up when its own task is no longer wanted (the client released it, e.g.
``Client.close`` or Ctrl-C), checked every ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin
from distributed.protocol import to_serialize
from distributed.utils import sync

PLUGIN_NAME = "dask-datalog"
POLL_S = 0.5  # how often a waiting worker checks that its job is still alive


class JobAborted(RuntimeError):
    """The job was stopped on another worker or by the client; this worker stops too."""


@dataclass
class Mailbox:
    """Messages of one job on one worker, by collective number and sender."""

    messages: dict[int, dict[int, Any]] = field(default_factory=lambda: defaultdict(dict))
    aborted: str | None = None
    arrived: threading.Condition = field(default_factory=threading.Condition)


class DatalogPlugin(WorkerPlugin):
    """Per worker: the RPC handler peers send to, and the mailboxes of the jobs running there.
    Registered once per cluster (``runtime.ensure_plugin``); jobs are kept apart by id."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.lock = threading.Lock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.closed: set[str] = set()  # finished jobs: late messages are dropped, not kept
        worker.handlers["datalog_put"] = self.put
        worker.handlers["datalog_abort"] = self.abort

    def mailbox(self, job: str) -> Mailbox | None:
        with self.lock:
            if job in self.closed:
                return None
            return self.mailboxes.setdefault(job, Mailbox())

    def put(self, job: str, seq: int, source: int, payload: Any) -> None:
        box = self.mailbox(job)
        if box is None:
            return
        with box.arrived:
            box.messages[seq][source] = payload
            box.arrived.notify_all()

    def abort(self, job: str, reason: str = "aborted") -> None:
        box = self.mailbox(job)
        if box is None:
            return
        with box.arrived:
            box.aborted = box.aborted or reason
            box.arrived.notify_all()

    def close_job(self, job: str) -> None:
        """Forget the job's mailbox: its buffered messages are freed with it."""
        with self.lock:
            self.mailboxes.pop(job, None)
            self.closed.add(job)

    def teardown(self, worker: Any) -> None:
        for job in list(self.mailboxes):
            self.abort(job, "worker closing")


def payload_bytes(payload: Any) -> int:
    """Bytes of array data in a message (arrays, possibly inside dicts, lists and tuples)."""
    if hasattr(payload, "nbytes"):
        return int(payload.nbytes)
    if isinstance(payload, dict):
        return sum(payload_bytes(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(v) for v in payload)
    return 0


@dataclass
class ExchangeStats:
    """What this worker's collectives cost: ``send_s`` sending (serialisation and transfer),
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


class Collective:
    """One worker's end of a job's collectives. ``peers``: every worker's address, in rank
    order (the same list on all workers); ``rank``: this worker's position in it."""

    def __init__(
        self,
        job: str,
        rank: int,
        peers: Sequence[str],
        worker: Any | None = None,
        alive: Callable[[], bool] = lambda: True,
    ):
        self.job = job
        self.rank = rank
        self.peers = list(peers)
        self.size = len(self.peers)
        self.worker = worker
        self.alive = alive
        self.seq = 0
        self.stats = ExchangeStats()
        self.plugin: DatalogPlugin | None = worker.plugins[PLUGIN_NAME] if worker is not None else None
        self.box = self.plugin.mailbox(job) if self.plugin is not None else None
        if self.size > 1 and self.box is None:
            raise RuntimeError(f"job {job} has {self.size} workers but no mailbox on this one")

    def alltoall(self, parts: Sequence[Any]) -> list[Any]:
        """Send ``parts[p]`` to worker p; return what every worker sent to this one, by rank."""
        if len(parts) != self.size:
            raise ValueError(f"{len(parts)} parts for {self.size} workers")
        self.seq += 1
        self.stats.rounds += 1
        if self.size == 1:
            return [parts[0]]
        seq = self.seq
        t0 = time.perf_counter()
        peers = [p for p in range(self.size) if p != self.rank]
        sent = sum(payload_bytes(parts[p]) for p in peers)
        sync(self.worker.loop, self._send, seq, [(p, parts[p]) for p in peers])
        t1 = time.perf_counter()
        received = self._wait(seq)
        self.stats.send_s += t1 - t0
        self.stats.wait_s += time.perf_counter() - t1
        self.stats.bytes_sent += sent
        self.stats.bytes_received += sum(payload_bytes(received[p]) for p in peers)
        received[self.rank] = parts[self.rank]
        return [received[p] for p in range(self.size)]

    def allgather(self, part: Any) -> list[Any]:
        """Every worker's ``part``, by rank."""
        return self.alltoall([part] * self.size)

    def abort_peers(self, reason: str) -> None:
        """Best effort: wake every peer of this job with an error (used when this worker fails)."""
        if self.size == 1 or self.worker is None:
            return

        async def tell() -> None:
            calls = [
                self.worker.rpc(self.peers[p]).datalog_abort(job=self.job, reason=reason)
                for p in range(self.size)
                if p != self.rank
            ]
            await asyncio.gather(*calls, return_exceptions=True)

        sync(self.worker.loop, tell)

    async def _send(self, seq: int, messages: list[tuple[int, Any]]) -> None:
        await asyncio.gather(
            *(
                self.worker.rpc(self.peers[p]).datalog_put(
                    job=self.job, seq=seq, source=self.rank, payload=to_serialize(part)
                )
                for p, part in messages
            )
        )

    def _wait(self, seq: int) -> dict[int, Any]:
        box = self.box
        assert box is not None
        with box.arrived:
            while True:
                if box.aborted is not None:
                    raise JobAborted(f"job {self.job} stopped: {box.aborted}")
                got = box.messages.get(seq)
                if got is not None and len(got) == self.size - 1:
                    return box.messages.pop(seq)
                if not box.arrived.wait(POLL_S) and not self.alive():
                    raise JobAborted(f"job {self.job} stopped: its task was released by the client")
