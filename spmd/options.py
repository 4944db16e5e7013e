"""How a run survives and stops: its options (checkpoints, retries, limits), the same for a run
in process and on a cluster. The CLI and the API import them without importing distributed."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from dask_datalog.engine.errors import DatalogError

SILENT_S = 30.0  # a worker whose heartbeats stopped this long is taken as lost (the scheduler waits 5 min)
REJOIN_S = 10.0  # after a loss, how long a retry waits for the cluster to be back to the job's size


@dataclass(frozen=True)
class RunOptions:
    """How a job survives and stops. ``checkpoint_dir``: where the workers write checkpoints
    (every worker must see it; None: none, and a retry starts from the inputs);
    ``checkpoint_every``: seconds between them (None: ``checkpoint.Schedule``'s default);
    ``resume``: start from the latest checkpoint there, which must be of this program and
    these inputs; ``retries``: how many lost workers the run survives; ``timeout``: seconds
    for the whole job; ``memory_limit``: bytes of data per worker (None: a share of the
    worker's memory limit); ``suspend``: when set, checkpoint and stop at the next iteration
    boundary (the CLI's SIGTERM), raising ``Suspended``; ``stop``: when set, the run stops at
    once on every worker, writing no checkpoint, raising ``Terminated`` (a service's stop of a
    job: it must end within a second, not at an iteration boundary); ``rejoin_s``: after a loss, how long
    a retry waits for the cluster to be back to the job's size before it goes on with fewer;
    ``silent_s``: how long a worker may send no heartbeat before it counts as lost (a hung or
    stopped process keeps its connection, and the scheduler waits minutes for it); ``profile``:
    time and count every rule version (``Result.profile``, engine/execution/profile.py);
    ``keep``: the relations read after the run (None: every one); the others are freed once no
    later stratum reads them, as Soufflé frees them, and only their sizes stay (the CLI keeps
    the outputs and printed sizes); a checkpoint records their sizes, and resuming it needs
    the same ``keep``."""

    checkpoint_dir: str | None = None
    checkpoint_every: float | None = None
    resume: bool = False
    retries: int = 2
    timeout: float | None = None
    memory_limit: int | None = None
    suspend: threading.Event | None = None
    stop: threading.Event | None = None
    rejoin_s: float = REJOIN_S
    silent_s: float = SILENT_S
    profile: bool = False
    keep: frozenset[str] | None = None


class ExchangeKind(enum.StrEnum):
    """How a run's workers exchange tuples: ``MESH`` (direct sockets driven by the task thread;
    ``tcp://`` only), ``COMM`` (Dask's comms, any protocol, Dask's serializers) or ``AUTO``
    (the mesh where it can run, comms elsewhere)."""

    AUTO = "auto"
    MESH = "mesh"
    COMM = "comm"

    def uses_mesh(self, peers: tuple[str, ...]) -> bool:
        """Whether workers at ``peers`` exchange over the mesh; DatalogError for a mesh asked
        for where it cannot run."""
        tcp = all(p.startswith("tcp://") for p in peers)
        if self is ExchangeKind.MESH and not tcp:
            raise DatalogError(None, f"--exchange mesh needs a tcp:// cluster, not {peers[0].split('://')[0]}://")
        return self is ExchangeKind.MESH or (self is ExchangeKind.AUTO and tcp)
