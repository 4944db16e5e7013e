#!/usr/bin/env python3
"""Whole command against whole command: dask-datalog beside compiled Soufflé 2.5, side by side
in the same run, REACH and SG on the reference graphs, CSPA and Andersen (on numbers, and
over names with a symbol made per tuple: andersen_symbols) on generated inputs.

What runs, for each workload (program, graph):

- Soufflé (the peer, ../shared/peers/souffle-2.5 or --peers): its compiled programs,
  `bench/tc -j2 -F FACTS -D OUT` for REACH and `bench/sg -j2 -F FACTS -D OUT` for SG; for
  CSPA and Andersen, examples/{cspa,andersen,andersen_symbols}.dl compiled here by the peer's `bin/souffle -o`
  (about 15 s each, cached in --cache);
- ours, one column per mode: `dask-datalog run examples/reach.dl -F FACTS -D OUT --quiet`
  (examples/sg.dl for SG), as `default` (no mode flag, what a user types: the run goes where
  the CLI chooses), `cluster` (`--cluster`: the embedded Dask cluster, one worker per core)
  and, on request, `no-cluster` (`--no-cluster`: evaluated in the one process, no Dask).

Both engines read the same FACTS/edge.facts (a symlink to the graph's edge file, or, when that
file is not tab-separated without CR, one converted copy used by both) and both write their
output relations as CSV into a fresh, empty OUT. A workload `cspa:gen:N`, `andersen:gen:N` or
`andersen_symbols:gen:N` reads inputs written once by `dask-datalog gen cspa|andersen` (N
variables, seed 0; andersen_symbols reads Andersen's, its numbers as names); its rows
(of the first .output relation) are checked between the engines. Every run is a fresh process, measured from
spawn to exit: interpreter start, imports, loading, evaluation and writing the CSV all count.
Memory is the peak RSS of the command's whole process tree (the largest sum of the RSS of the
process and all its descendants, any Dask scheduler and workers included, polled every 20 ms,
or the command's own high-water mark, VmHWM, when larger); a sum over processes counts shared
pages once per process.

The engines alternate within each round (Soufflé, default, cluster, ...; in a Williams design
from round to round, so that over 2n rounds of n engines each runs right after each other one
equally often), for --repeat rounds; the table shows each engine's median wall time and its largest peak RSS, the
ratio ours/Soufflé of the median times for each of our modes (above 1: slower than Soufflé),
and the geometric mean of those ratios. The lines of every written CSV are counted and checked
against the ground truth of shared/data/SOURCES.md (and between the engines where the truth is
unknown); a mismatch is flagged !!MISMATCH and makes the exit status 1. An engine that times
out or fails on a workload is not run again on it. Without the peer's binaries the script says
so and measures dask-datalog alone.

    .venv/bin/python bench/single_shard.py                       # the default workload list
    .venv/bin/python bench/single_shard.py --pairs reach:cti,sg:wing --repeat 1
    .venv/bin/python bench/single_shard.py --modes no-cluster --timeout 120
    .venv/bin/python bench/single_shard.py --markdown > table.md   # for docs/benchmarks.md
    .venv/bin/python bench/single_shard.py --pairs cspa:gen:2000000,andersen:gen:2000000
    .venv/bin/python bench/single_shard.py --pairs andersen_symbols:gen:100000 --modes default
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import DEFAULT_CACHE, DEFAULT_PEERS, Outcome, fmt_bytes, fmt_ratio, indent, log, ours_cli, round_order

# program -> (our program file, the name of the peer's compiled binary in its bench/, beside
# NAME.dl; None: compile our program with the peer's bin/souffle into --cache)
PROGRAMS: dict[str, tuple[Path, str | None]] = {
    "reach": (common.REPO_ROOT / "examples" / "reach.dl", "tc"),
    "sg": (common.REPO_ROOT / "examples" / "sg.dl", "sg"),
    "cspa": (common.REPO_ROOT / "examples" / "cspa.dl", None),
    "andersen": (common.REPO_ROOT / "examples" / "andersen.dl", None),
    "andersen_symbols": (common.REPO_ROOT / "examples" / "andersen_symbols.dl", None),
}
# The programs whose inputs `dask-datalog gen` writes (workload gen:N), and which generator.
GENERATED: dict[str, str] = {"cspa": "cspa", "andersen": "andersen", "andersen_symbols": "andersen"}

# Our modes: name -> the flags that select it (default: none, what a user types).
MODES: dict[str, list[str]] = {"default": [], "cluster": ["--cluster"], "no-cluster": ["--no-cluster"]}
DEFAULT_MODES = ("default", "cluster")

SOUFFLE_JOBS = 2

DEFAULT_PAIRS: list[tuple[str, str]] = [
    ("sg", "wing"),
    ("sg", "luxembourg_osm"),
    ("reach", "luxembourg_osm"),
    ("reach", "ego-Facebook"),
    ("reach", "cti"),
    ("sg", "cti"),
    ("sg", "delaunay_n16"),
    ("sg", "p2p-Gnutella09"),
    ("reach", "wiki-Vote"),
    ("reach", "fe_sphere"),
]

_OUTPUT_RE = re.compile(r"^[ \t]*\.output[ \t]+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)


def output_relation(program_file: Path) -> str | None:
    """The first `.output` relation of a Datalog file (None if unreadable or none)."""
    try:
        m = _OUTPUT_RE.search(program_file.read_text())
    except OSError:
        return None
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------
# Engines


@dataclass
class Engine:
    """One column group of the table: a command that reads FACTS and writes OUT/<relation>.csv."""

    key: str  # "souffle" or a mode name
    label: str
    relation: str
    argv: Callable[[Path, Path], list[str]]  # (facts dir, out dir) -> command


def ours_engine(program: str, mode: str, backend: str | None, baseline: Path | None = None) -> Engine:
    """Our command in ``mode``; with ``baseline`` (a virtual environment holding another build
    of dask-datalog), that build's command, as the column ``mode (baseline)``."""
    dl = PROGRAMS[program][0]
    cli = [str(baseline / "bin" / "dask-datalog")] if baseline is not None else ours_cli()
    name = f"{mode} (baseline)" if baseline is not None else mode
    extra = MODES[mode] + (["--backend", backend] if backend else [])
    rel = output_relation(dl) or ("path" if program == "reach" else program)
    return Engine(name, name, rel, lambda facts, out: [*cli, "run", str(dl), "-F", str(facts), "-D", str(out), "--quiet", *extra])


def souffle_binary(peers: Path, program: str, cache: Path) -> Path | None:
    """The peer's compiled binary for `program`, or None if absent or not executable. Programs
    the peer has no binary for are compiled from ours with its bin/souffle, once per source."""
    source, prebuilt = PROGRAMS[program]
    if prebuilt is not None:
        b = peers / "bench" / prebuilt
        return b if b.is_file() and os.access(b, os.X_OK) else None
    compiler = peers / "bin" / "souffle"
    if not (compiler.is_file() and os.access(compiler, os.X_OK)):
        return None
    try:
        return common.compile_souffle(compiler, source.read_text(), f"souffle-{program}", cache)
    except common.CompileError as e:
        log(f"  {e}")
        return None


def generated_facts(program: str, size: int, facts_dir: Path) -> None:
    """Write the inputs of a generated workload (``GENERATED``) for `size` variables (seed 0)
    into facts_dir."""
    subprocess.run(
        [*ours_cli(), "gen", GENERATED[program], str(facts_dir), "--size", str(size), "--seed", "0"],
        check=True,
        capture_output=True,
    )


def souffle_engine(peers: Path, program: str, cache: Path) -> Engine | None:
    binary = souffle_binary(peers, program, cache)
    if binary is None:
        return None
    source = binary.with_suffix(".dl") if PROGRAMS[program][1] else PROGRAMS[program][0]
    ours_rel = output_relation(PROGRAMS[program][0])
    rel = output_relation(source) or ours_rel or program
    return Engine(
        "souffle", "Soufflé", rel, lambda facts, out: [str(binary), f"-j{SOUFFLE_JOBS}", "-F", str(facts), "-D", str(out)]
    )


# --------------------------------------------------------------------------------------------
# Facts and outputs


def _needs_conversion(src: Path) -> bool:
    """Whether an edge file is not already `a<TAB>b` lines without CR."""
    with open(src, "rb") as f:
        first = f.readline()
        if first.strip() and b"\t" not in first:
            return True
        if b"\r" in first:
            return True
        while chunk := f.read(1 << 22):
            if b"\r" in chunk:
                return True
    return False


def prepare_facts(src: Path, facts_dir: Path) -> bool:
    """Make facts_dir/edge.facts for both engines: a symlink to `src` when it is already
    tab-separated without CR, else a converted copy (CR dropped, fields joined by one tab,
    blank lines dropped). Returns whether it converted."""
    facts_dir.mkdir(parents=True, exist_ok=True)
    dst = facts_dir / "edge.facts"
    if not _needs_conversion(src):
        dst.symlink_to(src.resolve())
        return False
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for line in fi:
            fields = line.replace(b",", b" ").split()
            if fields:
                fo.write(b"\t".join(fields) + b"\n")
    return True


def count_rows(csv: Path) -> int | None:
    """Lines of a CSV file (a last line without newline counts); None if it is absent."""
    if not csv.is_file():
        return None
    n, last = 0, b"\n"
    with open(csv, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


# --------------------------------------------------------------------------------------------
# Running


def run_once(engine: Engine, facts: Path, out: Path, timeout_s: float, outcome: Outcome, where: str) -> None:
    """One measured run of `engine` into a fresh `out`; appends to / updates `outcome`."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = engine.argv(facts, out)
    try:
        m = common.measure(argv, timeout_s)
    except OSError as e:  # e.g. a peer binary built for another system
        log(f"  {where} {engine.label}: cannot start {argv[0]}: {e}")
        outcome.status = "error"
        return
    if m.peak_rss is not None:  # None: it ended before a poll saw it
        outcome.rss.append(m.peak_rss)
    if m.timed_out:
        log(f"  {where} {engine.label}: timeout after {timeout_s:.0f} s (peak RSS {fmt_bytes(m.peak_rss)})")
        outcome.status = "timeout"
        return
    if m.returncode != 0:
        log(f"  {where} {engine.label}: FAILED (exit {m.returncode}): {' '.join(argv)}\n" + indent(m.stderr_tail[-1500:]))
        outcome.status = "error"
        return
    rows = count_rows(out / f"{engine.relation}.csv")
    shutil.rmtree(out, ignore_errors=True)
    if rows is None:
        log(f"  {where} {engine.label}: exit 0 but no {engine.relation}.csv written")
        outcome.status = "no output"
        return
    outcome.status = "ok"
    outcome.walls.append(m.wall_s)
    if m.cpu_s is not None:
        outcome.cpus.append(m.cpu_s)
    outcome.sizes.append(rows)
    log(f"  {where} {engine.label}: {m.wall_s:.3f} s (CPU {m.cpu_s:.3f} s), {rows:,} rows, peak RSS {fmt_bytes(m.peak_rss)}")


def check_sizes(expected: int | None, outcomes: dict[str, Outcome], labels: dict[str, str]) -> list[str]:
    """What is wrong with the row counts: against the truth, between rounds, between engines."""
    bad: list[str] = []
    seen: dict[str, int] = {}
    for key, o in outcomes.items():
        if not o.sizes:
            continue
        distinct = sorted(set(o.sizes))
        if len(distinct) > 1:
            bad.append(f"{labels[key]} row counts differ between rounds: " + ", ".join(f"{s:,}" for s in distinct))
        seen[key] = o.sizes[0]
        if expected is not None and any(s != expected for s in distinct):
            wrong = ", ".join(f"{s:,}" for s in distinct if s != expected)
            bad.append(f"{labels[key]} {wrong} rows != truth {expected:,}")
    if expected is None and len(set(seen.values())) > 1:
        bad.append("engines disagree: " + ", ".join(f"{labels[k]} {v:,}" for k, v in seen.items()))
    return bad


# --------------------------------------------------------------------------------------------
# Driver


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        program, sep, graph = item.partition(":")
        program = program.strip().lower()
        if not sep or not graph.strip() or program not in PROGRAMS:
            raise ValueError(f"bad pair {item!r}: expected PROGRAM:GRAPH with PROGRAM one of {', '.join(PROGRAMS)}")
        graph = graph.strip()
        if (program in GENERATED) != graph.startswith("gen:") or (
            graph.startswith("gen:") and not graph.removeprefix("gen:").isdigit()
        ):
            raise ValueError(f"bad pair {item!r}: {', '.join(GENERATED)} take gen:N (N variables), reach and sg a graph")
        pairs.append((program, graph))
    return pairs


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = common.doc_parser(__doc__)
    ap.add_argument(
        "--pairs",
        help="comma-separated PROGRAM:GRAPH (PROGRAM reach or sg, GRAPH a "
        "dataset directory of --data or tiny/<stem>; or PROGRAM cspa, andersen or andersen_symbols, GRAPH "
        "gen:N, generated inputs for N variables); default: " + ",".join(f"{p}:{g}" for p, g in DEFAULT_PAIRS),
    )
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help=f"graph directory (default: {common.DEFAULT_DATA})")
    ap.add_argument(
        "--peers",
        type=Path,
        default=DEFAULT_PEERS,
        help=f"the Soufflé 2.5 peer folder, with bench/tc and bench/sg (default: {DEFAULT_PEERS})",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where Soufflé's compiled CSPA and Andersen are kept (default: {DEFAULT_CACHE})",
    )
    ap.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"our modes, comma-separated, among {', '.join(MODES)} (default: {','.join(DEFAULT_MODES)})",
    )
    ap.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        default=None,
        help="pass --backend to our command (default: not passed, the CLI's auto)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each engine runs once per round (default 3)")
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="VENV",
        help="a virtual environment with another build of dask-datalog (an earlier commit, say): its command runs "
        "as one more engine per mode, alternating with the others, for a before/after table in one sitting",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds (default 600)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/benchmarks.md)")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.with_bytecode()
    try:
        pairs = parse_pairs(args.pairs) if args.pairs else list(DEFAULT_PAIRS)
    except ValueError as e:
        log(f"error: {e}")
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        log(f"error: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        return 2
    if args.repeat < 1:
        log("error: --repeat must be at least 1")
        return 2
    baseline: Path | None = args.baseline.resolve() if args.baseline else None
    if baseline is not None and not (baseline / "bin" / "dask-datalog").is_file():
        log(f"error: no dask-datalog command in {baseline}/bin")
        return 2
    columns = modes + ([f"{m} (baseline)" for m in modes] if baseline is not None else [])
    data: Path = args.data.resolve()
    missing = common.missing_data_message(data)
    if missing:
        log(missing)
        return 2

    peers: Path = args.peers.resolve()
    needed = sorted({p for p, _ in pairs})
    absent = [
        f"bench/{PROGRAMS[p][1]}" if PROGRAMS[p][1] else f"bin/souffle for {p}"
        for p in needed
        if souffle_binary(peers, p, args.cache) is None
    ]
    if len(absent) == len(needed):
        peer_line = (
            f"Soufflé peer not found ({', '.join(absent)} absent or not executable in {peers}): measuring dask-datalog alone"
        )
    elif absent:
        peer_line = (
            f"Soufflé peer incomplete ({', '.join(absent)} absent or not executable in "
            f"{peers}): those workloads measure dask-datalog alone"
        )
    else:
        peer_line = None
    if peer_line:
        log(peer_line)
    has_peer = len(absent) < len(needed)

    gpu = common.gpu_name() if args.backend != "numpy" else None
    header = common.machine_lines(gpu)
    cli = " ".join(os.path.relpath(a, common.REPO_ROOT) if a.startswith(str(common.REPO_ROOT)) else a for a in ours_cli())
    header += [
        f"data: {data}",
        (
            f"peer: Soufflé 2.5 compiled ({peers}/bench/tc for REACH, bench/sg for SG, examples/"
            f"{{cspa,andersen,andersen_symbols}}.dl compiled by its bin/souffle -o), `BIN -j{SOUFFLE_JOBS} -F FACTS -D OUT`"
            if not peer_line
            else f"peer: {peer_line}"
        ),
        f"ours: `{cli} run examples/PROGRAM.dl -F FACTS -D OUT --quiet"
        + (f" --backend {args.backend}" if args.backend else "")
        + "`, as "
        + "; ".join(f"{m}: " + (" ".join(MODES[m]) or "no mode flag (where the CLI chooses to run)") for m in modes)
        + (f"; (baseline): the same with {baseline}/bin/dask-datalog" if baseline is not None else ""),
        "measured: whole command against whole command, each a fresh process writing its output "
        "CSV into an empty directory from the same FACTS/edge.facts; time: wall seconds from "
        "spawn to exit, median of the rounds; CPU: user + system seconds of the command and the "
        "children it waited for (os.wait4), median of the rounds; RSS: peak summed RSS of the command's process "
        "tree, the largest over the rounds",
        f"runs: {args.repeat} round(s), engines alternating within each round (a Williams design across rounds) "
        f"({', '.join((['Soufflé'] if has_peer else []) + columns)}); timeout {args.timeout:.0f} s "
        "per run; a timed-out or failed engine is not rerun on that workload",
        "rows: lines of each written CSV, checked against SOURCES.md (truth column) and between "
        "engines; !!MISMATCH marks a difference"
        + ("; ours/Soufflé: ratio of median wall times (above 1: slower than Soufflé)" if has_peer else ""),
    ]

    headers = ["workload", "truth (rows)"]
    if has_peer:
        headers += ["Soufflé (s)", "Soufflé CPU (s)", "Soufflé RSS"]
    for m in columns:
        headers += [f"{m} (s)", f"{m} CPU (s)", f"{m} RSS"] + ([f"{m}/Soufflé"] if has_peer else [])
    headers.append("rows")
    rows: list[list[str]] = []
    mismatches: list[str] = []
    ratios: dict[str, list[float]] = {m: [] for m in columns}
    converted: list[str] = []

    with tempfile.TemporaryDirectory(prefix="single_shard-") as tmp_name:
        tmp = Path(tmp_name)
        facts_dirs: dict[str | tuple[str, str], Path] = {}
        for program, graph in pairs:
            where = f"{program} {graph}"
            generated = graph.startswith("gen:")
            expected = None if generated else common.truth(graph, program).size
            truth_cell = f"{expected:,}" if expected is not None else "?"
            src = None if generated else common.graph_file(data, graph)
            log(f"{where}: {src if src or generated else 'MISSING'}")
            if src is None and not generated:
                rows.append([where, truth_cell] + ["-"] * (len(headers) - 3) + ["graph missing"])
                continue
            if generated and (program, graph) not in facts_dirs:
                fd = tmp / "facts" / f"{program}-{graph.replace(':', '-')}"
                generated_facts(program, int(graph.removeprefix("gen:")), fd)
                facts_dirs[(program, graph)] = fd
            elif not generated and graph not in facts_dirs:
                fd = tmp / "facts" / graph.replace("/", "__")
                if prepare_facts(src, fd):
                    converted.append(graph)
                    log(f"  {src.name}: not tab-separated without CR; converted a copy for both engines")
                facts_dirs[graph] = fd
            facts = facts_dirs[(program, graph) if generated else graph]

            engines: list[Engine] = []
            peer = souffle_engine(peers, program, args.cache)
            if peer is not None:
                engines.append(peer)
            engines += [ours_engine(program, m, args.backend) for m in modes]
            if baseline is not None:
                engines += [ours_engine(program, m, args.backend, baseline) for m in modes]
            outcomes = {e.key: Outcome() for e in engines}
            for r in range(args.repeat):
                for e in round_order(engines, r):
                    if outcomes[e.key].failed:
                        continue
                    run_once(e, facts, tmp / "out", args.timeout, outcomes[e.key], f"{where} round {r + 1}/{args.repeat}")

            labels = {e.key: e.label for e in engines}
            bad = check_sizes(expected, outcomes, labels)
            ran = [o for o in outcomes.values() if o.sizes]
            if bad:
                mismatches.append(f"{where}: " + "; ".join(bad))
                size_cell = "!!MISMATCH"
            elif not ran:
                size_cell = "-"
            else:
                size_cell = f"{ran[0].sizes[0]:,}" + (" (unverified)" if expected is None else "")

            row = [where, truth_cell]
            s = outcomes.get("souffle")
            if has_peer:
                row += [s.time_cell(), s.cpu_cell(), s.rss_cell()] if s is not None else ["absent", "-", "-"]
            for m in columns:
                o = outcomes[m]
                row += [o.time_cell(), o.cpu_cell(), o.rss_cell()]
                if has_peer:
                    ratio = o.median / s.median if s is not None and s.median and o.median else None
                    if ratio:
                        ratios[m].append(ratio)
                    row.append(fmt_ratio(ratio))
            row.append(size_cell)
            rows.append(row)

    if has_peer:
        gm_row = ["geomean", ""] + ["", "", ""]
        for m in columns:
            gm = common.geomean(ratios[m])
            gm_row += ["", "", "", fmt_ratio(gm) + (f" (n={len(ratios[m])})" if gm else "")]
        gm_row.append("")
        rows.append(gm_row)
    if converted:
        header.append("converted to tab-separated without CR (one copy for both engines): " + ", ".join(converted))

    if args.markdown:
        print("\n".join(f"- {h}" for h in header) + "\n")
    else:
        print("\n".join(header) + "\n")
    print(common.format_table(headers, rows, markdown=args.markdown, align="l" + "r" * (len(headers) - 1)))
    if mismatches:
        print("\n!!! RESULT SIZE MISMATCHES !!!")
        for m in mismatches:
            print(f"!!! {m}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
