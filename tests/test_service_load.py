"""The load benchmark's logic (bench/service_load.py) in small: 4 clients, 40 jobs mixed (small
cases of Soufflé's tests in the service's process, a medium job on the cluster, bad programs
and bad facts) against a real ``dask-datalog serve``. Every job must reach a final state, every
SUCCEEDED job's outputs must be the one-shot run's, every bad job must FAIL with the run's
error, and jobs.sqlite must hold a record per job submitted. No time is asserted."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))  # the script imports its siblings
    try:
        yield _module("service_load")
    finally:
        sys.path.remove(str(BENCH))
        for name in ("service_load", "service_common", "common"):
            sys.modules.pop(name, None)


def test_every_job_of_a_mixed_load_ends_as_it_must_and_is_recorded(bench: ModuleType, tmp_path: Path) -> None:
    common = sys.modules["service_common"]
    if not (common.SUITE / "cases" / "INDEX.tsv").exists():
        pytest.skip(f"Soufflé's test suite is not beside the repository ({common.SUITE})")
    jobs = bench.plan(tmp_path, 40, seed=1, small_cases=6)
    kinds = Counter(j.kind for j in jobs)
    assert len(jobs) == 40 and kinds["small"] >= 20 and all(kinds[k] == 5 for k in ("medium", "bad program", "bad facts"))
    with common.served(tmp_path / "state", "--workers", "2") as service:
        report = bench.load(service.address, tmp_path / "state", jobs, clients=4)
        client = bench.ServiceClient(service.address, common.TOKEN)
        final = client.list()
        where = {o.kind: client.logs(o.job)["lines"][1] for o in report.outcomes if o.state == "SUCCEEDED"}
        client.close()
    assert report.problems == []
    assert [o.state for o in report.outcomes].count("SUCCEEDED") == kinds["small"] + kinds["medium"]
    assert len(final) == 40 and all(j["state"] in ("SUCCEEDED", "FAILED") for j in final)
    # Each way was taken: the small jobs in the service's process, the medium ones (2 MiB of facts) on the cluster.
    assert where == {"small": "running in the service's process (a small job)", "medium": "running on 2 workers"}
