"""``--backend`` chooses the array backend every engine test runs on: ``numpy`` (numba
kernels, the default), ``numpy-xp`` (NumPy through the array-API path CuPy takes) or
``cupy`` (on a GPU machine)."""

from __future__ import annotations

import pytest


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
def kernels_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drive the numba kernels on tiny inputs too (they normally start at 4 M rows)."""
    from dask_datalog.engine import backend as backend_module

    monkeypatch.setattr(backend_module, "KERNEL_MIN_ROWS", 0)
