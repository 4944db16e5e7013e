"""Progress events of a shard, the same in process and on a worker: small dicts (counts,
never tuples) that the command's progress line folds together (cluster/cli/progress.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dask_datalog.engine.execution.fixpoint import OnIteration


def iteration_events(rank: int, send: Callable[[dict[str, Any]], None], every_s: float = 0.0) -> OnIteration:
    """An ``on_iteration`` sending shard ``rank``'s progress events (counts, never tuples), at
    most every ``every_s`` seconds apart from each stratum's first iteration."""
    last = [0.0]
    found = [0]

    def report(stratum: int, iteration: int, delta: dict[str, int]) -> None:
        found[0] += sum(delta.values())
        now = time.monotonic()
        if now - last[0] < every_s and iteration:
            return
        last[0] = now
        send({"rank": rank, "stratum": stratum, "iteration": iteration, "delta": sum(delta.values()), "found": found[0]})

    return report
