#!/usr/bin/env python3
"""Single-shard benchmark: REACH and SG on real graphs, dask-datalog beside DuckDB.

Every engine run happens in its own subprocess (this script re-invoked as a worker), so the
peak RSS shown is that run's alone and a per-run timeout can kill it. Times are wall time of
fact loading plus evaluation: for dask-datalog the whole `Program.run()` call (no output
written), for DuckDB loading `edge` with read_csv plus count(*) over the recursive CTE.
Result sizes are checked against the ground truth of shared/data/SOURCES.md.

    .venv/bin/python bench/single_shard.py                      # default graph list
    .venv/bin/python bench/single_shard.py --graphs cal.cedge,OL.cedge --programs reach,sg
    .venv/bin/python bench/single_shard.py --markdown > table.md  # for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Truth, fmt_bytes, fmt_ratio, fmt_seconds, log  # noqa: E402

REACH_DL = """\
.decl edge(x: number, y: number)
.input edge
.decl path(x: number, y: number)
path(x, y) :- edge(x, y).
path(x, z) :- path(x, y), edge(y, z).
.output path
"""

SG_DL = """\
.decl edge(x: number, y: number)
.input edge
.decl sg(x: number, y: number)
sg(x, y) :- edge(p, x), edge(p, y), x != y.
sg(x, y) :- edge(a, x), sg(a, b), edge(b, y).
.output sg
"""

# UNION (not UNION ALL): DuckDB dedups against everything found so far, so it terminates.
REACH_SQL = """\
WITH RECURSIVE path(x, y) AS (
    SELECT x, y FROM edge
    UNION
    SELECT path.x, edge.y FROM path JOIN edge ON path.y = edge.x
)
SELECT count(*) FROM path"""

SG_SQL = """\
WITH RECURSIVE sg(x, y) AS (
    SELECT e1.y, e2.y FROM edge e1 JOIN edge e2 ON e1.x = e2.x WHERE e1.y <> e2.y
    UNION
    SELECT e1.y, e2.y FROM sg JOIN edge e1 ON e1.x = sg.x JOIN edge e2 ON e2.x = sg.y
)
SELECT count(*) FROM sg"""

PROGRAMS: dict[str, tuple[str, str, str]] = {  # name -> (Datalog, result relation, SQL)
    "reach": (REACH_DL, "path", REACH_SQL),
    "sg": (SG_DL, "sg", SG_SQL),
}

SMALL_CEDGE = ("cal.cedge", "OL.cedge", "TG.cedge")
DUCKDB_MAX_TUPLES = 30_000_000


def default_pairs() -> list[tuple[str, str]]:
    """(program, graph): every Soufflé anchor of BRIEF section 5, plus the small cedge graphs."""
    pairs = [(p, g) for g in SMALL_CEDGE for p in ("reach", "sg")]
    pairs += list(common.SOUFFLE_2CORE)
    return pairs


# --------------------------------------------------------------------------------------------
# Workers (run in a subprocess: `single_shard.py _worker JSON`)


def recursive_iterations(stats: object, relation: str) -> int | None:
    """Productive iterations of the recursive stratum from Result.stats; None if unknown.

    Expects `stats["strata"][i]["iterations"]` to be a list (one entry per round); picks the
    stratum that holds `relation` (or the one marked recursive, else the longest list). When
    the entries carry a `delta` dict, the rounds that derived nothing (the final check) are not
    counted, which is how SOURCES.md counts (TC: the longest shortest path).
    """
    if not isinstance(stats, dict) or not isinstance(stats.get("strata"), list):
        return None
    strata = [s for s in stats["strata"]
              if isinstance(s, dict) and isinstance(s.get("iterations"), list)]
    if not strata:
        return None
    chosen = [s for s in strata if isinstance(s.get("relations"), (list, tuple))
              and relation in s["relations"]]
    chosen = chosen or [s for s in strata if s.get("recursive") is True]
    its: list = (chosen[0] if len(chosen) == 1
                 else max(strata, key=lambda s: len(s["iterations"])))["iterations"]
    if all(isinstance(i, dict) and isinstance(i.get("delta"), dict) for i in its):
        return sum(1 for i in its if any(i["delta"].values()))
    return len(its)


def worker_ours(program: str, facts: str, backend: str, warmup: str | None) -> dict:
    """Time Program.run() on one graph; return size, iterations, seconds."""
    from dask_datalog.cluster import Program

    text, rel, _ = PROGRAMS[program]
    prog = Program(text, filename=f"{program}.dl")
    if warmup:  # compile kernels etc. on a tiny graph first (not timed)
        prog.run(facts={"edge": warmup}, backend=backend)
    t0 = time.perf_counter()
    res = prog.run(facts={"edge": facts}, backend=backend)
    seconds = time.perf_counter() - t0
    stats = res.stats
    backend_used = stats.get("backend") if isinstance(stats, dict) else None
    return {"size": int(res.sizes[rel]), "iterations": recursive_iterations(stats, rel),
            "seconds": seconds, "backend": backend_used}


def worker_duckdb(program: str, facts: str, threads: int | None) -> dict:
    """Time loading `edge` and count(*) of the recursive CTE in an in-memory DuckDB."""
    import duckdb

    sql = PROGRAMS[program][2]
    quoted = facts.replace("'", "''")
    t0 = time.perf_counter()
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute(
        "CREATE TABLE edge AS SELECT * FROM read_csv("
        f"'{quoted}', delim = '\t', header = false, "
        "columns = {'x': 'INTEGER', 'y': 'INTEGER'})")
    (size,) = con.execute(sql).fetchone()
    seconds = time.perf_counter() - t0
    (nthreads,) = con.execute("SELECT current_setting('threads')").fetchone()
    return {"size": int(size), "iterations": None, "seconds": seconds,
            "threads": int(nthreads)}


def worker_main(spec_json: str) -> None:
    """Entry of the worker subprocess."""
    spec = json.loads(spec_json)
    if spec["engine"] == "ours":
        out = worker_ours(spec["program"], spec["facts"], spec["backend"], spec.get("warmup"))
    else:
        out = worker_duckdb(spec["program"], spec["facts"], spec.get("threads"))
    common.emit_result(out)


# --------------------------------------------------------------------------------------------
# Driver


@dataclass
class EngineOutcome:
    """Best-of-N outcome of one engine on one (program, graph)."""

    status: str = "-"  # "ok", "timeout", "error", "skip ...", "-" (not run)
    seconds: float | None = None
    peak_rss: int | None = None
    size: int | None = None
    iterations: int | None = None
    extra: dict = field(default_factory=dict)

    def time_cell(self) -> str:
        return fmt_seconds(self.seconds) if self.status == "ok" else self.status


def run_engine(spec: dict, repeat: int, timeout_s: float, label: str) -> EngineOutcome:
    """Run one worker spec `repeat` times (fresh process each); keep the fastest."""
    best = EngineOutcome()
    rss_max = 0
    for i in range(repeat):
        m = common.measure([sys.executable, str(Path(__file__).resolve()), "_worker",
                            json.dumps(spec)], timeout_s)
        rss_max = max(rss_max, m.peak_rss)
        if m.timed_out:
            log(f"  {label}: timeout after {timeout_s:.0f} s (peak RSS {fmt_bytes(m.peak_rss)})")
            return EngineOutcome(status="timeout", peak_rss=rss_max)
        if m.returncode != 0 or m.result is None:
            log(f"  {label}: FAILED (exit {m.returncode}); stderr tail:\n"
                + indent(m.stderr_tail[-1500:]))
            return EngineOutcome(status="error", peak_rss=rss_max)
        r = m.result
        log(f"  {label} run {i + 1}/{repeat}: {r['seconds']:.3f} s, size {r['size']:,}, "
            f"iters {r.get('iterations')}, peak RSS {fmt_bytes(m.peak_rss)}")
        if best.seconds is None or r["seconds"] < best.seconds:
            best = EngineOutcome(status="ok", seconds=r["seconds"], size=r["size"],
                                 iterations=r.get("iterations"),
                                 extra={k: v for k, v in r.items()
                                        if k not in ("seconds", "size", "iterations")})
    best.peak_rss = rss_max
    if spec["engine"] == "ours" and best.status == "ok" and spec.get("process", True):
        best.extra["process_s"] = cli_wall(spec, repeat, timeout_s)
    return best


def cli_wall(spec: dict, repeat: int, timeout_s: float) -> float | None:
    """Best wall time of the real command, `dask-datalog run PROG -F DIR -D OUT --no-cluster`
    (the single-shard engine in this process; bench/multi_worker.py measures the Dask path), in a fresh
    process: interpreter start, imports, parsing, loading, evaluation and writing the CSV,
    as Soufflé's published wall times count them."""
    text, _, _ = PROGRAMS[spec["program"]]
    best: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        facts_dir, out_dir, prog = Path(tmp, "facts"), Path(tmp, "out"), Path(tmp, "prog.dl")
        facts_dir.mkdir()
        (facts_dir / "edge.facts").symlink_to(Path(spec["facts"]).resolve())
        prog.write_text(text)
        cmd = [sys.executable, "-m", "dask_datalog.cluster.cli", "run", str(prog), "-F", str(facts_dir),
               "-D", str(out_dir), "--backend", spec["backend"], "--no-cluster"]
        for _ in range(repeat):
            m = common.measure(cmd, timeout_s)
            if m.timed_out or m.returncode != 0:
                log(f"  CLI run failed (exit {m.returncode}):\n" + indent(m.stderr_tail[-800:]))
                return None
            best = m.wall_s if best is None else min(best, m.wall_s)
    log(f"  CLI process wall: {best:.3f} s")
    return best


def indent(text: str) -> str:
    return "\n".join("    " + ln for ln in text.splitlines())


def importable(statement: str) -> tuple[bool, str]:
    """Whether an import statement works (checked in a subprocess); the error if not."""
    import subprocess

    p = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True,
                       timeout=300)
    return p.returncode == 0, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""


def size_cell(expected: Truth, ours: EngineOutcome, duck: EngineOutcome,
              mismatches: list[str], where: str) -> str:
    """Result-size cell; records and flags a size differing from ground truth or DuckDB."""
    got = ours.size if ours.status == "ok" else duck.size if duck.status == "ok" else None
    if got is None:
        return f"({expected.size:,})" if expected.size is not None else "-"
    cell = f"{got:,}"
    bad = []
    for name, o in (("ours", ours), ("DuckDB", duck)):
        if o.status == "ok" and expected.size is not None and o.size != expected.size:
            bad.append(f"{name} {o.size:,} != truth {expected.size:,}")
    if ours.status == "ok" and duck.status == "ok" and ours.size != duck.size:
        bad.append(f"ours {ours.size:,} != DuckDB {duck.size:,}")
    if bad:
        mismatches.append(f"{where}: " + "; ".join(bad))
        cell += " !!MISMATCH"
    elif expected.size is None:
        cell += " (unverified)"
    return cell


def iter_cell(expected: Truth, ours: EngineOutcome) -> str:
    """Iterations of our recursive stratum, with the ground truth when they differ."""
    if ours.status != "ok":
        return f"({expected.iterations})" if expected.iterations is not None else "-"
    if ours.iterations is None:
        return "?"
    if expected.iterations is not None and ours.iterations != expected.iterations:
        return f"{ours.iterations} (truth {expected.iterations})"
    return str(ours.iterations)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA,
                    help="graph directory (default: ../shared/data beside the repo)")
    ap.add_argument("--graphs", help="comma-separated graph names (dataset directories, or "
                    "tiny/<stem>); default: the Soufflé-anchored pairs plus the small cedge "
                    "graphs")
    ap.add_argument("--programs", default="reach,sg", help="comma-separated: reach,sg")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "auto"))
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    ap.add_argument("--duckdb-timeout", type=float, default=None,
                    help="per DuckDB run, seconds (default: --timeout)")
    ap.add_argument("--duckdb-threads", type=int, default=None,
                    help="DuckDB threads (default: DuckDB's own, all cores)")
    ap.add_argument("--duckdb-all", action="store_true",
                    help=f"also run DuckDB where the result exceeds {DUCKDB_MAX_TUPLES:,} tuples")
    ap.add_argument("--no-duckdb", action="store_true")
    ap.add_argument("--no-engine", action="store_true", help="DuckDB only")
    ap.add_argument("--no-process", action="store_true",
                    help="skip the whole-command measurement (it writes the result as CSV: "
                         "minutes for the GPU graphs' billions of tuples)")
    ap.add_argument("--warmup", action="store_true",
                    help="run ours once on tiny/data_10 in the same process first (untimed)")
    ap.add_argument("--repeat", type=int, default=1, help="best of N (fresh process each)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    data: Path = args.data.resolve()
    missing = common.missing_data_message(data)
    if missing:
        log(missing)
        return 2
    programs = [p.strip() for p in args.programs.split(",") if p.strip()]
    unknown = [p for p in programs if p not in PROGRAMS]
    if unknown:
        log(f"error: unknown program(s) {unknown}; choose from {sorted(PROGRAMS)}")
        return 2
    if args.graphs:
        pairs = [(p, g.strip()) for g in args.graphs.split(",") if g.strip() for p in programs]
    else:
        pairs = [(p, g) for p, g in default_pairs() if p in programs]

    run_ours = not args.no_engine
    if run_ours:
        ok, why = importable("from dask_datalog.cluster import Program")
        if not ok:
            log(f"warning: dask_datalog.cluster.Program does not import ({why}); "
                "running DuckDB only")
            run_ours = False
    run_duck = not args.no_duckdb
    if run_duck:
        ok, why = importable("import duckdb")
        if not ok:
            log(f"warning: duckdb does not import ({why}); running without DuckDB")
            run_duck = False
    duck_timeout = args.duckdb_timeout if args.duckdb_timeout is not None else args.timeout
    # The repo's own copy: the data directory given may hold only the benchmark graphs.
    warmup = common.REPO_ROOT / "tests" / "data" / "tiny" / "data_10.txt" if args.warmup else None

    gpu = common.gpu_name() if run_ours and args.backend in ("cupy", "auto") else None
    header = common.machine_lines(gpu if args.backend != "numpy" else None)
    if args.backend == "auto" and gpu is None:
        header.append("gpu: none found")
    header += [f"data: {data}",
               f"backend: {args.backend}; runs: best of {args.repeat}, fresh process each, "
               f"timeout {args.timeout:.0f} s (DuckDB {duck_timeout:.0f} s)"
               + ("; ours warmed up on tiny/data_10" if warmup else ""),
               "time: wall seconds of loading + evaluation (ours: Program.run(); DuckDB: "
               "read_csv into a table + count(*) of the recursive CTE); ours process: the "
               "command `dask-datalog run PROG -F DIR -D OUT --no-cluster` as a whole (interpreter start, "
               "imports, parsing, loading, evaluation, writing the CSV), the figure comparable "
               "with Soufflé's; RSS: peak of the run's process tree",
               "iters: rounds of the recursive stratum that derived new tuples (as "
               "SOURCES.md counts them)",
               "(n): ground truth from SOURCES.md, shown where nothing was measured; "
               "!!MISMATCH: a size differs from the truth or between engines",
               "Soufflé: BRIEF section 5 figures (Soufflé 2.x -j2 on the 2-core development "
               "machine, with loading and output); speed-up = Soufflé / ours process"]

    headers = ["graph", "program", "result size", "iters", "ours (s)", "ours process (s)",
               "DuckDB (s)", "DuckDB/ours", "ours RSS", "DuckDB RSS", "Soufflé (s)",
               "Soufflé/ours process"]
    rows: list[list[str]] = []
    mismatches: list[str] = []
    duck_ratios: list[float] = []
    souffle_ratios: list[float] = []
    duck_threads: set[int] = set()
    backends_used: set[str] = set()
    for program, graph in pairs:
        where = f"{program} {graph}"
        expected = common.truth(graph, program)
        souffle = common.SOUFFLE_2CORE.get((program, graph))
        facts = common.graph_file(data, graph)
        log(f"{where}: {facts if facts else 'MISSING'}")
        if facts is None:
            rows.append([graph, program, "missing", "-", "-", "-", "-", "-", "-", "-",
                         fmt_seconds(souffle), "-"])
            continue
        ours = EngineOutcome()
        if run_ours:
            spec = {"engine": "ours", "program": program, "facts": str(facts),
                    "backend": args.backend, "warmup": str(warmup) if warmup else None,
                    "process": not args.no_process}
            ours = run_engine(spec, args.repeat, args.timeout, "ours")
            if ours.extra.get("backend"):
                backends_used.add(str(ours.extra["backend"]))
        duck = EngineOutcome()
        if run_duck:
            if (not args.duckdb_all and expected.size is not None
                    and expected.size > DUCKDB_MAX_TUPLES):
                duck = EngineOutcome(status=f"skip >{DUCKDB_MAX_TUPLES // 1_000_000}M")
            else:
                spec = {"engine": "duckdb", "program": program, "facts": str(facts),
                        "threads": args.duckdb_threads}
                duck = run_engine(spec, args.repeat, duck_timeout, "DuckDB")
                if "threads" in duck.extra:
                    duck_threads.add(int(duck.extra["threads"]))
        ratio = (duck.seconds / ours.seconds
                 if ours.status == "ok" and duck.status == "ok" and ours.seconds else None)
        process_s = ours.extra.get("process_s") if ours.status == "ok" else None
        s_ratio = souffle / process_s if souffle and process_s else None
        if ratio:
            duck_ratios.append(ratio)
        if s_ratio:
            souffle_ratios.append(s_ratio)
        rows.append([graph, program, size_cell(expected, ours, duck, mismatches, where),
                     iter_cell(expected, ours), ours.time_cell(), fmt_seconds(process_s),
                     duck.time_cell(),
                     fmt_ratio(ratio),
                     fmt_bytes(ours.peak_rss) if ours.status in ("ok", "timeout") else "-",
                     fmt_bytes(duck.peak_rss) if duck.status in ("ok", "timeout") else "-",
                     fmt_seconds(souffle), fmt_ratio(s_ratio)])
    gm_d, gm_s = common.geomean(duck_ratios), common.geomean(souffle_ratios)
    rows.append(["geomean", "", "", "", "", "", "",
                 fmt_ratio(gm_d) + (f" (n={len(duck_ratios)})" if gm_d else ""), "", "", "",
                 fmt_ratio(gm_s) + (f" (n={len(souffle_ratios)})" if gm_s else "")])
    if backends_used:
        header.append("backend used by ours: " + ",".join(sorted(backends_used)))
    if duck_threads:
        header.append("DuckDB threads: " + ",".join(map(str, sorted(duck_threads))))

    if args.markdown:
        print("\n".join(f"- {h}" for h in header) + "\n")
    else:
        print("\n".join(header) + "\n")
    print(common.format_table(headers, rows, markdown=args.markdown,
                              align="ll" + "r" * (len(headers) - 2)))
    if mismatches:
        print("\n!!! RESULT SIZE MISMATCHES !!!")
        for m in mismatches:
            print(f"!!! {m}")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2])
    else:
        sys.exit(main(sys.argv[1:]))
