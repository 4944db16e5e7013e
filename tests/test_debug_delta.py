"""Soufflé's ``debug_delta`` relations and ``recursive_iteration_cnt()``: each delta of a
recursive stratum with the iteration that made it, counted as Soufflé 2.5's loop counts (0:
what the relation held when the loop began, its input facts too; then 1, 2, ...), on 1-4
in-process shards (replicated inputs too), against Soufflé itself where its binary is present.
(Soufflé 2.5 loops forever when a relation with a debug_delta is not itself an output: the
generated programs output every relation.)"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from test_sharded import relation_tuples, run_sharded
from test_symbol_functors import SOUFFLE

from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program

# Rule sets over an input e; every head relation has a debug_delta relation.
TEMPLATES = (
    "p(x, y) :- e(x, y).\np(x, z) :- p(x, y), e(y, z).",
    "p(x, y) :- e(x, y).\np(x, z) :- p(x, y), p(y, z).",
    "p(x, y) :- e(x, y).\np(x, z) :- p(x, y), e(y, z), recursive_iteration_cnt() < {k}.",
    "p(x, y) :- e(x, y).\np(y, x) :- p(x, y), x < y.\np(x, z) :- p(x, y), e(y, z), z != x.",
    "p(x, 0) :- e(x, _).\np(y, n + 1) :- p(x, n), e(x, y), n < {k}.",
    "p(0, 0).\np(x + 1, as(recursive_iteration_cnt(), number)) :- p(x, _), x < {k}.",
    "p(x, y) :- e(x, y).\np(x, y) :- q(x, y).\nq(y, x) :- p(x, y), e(y, _).",
)
DECLS = """
.decl e(x: number, y: number)
.input e
.decl p(x: number, y: number)
.decl q(x: number, y: number)
.decl pd = debug_delta(p)
.decl qd = debug_delta(q)
.decl ed = debug_delta(e)
.decl first(x: number, y: number)
first(x, y) :- pd(x, y, 0).
.output e, p, q, pd, qd, ed, first
"""
NAMES = ("p", "q", "pd", "qd", "ed", "first")


def generated(seed: int) -> tuple[str, list[tuple[int, int]]]:
    rng = random.Random(seed)
    rules = rng.choice(TEMPLATES).format(k=rng.randint(1, 4))
    edges = sorted({(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(rng.randint(0, 12))})
    return DECLS + rules + "\n", edges


def souffle_tuples(text: str, facts: list[tuple[int, int]], tmp_path: Path) -> dict[str, set[tuple[int, ...]]]:
    (tmp_path / "prog.dl").write_text(text)
    (tmp_path / "e.facts").write_text("".join(f"{a}\t{b}\n" for a, b in facts))
    done = subprocess.run([str(SOUFFLE), "-F", ".", "-D", ".", "prog.dl"], cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {
        name: {tuple(int(v) for v in line.split("\t")) for line in (tmp_path / f"{name}.csv").read_text().splitlines()}
        for name in NAMES
    }


@pytest.mark.parametrize("seed", range(24))
def test_the_same_deltas_on_shards(seed: int) -> None:
    text, edges = generated(seed)
    program = load_program(text, f"<debug seed {seed}>")
    want = run_sharded(program, 1, facts={"e": edges})
    n = 2 + seed % 3
    shards = run_sharded(program, n, facts={"e": edges}, replicate_below=1000 if seed % 2 else 0)
    for name in NAMES:
        assert relation_tuples(shards, name) == relation_tuples(want, name), f"{name} on {n} shards\n{text}\n{edges}"
    deltas = relation_tuples(want, "pd")
    assert {(x, y) for x, y, _ in deltas} == relation_tuples(want, "p")  # each tuple once, at the iteration it came
    assert len({(x, y) for x, y, _ in deltas}) == len(deltas)


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
@pytest.mark.parametrize("seed", range(24))
def test_deltas_match_souffle(seed: int, tmp_path: Path) -> None:
    text, edges = generated(seed)
    want = souffle_tuples(text, edges, tmp_path)
    shards = run_sharded(load_program(text), 1 + seed % 4, facts={"e": edges})
    for name, expected in want.items():
        assert relation_tuples(shards, name) == expected, f"{name}\n{text}\n{edges}"


ITERATIONS = """
.decl r(x: number)
.output r
r(0).
r(x + 1) :- r(x), recursive_iteration_cnt() < 5.
.decl rd = debug_delta(r)
.output rd
"""


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_the_iteration_counter_counts_as_souffles_loop(n: int) -> None:
    """Soufflé's counter is 1 in the loop's first iteration; the debug relation holds (x, x)
    here, as in Soufflé's own test iteration_counter."""
    shards = run_sharded(load_program(ITERATIONS), n)
    assert relation_tuples(shards, "r") == {(x,) for x in range(5)}
    assert relation_tuples(shards, "rd") == {(x, x) for x in range(5)}


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (".decl r(x: number)\n.decl d = debug_delta(s)", "2:7", "undeclared relation s in debug_delta(s)"),
        (".decl r(x: number)\n.decl d = debug_delta(r)\nd(1, 2).", "2:7", "Unexpected rules/facts for delta_debug relation d"),
        (".decl r(x: unsigned)\nr(recursive_iteration_cnt()).", "2:3", "Argument in fact is not constant"),
        (
            ".decl r(x: number)\n.decl s(x: unsigned)\nr(1).\ns(recursive_iteration_cnt()) :- r(_).",
            "4:3",
            "unsupported: recursive_iteration_cnt() outside a recursive rule",
        ),
        (
            ".decl r(x: number)\n.decl d = debug_delta(r)\nr(0).\nr(x + 1) :- r(x), d(x, _), x < 3.",
            "4:19",
            "unsupported: d, the debug_delta of r, read in its own stratum",
        ),
    ],
)
def test_bad_debug_programs(text: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        load_program(text, "prog.dl")
    assert str(info.value).startswith(f"prog.dl:{where}: error: {message}"), str(info.value)
