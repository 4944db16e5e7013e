"""The client side of a distributed run: find or start a cluster, submit one long-running task
per worker for each phase of a job, watch them, and stop the job everywhere when one fails or
the user interrupts. It sends the program and file names and receives counts, timings and
whatever the caller explicitly asks for; tuples move between workers only.
"""

from __future__ import annotations

import os
import sys
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
            self._symbols = self.client.submit(shard_symbols, self.shards[0], workers=[self.peers[0]]).result()
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
                    self.client.submit(write_task, shard, job, self.peers, target, fmt, workers=[peer], pure=False)
                    for shard, peer in zip(self.shards, self.peers)
                ],
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
        return [
            self.client.submit(fn, shard, *args, workers=[peer], pure=False) for shard, peer in zip(self.shards, self.peers)
        ]

    def _each(self, fn: Callable, *args: Any) -> list[Any]:
        return self.client.gather(self._submit(fn, *args))


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
    topic = f"{job}-progress" if progress is not None else None
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
    if topic is not None and progress is not None:
        handler = progress
        client.subscribe_topic(topic, lambda event: handler(event[1]))
    try:
        futures = [
            client.submit(evaluate_task, spec, rank, arrays[rank], key=f"{job}-shard-{rank}", workers=[peer], pure=False)
            for rank, peer in enumerate(peers)
        ]
        _run_phase(client, job, futures, keep=True)
    finally:
        if topic is not None:
            client.unsubscribe_topic(topic)
    stats = _combine_stats(client.gather([client.submit(shard_stats, f, workers=[p]) for f, p in zip(futures, peers)]))
    return DistributedRun(client, program, peers, futures, stats, stats["sizes"])


def _split_rows(source: Any, n: int) -> list[Any]:
    """Row slices of an array-like or DataFrame, one per worker."""
    if fact_input.is_dataframe(source):
        bounds = [len(source) * k // n for k in range(n + 1)]
        return [source.iloc[bounds[k] : bounds[k + 1]] for k in range(n)]
    rows = np.asarray(source)
    bounds = [rows.shape[0] * k // n for k in range(n + 1)]
    return [rows[bounds[k] : bounds[k + 1]] for k in range(n)]


def _run_phase(client: Any, job: str, futures: Sequence[Any], keep: bool = False) -> list[Any]:
    """Wait for one task per worker; on the first failure (an exception, or a ``Stopped``
    result) stop the job on every worker, release its tasks and raise the error that caused it
    (not a peer's JobAborted). Ctrl-C (or any error while waiting) stops the job the same way.
    ``keep``: leave the results on the workers."""
    from distributed import as_completed

    def failed(future: Any) -> bool:
        return future.status == "error" or future.type is Stopped

    def stop(reason: str) -> None:
        client.run(_abort, job, reason)
        client.cancel(list(futures))

    try:
        first = next((f for f in as_completed(futures, loop=client.loop) if failed(f)), None)
        if first is None:
            return [] if keep else client.gather(list(futures))
        client.run(_abort, job, "a peer failed")
        for _ in as_completed(futures, loop=client.loop):
            pass
    except BaseException:
        stop("stopped by the client")
        raise
    errors = [f.exception() if f.status == "error" else f.result().error for f in futures if failed(f)]
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
