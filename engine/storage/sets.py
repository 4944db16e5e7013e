"""Sorted row sets: the operations semi-naive evaluation spends its time in (sort + unique of
new tuples, set difference against full, merge into full).

A row set is an (n, w) uint64 array, each word packing two uint32 attributes, sorted
lexicographically and free of duplicates. Every operation has an array-API formulation that
runs on NumPy and CuPy (``*_xp``, given the namespace ``xp``); ``difference`` and ``merge``
also have a compiled CPU kernel, used when the ``Backend`` they are given hands one out. The property
tests hold both to Python sets.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from dask_datalog.engine.backend import Backend

# Below this many rows lexsort wins: the key's set-up (a dozen whole-array calls) costs ~25 us,
# lexsort 6 us at 10 rows, 100 us at 1,000 (three or four attributes, NumPy on the CPU).
NARROW_MIN_ROWS = 512


def sort_unique(rows: Any, backend: Backend) -> Any:
    """Sorted, duplicate-free copy of ``rows``."""
    xp = backend.xp
    if rows.shape[0] <= 1:
        return rows
    if rows.shape[1] == 1:
        return _sorted_distinct(rows[:, 0], xp, backend.kernels).reshape(-1, 1)
    narrow = _sort_unique_narrow(rows, backend) if rows.shape[0] >= NARROW_MIN_ROWS else None
    if narrow is not None:
        return narrow
    order = xp.lexsort(rows.T[::-1])
    rows = rows[order]
    keep = xp.empty(rows.shape[0], dtype=bool)
    keep[0] = True
    xp.any(rows[1:] != rows[:-1], axis=1, out=keep[1:])
    return rows[keep]


def _sort_unique_narrow(rows: Any, backend: Backend) -> Any | None:
    """``sort_unique`` of rows of several words whose attributes, each less its minimum, fit in
    64 bits together (three or four attributes of up to 16-21 bits: most programs' ids): one
    uint64 key each, concatenated most significant first so that its order is the rows'
    order, sorted as one word and unpacked. A one-word sort runs 4-6x faster than lexsort
    over two words (4 M rows of three attributes under 2^18: 2.2 s against 9.7 s on a loaded
    machine). Rows are packed uint64 words or uint32 columns (a binding table: an aggregate's
    distinct bindings). None when they do not fit, or are neither. The CPU kernels make the
    bounds, the keys and the rows in a pass each, where the array formulation makes a few
    passes per attribute (crdt 10x: 3.5 s of its 9.7 on a loaded machine)."""
    xp = backend.xp
    n, w = rows.shape
    if rows.dtype == xp.uint64:
        halves = rows.view(xp.uint32).reshape(n, 2 * w)  # word k: high half at 2k + 1, low at 2k (little-endian)
        columns = [c for k in range(w) for c in (2 * k + 1, 2 * k)]  # most significant first
    elif rows.dtype == xp.uint32:
        halves, columns = rows, list(range(w))
    else:
        return None
    kernels = backend.kernels
    out = _narrow_by_kernels(halves, columns, kernels) if kernels is not None else _narrow_by_arrays(halves, columns, xp)
    return None if out is None else out.view(rows.dtype)  # the uint32 halves back as the rows' words


def _narrow_by_kernels(halves: np.ndarray, columns: list[int], kernels: ModuleType) -> np.ndarray | None:
    """``_sort_unique_narrow`` over the (n, c) uint32 ``halves`` by the CPU kernels."""
    low, high = kernels.column_bounds(halves)
    layout = _key_layout(low, high, columns)
    if layout is None:
        return None
    lows, shifts, widths = (np.array(v) for v in layout)
    key = _sorted_distinct(kernels.pack_keys(halves, lows, shifts, widths), np, kernels, owned=True)
    out = np.empty((key.shape[0], halves.shape[1]), dtype=np.uint32)
    kernels.unpack_keys(key, lows, shifts, widths, out)
    return out


def _narrow_by_arrays(halves: Any, columns: list[int], xp: Any) -> Any | None:
    """``_sort_unique_narrow`` over the (n, c) uint32 ``halves`` by array-API calls (CuPy)."""
    layout = _key_layout(halves.min(axis=0), halves.max(axis=0), columns)
    if layout is None:
        return None
    lows, shifts, widths = layout
    key = xp.zeros(halves.shape[0], dtype=xp.uint64)
    for c in columns:
        if widths[c]:
            part = halves[:, c].astype(xp.uint64)
            part -= lows[c]
            part <<= shifts[c]
            key |= part
    key = _sorted_distinct(key, xp, owned=True)
    out = xp.empty((key.shape[0], halves.shape[1]), dtype=xp.uint32)
    for c in columns:
        if widths[c]:
            out[:, c] = ((key >> shifts[c]) & ((1 << widths[c]) - 1)) + lows[c]
        else:
            out[:, c] = lows[c]
    return out


def _key_layout(low: Any, high: Any, columns: list[int]) -> tuple[list[int], list[int], list[int]] | None:
    """Per column of the halves, given its least and greatest values: what the key subtracts
    from it, where it goes in the key and its width in bits (each the next most significant
    after the ones later in ``columns``); None when they need more than 64 bits."""
    lows = [int(v) for v in low]
    widths = [(int(hi) - lo).bit_length() for hi, lo in zip(high, lows)]
    if sum(widths) > 64:
        return None
    shifts = [0] * len(widths)
    shift = 0
    for c in reversed(columns):
        shifts[c] = shift
        shift += widths[c]
    return lows, shifts, widths


def _sorted_distinct(words: Any, xp: Any, kernels: ModuleType | None = None, owned: bool = False) -> Any:
    """The distinct values of a non-empty 1-d array of ``words``, sorted. ``owned``: the
    caller's own array, sorted where it lies. With ``kernels``, uint64 words are sorted on
    the kernels' threads and deduplicated where they lie, the buffer cut to what is kept."""
    if kernels is not None and words.dtype == np.uint64:
        return kernels.sort_distinct(words if owned else words.copy())
    if owned:
        words.sort()
    else:
        words = xp.sort(words)
    keep = xp.empty(words.shape[0], dtype=bool)
    keep[0] = True
    xp.not_equal(words[1:], words[:-1], out=keep[1:])
    return words[keep]


def is_sorted_unique(rows: Any, xp: Any) -> bool:
    """Whether (n, width) packed rows are in strictly increasing lexicographic order."""
    if rows.shape[0] < 2:
        return True
    later, earlier = rows[1:], rows[:-1]
    if rows.shape[1] == 1:  # one word (arity up to 2): no per-row search for the first difference
        return bool(xp.all(later[:, 0] > earlier[:, 0]))
    differs = later != earlier
    first = xp.argmax(differs, axis=1)
    at = xp.arange(first.shape[0])
    return bool(xp.all(differs.any(axis=1)) and xp.all(later[at, first] > earlier[at, first]))


def union_all(blocks: list[Any], width: int, backend: Backend) -> Any:
    """The sorted unique union of sorted unique (n, width) blocks, any of them empty: a lone
    non-empty block is returned as it is, no block gives an empty one."""
    xp = backend.xp
    blocks = [b for b in blocks if b.shape[0]]
    if not blocks:
        return xp.zeros((0, width), xp.uint64)
    return blocks[0] if len(blocks) == 1 else sort_unique(xp.concatenate(blocks), backend)


def difference(new: Any, full: Any, backend: Backend) -> Any:
    """Rows of ``new`` that are not in ``full`` (both sorted and unique)."""
    if new.shape[0] == 0 or full.shape[0] == 0:
        return new
    kernels = backend.kernels  # galloping: the work scales with new, not full
    if kernels is not None:
        return kernels.rows_not_in_runs(new, [full])
    return difference_xp(new, full, backend.xp)


def difference_all(new: Any, runs: list[Any], backend: Backend) -> Any:
    """Rows of ``new`` that are in none of ``runs`` (all sorted and unique): a relation's full
    kept as several runs, subtracted in one kernel call where there are kernels."""
    runs = [run for run in runs if run.shape[0]]
    if new.shape[0] == 0 or not runs:
        return new
    kernels = backend.kernels
    if kernels is not None:
        return kernels.rows_not_in_runs(new, runs)
    for run in runs:
        new = difference_xp(new, run, backend.xp)
    return new


def difference_xp(new: Any, full: Any, xp: Any) -> Any:
    if new.shape[0] == 0 or full.shape[0] == 0:
        return new
    if new.shape[1] == 1:
        a, b = new[:, 0], full[:, 0]
        pos = xp.searchsorted(b, a)
        xp.minimum(pos, b.shape[0] - 1, out=pos)
        return new[b[pos] != a]
    # Wide rows: sort both together, full before new among equal rows; a new row whose
    # predecessor is an equal full row is a duplicate.
    both = xp.concatenate([full, new])
    tag = xp.concatenate([xp.zeros(full.shape[0], xp.uint64), xp.ones(new.shape[0], xp.uint64)])
    order = xp.lexsort(xp.concatenate([tag[None, :], both.T[::-1]]))
    both, tag = both[order], tag[order]
    dup = xp.zeros(both.shape[0], dtype=bool)
    dup[1:] = xp.all(both[1:] == both[:-1], axis=1)
    return both[(tag == 1) & ~dup]


def merge(full: Any, new: Any, backend: Backend, owned: bool = False) -> Any:
    """Union of sorted ``full`` and sorted ``new`` (disjoint) without re-sorting full. With
    ``owned`` (the caller holds the only reference to ``full``, which owns its memory) the CPU
    kernel merges into ``full``'s buffer grown by realloc: a large run's pages are remapped,
    not copied, so taking in a delta costs the delta's rows, not a second copy of the run."""
    if new.shape[0] == 0:
        return full
    if full.shape[0] == 0:
        return new
    kernels = backend.kernels
    if kernels is not None:
        return kernels.merge_into(full, new) if owned else kernels.merge_sorted(full, new)
    return merge_xp(full, new, backend.xp)


def union_sorted(blocks: list[Any], backend: Backend) -> Any:
    """Union of sorted, duplicate-free row sets that may share rows (an iteration's new
    tuples). One-word rows are sorted in place in their concatenation, this call's own: the
    rows are held twice at the most, not three times (dyck at 10x combines 4 M rows so)."""
    if blocks[0].shape[1] != 1 or sum(b.shape[0] for b in blocks) <= 1:
        return sort_unique(backend.xp.concatenate(blocks), backend)
    words = backend.xp.concatenate([b[:, 0] for b in blocks])
    return _sorted_distinct(words, backend.xp, backend.kernels, owned=True).reshape(-1, 1)


def merge_all(runs: list[Any], backend: Backend) -> Any:
    """Union of sorted, pairwise disjoint row sets: one pass with the CPU kernel (room for the
    rows once more), else merged a pair at a time."""
    kernels = backend.kernels
    if kernels is not None and len(runs) > 1:
        while len(runs) > kernels.RUNS_MAX:  # more runs than one pass takes: in groups
            step = kernels.RUNS_MAX
            runs = [kernels.merge_many(runs[i : i + step]) for i in range(0, len(runs), step)]
        return kernels.merge_many(runs)
    merged = runs[0]
    for run in runs[1:]:
        merged = merge(merged, run, backend)
    return merged


def merge_xp(full: Any, new: Any, xp: Any) -> Any:
    if new.shape[0] == 0:
        return full
    if full.shape[0] == 0:
        return new
    if full.shape[1] == 1:
        # Each new row lands after the full rows smaller than it and the new rows before it.
        pos = xp.searchsorted(full[:, 0], new[:, 0]) + xp.arange(new.shape[0])
        out = xp.empty((full.shape[0] + new.shape[0], 1), dtype=full.dtype)
        is_new = xp.zeros(out.shape[0], dtype=bool)
        is_new[pos] = True
        out[pos] = new
        out[~is_new] = full
        return out
    both = xp.concatenate([full, new])
    return both[xp.lexsort(both.T[::-1])]
