"""Which jobs run: at most ``max_jobs`` at once, each on a thread of its own (a job's run waits
on the cluster, not on this process's CPU), the rest in a FIFO queue; ``stop`` ends a queued job
at once and a running one through its run's stop request."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from dask_datalog.cluster.service.store import JobRecord, JobStore, State


class Stop(threading.Event):
    """A job's stop request, and why it was made (the record's error once it STOPPED)."""

    reason = "stopped on request"

    def request(self, reason: str) -> None:
        self.reason = reason
        self.set()


Runner = Callable[[JobRecord, Stop], None]  # runs a job to its final state


class JobQueue:
    def __init__(self, store: JobStore, runner: Runner, max_jobs: int):
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.store, self.runner, self.max_jobs = store, runner, max_jobs
        self.lock = threading.Lock()
        self.waiting: deque[str] = deque()
        self.running: dict[str, tuple[threading.Thread, Stop]] = {}
        self.closed = False

    def submit(self, job: str) -> None:
        """Queue ``job`` (its record is in the store, PENDING) and start what may start."""
        with self.lock:
            self.waiting.append(job)
        self._dispatch()

    def stop(self, job: str) -> bool:
        """Stop ``job``: a queued one is STOPPED here, a running one asked to stop (its runner
        records the end). False when it is neither (already final)."""
        with self.lock:
            if job in self.waiting:
                self.waiting.remove(job)
                self.store.update(job, state=State.STOPPED, ended=time.time(), error="stopped on request before it started")
                self.store.log(job, "STOPPED on request before it started")
                return True
            if job in self.running:
                self.running[job][1].request("stopped on request")
                return True
        return False

    def _dispatch(self) -> None:
        with self.lock:
            while not self.closed and self.waiting and len(self.running) < self.max_jobs:
                job = self.waiting.popleft()
                record = self.store.get(job)
                assert record is not None and record.state is State.PENDING, (job, record)
                stop = Stop()
                thread = threading.Thread(target=self._run, args=(record, stop), name=f"job-{job}", daemon=True)
                self.running[job] = (thread, stop)
                thread.start()

    def _run(self, record: JobRecord, stop: Stop) -> None:
        try:
            self.runner(record, stop)
        finally:
            with self.lock:
                del self.running[record.id]
            self._dispatch()

    def close(self, timeout: float = 10.0) -> None:
        """Start nothing more and stop the running jobs (STOPPED, the shutdown said), waiting
        ``timeout`` seconds for them; queued ones stay PENDING in the store (the next start
        queues them again)."""
        with self.lock:
            self.closed = True
            threads = list(self.running.values())
        for _, stop in threads:
            stop.request("stopped: the service shut down")
        deadline = time.monotonic() + timeout
        for thread, _ in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
