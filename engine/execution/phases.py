"""Where an iteration's time goes: wall time per phase (join, dedup, set difference, merge into
full), exclusive and, on the GPU, ended by a device synchronisation so the figures are honest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dask_datalog.engine.backend import Backend

PHASES = ("join", "dedup", "difference", "merge")


@dataclass
class PhaseClock:
    backend: Backend
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    _inner: list[float] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Exclusive time: a phase nested in another (dedup inside the join pipeline) is
        charged to itself only."""
        t0 = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            self.backend.synchronize()
            elapsed = time.perf_counter() - t0
            nested = self._inner.pop()
            self.totals[name] += elapsed - nested
            if self._inner:
                self._inner[-1] += elapsed

    def take(self) -> dict[str, float]:
        """The totals since the last call, and start again."""
        out, self.totals = self.totals, dict.fromkeys(PHASES, 0.0)
        return {k: round(v, 6) for k, v in out.items()}
