#!/usr/bin/env python3
"""The fixed cost of one semi-naive iteration: programs whose every iteration has a one-tuple
delta, so an iteration's time is nearly all bookkeeping, timed in process and on the embedded
Dask cluster.

Workloads (``--workloads``):

- ``chain``: Soufflé's shape (``a(0). b(x+1) :- a(x), x < N. a(x) :- b(x).``): the two rule
  versions take turns, one new tuple per iteration; N = iterations / 2.
- ``reach``: single-source reachability along a path graph of ``iterations`` edges (given as
  an array): one join with the edges and one new tuple per iteration.
- ``chain-big``, ``reach-big``: the same with the recursive relation (``a``, ``reach``) given
  ``--big`` tuples as input beforehand, none of which the chain reaches: full is large, the
  deltas stay one tuple, so an iteration that copied or rebuilt full would show here.

Each setting runs once untimed on a short chain (imports, kernels, the cluster's first
task), then once per ``--iterations`` value; the table gives the evaluation's seconds
(``total_s``, the slowest shard's: load and output excluded), milliseconds per iteration and,
in process, ``Program.run``'s CPU time per iteration (load included): on a shared machine the
figure other load disturbs least.

    .venv/bin/python bench/iteration_cost.py                                  # 10^3..10^5, in process and 2 workers
    .venv/bin/python bench/iteration_cost.py --iterations 1000000 --workers 0 --workloads chain
    .venv/bin/python bench/iteration_cost.py --markdown > table.md            # for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import common
import numpy as np

from dask_datalog.cluster import Program

CHAIN_DL = """\
.decl a(x:number)
.decl b(x:number)
{input_a}
a(0).
b(x+1) :- a(x), x >= 0, x < {n}.
a(x) :- b(x).
.output a
"""

REACH_DL = """\
.decl edge(x:number, y:number)
.decl reach(x:number)
.input edge
{input_reach}
reach(0).
reach(y) :- reach(x), edge(x, y).
.output reach
"""

WORKLOADS = ("chain", "reach", "chain-big", "reach-big")


def workload(name: str, iterations: int, big: int) -> tuple[Program, dict[str, Any]]:
    """The program and its input arrays for about ``iterations`` one-tuple iterations."""
    facts: dict[str, Any] = {}
    extra = -np.arange(1, big + 1, dtype=np.int64)[:, None]  # negative: out of the chain's reach
    if name.startswith("chain"):
        text = CHAIN_DL.format(n=max(1, iterations // 2), input_a=".input a" if name.endswith("big") else "")
        if name.endswith("big"):
            facts["a"] = extra
    else:
        text = REACH_DL.format(input_reach=".input reach" if name.endswith("big") else "")
        i = np.arange(iterations, dtype=np.int64)
        facts["edge"] = np.stack([i, i + 1], axis=1)
        if name.endswith("big"):
            facts["reach"] = extra
    return Program(text, filename=f"{name}.dl"), facts


@contextlib.contextmanager
def setting(workers: int) -> Iterator[Any]:
    """None in process, else a client of an embedded cluster of ``workers`` processes."""
    if workers == 0:
        yield None
        return
    from dask_datalog.cluster.runtime.connect import embedded_client

    with embedded_client(workers, "numpy") as client:
        yield client


def measure(name: str, iterations: int, big: int, client: Any) -> tuple[int, float, float, float]:
    """(iterations run, evaluation seconds, wall seconds of ``Program.run``, this process's CPU
    seconds in it: on a shared machine the in-process figure that other load disturbs least)."""
    program, facts = workload(name, iterations, big)
    t0, c0 = time.perf_counter(), time.process_time()
    result = program.run(facts=facts, backend="numpy", client=client)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = result.stats  # in process or combined over the workers: the slowest worker's time
    ran = sum(len(s["iterations"]) for s in stats["strata"])
    evaluation = stats["total_s"]
    result.close()
    return ran, evaluation, wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", default="1000,10000,100000", help="comma-separated iteration counts")
    ap.add_argument("--workloads", default="chain,reach,chain-big", help="comma-separated, of: " + ", ".join(WORKLOADS))
    ap.add_argument("--workers", default="0,2", help="comma-separated: 0 in process, k an embedded cluster of k processes")
    ap.add_argument("--big", type=int, default=1_000_000, help="tuples given beforehand to the *-big workloads")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    counts = [int(s) for s in args.iterations.split(",") if s.strip()]
    names = [s.strip() for s in args.workloads.split(",") if s.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}: expected " + ", ".join(WORKLOADS))
    rows: list[list[str]] = []
    for workers in (int(s) for s in args.workers.split(",") if s.strip()):
        where = "in process" if workers == 0 else f"{workers} workers"
        with setting(workers) as client:
            measure("chain", 100, 0, client)  # warm-up, untimed
            for name in names:
                for n in counts:
                    ran, evaluation, wall, cpu = measure(name, n, args.big, client)
                    common.log(f"{where} {name} {n}: {ran} iterations, {evaluation:.3f} s")
                    per_cpu = f"{cpu / ran * 1e3:.3f}" if client is None else "-"  # workers' CPU is elsewhere
                    rows.append(
                        [name, where, f"{ran:,}", f"{evaluation:.2f}", f"{wall:.2f}", f"{evaluation / ran * 1e3:.3f}", per_cpu]
                    )
    print("\n".join(f"- {line}" for line in common.machine_lines()))
    print(f"- big: {args.big:,} tuples given to the *-big workloads' recursive relation")
    print()
    headers = ["workload", "where", "iterations", "evaluation (s)", "Program.run (s)", "ms / iteration", "CPU ms / iteration"]
    print(common.format_table(headers, rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
