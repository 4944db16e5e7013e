#!/usr/bin/env python3
"""Multi-rule programs, whole command against whole command: dask-datalog beside compiled
Soufflé 2.5 on the flowlog-bench programs (andersen, cspa, csda, crdt, galen, dyck, doop,
polonius_int, z3), on generated inputs, with their outputs checked equal.

The programs are flowlog-bench's Soufflé programs (programs/oracle/souffle/ of
https://github.com/flowlog-rs/flowlog-bench). They are not in this repository (that one has no
licence): clone it beside this repository, or pass --programs DIR. They print their relations'
sizes (`.printsize`) and write nothing, so each is run with `.output R` added for every
`.printsize R` (the run writes what it computes, as a user's would, and the outputs can be
compared); that text is kept in --cache, never here.

What runs, for each program and size:

- inputs: `dask-datalog gen KIND --for PROGRAM.dl -o DIR --size N --seed S` (KIND the
  program's name; polonius for polonius_int), made once per (kind, size, seed, program text,
  generator version) into --cache;
- Soufflé (the peer, --peers): the program compiled once by its `bin/souffle -o BIN -j2`
  (cached by the program's text and the Soufflé build; not timed), run as
  `BIN -j2 -F DIR -D OUT`;
- ours: `dask-datalog run PROGRAM.dl -F DIR -D OUT --quiet` and the flags of --our-args (none by
  default: the command as a user types it).

With --resident a third engine joins them: the same command of ours, served by a resident
process (`dask-datalog daemon start`, started before the first run and stopped after the
last: cluster/cli/resident.py), which forks the run instead of starting Python, NumPy and the
engine. Its memory is the command's process and the resident process's child (the resident
process itself, there before and after, is not counted); its CPU time is not measured (the
child is not the command's to wait for).

The engines alternate, for --rounds rounds (ours first in odd rounds, Soufflé first in even ones);
each run is a fresh process into an empty OUT, timed from spawn to exit. The table shows the
median wall time of each, their ratio ours/Soufflé (above 1: slower than Soufflé), the median
CPU time (user + system) of each, the largest peak RSS of each command's process tree over the
rounds (polled, see common.measure), and
whether the outputs are equal; then the geometric mean of the ratios. After the first round
every output relation is compared as a set of rows: the lines of both R.csv files, sorted and
deduplicated, as exact text. Nothing is normalised: the nine programs' columns are numbers and
symbols, which both engines write as plain decimal integers and raw text, so no rewriting is
proven to keep equal values equal, and none is done. A difference is flagged !!MISMATCH with the
relation and a few rows found only on one side, and makes the exit status 1. An engine that
fails or times out is not run again at that size. Without the peer the script says so and
measures dask-datalog alone.

With --crossover each program climbs a ladder of sizes (--sizes, else 1000, 3000, 10000, ...
up to 1000000), stopping after the first size where either engine fails or times out, and a
table per program says between which sizes the ratio crosses 1.

    .venv/bin/python bench/programs.py --only andersen,cspa --sizes 1000,10000
    .venv/bin/python bench/programs.py --sizes andersen=100000 --sizes cspa=20000 --rounds 5
    .venv/bin/python bench/programs.py --only cspa --crossover --csv cspa.csv
    .venv/bin/python bench/programs.py --our-args '--workers 2 --cluster' --markdown
    .venv/bin/python bench/programs.py --resident --rounds 5 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import itertools
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import DEFAULT_CACHE, DEFAULT_PEERS, Outcome, fmt_bytes, fmt_ratio, indent, log, ours_cli

PROGRAMS = ("andersen", "cspa", "csda", "crdt", "galen", "dyck", "doop", "polonius_int", "z3")
KINDS = {"polonius_int": "polonius"}  # `gen` kind where it is not the program's name
FLOWLOG_BENCH = "https://github.com/flowlog-rs/flowlog-bench"
DEFAULT_PROGRAMS: Path = common.REPO_ROOT.parent / "flowlog-bench" / "programs" / "oracle" / "souffle"
# `gen --size` per program for inputs of about 2 MiB (issue 19's table measured 0.5-3 MB);
# examples/README.md lists what each size makes.
DEFAULT_SIZES = {
    "andersen": 100_000,
    "cspa": 100_000,
    "csda": 150_000,
    "crdt": 120_000,
    "galen": 100_000,
    "dyck": 120_000,
    "doop": 1_200,
    "polonius_int": 40_000,
    "z3": 15_000,
}
LADDER = (0.1, 0.3, 1, 3, 10)  # --crossover: these times each program's default size
SOUFFLE_JOBS = 2
SAMPLE_ROWS = 3  # differing rows named per side of a mismatch


# --------------------------------------------------------------------------------------------
# Programs


def missing_programs_message(programs_dir: Path, names: Sequence[str]) -> str | None:
    """Why `programs_dir` cannot serve the programs `names`, or None when it can."""
    absent = [n for n in names if not (programs_dir / f"{n}.dl").is_file()]
    if not absent:
        return None
    what = f"directory {programs_dir} not found" if not programs_dir.is_dir() else f"{', '.join(absent)}.dl not in {programs_dir}"
    return (
        f"error: flowlog-bench programs: {what}. They are expected in "
        f"../flowlog-bench/programs/oracle/souffle relative to the repository root ({DEFAULT_PROGRAMS}): "
        f"`git clone {FLOWLOG_BENCH}` beside the repository, or pass --programs DIR."
    )


_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_DIRECTIVE = re.compile(r"^[ \t]*\.(output|printsize)[ \t]+([A-Za-z_?][\w.?]*(?:[ \t]*,[ \t]*[A-Za-z_?][\w.?]*)*)", re.MULTILINE)


def directives(text: str, kind: str) -> list[str]:
    """The relations named by `.output` or `.printsize` (`kind`) directives, in order, without
    those in comments (cspa.dl has `// .printsize MemoryAlias`)."""
    names: list[str] = []
    for m in _DIRECTIVE.finditer(_COMMENTS.sub("", text)):
        if m.group(1) == kind:
            names += [n.strip() for n in m.group(2).split(",") if n.strip() not in names]
    return names


def checked_program(text: str) -> tuple[str, list[str]]:
    """The program as run: its text with `.output R` added for each `.printsize R` it does not
    output already; and all its output relations, whose R.csv both engines write."""
    outputs = directives(text, "output")
    added = [r for r in directives(text, "printsize") if r not in outputs]
    if added:
        text += "\n// bench/programs.py: write what the program prints the size of, to compare it\n"
        text += "".join(f".output {r}\n" for r in added)
    return text, outputs + added


# --------------------------------------------------------------------------------------------
# Inputs


class InputError(Exception):
    """The generator could not make a program's inputs; the message says why."""


def generator_version() -> str:
    """What generated inputs depend on besides their parameters: the sources of the package
    that implements `dask-datalog gen`, dask-datalog's and NumPy's versions ("same kind,
    parameters, seed and NumPy: same bytes")."""
    spec = importlib.util.find_spec("dask_datalog.cluster.experiments")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("dask-datalog is not importable by this interpreter: run the script with .venv/bin/python")
    h = hashlib.sha256()
    for folder in spec.submodule_search_locations:
        for f in sorted(Path(folder).glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    for dist in ("dask-datalog", "numpy"):
        h.update(f"{dist} {common.pkg_version(dist)}".encode())
    return h.hexdigest()[:16]


def input_key(kind: str, size: int, seed: int, program_text: str, version: str) -> str:
    """The cache folder's name of one generated input: readable parameters, then a digest of
    what else decides the bytes (the program read by --for, the generator's version)."""
    digest = hashlib.sha256(f"{version}\0{program_text}".encode()).hexdigest()[:16]
    return f"{kind}-n{size}-s{seed}-{digest}"


def generated_inputs(program: Path, kind: str, size: int, seed: int, cache: Path, version: str) -> Path:
    """The folder of `program`'s inputs at `size`, made by `dask-datalog gen` once (into a
    temporary folder renamed when complete, so an interrupted run is no cache hit)."""
    folder = cache / "inputs" / input_key(kind, size, seed, program.read_text(), version)
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [*ours_cli(), "gen", kind, "--for", str(program), "-o", str(partial), "--size", str(size), "--seed", str(seed)]
    log(f"generating {program.stem} inputs: {' '.join(argv[len(ours_cli()) :])}")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise InputError(
            f"`dask-datalog gen {kind} --for {program.name} -o DIR --size {size} --seed {seed}` failed (exit "
            f"{done.returncode}): {last}"
        )
    partial.rename(folder)
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------
# Comparing outputs


@dataclass
class Difference:
    """How one output relation differs between the engines (as sets of rows)."""

    relation: str
    missing: str | None = None  # which engine wrote no R.csv
    only_ours: int = 0
    only_souffle: int = 0
    ours_sample: list[str] = field(default_factory=list)
    souffle_sample: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.missing:
            return f"{self.relation}: {self.missing} wrote no {self.relation}.csv"
        parts = [f"{self.relation}: {self.only_ours:,} rows only in ours, {self.only_souffle:,} only in Soufflé's"]
        if self.ours_sample:
            parts.append("ours only: " + "; ".join(repr(r) for r in self.ours_sample))
        if self.souffle_sample:
            parts.append("Soufflé's only: " + "; ".join(repr(r) for r in self.souffle_sample))
        return ", ".join(parts)


_C_LOCALE = {**os.environ, "LC_ALL": "C"}  # byte order: sort and comm agree, whatever the locale


def _sorted_set(csv_file: Path, dest: Path) -> None:
    """`dest`: the distinct lines of `csv_file`, in byte order (GNU sort spills to disk, so any
    size fits)."""
    subprocess.run(["sort", "-u", "-T", str(dest.parent), "-o", str(dest), str(csv_file)], check=True, env=_C_LOCALE)


def _only_in(a: Path, b: Path) -> tuple[int, list[str]]:
    """Lines of sorted set `a` not in sorted set `b`: how many, and the first few."""
    with subprocess.Popen(["comm", "-23", str(a), str(b)], stdout=subprocess.PIPE, env=_C_LOCALE) as p:
        assert p.stdout is not None
        count, sample = 0, []
        for line in p.stdout:
            if count < SAMPLE_ROWS:
                sample.append(line.decode(errors="replace").rstrip("\n"))
            count += 1
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, p.args)
    return count, sample


def compare_outputs(ours: Path, souffle: Path, relations: Sequence[str], scratch: Path) -> list[Difference]:
    """The relations whose R.csv differ as sets of rows between the two output folders."""
    found: list[Difference] = []
    for rel in relations:
        a, b = ours / f"{rel}.csv", souffle / f"{rel}.csv"
        if not (a.is_file() and b.is_file()):
            gone = [name for name, f in (("ours", a), ("Soufflé", b)) if not f.is_file()]
            found.append(Difference(rel, missing=" and ".join(gone)))
            continue
        scratch.mkdir(parents=True, exist_ok=True)
        sa, sb = scratch / f"{rel}.ours", scratch / f"{rel}.souffle"
        _sorted_set(a, sa)
        _sorted_set(b, sb)
        n_ours, s_ours = _only_in(sa, sb)
        n_souffle, s_souffle = _only_in(sb, sa)
        sa.unlink()
        sb.unlink()
        if n_ours or n_souffle:
            found.append(Difference(rel, None, n_ours, n_souffle, s_ours, s_souffle))
    return found


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class Result:
    """One program at one size: both engines' runs and the comparison of their outputs."""

    program: str
    size: int
    input_bytes: int | None = None
    ours: Outcome = field(default_factory=Outcome)
    souffle: Outcome | None = None  # None: no peer
    resident: Outcome | None = None  # ours served by a resident process (--resident)
    differences: list[Difference] = field(default_factory=list)
    compared: bool = False
    note: str = ""  # why nothing ran

    @property
    def ratio(self) -> float | None:
        return self._to_souffle(self.ours)

    @property
    def resident_ratio(self) -> float | None:
        return self._to_souffle(self.resident)

    def _to_souffle(self, o: Outcome | None) -> float | None:
        s = self.souffle.median if self.souffle is not None else None
        m = o.median if o is not None else None
        return m / s if m and s else None

    @property
    def equal_cell(self) -> str:
        if self.note:
            return self.note
        if self.differences:
            return "!!MISMATCH " + ", ".join(d.relation for d in self.differences)
        return "yes" if self.compared else "-"

    @property
    def broken(self) -> bool:
        """Whether either engine failed or timed out (a crossover ladder climbs no further)."""
        return bool(self.note) or any(o is not None and o.failed for o in (self.ours, self.souffle, self.resident))


@dataclass
class Engine:
    label: str
    argv: list[str]  # without -F DIR -D OUT
    env: dict[str, str] | None = None  # None: this process's
    resident: int | None = None  # the pid of the resident process that runs it (common.measure)


def run_once(engine: Engine, facts: Path, out: Path, timeout_s: float, outcome: Outcome, where: str) -> bool:
    """One measured run into a fresh `out`; records it in `outcome`; whether it succeeded.

    Memory: common.measure polls the RSS of the command's process tree (psutil) and the
    command's own VmHWM; os.wait4's ru_maxrss is not used, as Linux carries this (forking)
    process's high-water mark into the child across exec."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = [*engine.argv, "-F", str(facts), "-D", str(out)]
    try:
        m = common.measure(argv, timeout_s, env=engine.env, resident=engine.resident)
    except OSError as e:  # e.g. a binary built for another system
        log(f"  {where} {engine.label}: cannot start {argv[0]}: {e}")
        outcome.status = "error"
        return False
    if m.peak_rss is not None:  # None: it ended before a poll saw it
        outcome.rss.append(m.peak_rss)
    if m.timed_out:
        log(f"  {where} {engine.label}: timeout after {timeout_s:.0f} s (peak RSS {fmt_bytes(m.peak_rss)})")
        outcome.status = "timeout"
        return False
    if m.returncode != 0:
        log(f"  {where} {engine.label}: FAILED (exit {m.returncode}): {shlex.join(argv)}\n" + indent(m.stderr_tail[-1500:]))
        outcome.status = "error"
        return False
    outcome.status = "ok"
    outcome.walls.append(m.wall_s)
    if m.cpu_s is not None:
        outcome.cpus.append(m.cpu_s)
    log(f"  {where} {engine.label}: {m.wall_s:.3f} s, peak RSS {fmt_bytes(m.peak_rss)}")
    return True


def measure_size(
    result: Result, engines: dict[str, Engine], facts: Path, relations: Sequence[str], rounds: int, timeout_s: float, tmp: Path
) -> None:
    """The rounds of one program at one size, engines alternating; the outputs of the first
    round compared."""
    where = f"{result.program} {result.size}"
    outcomes = {"ours": result.ours, "souffle": result.souffle, "resident": result.resident}
    for r in range(rounds):
        outs: dict[str, Path] = {}
        for key in common.round_order(list(engines), r):
            o = outcomes[key]
            if o is None or o.failed:
                continue
            out = tmp / f"out-{key}"
            if not run_once(engines[key], facts, out, timeout_s, o, f"{where} round {r + 1}/{rounds}"):
                continue
            absent = [rel for rel in relations if not (out / f"{rel}.csv").is_file()]
            if absent:
                log(f"  {where} {engines[key].label}: exit 0 but no {', '.join(a + '.csv' for a in absent)}")
                o.status = "no output"
                o.walls.pop()
                continue
            outs[key] = out
        if r == 0 and "souffle" in outs and len(outs) > 1:
            for key in ("ours", "resident"):
                if key in outs:
                    found = compare_outputs(outs[key], outs["souffle"], relations, tmp / "sorted")
                    result.differences += [replace(d, relation=f"{d.relation} ({key})") if key != "ours" else d for d in found]
            result.compared = True
            for d in result.differences:
                log(f"  {where}: !!MISMATCH {d.describe()}")
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Tables


HEADERS = [
    "program",
    "size",
    "input MiB",
    "ours (s)",
    "Soufflé (s)",
    "ours/Soufflé",
    "ours CPU (s)",
    "Soufflé CPU (s)",
    "ours peak MiB",
    "Soufflé peak MiB",
    "outputs equal",
]


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.2f}" if n < 2**20 else f"{n / 2**20:.1f}"


def _time_cell(o: Outcome | None) -> str:
    return "absent" if o is None else o.time_cell()


RESIDENT_HEADERS = ["resident (s)", "resident/Soufflé", "resident peak MiB"]


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    """The table's rows, one per (program, size), then the geometric mean of the ratios; with
    resident runs, their columns before the last."""
    resident = any(r.resident is not None for r in results)
    rows = [
        [
            r.program,
            f"{r.size:,}",
            _mib(r.input_bytes),
            _time_cell(r.ours),
            _time_cell(r.souffle),
            fmt_ratio(r.ratio),
            r.ours.cpu_cell(),
            r.souffle.cpu_cell() if r.souffle is not None else "absent",
            _mib(r.ours.peak_rss),
            _mib(r.souffle.peak_rss if r.souffle is not None else None),
            *(
                [_time_cell(r.resident), fmt_ratio(r.resident_ratio), _mib(r.resident.peak_rss if r.resident else None)]
                if resident
                else []
            ),
            r.equal_cell,
        ]
        for r in results
    ]

    def mean(ratios: list[float | None]) -> str:
        known = [x for x in ratios if x]
        gm = common.geomean(known)
        return fmt_ratio(gm) + (f" (n={len(known)})" if gm else "")

    tail = ["", mean([r.resident_ratio for r in results]), ""] if resident else []
    rows.append(["geomean", "", "", "", "", mean([r.ratio for r in results]), "", "", "", "", *tail, ""])
    return rows


def headers(results: Sequence[Result]) -> list[str]:
    resident = any(r.resident is not None for r in results)
    return [*HEADERS[:-1], *(RESIDENT_HEADERS if resident else []), HEADERS[-1]]


def crossover(points: Sequence[tuple[int, float | None]]) -> str:
    """Where ours/Soufflé crosses 1 along a ladder of (size, ratio), in words."""
    known = [(s, r) for s, r in points if r is not None]
    if not known:
        return "no size measured both ways"
    for (s0, r0), (s1, r1) in itertools.pairwise(known):
        if (r0 < 1) != (r1 < 1):
            faster = "ours faster" if r1 < 1 else "Soufflé faster"
            return f"crosses 1 between size {s0:,} ({fmt_ratio(r0)}) and {s1:,} ({fmt_ratio(r1)}): {faster} above"
    side = "ours faster" if known[0][1] < 1 else "Soufflé faster"
    return f"no crossing: {side} at every size measured ({known[0][0]:,} to {known[-1][0]:,})"


CROSSOVER_HEADERS = ["size", "input MiB", "ours (s)", "Soufflé (s)", "ours/Soufflé"]


def crossover_rows(results: Sequence[Result]) -> list[list[str]]:
    return [[f"{r.size:,}", _mib(r.input_bytes), _time_cell(r.ours), _time_cell(r.souffle), fmt_ratio(r.ratio)] for r in results]


CSV_FIELDS = [
    "program",
    "size",
    "input_bytes",
    "ours_s",
    "souffle_s",
    "ratio",
    "ours_cpu_s",
    "souffle_cpu_s",
    "ours_peak_bytes",
    "souffle_peak_bytes",
    "ours_status",
    "souffle_status",
    "resident_s",
    "resident_ratio",
    "resident_peak_bytes",
    "resident_status",
    "outputs_equal",
]


def csv_row(r: Result) -> dict[str, object]:
    """One result as raw numbers (empty where unknown), for --csv."""
    s = r.souffle
    return {
        "program": r.program,
        "size": r.size,
        "input_bytes": r.input_bytes if r.input_bytes is not None else "",
        "ours_s": r.ours.median or "",
        "souffle_s": (s.median if s is not None else None) or "",
        "ratio": r.ratio or "",
        "ours_cpu_s": statistics.median(r.ours.cpus) if r.ours.status == "ok" and r.ours.cpus else "",
        "souffle_cpu_s": statistics.median(s.cpus) if s is not None and s.status == "ok" and s.cpus else "",
        "ours_peak_bytes": r.ours.peak_rss or "",
        "souffle_peak_bytes": (s.peak_rss if s is not None else None) or "",
        "ours_status": r.ours.status,
        "souffle_status": s.status if s is not None else "absent",
        "resident_s": (r.resident.median if r.resident is not None else None) or "",
        "resident_ratio": r.resident_ratio or "",
        "resident_peak_bytes": (r.resident.peak_rss if r.resident is not None else None) or "",
        "resident_status": r.resident.status if r.resident is not None else "absent",
        "outputs_equal": r.equal_cell,
    }


# --------------------------------------------------------------------------------------------
# Driver


def parse_sizes(specs: Sequence[str], programs: Sequence[str], crossover: bool = False) -> dict[str, list[int]]:
    """Sizes per program from --sizes items `N,N,...` (every program) or `PROGRAM=N,N,...`;
    else its default size, or with ``crossover`` the ``LADDER`` of multiples of it."""
    sizes = {p: [max(1, round(DEFAULT_SIZES[p] * k)) for k in (LADDER if crossover else (1,))] for p in programs}
    for spec in specs:
        name, sep, numbers = spec.rpartition("=")
        try:
            values = [int(n.replace("_", "")) for n in numbers.split(",") if n.strip()]
        except ValueError:
            raise ValueError(f"bad --sizes {spec!r}: expected N,N,... or PROGRAM=N,N,...") from None
        if not values or any(v < 1 for v in values):
            raise ValueError(f"bad --sizes {spec!r}: sizes are positive integers")
        if sep and name not in PROGRAMS:
            raise ValueError(f"bad --sizes {spec!r}: {name!r} is none of {', '.join(PROGRAMS)}")
        for p in [name] if sep else programs:
            if p in sizes:
                sizes[p] = values
    return sizes


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = common.doc_parser(__doc__)
    ap.add_argument(
        "--programs",
        type=Path,
        default=DEFAULT_PROGRAMS,
        help=f"flowlog-bench's Soufflé programs, a clone of {FLOWLOG_BENCH} (default: {DEFAULT_PROGRAMS})",
    )
    ap.add_argument("--only", help=f"comma-separated programs to run (default: all, {','.join(PROGRAMS)})")
    ap.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="[PROGRAM=]N,N,...",
        help="generator sizes, for every program or for one (repeatable; default: inputs of about 2 MiB, "
        + ", ".join(f"{p}={n}" for p, n in DEFAULT_SIZES.items())
        + f"; with --crossover {', '.join(map(str, LADDER))} times those)",
    )
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ap.add_argument(
        "--crossover", action="store_true", help="climb a ladder of sizes per program; print where the ratio crosses 1"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each engine runs once per round (default 3)")
    ap.add_argument("--our-args", default="", help="flags added to our command, e.g. '--workers 2' (default: none)")
    ap.add_argument(
        "--resident",
        action="store_true",
        help="also run our command served by a resident process (`dask-datalog daemon start`), a third engine",
    )
    ap.add_argument(
        "--peers",
        type=Path,
        default=DEFAULT_PEERS,
        help=f"the Soufflé 2.5 peer folder, with bin/souffle (default: {DEFAULT_PEERS})",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where compiled programs and generated inputs are kept (default: {DEFAULT_CACHE})",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds (default 600)")
    ap.add_argument("--csv", type=Path, metavar="FILE", help="also write the rows, raw numbers, to FILE")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs/benchmarks.md)")
    return ap.parse_args(argv)


def selected(only: str | None) -> list[str]:
    if not only:
        return list(PROGRAMS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown or not names:
        raise ValueError(f"unknown program(s) {unknown} in --only; choose from {', '.join(PROGRAMS)}")
    return names


def run_program(
    name: str,
    args: argparse.Namespace,
    sizes: Sequence[int],
    compiler: Path | None,
    version: str,
    tmp: Path,
    resident: int | None,
) -> Iterator[Result]:
    """The results of one program, size by size (a crossover ladder stops after a failure)."""
    source = args.programs.resolve() / f"{name}.dl"
    text, relations = checked_program(source.read_text())
    cache: Path = args.cache.resolve()
    # Ours reads the same text as Soufflé compiled, from a file named by its digest.
    ours_dl = cache / "programs" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.dl"
    ours_dl.parent.mkdir(parents=True, exist_ok=True)
    ours_dl.write_text(text)
    command = [*ours_cli(), "run", str(ours_dl), "--quiet", *shlex.split(args.our_args)]
    engines = {"ours": Engine("ours", command, env=os.environ | {"DASK_DATALOG_RESIDENT": "off"})}
    if resident is not None:
        engines["resident"] = Engine("ours (resident)", command, resident=resident)
    souffle_note = ""
    if compiler is not None:
        try:
            binary = common.compile_souffle(compiler, text, name, cache / "souffle", [f"-j{SOUFFLE_JOBS}"])
            engines["souffle"] = Engine("Soufflé", [str(binary), f"-j{SOUFFLE_JOBS}"])
        except common.CompileError as e:
            log(str(e))
            souffle_note = "no binary"
    for size in sizes:
        result = Result(
            name, size, souffle=Outcome() if compiler is not None else None, resident=Outcome() if resident is not None else None
        )
        if souffle_note and result.souffle is not None:
            result.souffle.status = souffle_note
        try:
            facts = generated_inputs(source, KINDS.get(name, name), size, args.seed, cache, version)
        except InputError as e:
            log(f"{name} {size}: {e}")
            result.note = "no inputs"
        else:
            result.input_bytes = folder_bytes(facts)
            log(f"{name} {size}: inputs {facts} ({_mib(result.input_bytes)} MiB)")
            measure_size(result, engines, facts, relations, args.rounds, args.timeout, tmp)
        yield result
        if args.crossover and result.broken:
            log(f"{name}: the ladder stops at size {size:,}")
            return


@contextlib.contextmanager
def resident_process(wanted: bool) -> Iterator[int | None]:
    """The pid of a resident process serving our commands in this environment, started for
    the sitting and stopped after it (one already running is an error: it may run other code);
    None unless ``wanted``."""
    if not wanted:
        yield None
        return
    os.environ.pop("DASK_DATALOG_RESIDENT", None)  # the served commands' environment is this one: the process's key
    daemon = [*ours_cli(), "daemon"]
    if subprocess.run([*daemon, "status"], capture_output=True).returncode == 0:
        raise SystemExit("a resident process already serves this environment: stop it (dask-datalog daemon stop) first")
    started = subprocess.run([*daemon, "start"], capture_output=True, text=True)
    if started.returncode:
        raise SystemExit(f"cannot start a resident process: {started.stderr.strip()}")
    match = re.search(r"pid (\d+)", started.stdout)
    assert match, started.stdout
    try:
        yield int(match.group(1))
    finally:
        subprocess.run([*daemon, "stop"], capture_output=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.with_bytecode()
    try:
        names = selected(args.only)
        sizes = parse_sizes(args.sizes, names, args.crossover)
    except ValueError as e:
        log(f"error: {e}")
        return 2
    if args.rounds < 1:
        log("error: --rounds must be at least 1")
        return 2
    missing = missing_programs_message(args.programs.resolve(), names)
    if missing:
        log(missing)
        return 2
    try:
        version = generator_version()
    except InputError as e:
        log(f"error: {e}")
        return 2

    souffle = args.peers.resolve() / "bin" / "souffle"
    compiler = souffle if souffle.is_file() and os.access(souffle, os.X_OK) else None
    if compiler is None:
        log(f"Soufflé peer not found ({souffle} absent or not executable; --peers DIR): measuring dask-datalog alone")

    header = common.machine_lines()
    cli = shlex.join(ours_cli())
    header += [
        f"programs: {args.programs.resolve()} (flowlog-bench, {FLOWLOG_BENCH}), each with `.output R` added for its "
        "`.printsize R` relations",
        f"inputs: `{cli} gen KIND --for PROGRAM.dl -o DIR --size N --seed {args.seed}`",
        (
            f"peer: Soufflé 2.5 ({compiler}), `souffle -o BIN -j{SOUFFLE_JOBS} PROGRAM.dl` (not timed), "
            f"run as `BIN -j{SOUFFLE_JOBS} -F DIR -D OUT`"
            if compiler is not None
            else f"peer: absent ({args.peers.resolve()}/bin/souffle): dask-datalog alone"
        ),
        f"ours: `{cli} run PROGRAM.dl -F DIR -D OUT --quiet" + (f" {args.our_args}" if args.our_args else "") + "`",
        f"measured: whole command against whole command, {args.rounds} round(s) alternating; wall seconds from spawn "
        "to exit, median of the rounds; CPU: user + system seconds of the command and the children it waited for "
        "(os.wait4), median of the rounds; peak MiB: the largest summed RSS of the command's process tree over the "
        f"rounds; timeout {args.timeout:.0f} s per run",
        "outputs equal: every output relation after the first round, as sets of rows compared as exact text",
    ]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="programs-") as tmp_name, resident_process(args.resident) as resident:
        if resident is not None:
            header.append(
                f"resident: the same command served by a resident process (pid {resident}, `{cli} daemon start` before "
                "the first run): its child's memory counted, its CPU time not measured"
            )
        for name in names:
            results += run_program(name, args, sizes[name], compiler, version, Path(tmp_name), resident)

    bullet = "- " if args.markdown else ""
    print("\n".join(bullet + h for h in header) + "\n")
    columns = headers(results)
    print(common.format_table(columns, table_rows(results), markdown=args.markdown, align="l" + "r" * (len(columns) - 2) + "l"))
    if args.crossover:
        for name in names:
            mine = [r for r in results if r.program == name]
            print(f"\n{name}: {crossover([(r.size, r.ratio) for r in mine])}\n")
            print(common.format_table(CROSSOVER_HEADERS, crossover_rows(mine), markdown=args.markdown, align="rrrrr"))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(csv_row(r) for r in results)
    bad = [(r, d) for r in results for d in r.differences]
    if bad:
        print("\n!!! OUTPUT MISMATCHES !!!")
        for r, d in bad:
            print(f"!!! {r.program} {r.size:,}: {d.describe()}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
