"""A bitmap mirror of full for relations whose values fit a small box (CPU only).

Deduplicating join output by sort costs O(N log N) over every produced tuple, most of which
already are in full on dense graphs (REACH on ego-Facebook produces ~40 tuples per new one).
When a relation of arity <= 2 has all its values in a box [lo0, lo0 + r0) x [lo1, lo1 + r1)
with r0 * r1 bits affordable, one bit per possible tuple answers "seen before?" in O(1), and
only the genuinely new tuples are sorted. Join output arrives grouped by the outer tuple, so
consecutive probes touch the same bitmap row: it stays cache-friendly even when the bitmap is
far larger than the cache. Tuples outside the box take the sorting path, so the box is a
performance choice, never a correctness one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from dask_datalog.engine.backend import Backend
from dask_datalog.engine.storage import sets

DEFAULT_MAX_BITS = 1 << 32  # 512 MiB of bitmap per relation at most
# Build the bitmap once the tuples deduplicated so far number box_bits / PAYBACK: sorting a
# tuple costs ~30 ns, allocating and first touching a bit ~1/16 ns, so by then the bitmap
# has paid for itself. Sparse boxes (SG on wing: 3.8 G bits for 0.65 M tuples) never do.
PAYBACK = 256
# ... and once full holds box_bits / HELD_BITS tuples: the bitmap then takes no more memory than
# full's own packed rows (64 bits a tuple), so it at most doubles the relation's footprint. A box
# far larger than its relation (SG on delaunay_n16: 512 MiB of bitmap for 26 M tuples, 208 MB)
# stays on the sorting path: there 6.5 s instead of 5.2 s, at half the peak memory.
HELD_BITS = 64

Box = tuple[int, int, int, int]  # lo0, hi0, lo1, hi1 over the encoded values


def box_of(rows: np.ndarray, arity: int) -> Box | None:
    """Bounds of 1-D packed rows (arity 1 uses the high half only)."""
    if rows.shape[0] == 0:
        return None
    high = rows >> np.uint64(32)
    if arity == 2:
        low = rows & np.uint64(0xFFFFFFFF)
        return int(high.min()), int(high.max()), int(low.min()), int(low.max())
    return int(high.min()), int(high.max()), 0, 0


def union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def bits_of(box: Box) -> int:
    return (box[1] - box[0] + 1) * (box[3] - box[2] + 1)


@dataclass
class DenseSet:
    """The bitmap over the box; bit (a - lo0) * r1 + (b - lo1) is tuple (a, b) (encoded).
    Built on a backend whose kernels are in use (``RelationStore`` asks first)."""

    lo0: int
    lo1: int
    r0: int
    r1: int
    bits: np.ndarray
    backend: Backend

    @classmethod
    def over(cls, box: Box, backend: Backend) -> DenseSet:
        lo0, hi0, lo1, hi1 = box
        r0, r1 = hi0 - lo0 + 1, hi1 - lo1 + 1
        return cls(lo0, lo1, r0, r1, np.zeros((r0 * r1 + 7) // 8, dtype=np.uint8), backend)

    def _args(self) -> tuple[int, int, int, int]:
        return self.lo0, self.lo1, self.r0, self.r1

    @property
    def _kernels(self) -> ModuleType:
        kernels = self.backend.kernels
        if kernels is None:
            raise AssertionError(f"a bitmap on backend {self.backend} that hands out no kernels")
        return kernels

    def mark(self, rows: np.ndarray) -> None:
        self._kernels.dense_mark(rows[:, 0], self.bits, *self._args())

    def novel(self, rows: np.ndarray, subtract_outside: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Sorted unique rows not seen before; out-of-box rows are deduplicated by sorting and
        ``subtract_outside`` (the sorted-run difference against full)."""
        fresh, outside = self._kernels.dense_novel(rows[:, 0], self.bits, *self._args())
        fresh = np.sort(fresh).reshape(-1, 1)
        if outside.shape[0] == 0:
            return fresh
        rest = subtract_outside(sets.sort_unique(outside.reshape(-1, 1), self.backend))
        return sets.merge(fresh, rest, self.backend)
