#!/usr/bin/env python3
"""The job service under load: `--clients` concurrent clients (each its own `ServiceClient`)
submit `--jobs` jobs between them to one `dask-datalog serve` (embedded cluster, its defaults),
each waiting for its job's end as `job submit --wait` does, then checking it.

The jobs, mixed in a seeded order:

- `small`: the small output cases of Soufflé's own tests (../shared/souffle-tests; they run in
  the service's process), outputs compared with the one-shot `dask-datalog run`'s;
- `medium`: REACH (examples/reach.dl) over 60,000 disjoint 3-edge chains uploaded (2 MiB of
  facts: they run on the cluster), 360,000 paths known, outputs compared with the CLI's;
- `bad program`: an undeclared relation, FAILED with the CLI's own one-line error;
- `bad facts`: a word in a number column of edge.facts, FAILED naming the file.

Checked: every job reaches a final state, every SUCCEEDED job's outputs are right, every bad job
FAILED as said, and the records in jobs.sqlite are as many as the jobs submitted. The service's
resident memory (its own process; its workers' apart) is sampled every `--sample-s` seconds.
Exit 1 when a check fails.

    .venv/bin/python bench/service_load.py                        # 20 clients, 500 jobs
    .venv/bin/python bench/service_load.py --clients 4 --jobs 40 --markdown
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common
import service_common as sc
from common import fmt_bytes, format_table, log

from dask_datalog.cluster.service.client import ServiceClient, ServiceError

REACH = common.REPO_ROOT / "examples" / "reach.dl"
CHAINS = 60_000  # 3-edge chains: 6 paths each, 3 iterations, about 2 MiB of facts
BAD_PROGRAM = ".decl a(x: number)\n.output a\na(x) :- b(x).\n"
KINDS = ("small", "medium", "bad program", "bad facts")


@dataclass(frozen=True)
class Job:
    """One job of the plan: what to submit and what its end must be."""

    kind: str
    program: Path
    facts: Path | None
    outputs: dict[str, list[str]] | None = None  # a SUCCEEDED job's, as the CLI wrote them
    error: str | None = None  # a FAILED job's error must be this (exactly) or contain ``names``
    names: str | None = None


@dataclass
class Outcome:
    kind: str
    job: str = ""  # its id
    state: str = "not submitted"
    right: bool = False
    seconds: float = 0.0
    why: str = ""


@dataclass
class Report:
    outcomes: list[Outcome]
    records: int  # rows in jobs.sqlite
    wall_s: float
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, jobs done, bytes)

    @property
    def problems(self) -> list[str]:
        found = [f"{o.kind}: {o.state}: {o.why}" for o in self.outcomes if not o.right]
        if self.records != len(self.outcomes):
            found.append(f"{self.records} records in jobs.sqlite for {len(self.outcomes)} jobs submitted")
        return found


def plan(work: Path, jobs: int, seed: int, small_cases: int) -> list[Job]:
    """``jobs`` jobs, a quarter of each of the medium and bad kinds and the rest small, in a
    seeded order; the CLI is run once per distinct job for what its end must be."""
    cases = sc.sample(sc.eligible_cases(), small_cases, seed)
    small = []
    for case in cases:
        _, got = sc.cli_run(case, work / "cli" / case.name, work / "cwd")
        if sc.passes(case, got):
            small.append(Job("small", case.program, case.facts, outputs=got))
    chains = work / "chains"
    chains.mkdir()
    (chains / "edge.facts").write_text(
        "".join(f"{4 * k}\t{4 * k + 1}\n{4 * k + 1}\t{4 * k + 2}\n{4 * k + 2}\t{4 * k + 3}\n" for k in range(CHAINS))
    )
    _, got = sc.cli_run(sc.Case("medium", REACH, chains), work / "cli" / "medium", work / "cwd")
    assert got is not None and len(got["path.csv"]) == 6 * CHAINS, "the one-shot run of the medium job is wrong"
    medium = Job("medium", REACH, chains, outputs=got)
    bad = work / "bad.dl"
    bad.write_text(BAD_PROGRAM)
    done = subprocess.run([sc.COMMAND, "run", "--quiet", str(bad)], cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    broken = work / "broken"
    broken.mkdir()
    (broken / "edge.facts").write_text("1\t2\nthree\t4\n")
    kinds = {
        "medium": medium,
        "bad program": Job("bad program", bad, None, error=done.stderr.strip()),
        "bad facts": Job("bad facts", REACH, broken, names="edge.facts"),
    }
    rng = random.Random(seed)
    order = [kinds[k] for k in ("medium", "bad program", "bad facts") for _ in range(jobs // 8)]
    order += [small[k % len(small)] for k in range(jobs - len(order))]
    rng.shuffle(order)
    return order


def check(jobs: ServiceClient, job: Job, record: dict) -> tuple[bool, str]:
    """Whether the job ended as it must, and why not."""
    if job.outputs is not None:
        if record["state"] != "SUCCEEDED":
            return False, record.get("error") or ""
        got = {
            Path(w["path"]).name: sorted(jobs.result(record["id"], relation).decode().splitlines())
            for relation, w in record["results"].items()
        }
        return got == job.outputs, "outputs differ from the one-shot run's"
    if record["state"] != "FAILED":
        return False, "a bad job did not fail"
    error = record.get("error") or ""
    if job.error is not None:
        return error == job.error, f"error {error!r}, the CLI says {job.error!r}"
    assert job.names is not None
    return job.names in error and "\n" not in error, f"error {error!r} does not name {job.names}"


def load(
    address: str, state: Path, jobs: list[Job], clients: int, rss: Callable[[], int] | None = None, sample_s: float = 0.5
) -> Report:
    """Run ``jobs`` from ``clients`` concurrent clients against the service at ``address``
    (whose state folder is ``state``); ``rss()``, if given, is sampled every ``sample_s``."""
    outcomes = [Outcome(j.kind) for j in jobs]
    todo = iter(range(len(jobs)))
    lock = threading.Lock()
    done = [0]
    samples: list[tuple[float, int, int]] = []
    running = threading.Event()
    running.set()

    def client() -> None:
        service = ServiceClient(address, sc.TOKEN, timeout=120)
        try:
            while True:
                with lock:
                    k = next(todo, None)
                if k is None:
                    return
                job, outcome = jobs[k], outcomes[k]
                t0 = time.perf_counter()
                outcome.state = "submitted"
                try:
                    outcome.job = service.submit(job.program, facts=job.facts)
                    record = service.wait(outcome.job)
                    outcome.seconds = time.perf_counter() - t0
                    outcome.state = record["state"]
                    outcome.right, outcome.why = check(service, job, record)
                except ServiceError as error:  # the service refused or went away: this job's problem, said
                    outcome.why = str(error)
                with lock:
                    done[0] += 1
        finally:
            service.close()

    t0 = time.perf_counter()

    def sampler() -> None:
        while running.is_set():
            samples.append((time.perf_counter() - t0, done[0], rss()))
            time.sleep(sample_s)

    watcher = threading.Thread(target=sampler, daemon=True) if rss is not None else None
    if watcher is not None:
        watcher.start()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    running.clear()
    if watcher is not None:
        watcher.join()
        samples.append((wall, done[0], rss()))
    with sqlite3.connect(f"file:{state / 'jobs.sqlite'}?mode=ro", uri=True) as db:
        records = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    return Report(outcomes, records, wall, samples)


def tables(report: Report, markdown: bool) -> str:
    rows = []
    for kind in KINDS:
        mine = [o for o in report.outcomes if o.kind == kind]
        if not mine:
            continue
        states = Counter(o.state for o in mine)
        seconds = [o.seconds for o in mine]
        rows.append(
            [
                kind,
                str(len(mine)),
                str(states["SUCCEEDED"]),
                str(states["FAILED"]),
                str(len(mine) - states["SUCCEEDED"] - states["FAILED"]),
                str(sum(o.right for o in mine)),
                f"{statistics.median(seconds):.3f}",
                f"{sc.percentile(seconds, 0.95):.3f}",
            ]
        )
    out = [format_table(["jobs", "n", "SUCCEEDED", "FAILED", "other", "as expected", "median s", "p95 s"], rows, markdown)]
    n = len(report.outcomes)
    out.append(f"\n{n} jobs in {report.wall_s:.1f} s ({n / report.wall_s:.1f} jobs/s); {report.records} records in jobs.sqlite")
    if report.rss:
        picks = sorted({round(q * (len(report.rss) - 1)) for q in (0, 0.1, 0.25, 0.5, 0.75, 1)})
        rows = [[f"{report.rss[i][0]:.1f}", str(report.rss[i][1]), fmt_bytes(report.rss[i][2])] for i in picks]
        out.append("\nthe service's resident memory (its own process) over the run")
        out.append(format_table(["s", "jobs done", "RSS"], rows, markdown))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs in all (default 500)")
    parser.add_argument("--small-cases", type=int, default=40, help="distinct small cases (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="the cases' draw and the order's seed (default 0)")
    parser.add_argument("--sample-s", type=float, default=0.5, help="seconds between memory samples (default 0.5)")
    parser.add_argument("--serve-args", default="", help="extra `serve` arguments, e.g. '--max-jobs 8'")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="service-load-") as tmp:
        work = Path(tmp)
        jobs = plan(work, args.jobs, args.seed, args.small_cases)
        log(f"{len(jobs)} jobs: {dict(Counter(j.kind for j in jobs))}; {args.clients} clients")
        with sc.served(work / "state", *args.serve_args.split()) as service:
            report = load(service.address, work / "state", jobs, args.clients, service.rss, args.sample_s)
    print("\n".join(common.machine_lines()))
    print(f"{args.clients} clients, {len(jobs)} jobs (seed {args.seed}), serve {args.serve_args or 'with its defaults'}")
    print(tables(report, args.markdown))
    for problem in report.problems:
        print(f"WRONG {problem}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
