"""The distributed runtime on a GPU: a ``LocalCUDACluster`` (one worker per GPU), and two CPU
worker processes sharing one GPU through CuPy, against the single-shard NumPy engine. Runs only
where CuPy sees a GPU (and dask-cuda is installed for the first)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from distributed import Client, LocalCluster
from program_gen import generate_case
from test_distributed import EXAMPLE_NAMES, EXAMPLES, check_distributed, example, single_shard

from dask_datalog.engine.backend import cupy_usable

pytestmark = pytest.mark.skipif(not cupy_usable(), reason="needs CuPy and a visible GPU")


@pytest.fixture(scope="module", params=["cuda-cluster", "two-processes"])
def gpu_client(request: pytest.FixtureRequest) -> Iterator[Client]:
    if request.param == "cuda-cluster":
        dask_cuda = pytest.importorskip("dask_cuda")
        cluster = dask_cuda.LocalCUDACluster(n_workers=1, threads_per_worker=1, dashboard_address=":0")
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_examples_on_gpu_workers(gpu_client: Client, name: str) -> None:
    result = example(name).run(fact_dir=EXAMPLES / "facts" / name, backend="cupy", client=gpu_client)
    assert result.stats["backend"] == "cupy"
    for rel, tuples in single_shard(name).items():
        assert result.tuples(rel) == tuples, rel
    result.close()


@pytest.mark.parametrize("seed", range(0, 150, 5))
def test_random_programs_on_gpu_workers(gpu_client: Client, seed: int) -> None:
    check_distributed(generate_case(seed), gpu_client, "cupy")
