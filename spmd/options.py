"""What a job on a cluster may meet, without Dask: its options (checkpoints, retries, limits)
and the errors that end it. The CLI and the API import these without importing distributed;
``runtime.py`` acts on them."""

from __future__ import annotations

import threading
from dataclasses import dataclass

SILENT_S = 30.0  # a worker whose heartbeats stopped this long is taken as lost (the scheduler waits 5 min)
REJOIN_S = 10.0  # after a loss, how long a retry waits for the cluster to be back to the job's size


class WorkerLost(RuntimeError):
    """A worker of a running job left the cluster (its process died, or the scheduler lost it)
    or stopped sending heartbeats (``how``), and no retry was left: the job was stopped on the
    other workers and its tasks released."""

    def __init__(self, address: str, rank: int, where: str, retries: int = 0, how: str = "was lost"):
        self.address = address
        self.rank = rank
        self.where = where
        self.retries = retries
        self.how = how
        after = f" (after {retries} {'retry' if retries == 1 else 'retries'})" if retries else ""
        super().__init__(f"worker {address} (rank {rank}) {how} {where}; the job was stopped{after}")

    def __reduce__(self) -> tuple[type, tuple[str, int, str, int, str]]:
        return (WorkerLost, (self.address, self.rank, self.where, self.retries, self.how))


class JobTimeout(TimeoutError):
    """The job ran past its time limit and was stopped on every worker."""


class Terminated(RuntimeError):
    """The job was asked to stop (SIGTERM) and stopped without a checkpoint of where it was:
    there was no checkpoint directory, a second request said stop at once, or a worker was
    lost before the job had checkpointed. An earlier checkpoint of the run still resumes."""


@dataclass(frozen=True)
class JobOptions:
    """How a job survives and stops. ``checkpoint_dir``: where the workers write checkpoints
    (every worker must see it; None: none, and a retry starts from the inputs);
    ``checkpoint_every``: seconds between them (None: ``checkpoint.Schedule``'s default);
    ``resume``: start from the latest checkpoint there, which must be of this program and
    these inputs; ``retries``: how many lost workers the job survives; ``timeout``: seconds
    for the whole job; ``memory_limit``: bytes of data per worker (None: a share of the
    worker's memory limit); ``suspend``: when set, checkpoint and stop at the next iteration
    boundary (the CLI's SIGTERM), raising ``Suspended``; ``rejoin_s``: after a loss, how long
    a retry waits for the cluster to be back to the job's size before it goes on with fewer;
    ``silent_s``: how long a worker may send no heartbeat before it counts as lost (a hung or
    stopped process keeps its connection, and the scheduler waits minutes for it)."""

    checkpoint_dir: str | None = None
    checkpoint_every: float | None = None
    resume: bool = False
    retries: int = 2
    timeout: float | None = None
    memory_limit: int | None = None
    suspend: threading.Event | None = None
    rejoin_s: float = REJOIN_S
    silent_s: float = SILENT_S
