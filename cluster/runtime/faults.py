"""Fault injection: a worker process that kills itself with SIGKILL (no clean-up, as the OOM
killer or a preempted node would) at a named point of a job, once. The reliability tests use
it to hit a phase exactly; users can use it to see their cluster recover. Off unless the
workers' environment sets::

    DASK_DATALOG_FAULT=<point>:<rank>:<marker file>

``point``: ``load`` (a job's shards start loading), ``iteration-<n>`` (after iteration n of any
stratum) or ``write`` (the outputs start being written); ``rank``: which shard's worker dies.
The first worker to get there creates the marker file and dies; once it exists nothing happens,
so the retried job runs through. The marker ``always`` kills at every pass (retries run out).
"""

from __future__ import annotations

import os
import signal

ENV = "DASK_DATALOG_FAULT"


def point(name: str, rank: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, who, marker = spec.split(":", 2)
    if where != name or int(who) != rank:
        return
    if marker == "always":
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
