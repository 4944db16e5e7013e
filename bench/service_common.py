"""Shared by the job service's benchmarks (bench/service_latency.py, bench/service_load.py) and
their test (tests/test_service_load.py): a ``dask-datalog serve`` started as users start it,
the small cases of Soufflé's own tests, the one-shot CLI's outputs to compare jobs with.

Cases come from ../shared/souffle-tests (cases/<name>/prog.dl, facts/, expected/*.csv): the
output cases the service takes as they are (no `#include`, no Soufflé flags, no stdout outputs)
with small facts, whose one-shot `dask-datalog run` gives Soufflé's expected files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "souffle-tests"
COMMAND = str(Path(sys.executable).parent / "dask-datalog")  # the venv's command, as users run it
TOKEN = "bench-token"
_INCLUDE = re.compile(r"^\s*(#\s*include|\.include)\b", re.MULTILINE)
SMALL_FACTS = 64 * 1024  # bytes of facts a "tiny" case may have


@dataclass(frozen=True)
class Case:
    name: str
    program: Path
    facts: Path | None  # None: the case has no facts folder

    @property
    def expected(self) -> Path:
        return self.program.parent / "expected"


def eligible_cases(suite: Path = SUITE) -> list[Case]:
    """The suite's output cases the service runs as they are, with small facts, by name."""
    cases = []
    for row in (suite / "cases" / "INDEX.tsv").read_text().splitlines()[1:]:
        name, _, kind, *_ = row.split("\t")
        folder = suite / "cases" / name
        if kind != "outputs" or (folder / "souffle_flags").exists() or (folder / "stdout_outputs").exists():
            continue
        if not (folder / "expected").is_dir() or _INCLUDE.search((folder / "prog.dl").read_text(errors="replace")):
            continue
        facts = folder / "facts" if (folder / "facts").is_dir() else None
        size = sum(f.stat().st_size for f in facts.iterdir()) if facts is not None else 0
        if size <= SMALL_FACTS:
            cases.append(Case(name, folder / "prog.dl", facts))
    return cases


def sample(cases: list[Case], n: int, seed: int) -> list[Case]:
    """``n`` cases drawn by ``seed`` (all of them when there are fewer), in name order."""
    return sorted(random.Random(seed).sample(cases, min(n, len(cases))), key=lambda c: c.name)


def outputs(folder: Path) -> dict[str, list[str]]:
    """The CSV outputs in ``folder``: file name -> its lines, sorted (shards write in any order)."""
    return {f.name: sorted(f.read_text().splitlines()) for f in sorted(folder.glob("*.csv"))}


def expected_outputs(case: Case) -> dict[str, list[str]]:
    """Soufflé's expected files, compared as its test runner does: lines right-stripped."""
    return {f.name: sorted(line.rstrip() for line in f.read_text().splitlines()) for f in sorted(case.expected.glob("*.csv"))}


def cli_run(case: Case, out: Path, cwd: Path) -> tuple[float, dict[str, list[str]] | None]:
    """The one-shot ``dask-datalog run`` of the case, in a fresh process: its wall time and its
    outputs (None when it failed)."""
    out.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    command = [COMMAND, "run", "--quiet", str(case.program), "-F", str(case.facts or cwd), "-D", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    wall = time.perf_counter() - t0
    return wall, outputs(out) if done.returncode == 0 else None


def passes(case: Case, got: dict[str, list[str]] | None) -> bool:
    """Whether outputs are Soufflé's expected ones (right-stripped lines, as the harness compares)."""
    if got is None:
        return False
    return {k: sorted(line.rstrip() for line in v) for k, v in got.items()} == expected_outputs(case)


class Served:
    """``dask-datalog serve`` in its own process group (its embedded cluster's workers too), on
    a free port, with one token; ``rss()`` is the resident memory of the service's process."""

    def __init__(self, state: Path, *extra: str):
        state.mkdir(parents=True, exist_ok=True)
        tokens = state / "tokens.json"
        tokens.write_text(json.dumps({"tokens": {TOKEN: "bench"}, "admins": ["bench"]}))
        command = [COMMAND, "serve", "--port", "0", "--state-dir", str(state), "--token-file", str(tokens), *extra]
        self.log = (state / "serve.log").open("w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"service at (\S+) on", line)
        if found is None:
            self.close()
            raise RuntimeError(f"dask-datalog serve did not start: {line!r} (its stderr: {state / 'serve.log'})")
        self.address = found[1]
        self.state = state

    def rss(self) -> int:
        """Bytes resident in the service's own process (not its workers'), from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def close(self) -> None:
        """SIGTERM, as a user stops it; SIGKILL to the group after 30 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@contextlib.contextmanager
def served(state: Path, *extra: str) -> Iterator[Served]:
    service = Served(state, *extra)
    try:
        yield service
    finally:
        service.close()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest rank: an observed value, never interpolated."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
