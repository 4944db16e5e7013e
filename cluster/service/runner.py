"""One job run: the one-shot ``dask-datalog run``'s path (``api.Program.run`` on the service's
cluster, or in this process for a small job, then ``Result.write``), with its progress going to
the job's log and its end to its record. Nothing here evaluates anything itself."""

from __future__ import annotations

import io
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dask_datalog.cluster.api import Program, Result
from dask_datalog.cluster.cli.progress import ProgressState
from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.cluster.runtime.tasks import PROGRESS_EVERY_S
from dask_datalog.cluster.service import figures
from dask_datalog.cluster.service.local import LOCAL_BUDGET_S, local_sized
from dask_datalog.cluster.service.queue import Stop
from dask_datalog.cluster.service.store import JobRecord, JobStore, State
from dask_datalog.engine.errors import ClusterError, DatalogError, RunTimeout, Terminated
from dask_datalog.engine.plan import plan_program
from dask_datalog.spmd.options import RunOptions
from dask_datalog.spmd.progress import iteration_events
from dask_datalog.spmd.writer import file_name

log = logging.getLogger("dask_datalog.service")

CHECKPOINT = "checkpoint"  # the folder, in the job's, where a run with checkpoints writes them
Confine = Callable[[Program, str, str], None]  # raises DatalogError for files outside the roots


class JobLog:
    """The run's progress events as log lines: one per iteration the run reaches (the workers'
    latest events folded as the CLI's progress line folds them), and every note (a lost worker,
    a retry); the record's live iteration and tuple counts follow, and the job's page's points
    (``figures.add_point`` into ``folder``)."""

    def __init__(self, store: JobStore, job: str, strata: int, folder: Path):
        self.store, self.job, self.folder = store, job, folder
        self.state = ProgressState(strata)
        self.reached: tuple[int, int] = (-1, -1)
        self.strata: dict[int, int] = {}  # iterations reported per stratum (numbered from 0 in each)
        self.lock = threading.Lock()  # events come on the client's event loop, notes on the job's thread

    def __call__(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.state.update(event)
            if "note" in event:
                self.store.log(self.job, event["note"])
                return
            at = (int(event["stratum"]), int(event["iteration"]))
            if at <= self.reached:
                return
            self.reached = at
            self.strata[at[0]] = at[1] + 1
            found = sum(e["found"] for e in self.state.latest.values())
            self.store.log(self.job, self.state.counts())
            self.store.update(self.job, iterations=sum(self.strata.values()), tuples=found)
            delta = sum(e["delta"] for e in self.state.latest.values() if e["stratum"] == at[0])  # as the log line's
            figures.add_point(self.folder, *at, delta, found)


# How long a job whose run ended on its cluster (workers gone, or a stop the service did not
# ask for) waits for the service's own stop before it is FAILED: a SIGINT or SIGTERM to the
# service's process group (Ctrl-C, kill -TERM -PGID, systemd) reaches the embedded cluster's
# workers at once, and the service asks its jobs to stop only once its HTTP server has shut
# down (within its 2 s graceful timeout, server.py). A loaded make test saw such a job FAILED
# ("the Dask cluster has no workers": it went to the cluster after the signal) where the
# shutdown should have STOPPED it. Only where a shutdown can explain the end: the service had
# the signal, or the job's cluster had workers to lose (the signal may be on its way).
SHUTDOWN_GRACE_S = 5.0


def run_job(
    record: JobRecord,
    client: Any,
    store: JobStore,
    job_dir: Path,
    stop: Stop,
    confined: Confine,
    signalled: threading.Event,
    slot: threading.Lock | None = None,
    local_below: int = 0,
) -> None:
    """Run ``record`` to its final state: SUCCEEDED with its outputs written, STOPPED when
    ``stop`` was set (also when the run ended on its cluster and the stop came within
    ``SHUTDOWN_GRACE_S``, where ``signalled``, set on the service's SIGINT or SIGTERM, or the
    cluster's workers when the job went to it make a shutdown a possible end), FAILED with the
    one-line error of the run (a bad program's ``file:line:col: error: ...``). With a
    ``slot``, a job of at most ``local_below`` bytes of facts runs in this process, one at a
    time (local.py says which and why); any other on ``client``'s cluster. ``confined``
    refuses a program whose files (``.input``/``.output`` filenames, which may be absolute) leave the
    service's roots. A bug is logged with its traceback on the service's stderr and fails the
    job; the service goes on."""
    args = record.arguments
    store.update(record.id, state=State.RUNNING, started=time.time())
    checkpoints = job_dir / CHECKPOINT if args.get("checkpoint") else None
    workers = 0  # the cluster's when the job went to it
    try:
        program = Program(args["program"], record.program_name, macros=args.get("macros") or {})
        options = RunOptions(
            checkpoint_dir=str(checkpoints) if checkpoints is not None else None,
            checkpoint_every=args.get("checkpoint_every"),
            resume=bool(args.get("resume")),
            retries=args.get("retries", 2),
            timeout=args.get("timeout"),
            memory_limit=args.get("memory_limit"),
            stop=stop,
            keep=program.ir.shown,  # a job's result is its outputs: the rest is freed once used
        )
        strata = len(plan_program(program.ir).strata)
        output_dir, fmt = args["output_dir"], args.get("format", "csv")
        confined(program, args["fact_dir"], output_dir)
        started = time.monotonic()
        result = (
            _in_process(record, program, options, strata, store, slot, job_dir)
            if slot is not None and local_sized(args, local_below)
            else None
        )
        where = "in the service's process"
        if result is None:
            workers = len(dask_adapter.scheduler_workers(client))
            store.log(record.id, f"running on {workers} workers")
            if options.timeout is not None:  # the time limit is the job's: what ran in process counts
                options = replace(options, timeout=max(options.timeout - (time.monotonic() - started), 1e-3))
            progress = JobLog(store, record.id, strata, job_dir)
            # stdin=b"": an IO=stdin input reads nothing (the service's own stdin is no job's).
            result = program.run(fact_dir=args["fact_dir"], client=client, progress=progress, options=options, stdin=b"")
            where = f"on {result.stats['workers']} workers"
        try:
            store.log(record.id, f"writing the outputs into {output_dir}")
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            printed = io.StringIO()  # IO=stdout outputs and .printsize lines go to the job's log
            result.write(output_dir, fmt, printed)
            stats = result.stats
        finally:
            result.close()
        for line in printed.getvalue().splitlines():
            store.log(record.id, line)
        heads = {rule.head.relation for rule in program.ir.rules}
        results = {
            spec.relation: {
                "path": str(Path(output_dir) / (spec.relation if fmt == "parquet" else file_name(spec))),
                "format": fmt,
            }
            for spec in reversed(program.ir.outputs)
            if spec.io == "file"
        }
        figures.write_final(job_dir, stats)  # before SUCCEEDED: a reader of a SUCCEEDED job finds them
        store.update(
            record.id,
            state=State.SUCCEEDED,
            ended=time.time(),
            iterations=sum(len(s["iterations"]) for s in stats["strata"]),
            tuples=sum(n for name, n in stats["sizes"].items() if name in heads),
            results=results,
        )
        store.log(record.id, f"SUCCEEDED in {stats['total_s']:.2f} s {where}")
    except (Terminated, ClusterError) as error:  # asked to stop, or the cluster went
        if stop.is_set() or ((workers or signalled.is_set()) and stop.wait(SHUTDOWN_GRACE_S)):
            store.update(record.id, state=State.STOPPED, ended=time.time(), error=stop.reason)
            store.log(record.id, f"STOPPED: {stop.reason}")
        else:  # a stop nobody asked the service for, a cluster lost outside a shutdown, or none had workers
            _failed(store, record.id, str(error))
    except DatalogError as error:
        _failed(store, record.id, str(error))
    except Exception as error:  # a bug: loud on the service's stderr, the job FAILED, the service up
        log.exception("job %s failed on an internal error", record.id)
        _failed(store, record.id, f"internal error: {type(error).__name__}: {error}")
    finally:  # a run that ended has no use for its checkpoints (one killed with the service keeps them)
        if checkpoints is not None:
            shutil.rmtree(checkpoints, ignore_errors=True)


def _in_process(
    record: JobRecord, program: Program, options: RunOptions, strata: int, store: JobStore, slot: threading.Lock, job_dir: Path
) -> Result | None:
    """The small job's run in this process, as the one-shot ``run`` does it by default; None
    when the run went past its budget (then stopped, nothing written)."""
    with slot:
        store.log(record.id, "running in the service's process (a small job)")
        limit = options.timeout
        budget = LOCAL_BUDGET_S if limit is None else min(limit, LOCAL_BUDGET_S)
        events = iteration_events(0, JobLog(store, record.id, strata, job_dir), PROGRESS_EVERY_S)
        try:
            # numpy: a tiny job gains nothing from a GPU, and this process keeps off the device.
            return program.run(
                fact_dir=record.arguments["fact_dir"],
                backend="numpy",
                on_iteration=events,
                options=replace(options, timeout=budget),
                stdin=b"",
            )
        except RunTimeout:
            if limit is not None and limit <= LOCAL_BUDGET_S:
                raise
            store.log(record.id, f"still running after {LOCAL_BUDGET_S:g} s in the service's process: moved to the cluster")
            return None


def _failed(store: JobStore, job: str, error: str) -> None:
    store.update(job, state=State.FAILED, ended=time.time(), error=error)
    store.log(job, f"FAILED: {error}")
