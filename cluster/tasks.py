"""What runs on the workers: one long-running task per worker per phase of a job (SPMD).

``evaluate_shard`` loads this worker's byte range of every input, agrees on one symbol table and
on the placement with its peers, then runs the whole fixpoint (``shard.ShardEvaluator``) and
returns its ``Shard``, which stays in the worker's memory as the task's result: later phases
(``write_shard``, ``shard_frame``) take it as an argument and run on the same worker, and Dask
frees it when the client drops the future. Every phase secedes from the worker's thread pool,
so several jobs on one cluster never wait for each other's slots.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dask_datalog.engine import facts as factio
from dask_datalog.engine import ir
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.job import host_rows, load_inputs
from dask_datalog.engine.plan import plan_program
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition.placement import REPLICATE_BELOW, place

from .exchange import PLUGIN_NAME, Collective, JobAborted
from .shard import ShardEvaluator

PROGRESS_EVERY_S = 0.25  # progress events per worker: at most this often, plus each stratum's end
SAMPLES_PER_WORKER = 64  # per worker and destination, to split sorted output into even ranges


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


@dataclass
class Shard:
    """One worker's part of a finished run: packed rows it accounts for per relation (its
    shard of a partitioned relation, all of a replicated one on rank 0), on the backend."""

    rank: int
    program: ir.Program
    symbols: SymbolTable
    backend: str
    rows: dict[str, Any]
    stats: dict[str, Any]

    def host_rows(self, name: str) -> np.ndarray:
        """(n, arity) encoded uint32 rows on the host, sorted."""
        return host_rows(self.rows[name], self.program.relations[name].arity, get_backend(self.backend))


# -- the worker side of a phase ---------------------------------------------------------------


@dataclass(frozen=True)
class Stopped:
    """A phase that ended on an expected error: the user's input or output directory
    (``DatalogError``, ``OSError``) or a stop (``JobAborted``). Returned rather than raised, so
    Dask does not log a traceback for it; the client re-raises ``error``."""

    error: BaseException


def _stops_on_expected_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except (DatalogError, JobAborted, OSError) as error:
            return Stopped(error)

    return run


class _Phase:
    """The context of one phase on one worker: its collectives and clean-up. The job's mailbox is
    dropped when the phase ends; an error tells the peers, so none of them waits forever."""

    def __init__(self, job: str, rank: int, peers: Sequence[str]):
        from distributed import get_worker, secede
        from distributed.worker import thread_state

        self.worker = get_worker()
        key = thread_state.key
        secede()
        tasks = self.worker.state.tasks

        def alive() -> bool:
            ts = tasks.get(key)
            return ts is not None and ts.state in ("executing", "long-running")

        self.job = job
        self.comm = Collective(job, rank, peers, self.worker, alive)

    def __enter__(self) -> Collective:
        try:
            self.comm.open_mesh()
        except BaseException as error:
            self.__exit__(type(error), error, None)
            raise
        return self.comm

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> None:
        self.comm.close()  # a peer still waiting on this worker sees its sockets close
        if error is not None:
            self.comm.abort_peers(f"worker {self.comm.rank} failed: {error!r}")
        self.worker.plugins[PLUGIN_NAME].close_job(self.job)


@_stops_on_expected_errors
def evaluate_shard(spec: JobSpec, rank: int, arrays: dict[str, Any] | None = None) -> Shard | Stopped:
    """Phase 1 of a job on worker ``rank``: load, agree, evaluate. ``arrays``: this worker's
    slice of facts handed over as arrays or DataFrames through the API."""
    t0 = time.perf_counter()
    with _Phase(spec.job, rank, spec.peers) as comm:
        backend = get_backend(spec.backend)
        program = spec.program
        local = SymbolTable()
        facts = {**spec.fact_files, **(arrays or {})}
        inputs = load_inputs(program, local, spec.fact_dir, facts, rank, comm.size)
        counts = {name: int(rows.shape[0]) for name, rows in inputs.items()}
        agreed = comm.allgather((local.strings, counts))
        symbols = SymbolTable.sorted_union([sorted(program_symbols(program))] + [strings for strings, _ in agreed])
        _remap_symbols(inputs, program, local, symbols)
        sizes: dict[str, int] = {}
        for _, theirs in agreed:
            for name, n in theirs.items():
                sizes[name] = sizes.get(name, 0) + n
        t_load = time.perf_counter() - t0
        plan = plan_program(program)
        placement = place(plan, comm.size, sizes, spec.replicate_below)
        evaluator = ShardEvaluator(plan, placement, backend, symbols, comm, spec.chunk_rows)
        evaluator.load(inputs)
        stats = evaluator.run(_progress(comm, spec.progress_topic, evaluator))
        stats["load_s"] = round(t_load, 6)
        stats["exchange"] = comm.stats.snapshot()
        stats["placement"] = {
            name: {"replicated": l.replicated, "keys": [list(k) for k in l.copies], "why": l.reason}
            for name, l in placement.relations.items()
        }
        stats["local_sizes"] = {name: evaluator.local_size(name) for name in program.relations}
        rows = {name: evaluator.local_rows(name) for name in program.relations}
        return Shard(rank, program, symbols, backend.name, rows, stats)


def program_symbols(program: ir.Program) -> set[str]:
    """Every symbol constant of the program: interned before evaluation on every worker, so the
    ids the engine uses for constants are the same everywhere."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, ir.Const):
            if node.type == "symbol":
                found.add(str(node.value))
        elif dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name))
        elif isinstance(node, (tuple, list, frozenset, set)):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)

    walk(program)
    return found


def _remap_symbols(inputs: dict[str, np.ndarray], program: ir.Program, local: SymbolTable, symbols: SymbolTable) -> None:
    if not len(local):
        return
    mapping = local.remap_to(symbols)
    for name, rows in inputs.items():
        for j, t in enumerate(program.relations[name].types):
            if t == "symbol":
                rows[:, j] = mapping[rows[:, j]]


def _progress(comm: Collective, topic: str | None, evaluator: ShardEvaluator) -> Any:
    """An ``on_iteration`` that reports counts to the client as Dask events (no tuples), at most
    every PROGRESS_EVERY_S per worker."""
    if topic is None:
        return None
    last = [0.0]
    found = [0]

    def report(stratum: int, iteration: int, delta: dict[str, int]) -> None:
        found[0] += sum(delta.values())
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S and iteration:
            return
        last[0] = now
        message = {"rank": comm.rank, "stratum": stratum, "iteration": iteration, "delta": sum(delta.values()), "found": found[0]}
        comm.worker.log_event(topic, message)

    return report


# -- later phases ---------------------------------------------------------------------------------


def shard_stats(shard: Shard) -> dict[str, Any]:
    return shard.stats


def shard_frame(shard: Shard, name: str) -> Any:
    """This worker's part of relation ``name`` as a pandas DataFrame (a Dask DataFrame partition)."""
    relation = shard.program.relations[name]
    return factio.to_pandas(shard.host_rows(name), relation, shard.symbols)


def shard_rows(shard: Shard, name: str) -> np.ndarray:
    return shard.host_rows(name)


@_stops_on_expected_errors
def write_shard(shard: Shard, job: str, peers: Sequence[str], output_dir: str, fmt: str) -> dict[str, bytes] | Stopped:
    """Phase 2: write every ``.output`` relation from the workers. The rows are range-partitioned
    (splitters from samples every worker sees), so worker k holds the k-th range of the sorted
    relation; CSV parts are written at their offsets into the one file, Parquet parts as the
    dataset's part files. ``output_dir == "-"``: the CSV parts are returned (stdout is the
    client's)."""
    with _Phase(job, shard.rank, peers) as comm:
        written: dict[str, bytes] = {}
        for spec in shard.program.outputs:
            relation = shard.program.relations[spec.relation]
            rows = _sorted_range(comm, shard, spec.relation)
            if fmt == "parquet":
                _write_parquet_part(comm, Path(output_dir) / spec.relation, rows, relation, shard.symbols)
                continue
            data = factio.format_relation(rows, relation, shard.symbols, spec.delimiter)
            if output_dir == "-":
                written[spec.relation] = data
                continue
            target = Path(output_dir) / (spec.filename or f"{spec.relation}.csv")
            _write_at_offset(comm, target, data)
        return written


def _sorted_range(comm: Collective, shard: Shard, name: str) -> np.ndarray:
    """This worker's range of the relation in output order, as encoded host rows. Symbol ids are
    in text order (``SymbolTable.sorted_union``), so packed order is output order."""
    rows = shard.host_rows(name)
    if rows.shape[1] == 0:
        gathered = comm.allgather(rows)
        return np.concatenate(gathered) if comm.rank == 0 else rows[:0]
    first = rows[:, 0]
    step = max(1, first.shape[0] // (SAMPLES_PER_WORKER * comm.size))
    samples = np.sort(np.concatenate(comm.allgather(first[::step])))
    cut = [samples[samples.shape[0] * k // comm.size] for k in range(1, comm.size)] if samples.shape[0] else []
    bounds = [0, *np.searchsorted(first, np.asarray(cut, dtype=np.uint32), side="left").tolist(), first.shape[0]]
    parts = comm.alltoall([rows[bounds[k] : bounds[k + 1]] for k in range(comm.size)])
    mine = np.concatenate(parts)
    if len(parts) > 1 and mine.shape[0] > 1:
        mine = mine[np.lexsort(mine.T[::-1])]
    return mine


def _write_at_offset(comm: Collective, target: Path, data: bytes) -> None:
    """Every worker writes its bytes where the lower ranks' bytes end; rank 0 sets the length."""
    lengths = comm.allgather(len(data))
    offset = sum(lengths[: comm.rank])
    if comm.rank == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
    comm.allgather(None)  # the directory exists before anyone opens the file
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if comm.rank == 0:
            os.ftruncate(fd, sum(lengths))
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _write_parquet_part(comm: Collective, dataset: Path, rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> None:
    if comm.rank == 0:
        factio.clear_parquet_parts(dataset)
    comm.allgather(None)  # stale parts are gone before anyone writes
    factio.write_parquet_part(dataset / factio.parquet_part_name(comm.rank), rows, relation, symbols)
