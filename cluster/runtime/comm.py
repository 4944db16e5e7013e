"""A ``Transport`` over Dask's own comms, for every protocol a cluster may use (``tcp://``,
``tls://``, ``ucx://``, ``inproc://``), with Dask's serializers, in the manner of dask-cuda's
explicit comms: one endpoint per pair of workers (rank r connects to every rank above it and
accepts from every rank below), made by ``distributed.comm.listen``/``connect`` with the
worker's own security.

The endpoints live on an asyncio loop of the phase's own, driven by the task thread inside each
round (``run_until_complete``): no hop to the worker's event loop, whose other duties and the
GIL handoffs made the Dask RPC rounds of an earlier design cost milliseconds (docs/benchmarks.md,
"Distributed" and "Transports"). A round writes to and reads from every peer concurrently (UCX's
write waits for the transfer) and ends when every write has left this process. Small parts travel as one pickle; parts with array data
go through Dask's serializers, so device buffers can stay on the device over UCX.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from distributed.comm.core import CommClosedError, connect, listen

from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.engine.errors import PeerLost
from dask_datalog.partition.transport import Rounds, payload_bytes

INLINE_BELOW = 1 << 20  # parts with less array data travel as one pickle (cheapest for small rounds)
CONNECT_S = 60.0  # how long a phase waits for its lower-ranked peers to connect
T = TypeVar("T")


class CommTransport:
    """One worker's end of a phase's comms. ``phase``: the id every hello carries (a
    connection for another phase, a stale one, is refused); ``check()`` runs every ``poll_s``
    while a round waits and raises to stop it."""

    kind = "comm"

    def __init__(
        self,
        phase: str,
        rank: int,
        size: int,
        listen_address: str,
        connection_args: dict[str, Any],
        listen_args: dict[str, Any],
        serializers: tuple[str, ...],
        check: Callable[[], None] = lambda: None,
        poll_s: float = 0.5,
    ):
        self.phase, self.rank, self.size = phase, rank, size
        self.connection_args, self.serializers = connection_args, serializers
        self.check, self.poll_s = check, poll_s
        self.rounds = Rounds(rank, size, check, poll_s)
        self.stats = self.rounds.stats
        self.endpoints: dict[int, Any] = {}
        self.loop = asyncio.new_event_loop()  # never the thread's current loop: run only here
        self.listener: Any = None
        self._accepted = asyncio.Event()
        try:
            self.address = self._run(self._listen(listen_address, listen_args))
        except BaseException:
            self.close()
            raise

    # -- set-up ------------------------------------------------------------------------------------

    async def _listen(self, address: str, listen_args: dict[str, Any]) -> str:
        self.listener = listen(address, self._on_comm, allow_offload=False, **listen_args)
        await self.listener.start()
        return str(self.listener.contact_address)

    async def _on_comm(self, comm: Any) -> None:
        hello = await comm.read()
        if not isinstance(hello, dict) or hello.get("phase") != self.phase or hello.get("rank") not in range(self.rank):
            await comm.close()  # another phase's (a stale attempt) or garbage: refused
            return
        comm.allow_offload = False  # serialise in this thread, not in distributed's offload thread
        self.endpoints[hello["rank"]] = comm
        if all(p in self.endpoints for p in range(self.rank)):
            self._accepted.set()

    def connect(self, addresses: Sequence[str]) -> None:
        """Connect to every higher rank's listener (``addresses`` by rank) and wait for every
        lower rank's connection; then stop listening."""
        self._round(self._connect(addresses))

    async def _connect(self, addresses: Sequence[str]) -> None:
        for p in range(self.rank + 1, self.size):
            comm = await connect(addresses[p], **self.connection_args)
            comm.allow_offload = False
            await comm.write({"phase": self.phase, "rank": self.rank})
            self.endpoints[p] = comm
        if self.rank > 0 and not self._accepted.is_set():
            await asyncio.wait_for(self._accepted.wait(), CONNECT_S)
        self.listener.stop()
        self.listener = None

    # -- rounds ------------------------------------------------------------------------------------

    def alltoall(self, parts: Sequence[Any]) -> list[Any]:
        return self.rounds.run(parts, lambda seq, out: self._round(self._exchange(seq, out)))

    def allgather(self, part: Any) -> list[Any]:
        return self.alltoall([part] * self.size)

    async def _exchange(self, seq: int, parts: dict[int, Any]) -> tuple[dict[int, Any], float]:
        sent: list[float] = []

        async def send(p: int) -> None:
            await self.endpoints[p].write({"seq": seq, **self._wrap(parts[p])}, serializers=self.serializers)

        async def receive(p: int) -> Any:
            message = await self.endpoints[p].read()
            if message["seq"] != seq:
                raise RuntimeError(f"message for round {message['seq']} arrived in round {seq}: the workers diverged")
            return pickle.loads(message["raw"]) if "raw" in message else message["part"]

        async def sends() -> None:
            await asyncio.gather(*(send(p) for p in parts))
            for comm in self.endpoints.values():  # tcp/tls writes only queue: wait until they left
                await dask_adapter.flushed(comm)
            sent.append(time.perf_counter())

        results = await asyncio.gather(sends(), *(receive(p) for p in parts))
        return dict(zip(parts, results[1:])), sent[0]

    def _wrap(self, part: Any) -> dict[str, Any]:
        if payload_bytes(part) < INLINE_BELOW:
            return {"raw": pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)}
        return {"part": dask_adapter.serialized(part)}

    def _round(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the phase's loop; every ``poll_s`` of waiting, ``check()`` (its error
        ends the round); a peer's closed endpoint is ``PeerLost``."""
        task = self.loop.create_task(work)
        stopped: list[BaseException] = []

        def watchdog() -> None:
            try:
                self.check()
            except BaseException as error:  # handed to the round below, which raises it
                stopped.append(error)
                task.cancel()
                return
            timer[0] = self.loop.call_later(self.poll_s, watchdog)

        timer = [self.loop.call_later(self.poll_s, watchdog)]
        try:
            return self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            if stopped:
                raise stopped[0] from None
            raise
        except (CommClosedError, EOFError) as error:
            raise PeerLost(f"a peer closed its connection: {error}") from error
        finally:
            timer[0].cancel()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def close(self) -> None:
        """Close every endpoint (a peer still waiting on this worker sees its connection close)
        and the loop."""

        async def close_all() -> None:
            if self.listener is not None:
                self.listener.stop()
            # A peer that is gone already makes its endpoint's close fail: nothing is left to do.
            await asyncio.gather(*(comm.close() for comm in self.endpoints.values()), return_exceptions=True)

        if self.loop.is_closed():
            return
        try:
            self._run(close_all())
            self._run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
