"""A job's figures for its page and for /metrics, kept in the job's folder beside its uploads:
the iterations the run reported while it ran (``progress.jsonl``, a line per iteration
reached), then, once it SUCCEEDED, its statistics (``figures.json``: every iteration's delta,
each worker's phase times and bytes exchanged). Files rather than columns of the store: its
schema stays as it is, and only the page and the metrics read them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dask_datalog.engine.execution.phases import PHASES

PROGRESS, FINAL = "progress.jsonl", "figures.json"


def add_point(folder: Path, stratum: int, iteration: int, delta: int, found: int) -> None:
    """One iteration reached while the run runs (the workers' events, summed)."""
    with open(folder / PROGRESS, "a") as f:
        f.write(json.dumps({"stratum": stratum, "iteration": iteration, "delta": delta, "found": found}) + "\n")


def write_final(folder: Path, stats: dict[str, Any]) -> None:
    """The figures of a run's ``stats`` (``Result.stats``): written whole, then renamed, so a
    reader sees the old file or the new one."""
    iterations = [
        {"stratum": s, "iteration": i, "delta": sum(it["delta"].values()), "time_s": it["time_s"]}
        for s, stratum in enumerate(stats["strata"])
        for i, it in enumerate(stratum["iterations"])
    ]
    workers = [
        {
            "rank": rank,
            "total_s": shard["total_s"],
            "load_s": shard["load_s"],
            "phases": {p: round(sum(it.get(p, 0.0) for st in shard["strata"] for it in st["iterations"]), 6) for p in PHASES},
            "exchange": shard["exchange"],
        }
        for rank, shard in enumerate(stats["per_worker"])
    ]
    figures = {
        "complete": True,
        "iterations": iterations,
        "workers": workers,
        "bytes_exchanged": stats["bytes_exchanged"],
        "total_s": stats["total_s"],
    }
    partial = folder / f".{FINAL}.partial"
    partial.write_text(json.dumps(figures))
    os.replace(partial, folder / FINAL)


def read(folder: Path) -> dict[str, Any]:
    """The final figures when the run wrote them, else the points reached so far."""
    final = folder / FINAL
    if final.exists():
        return dict(json.loads(final.read_text()))
    points = []
    if (folder / PROGRESS).exists():
        # The last line may be half written while the run appends it: only whole lines count.
        text = (folder / PROGRESS).read_text()
        points = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return {"complete": False, "iterations": points, "workers": [], "bytes_exchanged": None, "total_s": None}


def bytes_exchanged(folder: Path) -> int | None:
    """The bytes a SUCCEEDED run's workers sent each other, or None before its figures exist."""
    final = folder / FINAL
    return int(json.loads(final.read_text())["bytes_exchanged"]) if final.exists() else None
