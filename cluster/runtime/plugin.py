"""What a worker knows of the runs on it: the ``DatalogPlugin``, registered once per cluster.

The client registers each attempt of a run before it submits the attempt's tasks
(``open_run``); everything a worker does for a run carries the run id and attempt, so what
belongs to an older attempt (a stale rendezvous, a late connection) is refused by id, not by
remembering names. The client's abort reaches a run's phases here (``abort``: the one way to
stop a run from outside); so does a request to checkpoint and stop (``suspend``).

Peers find a phase's listening address through ``datalog_address``, a handler on each worker
(the rendezvous): it answers once this worker's task has opened the phase, so a peer that runs
ahead just waits for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.engine.errors import Aborted

PLUGIN_NAME = "dask-datalog"
RENDEZVOUS_POLL_S = 0.002  # how often the rendezvous looks whether the phase opened here
SWEEP_S = 5.0  # how often a worker looks for runs that nothing of theirs is left of
GRACE_S = 30.0  # a run registered this long ago with no task here is one its client gave up


@dataclass
class RunState:
    """One run on this worker: its current attempt, whether it was aborted (why) or asked to
    checkpoint and stop, and the listening addresses of the phases open here."""

    attempt: int
    opened: float = field(default_factory=time.monotonic)
    tasked: bool = False  # a task of the attempt ran here (so none left means the client let go)
    aborted: str | None = None
    suspend: bool = False
    addresses: dict[str, str] = field(default_factory=dict)


class DatalogPlugin(WorkerPlugin):
    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.lock = threading.Lock()  # read by task threads, written on the worker's loop too
        self.runs: dict[str, RunState] = {}
        dask_adapter.add_handler(worker, "datalog_address", self.rendezvous)
        self.sweeper = dask_adapter.every(SWEEP_S, self.sweep)
        self.settle_heartbeat = dask_adapter.settled_heartbeat(worker)

    # -- the client's calls (client.run) -----------------------------------------------------------

    def open_run(self, run: str, attempt: int) -> None:
        """The client starts ``attempt`` of ``run`` here: an older attempt's state goes."""
        with self.lock:
            self.runs[run] = RunState(attempt)

    def close_run(self, run: str) -> None:
        with self.lock:
            self.runs.pop(run, None)

    def abort(self, run: str, reason: str) -> None:
        """Stop the run's phases here: each notices at its next check (at most its poll
        interval), in a round or between rule versions and join chunks."""
        with self.lock:
            state = self.runs.get(run)
            if state is not None and state.aborted is None:
                state.aborted = reason

    def suspend(self, run: str) -> None:
        """Ask the run to checkpoint and stop at its next iteration boundary (SIGTERM)."""
        with self.lock:
            state = self.runs.get(run)
            if state is not None:
                state.suspend = True

    # -- the task's calls --------------------------------------------------------------------------

    def state(self, run: str, attempt: int) -> RunState:
        """The run's state for a task of ``attempt``; Aborted when the run was stopped, or the
        task belongs to another attempt than the one the client registered. A run this worker
        forgot is registered again: the sweep cannot tell a task still on its way (a long
        scatter, a busy scheduler) from a client that went away, and a task that runs is one
        its client still wants (``Phase.check`` stops it otherwise)."""
        with self.lock:
            state = self.runs.get(run)
            if state is None:
                state = self.runs[run] = RunState(attempt)
        if state.attempt != attempt:
            raise Aborted(f"run {run} attempt {attempt} is not the one this worker runs (it was stopped or retried)")
        if state.aborted is not None:
            raise Aborted(f"run {run} stopped: {state.aborted}")
        state.tasked = True
        return state

    def publish(self, run: str, attempt: int, phase: str, address: str) -> None:
        self.state(run, attempt).addresses[phase] = address

    def forget(self, run: str, attempt: int) -> None:
        """Drop the run's state if it is still of ``attempt`` (its client let go of it)."""
        with self.lock:
            state = self.runs.get(run)
            if state is not None and state.attempt == attempt:
                del self.runs[run]

    def withdraw(self, run: str, attempt: int, phase: str) -> None:
        with self.lock:
            state = self.runs.get(run)
            if state is not None and state.attempt == attempt:
                state.addresses.pop(phase, None)

    # -- the peers' rendezvous (on the worker's loop) -----------------------------------------------

    async def rendezvous(self, run: str, attempt: int, phase: str, wait_s: float) -> str | None:
        """The address of ``phase`` of ``run`` here once its task opened it; None when the
        registered attempt is another or the run was aborted: the asking peer stops. A run not
        (or no longer) known here is not yet: its task registers it again when it comes
        (``state``), and the asker stops on its own check if the run is over. Waits at most
        ``wait_s`` (the asker asks again, checking its own stop)."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.lock:
                state = self.runs.get(run)
                if state is not None and (state.attempt != attempt or state.aborted is not None):
                    return None
                address = state.addresses.get(phase) if state is not None else None
            if address is not None:
                return address
            if time.monotonic() > deadline:
                return ""
            await asyncio.sleep(RENDEZVOUS_POLL_S)

    def sweep(self) -> None:
        """Forget the runs this worker holds no task of (running, or a finished shard) any more,
        or never did GRACE_S after their client registered them: a client that went away
        (closed, killed) never says close_run, and a dropped result's shards are freed by Dask. A
        task of a forgotten run that comes later registers it again (``state``)."""
        keys = dask_adapter.task_keys(self.worker)
        now = time.monotonic()
        with self.lock:
            for run, state in list(self.runs.items()):
                if (state.tasked or now - state.opened > GRACE_S) and not any(run in key for key in keys):
                    del self.runs[run]

    async def teardown(self, worker: Any) -> None:
        self.sweeper.stop()
        with self.lock:
            for state in self.runs.values():
                state.aborted = state.aborted or "the worker is closing"
        if dask_adapter.closing(worker):  # not when the plugin is only replaced
            await self.settle_heartbeat()
