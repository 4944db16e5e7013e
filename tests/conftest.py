"""``--backend`` chooses the array backend every engine test runs on: ``numpy`` (numba
kernels, the default), ``numpy-xp`` (NumPy through the array-API path CuPy takes) or
``cupy`` (on a GPU machine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_modes import numba_mode


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


@pytest.fixture
def kernels_always() -> Iterator[None]:
    """Drive the numba kernels on tiny inputs too (they normally wait until a run is big)."""
    with numba_mode(loaded=True):
        yield


@pytest.fixture
def numpy_before_numba() -> Iterator[None]:
    """NumPy's own formulation, as a process runs before numba pays off."""
    with numba_mode(loaded=False):
        yield
