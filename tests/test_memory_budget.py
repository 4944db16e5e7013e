"""A memory budget per worker (``--memory-limit``, else a share of the worker's limit): a join
whose output is many times the budget completes in chunks that fit it; relations that outgrow
it end the run within seconds with a message naming the relation, its size and the budget,
in process, on thread shards and on an embedded cluster.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_worker_loss import REACH, chain, cli

from dask_datalog.cluster import Program
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.errors import MemoryBudgetExceeded
from dask_datalog.engine.memory import chunk_rows_for
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.options import RunOptions
from dask_datalog.spmd.shard import Steering, evaluate_shard
from dask_datalog.spmd.threads import run_in_threads

BUDGET = 16 << 20
# The join of a and b on z has 2,000 x 8,000 = 16 M rows (192 MB of binding table: 12x the
# budget); its projection c has 2,000.
WIDE_JOIN = """
.decl a(x:number, z:number)
.decl b(z:number, y:number)
.decl c(x:number)
c(x) :- a(x, z), b(z, y), y >= 0.
"""


def wide_inputs() -> dict[str, np.ndarray]:
    a = np.stack([np.arange(2000), np.arange(2000) % 10], axis=1)
    b = np.stack([np.arange(80_000) % 10, np.arange(80_000)], axis=1)
    return {"a": a, "b": b}


def test_a_join_many_times_the_budget_completes_in_chunks_that_fit() -> None:
    result = Program(WIDE_JOIN).run(facts=wide_inputs(), backend="numpy", options=RunOptions(memory_limit=BUDGET))
    assert result.sizes["c"] == 2000
    chunk = chunk_rows_for(BUDGET, get_backend("numpy"))
    assert chunk * 12 * 8 <= BUDGET  # a chunk's binding table is an eighth of the budget at most
    peaks = [i["buffered_rows"] for s in result.stats["strata"] for i in s["iterations"]]
    assert max(peaks) <= 2 * chunk


def test_on_shards_too() -> None:
    program = Program(WIDE_JOIN).ir
    facts = wide_inputs()

    def shard(transport: Any) -> Any:
        mine = {name: rows[transport.rank :: 2] for name, rows in facts.items()}
        return evaluate_shard(transport, program, get_backend("numpy"), Inputs(facts=mine), Steering(memory_budget=BUDGET))

    shards = run_in_threads(2, shard)
    assert sum(s.stats["local_sizes"]["c"] for s in shards) == 2000


def test_relations_that_outgrow_the_budget_end_the_run_with_the_relation_named() -> None:
    t0 = time.monotonic()
    with pytest.raises(MemoryBudgetExceeded) as error:
        Program.from_file(REACH).run(facts={"edge": chain(3000)}, backend="numpy", options=RunOptions(memory_limit=2 << 20))
    assert time.monotonic() - t0 < 10
    message = str(error.value)
    assert re.fullmatch(
        r"error: out of memory budget: relation path holds \d+\.\d MiB in this process \(\d+\.\d MiB for all relations\), "
        r"over the budget of 2\.0 MiB; use more workers, a machine \(or GPU\) with more memory, or raise --memory-limit",
        message,
    ), message
    sizes = error.value.sizes
    assert sum(sizes.values()) > 2 << 20 and max(sizes, key=sizes.__getitem__) == "path"


@pytest.mark.parametrize("mode", [["--workers", "2"], ["--no-cluster"]])
def test_the_command_says_so_in_one_line(tmp_path: Path, mode: list[str]) -> None:
    np.savetxt(tmp_path / "edge.facts", chain(3000), fmt="%d", delimiter="\t")
    done = cli([REACH, "-F", tmp_path, "-D", tmp_path / "out", *mode, "--memory-limit", "2MiB"], timeout=60)
    assert done.returncode == 1, done.stderr
    where = r"on worker \d of 2" if mode[0] == "--workers" else "in this process"
    per = " per worker" if mode[0] == "--workers" else ""
    assert re.fullmatch(
        rf"error: out of memory budget: relation path holds \d+\.\d MiB {where} \(\d+\.\d MiB for all relations\), "
        rf"over the budget of 2\.0 MiB{per}; use more workers, a machine \(or GPU\) with more memory, or raise --memory-limit\n",
        done.stderr,
    ), done.stderr


def test_the_command_joins_in_chunks_under_its_budget(tmp_path: Path) -> None:
    program = tmp_path / "wide.dl"
    program.write_text(
        WIDE_JOIN.replace(".decl c(x:number)", ".decl c(x:number)\n.output c")
        .replace(".decl a(x:number, z:number)", ".decl a(x:number, z:number)\n.input a")
        .replace(".decl b(z:number, y:number)", ".decl b(z:number, y:number)\n.input b")
    )
    for name, rows in wide_inputs().items():
        np.savetxt(tmp_path / f"{name}.facts", rows, fmt="%d", delimiter="\t")
    done = cli([program, "-F", tmp_path, "-D", tmp_path / "out", "--workers", "2", "--memory-limit", "16MiB"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "out" / "c.csv").read_text().splitlines()) == 2000


@pytest.mark.parametrize("bad", ["lots", "-5MB", "0"])
def test_a_bad_memory_limit_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    done = cli([REACH, "-F", tmp_path, "--no-cluster", f"--memory-limit={bad}"])
    assert done.returncode == 2
    assert "--memory-limit" in done.stderr and "Traceback" not in done.stderr


def test_a_slow_sum_of_the_relations_does_not_leave_the_run_unchecked() -> None:
    """check() sums what the relations hold at most every 1% of the run's time, but at least
    every MEASURE_AT_LEAST_S, and counts the sum's own CPU time only: a sum that took 20 ms of
    wall time on a loaded machine (the thread descheduled, or a slow first one) put the next
    check 2 s away, and a SLURM job's 1.5 s REACH outgrew its budget unchecked."""
    from dask_datalog.engine import checkpoint

    sizes = {"r": 0}

    def held() -> dict[str, int]:
        time.sleep(0.05)  # wall time, not this thread's CPU: a descheduled sum
        return dict(sizes)

    control = checkpoint.ShardControl(0, 1, lambda x: [x], None, lambda: ({}, {}, None), lambda: 0.0, memory_budget=100)  # type: ignore[arg-type]
    control.check(held)  # sums (nothing held yet) and notes what it cost
    assert control.measure_cost < 0.01
    sizes["r"] = 1000
    control.measure_cost = 10.0  # even a sum that really cost 10 s of CPU waits no longer than the bound
    deadline = time.monotonic() + 10 * checkpoint.MEASURE_AT_LEAST_S
    with pytest.raises(MemoryBudgetExceeded):
        while time.monotonic() < deadline:
            control.check(held)
            time.sleep(0.01)
