"""Preloaded into the worker processes of an embedded cluster (``connect.start_cluster``), restarted
ones too, and called by the command for its own process: what keeps the command's stderr to the
program's own lines.

- Ctrl-C on a terminal interrupts the whole process group: the workers would die mid-run with a
  traceback each while the command is already stopping the run and closing the cluster, which
  ends them in order. So workers ignore SIGINT and leave Ctrl-C to the process that started them.
- Dask's loggers: worker processes inherit the command's stderr, and the embedded scheduler and
  nannies run in the command's process. Their lines (a heartbeat that failed during a loss, a
  restarted worker's banner, a broadcast to a worker that just died) are Dask's account of what
  the run reports itself in one line. ``silence_logs`` lowers a handler only between a worker's
  start and its close, and the DASK_LOGGING__* environment reaches a worker process after
  distributed configured its logging at import; raising the loggers' own levels for the life of
  the process is what holds (measured: every line gone, where each of the others let some
  through).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

QUIET_LOGGERS = ("distributed", "distributed.client", "distributed.gc", "tornado", "tornado.application", "asyncio")


def quiet_logs() -> None:
    """Dask's and tornado's loggers say nothing, for the life of this process."""
    import distributed  # noqa: F401  # its import configures these loggers: it must come first

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def dask_setup(worker: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_logs()
