"""Worker-to-worker collectives for one job on a Dask cluster: the ``partition.exchange.Transport``
that the shards of a job use there, without the scheduler or the client in the path.

Every worker of a job runs one long-running task (``tasks.py``) that executes the same plan,
so all of them reach the same collectives in the same order: a collective is named by its
sequence number, and each worker sends its part to every peer and then waits for the peers'
parts. On ``tcp://`` clusters the parts travel over direct sockets (``mesh.py``); elsewhere as
one-way RPCs between workers, handled by ``DatalogPlugin``, which files them in the job's
mailbox (a peer may run ahead by one collective, so the mailbox buffers by sequence number).
A task per iteration through the scheduler would cost 10-30 ms; a round costs about 1 ms
(docs/benchmarks.md).

A job that fails anywhere must not leave its peers waiting forever: the failing worker's
exception reaches the client, which aborts the job on every worker (``abort``), and a waiting
worker also gives up when its own task is no longer wanted (the client released it, e.g.
``Client.close`` or Ctrl-C), checked every ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

from dask_datalog.partition.transport import TransportStats, payload_bytes

from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.engine.errors import Aborted, PeerLost
from dask_datalog.spmd.mesh import Mesh

PLUGIN_NAME = "dask-datalog"
POLL_S = 0.5  # how often a waiting worker checks that its job is still alive
INLINE_BELOW = 1 << 20  # parts with less array data than this travel pickled inline
CLOSED_KEPT = 4096  # ended phases remembered per worker, so their late messages are dropped
ABORT_PEERS_S = 2.0  # how long a failing worker tries to tell its peers (a lost peer never answers)


@dataclass
class Mailbox:
    """Messages of one job on one worker, by collective number and sender. Touched only on the
    worker's event loop (the handlers and ``DaskTransport``'s rounds run there), so it needs no lock."""

    messages: dict[int, dict[int, Any]] = field(default_factory=lambda: defaultdict(dict))
    aborted: str | None = None
    suspend: bool = False  # the client asked for a checkpoint and a stop at the next boundary
    waiter: tuple[int, int, asyncio.Future] | None = None  # (collective, messages needed, future)

    def wake(self) -> None:
        """Resolve the waiting round if its messages are all in, or fail it on abort."""
        if self.waiter is None or self.waiter[2].done():
            return
        seq, needed, future = self.waiter
        if self.aborted is not None:
            future.set_exception(Aborted(self.aborted))
        elif len(self.messages.get(seq, ())) >= needed:
            future.set_result(None)


class DatalogPlugin(WorkerPlugin):
    """Per worker: the RPC handlers peers send to, and the mailboxes of the jobs running there.
    Registered once per cluster (``runtime.ensure_plugin``); jobs are kept apart by id."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.lock = threading.Lock()  # the mailbox table is also read from task threads
        self.mailboxes: dict[str, Mailbox] = {}
        # Ended phases, oldest first: a late message for one is dropped, not kept in a new
        # mailbox. Bounded: a message later than CLOSED_KEPT phases does not happen.
        self.closed: OrderedDict[str, None] = OrderedDict()
        dask_adapter.add_handler(worker, "datalog_put", self.put)
        dask_adapter.add_handler(worker, "datalog_abort", self.abort)

    def mailbox(self, job: str) -> Mailbox | None:
        with self.lock:
            if job in self.closed:
                return None
            return self.mailboxes.setdefault(job, Mailbox())

    def put(self, job: str, seq: int, source: int, payload: Any) -> None:
        box = self.mailbox(job)
        if box is not None:
            box.messages[seq][source] = pickle.loads(payload) if isinstance(payload, bytes) else payload
            box.wake()

    def abort(self, job: str, reason: str = "aborted") -> None:
        """Fail the job's current and next rounds on this worker; callable from any thread."""
        self.worker.loop.add_callback(self._abort, job, reason)

    def suspend(self, job: str) -> None:
        """Ask the job to checkpoint and stop at its next iteration boundary (SIGTERM)."""
        box = self.mailbox(job)
        if box is not None:
            box.suspend = True

    def _abort(self, job: str, reason: str) -> None:
        box = self.mailbox(job)
        if box is not None:
            box.aborted = box.aborted or reason
            box.wake()

    def close_job(self, job: str) -> None:
        """Forget the job's mailbox: its buffered messages are freed with it."""
        with self.lock:
            self.mailboxes.pop(job, None)
            self.closed[job] = None
            while len(self.closed) > CLOSED_KEPT:
                self.closed.popitem(last=False)

    def teardown(self, worker: Any) -> None:
        for job in list(self.mailboxes):
            self._abort(job, "worker closing")


def _encode(part: Any) -> Any:
    """Small parts travel as one pickle (Dask's serialisation of a nested message costs ~1.2 ms
    more per round, measured with 2 process workers); large ones as Dask frames, so array data
    is not copied into the message."""
    if payload_bytes(part) < INLINE_BELOW:
        return pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
    return dask_adapter.serialized(part)


class DaskTransport:
    """One worker's end of a job's collectives (a ``partition.exchange.Transport``). ``peers``:
    every worker's address, in rank order (the same list on all workers); ``rank``: this
    worker's position in it; ``alive``: whether the client still wants the job."""

    def __init__(
        self,
        job: str,
        rank: int,
        peers: Sequence[str],
        worker: Any,
        alive: Callable[[], bool],
    ):
        self.job = job
        self.rank = rank
        self.peers = list(peers)
        self.size = len(self.peers)
        self.worker = worker
        self.alive = alive
        self.seq = 0
        self.mesh: Mesh | None = None
        self._checked = time.monotonic()
        self.stats = TransportStats()
        self.box = worker.plugins[PLUGIN_NAME].mailbox(job)
        if self.box is None:
            raise RuntimeError(f"job {job} already ended on this worker")

    def alltoall(self, parts: Sequence[Any]) -> list[Any]:
        """Send ``parts[p]`` to worker p; return what every worker sent to this one, by rank."""
        if len(parts) != self.size:
            raise ValueError(f"{len(parts)} parts for {self.size} workers")
        self.seq += 1
        self.stats.rounds += 1
        self.check_stopped()
        if self.size == 1:
            return [parts[0]]
        seq = self.seq
        t0 = time.perf_counter()
        peers = [p for p in range(self.size) if p != self.rank]
        sent = sum(payload_bytes(parts[p]) for p in peers)
        if self.mesh is not None:
            try:
                received, sent_at = self.mesh.exchange(seq, {p: parts[p] for p in peers}, POLL_S, self._check)
            except PeerLost as lost:
                raise Aborted(f"job {self.job} stopped: {lost}") from lost
        else:
            received, sent_at = dask_adapter.run_on_loop(self.worker.loop, self._round, seq, [(p, parts[p]) for p in peers])
        self.stats.send_s += sent_at - t0
        self.stats.wait_s += time.perf_counter() - sent_at
        self.stats.bytes_sent += sent
        self.stats.bytes_received += sum(payload_bytes(received[p]) for p in peers)
        received[self.rank] = parts[self.rank]
        return [received[p] for p in range(self.size)]

    def open_mesh(self) -> None:
        """Direct sockets to the peers (``mesh.py``) for the rounds that follow, on ``tcp://``
        clusters; the listening addresses travel in one RPC round."""
        if self.size == 1 or not all(p.startswith("tcp://") for p in self.peers):
            return
        mesh = Mesh(self.rank, self.size, dask_adapter.address_host(self.peers[self.rank]))
        try:
            mesh.connect([tuple(a) for a in self.allgather(mesh.address)])
        except OSError as error:  # a peer that failed meanwhile, or a network that refuses
            mesh.close()
            raise Aborted(f"job {self.job} stopped: no direct connection between workers: {error}") from error
        except BaseException:
            mesh.close()
            raise
        self.mesh = mesh

    def close(self) -> None:
        if self.mesh is not None:
            self.mesh.close()
            self.mesh = None

    def check_stopped(self) -> None:
        """At most every POLL_S: stop if the job was aborted or the client no longer wants it
        (released its task: Client.close, cancel, Ctrl-C, a dropped client), even while rounds
        complete without waiting; the engine also asks between rule versions and join chunks."""
        now = time.monotonic()
        if now - self._checked < POLL_S:
            return
        self._checked = now
        self._check()

    def _check(self) -> None:
        """Stop if the job was aborted (a peer failed, or the client said so) or released."""
        if self.box.aborted is not None:
            raise Aborted(f"job {self.job} stopped: {self.box.aborted}")
        if not self.alive():
            raise Aborted(f"job {self.job} stopped: its task was released by the client")

    def suspend_requested(self) -> bool:
        return self.box.suspend

    def allgather(self, part: Any) -> list[Any]:
        """Every worker's ``part``, by rank."""
        return self.alltoall([part] * self.size)

    def abort_peers(self, reason: str) -> None:
        """Best effort: wake every peer of this job with an error (used when this worker fails)."""
        if self.size == 1:
            return

        async def tell() -> None:
            # Bounded: distributed retries connecting to a dead worker for its connect timeout
            # (30 s by default), and the job's mailbox here stays until this returns.
            calls = [
                asyncio.wait_for(
                    dask_adapter.call(self.worker, self.peers[p], "datalog_abort", job=self.job, reason=reason), ABORT_PEERS_S
                )
                for p in range(self.size)
                if p != self.rank
            ]
            await asyncio.gather(*calls, return_exceptions=True)

        dask_adapter.run_on_loop(self.worker.loop, tell)

    async def _round(self, seq: int, messages: list[tuple[int, Any]]) -> tuple[dict[int, Any], float]:
        """One collective on the event loop: send every part (one-way: no reply to wait for),
        then wait for every peer's part. Returns them and the time the sends were done."""
        box = self.box
        sends = asyncio.ensure_future(
            asyncio.gather(
                *(
                    dask_adapter.send_one_way(
                        self.worker, self.peers[p], "datalog_put", job=self.job, seq=seq, source=self.rank, payload=_encode(part)
                    )
                    for p, part in messages
                )
            )
        )
        sends.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when no one waits for it
        try:
            # A send to a lost peer retries connecting for distributed's connect timeout (30 s):
            # an abort or a release stops waiting for it.
            while not sends.done():
                if box.aborted is not None:
                    raise Aborted(f"job {self.job} stopped: {box.aborted}")
                stop = asyncio.get_running_loop().create_future()
                box.waiter = (seq, self.size, stop)  # no round gets this many messages: only an abort resolves it
                try:
                    await asyncio.wait({sends, stop}, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    box.waiter = None
                if stop.done():
                    stop.result()  # raises Aborted after an abort
                elif not sends.done() and not self.alive():
                    raise Aborted(f"job {self.job} stopped: its task was released by the client")
            sends.result()
        finally:
            sends.cancel()  # nothing when the sends are done
        sent_at = time.perf_counter()
        while True:
            if box.aborted is not None:
                raise Aborted(f"job {self.job} stopped: {box.aborted}")
            if len(box.messages.get(seq, ())) == self.size - 1:
                return box.messages.pop(seq), sent_at
            future = asyncio.get_running_loop().create_future()
            box.waiter = (seq, self.size - 1, future)
            try:
                done, _ = await asyncio.wait({future}, timeout=POLL_S)
            finally:
                box.waiter = None
            if done:
                future.result()  # raises Aborted after an abort
            elif not self.alive():
                raise Aborted(f"job {self.job} stopped: its task was released by the client")
