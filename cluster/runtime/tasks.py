"""What runs on the Dask workers: one long-running task per worker per phase of a run (SPMD).

``evaluate_task`` runs this worker's shard (``spmd.shard.evaluate_shard``) over the phase's
transport (phase.py) and returns its ``Shard``, which stays in the worker's memory as the
task's result: later phases (``write_task``, ``shard_frame``...) take it as an argument and run
on the same worker, and Dask frees it when the client drops the future. Every phase secedes
from the worker's thread pool, so several runs on one cluster never wait for each other's slots.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dask_datalog.cluster.runtime import dask_adapter, faults
from dask_datalog.cluster.runtime.phase import Phase, PhaseId
from dask_datalog.engine import ir, memory
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.checkpoint import CheckpointOptions
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.execution.fixpoint import OnIteration
from dask_datalog.engine.formats import relation_output
from dask_datalog.partition import REPLICATE_BELOW
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.options import ExchangeKind
from dask_datalog.spmd.progress import iteration_events
from dask_datalog.spmd.shard import Shard, Steering, evaluate_shard
from dask_datalog.spmd.writer import write_outputs

PROGRESS_EVERY_S = 0.25  # progress events per worker: at most this often, plus each stratum's end


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs for its shard of a run's evaluation; small (the program and
    file names, no tuples)."""

    phase: PhaseId
    peers: tuple[str, ...]
    program: ir.Program
    exchange: ExchangeKind = ExchangeKind.AUTO
    backend: str = "numpy"
    fact_dir: str | None = None
    fact_files: dict[str, str] = field(default_factory=dict)  # relation -> path, overrides .input
    chunk_rows: int | None = None
    replicate_below: int = REPLICATE_BELOW
    progress_topic: str | None = None
    checkpoint: CheckpointOptions | None = None
    memory_limit: int | None = None  # bytes of data per worker; None: a share of the worker's limit
    array_digests: dict[str, str] = field(default_factory=dict)  # fingerprints of whole input arrays
    stdin: bytes | None = None  # the client's standard input, for IO=stdin inputs
    profile: bool = False  # a per rule version profile in the statistics
    keep: frozenset[str] | None = None  # the relations read after the run (None: all): RunOptions.keep


@dataclass(frozen=True)
class Failed:
    """A phase that ended on a ``DatalogError``: the user's input or output, a stop at a
    checkpoint, a stop because the run stopped elsewhere. Returned rather than raised, so Dask
    logs no traceback for an expected end; the client raises ``error``. Any other exception is
    a bug and is raised as it is."""

    error: DatalogError


def _returns_expected_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except DatalogError as error:
            return Failed(error)

    return run


@_returns_expected_errors
def evaluate_task(spec: ShardTask, rank: int, arrays: dict[str, Any] | None = None) -> Shard | Failed:
    """The evaluation on worker ``rank``: load, agree, evaluate. ``arrays``: this worker's
    slice of facts handed over as arrays or DataFrames through the API."""
    faults.point("load", rank)
    with Phase(spec.phase, rank, spec.peers, spec.exchange) as phase:
        backend = get_backend(spec.backend)
        budget = spec.memory_limit or memory.default_budget(backend, dask_adapter.memory_limit(phase.worker))
        steering = Steering(spec.checkpoint, budget, phase.suspend_requested, phase.interrupted, spec.profile, spec.keep)
        inputs = Inputs(spec.fact_dir, {**spec.fact_files, **(arrays or {})}, spec.array_digests, spec.stdin)
        progress = _progress(phase, rank, spec.progress_topic)
        return evaluate_shard(
            phase.transport, spec.program, backend, inputs, steering, spec.chunk_rows, spec.replicate_below, progress
        )


def _progress(phase: Phase, rank: int, topic: str | None) -> OnIteration:
    """An ``on_iteration`` that reports progress to the client as Dask events, at most every
    PROGRESS_EVERY_S per worker, and passes the ``iteration-<n>`` fault point."""
    events = None
    if topic is not None:
        tag = str(phase.phase)  # the topic is every run's: the client hands each event to its run by this

        def send(event: dict[str, Any]) -> None:
            phase.worker.log_event(topic, {**event, "phase": tag})

        events = iteration_events(rank, send, PROGRESS_EVERY_S)

    def report(stratum: int, iteration: int, delta: dict[str, int]) -> None:
        faults.point(f"iteration-{iteration}", rank)
        if events is not None:
            events(stratum, iteration, delta)

    return report


@_returns_expected_errors
def write_task(
    shard: Shard, phase_id: PhaseId, peers: tuple[str, ...], exchange: ExchangeKind, output_dir: str, fmt: str
) -> dict[int, bytes] | Failed:
    """The workers write every ``.output`` relation (``spmd.writer.write_outputs``)."""
    faults.point("write", shard.rank)
    with Phase(phase_id, shard.rank, peers, exchange) as phase:
        return write_outputs(phase.transport, shard, output_dir, fmt)


# -- reading a finished shard (no collective) ------------------------------------------------------


def shard_stats(shard: Shard) -> dict[str, Any]:
    return {**shard.stats, "peak_rss": memory.peak_rss()}


def shard_frame(shard: Shard, name: str) -> Any:
    """This worker's part of relation ``name`` as a pandas DataFrame (a Dask DataFrame partition)."""
    relation = shard.program.relations[name]
    return relation_output.to_pandas(shard.host_rows(name), relation, shard.symbols)


def shard_packed(shard: Shard, name: str) -> np.ndarray:
    """This worker's sorted packed rows of relation ``name``, on the host."""
    return get_backend(shard.backend).asnumpy(shard.rows[name])


def shard_symbols(shard: Shard) -> Any:
    return shard.symbols
