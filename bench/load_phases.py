#!/usr/bin/env python3
"""What loading a program costs before its first iteration, by phase: parse (lark and the
syntax tree), check (components, checker, strata, magic sets, user functors) and plan, in
CPU and wall milliseconds, for the first load in a fresh process and the median of the warm
ones after it. With ``--baseline VENV`` the same runs alternate with another checkout's
interpreter, side by side (the grammar's lark object is built before the timer in both).

    .venv/bin/python bench/load_phases.py PROGRAM.dl [PROGRAM.dl ...] --rounds 4 --baseline ../main/.venv
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

PHASES = ("parse", "check", "plan", "total")
WARM = 7  # warm loads a process times after its first


def measure(path: str) -> dict[str, dict[str, list[float]]]:
    """In this process: the first load's phases and the medians of ``WARM`` more."""
    from dask_datalog.engine import user_functors
    from dask_datalog.engine.frontend import components, magic
    from dask_datalog.engine.frontend.checker import check, check_counters, check_plans
    from dask_datalog.engine.frontend.parser import _lark, parse
    from dask_datalog.engine.frontend.strata import stratify
    from dask_datalog.engine.plan import plan_program

    text = Path(path).read_text(encoding="utf-8")
    _lark()

    def once() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        value: Any = None

        def timed(phase: str, step: Callable[[Any], Any]) -> None:
            nonlocal value
            cpu, wall = time.process_time(), time.perf_counter()
            value = step(value)
            times[phase] = [(time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3]

        def checked(items: Any) -> Any:
            statements = components.expand(items)
            program = check(statements, path)
            strata = stratify(program)
            check_plans(statements, strata)
            check_counters(strata)
            program = magic.transform(program)
            return user_functors.bind(program)

        timed("parse", lambda _: parse(text, path))
        timed("check", checked)
        timed("plan", plan_program)
        times["total"] = [sum(times[p][i] for p in PHASES[:-1]) for i in (0, 1)]
        return times

    first = once()
    warm = [once() for _ in range(WARM)]
    return {"first": first, "warm": {p: [statistics.median(w[p][i] for w in warm) for i in (0, 1)] for p in PHASES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("programs", nargs="+")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per program and build, alternating")
    ap.add_argument("--baseline", type=Path, help="another checkout's virtual environment, timed alternately")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.programs[0])))
        return
    builds = {"this": sys.executable} | ({"baseline": str(args.baseline / "bin" / "python")} if args.baseline else {})
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for _ in range(args.rounds):
        for program in args.programs:
            for build, python in builds.items():
                done = subprocess.run([python, __file__, "--child", program], capture_output=True, text=True, check=True)
                runs[program, build].append(json.loads(done.stdout))
    headers = ["program", "load", "phase"] + [f"{b} {unit}" for b in builds for unit in ("CPU ms", "wall ms")]
    rows = []
    for program in args.programs:
        for load in ("first", "warm"):
            for phase in PHASES:
                cells = [Path(program).stem, load, phase]
                for build in builds:
                    for i in (0, 1):
                        cells.append(f"{statistics.median(r[load][phase][i] for r in runs[program, build]):.1f}")
                rows.append(cells)
    print(common.format_table(headers, rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
