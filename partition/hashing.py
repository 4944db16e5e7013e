"""The owner of a tuple: which of ``n_shards`` shards holds it, from the hash of its key columns.

Every copy of a tuple must land on the same shard, whichever worker produced it and whether
that worker runs NumPy or CuPy, so the hash is plain uint64 arithmetic (xor, shift, wrapping
multiply) that both namespaces compute bit for bit. The exact formula, for key columns
``c[0] .. c[m-1]`` (encoded uint32 values, ``engine.values``), m >= 1:

    words    w[k] = (c[2k] << 32) | c[2k+1]      k = 0 .. ceil(m/2) - 1; c[m] = 0 when m is odd
             (the key packed exactly as ``engine.hisa.pack`` packs the columns)
    hash     h = SEED;  for each k:  h = fmix64(h ^ w[k])
    fmix64   z ^= z >> 30;  z *= 0xBF58476D1CE4E5B9
             z ^= z >> 27;  z *= 0x94D049BB133111EB
             z ^= z >> 31                                  (splitmix64's finaliser)
    owner    ((h >> 32) * n_shards) >> 32                  all arithmetic mod 2**64

with ``SEED = 0x243F6A8885A308D3``. The owner is the multiply-shift range reduction of the high
32 bits: unbiased for any shard count (a power of two or not) and reading the best-mixed bits,
where ``h % n`` would read the low bits only and cost a division. fmix64 is a bijection with
full avalanche, so dense or strided ids (graph node numbers, symbol ids) spread evenly. It also
shares nothing with the per-shard hash tables' slot function (``engine.hisa.hash_slots``: a
Fibonacci multiply of the raw key), so the keys one shard owns still fill its tables evenly.
"""

from __future__ import annotations

from typing import Any

from dask_datalog.engine.storage.hisa import pack, unpack

SEED = 0x243F6A8885A308D3  # pi's fractional bits: any odd constant, fixed forever
FMIX_MULT_1 = 0xBF58476D1CE4E5B9
FMIX_MULT_2 = 0x94D049BB133111EB
MAX_SHARDS = 2**31 - 1  # owners are int32


def shard_of(columns: list[Any], n_shards: int, xp: Any) -> Any:
    """Owner (int32 in [0, n_shards)) of each tuple whose key columns (uint32, in key order)
    are ``columns``. Non-key columns do not enter: relations and binding tables that share a
    key value share its owner, which is what lets a join run where its key lives."""
    if not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"n_shards must be in [1, {MAX_SHARDS}], got {n_shards}")
    h = key_hash(columns, xp)
    h >>= xp.uint64(32)
    h *= xp.uint64(n_shards)
    h >>= xp.uint64(32)
    return h.astype(xp.int32)


def key_hash(columns: list[Any], xp: Any) -> Any:
    """The uint64 hash ``h`` of the formula above, one per tuple."""
    if not columns:
        raise ValueError("a key needs at least one column")
    for c in columns:
        if c.dtype != xp.uint32 or c.ndim != 1:
            raise TypeError(f"key columns must be 1-d uint32 arrays, got {c.dtype} with {c.ndim} dims")
    n = columns[0].shape[0]
    words = pack(columns, n, xp)
    h = xp.full(n, SEED, dtype=xp.uint64)
    for k in range(words.shape[1]):
        h ^= words[:, k]
        _fmix64(h, xp)
    return h


def shard_of_rows(rows: Any, key_columns: tuple[int, ...], n_shards: int, xp: Any) -> Any:
    """``shard_of`` for packed (n, w) uint64 rows (``engine.hisa`` layout), keyed on the
    relation's columns ``key_columns`` in that order."""
    if rows.dtype != xp.uint64 or rows.ndim != 2:
        raise TypeError(f"rows must be (n, w) uint64 packed rows, got {rows.dtype} with {rows.ndim} dims")
    return shard_of([unpack(rows, j, xp) for j in key_columns], n_shards, xp)


def _fmix64(z: Any, xp: Any) -> None:
    """splitmix64's finaliser, in place (no temporaries beyond one shifted copy)."""
    z ^= z >> xp.uint64(30)
    z *= xp.uint64(FMIX_MULT_1)
    z ^= z >> xp.uint64(27)
    z *= xp.uint64(FMIX_MULT_2)
    z ^= z >> xp.uint64(31)
