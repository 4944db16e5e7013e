"""Where an iteration's time goes: wall time per phase (join, dedup, set difference, merge into
full), exclusive and, on the GPU, ended by a device synchronisation so the figures are honest."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import TracebackType

from dask_datalog.engine.backend import Backend

PHASES = ("join", "dedup", "difference", "merge")


@dataclass
class PhaseClock:
    backend: Backend
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    _inner: list[float] = field(default_factory=list)

    def phase(self, name: str) -> _Phase:
        """Exclusive time: a phase nested in another (dedup inside the join pipeline) is
        charged to itself only."""
        return _Phase(self, name)

    def take(self) -> dict[str, float]:
        """The totals since the last call, and start again."""
        out, self.totals = self.totals, dict.fromkeys(PHASES, 0.0)
        return {k: round(v, 6) for k, v in out.items()}


class _Phase:
    """One timed stretch of a ``PhaseClock``: a plain context manager, as a phase is entered
    some ten times an iteration and a generator-based one costs several times more."""

    __slots__ = ("clock", "name", "t0")

    def __init__(self, clock: PhaseClock, name: str):
        self.clock, self.name = clock, name
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.clock._inner.append(0.0)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        clock = self.clock
        clock.backend.synchronize()
        elapsed = time.perf_counter() - self.t0
        nested = clock._inner.pop()
        clock.totals[self.name] += elapsed - nested
        if clock._inner:
            clock._inner[-1] += elapsed
