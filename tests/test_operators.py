"""The join's chunking (``Operators.chunks``): the outer row ranges a join materialises one at a
time, held to what a join must produce and to the bound it keeps; and the pieces of the outer
table it probes at a time (``Operators.pieces``)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dask_datalog.engine import memory
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.execution.bindings import Bindings
from dask_datalog.engine.execution.operators import Operators


def _operators(chunk_rows: int) -> Operators:
    # chunks reads only the backend and the bound; nothing here runs a step
    return Operators(get_backend("numpy"), None, None, None, chunk_rows)  # type: ignore[arg-type]


@given(st.lists(st.integers(0, 6), max_size=40), st.integers(1, 12), st.booleans())
def test_chunks_cover_every_match_within_the_bound(counts: list[int], chunk_rows: int, counted: bool) -> None:
    """Every outer row with a match is in exactly one range, in order; each range's row count
    is its matches' sum, never 0 (an empty join gathers nothing), and at most ``chunk_rows``
    unless the range is one row; the sum handed in (as the probe kernel counts it) or not
    gives the same ranges."""
    array = np.array(counts, dtype=np.int64)
    chunks = list(_operators(chunk_rows).chunks(array, sum(counts) if counted else None))
    covered = [i for lo, hi, _ in chunks for i in range(lo, hi)]
    assert covered == sorted(set(covered))
    assert {i for i, c in enumerate(counts) if c} <= set(covered)
    for lo, hi, rows in chunks:
        assert rows == sum(counts[lo:hi]) > 0
        assert rows <= chunk_rows or hi - lo == 1
    assert sum(rows for _, _, rows in chunks) == sum(counts)


@given(st.integers(0, 50), st.integers(1, 40))
def test_pieces_are_views_that_cover_the_outer_table_in_order(n: int, chunk_rows: int) -> None:
    """A join probes its outer table ``probe_rows`` rows at a time (a nested join's outer is a
    whole chunk of the one before it): the pieces are the table's rows in order, each within
    the bound, views rather than copies."""
    ops = _operators(chunk_rows)
    b = Bindings(np.arange(2 * n, dtype=np.uint32).reshape(n, 2), ("x", "y"))
    pieces = list(ops.pieces(b))
    assert all(0 < p.n <= ops.probe_rows and p.names == b.names for p in pieces) or n == 0
    assert all(np.shares_memory(p.table, b.table) for p in pieces if p.n)
    joined = np.concatenate([p.table for p in pieces]) if pieces else b.table
    assert np.array_equal(joined, b.table)
    assert ops.probe_rows == max(1, chunk_rows // memory.PROBE_SHARE)
