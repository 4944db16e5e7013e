"""One phase of a run on one worker: the task's transport to its peers, opened at the start and
closed at the end, and the checks that stop the phase when the run stops elsewhere.

Every phase (evaluating, writing) is one long-running task per worker running the same code
(SPMD), so the workers meet in the same collectives in the same order. Its transport is chosen
by the run's ``exchange`` (``ExchangeKind``): the socket mesh on ``tcp://`` clusters, where it
is fastest, Dask's comms elsewhere (measured in docs/benchmarks.md). Either way each worker
opens a listener, publishes its address (plugin.py) and asks every peer for theirs (the
rendezvous), then connects. The scheduler and the client are never on this path.

A phase stops (``Aborted``) when the client aborted the run, when its task was released
(Client.close, cancel, Ctrl-C) or when a peer's connection closes (it failed or stopped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.cluster.runtime.plugin import PLUGIN_NAME, DatalogPlugin
from dask_datalog.engine.errors import Aborted, PeerLost
from dask_datalog.partition.transport import LocalTransport, Transport
from dask_datalog.spmd.mesh import Mesh, MeshTransport
from dask_datalog.spmd.options import ExchangeKind

POLL_S = 0.5  # how often a waiting worker checks that its run is still wanted
RENDEZVOUS_WAIT_S = 1.0  # one ask of a peer's address; asked again (checking the run) until it answers
ANSWER_S = 10.0  # a peer's answer later than this (it answers within RENDEZVOUS_WAIT_S) counts as "not yet"


@dataclass(frozen=True)
class PhaseId:
    """Which phase of which attempt of which run: carried by every rendezvous and connection."""

    run: str
    attempt: int
    name: str

    def __str__(self) -> str:
        return f"{self.run}/{self.attempt}/{self.name}"


class Phase:
    """Context manager of one phase on this worker; ``transport`` inside it."""

    def __init__(self, phase: PhaseId, rank: int, peers: tuple[str, ...], exchange: ExchangeKind):
        self.phase, self.rank, self.peers, self.exchange = phase, rank, peers, exchange
        self.worker, self.key = dask_adapter.current_task()
        self.plugin: DatalogPlugin = self.worker.plugins[PLUGIN_NAME]
        self.state = self.plugin.state(phase.run, phase.attempt)
        self.transport: Transport | Any = LocalTransport()
        self.released = False  # the client let go of the task: it forgot the run
        self._checked = time.monotonic()

    def __enter__(self) -> Phase:
        if len(self.peers) > 1:
            self.transport = self._open()
        return self

    def __exit__(self, *exc: Any) -> None:
        # Closing the connections is how a peer still waiting on this worker learns it ended.
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()
        self.plugin.withdraw(self.phase.run, self.phase.attempt, self.phase.name)
        if self.released:  # its client is gone (closed, interrupted) or moved on: nothing follows here
            self.plugin.forget(self.phase.run, self.phase.attempt)

    # -- stopping ----------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``Aborted`` when the run was stopped from outside or the task released."""
        if self.state.aborted is not None:
            raise Aborted(f"run {self.phase.run} stopped: {self.state.aborted}")
        if not dask_adapter.task_wanted(self.worker, self.key):
            self.released = True
            raise Aborted(f"run {self.phase.run} stopped: its task was released by the client")

    def interrupted(self) -> None:
        """``check`` at most every POLL_S: what the engine calls between rule versions and join
        chunks."""
        now = time.monotonic()
        if now - self._checked >= POLL_S:
            self._checked = now
            self.check()

    def suspend_requested(self) -> bool:
        return self.state.suspend

    # -- the transport -----------------------------------------------------------------------------

    def _open(self) -> Transport:
        mesh = self.exchange.uses_mesh(self.peers)
        transport: Any = self._mesh() if mesh else self._comm()
        try:
            self.plugin.publish(self.phase.run, self.phase.attempt, self.phase.name, transport_address(transport))
            addresses = self._rendezvous()
            if mesh:
                transport.mesh.connect([tuple(a) if a is not None else None for a in addresses])
            else:
                transport.connect(addresses)
        except OSError as error:  # a peer that failed meanwhile, or a network that refuses
            transport.close()
            raise PeerLost(f"no connection between the workers of phase {self.phase}: {error}") from error
        except BaseException:
            transport.close()
            raise
        return transport

    def _mesh(self) -> MeshTransport:
        host = dask_adapter.address_host(self.peers[self.rank])
        return MeshTransport(Mesh(self.rank, len(self.peers), host), self.check, POLL_S)

    def _comm(self) -> Any:
        from dask_datalog.cluster.runtime.comm import CommTransport

        address = self.peers[self.rank]
        return CommTransport(
            str(self.phase),
            self.rank,
            len(self.peers),
            dask_adapter.listen_address(address),
            *dask_adapter.security_args(self.worker),
            dask_adapter.serializers(address),
            self.check,
            POLL_S,
        )

    def _rendezvous(self) -> list[Any]:
        """Every peer's listening address for this phase, asked of the peers themselves (each
        answers once its task opened the phase); Aborted when one refuses (the run stopped or
        moved on to another attempt). Each ask is bounded (ANSWER_S), so a peer that never
        answers still leaves this task checking its run's stop."""
        addresses: list[Any] = [None] * len(self.peers)
        waiting = [p for p in range(len(self.peers)) if p != self.rank]
        while waiting:
            self.check()
            answers = dask_adapter.ask_peers(
                self.worker,
                [self.peers[p] for p in waiting],
                "datalog_address",
                ANSWER_S,
                "",
                run=self.phase.run,
                attempt=self.phase.attempt,
                phase=self.phase.name,
                wait_s=RENDEZVOUS_WAIT_S,
            )
            for p, answer in zip(list(waiting), answers):
                if answer is None:
                    raise Aborted(
                        f"run {self.phase.run} stopped: worker {self.peers[p]} refused phase {self.phase} (stopped or retried)"
                    )
                if answer:
                    addresses[p] = answer
                    waiting.remove(p)
        addresses[self.rank] = None
        return addresses


def transport_address(transport: Any) -> Any:
    return transport.mesh.address if isinstance(transport, MeshTransport) else transport.address
