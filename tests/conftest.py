"""``--backend`` chooses the array backend every engine test runs on: ``numpy`` (the
compiled kernels, the default), ``numpy-xp`` (NumPy through the array-API path CuPy
takes) or ``cupy`` (on a GPU machine)."""

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


# Modules whose time is mostly waiting (on slurmctld's 30-s passes, TCP timeouts, pip) or is one long test (Soufflé's suite): first,
# so that under `-n 2` their waiting overlaps the rest of the suite.
WAITING_FIRST = ("test_slurm.py", "test_multihost.py", "test_deploy_docker.py", "test_souffle_suite.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in WAITING_FIRST)
