"""``--backend`` chooses the array backend every engine test runs on: ``numpy`` (numba
kernels once they pay off, the default), ``numpy-xp`` (NumPy through the array-API path CuPy
takes) or ``cupy`` (on a GPU machine)."""

from __future__ import annotations

import pytest
from engine_modes import with_kernels

from dask_datalog.engine.backend import Backend


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        default="numpy",
        choices=("numpy", "numpy-xp", "cupy"),
        help="array backend for engine tests (default: numpy)",
    )


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--backend")


@pytest.fixture(scope="session")
def kernels_always(backend: str) -> Backend:
    """The ``--backend`` backend, driving the numba kernels on tiny inputs too when it is
    NumPy (they normally wait until a run is big)."""
    return with_kernels(backend, "always")


@pytest.fixture(scope="session")
def numpy_before_numba(backend: str) -> Backend:
    """The ``--backend`` backend, on NumPy's own formulation (as a process runs before numba
    pays off) when it is NumPy."""
    return with_kernels(backend, "never")
