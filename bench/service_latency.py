#!/usr/bin/env python3
"""Warm latency of the job service against the one-shot CLI and Soufflé's interpreter, on tiny
jobs: the small output cases of Soufflé's own tests (../shared/souffle-tests).

A `dask-datalog serve` is started as users start it (embedded cluster, its default workers).
Each round takes every case in turn, and for each runs, in a rotating order:

- `service`: submit through `ServiceClient` (facts uploaded) and wait for the end, as `job
  submit --wait` does; the time is from the submit call to the final record in hand;
- `run`: the one-shot `dask-datalog run --quiet PROG -F FACTS -D OUT`, a fresh process;
- `souffle`: Soufflé 2.5's interpreter, `souffle PROG -F FACTS -D OUT`, a fresh process.

Every job's outputs are downloaded and compared with the CLI's (and both with Soufflé's expected
files); a mismatch is reported and fails the script (exit 1). Then throughput: `--clients`
threads, each its own `ServiceClient`, submit-and-wait the cases round-robin, `--jobs` in all.

    .venv/bin/python bench/service_latency.py                    # 20 cases by seed 0, 3 rounds
    .venv/bin/python bench/service_latency.py --cases 40 --seed 7 --rounds 5 --clients 1,4,8 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common
import service_common as sc
from common import format_table, log

from dask_datalog.cluster.service.client import ServiceClient

SOUFFLE = common.REPO_ROOT.parent / "shared" / "peers" / "souffle-2.5" / "bin" / "souffle"


def service_job(jobs: ServiceClient, case: sc.Case) -> tuple[float, dict[str, str]]:
    """Submit and wait: the time, and the final record."""
    t0 = time.perf_counter()
    job = jobs.submit(case.program, facts=case.facts)
    record = jobs.wait(job)
    return time.perf_counter() - t0, record


def job_outputs(jobs: ServiceClient, record: dict) -> dict[str, list[str]] | None:
    if record["state"] != "SUCCEEDED":
        return None
    return {
        Path(written["path"]).name: sorted(jobs.result(record["id"], relation).decode().splitlines())
        for relation, written in record["results"].items()
    }


def souffle_run(case: sc.Case, out: Path, cwd: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    command = [str(SOUFFLE), str(case.program), "-F", str(case.facts or cwd), "-D", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"souffle failed on {case.name}: {done.stderr.decode(errors='replace')[-500:]}")
    return wall


def throughput(address: str, cases: list[sc.Case], clients: int, total: int) -> tuple[float, int]:
    """Jobs per second with ``clients`` concurrent submit-and-wait loops, ``total`` jobs in all;
    and how many did not succeed."""
    counter = iter(range(total))
    lock = threading.Lock()
    failed = [0]

    def loop() -> None:
        jobs = ServiceClient(address, sc.TOKEN)
        try:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                _, record = service_job(jobs, cases[k % len(cases)])
                if record["state"] != "SUCCEEDED":
                    with lock:
                        failed[0] += 1
        finally:
            jobs.close()

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total / (time.perf_counter() - t0), failed[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20, help="cases drawn from the eligible ones (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    parser.add_argument("--rounds", type=int, default=3, help="times each case runs each way (default 3)")
    parser.add_argument("--clients", default="1,4", help="concurrent clients for throughput, comma-separated (default 1,4)")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per throughput measurement (default 100)")
    parser.add_argument("--serve-args", default="", help="extra `serve` arguments, e.g. '--workers 1'")
    parser.add_argument("--no-souffle", action="store_true", help="leave Soufflé out")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    args = parser.parse_args()

    eligible = sc.eligible_cases()
    cases = sc.sample(eligible, args.cases, args.seed)
    ways = ["service", "run"] + ([] if args.no_souffle or not SOUFFLE.exists() else ["souffle"])
    log(f"{len(cases)} of {len(eligible)} eligible cases (seed {args.seed}); ways: {', '.join(ways)}")
    times: dict[str, list[float]] = {w: [] for w in ways}
    wrong: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="service-latency-") as tmp,
        sc.served(Path(tmp) / "state", *args.serve_args.split()) as service,
    ):
        work = Path(tmp)
        jobs = ServiceClient(service.address, sc.TOKEN)
        service_job(jobs, cases[0])  # the first job imports what the next ones find warm
        kept = []
        for case in cases:  # the CLI's outputs once, to compare every job with; cases it fails are left out
            _, cli = sc.cli_run(case, work / "cli" / case.name, work / "cwd")
            if sc.passes(case, cli):
                kept.append((case, cli))
            else:
                log(f"left out {case.name}: the one-shot run does not give Soufflé's expected outputs")
        for r in range(args.rounds):
            for k, (case, cli) in enumerate(kept):
                order = ways[(r + k) % len(ways) :] + ways[: (r + k) % len(ways)]
                for way in order:
                    if way == "service":
                        wall, record = service_job(jobs, case)
                        got = job_outputs(jobs, record)
                        if got != cli:
                            wrong.append(f"{case.name}: job {record['id']} {record['state']} {record.get('error') or ''}")
                    elif way == "run":
                        wall, _ = sc.cli_run(case, work / "run" / f"{case.name}-{r}", work / "cwd")
                    else:
                        wall = souffle_run(case, work / "souffle" / f"{case.name}-{r}", work / "cwd")
                    times[way].append(wall)
            log(f"round {r + 1}/{args.rounds} done")
        rates = []
        for clients in (int(c) for c in args.clients.split(",")):
            rate, failed = throughput(service.address, [c for c, _ in kept], clients, args.jobs)
            rates.append((clients, rate, failed))
        jobs.close()

    print("\n".join(common.machine_lines()))
    print(f"{len(kept)} cases x {args.rounds} rounds (seed {args.seed}); ms from start to outputs written")
    rows = [
        [way, f"{1000 * statistics.median(t):.1f}", f"{1000 * sc.percentile(t, 0.95):.1f}", f"{1000 * min(t):.1f}", str(len(t))]
        for way, t in times.items()
    ]
    print(format_table(["way", "median ms", "p95 ms", "min ms", "runs"], rows, args.markdown))
    print()
    rows = [[str(c), f"{rate:.1f}", str(args.jobs), str(failed)] for c, rate, failed in rates]
    print(format_table(["clients", "jobs/s", "jobs", "not SUCCEEDED"], rows, args.markdown))
    for line in wrong:
        print(f"WRONG {line}")
    return 1 if wrong or any(failed for *_, failed in rates) else 0


if __name__ == "__main__":
    sys.exit(main())
