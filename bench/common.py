"""Shared helpers for the benchmarks in bench/.

- ground truth (TC / SG sizes and iteration counts from shared/data/SOURCES.md);
- locating a graph's edge file inside the data directory;
- running one command in its own subprocess with a timeout, measuring its wall time and the
  peak RSS of its process tree;
- our command and the order engines run in within a round;
- compiling a Soufflé program once into a cache;
- describing the machine, and printing plain-text or Markdown tables.

No timing figure lives here: every peer figure a benchmark prints is measured in the same run
(bench/single_shard.py runs Soufflé side by side).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import hashlib
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TypeVar

REPO_ROOT: Path = Path(__file__).resolve().parents[1]
DEFAULT_DATA: Path = REPO_ROOT.parent / "shared" / "data"
DEFAULT_PEERS: Path = REPO_ROOT.parent / "shared" / "peers" / "souffle-2.5"
DEFAULT_CACHE: Path = Path.home() / ".cache" / "dask-datalog-bench"

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class Truth:
    """Known result size and recursive-iteration count (None where unknown)."""

    size: int | None
    iterations: int | None


# (TC, SG) per graph, from data/SOURCES.md. TC iterations = max shortest-path distance;
# SG iterations = recursive iterations (base rule not counted). SG is the form without
# `x != y` in the recursive rule.
GROUND_TRUTH: dict[str, dict[str, Truth]] = {
    "OL.cedge": {"reach": Truth(146_120, 64), "sg": Truth(285_431, 56)},
    "cal.cedge": {"reach": Truth(501_755, 195), "sg": Truth(23_519, 58)},
    "TG.cedge": {"reach": Truth(481_121, 58), "sg": Truth(608_090, 54)},
    "p2p-Gnutella09": {"reach": Truth(21_402_960, 20), "sg": Truth(62_056_583, 14)},
    "p2p-Gnutella04": {"reach": Truth(47_059_527, 26), "sg": Truth(116_931_333, 18)},
    "cti": {"reach": Truth(6_859_653, 53), "sg": Truth(14_503_742, 44)},
    "fe_sphere": {"reach": Truth(78_557_912, 188), "sg": Truth(205_814_096, 127)},
    "CA-HepTh": {"reach": Truth(74_619_885, 18), "sg": Truth(74_618_689, 9)},
    "p2p-Gnutella25": {"reach": Truth(118_094_553, 22), "sg": Truth(None, None)},
    "ego-Facebook": {"reach": Truth(2_508_102, 17), "sg": Truth(15_018_986, 13)},
    "p2p-Gnutella30": {"reach": Truth(311_129_068, 24), "sg": Truth(None, None)},
    "wiki-Vote": {"reach": Truth(11_947_132, 10), "sg": Truth(5_376_338, 4)},
    "luxembourg_osm": {"reach": Truth(5_022_084, 426), "sg": Truth(245_221, 326)},
    "wing": {"reach": Truth(329_438, 11), "sg": Truth(647_999, 8)},
    "p2p-Gnutella31": {"reach": Truth(884_179_859, 31), "sg": Truth(3_700_737_910, 20)},
    "fe_body": {"reach": Truth(156_120_489, 188), "sg": Truth(408_443_204, 40)},
    "usroads": {"reach": Truth(871_365_688, 606), "sg": Truth(3_137_407_481, 588)},
    "delaunay_n16": {"reach": Truth(6_137_959, 101), "sg": Truth(25_994_011, 85)},
    "loc-Brightkite": {"reach": Truth(138_269_412, 24), "sg": Truth(92_398_050, None)},
    "SF.cedge": {"reach": Truth(80_498_014, 287), "sg": Truth(382_418_182, 269)},
    "fe_ocean": {"reach": Truth(1_669_750_513, 247), "sg": Truth(65_941_441, 77)},
    # not in data/ (files too large), published figures only
    "vsp_finan": {"reach": Truth(910_070_918, 520), "sg": Truth(864_761_518, 513)},
    "com-dblp": {"reach": Truth(1_911_754_892, 31), "sg": Truth(None, None)},
    # data/tiny/
    "tiny/data_5": {"reach": Truth(9, 3), "sg": Truth(4, 3)},
    "tiny/data_10": {"reach": Truth(18, 3), "sg": Truth(11, 2)},
    "tiny/dummy": {"reach": Truth(13, None), "sg": Truth(None, None)},
    "tiny/data_22": {"reach": Truth(253, 22), "sg": Truth(None, None)},
}


def log(msg: str) -> None:
    """Progress and errors go to stderr; the tables are stdout."""
    print(msg, file=sys.stderr, flush=True)


def missing_data_message(data_dir: Path) -> str | None:
    """Why ``data_dir`` cannot serve as the graph directory, or None when it can."""
    if data_dir.is_dir():
        return None
    return (
        f"error: data directory {data_dir} not found. The benchmark graphs are expected in "
        f"../shared/data relative to the repository root ({DEFAULT_DATA}); "
        "pass --data DIR to point elsewhere."
    )


def truth(graph: str, program: str) -> Truth:
    """Ground truth for (graph, program), or an all-unknown Truth."""
    return GROUND_TRUTH.get(graph, {}).get(program, Truth(None, None))


def graph_file(data_dir: Path, graph: str) -> Path | None:
    """The text edge file of `graph` in `data_dir` (None if absent).

    A dataset directory's `edge.facts` wins (fe_ocean: text beside the .bin); otherwise its
    single `data_*.txt` that is not a weighted `_original` file. `tiny/<stem>` names a file
    of data/tiny/.
    """
    if graph.startswith("tiny/"):
        for ext in (".txt", ".facts"):
            p = data_dir / (graph + ext)
            if p.is_file():
                return p
        return None
    d = data_dir / graph
    if not d.is_dir():
        return None
    if (d / "edge.facts").is_file():
        return d / "edge.facts"
    txt = sorted(p for p in d.glob("data_*.txt") if not p.stem.endswith("_original"))
    return txt[0] if txt else None


# --------------------------------------------------------------------------------------------
# Measuring a subprocess


@dataclass
class Measurement:
    """Outcome of one measured subprocess."""

    returncode: int | None  # None on timeout
    timed_out: bool
    wall_s: float  # of the whole subprocess, interpreter start included
    cpu_s: float | None  # user + system of the command and the children it waited for (os.wait4); None on timeout
    peak_rss: int | None  # bytes; max of the polled RSS of its tree and the child's own VmHWM; None: never seen
    stderr_tail: str


def _tree_rss(pid: int | None, with_root: bool = True) -> int:
    """Current RSS (bytes) of a process (unless not ``with_root``) and all its descendants; 0
    if gone, None or no psutil."""
    if pid is None:
        return 0
    try:
        import psutil
    except ImportError:
        return 0

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if with_root else root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _hwm(pid: int) -> int:
    """Peak RSS (bytes) of one process since its exec (VmHWM of /proc/PID/status); 0 if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def measure(
    cmd: Sequence[str], timeout_s: float, poll_s: float = 0.02, env: dict[str, str] | None = None, resident: int | None = None
) -> Measurement:
    """Run `cmd` in a fresh process (own session); return its exit status, wall time, CPU time
    (user + system, as `os.wait4` reports it: wall time on a loaded or drifting machine moves
    with what else runs, CPU time less) and peak RSS. With `resident` (the pid of the resident
    process that runs our command as its child, cluster/cli/resident.py), that process's
    descendants count as the command's (not itself: it was there before and stays); their CPU
    time is not the command's to wait for, so none is given.

    Peak RSS is the larger of the largest summed RSS of the child's process tree seen by
    polling every `poll_s` (covers helper processes, Dask workers; the first polls 1, 2, 4, ... ms
    apart, so that a command of a few milliseconds, Soufflé's on a small input, is seen running
    at all) and the child's own high-water
    mark (VmHWM, which also catches its spikes between polls), as last read while it ran. The
    child's `ru_maxrss` from `os.wait4` is not used: Linux carries the RSS high-water mark of
    the forking process (this one) across exec into it, so it never reads below this
    process's own peak. A command that ended before any poll read it (a few milliseconds on
    a busy machine) has no peak (None), not a peak of 0. On timeout the child's whole process
    group is killed. The command's stdout is discarded; the tail of its stderr is kept.
    """
    _tree_rss(os.getpid())  # psutil imported now: importing it in the first poll took 10-20 ms
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=env)
        polled = 0
        timed_out = False
        status: int | None = None
        cpu: float | None = None
        delay = 0.001
        while True:
            pid, st, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status, cpu = st, usage.ru_utime + usage.ru_stime
                break
            polled = max(polled, _hwm(proc.pid), _tree_rss(proc.pid) + _tree_rss(resident, with_root=False))
            if time.perf_counter() - t0 > timeout_s:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _, status = os.waitpid(proc.pid, 0)
                break
            time.sleep(min(delay, poll_s))
            delay *= 2
        wall = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status) if status is not None else None
        proc.returncode = rc  # reaped by wait4/waitpid already; keep Popen from waiting again
        if timed_out:  # helpers that escaped into their own group are not ours to chase
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Measurement(
        returncode=None if timed_out else rc,
        timed_out=timed_out,
        wall_s=wall,
        cpu_s=None if timed_out or resident is not None else cpu,
        peak_rss=polled or None,
        stderr_tail=stderr[-3000:],
    )


# --------------------------------------------------------------------------------------------
# The engines


@dataclass
class Outcome:
    """The runs of one engine on one workload."""

    status: str = "-"  # "ok", "timeout", "error", "no output", "-" (not run)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)  # user + system seconds of the runs that have them
    rss: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # rows written, one per successful run

    @property
    def failed(self) -> bool:
        return self.status not in ("-", "ok")

    @property
    def median(self) -> float | None:
        return statistics.median(self.walls) if self.status == "ok" and self.walls else None

    @property
    def peak_rss(self) -> int | None:
        return max(self.rss) if self.rss else None

    def time_cell(self) -> str:
        return fmt_seconds(self.median) if self.status == "ok" else self.status

    def cpu_cell(self) -> str:
        return fmt_seconds(statistics.median(self.cpus)) if self.status == "ok" and self.cpus else "-"

    def rss_cell(self) -> str:
        return fmt_bytes(self.peak_rss) if self.status in ("ok", "timeout") and self.rss else "-"


def doc_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser whose --help is its docstring: the first paragraph above the options,
    the rest below them, as written."""
    text = doc or ""
    return argparse.ArgumentParser(
        description=text.split("\n\n")[0],
        epilog="\n\n".join(text.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def with_bytecode() -> None:
    """Let the commands this process starts write and read Python's bytecode caches: an
    installed package has them, and where PYTHONDONTWRITEBYTECODE is set (this project's
    development machines set it) every run of ours would compile its ~70 modules again
    (about 0.17 s), a cost no user pays."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def ours_cli() -> list[str]:
    """The `dask-datalog` console script beside this interpreter, else `python -m` its module."""
    script = Path(sys.executable).parent / "dask-datalog"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "dask_datalog.cluster.cli"]


def round_order(engines: Sequence[T], r: int) -> list[T]:
    """The engines of round ``r`` in a Williams design: over n rounds (2n for an odd number n of
    engines) each engine runs right after each other one equally often. In a fixed (or merely
    rotated) order the engine right after Soufflé's run (seconds of both cores, hundreds of MiB
    freed) measured up to 10% slower, and it was always the same one."""
    n = len(engines)
    steps, low, high = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...
    while len(steps) < n:
        steps.append(low)
        low += 1
        if len(steps) < n:
            steps.append(high)
            high -= 1
    row = r % (n if n % 2 == 0 else 2 * n)
    order = [engines[(row + step) % n] for step in steps]
    return order[::-1] if row >= n else order


def indent(text: str) -> str:
    return "\n".join("    " + ln for ln in text.splitlines())


@functools.cache
def souffle_version(compiler: Path) -> str:
    """A digest naming a Soufflé build: its `--version` text (2.5's has an empty version line, so
    it cannot tell builds apart alone) and the bytes of the compiler and of the
    souffle-compile.py beside it, which drives the C++ compiler."""
    h = hashlib.sha256()
    done = subprocess.run([str(compiler), "--version"], capture_output=True, timeout=60)
    h.update(done.stdout)
    for f in (compiler, compiler.parent / "souffle-compile.py"):
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def souffle_cache_key(program_text: str, version: str, flags: Sequence[str]) -> str:
    """What a compiled binary depends on: the program's text, the Soufflé build, the flags."""
    return hashlib.sha256("\0".join([version, *flags, program_text]).encode()).hexdigest()[:16]


class CompileError(Exception):
    """Soufflé could not compile a program; the message holds its stderr's tail."""


def compile_souffle(compiler: Path, program_text: str, name: str, cache: Path, flags: Sequence[str] = ()) -> Path:
    """The binary of `program_text` compiled by `compiler -o BIN *flags`, made once per
    (text, Soufflé build, flags) into `cache`/NAME-KEY/ (tens of seconds each, not timed)."""
    key = souffle_cache_key(program_text, souffle_version(compiler), flags)
    folder = cache / f"{name}-{key}"
    binary = folder / name
    if binary.is_file():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{name}.dl"
    source.write_text(program_text)
    partial = folder / f"{name}.partial"  # renamed when complete: an interrupted compile is not a hit
    log(f"compiling {name} with {compiler} (once, into {binary})")
    done = subprocess.run([str(compiler), "-o", str(partial), *flags, str(source)], capture_output=True, text=True)
    if done.returncode != 0 or not partial.is_file():
        raise CompileError(f"Soufflé could not compile {name} (exit {done.returncode}):\n" + indent(done.stderr[-1500:]))
    partial.rename(binary)
    return binary


# --------------------------------------------------------------------------------------------
# Machine description


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_bytes() -> int:
    """Total RAM in bytes (0 if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gpu_name(timeout_s: float = 60.0) -> str | None:
    """Name of CUDA device 0 via CuPy, asked in a subprocess (None if there is none)."""
    code = "import cupy; n = cupy.cuda.runtime.getDeviceProperties(0)['name'];print(n.decode() if isinstance(n, bytes) else n)"
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def pkg_version(name: str) -> str:
    """Installed version of a distribution, or 'absent'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def git_revision() -> str:
    """Short commit of the repository, with '+dirty' when the tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def machine_lines(gpu: str | None = None) -> list[str]:
    """'key: value' lines describing this machine and the software versions."""
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    cores = f"{os.cpu_count()} logical" + (f", {physical} physical" if physical else "")
    lines = [
        f"date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {cpu_model()}, {cores} cores, {ram_bytes() / 2**30:.1f} GiB RAM, {platform.system()} {platform.release()}",
    ]
    if gpu is not None:
        lines.append(f"gpu: {gpu}")
    lines.append(
        f"versions: python {platform.python_version()}, numpy {pkg_version('numpy')}, "
        f"dask-datalog {pkg_version('dask-datalog')} "
        f"(git {git_revision()})"
    )
    return lines


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_bytes(n: int | None) -> str:
    """Human-readable size in MiB/GiB ('-' for None)."""
    if n is None:
        return "-"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB"


def fmt_seconds(s: float | None) -> str:
    """Seconds with 3 significant-ish digits ('-' for None)."""
    if s is None:
        return "-"
    if s >= 100:
        return f"{s:.0f}"
    if s >= 10:
        return f"{s:.1f}"
    if s >= 0.1:
        return f"{s:.2f}"
    return f"{s:.3f}"


def fmt_ratio(r: float | None) -> str:
    """A ratio as '12.3x' ('-' for None)."""
    if r is None:
        return "-"
    if r < 0.1:
        return f"{r:.3f}x"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def geomean(values: Iterable[float]) -> float | None:
    """Geometric mean of the positive values (None if there are none)."""
    logs = [math.log(v) for v in values if v is not None and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def _is_numeric(cell: str) -> bool:
    """Whether a cell starts with a number ('1,234 !!', '(58)', '2.5x', '75 MiB')."""
    head = cell.split()[0] if cell.split() else ""
    head = head.strip("()").replace(",", "").rstrip("x")
    try:
        float(head)
        return True
    except ValueError:
        return False


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False, align: str | None = None) -> str:
    """Plain-text (aligned) or GitHub Markdown table.

    `align` gives one 'l' or 'r' per column; without it, columns whose cells mostly start
    with a number are right-aligned.
    """
    ncol = len(headers)
    right: list[bool] = []
    for i in range(ncol):
        if align is not None:
            right.append(align[i] == "r")
            continue
        cells = [r[i] for r in rows if i < len(r) and r[i] not in ("-", "", "?")]
        num = sum(_is_numeric(c) for c in cells)
        right.append(num > 0 and 2 * num >= len(cells))
    if markdown:
        esc = [[c.replace("|", "\\|") for c in r] for r in rows]
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if right[i] else "---" for i in range(ncol)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(out)
    widths = [max([len(headers[i])] + [len(r[i]) for r in rows if i < len(r)]) for i in range(ncol)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if right[i] else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])
