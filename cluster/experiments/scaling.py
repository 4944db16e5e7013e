"""Scaling experiments (``dask-datalog scale``): one program timed on several worker counts,
one CSV row per timed run, a summary per worker count.

Strong scaling keeps the input and adds workers; weak scaling grows a generated input with the
workers (``generate.weak``). Each worker count gets its own embedded cluster
(``runtime.start_cluster``), closed before the next starts; 0 workers is the run in this
process, the baseline the CLI's ``run`` prefers on one machine. An external cluster
(``scheduler_file``) is measured as it is: ``Program.run(client=...)`` puts one shard on every
worker of the client's cluster and cannot be limited to some of them.

Every cluster first does one untimed warm-up run of the same program on the same input (worker
start-up, imports, kernel compilation, the page cache of the fact files), then ``repeat`` timed
runs: each is one ``Program.run()`` as the client sees it. Runs take no checkpoints and have no
retries (a run that silently recovered from a lost worker would be a wrong measurement).

Phase columns are seconds per worker, averaged over the workers, each worker's summed over
iterations (``Result.stats``): join, dedup, difference, merge; send and wait are the worker's
collectives (loading's included). An exchange inside a rule's pipeline counts in join too.
``coordination_s`` is the longest any worker waited for its peers. Efficiency is against the
smallest positive worker count n1 measured (normally 1), by the median of its wall times t1:
strong n1*t1 / (n*t), weak t1 / t; none for the in-process runs.

Plotting is in ``scaling_plots`` (matplotlib), imported only when plots are asked for.
"""

from __future__ import annotations

import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dask_datalog.cluster.api import Program
from dask_datalog.cluster.experiments import generate
from dask_datalog.engine.execution.phases import PHASES
from dask_datalog.spmd.options import RunOptions

IN_PROCESS, EMBEDDED, CLUSTER = "in process", "embedded", "cluster"
STRONG, WEAK = "strong", "weak"
RUNS_CSV = "runs.csv"
EXCHANGE = ("send", "wait")
MEASURE = RunOptions(retries=0)  # no checkpoints, no retries

Log = Callable[[str], None]


@dataclass(frozen=True)
class Experiment:
    """What ``scale`` measures. The input is ``fact_dir`` or, when ``gen`` names a generator,
    ``gen_params`` generated with ``seed`` (grown with the workers when ``scaling`` is weak).
    ``workers``: counts to measure, 0 meaning in this process; ignored with
    ``scheduler_file``, whose cluster is measured at its size."""

    program: Path
    out: Path
    workers: tuple[int, ...] = (1, 2, 4)
    repeat: int = 3
    backend: str = "auto"
    scaling: str = STRONG
    fact_dir: Path | None = None
    gen: str | None = None
    gen_params: dict[str, generate.Value] = field(default_factory=dict)
    seed: int = 0
    scheduler_file: Path | None = None


@dataclass(frozen=True)
class Run:
    """One timed run: a row of runs.csv (with its efficiency, computed over all rows)."""

    program: str
    input: str
    scaling: str
    mode: str
    workers: int
    backend: str
    device: str
    repeat: int
    wall_s: float
    eval_s: float
    load_s: float
    iterations: int
    tuples: int
    bytes_exchanged: int
    join_s: float
    dedup_s: float
    difference_s: float
    merge_s: float
    send_s: float
    wait_s: float
    coordination_s: float


COLUMNS = (*(f.name for f in fields(Run)), "efficiency")
STACKED = ("load", *PHASES, *EXCHANGE)  # the phase columns a bar stacks, "other" on top


@dataclass(frozen=True)
class Summary:
    """One worker count's runs: wall time median and spread, efficiency by the medians, and
    the median of each stacked phase (``other``: the wall time none of them explains)."""

    workers: int
    mode: str
    runs: int
    median_s: float
    min_s: float
    max_s: float
    efficiency: float | None
    phases: dict[str, float]
    bytes_exchanged: int
    iterations: int
    tuples: int


def run_from_stats(stats: dict[str, Any], sizes: dict[str, int], wall: float, **where: Any) -> Run:
    """A row from one run's ``Result.stats`` (one worker's statistics for a run in process)."""
    workers = stats.get("per_worker", [stats])
    exchange = [w.get("exchange", {}) for w in workers]
    return Run(
        **where,
        backend=str(stats["backend"]),
        wall_s=round(wall, 6),
        eval_s=float(stats["total_s"]),
        load_s=_mean(float(w["load_s"]) for w in workers),
        iterations=max(sum(len(s["iterations"]) for s in w["strata"]) for w in workers),
        tuples=sum(sizes.values()),
        bytes_exchanged=int(stats.get("bytes_exchanged", 0)),
        join_s=_mean(_summed(w, "join") for w in workers),
        dedup_s=_mean(_summed(w, "dedup") for w in workers),
        difference_s=_mean(_summed(w, "difference") for w in workers),
        merge_s=_mean(_summed(w, "merge") for w in workers),
        send_s=_mean(float(e.get("send_s", 0.0)) for e in exchange),
        wait_s=_mean(float(e.get("wait_s", 0.0)) for e in exchange),
        coordination_s=float(stats.get("coordination_s", 0.0)),
    )


def _mean(values: Iterable[float]) -> float:
    return round(statistics.fmean(values), 6)


def _summed(worker: dict[str, Any], phase: str) -> float:
    return sum(it.get(phase, 0.0) for s in worker["strata"] for it in s["iterations"])


def baseline(runs: Sequence[Run]) -> tuple[int, float] | None:
    """(n1, t1): the smallest positive worker count and the median of its wall times."""
    counts = [r.workers for r in runs if r.workers > 0]
    if not counts:
        return None
    n1 = min(counts)
    return n1, statistics.median(r.wall_s for r in runs if r.workers == n1)


def efficiency(workers: int, wall: float, base: tuple[int, float] | None, scaling: str) -> float | None:
    """Strong: n1*t1 / (n*t); weak: t1 / t (1 is perfect); None in process or without a base."""
    if base is None or workers == 0 or wall <= 0:
        return None
    n1, t1 = base
    return t1 / wall if scaling == WEAK else n1 * t1 / (workers * wall)


def write_csv(path: Path, runs: Sequence[Run]) -> None:
    """runs.csv: every run with its efficiency (empty for in-process rows)."""
    base = baseline(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in runs:
            e = efficiency(r.workers, r.wall_s, base, r.scaling)
            writer.writerow([*asdict(r).values(), "" if e is None else round(e, 6)])


def summarize(runs: Sequence[Run]) -> list[Summary]:
    """One summary per worker count, in increasing order (0, in process, first)."""
    base = baseline(runs)
    out = []
    for n in sorted({r.workers for r in runs}):
        mine = [r for r in runs if r.workers == n]
        walls = [r.wall_s for r in mine]
        phases = {p: statistics.median(getattr(r, f"{p}_s") for r in mine) for p in STACKED}
        median = statistics.median(walls)
        phases["other"] = max(0.0, median - sum(phases.values()))
        out.append(
            Summary(
                workers=n,
                mode=mine[0].mode,
                runs=len(mine),
                median_s=median,
                min_s=min(walls),
                max_s=max(walls),
                efficiency=efficiency(n, median, base, mine[0].scaling),
                phases=phases,
                bytes_exchanged=int(statistics.median(r.bytes_exchanged for r in mine)),
                iterations=max(r.iterations for r in mine),
                tuples=mine[0].tuples,
            )
        )
    return out


def format_table(summaries: Sequence[Summary]) -> str:
    """The summary as aligned text: medians and spread (min-max) per worker count."""
    header = ("workers", "runs", "wall median (s)", "min-max (s)", "efficiency", "exchanged (MiB)", "iterations", "tuples")
    rows = [
        (
            "0 (in process)" if s.workers == 0 else str(s.workers),
            str(s.runs),
            f"{s.median_s:.3f}",
            f"{s.min_s:.3f}-{s.max_s:.3f}",
            "-" if s.efficiency is None else f"{s.efficiency:.2f}",
            f"{s.bytes_exchanged / 2**20:.1f}",
            str(s.iterations),
            f"{s.tuples:,}",
        )
        for s in summaries
    ]
    widths = [max(len(line[j]) for line in (header, *rows)) for j in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in (header, *rows))


def title(runs: Sequence[Run]) -> str:
    """What was measured, in one line: program, input (first and last when it grew), backend, device."""
    first, last = runs[0], runs[-1]
    data = first.input if first.input == last.input else f"{first.input} ... {last.input}"
    return f"{Path(first.program).name} on {data}; {last.backend} on {last.device}"


def inconsistent(runs: Sequence[Run]) -> list[str]:
    """Inputs on which runs derived different numbers of tuples (a wrong result somewhere)."""
    found: dict[str, set[int]] = {}
    for r in runs:
        found.setdefault(r.input, set()).add(r.tuples)
    return [f"{name}: {', '.join(f'{t:,}' for t in sorted(totals))} tuples" for name, totals in found.items() if len(totals) > 1]


def device_description(backend: str) -> str:
    """What a run's backend ran on, asked where it ran: the GPU's name, or the CPU's model
    and the cores this process may use."""
    if backend == "cupy":
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_cpu_model()} ({cores} cores)"


def _cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.machine()


def run_experiment(exp: Experiment, program: Program, log: Log) -> list[Run]:
    """Every timed run of ``program`` (read from ``exp.program``), runs.csv rewritten in
    ``exp.out`` after each worker count (an interrupted experiment keeps what it measured)."""
    runs: list[Run] = []
    exp.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        external = stack.enter_context(_external(exp.scheduler_file)) if exp.scheduler_file is not None else None
        # Generated inputs go under ``out``, removed at the end: the workers of an external
        # cluster must read them, and ``out`` is likelier than /tmp to be on a shared file system.
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".inputs-", dir=exp.out)))
        counts = (len(external.ncores()),) if external is not None else exp.workers
        if external is not None and counts == (0,):
            raise RuntimeError(f"the cluster of {exp.scheduler_file} has no workers")
        for n in counts:
            fact_dir, label = _input(exp, program, n, scratch, log)
            with _placement(exp, n, external, log) as (mode, client):
                where = {"program": str(exp.program), "input": label, "scaling": exp.scaling, "mode": mode, "workers": n}
                runs += _measure(exp, program, fact_dir, client, where, log)
            write_csv(exp.out / RUNS_CSV, runs)
    return runs


def _measure(exp: Experiment, program: Program, fact_dir: Path, client: Any, where: dict[str, Any], log: Log) -> list[Run]:
    """One untimed warm-up run, then ``exp.repeat`` timed ones; ``where``: the rows' program,
    input, scaling, mode and workers."""
    n = where["workers"]
    t0 = time.perf_counter()
    warm = program.run(fact_dir=fact_dir, backend=exp.backend, client=client, options=MEASURE)
    device = _device(client, str(warm.stats["backend"]))
    warm.close()
    log(f"{_label(n)}: warm-up {time.perf_counter() - t0:.2f} s on {device}")
    runs = []
    for k in range(exp.repeat):
        t0 = time.perf_counter()
        result = program.run(fact_dir=fact_dir, backend=exp.backend, client=client, options=MEASURE)
        wall = time.perf_counter() - t0
        runs.append(run_from_stats(result.stats, result.sizes, wall, device=device, repeat=k, **where))
        result.close()
        log(f"{_label(n)}: run {k + 1}/{exp.repeat} {wall:.3f} s")
    return runs


def _label(workers: int) -> str:
    return "in process" if workers == 0 else f"{workers} worker{'s' if workers != 1 else ''}"


def _device(client: Any, backend: str) -> str:
    if client is None:
        return device_description(backend)
    first = sorted(client.ncores())[0]
    return str(client.run(device_description, backend, workers=[first])[first])


def _input(exp: Experiment, program: Program, workers: int, scratch: Path, log: Log) -> tuple[Path, str]:
    """The fact directory of a run on ``workers`` and its label for the CSV: ``fact_dir``, or
    the generated input in ``scratch``, generated once (strong scaling reuses it) and removed
    when the next one is generated, in the files ``program``'s ``.input`` directives name."""
    if exp.gen is None:
        assert exp.fact_dir is not None
        return exp.fact_dir, str(exp.fact_dir)
    params = (
        generate.weak(exp.gen, exp.gen_params, workers) if exp.scaling == WEAK else generate.parameters(exp.gen, exp.gen_params)
    )
    label = generate.describe(exp.gen, params, exp.seed)
    target = scratch / label.replace(" ", "_")
    if not target.is_dir():
        for previous in scratch.iterdir():
            shutil.rmtree(previous)
        t0 = time.perf_counter()
        relations = generate.generate(exp.gen, params, exp.seed)
        counts = generate.write_facts(target, relations, generate.targets_for(program.ir, target, relations))
        log(f"{_label(workers)}: generated {label} ({sum(counts.values()):,} facts) in {time.perf_counter() - t0:.2f} s")
    return target, label


@contextmanager
def _placement(exp: Experiment, workers: int, external: Any, log: Log) -> Iterator[tuple[str, Any]]:
    """(mode, client) for a run on ``workers``: None in process, the external cluster's client,
    or a new embedded cluster, closed on exit."""
    if workers == 0:
        try:
            yield IN_PROCESS, None
        finally:
            _release_gpu_memory()
        return
    if external is not None:
        yield CLUSTER, external
        return
    from distributed import Client

    from dask_datalog.cluster.runtime.connect import start_cluster

    t0 = time.perf_counter()
    try:
        cluster = start_cluster(workers, exp.backend)
    except RuntimeError as error:  # distributed's "Nanny failed to start"
        raise RuntimeError(f"the embedded Dask cluster of {workers} workers did not start: {error}") from error
    with cluster, Client(cluster) as client:
        log(f"{_label(workers)}: {type(cluster).__name__} up in {time.perf_counter() - t0:.2f} s")
        yield EMBEDDED, client


def _release_gpu_memory() -> None:
    """Hand CuPy's cached blocks back to the driver after the in-process runs: the next
    cluster's workers share the GPU, and this process's pool would keep it from them."""
    if "cupy" in sys.modules:
        cupy = sys.modules["cupy"]
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()


@contextmanager
def _external(scheduler_file: Path) -> Iterator[Any]:
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout="20s") as client:
        yield client


def log_to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
