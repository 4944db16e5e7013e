"""One relation's head tuples within an iteration, held within a bound."""

from __future__ import annotations

from typing import Any

from dask_datalog.engine.backend import Backend
from dask_datalog.engine.execution.phases import PhaseClock
from dask_datalog.engine.storage import sets


class HeadRows:
    """Blocks of packed head rows wait uncombined until they pass ``chunk_rows`` rows; then
    everything held is compacted into one sorted, duplicate-free block. So besides the distinct
    tuples an iteration holds about ``chunk_rows`` rows, whether this shard owns them (kept:
    new against full already) or sends them on (raw, from the join). ``peak``: the most raw
    rows it held at once."""

    def __init__(self, width: int, chunk_rows: int, backend: Backend, clock: PhaseClock):
        self.width, self.chunk_rows, self.backend, self.xp, self.clock = width, chunk_rows, backend, backend.xp, clock
        self.compacted: list[Any] = []  # at most one sorted, unique block
        self.pending: list[tuple[Any, bool]] = []  # (rows, sorted and unique)
        self.pending_rows = 0
        self.raw_rows = 0
        self.peak = 0

    def add(self, rows: Any, unique: bool) -> None:
        if rows.shape[0] == 0:
            return
        self.pending.append((rows, unique))
        self.pending_rows += int(rows.shape[0])
        if not unique:
            self.raw_rows += int(rows.shape[0])
            self.peak = max(self.peak, self.raw_rows)
        if self.pending_rows > self.chunk_rows:
            self.compacted = [self.rows()]
            self.pending, self.pending_rows, self.raw_rows = [], 0, 0

    def rows(self) -> Any:
        """Everything held, sorted and unique."""
        blocks = self.compacted + [rows for rows, _ in self.pending]
        if not blocks:
            return self.xp.zeros((0, self.width), self.xp.uint64)
        if len(blocks) == 1 and (self.compacted or self.pending[0][1]):
            return blocks[0]
        with self.clock.phase("dedup"):
            if all(unique for _, unique in self.pending):  # the compacted block is sorted and unique too
                return sets.union_sorted(blocks, self.backend)
            return sets.sort_unique(self.xp.concatenate(blocks), self.backend)

    def __len__(self) -> int:
        return sum(int(b.shape[0]) for b in self.compacted) + self.pending_rows
