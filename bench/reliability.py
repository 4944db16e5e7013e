#!/usr/bin/env python3
"""What checkpoints and recovery cost: the whole command (`dask-datalog run`, embedded cluster,
outputs written) on real graphs, in these modes, alternating, median of --repeat runs:

- `default`: no flags (the default schedule: a checkpoint at most every 30 s and never more
  than 10% of the run, into the embedded cluster's temporary directory);
- `every 1s`, `every iteration`: `--checkpoint-every 1` and `--checkpoint-every 0`;
- `killed, checkpoints`: `--checkpoint-every 1` and one worker SIGKILLed half-way through the
  fixpoint (`DASK_DATALOG_FAULT`): the retry resumes from the latest checkpoint;
- `killed, no checkpoint yet`: the default, killed the same way: the retry starts from the
  inputs.

Columns: wall time, its overhead against `default` (for the kills: the recovery's cost),
checkpoints written, their total time and size (rank 0's statistics), and where the retry
resumed. Needs the graphs of ../shared/data (or --data); says so and stops when they are absent.

    .venv/bin/python bench/reliability.py                       # REACH luxembourg_osm, SG cti, 2 workers
    .venv/bin/python bench/reliability.py --pairs reach:cti --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import fmt_seconds, format_table, log

PROGRAMS = {"reach": common.REPO_ROOT / "examples" / "reach.dl", "sg": common.REPO_ROOT / "examples" / "sg.dl"}
MODES = {
    "default": ([], False),
    "every 1s": (["--checkpoint-every", "1"], False),
    "every iteration": (["--checkpoint-every", "0"], False),
    "killed, checkpoints": (["--checkpoint-every", "1"], True),
    "killed, no checkpoint yet": ([], True),
}


def run_once(program: str, graph: Path, workers: int, flags: list[str], kill_at: int | None, work: Path) -> dict:
    facts = work / "facts"
    facts.mkdir(exist_ok=True)
    edge = facts / "edge.facts"
    if not edge.exists():
        edge.symlink_to(graph)
    out, stats = work / "out", work / "stats.json"
    env = dict(os.environ)
    marker = work / "killed"
    marker.unlink(missing_ok=True)
    if kill_at is not None:
        env["DASK_DATALOG_FAULT"] = f"iteration-{kill_at}:1:{marker}"
    command = [
        str(common.REPO_ROOT / ".venv" / "bin" / "dask-datalog"),
        "run",
        str(PROGRAMS[program]),
        "-F",
        str(facts),
        "-D",
        str(out),
        "--workers",
        str(workers),
        "--quiet",
        "--stats",
        str(stats),
        *flags,
    ]
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    s = json.loads(stats.read_text())
    if kill_at is not None and not marker.exists():
        raise SystemExit(f"the fault at iteration {kill_at} was not injected (fewer iterations?)")
    return {
        "wall": wall,
        "checkpoints": len(s["checkpoints"]),
        "checkpoint_s": sum(c["seconds"] for c in s["checkpoints"]),
        "checkpoint_bytes": max((c["bytes"] for c in s["checkpoints"]), default=0),
        "resumed": s.get("resumed_from"),
        "iterations": sum(len(st["iterations"]) for st in s["per_worker"][0]["strata"]),
        "recoveries": s["recoveries"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    parser.add_argument("--pairs", default="reach:luxembourg_osm,sg:cti", help="program:graph,...")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    missing = common.missing_data_message(args.data)
    if missing:
        print(missing)
        return 2
    for line in common.machine_lines():
        print(line)
    rows = []
    for pair in args.pairs.split(","):
        program, graph_name = pair.split(":")
        graph = common.graph_file(args.data, graph_name)
        if graph is None:
            print(f"{graph_name}: not in {args.data}; skipped")
            continue
        iterations = common.truth(graph_name, program).iterations or 2
        kill_at = iterations // 2
        results: dict[str, list[dict]] = {m: [] for m in MODES}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for r in range(args.repeat):  # alternating: every mode once per round
                for mode, (flags, kill) in MODES.items():
                    log(f"{program} {graph_name} {mode} round {r + 1}")
                    results[mode].append(run_once(program, graph, args.workers, flags, kill_at if kill else None, work))
        base = statistics.median(x["wall"] for x in results["default"])
        for mode, runs in results.items():
            wall = statistics.median(x["wall"] for x in runs)
            middle = sorted(runs, key=lambda x: x["wall"])[len(runs) // 2]
            resumed = middle["resumed"]
            rows.append(
                [
                    f"{program} {graph_name}",
                    mode,
                    fmt_seconds(wall),
                    f"{(wall - base) / base * 100:+.0f}%",
                    str(middle["checkpoints"]),
                    fmt_seconds(middle["checkpoint_s"]),
                    common.fmt_bytes(middle["checkpoint_bytes"]),
                    "-" if not MODES[mode][1] else (f"iteration {resumed[1]}" if resumed else "inputs"),
                ]
            )
    print()
    print(format_table(["workload", "mode", "wall", "vs default", "checkpoints", "their time", "size", "retry from"], rows))
    print(
        f"\n{args.workers} workers (embedded cluster), whole command with outputs, median of {args.repeat}; "
        "kills at half the fixpoint's iterations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
