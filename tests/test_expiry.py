"""Relations freed once no later stratum reads them (plan.expiring, ShardStore.drop), as Soufflé
clears expired relations: what a run keeps (``RunOptions.keep``; the command keeps its outputs
and printed sizes) answers as before, every relation's size stays known, and checkpoints
written after a relation was freed resume to the same answer on any number of shards."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from program_gen import generate_case
from test_checkpoint import MIXED, StopAfter, graph
from test_sharded import _deal, relation_tuples

from dask_datalog.cluster import Program, Result
from dask_datalog.engine import ir
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.checkpoint import CheckpointOptions, Checkpoints, array_digest
from dask_datalog.engine.errors import DatalogError, Suspended
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.ir import walk
from dask_datalog.engine.plan import JoinStep, expiring, plan_program, released_orders
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.options import RunOptions
from dask_datalog.spmd.run import run_in_process
from dask_datalog.spmd.shard import Shard, Steering, evaluate_shard
from dask_datalog.spmd.threads import run_in_threads

CHAIN = """
.decl e(x:number, y:number)
.input e
.decl unused(x:number)
.input unused
.decl p(x:number, y:number)
p(x, y) :- e(x, y).
p(x, z) :- p(x, y), e(y, z).
.decl q(x:number)
q(x) :- p(x, _).
.decl r(x:number)
r(x) :- q(x), !p(x, x).
.decl debugged = debug_delta(p)
.output r
.printsize q
"""


def test_expiring_frees_each_relation_after_the_last_stratum_that_reads_or_makes_it() -> None:
    program = load_program(CHAIN)
    plan = plan_program(program)
    stratum_of = {name: i for i, s in enumerate(plan.strata) for name in s.relations}
    dropped = expiring(plan, program.shown)
    after = {name: i for i, names in enumerate(dropped) for name in names}
    # e is read by p's stratum, p by r's (the negation), q and r are shown, unused is read by nothing;
    # p and its debug_delta relation are kept whole.
    assert after == {"e": stratum_of["p"], "unused": 0}
    assert program.shown == {"r", "q"}
    assert expiring(plan, program.relations.keys()) == tuple(frozenset() for _ in plan.strata)


def run(program: ir.Program, facts: dict[str, Any], keep: frozenset[str] | None, **steering: Any) -> Result:
    digests = {name: array_digest(rows) for name, rows in facts.items()}
    inputs = Inputs(facts=facts, array_digests=digests)
    return Result(run_in_process(program, get_backend("numpy"), inputs, Steering(keep=keep, **steering)))


def test_a_run_keeping_its_outputs_answers_and_sizes_as_one_keeping_everything() -> None:
    program = load_program(MIXED)
    facts = {"edge": graph(70)}
    whole = run(program, facts, None)
    kept = run(program, facts, program.shown)
    assert kept.sizes == whole.sizes and whole.stats["dropped"] == []
    assert kept.stats["dropped"] == ["edge", "node", "path"]
    for name in program.shown:
        assert kept.tuples(name) == whole.tuples(name)
    with pytest.raises(KeyError, match="'path' was freed during the run"):
        kept.numpy("path")


def test_the_api_refuses_to_keep_a_relation_the_program_lacks() -> None:
    with pytest.raises(ValueError, match="names no relation of this program: nope"):
        Program(MIXED).run(facts={"edge": graph(5)}, options=RunOptions(keep=frozenset({"nope", "far"})))


def on_shards(
    program: ir.Program, n: int, facts: dict[str, Any], options: CheckpointOptions, keep: frozenset[str], k: int
) -> list[Shard]:
    digests = {name: array_digest(rows) for name, rows in facts.items()}

    def shard(transport: Any) -> Shard:
        mine = {name: _deal(rows, transport.rank, n) for name, rows in facts.items()}
        steering = Steering(options, stop_requested=StopAfter(k), keep=keep)
        return evaluate_shard(
            transport, program, get_backend("numpy"), Inputs(facts=mine, array_digests=digests), steering, replicate_below=0
        )

    return run_in_threads(n, shard)


@pytest.mark.parametrize("seed", range(3, 150, 11))
def test_generated_programs_freeing_relations_stop_and_resume_to_the_reference(seed: int, tmp_path: Path) -> None:
    """A random half of the derived relations kept; stopped at a random boundary on 1-3 shards
    (checkpoints written after relations were freed), resumed on another number: the kept
    relations equal the reference, every relation's size too."""
    case = generate_case(seed)
    program = load_program(case.text, f"<{case.label}>")
    rng = random.Random(seed)
    keep = frozenset(name for name in sorted(case.expected) if rng.random() < 0.5)
    facts = case.api_facts()
    before, after, k = 1 + seed % 3, 3 - seed % 3, seed % 5
    first = CheckpointOptions(str(tmp_path), every=0.0, attempt="first")
    try:
        shards = on_shards(program, before, facts, first, keep, k)  # fewer than k boundaries: it ran to the end
    except Suspended:
        resume = CheckpointOptions(str(tmp_path), every=1e9, resume="", verify=True, attempt="second")
        shards = on_shards(program, after, facts, resume, keep, 10**9)
    sizes = {name: sum(s.stats["local_sizes"][name] for s in shards) for name in program.relations}
    for name, want in case.expected.items():
        assert sizes[name] == len(want), f"size of {name}\n{case.describe()}"
        if name in keep:
            assert relation_tuples(shards, name) == set(want), f"{name}\n{case.describe()}"
        elif name in shards[0].stats["dropped"]:
            assert name not in shards[0].rows


def test_a_checkpoint_that_freed_a_relation_does_not_resume_a_run_that_keeps_it(tmp_path: Path) -> None:
    program = load_program(MIXED)
    facts = {"edge": graph(40)}
    counter = StopAfter(10**9)  # the run's boundaries, then a stop at the last one (every stratum done)
    run(program, facts, program.shown, checkpoint=CheckpointOptions(str(tmp_path / "count"), every=1e9), stop_requested=counter)
    options = CheckpointOptions(str(tmp_path), every=0.0, attempt="a")
    with pytest.raises(Suspended):
        run(program, facts, program.shown, checkpoint=options, stop_requested=StopAfter(counter.asked - 1))
    manifest = Checkpoints(tmp_path).latest()
    assert manifest is not None and manifest.position.stratum == len(plan_program(program).strata)
    assert manifest.dropped.keys() == {"edge", "node", "path"} and manifest.dropped["path"] > 0
    resume = CheckpointOptions(str(tmp_path), resume="", verify=True, attempt="b")
    with pytest.raises(DatalogError, match="no longer holds edge, node, path, which this run keeps"):
        run(program, facts, None, checkpoint=resume)
    resumed = run(program, facts, program.shown, checkpoint=resume)
    whole = run(program, facts, None)
    assert resumed.sizes == whole.sizes
    assert all(resumed.tuples(name) == whole.tuples(name) for name in program.shown)


def test_released_orders_keep_what_later_strata_read_and_free_the_rest() -> None:
    program = load_program(ORDERS)
    plan = plan_program(program)
    stratum_of = {name: i for i, s in enumerate(plan.strata) for name in s.relations}
    read = {(s.atom.relation, s.order) for s in walk(plan.strata[stratum_of["b"]]) if isinstance(s, JoinStep)}
    assert ("e", (1, 0)) in read  # b probes e by its second column
    released = released_orders(plan)
    assert released[stratum_of["b"]]["e"] == frozenset({(0, 1)})  # c, later, probes e by its first
    assert released[stratum_of["c"]]["e"] == frozenset()
    assert all("e" not in released[i] for i in range(stratum_of["b"] + 1, stratum_of["c"]))


ORDERS = """
.decl e(x:number, y:number)
.input e
.decl a(x:number)
.input a
.decl b(x:number)
b(x) :- a(y), e(x, y).
.decl m(x:number)
m(x) :- b(x), x > 1.
.decl c(x:number)
c(y) :- m(x), e(x, y).
.output c
"""
