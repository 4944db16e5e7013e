"""Preloaded into the worker processes of an embedded cluster (``runtime.start_cluster``).

Ctrl-C on a terminal interrupts the whole process group: the workers would die mid-job with a
traceback each while the CLI is already stopping the job and closing the cluster, which ends
them in order. So they ignore SIGINT and leave Ctrl-C to the process that started them."""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
