"""Property tests: every HISA and sorted-set operation, CPU kernel and array-API twin alike,
agrees with Python sets on random rows (narrow rows: one word; wide rows: several words)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_modes import ARRAY_API, KERNELS
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_datalog.engine.storage import _kernels, cpu_kernels, sets  # type: ignore[attr-defined]
from dask_datalog.engine.storage.hisa import (
    HashTable,
    RelationStore,
    SortedIndex,
    expand_runs,
    half_of,
    narrow,
    pack,
    permute,
    probe_query,
    unpack,
)

xp = np
settings.register_profile("engine", max_examples=60, deadline=None)
settings.load_profile("engine")

# Small value domain so that duplicates and matches are common; the extremes check the
# packing of the high bit.
VALUES = st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1, 2**31, 2**32 - 1])


def rows_strategy(arity: int, max_size: int = 40):
    return st.lists(st.tuples(*[VALUES] * arity), max_size=max_size)


def to_rows(tuples: list[tuple[int, ...]], arity: int) -> np.ndarray:
    cols = [np.array([t[j] for t in tuples], dtype=np.uint32) for j in range(arity)]
    return pack(cols, len(tuples), xp)


def to_tuples(rows: np.ndarray, arity: int) -> list[tuple[int, ...]]:
    cols = [unpack(rows, j, xp).tolist() for j in range(arity)]
    return list(zip(*cols)) if arity else [()] * rows.shape[0]


ARITY = st.integers(min_value=1, max_value=5)


@given(st.data())
def test_sort_unique_is_the_sorted_set_whether_or_not_the_attributes_fit_one_word(data):
    """sort_unique sorts rows of several words as one uint64 key when their attributes, less
    each one's minimum, fit in 64 bits together, else by lexsort: both are the sorted set, on
    the CPU kernels and the array formulation CuPy runs, for packed rows and uint32 tables."""
    arity = data.draw(st.integers(1, 6))
    low = data.draw(st.sampled_from([0, 5, 2**31, 2**32 - 40]))  # offsets the key must subtract
    span = data.draw(st.sampled_from([0, 1, 4, 2**10, 2**16, 2**32 - 1 - low]))  # fits or does not
    values = st.integers(low, min(low + span, 2**32 - 1))
    tuples = data.draw(st.lists(st.tuples(*[values] * arity), max_size=60))
    tuples += data.draw(st.lists(st.sampled_from(tuples), max_size=20)) if tuples else []
    rows = to_rows(tuples, arity)
    table = np.array(tuples, dtype=np.uint32).reshape(-1, arity)  # a binding table: uint32 columns
    for backend in (KERNELS, ARRAY_API):
        assert to_tuples(sets.sort_unique(rows, backend), arity) == sorted(set(tuples))
        assert [tuple(r) for r in sets.sort_unique(table, backend).tolist()] == sorted(set(tuples))
        if rows.shape[0] > 1 and arity > 2:  # the one-key sort, which sort_unique takes from NARROW_MIN_ROWS rows
            narrow = sets._sort_unique_narrow(rows, backend)
            assert narrow is None or to_tuples(narrow, arity) == sorted(set(tuples))
            assert narrow is not None or span >= 2**16  # 6 attributes of up to 10 bits fit
            narrow_table = sets._sort_unique_narrow(table, backend)
            assert narrow_table is None or [tuple(r) for r in narrow_table.tolist()] == sorted(set(tuples))
            assert (narrow_table is None) == (narrow is None)


@given(st.data())
def test_pack_unpack_round_trip(data):
    arity = data.draw(ARITY)
    tuples = data.draw(rows_strategy(arity))
    assert to_tuples(to_rows(tuples, arity), arity) == tuples


@given(st.data())
def test_packed_order_is_lexicographic(data):
    arity = data.draw(ARITY)
    tuples = data.draw(rows_strategy(arity))
    got = to_tuples(sets.sort_unique(to_rows(tuples, arity), KERNELS), arity)
    assert got == sorted(set(tuples))


@given(st.data())
def test_difference_and_merge(data):
    arity = data.draw(ARITY)
    a = sorted(set(data.draw(rows_strategy(arity))))
    b = sorted(set(data.draw(rows_strategy(arity))))
    ra, rb = to_rows(a, arity), to_rows(b, arity)
    expected_diff = sorted(set(a) - set(b))
    fresh = to_rows(expected_diff, arity)
    expected_union = sorted(set(a) | set(b))
    for backend in (KERNELS, ARRAY_API):
        assert to_tuples(sets.difference(ra, rb, backend), arity) == expected_diff
        assert to_tuples(sets.merge(rb, fresh, backend), arity) == expected_union


@given(st.data())
def test_merge_all_is_the_union_of_disjoint_runs(data):
    """A relation's runs compacted in one pass (the CPU kernel) or a pair at a time (xp)."""
    arity = data.draw(ARITY)
    tuples = sorted(set(data.draw(rows_strategy(arity))))
    owner = data.draw(st.lists(st.integers(0, 6), min_size=len(tuples), max_size=len(tuples)))
    runs = [to_rows([t for t, o in zip(tuples, owner) if o == r], arity) for r in range(max(owner, default=0) + 1)]
    for backend in (KERNELS, ARRAY_API):
        assert to_tuples(sets.merge_all(runs, backend), arity) == tuples


@given(st.data())
def test_merge_into_a_run_the_caller_owns_is_the_union(data):
    """``sets.merge`` with ``owned``: the kernel grows full's own buffer and merges from the
    back, in place; the result is the union, whatever rows of each side come first."""
    arity = data.draw(ARITY)
    tuples = sorted(set(data.draw(rows_strategy(arity))))
    side = data.draw(st.lists(st.booleans(), min_size=len(tuples), max_size=len(tuples)))
    full = to_rows([t for t, s in zip(tuples, side) if s], arity).copy()  # owns its memory
    new = to_rows([t for t, s in zip(tuples, side) if not s], arity)
    assert to_tuples(sets.merge(full, new, KERNELS, owned=True), arity) == tuples


@given(st.data())
def test_union_sorted_is_the_union_of_blocks_that_share_rows(data):
    """An iteration's new tuples, blocks each sorted and unique but sharing rows, combined (one
    word: sorted in place in their concatenation); the blocks keep their values."""
    arity = data.draw(ARITY)
    blocks = [to_rows(sorted(set(data.draw(rows_strategy(arity, 20)))), arity) for _ in range(data.draw(st.integers(1, 5)))]
    before = [b.copy() for b in blocks]
    expected = sorted(set().union(*(to_tuples(b, arity) for b in blocks)))
    for backend in (KERNELS, ARRAY_API):
        assert to_tuples(sets.union_sorted(blocks, backend), arity) == expected
        assert all(np.array_equal(b, c) for b, c in zip(blocks, before))


def test_merge_into_refuses_rows_it_would_misread() -> None:
    """``merge_into`` grows and writes its ``full`` argument through a raw pointer: rows of
    another element type, a strided view or rows of another width raise rather than be
    written over as uint64 words."""
    from dask_datalog.engine.storage import cpu_kernels

    new = to_rows([(1,)], 1)
    for full in (np.zeros((3, 1), dtype=np.int32), np.zeros((6, 1), dtype=np.uint64)[::2], np.zeros((3, 2), dtype=np.uint64)):
        with pytest.raises(ValueError):
            cpu_kernels.merge_into(full, new)


def test_a_run_merges_in_place_only_when_nothing_else_holds_it(monkeypatch) -> None:
    """RelationStore.add merges a delta into the newest run's own buffer (no second copy of
    the run) when that run is referred to by nothing else; rows a caller holds (full from
    compact(), a view of them, a weak reference) keep their values, and the run is merged into
    a copy."""
    import weakref

    from dask_datalog.engine.storage import cpu_kernels

    in_place: list[int] = []
    merge_into = cpu_kernels.merge_into
    monkeypatch.setattr(cpu_kernels, "merge_into", lambda full, new: in_place.append(len(full)) or merge_into(full, new))
    store = RelationStore(1, KERNELS)
    store.add(to_rows([(v,) for v in range(0, 2000, 2)], 1))
    store.add(to_rows([(v,) for v in range(1, 2000, 4)], 1))  # over a quarter of the run: merged into it
    held = store.compact()
    view, values = held[10:20], held.copy()
    store.add(to_rows([(v,) for v in range(3, 2000, 4)], 1))
    assert np.array_equal(held, values) and np.array_equal(view, values[10:20])
    assert to_tuples(store.compact(), 1) == [(v,) for v in range(2000)] and not in_place
    del held, view
    watched = weakref.ref(store.runs[0])
    store.add(to_rows([(v,) for v in range(2000, 2600)], 1))
    assert to_tuples(store.compact(), 1) == [(v,) for v in range(2600)] and not in_place and watched() is None
    store.add(to_rows([(v,) for v in range(2600, 3400)], 1))
    assert to_tuples(store.compact(), 1) == [(v,) for v in range(3400)] and in_place == [2600]


@given(st.data())
def test_difference_against_runs_is_the_set_difference(data):
    """A relation's runs subtracted in one kernel call or a run at a time (xp), empty runs too."""
    arity = data.draw(ARITY)
    new = sorted(set(data.draw(rows_strategy(arity))))
    runs = [sorted(set(data.draw(rows_strategy(arity, 20)))) for _ in range(data.draw(st.integers(0, 5)))]
    expected = sorted(set(new).difference(*map(set, runs)))
    for backend in (KERNELS, ARRAY_API):
        got = sets.difference_all(to_rows(new, arity), [to_rows(r, arity) for r in runs], backend)
        assert to_tuples(got, arity) == expected


@given(st.data())
def test_directory_read_from_the_rows_is_the_prefix_directory(data):
    """``HashTable.over`` a sorted run: the CPU kernel reads the key directory (distinct one-
    or two-column prefixes, each one's first row, run length) from the rows in place; the
    array-API path builds it from the prefixes' array. Both are the same directory."""
    arity = data.draw(st.integers(1, 5))
    rows = sets.sort_unique(to_rows(data.draw(rows_strategy(arity, 60)), arity), KERNELS)
    for key_len in (1, 2) if arity > 1 else (1,):
        prefix = np.array(
            [int(p) for p in probe_query([unpack(rows, j, xp) for j in range(key_len)], rows.shape[0], xp)], dtype=np.uint64
        )
        firsts = {int(p): i for i, p in reversed(list(enumerate(prefix.tolist())))}
        for backend in (KERNELS, ARRAY_API):
            table = HashTable.over(rows, key_len, backend)
            assert table.keys.tolist() == sorted(firsts) and table.starts.tolist() == [firsts[k] for k in sorted(firsts)]
            assert table.counts.tolist() == [prefix.tolist().count(k) for k in sorted(firsts)]
            assert table.rows == rows.shape[0] and (table.words is rows) == (key_len == 2)


@pytest.mark.parametrize("key_len", [1, 2])
def test_directory_of_a_large_run_read_in_parts_is_the_prefix_directory(key_len: int) -> None:
    """Past PARALLEL_MIN rows the kernel counts and writes the directory a part of the rows per
    OpenMP thread (a key's rows may straddle two parts): the same directory as the arrays'."""
    rng = np.random.default_rng(key_len)
    columns = [rng.integers(0, 3_000, 200_000).astype(np.uint32) for _ in range(3)]
    rows = sets.sort_unique(pack(columns, 200_000, np), KERNELS)
    kernel, arrays = HashTable.over(rows, key_len, KERNELS), HashTable.over(rows, key_len, ARRAY_API)
    for part in ("keys", "starts", "counts"):
        assert np.array_equal(getattr(kernel, part), getattr(arrays, part)), part
    assert kernel.distinct == arrays.distinct and int(kernel.counts.sum()) == rows.shape[0]


@given(st.lists(st.integers(0, 2**64 - 1), max_size=60), st.lists(st.integers(0, 2**64 - 1), max_size=60))
def test_hash_table_and_directory_agree_with_dict(keys, queries):
    """The open-addressing probe (CPU) and the binary search over the key directory (the
    array-API path the GPU takes) both give each key's first row and run length."""
    prefix = np.sort(np.array(keys, dtype=np.uint64))
    runs: dict[int, tuple[int, int]] = {}
    for i, k in enumerate(prefix.tolist()):
        start, count = runs.get(k, (i, 0))
        runs[k] = (start, count + 1)
    q = np.array(queries + keys[:5], dtype=np.uint64)
    for backend in (KERNELS, ARRAY_API):  # a table each: the CPU's slots take over its directory
        table = HashTable.build(prefix, xp)
        for _ in range(2):  # the slots built by the first probe answer the second
            starts, counts, total = table.lookup(q, backend)
            for k, s, c in zip(q.tolist(), starts.tolist(), counts.tolist()):
                assert (s, c) == runs.get(k, (0, 0))
            matched = sum(runs.get(k, (0, 0))[1] for k in q.tolist())
            assert total == matched if backend is KERNELS else total in (None, matched)


@given(
    st.integers(0, 2**64 - 64),
    st.lists(st.integers(0, 40), min_size=1, max_size=60),
    st.lists(st.integers(-3, 45), max_size=60),
)
def test_direct_address_index_agrees_with_the_directory(low, keys, queries):
    """Keys in a short range get the direct-address index on the CPU (not the hash table):
    the same first row and run length as the directory's binary search, 0 and 0 for a query
    outside the range (below its first key too, where the subtraction wraps) or between
    keys, and the run lengths' sum."""
    prefix = np.sort(np.array(keys, dtype=np.uint64)) + np.uint64(low)
    q = np.array([low + k for k in queries if 0 <= low + k < 2**64], dtype=np.uint64)
    table = HashTable.build(prefix, xp)
    want = HashTable.build(prefix, xp).lookup_directory(q, xp)
    for _ in range(2):  # the index built by the first probe answers the second
        starts, counts, total = table.lookup(q, KERNELS)
        assert table.offsets is not None and table.slots is None and table.keys is None
        assert starts.tolist() == want[0].tolist() and counts.tolist() == want[1].tolist()
        assert total == int(want[1].sum())


@given(
    st.integers(0, 2**32 - 41),
    st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0, 1, 7, 2**31, 2**32 - 1])), min_size=1, max_size=60),
    st.lists(st.tuples(st.integers(-2, 42), st.sampled_from([0, 1, 2, 7, 2**31, 2**32 - 1])), max_size=60),
    st.integers(1, 2),
)
def test_first_column_index_agrees_with_the_directory(low, keys, queries, width):
    """Two-column keys whose first columns lie in a short range get the direct-address index
    of the first column and a binary search within its run (over rows of one or two words):
    the same answers as the directory's binary search, for keys present, absent within a run,
    or with a first column outside the range."""
    tuples = sorted({*keys, (0, 0), (1, 2**32 - 1)})  # keys too spread for an index of their own
    rows = np.zeros((len(tuples), width), dtype=np.uint64)
    rows[:, 0] = [((low + a) << 32) | b for a, b in tuples]
    q = np.array([((low + a) << 32) | b for a, b in queries if 0 <= low + a < 2**32], dtype=np.uint64)
    table = HashTable.build(rows[:, 0], xp, rows)
    want = HashTable.build(rows[:, 0], xp).lookup_directory(q, xp)
    for _ in range(2):
        starts, counts, total = table.lookup(q, KERNELS)
        assert table.offsets is not None and table.shift == 32 and table.words is rows
        assert starts.tolist() == want[0].tolist() and counts.tolist() == want[1].tolist()
        assert total == int(want[1].sum())


@given(st.data())
def test_index_join_matches_nested_loop(data):
    """ranges on the first two key columns, narrowed by the rest (binary search in each run, the
    kernel and the array-API search CuPy runs alike), + expand_runs = the nested-loop equi-join."""
    arity = data.draw(st.integers(1, 5))
    key_len = data.draw(st.integers(0, arity))
    order = tuple(data.draw(st.permutations(range(arity))))
    inner = sorted(set(data.draw(rows_strategy(arity, max_size=60))))
    held = [tuple(t[c] for c in order[:key_len]) for t in inner]  # keys that match, most of them
    keys = st.sampled_from(held) | st.tuples(*[VALUES] * key_len) if held else st.tuples(*[VALUES] * key_len)
    outer_keys = data.draw(st.lists(keys, max_size=20))
    index = SortedIndex(order, sets.sort_unique(permute(to_rows(inner, arity), arity, order, xp), KERNELS))
    key_cols = [np.array([k[j] for k in outer_keys], dtype=np.uint32) for j in range(key_len)]
    starts, counts, total = index.ranges(
        probe_query(key_cols[:2], len(outer_keys), xp), len(key_cols[:2]), len(outer_keys), KERNELS
    )
    assert total == int(counts.sum())
    plain_starts, plain_counts = starts, counts
    for k in range(2, key_len):
        starts, counts, total = narrow(starts, counts, index.rows, k, key_cols[k], KERNELS)
        plain_starts, plain_counts, none = narrow(plain_starts, plain_counts, index.rows, k, key_cols[k], ARRAY_API)
        assert none is None and total == int(counts.sum())
        assert plain_starts[plain_counts > 0].tolist() == starts[counts > 0].tolist()
        assert plain_counts.tolist() == counts.tolist()
    outer, pos = expand_runs(starts, counts, KERNELS)
    plain = expand_runs(starts, counts, ARRAY_API)  # the search CuPy runs
    assert plain[0].tolist() == outer.tolist() and plain[1].tolist() == pos.tolist()
    got = sorted(zip(outer.tolist(), to_tuples(index.rows[pos], arity)))
    expected = sorted(
        (i, tuple(t[c] for c in order))
        for i, key in enumerate(outer_keys)
        for t in inner
        if tuple(t[c] for c in order[:key_len]) == key
    )
    assert got == expected


@given(st.data())
def test_relation_store_keeps_every_index_equal_to_the_set(data):
    arity = data.draw(st.integers(1, 4))
    orders = [tuple(data.draw(st.permutations(range(arity)))) for _ in range(2)]
    store = RelationStore(arity, KERNELS)
    for order in orders:
        store.index(order)
    seen: set[tuple[int, ...]] = set()
    for batch in data.draw(st.lists(rows_strategy(arity, 15), max_size=4)):
        new = store.subtract(sets.sort_unique(to_rows(batch, arity), KERNELS))
        store.add(new)
        assert set(to_tuples(store.delta, arity)) == set(batch) - seen
        seen |= set(batch)
        assert to_tuples(store.compact(), arity) == sorted(seen)
        if data.draw(st.booleans()):  # a stratum ended: what no later reader needs goes, and is rebuilt when asked
            kept = frozenset(data.draw(st.sets(st.sampled_from(orders))))
            before = store.nbytes
            store.release(kept)
            assert set(store.levels) <= kept | {store.canonical} and store.dense is None
            # No later stratum reads the delta: it goes, not kept alive by an empty view of it.
            assert store.delta.shape[0] == 0 and store.delta.base is None
            assert store.nbytes <= before and to_tuples(store.compact(), arity) == sorted(seen)
        for order in orders:
            idx = store.index(order)
            expected = sorted(tuple(t[c] for c in order) for t in seen)
            assert to_tuples(idx.rows, arity) == expected
            delta_idx = store.index(order, "delta")
            assert to_tuples(delta_idx.rows, arity) == sorted(tuple(t[c] for c in order) for t in to_tuples(store.delta, arity))


@given(st.data())
def test_join_parts_are_full_in_runs_even_when_a_nested_join_compacts(data):
    """RelationStore.parts: full in a column order as sorted, disjoint runs that together are
    the set, or one run when the outer table is large; a join nested in another may compact
    the store while the outer one still walks the parts it was given (the outer one lost its
    last runs once: a generated program found it)."""
    arity = data.draw(st.integers(1, 3))
    order = tuple(data.draw(st.permutations(range(arity))))
    store = RelationStore(arity, KERNELS)
    seen: set[tuple[int, ...]] = set()
    for batch in data.draw(st.lists(rows_strategy(arity, 12), max_size=6)):
        store.add(store.subtract(sets.sort_unique(to_rows(batch, arity), KERNELS)))
        seen |= set(batch)
        nested = data.draw(st.booleans())
        rows: list[tuple[int, ...]] = []
        for part in store.parts(order, "full", data.draw(st.integers(0, 40))):  # walked as _join does
            assert to_tuples(part.rows, arity) == sorted(to_tuples(part.rows, arity))
            rows += to_tuples(part.rows, arity)
            if nested:  # a join nested in this one, over a large table, compacts the runs
                assert len(store.parts(order, "full", 10**9)) == 1
        assert sorted(rows) == sorted(tuple(t[c] for c in order) for t in seen)
        assert len(rows) == len(set(rows))
    assert to_tuples(store.compact(), arity) == sorted(seen)


def test_join_parts_stay_runs_while_the_outer_table_is_small() -> None:
    """Deltas of a quarter or less of full stay runs of their own (a log-structured merge) that
    joins probe one by one; a large outer table gets them merged into one."""
    store = RelationStore(1, KERNELS)
    for start, n in ((0, 1000), (1000, 200), (1200, 40)):
        store.add(to_rows([(v,) for v in range(start, start + n)], 1))
    assert [len(p.rows) for p in store.parts((0,), "full", 10)] == [1000, 200, 40]
    assert [len(p.rows) for p in store.parts((0,), "full", 1000)] == [1240]
    store.add(to_rows([(v,) for v in range(1240, 1250)], 1))
    assert [len(p.rows) for p in store.parts((0,), "full", 0)] == [1240, 10]


def test_reading_full_for_a_checkpoint_merges_no_runs() -> None:
    """What a checkpoint writes (full's runs as they are) and what counts full (its size, its
    bytes) leave the runs alone: writing a checkpoint must not change what later iterations
    cost. Only compact() merges them, explicitly."""
    from dask_datalog.engine.execution.exchange import LocalExchange
    from dask_datalog.engine.execution.shard_store import ShardStore
    from dask_datalog.engine.frontend import load_program
    from dask_datalog.engine.plan import plan_program

    plan = plan_program(load_program(".decl r(x:number)\n"))
    shard = ShardStore(plan, KERNELS, LocalExchange())
    store = shard.stores["r"]
    for start, n in ((0, 1000), (1000, 200), (1200, 40)):
        store.add(to_rows([(v,) for v in range(start, start + n)], 1))
    before = [len(run) for run in store.runs]
    runs, delta = shard.checkpoint_rows()["r"]
    assert [len(run) for run in runs] == before == [1000, 200, 40] and len(delta) == 40
    assert len(store) == 1240 and shard.local_size("r") == 1240 and shard.held()["r"] > 0
    assert [len(run) for run in store.runs] == before
    assert len(store.compact()) == 1240 and [len(run) for run in store.runs] == [1240]


@given(st.data())
def test_novel_with_and_without_the_bitmap_equals_set_difference(data):
    """RelationStore.novel: produced rows (unsorted, duplicated, partly outside the bitmap's
    box) -> exactly the sorted rows not yet in full, iteration after iteration."""
    arity = data.draw(st.integers(1, 2))
    max_bits = data.draw(st.sampled_from([0, 64, 1 << 20]))
    small = st.tuples(*[st.integers(0, 9)] * arity)
    wide = st.tuples(*[VALUES] * arity)
    store = RelationStore(arity, KERNELS, max_dense_bits=max_bits)
    seen: set[tuple[int, ...]] = set()
    for batch in data.draw(st.lists(st.lists(st.one_of(small, small, wide), max_size=30), max_size=5)):
        got = store.novel(to_rows(batch, arity))
        assert to_tuples(got, arity) == sorted(set(batch) - seen)
        store.add(got)
        seen |= set(batch)
    assert to_tuples(store.compact(), arity) == sorted(seen)


@pytest.mark.parametrize("width", [1, 2])
def test_difference_over_many_rows_and_runs_is_the_set_difference(width: int) -> None:
    """Past PARALLEL_MIN rows ``rows_not_in_runs`` looks up parts of the rows on the OpenMP
    threads and makes what it keeps contiguous; past RUNS_MAX runs it subtracts them a group at
    a time. Both against NumPy's set difference, rows of one word and of two."""
    rng = np.random.default_rng(3)
    universe = np.unique(rng.integers(0, 1 << 22, size=(300_000, width), dtype=np.uint64), axis=0)
    taken = rng.random(universe.shape[0]) < 0.5
    owner = rng.integers(0, cpu_kernels.RUNS_MAX + 6, size=universe.shape[0])
    runs = [np.ascontiguousarray(universe[taken & (owner == r)]) for r in range(cpu_kernels.RUNS_MAX + 6)]
    new = np.ascontiguousarray(universe[rng.random(universe.shape[0]) < 0.7])
    expected = new[~np.isin(new.view(f"V{8 * width}").ravel(), universe[taken].view(f"V{8 * width}").ravel())]
    rows = new if width > 1 else new[:, 0]
    got = cpu_kernels.rows_not_in_runs(rows, [r if width > 1 else r[:, 0] for r in runs])
    assert np.array_equal(got.reshape(-1, width), expected)
    assert np.array_equal(sets.difference_all(new, runs, KERNELS), expected)


@pytest.mark.parametrize("n, values", [(10, 4), (2_000, 700), (300_000, 20_000), (1_000_000, 900_000)])
def test_distinct_estimate_is_within_a_few_percent_of_the_count(n: int, values: int) -> None:
    """The join order's fan-out (rows per distinct value of the bound columns) comes from a
    HyperLogLog sketch on the CPU: over runs together, one column or two, a few percent off
    at most (near exact for few values), where a wrong order of magnitude would mislead it."""
    rng = np.random.default_rng(n)
    a = rng.integers(0, values, n).astype(np.uint32)
    b = rng.integers(0, 30, n).astype(np.uint32)
    rows = pack([b, a, b], n, np)  # columns 1 and 2: a low half and a word's high half
    runs = [rows[: n // 3], rows[n // 3 :]]
    exact_one = len(np.unique(a))
    exact_two = len(np.unique(a.astype(np.uint64) << np.uint64(32) | b))
    one = cpu_kernels.distinct_estimate(runs, (half_of(1),))
    two = cpu_kernels.distinct_estimate(runs, (half_of(1), half_of(2)))
    tolerance = 0.01 if n <= 2_000 else 0.04
    assert abs(one - exact_one) <= tolerance * exact_one, (one, exact_one)
    assert abs(two - exact_two) <= tolerance * exact_two, (two, exact_two)
    assert cpu_kernels.distinct_estimate([rows[:0]], (half_of(0),)) == 0


def test_a_forked_child_runs_the_kernels_after_its_parent_ran_them_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked after the parent ran kernels on OpenMP's threads and a split sort on the
    helper thread has neither (libgomp's pool and the executor's thread stay with the parent):
    it runs every kernel on its own thread. Without that its first parallel kernel waited
    forever (seen: the child killed by its alarm)."""
    import os
    import signal

    monkeypatch.setattr(cpu_kernels, "THREADS", 2)
    rng = np.random.default_rng(0)
    words = rng.integers(0, 1 << 30, cpu_kernels.PARALLEL_SORT_MIN * 2, dtype=np.uint64)
    rows = np.unique(words).reshape(-1, 1)
    runs = [np.ascontiguousarray(rows[::2])]

    def kernels_right() -> bool:
        return np.array_equal(cpu_kernels.sort_distinct(words.copy()), rows[:, 0]) and np.array_equal(
            cpu_kernels.rows_not_in_runs(rows, runs), rows[1::2]
        )

    assert kernels_right()  # the parent's threads run
    child = os.fork()
    if child == 0:  # the child: exit 0 only when its kernels finished right
        signal.alarm(20)
        os._exit(0 if kernels_right() and cpu_kernels.THREADS == 1 else 1)
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


FORK_BEFORE_ANY_KERNEL = """
import os, signal, sys
import numpy as np
from dask_datalog.engine.storage import cpu_kernels
threads = cpu_kernels.THREADS
child = os.fork()
if child == 0:  # its parent ran no kernel: every thread is the child's
    signal.alarm(20)
    words = np.random.default_rng(0).integers(0, 1 << 30, cpu_kernels.PARALLEL_SORT_MIN * 4, dtype=np.uint64)
    rows = np.unique(words).reshape(-1, 1)
    right = np.array_equal(cpu_kernels.sort_distinct(words.copy()), rows[:, 0]) and np.array_equal(
        cpu_kernels.rows_not_in_runs(rows, [np.ascontiguousarray(rows[::2])]), rows[1::2]
    )
    os._exit(0 if right and cpu_kernels.THREADS == threads == 2 else 1)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_child_of_a_parent_that_ran_no_kernel_keeps_every_thread() -> None:
    """The resident process (cluster/cli/resident.py) imports the kernels and forks a child per
    run: a parent that never started OpenMP's threads or the sort's helper leaves its children
    both, and their kernels run on them (a fresh interpreter: this one has run kernels)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", FORK_BEFORE_ANY_KERNEL], env=env, timeout=60)
    assert done.returncode == 0


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 300, 1_000, 100_003])
def test_partition_below_splits_at_the_pivot_in_place(n: int) -> None:
    """The block partition that splits a large sort: every word below the pivot first, the
    count returned, the words themselves kept; pivots below, inside and above the values, and
    inputs ending inside a block, two blocks or a Hoare tail."""
    rng = np.random.default_rng(n)
    words = rng.integers(0, 1_000, n).astype(np.uint64)
    for pivot in (0, 1, 500, 999, 1_000, 5_000):
        split = words.copy()
        below = cpu_kernels._lib.partition_below(cpu_kernels._ptr(split), n, pivot)
        assert below == int(np.count_nonzero(words < pivot))
        assert bool(np.all(split[:below] < pivot)) and bool(np.all(split[below:] >= pivot))
        assert np.array_equal(np.sort(split), np.sort(words))


@pytest.mark.parametrize("values", [1, 3, 1_000, 1 << 40])
def test_sort_distinct_past_the_split_size_is_the_sorted_set(monkeypatch: pytest.MonkeyPatch, values: int) -> None:
    """Past PARALLEL_SORT_MIN words ``sort_distinct`` splits at a sampled median and sorts and
    deduplicates the halves on two threads (two taken here, whatever the machine has): the
    sorted distinct words, duplicates on both sides of the pivot and all-equal words included."""
    monkeypatch.setattr(cpu_kernels, "THREADS", 2)
    rng = np.random.default_rng(values)
    words = rng.integers(0, values, cpu_kernels.PARALLEL_SORT_MIN * 3, dtype=np.uint64)
    assert np.array_equal(cpu_kernels.sort_distinct(words.copy()), np.unique(words))
    with pytest.raises(ValueError, match="does not own"):
        cpu_kernels.sort_distinct(words[::2])


def test_bitmap_dedup_over_many_rows_keeps_each_new_row_once_in_arrival_order():
    """Past PARALLEL_MIN rows ``dense_novel`` reads parts of the rows on the OpenMP threads, then
    marks the unmarked ones serially: rows repeated within and across parts, rows outside the
    box and rows marked by an earlier call, each where the single pass would put it."""
    rng = np.random.default_rng(11)
    lo0, lo1, r0, r1 = 10, 20, 300, 400
    a, b = rng.integers(0, 320, 200_000), rng.integers(10, 430, 200_000)
    rows = (a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64)
    bits = np.zeros((r0 * r1 + 7) // 8, dtype=np.uint8)
    inside = (a >= lo0) & (a < lo0 + r0) & (b >= lo1) & (b < lo1 + r1)
    marked = rows[:5_000][inside[:5_000]]
    cpu_kernels.dense_mark(rows[:5_000], bits, lo0, lo1, r0, r1)
    fresh, outside = cpu_kernels.dense_novel(rows, bits, lo0, lo1, r0, r1)
    candidates = rows[inside & ~np.isin(rows, marked)]
    _, first = np.unique(candidates, return_index=True)
    assert np.array_equal(fresh, candidates[np.sort(first)])
    assert np.array_equal(outside, rows[~inside])
    assert cpu_kernels.dense_novel(rows, bits, lo0, lo1, r0, r1)[0].shape[0] == 0  # all marked now


def test_bitmap_built_only_when_it_pays_and_is_no_larger_than_full():
    """dense.PAYBACK and dense.HELD_BITS: a 100 x 100 box gets its bitmap once full holds
    enough tuples; a 2^13 x 2^13 box (8 MiB of bits) holding 300 k tuples (2.4 MB) does not."""
    grid = np.stack(np.meshgrid(np.arange(100), np.arange(100)), axis=-1).reshape(-1, 2)
    store = RelationStore(2, KERNELS)
    rows = to_rows([tuple(t) for t in grid.tolist()], 2)
    store.add(store.novel(rows))
    assert store.dense is None  # full was empty when it was considered
    assert store.novel(rows).shape[0] == 0
    assert store.dense is not None
    rng = np.random.default_rng(5)
    spread = np.unique(rng.integers(0, 1 << 13, size=(300_000, 2), dtype=np.uint32), axis=0)
    wide = RelationStore(2, KERNELS)
    packed = pack([spread[:, 0], spread[:, 1]], spread.shape[0], np)
    for part in np.array_split(packed, 3):
        wide.add(wide.novel(part))
    assert wide.dense is None and len(wide) == spread.shape[0]


def test_hash_table_spreads_keys_that_differ_only_in_their_high_word() -> None:
    """Two-column keys whose second column is constant (crdt's (counter, node) with one node):
    the slot must depend on the first column, or every key lands in one cluster of linear
    probing and a table of 10^5 keys takes seconds to build and probe."""
    n = 4096
    keys = (np.arange(n, dtype=np.uint64) << np.uint64(32)) | np.uint64(2**31 + 1)
    table = HashTable.build(keys, xp)
    starts, counts, _ = table.lookup(keys, KERNELS)
    assert table.slots is not None
    assert (starts == np.arange(n)).all() and (counts == 1).all()
    occupied = np.concatenate([[0], (table.slots[:, 1] != 0).astype(np.int8), [0]])  # slot = (key, start | count << 32)
    edges = np.flatnonzero(np.diff(occupied))
    longest = int((edges[1::2] - edges[0::2]).max())
    assert longest < 64, f"a probe cluster of {longest} slots for {n} keys"


def test_a_run_too_long_for_the_slots_is_probed_through_its_directory(monkeypatch) -> None:
    """Slots index rows in 32 bits: a run of HASH_ROWS_MAX rows or more keeps its sorted
    directory and is probed by binary search, with the same answers."""
    from dask_datalog.engine.storage import cpu_kernels

    prefix = np.repeat(np.arange(0, 50, 5, dtype=np.uint64), 3)
    queries = np.arange(0, 55, dtype=np.uint64)
    want = HashTable.build(prefix, xp).lookup(queries, KERNELS)
    monkeypatch.setattr(cpu_kernels, "HASH_ROWS_MAX", prefix.shape[0])
    table = HashTable.build(prefix, xp)
    got = table.lookup(queries, KERNELS)
    assert table.slots is None and all((g == w).all() for g, w in zip(got[:2], want[:2]))
    with pytest.raises(ValueError, match="a hash table over 31 rows: fewer than 30"):
        cpu_kernels.hash_build(table.keys, table.starts, table.counts + 1, 16)


def test_join_kernels_refuse_arrays_they_would_misread() -> None:
    """The join step's kernels take their arrays without ctypes' conversions: an array of the
    wrong element size, or a non-contiguous one, must raise rather than be read as bytes."""
    keys = np.array([1, 1, 2, 5 << 40], dtype=np.uint64)  # spread: a hash table
    table = HashTable.build(keys, xp)
    table.lookup(keys, KERNELS)  # builds the slots
    assert table.slots is not None
    out = np.empty(4, dtype=np.int64), np.empty(4, dtype=np.int64)
    assert _kernels.hash_ranges(table.slots, keys, *out) == 2 + 2 + 1 + 1
    with pytest.raises(TypeError):
        _kernels.hash_ranges(table.slots, keys.astype(np.uint32), *out)
    with pytest.raises(ValueError):
        _kernels.hash_ranges(table.slots, keys, out[0][:2], out[1])
    dense = HashTable.build(np.array([1, 1, 2, 5], dtype=np.uint64), xp)
    dense.lookup(keys, KERNELS)  # builds the direct-address index
    assert dense.offsets is not None
    assert _kernels.offset_ranges(dense.offsets, dense.low, 0, keys, *out) == 2 + 2 + 1 + 0
    with pytest.raises(TypeError):
        _kernels.offset_ranges(dense.offsets.astype(np.uint64), dense.low, 0, keys, *out)
    with pytest.raises(ValueError):
        _kernels.offset_ranges(dense.offsets, dense.low, 0, keys, out[0][:2], out[1])
    with pytest.raises(ValueError):
        _kernels.offset_ranges(dense.offsets, dense.low, 0, keys, *out, keys)  # rows must be (n, w)
    with pytest.raises(ValueError):
        _kernels.offset_ranges(dense.offsets, dense.low, 7, keys, *out)
    with pytest.raises(OverflowError):
        _kernels.offset_ranges(dense.offsets, -1, 0, keys, *out)
    outer = np.arange(6, dtype=np.uint32).reshape(3, 2)
    starts, counts = np.zeros(3, dtype=np.int64), np.ones(3, dtype=np.int64)
    halves = np.arange(4, dtype=np.uint32).reshape(2, 2)
    spec = np.array([[0, 1], [1, 0]], dtype=np.int64)
    table_out = np.empty((3, 2), dtype=np.uint32)
    _kernels.gather_join(outer, starts, counts, np.empty(3, dtype=np.int64), halves, spec, table_out)
    assert table_out.tolist() == [[1, 0], [3, 0], [5, 0]]
    with pytest.raises(ValueError):  # NumPy's refusal to export it as C-contiguous
        _kernels.gather_join(outer[:, ::-1], starts, counts, np.empty(3, dtype=np.int64), halves, spec, table_out)
    with pytest.raises(ValueError):
        _kernels.gather_join(outer, starts, counts, np.empty(3, dtype=np.int64), halves, spec, table_out[:, :1])
