"""What runs on the Dask workers: one long-running task per worker per phase of a job (SPMD).

``evaluate_task`` runs this worker's shard (``shard.evaluate_shard``) over the job's
``DaskTransport`` and returns its ``Shard``, which stays in the worker's memory as the task's
result: later phases (``write_task``, ``shard_frame``) take it as an argument and run on the
same worker, and Dask frees it when the client drops the future. Every phase secedes from the
worker's thread pool, so several jobs on one cluster never wait for each other's slots.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dask_datalog.engine import ir, memory

from dask_datalog.engine.formats import relation_output
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.checkpoint import CheckpointOptions
from dask_datalog.engine.errors import DatalogError
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.shard import Steering
from dask_datalog.partition.placement import REPLICATE_BELOW

from dask_datalog.cluster.runtime import dask_adapter

from dask_datalog.cluster.runtime import faults
from dask_datalog.cluster.runtime.plugin import PLUGIN_NAME, DaskTransport
from dask_datalog.engine.errors import Aborted, Suspended
from dask_datalog.spmd.writer import write_outputs
from dask_datalog.spmd.progress import iteration_events
from dask_datalog.spmd.shard import Shard, evaluate_shard

PROGRESS_EVERY_S = 0.25  # progress events per worker: at most this often, plus each stratum's end


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs for one job; small (the program and file names, no tuples)."""

    job: str
    program: ir.Program
    peers: tuple[str, ...]
    backend: str = "numpy"
    fact_dir: str | None = None
    fact_files: dict[str, str] = field(default_factory=dict)  # relation -> path, overrides .input
    chunk_rows: int | None = None
    replicate_below: int = REPLICATE_BELOW
    progress_topic: str | None = None
    checkpoint: CheckpointOptions | None = None
    memory_limit: int | None = None  # bytes of data per worker; None: a share of the worker's limit
    array_digests: dict[str, str] = field(default_factory=dict)  # fingerprints of whole input arrays


@dataclass(frozen=True)
class Stopped:
    """A phase that ended on an expected error: the user's input or output directory
    (``DatalogError``, ``OSError``), a stop (``Aborted``) or a stop at a checkpoint
    (``Suspended``). Returned rather than raised, so Dask does not log a traceback for it; the
    client re-raises ``error``."""

    error: BaseException


def _stops_on_expected_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except DatalogError as error:
            return Stopped(error)

    return run


class _Phase:
    """The context of one phase on one worker: its transport and clean-up. The job's mailbox is
    dropped when the phase ends; an error tells the peers, so none of them waits forever."""

    def __init__(self, job: str, rank: int, peers: Sequence[str]):
        self.worker, key = dask_adapter.current_task()
        self.job = job
        self.transport = DaskTransport(job, rank, peers, self.worker, lambda: dask_adapter.task_wanted(self.worker, key))

    def __enter__(self) -> DaskTransport:
        try:
            self.transport.open_mesh()
        except BaseException as error:
            self.__exit__(type(error), error, None)
            raise
        return self.transport

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> None:
        self.transport.close()  # a peer still waiting on this worker sees its sockets close
        # A worker that was stopped (Aborted) tells nobody: whoever stopped it (a failing
        # peer, the client) tells every worker, and a lost peer would never answer. Suspended:
        # every worker stops at the same boundary.
        if error is not None and not isinstance(error, (Aborted, Suspended)):
            self.transport.abort_peers(f"worker {self.transport.rank} failed: {error!r}")
        self.worker.plugins[PLUGIN_NAME].close_job(self.job)


@_stops_on_expected_errors
def evaluate_task(spec: JobSpec, rank: int, arrays: dict[str, Any] | None = None) -> Shard | Stopped:
    """Phase 1 of a job on worker ``rank``: load, agree, evaluate. ``arrays``: this worker's
    slice of facts handed over as arrays or DataFrames through the API."""
    faults.point("load", rank)
    with _Phase(spec.job, rank, spec.peers) as transport:
        backend = get_backend(spec.backend)
        steering = Steering(
            spec.checkpoint,
            spec.memory_limit or memory.default_budget(backend, dask_adapter.memory_limit(transport.worker)),
            transport.suspend_requested,
            transport.check_stopped,
        )
        inputs = Inputs(spec.fact_dir, {**spec.fact_files, **(arrays or {})}, spec.array_digests)
        return evaluate_shard(
            transport,
            spec.program,
            backend,
            inputs,
            steering,
            spec.chunk_rows,
            spec.replicate_below,
            _progress(transport, spec.progress_topic),
        )


def _progress(transport: DaskTransport, topic: str | None) -> Callable[[int, int, dict[str, int]], None]:
    """An ``on_iteration`` that reports progress to the client as Dask events, at most every
    PROGRESS_EVERY_S per worker, and passes the ``iteration-<n>`` fault point."""
    events = None
    if topic is not None:
        events = iteration_events(transport.rank, functools.partial(transport.worker.log_event, topic), PROGRESS_EVERY_S)

    def report(stratum: int, iteration: int, delta: dict[str, int]) -> None:
        faults.point(f"iteration-{iteration}", transport.rank)
        if events is not None:
            events(stratum, iteration, delta)

    return report


# -- later phases ---------------------------------------------------------------------------------


def shard_stats(shard: Shard) -> dict[str, Any]:
    return {**shard.stats, "peak_rss": memory.peak_rss()}


def shard_frame(shard: Shard, name: str) -> Any:
    """This worker's part of relation ``name`` as a pandas DataFrame (a Dask DataFrame partition)."""
    relation = shard.program.relations[name]
    return relation_output.to_pandas(shard.host_rows(name), relation, shard.symbols)


def shard_rows(shard: Shard, name: str) -> np.ndarray:
    return shard.host_rows(name)


def shard_symbols(shard: Shard) -> Any:
    return shard.symbols


@_stops_on_expected_errors
def write_task(shard: Shard, job: str, peers: Sequence[str], output_dir: str, fmt: str) -> dict[str, bytes] | Stopped:
    """Phase 2: the workers write every ``.output`` relation (``output.write_outputs``)."""
    faults.point("write", shard.rank)
    with _Phase(job, shard.rank, peers) as transport:
        return write_outputs(transport, shard, output_dir, fmt)
