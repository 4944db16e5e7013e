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
from typing import Any, TextIO, TypeVar

import numpy as np

from dask_datalog.engine.formats import fact_input

from dask_datalog.engine.formats import relation_output
from dask_datalog.engine.backend import gpu_count
from dask_datalog.engine.checkpoint import CheckpointOptions, array_digest
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.ir import Program
from dask_datalog.spmd.inputs import check_fact_names
from dask_datalog.spmd.run import combine_stats
from dask_datalog.spmd.writer import check_output_format, print_relation, print_sizes
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition.placement import REPLICATE_BELOW

from dask_datalog.cluster.runtime.plugin import PLUGIN_NAME, DatalogPlugin
from dask_datalog.engine.errors import Aborted, ClusterError, RunTimeout, Suspended, Terminated, WorkerLost
from dask_datalog.spmd.options import RunOptions
from dask_datalog.cluster.runtime.tasks import JobSpec, Stopped, evaluate_task, shard_frame, shard_rows, shard_stats, shard_symbols, write_task

ProgressHandler = Callable[[dict[str, Any]], None]
T = TypeVar("T")

WATCH_S = 0.5  # how often a waiting client checks that every worker of the job is still in the cluster
ABORT_S = 5.0  # how long the client waits for a job's abort to be delivered to its workers
STOP_WAIT_S = 5.0  # how long the client lets the surviving workers end a job it stopped after a loss
NO_WORKERS_S = 60.0  # after a loss, how long a retry waits for any worker at all


class _Watch:
    """What ``_run_phase`` watches besides the workers' presence: the job's deadline, a request
    to suspend (sent to the workers once), and the workers' heartbeats (``heartbeats``: when
    each one's ``last_seen`` at the scheduler last moved, by this process's clock, so the
    scheduler's clock never matters)."""

    def __init__(self, options: RunOptions):
        self.options = options
        self.deadline = time.monotonic() + options.timeout if options.timeout is not None else None
        self.sent = False
        self.heartbeats: dict[str, tuple[float, float]] = {}  # address -> (last_seen, moved at)

    def silent(self, workers: Mapping[str, Any]) -> set[str]:
        """Of ``workers`` (the scheduler's ``scheduler_info()["workers"]``), those whose
        heartbeat has not moved for ``silent_s``."""
        now = time.monotonic()
        quiet = set()
        for address, info in workers.items():
            seen = float(info.get("last_seen", 0.0))
            previous = self.heartbeats.get(address)
            if previous is None or previous[0] != seen:
                self.heartbeats[address] = (seen, now)
            elif now - previous[1] > self.options.silent_s:
                quiet.add(address)
        return quiet

    def check(self, client: Any, job: str | None, peers: Sequence[str]) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RunTimeout(f"the job ran past its time limit of {self.options.timeout:g} s and was stopped on every worker")
        if self.options.suspend is None or not self.options.suspend.is_set() or self.sent or job is None:
            return
        if self.options.checkpoint_dir is None:
            raise Terminated("the job was stopped on every worker without a checkpoint (no checkpoint directory)")
        self.sent = True
        _call_workers(client, peers, _suspend, job)


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
    """Which of a job's workers are still in the cluster, asked of the scheduler at most every
    WATCH_S: the scheduler drops a worker whose connection closes (a killed process) at once;
    with a ``watch``, a worker whose heartbeats stopped for its ``silent_s`` counts as gone too
    (public ``Client.scheduler_info``; without one, the cheaper ``Client.ncores``)."""

    def __init__(self, client: Any, peers: Sequence[str], watch: _Watch | None = None):
        self.client = client
        self.peers = tuple(peers)
        self.watch = watch
        self.present = set(peers)
        self.quiet: set[str] = set()
        self.checked = time.monotonic()

    def lost(self, force: bool = False) -> tuple[str, int, str] | None:
        """(address, rank, how) of the first worker of the job gone from the cluster, or None."""
        now = time.monotonic()
        if force or now - self.checked >= WATCH_S:
            self.checked = now
            if self.client.status != "running":  # a closed client sees no workers: that is no loss to retry
                # The scheduler is gone (killed, scancel): nothing to retry on. After a stop
                # request (scancel signals every process) the run stopped as asked, resumable
                # from its latest checkpoint; else it is the user's error.
                lost = f"lost the Dask scheduler (client {self.client.status})"
                if self.watch is not None and self.watch.options.suspend is not None and self.watch.options.suspend.is_set():
                    raise Terminated(f"{lost} before the job had checkpointed")
                raise ClusterError(f"{lost}: the job was stopped")
            if self.watch is None:
                self.present = set(self.client.ncores())
            else:
                workers = self.client.scheduler_info()["workers"]
                self.quiet = self.watch.silent(workers)
                self.present = set(workers) - self.quiet
        for rank, p in enumerate(self.peers):
            if p not in self.present:
                silent = self.watch.options.silent_s if self.watch is not None else 0
                how = f"stopped answering (no heartbeat for {silent:g} s)" if p in self.quiet else "was lost"
                return p, rank, how
        return None

    def alive(self) -> list[str]:
        return [p for p in self.peers if p in self.present]


def default_workers() -> int:
    """CPU workers of an embedded cluster: one per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def start_cluster(workers: int | None, backend: str, processes: bool = True) -> Any:
    """An embedded cluster: ``LocalCUDACluster`` (one worker per GPU, or ``workers`` of them)
    when the backend is CuPy or auto and CuPy sees a GPU; else a ``LocalCluster`` of
    single-threaded worker processes, each allowed its share of the cores for the parallel
    CPU kernels (with CuPy and more workers than GPUs, these processes share the GPUs)."""
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
    # Each worker's CPU kernels get its share of the cores, so workers' spinning OpenMP
    # threads do not compete (docs/benchmarks.md, "Distributed", has the measurements).
    # A worker the nanny restarts after a loss logs its start-up at INFO unless its own
    # configuration says otherwise (silence_logs reaches the first start only): the recovered
    # command's stderr would fill with Dask's banner.
    env = {"OMP_NUM_THREADS": threads, "DASK_LOGGING__DISTRIBUTED": "error"}
    extra = {"env": env, "preload": ["dask_datalog.cluster.runtime.worker_setup"]} if processes else {}
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


def ensure_plugin(client: Any, workers: Sequence[str]) -> None:
    """Register the exchange handler if one of ``workers`` (the job's: asking a hung worker
    elsewhere in the cluster would wait for it) lacks it. Registering again would replace a
    running job's mailboxes, so a cluster whose workers have it is left alone; the scheduler
    gives it to workers that join later."""
    have = client.run(lambda dask_worker: PLUGIN_NAME in dask_worker.plugins, workers=list(workers))
    if not all(have.values()):
        client.register_plugin(DatalogPlugin(), name=PLUGIN_NAME)


def _abort(job: str, reason: str, dask_worker: Any = None) -> None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        plugin.abort(job, reason)


def _suspend(job: str, dask_worker: Any = None) -> None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        plugin.suspend(job)


def _call_workers(client: Any, workers: Sequence[str], fn: Callable, *args: Any) -> None:
    """``client.run(fn, *args)`` on ``workers``, waiting ABORT_S at most: a worker that died a
    moment ago may still be listed, and the scheduler's call to it would retry connecting for
    its connect timeout (30 s)."""

    def call() -> None:
        try:
            client.run(fn, *args, workers=list(workers), on_error="ignore")
        except (OSError, TimeoutError):
            # The scheduler went away meanwhile (scancel stops it with everything else): the
            # caller's next look at the cluster (``_Members.lost``) says so, in one line.
            pass

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(ABORT_S)


@dataclass
class DistributedRun:
    """A finished distributed run: each worker's ``Shard`` stays in that worker's memory (the
    futures), the client holds counts and statistics. ``close`` (or dropping it) frees them.
    A worker lost later (while the outputs are written or relations gathered) costs a retry
    like one lost during the evaluation: ``job`` evaluates again, then the phase runs again."""

    job: _Job
    peers: tuple[str, ...]
    shards: list[Any]  # futures, one per worker in rank order
    stats: dict[str, Any]
    sizes: dict[str, int]
    _symbols: SymbolTable | None = None
    _rows: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        return self.job.client

    @property
    def program(self) -> Program:
        return self.job.program

    def size(self, name: str) -> int:
        return self.sizes[name]

    @property
    def symbols(self) -> SymbolTable:
        """The job's symbol table (the same on every worker), fetched once when decoding."""
        if self._symbols is None:

            def fetch() -> SymbolTable:
                future = _submit_to(self.client, self.peers[0], shard_symbols, self.shards[0])
                return _run_phase(self.client, None, [future], self.peers[:1], _Where("while gathering results"))[0]

            self._symbols = self._surviving(fetch)
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

    def write(self, output_dir: str | Path, format: str = "csv", stream: TextIO | None = None, written: Any = None) -> None:
        """The workers write the ``.output`` relations (``output.write_outputs``); with
        ``output_dir`` "-" they come here and are printed to ``stream`` (default stdout), and
        ``.printsize`` lines go to ``stream`` when one is given. A worker lost meanwhile costs
        a retry: the evaluation runs again (from the latest checkpoint) and the writing too."""
        fmt = format
        to_stdout = str(output_dir) == "-"
        check_output_format(str(output_dir), fmt)
        target = "-" if to_stdout else str(Path(output_dir).resolve())
        if self.program.outputs:
            parts = self._surviving(lambda: self._write_phase(target, fmt))
            if to_stdout:
                for spec in self.program.outputs:
                    print_relation(stream or sys.stdout, spec.relation, b"".join(p[spec.relation] for p in parts))
        if stream is not None:
            print_sizes(stream, self.program, self.sizes.__getitem__)

    def _write_phase(self, target: str, fmt: str) -> list[dict[str, bytes]]:
        job = f"{self.job.job}-write-{uuid.uuid4().hex[:6]}"
        futures = [
            _submit_to(self.client, peer, write_task, shard, job, self.peers, target, fmt)
            for shard, peer in zip(self.shards, self.peers)
        ]
        return _run_phase(self.client, job, futures, self.peers, _Where("while writing the outputs"), watch=self.job.watch)

    def close(self) -> None:
        """Free the shards on the workers."""
        self.client.cancel(self.shards)
        self.shards = []

    def _submit(self, fn: Callable, *args: Any) -> list[Any]:
        return [_submit_to(self.client, peer, fn, shard, *args) for shard, peer in zip(self.shards, self.peers)]

    def _each(self, fn: Callable, *args: Any) -> list[Any]:
        return self._surviving(
            lambda: _run_phase(self.client, None, self._submit(fn, *args), self.peers, _Where("while gathering results"))
        )

    def _surviving(self, phase: Callable[[], T]) -> T:
        """``phase()``, evaluated again (and the phase re-run) after each worker lost in it,
        while the job has retries; the survivors' shards are freed first."""
        while True:
            try:
                return phase()
            except WorkerLost as lost:
                self.client.cancel(self.shards)
                again = self.job.recover(lost, len(self.peers))
                self.peers, self.shards, self.stats, self.sizes = again.peers, again.shards, again.stats, again.sizes
                self._symbols, self._rows = None, {}


class _Job:
    """One job on a cluster, over its attempts: each attempt evaluates on the workers present
    then; a lost worker (while loading, evaluating or writing) starts the next attempt from
    the job's latest checkpoint, or from the inputs, until ``options.retries`` are spent."""

    def __init__(
        self,
        client: Any,
        program: Program,
        fact_dir: str | Path | None,
        facts: Mapping[str, Any] | None,
        backend: str,
        chunk_rows: int | None,
        replicate_below: int,
        progress: ProgressHandler | None,
        options: RunOptions,
    ):
        self.client, self.program, self.backend = client, program, backend
        self.fact_dir = str(Path(fact_dir).resolve()) if fact_dir is not None else None
        self.facts = dict(facts or {})
        self.chunk_rows, self.replicate_below, self.progress, self.options = chunk_rows, replicate_below, progress, options
        self.job = f"datalog-{uuid.uuid4().hex[:12]}"
        self.watch = _Watch(options)
        self.attempt = 0
        self.recoveries: list[dict[str, Any]] = []
        self.excluded: set[str] = set()  # workers that went silent: never asked to run this job again
        check_fact_names(program, self.facts)
        self.files = {name: str(Path(p).resolve()) for name, p in self.facts.items() if isinstance(p, (str, Path))}
        arrays = {name: a for name, a in self.facts.items() if name not in self.files}
        self.digests = {name: array_digest(a) for name, a in arrays.items()} if options.checkpoint_dir else {}

    def evaluate(self) -> DistributedRun:
        peers = tuple(sorted(self.client.ncores()))  # asks the scheduler (scheduler_info() may answer from a cache)
        if not peers:
            raise ClusterError("the Dask cluster has no workers (yet): start some, or wait for them to join")
        ensure_plugin(self.client, peers)
        while True:
            try:
                return self._attempt(peers)
            except WorkerLost as lost:
                peers = self._after_loss(lost, len(peers))

    def recover(self, lost: WorkerLost, size: int) -> DistributedRun:
        """A worker of the ``size`` was lost after the evaluation (while writing): evaluate again."""
        peers = self._after_loss(lost, size)
        while True:
            try:
                return self._attempt(peers)
            except WorkerLost as again:
                peers = self._after_loss(again, len(peers))

    def _after_loss(self, lost: WorkerLost, size: int) -> tuple[str, ...]:
        """Count a retry (or give up), wait for the cluster to have workers again, and say what
        happens next."""
        if self.attempt >= self.options.retries:
            raise WorkerLost(lost.address, lost.rank, lost.where, self.attempt, lost.how) from None
        if self.options.suspend is not None and self.options.suspend.is_set():
            # Asked to stop (SIGTERM: a batch system stopping the whole job, workers too): a
            # retry would compute on, without the request. The latest checkpoint resumes.
            raise Terminated(f"worker {lost.address} (rank {lost.rank}) {lost.how} {lost.where} before the job had checkpointed") from None
        t0 = time.monotonic()
        self.attempt += 1
        if lost.how != "was lost":
            self.excluded.add(lost.address)
        peers = _rejoined(self.client, size, self.options.rejoin_s, self.excluded)
        ensure_plugin(self.client, peers)
        resumed = "the latest checkpoint" if self.options.checkpoint_dir else "the inputs"
        note = (
            f"worker {lost.address} (rank {lost.rank}) {lost.how} {lost.where}; retry {self.attempt}/{self.options.retries} "
            f"from {resumed} on {len(peers)} workers"
        )
        self.recoveries.append(
            {"lost": lost.address, "rank": lost.rank, "where": lost.where, "attempt": self.attempt, "workers": len(peers), "wait_s": round(time.monotonic() - t0, 3)}
        )
        if self.progress is not None:
            self.progress({"note": note})
        return peers

    def _attempt(self, peers: tuple[str, ...]) -> DistributedRun:
        client = self.client
        started = time.monotonic()
        name = f"{self.job}-{self.attempt}"
        arrays: list[dict[str, Any]] = [{} for _ in peers]
        for relation, source in self.facts.items():
            if relation not in self.files:
                for rank, part in enumerate(_split_rows(source, len(peers))):
                    arrays[rank][relation] = client.scatter(part, workers=[peers[rank]], direct=True, hash=False)
        topic = f"{name}-progress"  # always: the last event says where the job was if a worker is lost
        spec = JobSpec(
            job=name,
            program=self.program,
            peers=peers,
            backend=self.backend,
            fact_dir=self.fact_dir,
            fact_files=self.files,
            chunk_rows=self.chunk_rows,
            replicate_below=self.replicate_below,
            progress_topic=topic,
            checkpoint=self._checkpoint_options(name),
            memory_limit=self.options.memory_limit,
            array_digests=self.digests,
        )
        where = _Where("while loading the inputs")

        def on_event(event: tuple[float, dict[str, Any]]) -> None:
            where.update(event[1])
            if self.progress is not None:
                self.progress(event[1])

        client.subscribe_topic(topic, on_event)
        try:
            futures = [
                _submit_to(client, peer, evaluate_task, spec, rank, arrays[rank], key=f"{name}-shard-{rank}")
                for rank, peer in enumerate(peers)
            ]
            _run_phase(client, name, futures, peers, where, keep=True, watch=self.watch)
        finally:
            client.unsubscribe_topic(topic)
        stats_futures = [_submit_to(client, p, shard_stats, f) for f, p in zip(futures, peers)]
        try:
            stats = combine_stats(_run_phase(client, None, stats_futures, peers, _Where("after the evaluation")))
        except BaseException:
            client.cancel(futures)
            raise
        if self.recoveries:
            self.recoveries[-1]["attempt_s"] = round(time.monotonic() - started, 3)
        stats["recoveries"] = list(self.recoveries)
        return DistributedRun(self, peers, futures, stats, stats["sizes"])

    def _checkpoint_options(self, name: str) -> CheckpointOptions | None:
        """The first attempt starts from the inputs (or, with ``resume``, from the checkpoint
        it names); a retry from the latest checkpoint this job wrote, else where the first
        attempt started."""
        directory = self.options.checkpoint_dir
        if directory is None:
            return None
        if self.options.resume:
            resume, verify = "", self.attempt == 0
        else:
            resume, verify = (f"{self.job}-" if self.attempt else None), False
        return CheckpointOptions(directory, self.options.checkpoint_every, resume, verify, name)


def run_job(
    client: Any,
    program: Program,
    fact_dir: str | Path | None = None,
    facts: Mapping[str, Any] | None = None,
    backend: str = "auto",
    chunk_rows: int | None = None,
    replicate_below: int = REPLICATE_BELOW,
    progress: ProgressHandler | None = None,
    options: RunOptions = RunOptions(),
) -> DistributedRun:
    """Evaluate ``program`` on every worker of ``client``'s cluster (one shard per worker),
    surviving lost workers and stopping as ``options`` say."""
    return _Job(client, program, fact_dir, facts, backend, chunk_rows, replicate_below, progress, options).evaluate()


def _rejoined(client: Any, size: int, rejoin_s: float, excluded: set[str]) -> tuple[str, ...]:
    """The workers to retry on, but the ``excluded``: once the cluster is back to ``size``
    workers (a nanny restarts a killed one within seconds), or after ``rejoin_s`` with
    whichever are there."""
    start = time.monotonic()
    while True:
        peers = tuple(sorted(set(client.ncores()) - excluded))
        waited = time.monotonic() - start
        if len(peers) >= size or (peers and waited > rejoin_s):
            return peers
        if waited > NO_WORKERS_S:
            raise RuntimeError(f"the Dask cluster has had no workers for {NO_WORKERS_S:g} s after losing one")
        time.sleep(0.2)


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
    client: Any,
    job: str | None,
    futures: Sequence[Any],
    peers: Sequence[str],
    where: _Where,
    keep: bool = False,
    watch: _Watch | None = None,
) -> list[Any]:
    """Wait for one task per worker (``futures[r]`` on ``peers[r]``); on the first failure (an
    exception, or a ``Stopped`` result) stop the job on every worker, release its tasks and raise
    the error that caused it (not a peer's Aborted). Ctrl-C (or any error while waiting)
    stops the job the same way. While waiting, every WATCH_S, check that every worker is still
    in the cluster: a lost one raises ``WorkerLost`` (its task would wait for it forever), after
    the job was stopped on the survivors; and ``watch``: the deadline (``RunTimeout``) and a
    request to suspend, which every worker answers with a checkpoint and ``Suspended`` (raised
    here once all of them are done). ``job``: None for tasks that take part in no job's
    collectives (gathers), which need no abort. ``keep``: leave the results on the workers."""

    def outcome(future: Any) -> BaseException | None:
        """The error a finished task ended with (cancelled: by the client, or by the scheduler
        when its input was lost), None for a result."""
        if future.status == "error":
            return future.exception()
        if future.status == "cancelled":
            return RuntimeError("cancelled")
        if future.type is Stopped:
            return future.result().error
        return None

    def failed(future: Any) -> bool:  # a stop at a checkpoint is every worker's agreed end, not a failure
        return future.status != "pending" and not isinstance(outcome(future), (type(None), Suspended))

    members = _Members(client, peers, watch)

    def abort(reason: str) -> None:
        if job is not None:
            members.lost(force=True)
            _call_workers(client, members.alive(), _abort, job, reason)

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
            if watch is not None:
                watch.check(client, job, peers)
            lost = members.lost()
            if lost is None and not stopping and any(failed(f) for f in futures):
                stopping = True
                abort("a peer failed")
                lost = members.lost()  # abort() just asked the scheduler
            if lost is not None:
                raise WorkerLost(lost[0], lost[1], str(where), how=lost[2])
        if not any(failed(f) for f in futures):
            suspended = next((e for e in map(outcome, futures) if isinstance(e, Suspended)), None)
            if suspended is not None:
                client.cancel(list(futures))
                raise suspended
            return [] if keep else client.gather(list(futures))
        lost = members.lost(force=True)  # a peer's "connection closed" may be the first sign of a loss
        if lost is not None:
            raise WorkerLost(lost[0], lost[1], str(where), how=lost[2])
    except WorkerLost as error:
        abort(f"worker {error.address} (rank {error.rank}) {error.how}")
        survivors = [f for f, p in zip(futures, peers) if p in members.alive()]
        # Let them end the phase (each drops the job's mailbox), for a bounded time.
        deadline = time.monotonic() + STOP_WAIT_S
        while any(f.status == "pending" for f in survivors) and time.monotonic() < deadline:
            time.sleep(0.05)
        client.cancel(list(futures))
        raise
    except BaseException as error:
        abort("timed out" if isinstance(error, RunTimeout) else "stopped by the client")
        client.cancel(list(futures))
        raise
    errors = [outcome(f) for f in futures if failed(f) and f.status != "cancelled"]
    if not errors:  # only cancelled ones: gather raises distributed's error for them
        client.gather(list(futures))
    client.cancel(list(futures))
    raise next((e for e in errors if not isinstance(e, Aborted)), errors[0])
