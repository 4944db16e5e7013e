"""Join orders from sizes (engine/execution/join_order.py): the planner follows a cost, and a
run re-planned from the sizes it sees gives the reference evaluator's answer."""

from __future__ import annotations

import numpy as np
import pytest
from reference import evaluate

from dask_datalog.cluster import Program
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.ir import Atom
from dask_datalog.engine.plan import JoinStep, StratumPlan, plan_program, replan_version

# GALEN's rule 20 (flowlog-bench galen.dl): with the delta on the last atom, Q and R each
# share one bound variable with it.
GALEN_20 = """
.decl Q(x:number, y:number, z:number)
.decl R(r:number, p:number, e:number)
.decl Q0(x:number, y:number, z:number)
Q(x, y, z) :- Q0(x, y, z).
Q(x, e, o) :- Q(x, y, z), R(y, u, e), Q(z, u, o).
"""


def replan_stratum(stratum: StratumPlan, program, cost) -> StratumPlan:
    """Every version of ``stratum`` re-planned on ``cost``, as JoinOrder does when sizes move."""
    again = [replan_version(rp, stratum.relations, program, cost) for rp in stratum.initial + stratum.deltas]
    return StratumPlan(
        stratum.relations, stratum.recursive, tuple(again[: len(stratum.initial)]), tuple(again[len(stratum.initial) :])
    )


def joins(rp) -> list[tuple[str, str]]:
    return [(s.atom.relation, s.version) for s in rp.steps if isinstance(s, JoinStep)]


def test_the_smallest_fanout_is_joined_first():
    """With a cost, the planner takes the connected atom of least fan-out; without one, the
    most bound positions and then the written order, as before."""
    program = load_program(GALEN_20)
    stratum = next(s for s in plan_program(program).strata if s.recursive)
    last = next(rp for rp in stratum.deltas if rp.delta_step.atom == rp.rule.body[2])
    assert joins(last) == [("Q", "delta"), ("Q", "full"), ("R", "full")]

    def cost(atom: Atom, columns: tuple[int, ...]) -> float:
        return {"Q": 1000.0, "R": 3.0, "Q0": 1.0}[atom.relation]

    replanned = replan_stratum(stratum, program, cost)
    assert [rp.rule for rp in replanned.deltas] == [rp.rule for rp in stratum.deltas]
    assert [rp.delta_step.atom for rp in replanned.deltas] == [rp.delta_step.atom for rp in stratum.deltas]
    last = next(rp for rp in replanned.deltas if rp.delta_step.atom == rp.rule.body[2])
    assert joins(last) == [("Q", "delta"), ("R", "full"), ("Q", "full")]


def test_no_cross_product_for_a_cheaper_unconnected_atom():
    """An atom sharing nothing with what is bound waits, however small: `b` (1 row) after
    `c`, which shares x with the delta."""
    program = load_program(
        """
        .decl a(x:number) .decl b(y:number) .decl c(x:number, y:number)
        a(x) :- c(x, _).
        a(y) :- a(x), b(y), c(x, y).
        """
    )
    stratum = next(s for s in plan_program(program).strata if s.recursive)
    replanned = replan_stratum(stratum, program, lambda atom, columns: {"a": 9.0, "b": 1.0, "c": 50.0}[atom.relation])
    assert joins(replanned.deltas[0]) == [("a", "delta"), ("c", "full"), ("b", "full")]


def test_a_rule_numbering_its_bindings_keeps_its_order():
    program = load_program(
        """
        .decl e(x:number, y:number) .decl n(x:number, y:number, k:number)
        n(x, y, autoinc()) :- e(x, y), e(y, x).
        """
    )
    stratum = plan_program(program).strata[-1]
    assert replan_stratum(stratum, program, lambda atom, columns: 1.0).initial == stratum.initial


def galen_like(seed: int) -> dict[str, np.ndarray]:
    """Q0 past the thousand rows under which a version keeps its static plan."""
    rng = np.random.default_rng(seed)
    q0 = np.stack([rng.integers(0, 40, 1500), rng.integers(0, 4, 1500), rng.integers(0, 40, 1500)], axis=1)
    r = np.stack([rng.integers(0, 4, 6), rng.integers(0, 4, 6), rng.integers(0, 4, 6)], axis=1)
    return {"Q0": q0, "R": r}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_replanned_run_gives_the_reference_answer(seed, backend):
    """In process (re-planned on the sizes it sees) against the reference evaluator."""
    facts = galen_like(seed)
    result = Program(GALEN_20).run(facts={k: [tuple(map(int, row)) for row in v] for k, v in facts.items()}, backend=backend)
    truth = evaluate(load_program(GALEN_20), {k: {tuple(map(int, row)) for row in v} for k, v in facts.items()})
    assert result.tuples("Q") == truth["Q"]
    recursive = next(s for s in result.stats["strata"] if s["recursive"])
    assert recursive["join_orders"] >= 1


PLANNED = """
.decl e(x:number, y:number)
.decl p(x:number, y:number)
p(x, y) :- e(x, y).
p(a, d) :- p(a, b), p(b, c), e(c, d).
    .plan 0: (3, 2, 1), 1: (2, 3, 1)
"""


def test_a_plan_orders_its_versions_joins():
    """`.plan` is followed (Soufflé numbers the versions by the recursive atoms as written,
    the order counts every atom from 1): version 0 reads p(a, b) as delta last; and the size
    planner leaves a planned version alone."""
    program = load_program(PLANNED)
    stratum = next(s for s in plan_program(program).strata if s.recursive)
    first, second = stratum.deltas
    assert [s.atom for s in first.steps if isinstance(s, JoinStep)] == [first.rule.body[i] for i in (2, 1, 0)]
    assert [s.version for s in first.steps if isinstance(s, JoinStep)] == ["full", "full", "delta"]
    assert [s.atom for s in second.steps if isinstance(s, JoinStep)] == [second.rule.body[i] for i in (1, 2, 0)]
    assert replan_stratum(stratum, program, lambda atom, columns: 1.0).deltas == stratum.deltas


@pytest.mark.parametrize("shards", [1, 3])
def test_a_planned_program_gives_the_reference_answer(shards):
    """The delta read last, on one shard and routed over three."""
    from test_checkpoint import answers, graph, on_shards

    program = load_program(PLANNED)
    edges = graph(30, seed=5)
    got = answers(on_shards(program, shards, {"e": edges}, None), program)
    assert got["p"] == evaluate(program, {"e": {tuple(int(v) for v in row) for row in edges}})["p"]
