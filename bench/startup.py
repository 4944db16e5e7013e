#!/usr/bin/env python3
"""The command's start-up: wall and CPU time of whole ``dask-datalog`` commands on inputs small
enough that nearly all of it is the interpreter, the imports and the per-run set-up.

Commands, each a fresh process: ``run`` of examples/reach.dl on its five edges, ``run`` of a
three-rule program on a handful of facts (both the default path: in this process), ``--help``,
and the floors beneath them (``python -c pass``, ``python -c "import numpy"``). With several
``--dask-datalog`` executables (e.g. two checkouts' virtual environments) every command runs on
each, alternating, so that the load of a shared machine falls on all alike. Each executable runs
every command once untimed first (it writes the byte code a later run reads, as an installed
package has it; PYTHONDONTWRITEBYTECODE is dropped from the commands' environment).

    .venv/bin/python bench/startup.py                                   # this checkout, 10 runs
    .venv/bin/python bench/startup.py --dask-datalog ../main/.venv/bin/dask-datalog \\
        --dask-datalog .venv/bin/dask-datalog --runs 20 --markdown      # before / after
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

NULLABLE_DL = """\
.decl null_edge(x: number, y: number)
.input null_edge
.decl edge(x: number, y: number)
.input edge
.decl null(x: number, y: number)
.decl reach(x: number)
null(x, y) :- null_edge(x, y).
null(x, y) :- null(x, w), edge(w, y).
reach(y) :- null(_, y).
.output reach
.printsize null
"""
NULLABLE_FACTS = {"null_edge": "1\t2\n5\t6\n", "edge": "2\t3\n3\t4\n4\t2\n6\t7\n"}


def commands(exe: Path, work: Path) -> dict[str, list[str]]:
    """The timed commands of one ``dask-datalog`` executable, by name."""
    python = str(exe.parent / "python")
    reach = common.REPO_ROOT / "examples"
    return {
        "run reach.dl (in process)": [
            str(exe),
            "run",
            str(reach / "reach.dl"),
            "-F",
            str(reach / "facts" / "reach"),
            "-D",
            str(work / "out"),
            "--quiet",
        ],
        "run 3-rule program (in process)": [
            str(exe),
            "run",
            str(work / "nullable.dl"),
            "-F",
            str(work),
            "-D",
            str(work / "out"),
            "--quiet",
        ],
        "--help": [str(exe), "--help"],
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import numpy'": [python, "-c", "import numpy"],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dask-datalog", type=Path, action="append", help="a dask-datalog executable (repeatable)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command (default: 10)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    exes = args.dask_datalog or [Path(sys.executable).parent / "dask-datalog"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        work = Path(tmp)
        (work / "nullable.dl").write_text(NULLABLE_DL)
        for name, text in NULLABLE_FACTS.items():
            (work / f"{name}.facts").write_text(text)
        runs = {(exe, name): argv for exe in exes for name, argv in commands(exe, work).items()}
        for argv in runs.values():
            timed(argv, env)  # untimed: byte code written, files in the page cache
        samples: dict[tuple[Path, str], list[tuple[float, float]]] = {key: [] for key in runs}
        for _ in range(args.runs):
            for key, argv in runs.items():
                samples[key].append(timed(argv, env))
    print("\n".join(common.machine_lines()) + f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    rows = []
    for (exe, name), values in samples.items():
        walls = sorted(w for w, _ in values)
        wall = f"{statistics.median(walls):.3f} ({walls[0]:.3f}-{walls[-1]:.3f})"
        rows.append([name, str(exe), wall, f"{statistics.median(c for _, c in values):.3f}"])
    headers = ["command", "executable", f"wall s, median of {args.runs} (min-max)", "CPU s, median"]
    print(common.format_table(headers, rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
