#!/usr/bin/env python3
"""A worker killed at a random moment: seeded trials of the default command on an embedded
cluster (`dask-datalog run --workers 2`), each SIGKILLing one of its worker processes at a
moment drawn from the whole run, start-up included (the cluster starting, the inputs loading,
the fixpoint, the outputs being written). Every trial must end with the bytes of an undisturbed
run and a stderr holding the summary line alone.

Prints a table (seed, when, what was killed, exit status, wall time, outcome) and a summary;
exits 1 when any trial failed. The program reads both symbols and numbers (REACH and a join
on labels) over a chain long enough for a few hundred iterations, so a kill lands in the
fixpoint most of the time and in start-up or writing otherwise.

    .venv/bin/python bench/kill_trials.py                 # 20 trials
    .venv/bin/python bench/kill_trials.py --trials 50 --seed 7
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import format_table

PROGRAM = """
.decl edge(x:number, y:number)
.input edge
.decl label(x:number, name:symbol)
.input label
.decl path(x:number, y:number)
.output path
.decl named(a:symbol, b:symbol)
.output named
path(x, y) :- edge(x, y).
path(x, z) :- path(x, y), edge(y, z).
named(a, b) :- path(x, y), label(x, a), label(y, b), x + 50 = y.
"""


def write_inputs(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "edge.facts").write_text("".join(f"{i}\t{i + 1}\n" for i in range(n)))
    (directory / "label.facts").write_text("".join(f"{i}\tnode {i:05d}\n" for i in range(0, n + 1, 7)))


def command(program: Path, facts: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dask_datalog.cluster.cli",
        "run",
        str(program),
        "-F",
        str(facts),
        "-D",
        str(out),
        "--workers",
        "2",
    ]


def workers_of(pid: int) -> list[psutil.Process]:
    """The command's worker processes: its children that run a worker (spawned by the nannies
    the command's own process holds)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if "multiprocessing" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def trial(seed: int, program: Path, facts: Path, want: dict[str, bytes], span: float, root: Path) -> dict[str, object]:
    rng = random.Random(seed)
    delay = rng.uniform(0.0, span)
    out = root / f"out-{seed}"
    started = time.monotonic()
    process = subprocess.Popen(command(program, facts, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = "nothing (the run ended first)"
    while time.monotonic() - started < delay and process.poll() is None:
        time.sleep(0.005)
    victims = workers_of(process.pid)
    while not victims and process.poll() is None:  # before the workers exist: the first one to appear
        time.sleep(0.002)
        victims = workers_of(process.pid)
    if victims and process.poll() is None:
        victim = rng.choice(victims)
        try:
            victim.send_signal(signal.SIGKILL)
            killed = f"worker at {time.monotonic() - started:.2f} s"
        except psutil.Error:
            killed = "nothing (the worker had gone)"
    try:
        _, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        return {
            "seed": seed,
            "at": delay,
            "killed": killed,
            "status": "hung",
            "wall": time.monotonic() - started,
            "ok": False,
            "why": "no end within 300 s",
        }
    wall = time.monotonic() - started
    got = {p.name: p.read_bytes() for p in out.glob("*.csv")} if out.exists() else {}
    lines = err.strip().splitlines()
    problems = []
    if process.returncode != 0:
        problems.append(f"exit {process.returncode}: {err.strip()[-300:]}")
    if got != want:
        problems.append("outputs differ")
    if len(lines) != 1 or not lines[0].startswith("done: embedded cluster"):
        problems.append(f"stderr: {err.strip()[-500:]!r}")
    return {
        "seed": seed,
        "at": delay,
        "killed": killed,
        "status": process.returncode,
        "wall": wall,
        "ok": not problems,
        "why": "; ".join(problems),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="first seed (trial i uses seed + i)")
    parser.add_argument("--chain", type=int, default=1500, help="edges of the chain (iterations of the fixpoint)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kill-trials-") as tmp:
        root = Path(tmp)
        program = root / "mixed.dl"
        program.write_text(PROGRAM)
        facts = root / "facts"
        write_inputs(facts, args.chain)
        t0 = time.monotonic()
        clean = subprocess.run(command(program, facts, root / "want"), capture_output=True, text=True)
        span = time.monotonic() - t0
        if clean.returncode != 0:
            print(clean.stderr, file=sys.stderr)
            return 1
        want = {p.name: p.read_bytes() for p in (root / "want").glob("*.csv")}
        print(f"undisturbed run: {span:.2f} s; kills drawn from [0, {span:.2f}] s", file=sys.stderr)
        rows = []
        for i in range(args.trials):
            result = trial(args.seed + i, program, facts, want, span, root)
            rows.append(result)
            print(f"trial {i + 1}/{args.trials}: {'ok' if result['ok'] else 'FAILED ' + str(result['why'])}", file=sys.stderr)
        table = [
            [
                str(r["seed"]),
                f"{r['at']:.2f}",
                str(r["killed"]),
                str(r["status"]),
                f"{r['wall']:.2f}",
                "ok" if r["ok"] else str(r["why"]),
            ]
            for r in rows
        ]
        print(format_table(["seed", "kill at (s)", "killed", "exit", "wall (s)", "outcome"], table))
        failed = sum(not r["ok"] for r in rows)
        print(f"\n{args.trials - failed} of {args.trials} trials ended with the right outputs and a clean stderr")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
