#!/usr/bin/env python3
"""Distributed benchmark: REACH and SG on 1, 2, 4 Dask workers beside the single-process engine,
and the fixed cost of one iteration (a 3,000-edge chain).

Part 1 runs `Program.run(facts={"edge": path}, client=client, backend="numpy")` on real graphs
and reports the client's wall time next to what the workers' statistics say: evaluation and
load time, the join / dedup+difference / merge phases (summed over iterations, max over
workers), the collectives' send and wait time (max over workers), bytes exchanged, iterations,
and the result size checked against shared/data/SOURCES.md. The single-process engine
(`Program.run(..., backend="numpy")` without a client) runs on the same graphs in the same run
as the baseline.

Part 2 measures what one iteration costs when there is almost no work: single-source
reachability along a chain of 3,000 edges (3,000 iterations of one new tuple each), given as a
NumPy array; evaluation time / iterations, and send / wait per exchange round. Each cluster runs
it twice and the second (warm) run is reported.

Every cluster does one untimed warm-up run (REACH and SG on tiny/data_10) before anything is
timed, so worker start-up is not in the numbers. Process workers
come from `dask_datalog.cluster.runtime.connect.start_cluster` (single-threaded workers, each with
OMP_NUM_THREADS = cores / workers); `--threads` uses in-process workers instead.

`--backend cupy` runs everything (the single-process baseline included) on the GPU. Clusters
still come from `start_cluster(n, "cupy")`: a dask-cuda `LocalCUDACluster` (one GPU per worker)
where n <= the GPUs CuPy sees, else n CPU process workers sharing the GPU(s) through CuPy; the
"run" column says which ("n cuda" / "n proc shared GPU"). The warm-up then creates the CUDA
context and compiles CuPy's kernels. Without a GPU it stops with a one-line
message (exit status 2).

    .venv/bin/python bench/multi_worker.py                   # default graphs, 1, 2 and 4 workers
    .venv/bin/python bench/multi_worker.py --quick           # chain + one small graph (smoke test)
    .venv/bin/python bench/multi_worker.py --graphs reach:wing,sg:cti --workers 2,4
    python3 bench/multi_worker.py --data .data --backend cupy --workers 1,2 --graphs reach:fe_body
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import fmt_ratio, fmt_seconds, log

PROGRAM_FILES = {"reach": common.REPO_ROOT / "examples" / "reach.dl", "sg": common.REPO_ROOT / "examples" / "sg.dl"}
RESULT_RELATION = {"reach": "path", "sg": "sg"}

DEFAULT_PAIRS = [("reach", "luxembourg_osm"), ("reach", "ego-Facebook"), ("sg", "wing"), ("sg", "luxembourg_osm")]
QUICK_PAIRS = [("reach", "OL.cedge")]

CHAIN_EDGES = 3_000
CHAIN_DL = """\
.decl edge(x:number, y:number)
.decl reach(x:number)
.input edge
.output reach
reach(0).
reach(y) :- reach(x), edge(x, y).
"""

# The repo's own copy: the data directory given may hold only the benchmark graphs.
WARMUP_FILE = common.REPO_ROOT / "tests" / "data" / "tiny" / "data_10.txt"


# --------------------------------------------------------------------------------------------
# Reading the statistics


def _strata_with(stats: dict, relation: str) -> list[int]:
    """Indices of the strata that derive `relation` (all strata if none names it)."""
    strata = stats.get("strata", [])
    hit = [i for i, s in enumerate(strata) if relation in (s.get("relations") or ())]
    return hit or list(range(len(strata)))


def productive_iterations(workers: list[dict], relation: str) -> int | None:
    """Iterations of the stratum deriving `relation` in which some worker derived a new tuple
    (the closing round that finds nothing is not counted, as SOURCES.md counts). `workers`:
    one stats dict per worker (a single-process run is one worker)."""
    idx = _strata_with(workers[0], relation)
    if not idx:
        return None
    i = idx[0]
    lists = [w["strata"][i]["iterations"] for w in workers]
    n = max(len(its) for its in lists)
    return sum(1 for j in range(n) if any(j < len(its) and sum(its[j].get("delta", {}).values()) > 0 for its in lists))


def iterations_run(workers: list[dict]) -> int:
    """Every iteration of every stratum, the closing empty ones included (max over workers)."""
    return max(sum(len(s["iterations"]) for s in w.get("strata", [])) for w in workers)


def phase_sums(w: dict) -> dict[str, float]:
    """One worker's join, dedup+difference and merge seconds, summed over all iterations, and
    its per-iteration exchange figures summed the same way."""
    out = {"join": 0.0, "dedup_diff": 0.0, "merge": 0.0, "it_rounds": 0, "it_send": 0.0, "it_wait": 0.0}
    for s in w.get("strata", []):
        for it in s["iterations"]:
            out["join"] += it.get("join", 0.0)
            out["dedup_diff"] += it.get("dedup", 0.0) + it.get("difference", 0.0)
            out["merge"] += it.get("merge", 0.0)
            ex = it.get("exchange")
            if ex:
                out["it_rounds"] += ex["rounds"]
                out["it_send"] += ex["send_s"]
                out["it_wait"] += ex["wait_s"]
    return out


@dataclass
class Measured:
    """One timed run, single-process or distributed."""

    setting: str  # "single", "2 proc", "4 thr", ...
    status: str = "ok"  # "ok", "error", "missing"
    wall_s: float | None = None
    eval_s: float | None = None
    load_s: float | None = None
    join_s: float | None = None
    dedup_s: float | None = None
    merge_s: float | None = None
    send_s: float | None = None
    wait_s: float | None = None
    rounds: int | None = None
    bytes: int | None = None
    size: int | None = None
    iterations: int | None = None  # productive ones
    iterations_run: int | None = None  # all, closing rounds included
    per_round_send: float | None = None  # evaluation's rounds only
    per_round_wait: float | None = None
    extra: dict = field(default_factory=dict)


EXCHANGE = "auto"  # --exchange


def measure_run(prog: Any, facts: Any, relation: str, setting: str, client: Any = None, backend: str = "numpy") -> Measured:
    """Time one Program.run and read its statistics."""
    t0 = time.perf_counter()
    # --exchange other than auto only where the build has it (an earlier one, as a baseline, may not)
    chosen = {"exchange": EXCHANGE} if client is not None and EXCHANGE != "auto" else {}
    res = prog.run(facts={"edge": facts}, client=client, backend=backend, **chosen)  # no client: in process
    wall = time.perf_counter() - t0
    try:
        stats = res.stats
        workers = stats["per_worker"] if client is not None else [stats]
        phases = [phase_sums(w) for w in workers]
        m = Measured(
            setting=setting,
            wall_s=wall,
            eval_s=float(stats["total_s"]),
            load_s=float(stats["load_s"]),
            join_s=max(p["join"] for p in phases),
            dedup_s=max(p["dedup_diff"] for p in phases),
            merge_s=max(p["merge"] for p in phases),
            size=int(res.sizes[relation]),
            iterations=productive_iterations(workers, relation),
            iterations_run=iterations_run(workers),
        )
        if client is not None:
            ex = [w["exchange"] for w in workers]
            m.send_s = max(e["send_s"] for e in ex)
            m.wait_s = max(e["wait_s"] for e in ex)
            m.rounds = max(e["rounds"] for e in ex)
            m.bytes = int(stats["bytes_exchanged"])
            m.extra["it_rounds"] = max(p["it_rounds"] for p in phases)
            rounds_ok = [p for p in phases if p["it_rounds"]]
            if rounds_ok:
                m.per_round_send = max(p["it_send"] / p["it_rounds"] for p in rounds_ok)
                m.per_round_wait = max(p["it_wait"] / p["it_rounds"] for p in rounds_ok)
        return m
    finally:
        res.close()  # free the shards on the workers


def chain_edges(n: int = CHAIN_EDGES) -> np.ndarray:
    i = np.arange(n, dtype=np.int64)
    return np.stack([i, i + 1], axis=1)


def gpu_problem() -> str | None:
    """Why --backend cupy cannot run here (one line), or None when CuPy sees a GPU."""
    try:
        import cupy
    except Exception as e:
        return f"CuPy does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    try:
        n = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:
        return f"CuPy sees no GPU ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None if n > 0 else "CuPy sees no GPU (0 devices)"


def gpu_description() -> str:
    """The GPUs' names, e.g. 'NVIDIA H100 80GB HBM3' or '2 x NVIDIA H100 ...' ('no GPU')."""
    import subprocess

    names: list[str] = []
    try:
        p = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], check=False, capture_output=True, text=True, timeout=30
        )
        if p.returncode == 0:
            names = [line.strip() for line in p.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        pass
    if not names:
        # No CuPy, no driver, no device: no GPU.
        with contextlib.suppress(Exception):
            import cupy

            for i in range(int(cupy.cuda.runtime.getDeviceCount())):
                n = cupy.cuda.runtime.getDeviceProperties(i)["name"]
                names.append(n.decode() if isinstance(n, bytes) else str(n))
    if not names:
        return "no GPU"
    if len(set(names)) == 1:
        return names[0] if len(names) == 1 else f"{len(names)} x {names[0]}"
    return ", ".join(names)


def cupy_version() -> str:
    """CuPy's version (its distribution may be cupy-cuda12x etc., so asked of the module)."""
    try:
        import cupy

        return str(cupy.__version__)
    except Exception:
        return "absent"


def release_gpu_memory() -> None:
    """Hand CuPy's cached blocks back to the driver (this process's runs are done; the cluster's
    workers share the card next)."""
    with contextlib.suppress(Exception):  # best effort
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()


# --------------------------------------------------------------------------------------------
# Driver


def fmt_size(n: int | None) -> str:
    """Bytes as B / KiB / MiB / GiB with 3 significant-ish digits ('-' for None)."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}" if v >= 10 else f"{v:.2f} {unit}"
    return f"{n} B"


def fmt_ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = s * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 0.1 else f"{ms:.3f}"


def parse_pairs(spec: str | None, programs: list[str], quick: bool) -> list[tuple[str, str]]:
    """`--graphs`: items `prog:graph` (one pair) or a bare graph (every program of --programs)."""
    if not spec:
        base = QUICK_PAIRS if quick else DEFAULT_PAIRS
        return [(p, g) for p, g in base if p in programs]
    pairs: list[tuple[str, str]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if ":" in item:
            p, g = item.split(":", 1)
            pairs.append((p.strip().lower(), g.strip()))
        else:
            pairs.extend((p, item) for p in programs)
    return pairs


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=common.DEFAULT_DATA, help="graph directory (default: ../shared/data beside the repo)"
    )
    ap.add_argument(
        "--graphs",
        help="comma-separated: `prog:graph` (e.g. reach:wing) or a "
        "graph name (run with every program of --programs); default: " + ", ".join(f"{p}:{g}" for p, g in DEFAULT_PAIRS),
    )
    ap.add_argument("--programs", default="reach,sg", help="programs for bare graph names and the default list (reach,sg)")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument(
        "--backend",
        default="numpy",
        choices=("numpy", "cupy"),
        help="array backend of every run, the single-process baseline included (default numpy); cupy needs a GPU",
    )
    ap.add_argument("--threads", action="store_true", help="in-process (thread) workers: LocalCluster(processes=False)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: the chain and {QUICK_PAIRS[0][0]}:{QUICK_PAIRS[0][1]} only (unless --graphs)",
    )
    ap.add_argument(
        "--repeat", type=int, default=None, help="graph runs: best of N (by wall time) per setting; default 3, 1 with --quick"
    )
    ap.add_argument("--no-single", action="store_true", help="skip the single-process baseline")
    ap.add_argument(
        "--exchange",
        choices=("auto", "mesh", "comm"),
        default="auto",
        help="how workers exchange tuples (Program.run's exchange): mesh (direct sockets), comm (Dask's comms) or auto",
    )
    ap.add_argument("--no-chain", action="store_true", help="skip the per-iteration chain")
    return ap.parse_args(argv)


def describe_graph(path: Path) -> str:
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return f"{path} ({lines:,} lines, {path.stat().st_size:,} bytes)"


def start(n: int, threads: bool, backend: str = "numpy") -> tuple[Any, Any]:
    from distributed import Client

    try:
        from dask_datalog.cluster.runtime.connect import start_cluster
    except ImportError:  # a build from before cluster/runtime/ (as a baseline)
        from dask_datalog.cluster.runtime import start_cluster  # type: ignore[attr-defined,no-redef]

    cluster = start_cluster(n, backend, processes=not threads)
    return cluster, Client(cluster)


def is_cuda_cluster(cluster: Any) -> bool:
    return type(cluster).__name__ == "LocalCUDACluster"


def setting_label(n: int, kind: str, backend: str, cuda: bool) -> str:
    """The "run" column: 'n proc' / 'n thr' (numpy); with cupy 'n cuda' for a LocalCUDACluster
    and 'n proc shared GPU' (or thr) for CPU workers sharing the GPU."""
    if backend != "cupy":
        return f"{n} {kind}"
    return f"{n} cuda" if cuda else f"{n} {kind} shared GPU"


def stop(cluster: Any, client: Any) -> None:
    for thing in (client, cluster):
        if thing is None:
            continue
        try:
            thing.close()
        except Exception as e:
            log(f"  (closing: {e!r})")


def worker_env(client: Any, var: str = "OMP_NUM_THREADS") -> str:
    """An environment variable as the workers see it (one value per worker, deduplicated)."""
    try:
        seen = client.run(lambda: os.environ.get(var, "unset"))
        return ",".join(sorted(set(seen.values())))
    except Exception:
        return "?"


def main(argv: list[str]) -> int:
    global EXCHANGE
    args = parse_args(argv)
    EXCHANGE = args.exchange
    data: Path = args.data.resolve()
    missing = common.missing_data_message(data)
    if missing:
        log(missing)
        return 2
    programs = [p.strip().lower() for p in args.programs.split(",") if p.strip()]
    pairs = parse_pairs(args.graphs, programs, args.quick)
    unknown = sorted({p for p, _ in pairs if p not in PROGRAM_FILES} | {p for p in programs if p not in PROGRAM_FILES})
    if unknown:
        log(f"error: unknown program(s) {unknown}; choose from {sorted(PROGRAM_FILES)}")
        return 2
    try:
        counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        log(f"error: --workers wants comma-separated integers, got {args.workers!r}")
        return 2
    if not counts or min(counts) < 1:
        log("error: --workers needs at least one count >= 1")
        return 2

    from dask_datalog.cluster import Program

    progs = {name: Program.from_file(path) for name, path in PROGRAM_FILES.items()}
    chain_prog = Program(CHAIN_DL, filename="chain.dl")
    chain = chain_edges()
    kind = "thr" if args.threads else "proc"
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        log("error: --repeat must be >= 1")
        return 2
    on_gpu = args.backend == "cupy"
    gpu = None
    gpus = 0
    if on_gpu:
        problem = gpu_problem()
        if problem is not None:
            log(f"error: --backend cupy needs a GPU: {problem}")
            return 2
        from dask_datalog.engine.backend import gpu_count

        gpu = gpu_description()
        gpus = gpu_count()
    load_before = os.getloadavg()
    machine = common.machine_lines(gpu)  # the date is the run's start

    files: dict[str, Path | None] = {}
    for _, g in pairs:
        if g not in files:
            files[g] = common.graph_file(data, g)
    missing = [g for g, f in files.items() if f is None]
    for g in missing:
        log(f"warning: graph {g} not found in {data} (expected {data / g}/data_*.txt or edge.facts); its rows say 'missing'")

    graph_rows: dict[tuple[str, str], list[Measured]] = {pair: [] for pair in pairs}
    chain_rows: list[Measured] = []
    cluster_notes: list[str] = []

    def run_pairs(setting: str, client: Any) -> None:
        for program, graph in pairs:
            facts = files[graph]
            if facts is None:
                graph_rows[(program, graph)].append(Measured(setting, status="missing"))
                continue
            best: Measured | None = None
            try:
                for k in range(repeat):
                    m = measure_run(progs[program], str(facts), RESULT_RELATION[program], setting, client, args.backend)
                    log(
                        f"  {setting} {program} {graph} run {k + 1}/{repeat}: wall {m.wall_s:.3f} s, "
                        f"eval {m.eval_s:.3f} s, size {m.size:,}, iters {m.iterations}"
                    )
                    if best is None or m.wall_s < best.wall_s:
                        best = m
            except Exception:
                log(f"  {setting} {program} {graph}: FAILED\n{traceback.format_exc()}")
                graph_rows[(program, graph)].append(Measured(setting, status="error"))
                continue
            assert best is not None
            graph_rows[(program, graph)].append(best)

    def run_chain(setting: str, client: Any) -> None:
        if args.no_chain:
            return
        try:
            first = measure_run(chain_prog, chain, "reach", setting, client, args.backend)
            second = measure_run(chain_prog, chain, "reach", setting, client, args.backend)
        except Exception:
            log(f"  {setting} chain: FAILED\n{traceback.format_exc()}")
            chain_rows.append(Measured(setting, status="error"))
            return
        second.extra["first_eval_s"] = first.eval_s
        second.extra["first_iters"] = first.iterations_run
        log(f"  {setting} chain: eval {first.eval_s:.3f} s then {second.eval_s:.3f} s ({second.iterations_run} iterations)")
        chain_rows.append(second)

    def warm_up(client: Any) -> float:
        """REACH, SG and a 10-edge chain, untimed (with cupy the runs create the CUDA context
        and compile CuPy's kernels); returns the seconds it took."""
        t0 = time.perf_counter()
        jobs = [(progs[name], str(WARMUP_FILE)) for name in ("reach", "sg")]
        jobs.append((chain_prog, chain_edges(10)))
        for prog, facts in jobs:
            prog.run(facts={"edge": facts}, client=client, backend="cupy" if on_gpu else "numpy").close()
        return time.perf_counter() - t0

    t_start = time.perf_counter()
    if not args.no_single:
        log("single process:")
        try:
            w = warm_up(None)
            what = " (CUDA context, CuPy kernels)" if on_gpu else ""
            cluster_notes.append(f"single: this process, warm-up {w:.1f} s{what}")
        except Exception:
            log(f"  single: warm-up FAILED\n{traceback.format_exc()}")
            cluster_notes.append("single: warm-up FAILED")
        run_chain("single", None)
        run_pairs("single", None)
        if on_gpu:
            release_gpu_memory()  # CuPy's pool here would keep the cluster's workers from it

    for n in counts:
        # What start_cluster will start (the label of failed rows); checked once it runs.
        setting = setting_label(n, kind, args.backend, on_gpu and 0 < n <= gpus)
        log(f"{setting}:")
        cluster = client = None
        try:
            t0 = time.perf_counter()
            cluster, client = start(n, args.threads, args.backend)
            t_up = time.perf_counter() - t0
            setting = setting_label(n, kind, args.backend, is_cuda_cluster(cluster))
            w = warm_up(client)
            if on_gpu:
                cuda = is_cuda_cluster(cluster)
                what = (
                    "LocalCUDACluster, one GPU per worker"
                    if cuda
                    else f"{type(cluster).__name__}, {'threads' if args.threads else 'CPU processes'} "
                    f"sharing {gpus} GPU{'s' if gpus > 1 else ''} through CuPy"
                )
                cluster_notes.append(
                    f"{setting}: {what}; started in {t_up:.1f} s, warm-up {w:.1f} s, "
                    f"CUDA_VISIBLE_DEVICES={worker_env(client, 'CUDA_VISIBLE_DEVICES')}"
                )
            else:
                env = worker_env(client) if not args.threads else "(shared process)"
                cluster_notes.append(f"{setting}: started in {t_up:.1f} s, warm-up {w:.1f} s, OMP_NUM_THREADS={env}")
        except Exception as e:
            log(f"  {setting}: cluster start or warm-up FAILED\n{traceback.format_exc()}")
            why = str(e).splitlines()[0] if str(e) else ""
            cluster_notes.append(f"{setting}: cluster start or warm-up FAILED ({type(e).__name__}: {why})")
            stop(cluster, client)
            if not args.no_chain:
                chain_rows.append(Measured(setting, status="error"))
            for pair in pairs:
                graph_rows[pair].append(Measured(setting, status="error"))
            continue
        try:
            run_chain(setting, client)
            run_pairs(setting, client)
        finally:
            stop(cluster, client)
    elapsed = time.perf_counter() - t_start

    # ---------------------------------------------------------------------------------------
    # Report

    header = machine
    header.append(
        f"versions (cluster): dask {common.pkg_version('dask')}, distributed "
        f"{common.pkg_version('distributed')}"
        + (f", cupy {cupy_version()}, dask-cuda {common.pkg_version('dask-cuda')}" if on_gpu else "")
    )
    header.append(f"data: {data}")
    for g, f in files.items():
        header.append(f"  {g}: " + (describe_graph(f) if f else "MISSING"))
    if on_gpu:
        plural = "s" if gpus > 1 else ""
        clusters = (
            "clusters: dask_datalog.cluster.runtime.connect.start_cluster(n, 'cupy'"
            + (", processes=False" if args.threads else "")
            + "): a dask-cuda LocalCUDACluster "
            f"(one GPU per worker, 'n cuda') where n <= {gpus} GPU{plural}, else "
            + ("in-process thread workers" if args.threads else "CPU process workers")
            + f" sharing the GPU{plural} through CuPy ('n {kind} shared GPU'); 1 thread each; "
            "workers: " + ",".join(map(str, counts)) + "; backend cupy; each closed before "
            "the next starts"
        )
        warm = (
            "warm-up: every cluster (and this process, for the single-process rows) first ran "
            "REACH and SG on tiny/data_10 and a 10-edge chain untimed on the GPU: worker "
            "start-up, CUDA context creation and CuPy's compilation of the kernels those runs "
            "use are not in the numbers (a kernel only a larger graph needs still compiles, or "
            "loads from CuPy's cache, in its first timed run)"
        )
    else:
        clusters = (
            "clusters: "
            + (
                "in-process thread workers, LocalCluster(processes=False)"
                if args.threads
                else "process workers from dask_datalog.cluster.runtime.connect.start_cluster(n, 'numpy')"
            )
            + ", 1 thread each; workers: "
            + ",".join(map(str, counts))
            + "; backend numpy; "
            "each closed before the next starts"
        )
        warm = (
            "warm-up: every cluster (and this process, for the single-process rows) first ran REACH "
            "and SG on tiny/data_10 and a 10-edge chain untimed: worker start-up is not in the numbers"
        )
    header += [
        f"backend: {args.backend}" + (f" on {gpu}" if on_gpu else "") + " (every run, the single-process baseline included)",
        clusters,
        warm,
        *("  " + n for n in cluster_notes),
        f"single: Program.run(..., backend={args.backend!r}) in this process, no client (the baseline)",
        f"exchange: {args.exchange} (Program.run's exchange= on the clusters)",
        (f"graph runs: best of {repeat} by wall time, each setting; total time of this run: {elapsed:.0f} s"),
        "load average (1, 5, 15 min) at start: "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; at end: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        + f" (on {os.cpu_count()} cores; other work on the machine shows here)",
    ]
    print("\n".join(header) + "\n")

    mismatches: list[str] = []
    if pairs:
        print(f"REACH / SG on graphs (best of {repeat} by wall time)" + (f", backend cupy on {gpu}" if on_gpu else ""))
        if on_gpu:
            workers = "in-process thread" if args.threads else "CPU process"
            print(
                f"  run: single = this process on the GPU; n cuda = LocalCUDACluster, one GPU per "
                f"worker; n {kind} shared GPU = n {workers} workers sharing {gpus} "
                f"GPU{'s' if gpus > 1 else ''} through CuPy"
            )
        print(
            "  wall: Program.run() as the client sees it; eval: stats total_s (the fixpoint, "
            "slowest worker); load: reading the facts (slowest worker);"
        )
        print(
            "  other: wall - load - eval (scheduling, distributing the facts to their owners, "
            "gathering statistics); join, dedup+diff, merge: summed over iterations, max over "
            "workers;"
        )
        print(
            "  send, wait: the job's collectives (loading's included), max over workers; rounds: "
            "collectives per worker; exchanged: bytes sent, summed over workers;"
        )
        print(
            "  iters: iterations that derived new tuples ('(truth n)' where SOURCES.md differs); "
            "vs single: single-process wall / this wall"
        )
        headers = [
            "program",
            "graph",
            "run",
            "wall (s)",
            "eval (s)",
            "load (s)",
            "other (s)",
            "join (s)",
            "dedup+diff (s)",
            "merge (s)",
            "send (s)",
            "wait (s)",
            "rounds",
            "exchanged",
            "iters",
            "result size",
            "check",
            "vs single",
        ]
        rows: list[list[str]] = []
        for (program, graph), ms in graph_rows.items():
            expected = common.truth(graph, program)
            single = next((m for m in ms if m.setting == "single" and m.status == "ok"), None)
            for m in ms:
                if m.status != "ok":
                    rows.append([program, graph, m.setting, m.status] + ["-"] * (len(headers) - 4))
                    continue
                if expected.size is None:
                    check = "unknown"
                elif m.size == expected.size:
                    check = "OK"
                else:
                    check = f"WRONG (truth {expected.size:,})"
                    mismatches.append(f"{program} {graph} {m.setting}: {m.size:,} != {expected.size:,}")
                iters = str(m.iterations)
                if expected.iterations is not None and m.iterations != expected.iterations:
                    iters += f" (truth {expected.iterations})"
                other = m.wall_s - m.load_s - m.eval_s
                ratio = single.wall_s / m.wall_s if single and m is not single and m.wall_s else None
                rows.append(
                    [
                        program,
                        graph,
                        m.setting,
                        fmt_seconds(m.wall_s),
                        fmt_seconds(m.eval_s),
                        fmt_seconds(m.load_s),
                        fmt_seconds(other),
                        fmt_seconds(m.join_s),
                        fmt_seconds(m.dedup_s),
                        fmt_seconds(m.merge_s),
                        fmt_seconds(m.send_s),
                        fmt_seconds(m.wait_s),
                        "-" if m.rounds is None else str(m.rounds),
                        fmt_size(m.bytes),
                        iters,
                        f"{m.size:,}",
                        check,
                        "-" if m is single else fmt_ratio(ratio),
                    ]
                )
        print(common.format_table(headers, rows, align="lll" + "r" * 13 + "lr"))
        print()

    if chain_rows:
        print(
            f"Per-iteration fixed cost: reach(0), reach(y) :- reach(x), edge(x, y) on the chain "
            f"0 -> 1 -> ... -> {CHAIN_EDGES} ({CHAIN_EDGES:,} edges, a NumPy array through facts=)"
            + (f", backend cupy on {gpu}" if on_gpu else "")
        )
        print(
            "  second (warm) run of two on each cluster; iterations: all of them, the closing "
            "empty one included; ms/iter: eval / iterations;"
        )
        print(
            "  rounds, send/round, wait/round: the evaluation's collectives only (loading's "
            "excluded), max over workers; 1st run ms/iter: the run before, for comparison"
        )
        headers = [
            "run",
            "iterations",
            "eval (s)",
            "ms/iter",
            "join ms/iter",
            "rounds",
            "send ms/round",
            "wait ms/round",
            "wall (s)",
            "1st run ms/iter",
            "result",
            "check",
        ]
        rows = []
        for m in chain_rows:
            if m.status != "ok":
                rows.append([m.setting, m.status] + ["-"] * (len(headers) - 2))
                continue
            its = m.iterations_run or 1
            rounds = m.extra.get("it_rounds")
            first = m.extra.get("first_eval_s")
            first_its = m.extra.get("first_iters") or its
            ok = m.size == CHAIN_EDGES + 1
            if not ok:
                mismatches.append(f"chain {m.setting}: {m.size:,} != {CHAIN_EDGES + 1:,}")
            rows.append(
                [
                    m.setting,
                    f"{its:,}",
                    fmt_seconds(m.eval_s),
                    fmt_ms(m.eval_s / its),
                    fmt_ms(m.join_s / its),
                    "-" if rounds is None else f"{rounds:,}",
                    fmt_ms(m.per_round_send),
                    fmt_ms(m.per_round_wait),
                    fmt_seconds(m.wall_s),
                    fmt_ms(first / first_its) if first is not None else "-",
                    f"{m.size:,}",
                    "OK" if ok else f"WRONG (truth {CHAIN_EDGES + 1:,})",
                ]
            )
        print(common.format_table(headers, rows, align="l" + "r" * 10 + "l"))
        print()

    if mismatches:
        print("!!! RESULT SIZE MISMATCHES !!!")
        for line in mismatches:
            print(f"!!! {line}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
