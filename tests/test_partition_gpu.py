"""A tuple's owner must not depend on the backend: CuPy and NumPy give the same hash, owners
and buckets, bit for bit, on large random inputs. Runs only where CuPy sees a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from dask_datalog.engine.backend import cupy_usable
from dask_datalog.engine.storage.hisa import pack
from dask_datalog.partition.buckets import bucket, split
from dask_datalog.partition.hashing import key_hash, shard_of, shard_of_rows

pytestmark = pytest.mark.skipif(not cupy_usable(), reason="needs CuPy and a visible GPU")

N = 1_000_000


@pytest.fixture(scope="module")
def cp():  # type: ignore[no-untyped-def]
    import cupy

    return cupy


def random_columns(width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, 2**32, N, dtype=np.uint64).astype(np.uint32) for _ in range(width)]
    cols[0][:1000] = np.arange(1000, dtype=np.uint32)  # dense small ids, as graph nodes are
    return cols


@pytest.mark.parametrize("width", [1, 2, 3, 5])
@pytest.mark.parametrize("n_shards", [1, 3, 4, 64, 1000, 2**31 - 1])
def test_owner_is_the_same_on_cupy_and_numpy(cp, width: int, n_shards: int) -> None:  # type: ignore[no-untyped-def]
    cols = random_columns(width, width)
    on_gpu = [cp.asarray(c) for c in cols]
    assert np.array_equal(cp.asnumpy(key_hash(on_gpu, cp)), key_hash(cols, np))
    assert np.array_equal(cp.asnumpy(shard_of(on_gpu, n_shards, cp)), shard_of(cols, n_shards, np))
    rows = pack(cols, N, np)
    key = tuple(range(width))[::-1]
    assert np.array_equal(cp.asnumpy(shard_of_rows(cp.asarray(rows), key, n_shards, cp)), shard_of_rows(rows, key, n_shards, np))


@pytest.mark.parametrize("n_shards", [1, 4, 300, 70_000])
def test_buckets_are_the_same_on_cupy_and_numpy(cp, n_shards: int) -> None:  # type: ignore[no-untyped-def]
    cols = random_columns(2, 7)
    rows = pack(cols, N, np)
    owners = shard_of(cols[:1], n_shards, np)
    by_owner, offsets = bucket(rows, owners, n_shards, np)
    gpu_rows, gpu_offsets = bucket(cp.asarray(rows), cp.asarray(owners), n_shards, cp)
    assert np.array_equal(cp.asnumpy(gpu_rows), by_owner)
    assert np.array_equal(cp.asnumpy(gpu_offsets), offsets)
    assert [b.shape[0] for b in split(gpu_rows, gpu_offsets)] == np.diff(offsets).tolist()
