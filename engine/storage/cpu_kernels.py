"""The CPU backend's compiled kernels (``kernels.c``), behind NumPy signatures: this module
allocates every output, makes inputs contiguous and calls the C function through ctypes
(which releases the GIL), or, for the two a join step calls (``hash_ranges``,
``gather_join``), through the extension module's own functions, which release it too and cost
about a microsecond where a ctypes call of their many arguments costs some three. Each kernel
on rows has an ``xp`` twin in ``sets.py``/``hisa.py`` that CuPy runs and the property tests
compare against; the text kernels (fact fields, the symbol table's hash index and sort, output)
run on the host only, tested against Python's dict and sort. Rows are (n, w) uint64 arrays
compared lexicographically, or 1-D uint64 for one word.

Compiled ahead of time rather than JIT-compiled (numba, until 2026-12): the library costs
about 1 MB of memory and nothing at start-up, where numba's runtime cost 0.2-0.7 s and
135 MB per process (docs/benchmarks.md), more than Soufflé's whole footprint on mid-size
graphs. Importing this module raises ImportError when the extension was not built."""

from __future__ import annotations

import ctypes
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dask_datalog.engine.storage import _kernels  # type: ignore[attr-defined]  # built from kernels.c by setup

_lib = ctypes.CDLL(_kernels.__file__)
_P = ctypes.c_void_p
_I = ctypes.c_int64
_U = ctypes.c_uint64
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "rows_not_in_runs": (_I, [_P, _I, _P, _P, _I, _I, _P]),
    "distinct_sorted": (_I, [_P, _I]),
    "partition_below": (_I, [_P, _I, _U]),
    "kernel_threads": (_I, []),
    "merge_sorted": (None, [_P, _I, _P, _I, _I, _P]),
    "merge_into": (None, [_P, _I, _P, _I, _I]),
    "unsplit_mapping": (None, [_P, _I]),
    "after_fork": (ctypes.c_int, [ctypes.c_int]),
    "distinct_sketch": (None, [_P, _I, _I, _I, _I, _P]),
    "key_directory": (_I, [_P, _I, _I, ctypes.c_int, _P, _P, _P, _P]),
    "merge_many": (None, [_P, _P, _I, _I, _P]),
    "expand_runs": (None, [_P, _P, _P, _I, _P, _P]),
    "hash_build": (None, [_P, _P, _P, _I, _P, _I]),
    "offsets_build": (None, [_P, _P, _I, _U, _I, _I, _P]),
    "dense_mark": (None, [_P, _I, _P, _U, _U, _U, _U]),
    "dense_novel": (None, [_P, _I, _P, _U, _U, _U, _U, _P, _P, _P]),
    "format_rows": (_I, [_P, _I, _I, _P, ctypes.c_uint8, _P, _P, _P]),
    "parse_fields": (_I, [_P, _I, _P, _I, _I, _P, _P, _P, _I, _I, _P, _P, _I, _I]),
    "gather_spans": (None, [_P, _P, _I, _I, _P, _P]),
    "index_texts": (None, [_P, _P, _I, _I, _P, _I, _P]),
    "find_texts": (None, [_P, _P, _P, _I, _P, _P, _I, _P]),
    "sort_texts": (None, [_P, _P, _I, _P, _P, _P]),
    "narrow_runs": (_I, [_P, _I, _I, _P, _I, _P, _P]),
    "column_bounds": (None, [_P, _I, _I, _P, _P]),
    "pack_keys": (None, [_P, _I, _I, _P, _P, _P, _P]),
    "unpack_keys": (None, [_P, _I, _I, _P, _P, _P, _P]),
}
for _name, (_restype, _argtypes) in _SIGNATURES.items():
    getattr(_lib, _name).restype = _restype
    getattr(_lib, _name).argtypes = _argtypes
THREADS = int(_lib.kernel_threads())  # OMP_NUM_THREADS, read once as OpenMP does


def _serial_in_child() -> None:
    """A forked child runs every kernel on its own thread where the parent's threads ran one:
    OpenMP's thread pool (libgomp's) and the split sort's helper thread stay with the parent,
    and a child that waited for either would wait forever (seen: its first parallel kernel
    hung). A parent that never ran them (the resident process: cluster/cli/resident.py)
    leaves its children every thread."""
    global THREADS
    if _lib.after_fork(int(_helper is not None)):
        THREADS = 1


os.register_at_fork(after_in_child=_serial_in_child)
# Built on x86-64 and AArch64 only: the calling conventions it relies on (kernels.c).
FUNCTOR_CALLS = hasattr(_lib, "call_functor")
if FUNCTOR_CALLS:
    _lib.call_functor.restype = _I
    _lib.call_functor.argtypes = [_P, _I, _I, _P, _P, _P, _P, _P]
    _lib.free_functor_text.restype = None
    _lib.free_functor_text.argtypes = [_P]
# What call_functor takes: integer-class and float arguments (register counts), result kinds.
FUNCTOR_INTS, FUNCTOR_FLOATS = 6, 8
FUNCTOR_RESULTS = {"number": 0, "unsigned": 0, "float": 1, "symbol": 2}

# Formatted text per value at most: sign, 10 digits, delimiter or line break.
FORMAT_BYTES_PER_VALUE = 12


# The address of a contiguous array's data (the caller keeps the array referenced until the
# call returns): the extension's buffer lookup, about ten times cheaper than ``a.ctypes.data``.
_ptr = _kernels.address


def _c(a: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def _words(rows: np.ndarray) -> int:
    return 1 if rows.ndim == 1 else rows.shape[1]


# Runs merge_many and rows_not_in_runs take at once (kernels.c's RUNS_MAX: a head or a cursor
# per run on the stack), and the parts a kernel splits its rows into at most (PARTS_MAX).
RUNS_MAX = 64
PARTS_MAX = 64


def rows_not_in_runs(new: np.ndarray, runs: list[np.ndarray]) -> np.ndarray:
    """The rows of ``new`` in none of ``runs`` (all sorted, like ``new``; all 1-D or all
    (n, w)): a relation kept as several runs subtracted in one call per RUNS_MAX runs, the
    rows looked up on every thread and written once (no mask, no second pass)."""
    for start in range(0, len(runs), RUNS_MAX):
        group = [_c(r, np.uint64) for r in runs[start : start + RUNS_MAX]]
        new = _c(new, np.uint64)
        out = np.empty_like(new)
        pointers = np.array([_ptr(r) for r in group], dtype=np.uint64)
        lengths = np.array([r.shape[0] for r in group], dtype=np.int64)
        kept = _lib.rows_not_in_runs(_ptr(new), new.shape[0], _ptr(pointers), _ptr(lengths), len(group), _words(new), _ptr(out))
        new = _shrunk(out, kept)
    return new


def distinct_sorted(words: np.ndarray) -> np.ndarray:
    """The distinct values of sorted 1-D uint64 ``words``, an array this call may consume
    (it owns its memory): kept at its front and the rest of its buffer handed back."""
    _check_owned(words, "distinct_sorted")
    return _shrunk(words, _lib.distinct_sorted(_ptr(words), words.shape[0]))


# Words from which sort_distinct sorts two halves side by side: below, the split and a
# thread's hand-off cost as much as they save (break-even about 256 K words; 16 M random
# words: 218 -> 137 ms).
PARALLEL_SORT_MIN = 1 << 18
_SAMPLE = 255  # words whose median splits a sort in two halves
# The second thread of a split sort, made by the first one (whether it exists is what a fork
# must know: _serial_in_child).
_helper: ThreadPoolExecutor | None = None


def _sort_helper() -> ThreadPoolExecutor:
    global _helper
    if _helper is None:
        _helper = ThreadPoolExecutor(1, thread_name_prefix="dask-datalog-sort")
    return _helper


def sort_distinct(words: np.ndarray) -> np.ndarray:
    """The distinct values of 1-D uint64 ``words`` (which this call consumes: it owns its
    memory), sorted. With two threads or more (``kernel_threads``: a Dask worker's share) and
    enough words, split at a sampled median in place and the halves sorted and deduplicated
    side by side (NumPy's sort and the kernels release the GIL): the sort of a join's output is
    the largest cost of many programs (cspa 3x: 2.5 s of 6.8)."""
    _check_owned(words, "sort_distinct")
    n = words.shape[0]
    if n < PARALLEL_SORT_MIN or THREADS < 2:
        words.sort()
        return distinct_sorted(words)
    sample = np.sort(words[:: max(1, n // _SAMPLE)])
    pivot = int(sample[sample.shape[0] // 2])
    split = _lib.partition_below(_ptr(words), n, pivot)
    if split in (0, n):  # most words equal to the pivot: nothing to split
        words.sort()
        return distinct_sorted(words)
    low, high = words[:split], words[split:]  # every word of low is below every word of high

    def sorted_distinct(part: np.ndarray) -> int:
        part.sort()
        return int(_lib.distinct_sorted(_ptr(part), part.shape[0]))

    later = _sort_helper().submit(sorted_distinct, high)
    kept_low = sorted_distinct(low)
    kept_high = later.result()
    ctypes.memmove(_ptr(words) + 8 * kept_low, _ptr(high), 8 * kept_high)  # they may overlap: no temporary
    return _shrunk(words, kept_low + kept_high)


def _check_owned(words: np.ndarray, name: str) -> None:
    if words.dtype != np.uint64 or words.ndim != 1 or not words.flags.c_contiguous or not words.flags.owndata:
        raise ValueError(f"{name}: {words.dtype} words {words.shape} it does not own")


def merge_sorted(full: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Union of two sorted, disjoint row sets in one linear pass (no re-sort of full)."""
    full, new = _c(full, np.uint64), _c(new, np.uint64)
    out = np.empty((full.shape[0] + new.shape[0],) + full.shape[1:], dtype=np.uint64)
    _lib.merge_sorted(_ptr(full), full.shape[0], _ptr(new), new.shape[0], _words(full), _ptr(out))
    return out


# The size from which NumPy advises an array's pages into huge pages (numpy/_core/src/multiarray/
# alloc.c), splitting the block's mapping that ``unsplit_mapping`` joins again.
HUGEPAGE_ADVISED_BYTES = 4 << 20


# kernels.c's HLL_BITS: 2^14 one-byte registers.
SKETCH_BITS = 14


def distinct_estimate(runs: list[np.ndarray], halves: tuple[int, ...]) -> int:
    """About how many distinct values the packed rows of ``runs`` hold together in one or two
    columns (``halves``: their uint32 halves, ``hisa.half_of``): a HyperLogLog sketch (about 1%
    off; near exact up to some thousands by its linear counting), one pass over the rows with
    16 KiB of state where an exact count sorts a copy of the column."""
    if not 1 <= len(halves) <= 2:
        raise ValueError(f"distinct_estimate counts one or two columns, not {halves}")
    registers = np.zeros(1 << SKETCH_BITS, dtype=np.uint8)
    for rows in runs:
        rows = _c(rows, np.uint64)
        if rows.ndim == 1:
            rows = rows[:, None]
        second = halves[1] if len(halves) == 2 else -1
        _lib.distinct_sketch(_ptr(rows), rows.shape[0], 2 * rows.shape[1], halves[0], second, _ptr(registers))
    m = registers.size
    empty = int(np.count_nonzero(registers == 0))
    if empty == m:
        return 0
    estimate = 0.7213 / (1 + 1.079 / m) * m * m / float(np.sum(np.ldexp(1.0, -registers.astype(np.int32))))
    if estimate <= 2.5 * m and empty:  # few values: linear counting over the empty registers is exact-ish
        estimate = m * math.log(m / empty)
    return max(1, round(estimate))


def _resized(rows: np.ndarray, n: int) -> np.ndarray:
    """``rows`` (owning its memory, referred to by nothing else) grown or cut to ``n`` rows
    where it lies (``ndarray.resize``: a realloc, which remaps a large block's pages once its
    mapping is one, and gives a cut block's tail back)."""
    if rows.nbytes >= HUGEPAGE_ADVISED_BYTES:
        _lib.unsplit_mapping(_ptr(rows), rows.nbytes)
    rows.resize((n,) + rows.shape[1:], refcheck=False)
    return rows


def _shrunk(rows: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of a fresh ``rows`` this module made: the buffer cut to them when
    that frees much of it (a view would hold the whole buffer as long as the rows live)."""
    return _resized(rows, n) if n < rows.shape[0] // 2 else rows[:n]


def merge_into(full: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``merge_sorted`` into ``full``'s own buffer, grown in place (``ndarray.resize``: a
    realloc, which remaps a large block's pages once its mapping is one); the caller
    guarantees nothing else refers to ``full`` (it is consumed)."""
    n = full.shape[0]
    new = _c(new, np.uint64)
    if full.dtype != np.uint64 or not full.flags.c_contiguous or new.shape[1:] != full.shape[1:]:
        raise ValueError(f"merge_into: {full.dtype} rows {full.shape} (contiguous: {full.flags.c_contiguous}) and {new.shape}")
    full = _resized(full, n + new.shape[0])
    _lib.merge_into(_ptr(full), n, _ptr(new), new.shape[0], _words(full))
    return full


def merge_many(runs: list[np.ndarray]) -> np.ndarray:
    """Union of sorted, pairwise disjoint row sets (all 1-D or all (n, w)) in one pass."""
    if not 0 < len(runs) <= RUNS_MAX:
        raise ValueError(f"merge_many takes 1 to {RUNS_MAX} runs, not {len(runs)}")
    runs = [_c(r, np.uint64) for r in runs]
    out = np.empty((sum(r.shape[0] for r in runs),) + runs[0].shape[1:], dtype=np.uint64)
    pointers = (ctypes.c_void_p * len(runs))(*[_ptr(r) for r in runs])
    lengths = np.array([r.shape[0] for r in runs], dtype=np.int64)
    _lib.merge_many(ctypes.addressof(pointers), _ptr(lengths), len(runs), _words(runs[0]), _ptr(out))
    return out


def expand_runs(starts: np.ndarray, counts: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Materialise a join in one pass: outer row i paired with rows starts[i] .. + counts[i]."""
    starts, counts = _c(starts, np.int64), _c(counts, np.int64)
    offsets = np.empty(starts.shape[0], dtype=np.int64)  # scratch: the kernel scans counts into it
    outer = np.empty(total, dtype=np.int64)
    inner = np.empty(total, dtype=np.int64)
    _lib.expand_runs(_ptr(starts), _ptr(counts), _ptr(offsets), starts.shape[0], _ptr(outer), _ptr(inner))
    return outer, inner


def gather_join(
    outer: np.ndarray, starts: np.ndarray, counts: np.ndarray, halves: np.ndarray, spec: np.ndarray, total: int
) -> np.ndarray:
    """Fused join materialisation: for outer row i and each matching inner row, one output row
    whose column c is outer[i, spec[c,1]] (spec[c,0] == 0), halves[r, spec[c,1]] (== 1) or 0."""
    outer, halves = _c(outer, np.uint32), _c(halves, np.uint32)
    starts, counts, spec = _c(starts, np.int64), _c(counts, np.int64), _c(spec, np.int64)
    offsets = np.empty(starts.shape[0], dtype=np.int64)  # scratch: the kernel scans counts into it
    out = np.empty((total, spec.shape[0]), dtype=np.uint32)
    _kernels.gather_join(outer, starts, counts, offsets, halves, spec, out)
    return out


def narrow_runs(
    halves: np.ndarray, half: int, values: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each run ``[starts[i], starts[i] + counts[i])`` of an index's rows (``halves``: their
    (n, 2w) uint32 view), sorted there by the column at ``half``, narrowed to the rows where
    that column is ``values[i]`` (two binary searches): new starts, counts and their sum."""
    halves, values = _c(halves, np.uint32), _c(values, np.uint32)
    starts, counts = np.array(starts, dtype=np.int64), np.array(counts, dtype=np.int64)  # narrowed in place: copies
    total = _lib.narrow_runs(_ptr(halves), halves.shape[1], half, _ptr(values), starts.shape[0], _ptr(starts), _ptr(counts))
    return starts, counts, int(total)


def column_bounds(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of an (n, width) uint32 table, its least and greatest value (one pass, where
    NumPy's min and max over axis 0 make two of a strided view)."""
    table = _c(table, np.uint32)
    lo, hi = np.empty(table.shape[1], dtype=np.uint32), np.empty(table.shape[1], dtype=np.uint32)
    _lib.column_bounds(_ptr(table), table.shape[0], table.shape[1], _ptr(lo), _ptr(hi))
    return lo, hi


def pack_keys(table: np.ndarray, lows: np.ndarray, shifts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """One uint64 per row of an (n, width) uint32 table: the sum of ``(column c - lows[c]) <<
    shifts[c]`` over the columns of nonzero ``widths`` (sets._sort_unique_narrow's key)."""
    table = _c(table, np.uint32)
    lows, shifts, widths = _c(lows, np.uint32), _c(shifts, np.int64), _c(widths, np.int64)
    keys = np.empty(table.shape[0], dtype=np.uint64)
    _lib.pack_keys(_ptr(table), table.shape[0], table.shape[1], _ptr(lows), _ptr(shifts), _ptr(widths), _ptr(keys))
    return keys


def unpack_keys(keys: np.ndarray, lows: np.ndarray, shifts: np.ndarray, widths: np.ndarray, out: np.ndarray) -> None:
    """``pack_keys``' inverse: each key's row into ``out``, a C-contiguous (len(keys), width)
    uint32 table written in place."""
    keys, lows, shifts, widths = _c(keys, np.uint64), _c(lows, np.uint32), _c(shifts, np.int64), _c(widths, np.int64)
    assert out.dtype == np.uint32 and out.flags.c_contiguous and out.shape[0] == keys.shape[0]
    _lib.unpack_keys(_ptr(keys), keys.shape[0], out.shape[1], _ptr(lows), _ptr(shifts), _ptr(widths), _ptr(out))


# A hash table's slots index fewer rows than this (32-bit first row and run length, kernels.c).
HASH_ROWS_MAX = 2**32


def hash_build(keys: np.ndarray, starts: np.ndarray, counts: np.ndarray, capacity: int) -> np.ndarray:
    """Open addressing, linear probing over the distinct ``keys`` of a sorted run, each slot
    (key, first row, run length) as two uint64 words (kernels.c's hash_slot_t); ``capacity``: a
    power of two above the key count. The run must hold fewer than HASH_ROWS_MAX rows."""
    keys, starts, counts = _c(keys, np.uint64), _c(starts, np.int64), _c(counts, np.int64)
    if capacity & (capacity - 1) or capacity <= keys.shape[0]:
        raise ValueError(f"hash table capacity {capacity} for {keys.shape[0]} keys: need a larger power of two")
    if keys.shape[0] and int(starts[-1]) + int(counts[-1]) >= HASH_ROWS_MAX:
        raise ValueError(f"a hash table over {int(starts[-1]) + int(counts[-1])} rows: fewer than {HASH_ROWS_MAX}")
    slots = np.empty((capacity, 2), dtype=np.uint64)
    _lib.hash_build(_ptr(keys), _ptr(starts), _ptr(counts), keys.shape[0], _ptr(slots), capacity)
    return slots


def hash_ranges(slots: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The join's count pass in one loop: (first row, run length) per query, 0 if absent, and
    the run lengths' sum."""
    queries = _c(queries, np.uint64)
    out_start = np.empty(queries.shape[0], dtype=np.int64)
    out_count = np.empty(queries.shape[0], dtype=np.int64)
    total = _kernels.hash_ranges(slots, queries, out_start, out_count)
    return out_start, out_count, int(total)


# Bytes per value of a direct-address index's range (uint32 offsets) and per hash slot.
OFFSET_BYTES, SLOT_BYTES = 4, 16


def key_directory(rows: np.ndarray, key_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct key prefixes of sorted (n, w) rows (``hisa.key_prefix`` of ``key_len`` 1 or
    2 columns), each one's first row and its number of rows, read from the rows in place."""
    rows = _c(rows, np.uint64)
    shift = 32 if key_len == 1 else 0
    found = np.empty(PARTS_MAX + 1, dtype=np.int64)  # keys before each part, counted once
    distinct = _lib.key_directory(_ptr(rows), rows.shape[0], rows.shape[1], shift, _ptr(found), None, None, None)
    keys = np.empty(distinct, dtype=np.uint64)
    starts = np.empty(distinct, dtype=np.int64)
    counts = np.empty(distinct, dtype=np.int64)
    _lib.key_directory(_ptr(rows), rows.shape[0], rows.shape[1], shift, _ptr(found), _ptr(keys), _ptr(starts), _ptr(counts))
    return keys, starts, counts


def offsets_build(keys: np.ndarray, starts: np.ndarray, rows: int) -> np.ndarray:
    """The direct-address index over a run's sorted distinct ``keys`` (kernels.c): uint32
    offsets, entry k the first row whose key is keys[0] + k or more, for k = 0 .. span + 1.
    The run must hold fewer than HASH_ROWS_MAX rows."""
    keys, starts = _c(keys, np.uint64), _c(starts, np.int64)
    if not keys.shape[0] or rows >= HASH_ROWS_MAX:
        raise ValueError(f"a direct-address index over {keys.shape[0]} keys and {rows} rows: some, fewer than {HASH_ROWS_MAX}")
    out = np.empty(int(keys[-1] - keys[0]) + 2, dtype=np.uint32)
    _lib.offsets_build(_ptr(keys), _ptr(starts), keys.shape[0], int(keys[0]), out.shape[0], rows, _ptr(out))
    return out


def offset_ranges(
    offsets: np.ndarray, low: int, shift: int, queries: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``hash_ranges`` over ``offsets_build``'s index of the queries' bits from ``shift`` up,
    whose first key is ``low``; with ``rows`` (shift 32: two-column keys, the sorted rows
    whose first word they are), a binary search within the first column's run."""
    queries = _c(queries, np.uint64)
    out_start = np.empty(queries.shape[0], dtype=np.int64)
    out_count = np.empty(queries.shape[0], dtype=np.int64)
    if rows is None:
        total = _kernels.offset_ranges(offsets, low, shift, queries, out_start, out_count)
    else:
        total = _kernels.offset_ranges(offsets, low, shift, queries, out_start, out_count, _c(rows, np.uint64))
    return out_start, out_count, int(total)


def dense_mark(rows: np.ndarray, bits: np.ndarray, lo0: int, lo1: int, r0: int, r1: int) -> None:
    """Set the bitmap bit of every in-box row (dense.py)."""
    rows = _c(rows, np.uint64)
    _lib.dense_mark(_ptr(rows), rows.shape[0], _ptr(bits), lo0, lo1, r0, r1)


def dense_novel(rows: np.ndarray, bits: np.ndarray, lo0: int, lo1: int, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """Bitmap dedup (dense.py): (new in-box rows in arrival order, out-of-box rows); marks
    the new ones as seen."""
    rows = _c(rows, np.uint64)
    fresh = np.empty_like(rows)
    outside = np.empty_like(rows)
    found = np.zeros(2, dtype=np.int64)
    _lib.dense_novel(_ptr(rows), rows.shape[0], _ptr(bits), lo0, lo1, r0, r1, _ptr(fresh), _ptr(outside), _ptr(found))
    return fresh[: found[0]], outside[: found[1]]


# Column kinds format_rows and parse_fields take, and the attribute types they stand for.
UNSIGNED, NUMBER, SYMBOL = 0, 1, 2
KINDS = {"unsigned": UNSIGNED, "number": NUMBER, "symbol": SYMBOL}


def format_rows(columns: np.ndarray, kinds: np.ndarray, delimiter: int, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Rows (n, k) as delimited text, one line each (uint8): the output writer, several times
    faster than a general CSV writer. ``kinds[j]``: column j holds UNSIGNED values, NUMBER int32
    bit patterns, or SYMBOL ids of the texts ``data``/``offsets`` (``texts.Texts``), written as
    their bytes are."""
    columns = _c(columns, np.uint32)
    kind = _c(kinds, np.uint8)
    data, offsets = _c(data, np.uint8), _c(offsets, np.int64)
    symbols = kind == SYMBOL
    text_bytes = 0
    if symbols.any():
        ids = columns[:, symbols]
        text_bytes = int((offsets[ids + 1] - offsets[ids]).sum())
    out = np.empty(columns.size * FORMAT_BYTES_PER_VALUE + text_bytes, dtype=np.uint8)
    n, k = columns.shape
    length = _lib.format_rows(_ptr(columns), n, k, _ptr(kind), delimiter, _ptr(data), _ptr(offsets), _ptr(out))
    return out[:length]


def parse_fields(
    data: bytes, delimiter: bytes, target: np.ndarray, kinds: list[int], keep_empty: bool = False
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]] | None:
    """Unquoted fact text -> encoded (n, arity) uint32 rows and, per SYMBOL column in order,
    its texts as (bytes, n + 1 int64 offsets); or None at the first malformed or out-of-range
    line (fact_input's reference reader then names it). Field k of a line goes to column
    ``target[k]`` (-1: skipped), fields after the last target are ignored; ``kinds[j]``:
    UNSIGNED, NUMBER or SYMBOL (whose column of the rows is left for the caller's ids);
    ``keep_empty``: an empty line is a row (a relation of one symbol field)."""
    capacity = data.count(b"\n") + 1
    arity = len(kinds)
    slots = np.cumsum([k == SYMBOL for k in kinds], dtype=np.int64) - 1
    symbols = int(slots[-1]) + 1 if arity else 0
    out = np.empty((capacity, arity), dtype=np.uint32)
    spans = np.empty((capacity, symbols, 2), dtype=np.int64)
    targets = _c(target, np.int64)
    kind = np.array(kinds, dtype=np.uint8)
    buffer = np.frombuffer(data, dtype=np.uint8)
    separator = np.frombuffer(delimiter, dtype=np.uint8)
    n = _lib.parse_fields(
        _ptr(buffer),
        len(data),
        _ptr(separator),
        len(delimiter),
        len(targets),
        _ptr(targets),
        _ptr(kind),
        _ptr(slots),
        arity,
        symbols,
        _ptr(out),
        _ptr(spans),
        capacity,
        int(keep_empty),
    )
    if n < 0:
        return None
    return out[:n], [gather_spans(buffer, spans[:n, s]) for s in range(symbols)]


def gather_spans(data: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of ``data`` (uint8) in each span, side by side, and their n + 1 offsets: a text
    column (``texts.Texts``). ``spans``: (n, 2) int64 rows of [start, end), any row stride."""
    n = spans.shape[0]
    offsets = np.zeros(n + 1, dtype=np.int64)
    if not n:
        return np.zeros(0, dtype=np.uint8), offsets
    assert spans.dtype == np.int64 and spans.ndim == 2 and spans.strides[1] == 8 and spans.strides[0] % 8 == 0
    np.cumsum(spans[:, 1] - spans[:, 0], out=offsets[1:])
    gathered = np.empty(int(offsets[-1]), dtype=np.uint8)
    _lib.gather_spans(_ptr(data), spans.ctypes.data, spans.strides[0] // 8, n, _ptr(offsets), _ptr(gathered))
    return gathered, offsets


# A text index's rows are held in 32 bits (symbol ids), the last value marking none.
MAX_TEXT_ROWS = 2**32 - 2


def index_texts(data: np.ndarray, offsets: np.ndarray, lo: int, hi: int, slots: np.ndarray) -> np.ndarray:
    """Rows [lo, hi) of the texts ``data``/``offsets`` into their hash index ``slots`` (uint64,
    a power of two at least twice the rows indexed, zeros when empty): per row, the row of the
    first text equal to it, itself where the index held none (which it then holds)."""
    assert hi <= MAX_TEXT_ROWS and 2 * hi <= len(slots) and len(slots) & (len(slots) - 1) == 0
    first = np.empty(hi - lo, dtype=np.int64)
    _lib.index_texts(_ptr(data), _ptr(offsets), lo, hi, _ptr(slots), len(slots), _ptr(first))
    return first


def find_texts(
    data: np.ndarray, offsets: np.ndarray, slots: np.ndarray, queries: np.ndarray, query_offsets: np.ndarray
) -> np.ndarray:
    """Per query text, the row of the equal text in the hash index ``slots`` of the texts
    ``data``/``offsets`` (``index_texts``), -1 where it holds none."""
    assert len(slots) and len(slots) & (len(slots) - 1) == 0, "find_texts: no index, or not a power of two"
    n = len(query_offsets) - 1
    found = np.empty(n, dtype=np.int64)
    queries, query_offsets = _c(queries, np.uint8), _c(query_offsets, np.int64)
    _lib.find_texts(_ptr(data), _ptr(offsets), _ptr(slots), len(slots), _ptr(queries), _ptr(query_offsets), n, _ptr(found))
    return found


def sort_texts(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The rows of the texts ``data``/``offsets`` in text order (their bytes compared as C++
    compares strings; stable)."""
    n = len(offsets) - 1
    order = np.empty(n, dtype=np.int64)
    scratch = np.empty(n, dtype=np.int64)
    prefix = np.empty(n, dtype=np.uint64)
    _lib.sort_texts(_ptr(_c(data, np.uint8)), _ptr(_c(offsets, np.int64)), n, _ptr(order), _ptr(scratch), _ptr(prefix))
    return order


class FunctorReturnedNull(Exception):
    """A C functor returned NULL for a text; ``row`` says for which argument row."""

    def __init__(self, row: int):
        super().__init__(f"NULL at row {row}")
        self.row = row


def call_functor(address: int, result: str, n: int, ints: list[np.ndarray], floats: list[np.ndarray]) -> Any:
    """The C function at ``address`` on ``n`` rows: ``ints`` its integer-class argument columns
    in order (int64: texts as addresses the caller keeps valid), ``floats`` its float ones
    (float32). -> int32 values (``result`` number or unsigned: the bits), float32, or for a
    symbol (the bytes of every text, end offsets per row)."""
    assert len(ints) <= FUNCTOR_INTS and len(floats) <= FUNCTOR_FLOATS
    ints = [_c(c, np.int64) for c in ints]
    floats = [_c(c, np.float32) for c in floats]
    int_ptrs = (ctypes.c_void_p * FUNCTOR_INTS)(*[_ptr(c) for c in ints])
    float_ptrs = (ctypes.c_void_p * FUNCTOR_FLOATS)(*[_ptr(c) for c in floats])
    kind = FUNCTOR_RESULTS[result]
    out = np.empty(n, dtype=np.float32 if kind == 1 else np.int32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    text = ctypes.c_void_p()
    status = _lib.call_functor(address, kind, n, int_ptrs, float_ptrs, _ptr(out), _ptr(offsets), ctypes.byref(text))
    if status == -1:
        raise MemoryError("call_functor: the buffer for a functor's texts could not grow")
    if status < -1:
        raise FunctorReturnedNull(-int(status) - 2)
    if kind != 2:
        return out
    assert text.value is not None
    try:
        data = (
            np.ctypeslib.as_array(ctypes.cast(text, ctypes.POINTER(ctypes.c_uint8)), (int(offsets[-1]),)).copy()
            if offsets[-1]
            else np.zeros(0, np.uint8)
        )
    finally:
        _lib.free_functor_text(text)
    return data, offsets
