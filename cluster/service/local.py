"""Small jobs in the service's own process, on its warm engine, instead of on the cluster.

A job of a few kilobytes of facts evaluates in milliseconds; on the cluster it pays the
scheduler's round trips to start the run on every worker, gather its statistics and have the
workers write the outputs (about 100 ms on 2 cores). In this process it runs as the one-shot
``dask-datalog run`` runs by default (``Program.run`` without a client, then ``Result.write``),
so its outputs are the CLI's. Which jobs: those whose facts (uploaded or in ``fact_dir``) total
at most ``serve --in-process-below`` (default 1 MiB; 0: none) and whose options mean the same
in one process: no checkpoints (a resumed run must find a checkpoint of its own shape) and no
memory limit (a per-worker budget). Their size does not bound their time, so an in-process run
gets ``LOCAL_BUDGET_S`` seconds; a run still going then is stopped and the job starts again on
the cluster, losing that much. One runs at a time (the others wait for it: a tiny job's turn comes in milliseconds,
the cluster's round trips cost a hundred): this process's CPU serves the HTTP requests too.
Only with the embedded cluster (``serve`` without ``--scheduler``): a service in front of a
cluster of its own keeps the jobs there."""

from __future__ import annotations

import os
from typing import Any

LOCAL_BUDGET_S = 0.5


def local_sized(arguments: dict[str, Any], below: int) -> bool:
    """Whether a job with these arguments may run in the service's process, its facts
    totalling at most ``below`` bytes."""
    if below <= 0 or arguments.get("checkpoint") or arguments.get("memory_limit") is not None:
        return False
    total = 0
    try:
        with os.scandir(arguments["fact_dir"]) as entries:
            for entry in entries:
                total += entry.stat().st_size if entry.is_file() else 0
                if total > below:
                    return False
    except OSError:  # an unreadable fact folder: the cluster's run reports it as the CLI would
        return False
    return True
