"""``--backend`` chooses the array backend every engine test runs on: ``numpy`` (the
compiled kernels, the default), ``numpy-xp`` (NumPy through the array-API path CuPy
takes) or ``cupy`` (on a GPU machine)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# The program cache (engine/frontend/program_cache.py) of this test process: on, as users run,
# in a folder of its own rather than the user's ~/.cache (subprocesses inherit it).
_programs = tempfile.mkdtemp(prefix="dask-datalog-test-programs-")
os.environ["DASK_DATALOG_PROGRAM_CACHE"] = _programs
# Every command a test starts runs in its own process, whatever resident process the user keeps
# (cluster/cli/resident.py); tests/test_resident.py starts its own.
os.environ["DASK_DATALOG_RESIDENT"] = "off"
atexit.register(shutil.rmtree, _programs, ignore_errors=True)


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
