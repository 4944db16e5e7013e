"""The live progress line of a run on the terminal (stderr, via rich).

Each shard sends small events (``spmd.progress.iteration_events``: rank, stratum, iteration,
delta size, tuples found so far; workers as Dask events, a run in process directly); this folds the latest
event of every shard into one line: stratum, iteration, the current delta summed over shards,
and tuples found per second. The client adds ``note`` events (a lost worker, the recovery
under way, the outputs being written), shown at the front of the line.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich only where the line is shown
    from rich.console import Console
    from rich.text import Text


@dataclass
class ProgressState:
    """The latest event of each worker; ``line`` summarises them."""

    strata: int
    label: str = ""  # where the run goes (mode and why), shown first
    started: float = field(default_factory=time.monotonic)
    latest: dict[int, dict[str, Any]] = field(default_factory=dict)
    note: str = ""  # what the client said last (a recovery), shown before the counts

    def update(self, event: dict[str, Any]) -> None:
        if "note" in event:  # a phase (writing), or a new attempt: then the workers' counts start over
            self.note = event["note"]
            if not event.get("keep"):
                self.latest = {}
            return
        self.latest[int(event["rank"])] = event

    def line(self) -> str:
        parts = [self.label, self.note, self.counts(), f"{time.monotonic() - self.started:.1f} s"]
        return "  ".join(p for p in parts if p)

    def counts(self) -> str:
        if not self.latest:
            return "loading inputs"
        stratum = max(e["stratum"] for e in self.latest.values())
        current = [e for e in self.latest.values() if e["stratum"] == stratum]
        iteration = max(e["iteration"] for e in current)
        delta = sum(e["delta"] for e in current)
        found = sum(e["found"] for e in self.latest.values())
        rate = found / max(time.monotonic() - self.started, 1e-9)
        return (
            f"stratum {stratum + 1}/{self.strata}  iteration {iteration}  delta {delta:,}  {found:,} tuples  {rate:,.0f} tuples/s"
        )


class ProgressDisplay:
    """A context manager; ``handler`` is what ``Program.run(progress=...)`` calls per event.
    The line is rendered at every refresh (8 a second), so its clock runs through long
    iterations and phases that send no event."""

    def __init__(self, strata: int, dashboard: str | None = None, label: str = "", console: Console | None = None):
        from rich.console import Console
        from rich.live import Live

        self.state = ProgressState(strata, label)
        self.dashboard = dashboard
        self.console = console or Console(stderr=True)
        self.lock = threading.Lock()
        # stdout is the run's (-D - prints the relations there): the line stays on stderr.
        self.live = Live(self, console=self.console, transient=True, refresh_per_second=8, redirect_stdout=False)

    def handler(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.state.update(event)

    def __rich__(self) -> Text:
        from rich.text import Text

        with self.lock:
            suffix = f"  dashboard {self.dashboard}" if self.dashboard else ""
            return Text(self.state.line() + suffix)

    def __enter__(self) -> ProgressDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)
