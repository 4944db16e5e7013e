"""The client side of a run on a Dask cluster (the coordinator): ``ClusterRun`` is the one owner
of a run's record and of every way it can fail, and ``DistributedRun`` is its result.

The coordinator sends the program and file names and receives counts, timings and progress
events, never tuples (unless a caller asks for rows); it is out of the per-iteration path:
workers exchange tuples among themselves and agree on the fixpoint (phase.py).

How a run fails, and what the coordinator does (one place each):
- a phase's task ends on an error (``tasks.Failed`` or an exception): the run is aborted on
  every worker (``abort``, the one way to stop it from outside) and the error that caused it is
  raised, not a peer's ``Aborted``;
- a worker leaves the cluster or stops sending heartbeats (``Membership``): the run is aborted
  on the others, their tasks released, and ``retrying``, the one retry helper, starts a new
  attempt on the workers present, from the run's latest checkpoint or its inputs, while
  ``options.retries`` last; a loss while writing or gathering re-runs the evaluation, then the
  phase;
- the deadline passes (``RunTimeout``), the user asks to stop (SIGTERM: every worker
  checkpoints at one boundary and the run raises ``Suspended``; without a checkpoint directory
  ``Terminated``), the scheduler goes away (``ClusterError``), Ctrl-C: the run is aborted and the
  error raised.

Every worker-side state and connection carries the run id and the attempt (``RunRecord``); the
client registers each attempt on its workers before submitting its tasks (plugin.py), so what
belongs to an older attempt is refused by id.

Membership is watched from the client (``Client.scheduler_info``-like identity calls every
WATCH_S): it works on any cluster, the scheduler needs nothing of ours. A scheduler plugin
(``remove_worker``, as distributed's P2P shuffle has) would learn of a loss sooner, but could
not be installed on clusters whose scheduler lacks this package (``--scheduler``), which would
need this path anyway; the client notices a killed worker within WATCH_S (docs/reliability.md).
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TextIO, TypeVar

import numpy as np

from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.cluster.runtime.phase import PhaseId
from dask_datalog.cluster.runtime.plugin import PLUGIN_NAME, DatalogPlugin
from dask_datalog.cluster.runtime.tasks import (
    Failed,
    ShardTask,
    evaluate_task,
    shard_frame,
    shard_packed,
    shard_stats,
    shard_symbols,
    write_task,
)
from dask_datalog.engine.backend import NUMPY
from dask_datalog.engine.checkpoint import CheckpointOptions, array_digest
from dask_datalog.engine.errors import Aborted, ClusterError, RunTimeout, Suspended, Terminated, WorkerLost
from dask_datalog.engine.formats import fact_input, relation_output
from dask_datalog.engine.ir import Program
from dask_datalog.engine.storage import sets
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition import REPLICATE_BELOW
from dask_datalog.spmd.inputs import check_fact_names
from dask_datalog.spmd.options import ExchangeKind, RunOptions
from dask_datalog.spmd.run import combine_stats
from dask_datalog.spmd.writer import check_output_format, print_outputs

ProgressHandler = Callable[[dict[str, Any]], None]
T = TypeVar("T")
# Every run's progress events share one topic: the scheduler keeps every topic ever logged to
# (up to distributed.admin.low-level-log-length events each) and removes none, so a topic per
# run made a resident service grow by about 100 KiB a job; one topic stays that size.
PROGRESS_TOPIC = "dask-datalog-progress"

WATCH_S = 0.5  # how often a waiting client checks that every worker of the run is still there
TELL_S = 5.0  # how often an unanswered call to the workers (open, abort, suspend) looks for a lost one
TELL_LIMIT_S = 60.0  # how long workers all still there may take to register a run or a suspend (a loaded machine)
STOP_WAIT_S = 5.0  # how long the survivors of a loss get to end their phase
ABORT_WAIT_S = 30.0  # how long the others get to end their phase after one failed (one stuck must not hold the run)
NO_WORKERS_S = 60.0  # after a loss, how long a retry waits for any worker at all
EVALUATING = "while loading the inputs"  # the evaluation's phase, until workers report iterations


@dataclass
class RunRecord:
    """What the client knows of a run: its id and current attempt (carried by everything the
    workers do for it), the attempt's workers in rank order, where it last reported being,
    its recoveries and the workers it no longer asks (silent ones)."""

    run_id: str
    attempt: int = 0
    peers: tuple[str, ...] = ()
    phase: str = EVALUATING
    position: tuple[int, int] | None = None
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    suspend_sent: bool = False

    def phase_id(self, name: str) -> PhaseId:
        return PhaseId(self.run_id, self.attempt, name)

    def reached(self, event: dict[str, Any]) -> None:
        """A worker's progress event: the furthest stratum and iteration reported."""
        at = (event["stratum"], event["iteration"])
        if self.position is None or at > self.position:
            self.position = at

    def where(self) -> str:
        """For a message: the furthest iteration reported while evaluating, else the phase."""
        if self.position is None or self.phase != EVALUATING:
            return self.phase
        return f"during stratum {self.position[0]}, after iteration {self.position[1]}"


class Membership:
    """Which of a run's workers are still in the cluster, asked of the scheduler at most every
    WATCH_S: the scheduler drops a worker whose connection closes (a killed process) at once;
    one whose heartbeats stopped for ``silent_s`` counts as gone too (its ``last_seen`` followed
    by this process's clock, so the scheduler's clock never matters)."""

    def __init__(self, client: Any, options: RunOptions):
        self.client = client
        self.options = options
        self.present: set[str] = set()
        self.quiet: set[str] = set()
        self.heartbeats: dict[str, tuple[float, float]] = {}  # address -> (last_seen, moved at)
        self.checked = 0.0

    def lost(self, peers: Sequence[str], where: Callable[[], str], force: bool = False) -> WorkerLost | None:
        """The first of ``peers`` gone from the cluster, lost ``where()``, or None. A closed
        client or a lost scheduler is a ``ClusterError`` (``Terminated`` after a stop request:
        scancel stops everything). ``where`` is asked once the loss is seen: progress events
        arrive while the scheduler is asked, and the run may have gone on meanwhile."""
        now = time.monotonic()
        # A peer missing from the cached listing is looked for in a fresh one before it counts
        # as lost: the cache may predate it (a retry's restarted worker, found by
        # ``_next_workers`` a moment after the loss that refreshed the cache).
        if force or now - self.checked >= WATCH_S or not self.present.issuperset(peers):
            self.checked = now
            workers = self._workers()
            self.quiet = self._silent(workers)
            self.present = set(workers) - self.quiet
        for rank, address in enumerate(peers):
            if address not in self.present:
                how = f"stopped answering (no heartbeat for {self.options.silent_s:g} s)" if address in self.quiet else "was lost"
                return WorkerLost(address, rank, where(), how=how)
        return None

    def _workers(self) -> dict[str, Any]:
        if self.client.status != "running":
            self._scheduler_gone()
        try:
            return dask_adapter.scheduler_workers(self.client)
        except OSError:  # the scheduler went away while we asked
            self._scheduler_gone()

    def _scheduler_gone(self) -> NoReturn:
        lost = f"lost the Dask scheduler (client {self.client.status})"
        if self.options.suspend is not None and self.options.suspend.is_set():
            raise Terminated(f"{lost} before the run had checkpointed")
        raise ClusterError(f"{lost}: the run was stopped")

    def _silent(self, workers: Mapping[str, Any]) -> set[str]:
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

    def alive(self, peers: Sequence[str]) -> list[str]:
        return [p for p in peers if p in self.present]


class ClusterRun:
    """One run on a cluster, over its attempts (see the module docstring)."""

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
        exchange: ExchangeKind,
        stdin: bytes | None = None,
    ):
        self.client, self.program, self.backend, self.options, self.exchange = client, program, backend, options, exchange
        self.stdin = stdin
        self.fact_dir = str(Path(fact_dir).resolve()) if fact_dir is not None else None
        self.facts = dict(facts or {})
        self.chunk_rows, self.replicate_below, self.progress = chunk_rows, replicate_below, progress
        check_fact_names(program, self.facts)
        self.files = {name: str(Path(p).resolve()) for name, p in self.facts.items() if isinstance(p, (str, Path))}
        arrays = {name: a for name, a in self.facts.items() if name not in self.files}
        self.digests = {name: array_digest(a) for name, a in arrays.items()} if options.checkpoint_dir else {}
        self.record = RunRecord(f"datalog-{uuid.uuid4().hex[:12]}")
        self.members = Membership(client, options)
        self.deadline = time.monotonic() + options.timeout if options.timeout is not None else None
        self.shards: list[Any] | None = None  # the evaluation's futures, one per worker in rank order
        self.stats: dict[str, Any] = {}

    # -- attempts --------------------------------------------------------------------------------------

    def retrying(self, phase: Callable[[], T]) -> T:
        """``phase()`` once the run is evaluated; after each worker lost in either, a new attempt
        (registered and evaluated again), while the run has retries. The one retry loop."""
        if not self.record.peers:
            self.record.peers = tuple(sorted(dask_adapter.scheduler_workers(self.client)))
            if not self.record.peers:
                raise ClusterError("the Dask cluster has no workers (yet): start some, or wait for them to join")
            self.exchange.uses_mesh(self.record.peers)  # a mesh asked for where it cannot run: said here, once
        while True:
            try:
                if self.shards is None:
                    self._start_attempt()
                    self._evaluate()
                return phase()
            except WorkerLost as lost:
                self._release()
                self.record.peers = self._after_loss(lost)

    def _next_workers(self, size: int) -> tuple[str, ...]:
        """The workers of the next attempt: once the cluster is back to ``size`` workers (a
        nanny restarts a killed one within seconds), or after ``rejoin_s`` whichever are there."""
        start = time.monotonic()
        while True:
            peers = tuple(sorted(set(dask_adapter.scheduler_workers(self.client)) - self.record.excluded))
            waited = time.monotonic() - start
            if len(peers) >= size or (peers and waited > self.options.rejoin_s):
                return peers
            if waited > NO_WORKERS_S:
                raise ClusterError(f"the Dask cluster has had no workers for {NO_WORKERS_S:g} s after losing one")
            time.sleep(0.2)

    def _start_attempt(self) -> None:
        """Register the attempt on its workers (the plugin first where one lacks it); a worker
        lost meanwhile is a loss like any other."""
        self.record.position = None
        self.record.phase = EVALUATING
        opened = self._tell(_open_run, self.record.run_id, self.record.attempt)
        if not all(opened):
            self.client.register_plugin(DatalogPlugin(), name=PLUGIN_NAME)
            self._tell(_open_run, self.record.run_id, self.record.attempt)

    def _after_loss(self, lost: WorkerLost) -> tuple[str, ...]:
        """Count a retry (or give up), wait for the cluster to have workers again, and say what
        happens next; the workers of the next attempt."""
        where = lost.where
        if self.record.attempt >= self.options.retries:
            raise WorkerLost(lost.address, lost.rank, where, self.record.attempt, lost.how) from None
        if self.options.suspend is not None and self.options.suspend.is_set():
            # Asked to stop (SIGTERM: a batch system stopping the whole job, workers too): a
            # retry would compute on, without the request. The latest checkpoint resumes.
            raise Terminated(
                f"worker {lost.address} (rank {lost.rank}) {lost.how} {where} before the run had checkpointed"
            ) from None
        t0 = time.monotonic()
        size = len(self.record.peers)
        self.record.attempt += 1
        if lost.how != "was lost":
            self.record.excluded.add(lost.address)
        peers = self._next_workers(size)
        resumed = "the latest checkpoint" if self.options.checkpoint_dir else "the inputs"
        self.record.recoveries.append(
            {
                "lost": lost.address,
                "rank": lost.rank,
                "where": where,
                "attempt": self.record.attempt,
                "workers": len(peers),
                "wait_s": round(time.monotonic() - t0, 3),
            }
        )
        if self.progress is not None:
            plural = "worker" if len(peers) == 1 else "workers"
            self.progress(
                {
                    "note": f"worker {lost.address} (rank {lost.rank}) {lost.how} {where}; retry {self.record.attempt}/{self.options.retries} from {resumed} on {len(peers)} {plural}"
                }
            )
        return peers

    def _evaluate(self) -> None:
        """One attempt's evaluation: a shard per worker, kept in the workers' memory."""
        client, record = self.client, self.record
        started = time.monotonic()
        peers = record.peers
        arrays: list[dict[str, Any]] = [{} for _ in peers]
        for relation, source in self.facts.items():
            if relation not in self.files:
                for rank, part in enumerate(_split_rows(source, len(peers))):
                    arrays[rank][relation] = client.scatter(part, workers=[peers[rank]], direct=True, hash=False)
        phase = record.phase_id("evaluate")
        topic = PROGRESS_TOPIC  # always: the last event says where the run was if a worker is lost
        spec = ShardTask(
            phase=phase,
            peers=peers,
            program=self.program,
            exchange=self.exchange,
            backend=self.backend,
            fact_dir=self.fact_dir,
            fact_files=self.files,
            stdin=self.stdin,
            chunk_rows=self.chunk_rows,
            replicate_below=self.replicate_below,
            progress_topic=topic,
            checkpoint=self._checkpoint_options(),
            memory_limit=self.options.memory_limit,
            array_digests=self.digests,
            profile=self.options.profile,
            keep=self.options.keep,
        )

        def on_event(event: tuple[float, dict[str, Any]]) -> None:
            record.reached(event[1])
            if self.progress is not None:
                self.progress(event[1])

        record.phase = EVALUATING
        events = ProgressEvents.of(client)
        events.add(str(phase), on_event)
        try:
            futures = [
                _submit(client, peer, evaluate_task, spec, rank, arrays[rank], key=f"{phase}-shard-{rank}")
                for rank, peer in enumerate(peers)
            ]
            self.run_phase(futures, collective=True, keep=True)
        finally:
            events.remove(str(phase))
        self.shards = futures
        record.phase = "after the evaluation"
        stats = combine_stats(self.run_phase([_submit(client, p, shard_stats, f) for f, p in zip(futures, peers)]))
        if record.recoveries:
            record.recoveries[-1]["attempt_s"] = round(time.monotonic() - started, 3)
        stats["recoveries"] = list(record.recoveries)
        self.stats = stats

    def _checkpoint_options(self) -> CheckpointOptions | None:
        """The first attempt starts from the inputs (or, with ``resume``, from the checkpoint
        it names); a retry from the latest checkpoint this run wrote, else where the first
        attempt started."""
        directory = self.options.checkpoint_dir
        if directory is None:
            return None
        attempt = self.record.attempt
        resume: str | None
        if self.options.resume:
            resume, verify = "", attempt == 0
        else:
            resume, verify = (f"{self.record.run_id}-" if attempt else None), False
        return CheckpointOptions(directory, self.options.checkpoint_every, resume, verify, f"{self.record.run_id}-{attempt}")

    # -- phases ----------------------------------------------------------------------------------------

    def run_phase(self, futures: Sequence[Any], collective: bool = False, keep: bool = False) -> list[Any]:
        """Wait for one task per worker of the attempt (``futures[r]`` on rank r); their
        results (none with ``keep``: they stay on the workers). ``collective``: the tasks meet
        in collectives (a stop must reach all of them); else they only read a finished shard.

        On the first failure (an exception, or ``Failed``) the run is aborted everywhere, its
        tasks given ABORT_WAIT_S to end and released, and the error that caused it raised (a
        stop at a checkpoint is every worker's agreed end: ``Suspended`` once all are done). A
        lost worker raises ``WorkerLost`` after the others were aborted and got STOP_WAIT_S to
        end. Meanwhile the deadline and a stop request are watched; Ctrl-C or any other error
        aborts the run."""
        peers = self.record.peers
        changed = threading.Event()  # a task ended (or was cancelled)
        for future in futures:
            future.add_done_callback(lambda _: changed.set())
        aborted_at: float | None = None
        try:
            while True:
                changed.clear()
                if all(f.status != "pending" for f in futures):
                    break
                if aborted_at is not None and time.monotonic() - aborted_at > ABORT_WAIT_S:
                    break
                changed.wait(WATCH_S)
                if collective:
                    self._requests()
                lost = self.members.lost(peers, self.record.where)
                if lost is None and aborted_at is None and any(_failed(f) for f in futures):
                    aborted_at = time.monotonic()
                    self.abort("a peer failed")
                    lost = self.members.lost(peers, self.record.where, force=True)
                if lost is not None:
                    raise lost
            if not any(_failed(f) for f in futures):
                suspended = next((e for e in map(_outcome, futures) if isinstance(e, Suspended)), None)
                if suspended is not None:
                    self._cancel(list(futures))
                    raise suspended
                return [] if keep else self.client.gather(list(futures))
            lost = self.members.lost(
                peers, self.record.where, force=True
            )  # a peer's closed connection may be the first sign of a loss
            if lost is not None:
                raise lost
        except WorkerLost as error:
            self.abort(f"worker {error.address} (rank {error.rank}) {error.how}")
            survivors = [f for f, p in zip(futures, peers) if p in self.members.alive(peers)]
            deadline = time.monotonic() + STOP_WAIT_S  # let them end the phase, for a bounded time
            while any(f.status == "pending" for f in survivors) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._cancel(list(futures))
            raise
        except BaseException as error:
            self.abort("timed out" if isinstance(error, RunTimeout) else "stopped by the client")
            self._cancel(list(futures))
            raise
        errors = [_outcome(f) for f in futures if _failed(f) and f.status != "cancelled"]
        if not errors:  # only cancelled ones: gather raises distributed's error for them
            self.client.gather(list(futures))
        self._cancel(list(futures))
        raise next((e for e in errors if not isinstance(e, Aborted)), errors[0])  # type: ignore[misc]

    def _requests(self) -> None:
        """The deadline (``RunTimeout``), a stop at once (``Terminated``: ``run_phase`` aborts
        the run on every worker), and a suspend request, sent to the workers once."""
        if self.options.stop is not None and self.options.stop.is_set():
            raise Terminated("the run was stopped on request")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RunTimeout(f"the run went past its time limit of {self.options.timeout:g} s and was stopped on every worker")
        suspend = self.options.suspend
        if suspend is None or not suspend.is_set() or self.record.suspend_sent:
            return
        if self.options.checkpoint_dir is None:
            raise Terminated("the run was stopped on every worker without a checkpoint (no checkpoint directory)")
        self._tell(_suspend, self.record.run_id)
        self.record.suspend_sent = True

    # -- telling the workers -------------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Stop the run on every worker of the attempt still in the cluster: the one way to stop
        it from outside (their phases stop at their next check). Called while a run is already
        ending (with an error of its own, which stays the one raised): a worker that cannot be
        told any more is one that is gone, with nothing left to stop."""
        try:
            self.members.lost(self.record.peers, self.record.where, force=True)
            # Best effort, briefly: the tasks' release stops them too, and a Ctrl-C must end soon.
            self._tell(_abort, self.record.run_id, reason, peers=self.members.alive(self.record.peers), limit_s=TELL_S)
        except (WorkerLost, ClusterError, Terminated):
            return

    def _tell(
        self, fn: Callable[..., Any], *args: Any, peers: Sequence[str] | None = None, limit_s: float | None = None
    ) -> list[Any]:
        """``fn(*args)`` on the attempt's workers (``client.run``). A worker that died a moment
        ago may still be listed, and the scheduler's call to it would wait for its connect
        timeout (30 s): every TELL_S without an answer the workers are looked for, a lost one
        raising ``WorkerLost`` and the scheduler gone a ``ClusterError``. Workers that are all
        there get ``limit_s`` (TELL_LIMIT_S) to answer: on a loaded machine a freshly started
        cluster took more than 5 s to register a run (a Soufflé suite case beside make test)."""
        peers = list(self.record.peers if peers is None else peers)
        if not peers:
            return []
        answer: list[Any] = []
        failure: list[BaseException] = []

        def call() -> None:
            try:
                answer.append(self.client.run(fn, *args, workers=peers))
            except BaseException as error:  # handed to the caller's thread below
                failure.append(error)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        limit_s = TELL_LIMIT_S if limit_s is None else limit_s
        deadline = time.monotonic() + limit_s
        while True:
            thread.join(TELL_S)
            if answer:
                return [answer[0].get(p) for p in peers]
            lost = self.members.lost(self.record.peers, self.record.where, force=True)
            if lost is not None:
                raise lost
            if failure:
                raise failure[0]
            if time.monotonic() > deadline:
                raise ClusterError(f"the workers did not answer within {limit_s:g} s")

    def _cancel(self, futures: Sequence[Any]) -> None:
        """Release tasks, where the client can still say so: a closed client's cancel would
        wait forever (its tasks went with it)."""
        if self.client.status == "running":
            self.client.cancel(list(futures))

    def _release(self) -> None:
        if self.shards is not None:
            self._cancel(self.shards)
            self.shards = None

    def close(self) -> None:
        """Free the shards on the workers and forget the run there (where they can still be
        told: a worker that is gone forgot it already)."""
        self._release()
        if self.client.status != "running":
            return
        try:
            self.members.lost(self.record.peers, self.record.where, force=True)
            # Best effort, briefly: a worker forgets a run none of whose tasks it holds (plugin.sweep).
            self._tell(_close_run, self.record.run_id, peers=self.members.alive(self.record.peers), limit_s=TELL_S)
        except (WorkerLost, ClusterError, Terminated):
            return


def _open_run(run: str, attempt: int, dask_worker: Any = None) -> bool:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is None:
        return False
    plugin.open_run(run, attempt)
    return True


def _abort(run: str, reason: str, dask_worker: Any = None) -> None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        plugin.abort(run, reason)


def _suspend(run: str, dask_worker: Any = None) -> None:
    dask_worker.plugins[PLUGIN_NAME].suspend(run)


def _close_run(run: str, dask_worker: Any = None) -> None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        plugin.close_run(run)


def _outcome(future: Any) -> BaseException | None:
    """The error a finished task ended with (cancelled: by the client, or by the scheduler when
    its input was lost), None for a result."""
    if future.status == "error":
        return future.exception()
    if future.status == "cancelled":
        return RuntimeError("cancelled")
    if future.type is Failed:
        return future.result().error
    return None


def _failed(future: Any) -> bool:
    """A stop at a checkpoint is every worker's agreed end, not a failure."""
    return future.status != "pending" and not isinstance(_outcome(future), (type(None), Suspended))


def _submit(client: Any, peer: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One task pinned to worker ``peer``: never moved to another worker (no
    ``allow_other_workers``) nor retried, so a task of a lost worker is never re-run elsewhere or
    on its restarted replacement (a new address); ``run_phase`` notices the loss instead."""
    return client.submit(fn, *args, workers=[peer], allow_other_workers=False, retries=0, pure=False, **kwargs)


def _split_rows(source: Any, n: int) -> list[Any]:
    """Row slices of an array-like or DataFrame, one per worker."""
    if fact_input.is_dataframe(source):
        bounds = [len(source) * k // n for k in range(n + 1)]
        return [source.iloc[bounds[k] : bounds[k + 1]] for k in range(n)]
    # Rows of Python values stay objects: NumPy would make ints beside floats floats.
    rows = source if isinstance(source, np.ndarray) else np.array(source, dtype=object)
    bounds = [rows.shape[0] * k // n for k in range(n + 1)]
    return [rows[bounds[k] : bounds[k + 1]] for k in range(n)]


class DistributedRun:
    """A finished run on a cluster (``spmd.run.Run``): each worker's ``Shard`` stays in that
    worker's memory, the client holds counts and statistics. Reading and writing go through the
    run's ``retrying``: a worker lost meanwhile costs a retry like one lost while evaluating."""

    def __init__(self, run: ClusterRun):
        self.run = run
        self.program = run.program
        self._symbols: SymbolTable | None = None
        self._rows: dict[str, np.ndarray] = {}

    @property
    def stats(self) -> dict[str, Any]:
        return self.run.stats

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.run.stats["sizes"])

    @property
    def symbols(self) -> SymbolTable:
        """The run's symbol table (the same on every worker), fetched once."""
        if self._symbols is None:
            self._symbols = self._read(shard_symbols)[0]
        return self._symbols

    def rows(self, name: str) -> np.ndarray:
        """All of relation ``name`` gathered here, merged into output order."""
        if name not in self._rows:
            parts = self._read(shard_packed, name)
            blocks = [b for b in parts if b.shape[0]]
            packed = sets.merge_all(blocks, NUMPY) if blocks else parts[0]
            self._rows[name] = relation_output.host_rows(packed, self.program.relations[name].arity, NUMPY)
        return self._rows[name]

    def frame(self, name: str) -> Any:
        """A Dask DataFrame with one partition per worker, built where the shards are."""
        import dask.dataframe as dd

        parts = self.run.retrying(lambda: [_submit(self.run.client, p, shard_frame, s, name) for s, p in self._placed()])
        relation = self.program.relations[name]
        meta = relation_output.to_pandas(np.zeros((0, relation.arity), np.uint32), relation, SymbolTable())
        return dd.from_delayed(parts, meta=meta, verify_meta=False)

    def write(
        self, output_dir: str, fmt: str = "csv", stream: TextIO | None = None, written: Callable[[str, int], None] | None = None
    ) -> None:
        """The workers write the ``.output`` relations (``spmd.writer``); the text of those that
        go to stdout (all with "-") comes here and is printed to ``stream`` (default stdout). ``written`` is for runs in
        process (here the workers write side by side)."""
        check_output_format(output_dir, fmt)
        texts: dict[int, bytes] = {}
        if self.program.outputs:
            parts = self.run.retrying(lambda: self._write_phase(output_dir, fmt))
            texts = {index: b"".join(p[index] for p in parts) for index in parts[0]}
        print_outputs(stream, self.program, output_dir, texts, self.sizes.__getitem__)

    def _write_phase(self, output_dir: str, fmt: str) -> list[dict[int, bytes]]:
        record = self.run.record
        record.phase = "while writing the outputs"
        phase = record.phase_id(f"write-{uuid.uuid4().hex[:6]}")
        futures = [
            _submit(self.run.client, peer, write_task, shard, phase, record.peers, self.run.exchange, output_dir, fmt)
            for shard, peer in self._placed()
        ]
        return self.run.run_phase(futures, collective=True)

    def _read(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        def phase() -> list[Any]:
            self.run.record.phase = "while gathering results"
            return self.run.run_phase([_submit(self.run.client, p, fn, s, *args) for s, p in self._placed()])

        return self.run.retrying(phase)

    def _placed(self) -> list[tuple[Any, str]]:
        assert self.run.shards is not None
        return list(zip(self.run.shards, self.run.record.peers))

    def close(self) -> None:
        self.run.close()


class ProgressEvents:
    """A client's one subscription to ``PROGRESS_TOPIC``, handing each event to the handler
    of its run's phase (``Client.subscribe_topic`` keeps one handler per topic and client, and
    the service runs several jobs on one client at once)."""

    _of: ClassVar[weakref.WeakKeyDictionary[Any, ProgressEvents]] = weakref.WeakKeyDictionary()
    _made: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, client: Any):
        self.handlers: dict[str, Callable[[tuple[float, dict[str, Any]]], None]] = {}
        client.subscribe_topic(PROGRESS_TOPIC, self._dispatch)

    @classmethod
    def of(cls, client: Any) -> ProgressEvents:
        with cls._made:
            events = cls._of.get(client)
            if events is None:
                events = cls._of[client] = cls(client)
            return events

    def add(self, phase: str, handler: Callable[[tuple[float, dict[str, Any]]], None]) -> None:
        self.handlers[phase] = handler

    def remove(self, phase: str) -> None:
        self.handlers.pop(phase, None)

    def _dispatch(self, event: tuple[float, dict[str, Any]]) -> None:
        handler = self.handlers.get(event[1].get("phase", ""))
        if handler is not None:
            handler(event)


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
    exchange: ExchangeKind = ExchangeKind.AUTO,
    stdin: bytes | None = None,
) -> DistributedRun:
    """Evaluate ``program`` on every worker of ``client``'s cluster (one shard per worker),
    surviving lost workers and stopping as ``options`` say; ``stdin``: what ``IO=stdin``
    inputs read (the first worker parses it)."""
    run = ClusterRun(client, program, fact_dir, facts, backend, chunk_rows, replicate_below, progress, options, exchange, stdin)
    try:
        run.retrying(lambda: None)
    except BaseException:
        run.close()  # the workers forget a run that ended without a result
        raise
    return DistributedRun(run)
