"""Subsumption (``A(x) <= A(y) :- body.``): Soufflé 2.5's own cases and generated programs on
1-4 in-process shards against Soufflé's answers (its expected files; the binary itself where it
sits beside the repository), two programs against answers computed here with no Datalog at all
(shortest distances by Dijkstra, merged intervals by a sweep), the command line with two
workers, and the storage's removal of tuples.

Soufflé defines subsumption by the steps of its semi-naive loop (which candidates meet which
tuples when), so the naive evaluator of reference.py has no independent way to say what a
recursive subsumption keeps; Soufflé itself and the two closed-form answers are the oracles.
"""

from __future__ import annotations

import heapq
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_checkpoint import answers as shard_answers
from test_checkpoint import in_process, on_shards, suspend
from test_sharded import relation_tuples, run_sharded

from dask_datalog.cluster.cli.main import main
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.checkpoint import CheckpointOptions
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.storage import sets
from dask_datalog.engine.storage.hisa import RelationStore, pack

ROOT = Path(__file__).resolve().parent.parent
SOUFFLE = ROOT.parent / "shared" / "peers" / "souffle-2.5" / "bin" / "souffle"
CASES = ROOT.parent / "shared" / "souffle-tests" / "cases"
SOUFFLE_CASES = ["semantic-interval", "semantic-leq", "semantic-subsumption_multiple_rules", "evaluation-subsumption"]


def answers(program_text: str, n: int, **options: object) -> dict[str, set[tuple[str, ...]]]:
    """Every output relation on ``n`` thread shards, values as Soufflé prints them (numbers)."""
    program = load_program(program_text)
    shards = run_sharded(program, n, **options)  # type: ignore[arg-type]
    return {o.relation: {tuple(map(str, t)) for t in relation_tuples(shards, o.relation)} for o in program.outputs}


def souffle(program_text: str, tmp_path: Path) -> dict[str, set[tuple[str, ...]]]:
    (tmp_path / "p.dl").write_text(program_text)
    (tmp_path / "out").mkdir()
    subprocess.run([str(SOUFFLE), "p.dl", "-D", "out"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    return {f.stem: {tuple(line.split("\t")) for line in f.read_text().splitlines()} for f in (tmp_path / "out").glob("*.csv")}


@pytest.mark.skipif(not CASES.exists(), reason=f"Soufflé's test cases are not beside the repository ({CASES})")
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("case", SOUFFLE_CASES)
def test_soufflés_cases(case: str, n: int) -> None:
    """Recursive and non-recursive subsumption, several rules on one relation, records, a
    ``.plan``, ``_`` in both compared atoms, a relation left without ``btree_delete``."""
    got = answers((CASES / case / "prog.dl").read_text(), n)
    for expected in (CASES / case / "expected").glob("*.csv"):
        want = {tuple(line.split("\t")) for line in expected.read_text().splitlines()}
        assert got[expected.stem] == want, f"{case} {expected.stem} on {n} shards"


WILDCARDS = """
.decl E(x: number, y: number) btree_delete
E(1, 1). E(1, 2). E(5, 2). E(3, 0).
E(_, x1) <= E(_, x2) :- x1 <= x2.
.output E
.decl S(x: number, y: number) btree_delete
.decl T(x: number, y: number)
S(1, 1). T(1, 5).
S(x, y + 1) :- S(x, y), y < 6.
T(x, y) :- S(x, y), y > 2.
S(x, y1) <= S(x, y2) :- T(x, y2), y1 < y2.
.output S, T
.decl F(x: number)
F(1). F(2). F(3).
F(x) <= F(x) :- F(x).
.output F
.decl a(x: number) btree_delete
.decl b(x: number)
.decl s(x: number)
s(1). s(2). s(3).
a(x) :- s(x).
b(x) :- s(x), x > 2.
b(x) :- a(x).
a(x) :- b(x), x < 0.
a(x1) <= a(x2) :- b(x2), x1 < x2.
.output a, b
"""
WILDCARDS_ANSWER = {  # Soufflé 2.5's output
    "E": set(),  # each _ is a variable of its own: (1, 2) and (5, 2) dominate each other
    "S": {("1", "6")},  # S's subsumption reads T, of its own stratum, as delta in turn
    "T": {("1", "3"), ("1", "4"), ("1", "5"), ("1", "6")},
    "F": {("1",), ("2",), ("3",)},  # a tuple never dominates itself where the tuples must differ
    # a's non-recursive rules and deletions run before b's: b is empty when they do; b's
    # delta (all of b) then deletes a(1) and a(2) in the first iteration, after b took them
    "a": {("3",)},
    "b": {("1",), ("2",), ("3",)},
}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_soufflés_answers_on_corner_cases(n: int) -> None:
    assert answers(WILDCARDS, n, replicate_below=10**9 if n == 3 else 0) == WILDCARDS_ANSWER


def generated(seed: int) -> str:
    """A program over a small weighted graph: a relation with one to three subsumptive rules
    (sharing a column or not, strict or not, with a join or a negation in the body) and one of
    four recursive shapes (paths with costs, a self-join, a swap, none); a relation that reads
    it in a later stratum."""
    rng = random.Random(seed)
    lines = [".decl e(x: number, y: number, w: number)"]
    lines += [f"e({rng.randint(0, 6)}, {rng.randint(0, 6)}, {rng.randint(0, 4)})." for _ in range(rng.randint(4, 14))]
    lines.append(".decl p(x: number, y: number, c: number)" + rng.choice(["", " btree_delete"]))
    lines += [f"p({rng.randint(0, 6)}, {rng.randint(0, 6)}, {rng.randint(0, 3)})." for _ in range(rng.randint(1, 3))]
    lines += rng.choice(
        [
            ["p(x, z, c + w) :- p(x, y, c), e(y, z, w), c + w < 12."],
            ["p(x, z, c + w) :- p(x, y, c), e(y, z, w), c < 10.", "p(x, z, c) :- p(x, y, c), p(y, z, c2), c2 <= c."],
            ["p(y, x, c + 1) :- p(x, y, c), c < 8."],
            [],
        ]
    )
    for _ in range(rng.randint(1, 3)):
        shared = rng.choice(["x", "y", None])
        column = rng.choice([v for v in "xyc" if v != shared])
        op = rng.choice(["<", "<=", ">", ">="])
        if shared is None:
            body = rng.choice(["", ", e(x1, x2, _)", ", !e(x1, y1, _)"])
            lines.append(f"p(x1, y1, c1) <= p(x2, y2, c2) :- {column}1 {op} {column}2{body}.")
        else:
            a = {v: f"{v}1" for v in "xyc"} | {shared: shared}
            b = {v: f"{v}2" for v in "xyc"} | {shared: shared}
            lines.append(f"p({a['x']}, {a['y']}, {a['c']}) <= p({b['x']}, {b['y']}, {b['c']}) :- {column}1 {op} {column}2.")
    lines += [".output p", ".decl q(x: number, c: number)", "q(x, c) :- p(x, _, c).", ".output q"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(24))
def test_generated_programs_agree_on_every_shard_count(seed: int, tmp_path: Path) -> None:
    """1-4 shards (partitioned; replicated; joins in chunks of 3 rows; the GPU's code path on
    the CPU) give the same answer, and it is Soufflé's where Soufflé is beside the repository."""
    text = generated(seed)
    one = answers(text, 1)
    for n, options in ((2, {"chunk_rows": 3}), (3, {"replicate_below": 10**9}), (4, {"backend": "numpy-xp"})):
        assert answers(text, n, **options) == one, f"{n} shards {options}\n{text}"
    if SOUFFLE.exists():
        assert one == souffle(text, tmp_path), text


def shortest(edges: list[tuple[int, int, int]], sources: list[int]) -> set[tuple[str, ...]]:
    """(source, node, distance) for every node a source reaches: Dijkstra."""
    out = set()
    for s in sources:
        best = {s: 0}
        queue = [(0, s)]
        while queue:
            d, x = heapq.heappop(queue)
            if d > best[x]:
                continue
            for a, b, w in edges:
                if a == x and d + w < best.get(b, d + w + 1):
                    best[b] = d + w
                    heapq.heappush(queue, (d + w, b))
        out |= {(str(s), str(x), str(d)) for x, d in best.items()}
    return out


def merged(intervals: list[tuple[int, int]]) -> set[tuple[str, ...]]:
    """The maximal unions of intervals that overlap or touch: a sweep."""
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return {(str(lo), str(hi)) for lo, hi in out}


CLOSED_FORM = """
.decl e(x: number, y: number, w: number)
.input e
.decl dist(x: number, y: number, d: number) btree_delete
.input dist
dist(x, z, d + w) :- dist(x, y, d), e(y, z, w).
dist(x, y, d1) <= dist(x, y, d2) :- d2 < d1.
.output dist
.decl iv(l: number, u: number) btree_delete
.input iv
iv(l1, u2) :- iv(l1, u1), iv(l2, u2), l1 <= l2, l2 <= u1 + 1, u1 < u2.
iv(l1, u1) <= iv(l2, u2) :- l2 <= l1, u1 <= u2.
.output iv
"""


def closed_form_inputs(seed: int) -> tuple[dict[str, list[tuple[int, ...]]], dict[str, set[tuple[str, ...]]]]:
    rng = random.Random(seed)
    edges = [(rng.randint(0, 30), rng.randint(0, 30), rng.randint(1, 9)) for _ in range(120)]
    sources = list(range(0, 31, 3))
    intervals = [(lo, lo + rng.randint(0, 12)) for lo in (rng.randint(0, 500) for _ in range(60))]
    facts: dict[str, list[tuple[int, ...]]] = {"e": list(edges), "dist": [(s, s, 0) for s in sources], "iv": list(intervals)}
    return facts, {"dist": shortest(edges, sources), "iv": merged(intervals)}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_shortest_paths_and_merged_intervals(n: int) -> None:
    """Min-cost paths by ``<=`` on the cost column (cycles, many sources) and interval merging
    (candidates of one iteration dominating each other, inputs dominated at once)."""
    facts, want = closed_form_inputs(n)
    program = load_program(CLOSED_FORM)
    shards = run_sharded(program, n, facts=facts)
    for name, rows in want.items():
        assert {tuple(map(str, t)) for t in relation_tuples(shards, name)} == rows, f"{name} on {n} shards"


@pytest.mark.parametrize(("before", "after", "k"), [(0, 3, 1), (2, 0, 1), (3, 2, 4), (2, 4, 7)])
def test_resume_after_a_stop_inside_a_subsumptive_stratum(before: int, after: int, k: int, tmp_path: Path) -> None:
    """Stopped at the boundary after the non-recursive rules (k=1: every delta is then all of
    its relation) or after later iterations (deletions done, accepted tuples the delta), on
    ``before`` shards (0: in process), resumed on ``after``: the same answer."""
    facts, _ = closed_form_inputs(11)
    arrays = {name: np.array(rows, dtype=np.int64) for name, rows in facts.items()}
    program = load_program(CLOSED_FORM)
    want = in_process(program, arrays)
    suspend(program, before, arrays, tmp_path, k)
    resume = CheckpointOptions(str(tmp_path), resume="", verify=True, attempt="second")
    got = in_process(program, arrays, resume) if after == 0 else shard_answers(on_shards(program, after, arrays, resume), program)
    assert got == want


def test_the_command_line_with_two_workers(tmp_path: Path) -> None:
    """The CLI on an embedded cluster of two workers writes what it writes in process, which is
    the closed-form answer."""
    facts, want = closed_form_inputs(7)
    for name, rows in facts.items():
        (tmp_path / f"{name}.facts").write_text("".join("\t".join(map(str, t)) + "\n" for t in rows))
    (tmp_path / "prog.dl").write_text(CLOSED_FORM)
    runs = {}
    for where in (["--no-cluster"], ["--workers", "2", "--replicate-below", "0"]):
        out = tmp_path / where[0].strip("-")
        assert main(["run", str(tmp_path / "prog.dl"), "-F", str(tmp_path), "-D", str(out), "--quiet", *where]) == 0
        runs[where[0]] = {name: (out / f"{name}.csv").read_bytes() for name in want}
    assert runs["--no-cluster"] == runs["--workers"]
    for name, rows in want.items():
        assert {tuple(line.split("\t")) for line in runs["--workers"][name].decode().splitlines()} == rows


@pytest.mark.parametrize("backend", ["numpy", "numpy-xp"])
def test_removal_keeps_every_index_and_the_delta(backend: str) -> None:
    """Tuples leave full's runs in every column order (and the delta), other runs untouched;
    the bitmap mirror, which cannot forget, is dropped; joins then read what is left."""
    b = get_backend(backend)
    xp = b.xp
    rng = np.random.default_rng(3)
    store = RelationStore(2, b)
    everything: set[tuple[int, int]] = set()

    def rows(pairs: set[tuple[int, int]]) -> object:
        a = np.array(sorted(pairs), dtype=np.uint32).reshape(-1, 2)
        return sets.sort_unique(pack([xp.asarray(a[:, 0]), xp.asarray(a[:, 1])], a.shape[0], xp), b)

    for _ in range(5):
        batch = {(int(x), int(y)) for x, y in rng.integers(0, 40, size=(60, 2))} - everything
        store.add(store.novel(rows(batch)))
        everything |= batch
    store.index((1, 0))  # a second column order, compacted

    def decoded(packed: object) -> set[tuple[int, int]]:
        host = b.asnumpy(packed)[:, 0]
        return set(zip((host >> np.uint64(32)).tolist(), (host & np.uint64(0xFFFFFFFF)).tolist()))

    last = decoded(store.delta)
    assert (store.dense is not None) == (backend == "numpy"), "the CPU kernels mirror a box this small"
    gone = set(sorted(everything)[::7]) | set(sorted(last)[:5])
    assert store.remove(rows(gone)) == len(gone)
    assert store.dense is None
    left = everything - gone

    assert decoded(store.compact()) == left
    swapped = store.index((1, 0)).rows
    assert decoded(swapped) == {(y, x) for x, y in left}
    assert decoded(store.delta) == last - gone
    assert store.novel(rows(gone)).shape[0] == len(gone), "removed tuples are new again"
