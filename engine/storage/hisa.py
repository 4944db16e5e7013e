"""Hash-indexed sorted arrays (HISA, GPULog ASPLOS'25), one per (relation, column order).

- Data: tuples packed two uint32 attributes per uint64 word, as an (n, w) array sorted
  lexicographically in the index's column order (key columns first). Arity <= 2 is one word,
  so sort, unique, searchsorted and merge run on plain uint64. Unlike GPULog we store each
  index as its own permuted copy of the tuples rather than row ids into one data array: the
  join then reads the matching run contiguously, and the CPU has no gather per probe.
- Hash table: open addressing from the hash of a key prefix (the first one or two columns,
  one uint64) to that key's first row and run length in the sorted array. A join probes it
  once per outer tuple, in two passes (count, exclusive scan, materialise) so the output is
  allocated once.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dask_datalog.engine.backend import Backend
from dask_datalog.engine.storage import sets
from dask_datalog.engine.storage.dense import DEFAULT_MAX_BITS, HELD_BITS, PAYBACK, Box, DenseSet, bits_of, box_of, union

Source = tuple[tuple[int, int], ...]  # a join output column's origin: (0, outer column), (1, inner half), (2, 0)


def words_for(arity: int) -> int:
    return max(1, (arity + 1) // 2)


def _halves(rows: Any, xp: Any) -> Any:
    """(n, 2w) uint32 view of packed rows: on little-endian machines word k's high half
    (even column) is view column 2k + 1 and its low half (odd column) is 2k."""
    return rows.view(xp.uint32).reshape(rows.shape[0], 2 * rows.shape[1])


def half_of(j: int) -> int:
    return 2 * (j // 2) + (1 if j % 2 == 0 else 0)


def pack(columns: list[Any], n: int, xp: Any) -> Any:
    """uint32 columns -> (n, w) uint64 rows; column j sits in word j // 2, high half if j even.
    Written through a uint32 view: no widening temporaries."""
    rows = xp.empty((n, words_for(len(columns))), dtype=xp.uint64)
    halves = _halves(rows, xp)
    if len(columns) % 2:
        halves[:, half_of(len(columns))] = 0
    if not columns:
        halves[:] = 0
    for j, col in enumerate(columns):
        halves[:, half_of(j)] = col
    return rows


def unpack(rows: Any, j: int, xp: Any) -> Any:
    """Column j of packed rows as a uint32 (strided) view."""
    return _halves(rows, xp)[:, half_of(j)]


def packed_layout(head: Any) -> tuple[str | None, ...] | None:
    """When every head argument is a variable, the binding-table column order whose uint32
    rows, viewed as uint64, are the packed head tuples (None marks a zero pad half)."""
    if not all(hasattr(a, "name") and not hasattr(a, "op") for a in head.args) or not head.args:
        return None
    names: list[str | None] = [None] * (2 * words_for(len(head.args)))
    for j, a in enumerate(head.args):
        names[half_of(j)] = a.name
    return tuple(names)


def gather_join(outer: Any, starts: Any, counts: Any, total: int, inner_rows: Any, source: Source, backend: Backend) -> Any:
    """Materialise a join chunk as one (total, len(source)) uint32 table (``total``: the sum
    of ``counts``, which the caller has): output column c is outer column i (source (0, i)),
    inner half h (source (1, h)) or zero (source (2, 0))."""
    kernels = backend.kernels
    if kernels is not None:
        return kernels.gather_join(outer, starts, counts, _halves(inner_rows, backend.xp), _spec(source), total)
    outer_idx, inner_idx = expand_runs(starts, counts, backend)
    return gather_pairs(outer, outer_idx, inner_rows, inner_idx, source, backend.xp)


@functools.lru_cache(maxsize=1024)
def _spec(source: Source) -> np.ndarray:
    """``source`` as the kernel's (columns, 2) int64 array, made once per distinct source."""
    spec = np.array(source, dtype=np.int64).reshape(-1, 2)
    spec.flags.writeable = False
    return spec


def gather_pairs(outer: Any, outer_idx: Any, inner_rows: Any, inner_idx: Any, source: Source, xp: Any) -> Any:
    """``gather_join`` from explicit (outer row, inner row) pairs."""
    table = xp.empty((outer_idx.shape[0], len(source)), dtype=xp.uint32)
    halves = _halves(inner_rows, xp)
    for c, (side, i) in enumerate(source):
        if side == 0:
            table[:, c] = outer[outer_idx, i]
        elif side == 1:
            table[:, c] = halves[inner_idx, i]
        else:
            table[:, c] = 0
    return table


def key_prefix(rows: Any, key_len: int, xp: Any) -> Any:
    """The uint64 the hash table is keyed on: the first one or two columns."""
    if key_len == 1:
        return rows[:, 0] >> xp.uint64(32)
    return rows[:, 0]


def permute(rows: Any, arity: int, order: tuple[int, ...], xp: Any) -> Any:
    """Re-pack canonical rows in another column order (not sorted)."""
    if order == tuple(range(arity)):
        return rows
    return pack([unpack(rows, j, xp) for j in order], rows.shape[0], xp)


def _sole(rows: Any) -> bool:
    """Whether the caller's one name is the only reference to ``rows`` (getrefcount counts
    that name, this argument and its own), which own their memory and have no weak reference:
    then no view or holder can see their buffer grow, move and change (``sets.merge``)."""
    return sys.getrefcount(rows) == 3 and rows.base is None and not weakref.getweakrefcount(rows)


@dataclass
class HashTable:
    """Distinct key prefixes of a sorted array (the key directory) with their first row and
    run length, plus, on the CPU, the open-addressing table over them, or a direct-address
    index (offsets) where the keys span a range of at most a few times the table's slots:
    ids of nodes and symbols are dense, and there it takes 4 bytes a value of the range
    against 16 a slot (dyck at 10x: 32 MB of slots per 38 MB order), and probes faster. Two-
    column keys whose first columns span such a range and own short runs get the index of
    the first column and a binary search within its run (polonius at 10x: 128 MB of slots
    for a 22 MB relation probed on its whole tuple).

    On the GPU (and on ``numpy-xp``) the join probes the sorted directory by binary search
    instead. On the GPU one
    ``searchsorted`` kernel measured 5.6x faster (H200, 20 M probes: 2.0 ms) than linear
    probing written in array-API rounds (11 ms). A CUDA probe kernel is what would bring
    the table back there."""

    keys: Any  # the directory; None once the slots or offsets hold it (CPU)
    starts: Any
    counts: Any
    slots: Any | None
    rows: int  # of the sorted array
    distinct: int  # keys
    offsets: Any | None = None  # the direct-address index (CPU) of the keys' bits from ``shift`` up, from ``low``
    low: int = 0
    shift: int = 0
    words: Any | None = None  # two-column keys: the sorted rows whose first word they are

    # A first column's run that a probe searches holds this many rows at most on average.
    SEARCHED_RUN = 64

    @classmethod
    def build(cls, prefix: Any, xp: Any, words: Any | None = None) -> HashTable:
        """The directory of ``prefix``; ``words``: the rows whose first word it is (two-column
        keys), which a direct-address index of the first column may search."""
        n = prefix.shape[0]
        first = xp.ones(n, dtype=bool)
        if n > 1:
            xp.not_equal(prefix[1:], prefix[:-1], out=first[1:])
        starts = xp.nonzero(first)[0]
        return cls.of(prefix[starts], starts, n, xp, words)

    @classmethod
    def over(cls, rows: Any, key_len: int, backend: Backend) -> HashTable:
        """``build`` over the ``key_prefix`` of sorted ``rows``: the CPU kernel reads the
        directory from the rows in place, without the prefix's array of a key per row."""
        words = rows if key_len == 2 else None
        if backend.kernels is None:
            return cls.build(key_prefix(rows, key_len, backend.xp), backend.xp, words)
        keys, starts, counts = backend.kernels.key_directory(rows, key_len)
        return cls(keys, starts, counts, None, int(rows.shape[0]), int(keys.shape[0]), words=words)

    @classmethod
    def of(cls, keys: Any, starts: Any, n: int, xp: Any, words: Any | None) -> HashTable:
        """The table of a directory: the distinct keys of ``n`` sorted rows and their first rows."""
        counts = xp.diff(xp.concatenate([starts, xp.asarray([n], dtype=starts.dtype)]))
        return cls(keys, starts, counts, None, n, int(keys.shape[0]), words=words)

    @property
    def nbytes(self) -> int:
        parts = (self.keys, self.starts, self.counts, self.slots, self.offsets)
        return sum(int(a.nbytes) for a in parts if a is not None)

    def lookup(self, queries: Any, backend: Backend) -> tuple[Any, Any, int | None]:
        """(first row, run length) per query, run length 0 where the key is absent, and the
        run lengths' sum where it came free (the CPU kernel counts it; None: not counted, as
        on the GPU that would cost a synchronisation). The open-addressing table is built on
        the first probe, by the CPU kernels."""
        if self.distinct == 0:
            zeros = backend.xp.zeros(queries.shape[0], dtype=backend.xp.int64)
            return zeros, zeros, 0
        kernels = backend.kernels
        if kernels is None or self.rows >= kernels.HASH_ROWS_MAX:
            return (*self.lookup_directory(queries, backend.xp), None)
        if self.slots is None and self.offsets is None:
            self._index(kernels)
        if self.offsets is not None:
            return kernels.offset_ranges(self.offsets, self.low, self.shift, queries, self.words)
        return kernels.hash_ranges(self.slots, queries)

    def _index(self, kernels: Any) -> None:
        """The CPU's index over the directory, which it takes over: the slots, or the
        direct-address index (of the keys, or of their first column) where it is smaller."""
        # Load factor 1/3 to 2/3: linear probing stays short, the table small.
        capacity = 1 << max(4, int(3 * self.distinct // 2).bit_length())
        spans = capacity * kernels.SLOT_BYTES // kernels.OFFSET_BYTES - 1  # the largest key range an index may cover
        keys, firsts = self.keys, self.keys >> 32
        if int(keys[-1] - keys[0]) < spans:
            self.low, self.words = int(keys[0]), None
            self.offsets = kernels.offsets_build(keys, self.starts, self.rows)
        elif (
            self.words is not None
            and int(firsts[-1] - firsts[0]) < spans
            and self.rows <= self.SEARCHED_RUN * (1 + int(np.count_nonzero(firsts[1:] != firsts[:-1])))
        ):
            self.low, self.shift = int(firsts[0]), 32
            self.offsets = kernels.offsets_build(firsts, self.starts, self.rows)
        else:
            self.slots = kernels.hash_build(keys, self.starts, self.counts, capacity)
            self.words = None
        self.keys = self.starts = self.counts = None  # the slots or offsets hold the directory now

    def lookup_directory(self, queries: Any, xp: Any) -> tuple[Any, Any]:
        """``lookup`` by binary search over the sorted keys (the array-API path)."""
        assert self.keys is not None, "the directory of a table whose CPU slots took it over"
        if self.distinct == 0:
            zeros = xp.zeros(queries.shape[0], dtype=xp.int64)
            return zeros, zeros
        idx = xp.searchsorted(self.keys, queries)
        xp.minimum(idx, self.keys.shape[0] - 1, out=idx)
        found = self.keys[idx] == queries
        return xp.where(found, self.starts[idx], 0), xp.where(found, self.counts[idx], 0)


@dataclass
class SortedIndex:
    """One HISA: tuples sorted in ``order`` plus hash tables on its 1- and 2-column prefixes."""

    order: tuple[int, ...]
    rows: Any
    _tables: dict[int, HashTable] = field(default_factory=dict)

    def table(self, key_len: int, backend: Backend) -> HashTable:
        if key_len not in self._tables:
            self._tables[key_len] = HashTable.over(self.rows, key_len, backend)
        return self._tables[key_len]

    @property
    def table_bytes(self) -> int:
        """Its hash tables' bytes (its rows are counted by the store that holds them)."""
        return sum(t.nbytes for t in self._tables.values())

    def drop_tables(self) -> None:
        """Free the hash tables (built again by the next probe)."""
        self._tables = {}

    def ranges(self, query: Any, key_len: int, n: int, backend: Backend) -> tuple[Any, Any, int | None]:
        """Count pass of the join: for ``n`` outer keys (``probe_query`` of ``key_len`` columns),
        the first matching row and the run length, and their sum or None (``HashTable.lookup``).
        An empty key matches every row."""
        xp = backend.xp
        if not key_len:
            rows = int(self.rows.shape[0])
            return xp.zeros(n, dtype=xp.int64), xp.full(n, rows, dtype=xp.int64), n * rows
        return self.table(key_len, backend).lookup(query, backend)


def probe_query(key_columns: list[Any], n: int, xp: Any) -> Any:
    """The hash tables' key for ``n`` outer rows: uint32 key columns in index order, at most two
    (longer keys are finished by the caller's filter), as one uint64 each; None for no key.
    Made once per join step, whatever the number of runs it probes."""
    if not key_columns:
        return None
    if len(key_columns) == 1:
        return key_columns[0].astype(xp.uint64)
    return pack(key_columns, n, xp)[:, 0]


def narrow(starts: Any, counts: Any, rows: Any, k: int, values: Any, backend: Backend) -> tuple[Any, Any, int | None]:
    """A probe past the two hashed key columns: each outer row's run of the index ``rows``
    (equal on the key columns before ``k``, so sorted by column ``k`` within it) narrowed to
    the rows whose column ``k`` is ``values[i]``, by binary search: a run of a common prefix
    (every class's ``<init>``, ``()V`` in DOOP's method lookup) is thousands of rows, and checking
    each of them held the pairs of all of them (DOOP 10x: 0.5 GB, 2 s). Returns new starts,
    counts and their sum (None where not counted, as ``HashTable.lookup``)."""
    kernels = backend.kernels
    if kernels is not None:
        return kernels.narrow_runs(_halves(rows, np), half_of(k), values, starts, counts)
    xp = backend.xp
    column = unpack(rows, k, xp)
    last = max(int(column.shape[0]) - 1, 0)
    # The first row >= value, then the first row > value, which is no earlier: its search starts
    # there. Each bound is a new array (xp.where), never ``starts`` written over.
    lo, ends = starts, starts + counts
    bounds = []
    for above in (False, True):
        hi = ends
        while True:
            active = lo < hi
            if not bool(active.any()):
                break
            mid = (lo + hi) // 2
            seen = column[xp.minimum(mid, last)]
            right = active & ((seen <= values) if above else (seen < values))
            lo = xp.where(right, mid + 1, lo)
            hi = xp.where(active & ~right, mid, hi)
        bounds.append(lo)
    return bounds[0], bounds[1] - bounds[0], None


def expand_runs(starts: Any, counts: Any, backend: Backend) -> tuple[Any, Any]:
    """Two-pass join materialisation: counts -> exclusive scan -> (outer, inner) pairs."""
    total = int(counts.sum()) if counts.shape[0] else 0
    if total == 0:
        empty = backend.xp.zeros(0, dtype=backend.xp.int64)
        return empty, empty
    kernels = backend.kernels
    if kernels is not None:
        return kernels.expand_runs(starts, counts, total)
    return expand_runs_xp(starts, counts, total, backend.xp)


def expand_runs_xp(starts: Any, counts: Any, total: int, xp: Any) -> tuple[Any, Any]:
    # Output row t belongs to the outer row whose run covers it (no repeat with array counts
    # on CuPy; a searchsorted over the inclusive scan is the same thing).
    ends = xp.cumsum(counts)
    t = xp.arange(total, dtype=xp.int64)
    outer = xp.searchsorted(ends, t, side="right")
    inner = t - (ends - counts - starts)[outer]
    return outer, inner


def untimed(name: str) -> AbstractContextManager[None]:
    """A phase timer that times nothing (for callers that keep no clock)."""
    return nullcontext()


class RelationStore:
    """The full version of one relation and the current iteration's delta.

    Full is kept, in the canonical order and in every other column order a join asked for, as
    a short list of sorted runs of geometrically decreasing size (a log-structured merge):
    adding a delta appends a run and merges only runs of similar size, so an iteration copies
    neither full nor its indexes (GPULog's merge and rebuild cost on long, thin fixpoints: road
    networks, points-to analyses). Each run is a HISA with its own hash tables, built once.
    Deduplication probes each run; a join probes each run too (``parts``), unless its outer
    table is large enough that merging the runs and hashing them once costs less.
    """

    MERGE_RATIO = 4  # merge the two newest runs while the newer is over a quarter the older
    # A join probes the runs one by one while (runs - 1) x outer rows x PROBE_COST is at most
    # the rows of full: probing a hash table costs about twice per row what merging and
    # hashing costs per row.
    PROBE_COST = 2

    def __init__(self, arity: int, backend: Backend, max_dense_bits: int = DEFAULT_MAX_BITS):
        self.arity = arity
        self.backend = backend
        self.xp = backend.xp
        # The bitmap mirror of full (dense.py): CPU kernels, arity 1 or 2, a box of at most
        # max_dense_bits, built once enough tuples went through dedup to pay for it.
        self.max_dense_bits = max_dense_bits if backend.kernels is not None and 1 <= arity <= 2 else 0
        self.dense: DenseSet | None = None
        self._box: Box | None = None
        self._deduplicated = 0
        self.canonical = tuple(range(arity))
        # Full's runs in each column order joins probe; the canonical order's are full itself
        # (dedup, outputs, checkpoints) and always there.
        self.levels: dict[tuple[int, ...], list[SortedIndex]] = {self.canonical: []}
        self.delta = self._no_rows()
        self._delta_indexes: dict[tuple[int, ...], SortedIndex] = {}

    def _no_rows(self) -> Any:
        return self.xp.zeros((0, words_for(self.arity)), self.xp.uint64)

    @property
    def runs(self) -> list[Any]:
        """Full's sorted, pairwise disjoint runs in the canonical order (read as they are: a
        checkpoint writes each, set difference probes each)."""
        return [level.rows for level in self.levels[self.canonical]]

    def compact(self) -> Any:
        """Full as one sorted array: the canonical runs merged into one, which replaces them.
        Called where a caller needs one array (the relation's final rows, a copy built from
        the complete relation), never as a side effect of reading."""
        runs = self._compact(self.canonical)
        return runs[0].rows if runs else self.delta[:0]

    def _all_rows(self) -> Any:
        """Full's rows in no particular order, without merging the runs."""
        runs = self.runs
        if not runs:
            return self.delta[:0]
        return runs[0] if len(runs) == 1 else self.xp.concatenate(runs)

    def __len__(self) -> int:
        return sum(int(level.rows.shape[0]) for level in self.levels[self.canonical])

    @property
    def nbytes(self) -> int:
        """What this store holds: full's runs in every column order, their hash tables, the
        bitmap mirror."""
        held = sum(int(level.rows.nbytes) + level.table_bytes for levels in self.levels.values() for level in levels)
        return held + (int(self.dense.bits.nbytes) if self.dense is not None else 0)

    def subtract(self, rows: Any) -> Any:
        """Sorted unique rows that are not in full."""
        return sets.difference_all(rows, self.runs, self.backend)

    def novel(self, rows: Any, phase: Callable[[str], AbstractContextManager[None]] = untimed) -> Any:
        """Produced rows (any order, duplicates) -> sorted unique rows not in full. Rows it
        returns are taken as seen: the caller adds them to full at the end of the iteration.
        ``phase(name)`` times the dedup and difference stages; with the bitmap one probe does
        both, and it counts as dedup."""
        if self.max_dense_bits and self.dense is None:
            self._consider_dense(rows)
        if self.dense is not None:
            with phase("dedup"):
                return self.dense.novel(rows, self.subtract)
        with phase("dedup"):
            rows = sets.sort_unique(rows, self.backend)
        with phase("difference"):
            return self.subtract(rows)

    def _consider_dense(self, rows: Any) -> None:
        if self._box is None:
            self._box = box_of(self._all_rows()[:, 0], self.arity)
        self._box = union(self._box, box_of(rows[:, 0], self.arity))
        self._deduplicated += int(rows.shape[0])
        if self._box is None:
            return
        bits = bits_of(self._box)
        if bits > self.max_dense_bits:
            self.max_dense_bits = 0  # values only spread further: never dense
        elif self._deduplicated * PAYBACK >= bits and len(self) * HELD_BITS >= bits:
            self.dense = DenseSet.over(self._box, self.backend)
            for run in self.runs:
                self.dense.mark(run)

    def index(self, order: tuple[int, ...], version: str = "full") -> SortedIndex:
        """One HISA of ``version`` (full or delta) in ``order``; full's runs are compacted."""
        if version == "delta":
            if order not in self._delta_indexes:
                self._delta_indexes[order] = SortedIndex(order, self._sorted_in(self.delta, order))
            return self._delta_indexes[order]
        runs = self._compact(order)
        return runs[0] if runs else SortedIndex(order, self.delta[:0])

    def parts(self, order: tuple[int, ...], version: str, probes: int) -> list[SortedIndex]:
        """The HISAs a join of ``probes`` outer rows reads ``version`` from, one after the
        other: the delta, or full's runs (compacted first when probing each costs more)."""
        if version == "delta":
            return [self.index(order, version)]
        runs = self._levels(order)
        if len(runs) > 1 and (len(runs) - 1) * probes * self.PROBE_COST > len(self):
            runs = self._compact(order)
        return list(runs)  # a join nested in this one may compact the store's list meanwhile

    def _levels(self, order: tuple[int, ...]) -> list[SortedIndex]:
        if order not in self.levels:  # a new column order: built from full, then kept up
            self.levels[order] = [SortedIndex(order, self._sorted_in(self._all_rows(), order))] if len(self) else []
        return self.levels[order]

    def _compact(self, order: tuple[int, ...]) -> list[SortedIndex]:
        runs = self._levels(order)
        if len(runs) > 1:
            runs = self.levels[order] = [SortedIndex(order, sets.merge_all([r.rows for r in runs], self.backend))]
        return runs

    def _sorted_in(self, canonical_rows: Any, order: tuple[int, ...]) -> Any:
        if order == self.canonical:
            return canonical_rows
        return sets.sort_unique(permute(canonical_rows, self.arity, order, self.xp), self.backend)

    def release(self, orders: Collection[tuple[int, ...]]) -> None:
        """Free what only finished strata needed: full in every column order but ``orders``
        (the canonical rows stay: they are full), the canonical order's hash tables unless it
        is one of ``orders``, the delta with its indexes (no later stratum reads a finished
        relation's delta) and the bitmap mirror. What is asked for again is rebuilt
        (``_levels``, ``table``, ``index``, ``novel``)."""
        for order in [o for o in self.levels if o != self.canonical and o not in orders]:
            del self.levels[order]
        if self.canonical not in orders:
            for level in self.levels[self.canonical]:
                level.drop_tables()
        self.delta = self._no_rows()  # not delta[:0], a view that would keep all of it alive
        self._delta_indexes = {}
        self.dense = None

    def stage(self, rows: Any) -> None:
        """Sorted canonical rows become the delta without joining full (a subsumption's
        candidates and accepted tuples, read as the delta before they are taken in)."""
        self.delta = rows
        self._delta_indexes = {}

    def remove(self, rows: Any) -> int:
        """Take sorted unique canonical rows out of full and the delta; returns how many left
        full. Only the runs that held some are rebuilt (their hash tables then rebuilt when
        next probed); the bitmap mirror, which cannot forget a tuple, is dropped for good."""
        if rows.shape[0] == 0:
            return 0
        before = len(self)
        for order, runs in self.levels.items():
            gone = self._sorted_in(rows, order)
            for k, run in enumerate(runs):
                if sets.difference(gone, run.rows, self.backend).shape[0] < gone.shape[0]:
                    runs[k] = SortedIndex(order, sets.difference(run.rows, gone, self.backend))
            self.levels[order] = [run for run in runs if run.rows.shape[0]]
        left = sets.difference(self.delta, rows, self.backend)
        if left.shape[0] < self.delta.shape[0]:
            self.stage(left)
        removed = before - len(self)
        if removed:
            self.dense, self.max_dense_bits = None, 0
        return removed

    def add(self, delta: Any) -> None:
        """Sorted canonical rows, none of them in full yet, become the delta and join full."""
        if delta.shape[0]:
            if self.dense is not None:
                self.dense.mark(delta)
            for order, runs in self.levels.items():
                runs.append(SortedIndex(order, self._sorted_in(delta, order)))
                while len(runs) > 1 and runs[-1].rows.shape[0] * self.MERGE_RATIO > runs[-2].rows.shape[0]:
                    newer = runs.pop()
                    older = runs.pop().rows
                    owned = _sole(older)  # asked before the call below puts another reference on the stack
                    runs.append(SortedIndex(order, sets.merge(older, newer.rows, self.backend, owned)))
        self.delta = delta
        self._delta_indexes = {}
