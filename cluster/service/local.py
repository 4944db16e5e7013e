"""Small jobs in the service's own process, on its warm engine, instead of on the cluster.

A job of a few kilobytes of facts evaluates in milliseconds; on the cluster it pays the
scheduler's round trips to start the run on every worker, gather its statistics and have the
workers write the outputs (about 100 ms on 2 cores). In this process it runs as the one-shot
``dask-datalog run`` runs by default (``Program.run`` without a client, then ``Result.write``),
so its outputs are the CLI's. Which jobs: those whose facts (uploaded or in ``fact_dir``) total
at most ``LOCAL_FACTS_BYTES`` and whose options mean the same in one process: no checkpoints (a
resumed run must find a checkpoint of its own shape) and no memory limit (a per-worker budget).
Their size does not bound their time, so an in-process run gets ``LOCAL_BUDGET_S`` seconds of
evaluation; a run still going then is stopped and the job starts again on the cluster, losing
that much. One runs at a time: this process's CPU serves the HTTP requests too."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOCAL_FACTS_BYTES = 1 << 20
LOCAL_BUDGET_S = 0.5


def local_sized(arguments: dict[str, Any]) -> bool:
    """Whether a job with these arguments may run in the service's process."""
    if arguments.get("checkpoint") or arguments.get("memory_limit") is not None:
        return False
    total = 0
    try:
        with os.scandir(arguments["fact_dir"]) as entries:
            for entry in entries:
                total += entry.stat().st_size if entry.is_file() else 0
                if total > LOCAL_FACTS_BYTES:
                    return False
    except OSError:  # an unreadable fact folder: the cluster's run reports it as the CLI would
        return False
    return True


class LocalSlot:
    """The one in-process run at a time; a job that finds it taken for longer than one budget
    goes to the cluster rather than queue behind it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[bool]:
        got = self.lock.acquire(timeout=LOCAL_BUDGET_S)
        try:
            yield got
        finally:
            if got:
                self.lock.release()
