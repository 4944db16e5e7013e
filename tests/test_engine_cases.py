"""Hand-written programs for engine behaviours the random programs found wrong once."""

from __future__ import annotations

import pytest

from dask_datalog.cluster import Program

COUNT_COMPARED = """
.decl e(a:number, b:number)
.decl r(x:number)
r(x) :- e(x, _), x = n, n = count : { e(_, _) }.
"""


@pytest.mark.parametrize(
    "edges, expected",
    [([(0, 0)], set()), ([(1, 5)], {(1,)}), ([(2, 0), (9, 9)], {(2,)})],
)
def test_a_comparison_with_an_aggregate_result_filters(edges, expected, backend):
    """`x = n` before `n = count : {...}` compares x with the count; it must not assign n
    from x (found by the hypothesis differential test)."""
    result = Program(COUNT_COMPARED).run(facts={"e": edges}, backend=backend)
    assert result.tuples("r") == expected


LIFTED_BESIDE_AGGREGATE = """
.decl a(x:number)
.decl b(x:number, y:number)
.decl c(x:number)
.decl r(n:number, y:number)
r(n, y) :- a(x), b(y, x + 3), n = count : { c(z), b(z + 1, _) }.
"""


def test_expressions_in_atoms_beside_an_aggregate(backend):
    """Lifted atom expressions and aggregate results get distinct fresh names (found by the
    differential test: 7 of 150 seeds)."""
    result = Program(LIFTED_BESIDE_AGGREGATE).run(facts={"a": [(1,)], "b": [(5, 4), (8, 1)], "c": [(7,), (8,)]}, backend=backend)
    assert result.tuples("r") == {(1, 5)}


def test_plan_lists_the_indexes_it_reads():
    """The plan names every (relation, column order) a full relation is read through: REACH
    scans path and probes edge on its first column (canonical order both); CSPA reads
    ValueFlow and MemoryAlias both ways round."""
    from pathlib import Path

    from dask_datalog.engine.frontend import load_program_file
    from dask_datalog.engine.plan import plan_program

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert plan_program(load_program_file(examples / "reach.dl")).indexes() == {("edge", (0, 1)), ("path", (0, 1))}
    cspa = plan_program(load_program_file(examples / "cspa.dl")).indexes()
    assert {("ValueFlow", (0, 1)), ("ValueFlow", (1, 0)), ("MemoryAlias", (0, 1)), ("MemoryAlias", (1, 0))} <= cspa
