"""The client side of a distributed run: find or start a cluster, submit one long-running task
per worker for each phase of a job, watch them, and stop the job everywhere when one fails or
the user interrupts. It sends the program and file names and receives counts, timings and
whatever the caller explicitly asks for; tuples move between workers only.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from dask_datalog.engine import fact_input, relation_output
from dask_datalog.engine.ir import Program
from dask_datalog.engine.job import check_fact_names, check_output_format, print_relation, print_sizes
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition.placement import REPLICATE_BELOW

from .exchange import PLUGIN_NAME, DatalogPlugin, JobAborted
from .tasks import JobSpec, Stopped, evaluate_task, shard_frame, shard_rows, shard_stats, shard_symbols, write_task

ProgressHandler = Callable[[dict[str, Any]], None]

WATCH_S = 0.5  # how often a waiting client checks that every worker of the job is still in the cluster
ABORT_S = 5.0  # how long the client waits for a job's abort to be delivered to its workers
STOP_WAIT_S = 5.0  # how long the client lets the surviving workers end a job it stopped after a loss


class WorkerLost(RuntimeError):
    """A worker of a running job left the cluster (its process died, or the scheduler lost it);
    the job was stopped on the other workers and its tasks released. No recovery: run it again."""

    def __init__(self, address: str, rank: int, where: str):
        self.address = address
        self.rank = rank
        super().__init__(f"worker {address} (rank {rank}) was lost {where}; the job was stopped")


class _Where:
    """Where a job is, for the message of a lost worker: the latest stratum and iteration the
    workers reported (progress events, at most every ``tasks.PROGRESS_EVERY_S``), else ``phase``."""

    def __init__(self, phase: str):
        self.phase = phase
        self.at: tuple[int, int] | None = None

    def update(self, event: dict[str, Any]) -> None:
        at = (event["stratum"], event["iteration"])
        if self.at is None or at > self.at:
            self.at = at

    def __str__(self) -> str:
        if self.at is None:
            return self.phase
        return f"during stratum {self.at[0]}, after iteration {self.at[1]}"


class _Members:
    """Which of a job's workers are still in the cluster, asked of the scheduler (public
    ``Client.ncores``) at most every WATCH_S: the scheduler drops a worker whose connection
    closes (a killed process) at once, and one that stops answering after its heartbeat TTL."""

    def __init__(self, client: Any, peers: Sequence[str]):
        self.client = client
        self.peers = tuple(peers)
        self.present = set(peers)
        self.checked = time.monotonic()

    def lost(self, force: bool = False) -> tuple[str, int] | None:
        """(address, rank) of the first worker of the job no longer in the cluster, or None."""
        now = time.monotonic()
        if force or now - self.checked >= WATCH_S:
            self.checked = now
            self.present = set(self.client.ncores())
        return next(((p, rank) for rank, p in enumerate(self.peers) if p not in self.present), None)

    def alive(self) -> list[str]:
        return [p for p in self.peers if p in self.present]


def default_workers() -> int:
    """CPU workers of an embedded cluster: one per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def gpu_count() -> int:
    """GPUs CuPy sees (0 without CuPy or a driver)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU" here
        return 0


def start_cluster(workers: int | None, backend: str, processes: bool = True) -> Any:
    """An embedded cluster: ``LocalCUDACluster`` (one worker per GPU, or ``workers`` of them)
    when the backend is CuPy or auto and CuPy sees a GPU; else a ``LocalCluster`` of
    single-threaded worker processes, each allowed its share of the cores for numba's parallel
    kernels (with CuPy and more workers than GPUs, these processes share the GPUs)."""
    import logging

    import dask

    gpus = gpu_count() if backend in ("cupy", "auto") else 0
    if gpus and (workers is None or workers <= gpus):
        from dask_cuda import LocalCUDACluster

        kwargs = {} if workers is None else {"n_workers": workers}
        return LocalCUDACluster(threads_per_worker=1, silence_logs=logging.ERROR, dashboard_address=":0", **kwargs)
    from distributed import LocalCluster

    n = workers or default_workers()
    threads = str(max(1, default_workers() // n))
    # Each worker's numba kernels get its share of the cores, so workers' spinning OpenMP
    # threads do not compete (docs/benchmarks.md, "Distributed", has the measurements).
    env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
    extra = {"env": env, "preload": ["dask_datalog.cluster.worker_setup"]} if processes else {}
    # Dask's profiler samples every task thread's stack with the GIL held: coarser sampling
    # keeps it out of short iterations. Dask's MALLOC_TRIM_THRESHOLD_ turns off glibc's
    # adaptive mmap threshold, making every large array fresh pages. Both measured in
    # docs/benchmarks.md, "Distributed".
    settings = {
        "distributed.worker.profile.interval": "100ms",
        "distributed.worker.profile.cycle": "10s",
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }
    with dask.config.set(settings):
        return LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=processes,
            silence_logs=logging.ERROR,
            dashboard_address=":0",
            **extra,
        )


def ensure_plugin(client: Any) -> None:
    """Register the exchange handler on every worker that lacks it. Registering again would
    replace a running job's mailboxes, so workers that have it are left alone."""
    have = client.run(lambda dask_worker: PLUGIN_NAME in dask_worker.plugins)
    if not all(have.values()):
        client.register_plugin(DatalogPlugin(), name=PLUGIN_NAME)


def _abort(job: str, reason: str, dask_worker: Any = None) -> None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        plugin.abort(job, reason)


@dataclass
class DistributedRun:
    """A finished distributed run: each worker's ``Shard`` stays in that worker's memory (the
    futures), the client holds counts and statistics. ``close`` (or dropping it) frees them."""

    client: Any
    program: Program
    peers: tuple[str, ...]
    shards: list[Any]  # futures, one per worker in rank order
    stats: dict[str, Any]
    sizes: dict[str, int]
    _symbols: SymbolTable | None = None
    _rows: dict[str, np.ndarray] = field(default_factory=dict)

    def size(self, name: str) -> int:
        return self.sizes[name]

    @property
    def symbols(self) -> SymbolTable:
        """The job's symbol table (the same on every worker), fetched once when decoding."""
        if self._symbols is None:
            future = _submit_to(self.client, self.peers[0], shard_symbols, self.shards[0])
            self._symbols = _run_phase(self.client, None, [future], self.peers[:1], _Where("while gathering results"))[0]
        return self._symbols

    def rows(self, name: str) -> np.ndarray:
        """All rows of one relation gathered here, on request (``Result.numpy`` etc.), in
        shard order: ``Result``'s methods put them in output order themselves."""
        if name not in self._rows:
            self._rows[name] = np.concatenate(self._each(shard_rows, name))
        return self._rows[name]

    def frame(self, name: str) -> Any:
        """A Dask DataFrame with one partition per worker, built where the shards are."""
        import dask.dataframe as dd

        parts = self._submit(shard_frame, name)
        relation = self.program.relations[name]
        meta = relation_output.to_pandas(np.zeros((0, relation.arity), np.uint32), relation, SymbolTable())
        return dd.from_delayed(parts, meta=meta, verify_meta=False)

    def write(self, output_dir: str | Path, format: str = "csv", stream: TextIO | None = None) -> None:
        """The workers write the ``.output`` relations (``output.write_outputs``); with
        ``output_dir`` "-" they come here and are printed to ``stream`` (default stdout), and
        ``.printsize`` lines go to ``stream`` when one is given."""
        fmt = format
        to_stdout = str(output_dir) == "-"
        check_output_format(to_stdout, fmt)
        target = "-" if to_stdout else str(Path(output_dir).resolve())
        if self.program.outputs:
            job = f"{uuid.uuid4().hex[:12]}-write"
            parts = _run_phase(
                self.client,
                job,
                [
                    _submit_to(self.client, peer, write_task, shard, job, self.peers, target, fmt)
                    for shard, peer in zip(self.shards, self.peers)
                ],
                self.peers,
                _Where("while writing the outputs"),
            )
            if to_stdout:
                for spec in self.program.outputs:
                    print_relation(stream or sys.stdout, spec.relation, b"".join(p[spec.relation] for p in parts))
        if stream is not None:
            print_sizes(stream, self.program, self.size)

    def close(self) -> None:
        """Free the shards on the workers."""
        self.client.cancel(self.shards)
        self.shards = []

    def _submit(self, fn: Callable, *args: Any) -> list[Any]:
        return [_submit_to(self.client, peer, fn, shard, *args) for shard, peer in zip(self.shards, self.peers)]

    def _each(self, fn: Callable, *args: Any) -> list[Any]:
        return _run_phase(self.client, None, self._submit(fn, *args), self.peers, _Where("while gathering results"))


def run_job(
    client: Any,
    program: Program,
    fact_dir: str | Path | None = None,
    facts: Mapping[str, Any] | None = None,
    backend: str = "auto",
    chunk_rows: int | None = None,
    replicate_below: int = REPLICATE_BELOW,
    progress: ProgressHandler | None = None,
) -> DistributedRun:
    """Evaluate ``program`` on every worker of ``client``'s cluster (one shard per worker)."""
    ensure_plugin(client)
    peers = tuple(sorted(client.ncores()))  # asks the scheduler (scheduler_info() may answer from a cache)
    if not peers:
        raise RuntimeError("the Dask cluster has no workers")
    job = f"datalog-{uuid.uuid4().hex[:12]}"
    files: dict[str, str] = {}
    arrays: list[dict[str, Any]] = [{} for _ in peers]
    check_fact_names(program, facts or {})
    for name, source in (facts or {}).items():
        if isinstance(source, (str, Path)):
            files[name] = str(Path(source).resolve())
        else:
            for rank, part in enumerate(_split_rows(source, len(peers))):
                arrays[rank][name] = client.scatter(part, workers=[peers[rank]], direct=True, hash=False)
    topic = f"{job}-progress"  # always: the last event says where the job was if a worker is lost
    spec = JobSpec(
        job=job,
        program=program,
        peers=peers,
        backend=backend,
        fact_dir=str(Path(fact_dir).resolve()) if fact_dir is not None else None,
        fact_files=files,
        chunk_rows=chunk_rows,
        replicate_below=replicate_below,
        progress_topic=topic,
    )
    where = _Where("while loading the inputs")

    def on_event(event: tuple[float, dict[str, Any]]) -> None:
        where.update(event[1])
        if progress is not None:
            progress(event[1])

    client.subscribe_topic(topic, on_event)
    try:
        futures = [
            _submit_to(client, peer, evaluate_task, spec, rank, arrays[rank], key=f"{job}-shard-{rank}")
            for rank, peer in enumerate(peers)
        ]
        _run_phase(client, job, futures, peers, where, keep=True)
    finally:
        client.unsubscribe_topic(topic)
    stats_futures = [_submit_to(client, p, shard_stats, f) for f, p in zip(futures, peers)]
    try:
        stats = _combine_stats(_run_phase(client, None, stats_futures, peers, _Where("after the evaluation")))
    except BaseException:
        client.cancel(futures)
        raise
    return DistributedRun(client, program, peers, futures, stats, stats["sizes"])


def _split_rows(source: Any, n: int) -> list[Any]:
    """Row slices of an array-like or DataFrame, one per worker."""
    if fact_input.is_dataframe(source):
        bounds = [len(source) * k // n for k in range(n + 1)]
        return [source.iloc[bounds[k] : bounds[k + 1]] for k in range(n)]
    rows = np.asarray(source)
    bounds = [rows.shape[0] * k // n for k in range(n + 1)]
    return [rows[bounds[k] : bounds[k + 1]] for k in range(n)]


def _submit_to(client: Any, peer: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """One task pinned to worker ``peer``: never moved to another worker (no
    ``allow_other_workers``) nor retried, so a task of a lost worker is never re-run elsewhere or
    on its restarted replacement (a new address); ``_run_phase`` notices the loss instead."""
    return client.submit(fn, *args, workers=[peer], allow_other_workers=False, retries=0, pure=False, **kwargs)


def _run_phase(
    client: Any, job: str | None, futures: Sequence[Any], peers: Sequence[str], where: _Where, keep: bool = False
) -> list[Any]:
    """Wait for one task per worker (``futures[r]`` on ``peers[r]``); on the first failure (an
    exception, or a ``Stopped`` result) stop the job on every worker, release its tasks and raise
    the error that caused it (not a peer's JobAborted). Ctrl-C (or any error while waiting)
    stops the job the same way. While waiting, every WATCH_S, check that every worker is still
    in the cluster: a lost one raises ``WorkerLost`` (its task would wait for it forever), after
    the job was stopped on the survivors. ``job``: None for tasks that take part in no job's
    collectives (gathers), which need no abort. ``keep``: leave the results on the workers."""

    def failed(future: Any) -> bool:  # cancelled: by the client, or by the scheduler (its input was lost)
        return future.status in ("error", "cancelled") or future.type is Stopped

    members = _Members(client, peers)

    def abort(reason: str) -> None:
        """Abort the job on the workers still in the cluster, waiting ABORT_S at most: a worker
        that died a moment ago may still be listed, and the scheduler's call to it would retry
        connecting for its connect timeout (30 s)."""
        if job is not None:
            members.lost(force=True)
            kwargs = {"workers": members.alive(), "on_error": "ignore"}
            call = threading.Thread(target=client.run, args=(_abort, job, reason), kwargs=kwargs, daemon=True)
            call.start()
            call.join(ABORT_S)

    changed = threading.Event()  # a task ended (or was cancelled)
    for future in futures:
        future.add_done_callback(lambda _: changed.set())
    stopping = False
    try:
        while True:
            changed.clear()
            if all(f.status != "pending" for f in futures):
                break
            changed.wait(WATCH_S)
            lost = members.lost()
            if lost is None and not stopping and any(failed(f) for f in futures):
                stopping = True
                abort("a peer failed")
                lost = members.lost()  # abort() just asked the scheduler
            if lost is not None:
                raise WorkerLost(*lost, str(where))
        if not any(failed(f) for f in futures):
            return [] if keep else client.gather(list(futures))
        lost = members.lost(force=True)  # a peer's "connection closed" may be the first sign of a loss
        if lost is not None:
            raise WorkerLost(*lost, str(where))
    except WorkerLost as error:
        abort(f"worker {error.address} (rank {error.rank}) was lost")
        survivors = [f for f, p in zip(futures, peers) if p in members.alive()]
        # Let them end the phase (each drops the job's mailbox), for a bounded time.
        deadline = time.monotonic() + STOP_WAIT_S
        while any(f.status == "pending" for f in survivors) and time.monotonic() < deadline:
            time.sleep(0.05)
        client.cancel(list(futures))
        raise
    except BaseException:
        abort("stopped by the client")
        client.cancel(list(futures))
        raise
    ended = [f for f in futures if failed(f) and f.status != "cancelled"]
    errors = [f.exception() if f.status == "error" else f.result().error for f in ended]
    if not errors:  # only cancelled ones: gather raises distributed's error for them
        client.gather(list(futures))
    client.cancel(list(futures))
    raise next((e for e in errors if not isinstance(e, JobAborted)), errors[0])


def _combine_stats(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-worker statistics kept as they are, plus the sums a reader wants first."""
    sizes = {name: sum(s["local_sizes"][name] for s in per_worker) for name in per_worker[0]["local_sizes"]}
    exchange = [s["exchange"] for s in per_worker]
    return {
        "workers": len(per_worker),
        "backend": per_worker[0]["backend"],
        "total_s": max(s["total_s"] for s in per_worker),
        "load_s": max(s["load_s"] for s in per_worker),
        "sizes": sizes,
        "bytes_exchanged": sum(e["bytes_sent"] for e in exchange),
        "coordination_s": max(e["wait_s"] for e in exchange),
        "placement": per_worker[0]["placement"],
        "per_worker": per_worker,
    }
