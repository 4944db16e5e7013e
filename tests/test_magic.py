"""The magic-set transformation (``.pragma "magic-transform"``): generated programs keep only
some of their outputs, so the others become transformable, and must give the reference's
answer for what they still output, in process and on shards; and the transformation must
actually happen (adorned relations) on a good share of them and on the classic query."""

from __future__ import annotations

import random
import re

import pytest
from program_gen import generate_case
from test_sharded import relation_tuples, run_sharded

from dask_datalog.cluster import Program
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.frontend.magic import adorned_name

SEEDS = range(60)


# A constant of each base type, for the query with_magic adds.
CONSTANTS = {"number": "0", "unsigned": "0", "float": "0.5", "symbol": '"a"'}


def with_magic(text: str, seed: int) -> tuple[str, list[str]]:
    """The program asking for magic sets on everything, with some of its outputs dropped (and
    one rule asking for a constant, so adornments bind something: an output of its own, which
    the test does not compare)."""
    rng = random.Random(seed)
    outputs = re.findall(r"^\.output (\w+)$", text, flags=re.M)
    kept = sorted(rng.sample(outputs, max(1, len(outputs) // 3))) if outputs else []
    program = load_program(text)
    inputs = {i.relation for i in program.inputs}
    derived = sorted({r.head.relation for r in program.rules if r.body and r.head.args} - inputs - set(kept))
    text = "\n".join(line for line in text.splitlines() if not line.startswith(".output ") or line[8:] in kept)
    if derived:
        asked = program.relations[rng.choice(derived)]
        args = ", ".join([CONSTANTS[asked.types[0]], *["_"] * (asked.arity - 1)])
        text += f"\n.decl magic_query()\n.output magic_query\nmagic_query() :- {asked.name}({args})."
    return f'{text}\n.pragma "magic-transform" "*"\n', kept


@pytest.mark.parametrize("seed", SEEDS)
def test_magic_sets_keep_the_outputs(seed: int) -> None:
    case = generate_case(seed)
    text, kept = with_magic(case.text, seed)
    program = load_program(text, f"<magic seed {seed}>")
    n = 1 + seed % 3
    shards = run_sharded(program, n, facts=case.api_facts())
    for name in kept:
        assert relation_tuples(shards, name) == case.expected[name], f"{name} differs on {n} shards\n{text}"


def test_magic_sets_happen() -> None:
    """Without adorned relations the test above would test nothing."""
    adorned = sum(any("@" in name for name in load_program(with_magic(generate_case(s).text, s)[0]).relations) for s in SEEDS)
    assert adorned >= len(SEEDS) // 4, adorned


SAME_GENERATION = """
.pragma "magic-transform" "*"
.decl parent(child: number, parent: number)
.decl node(x: number)
.decl samegen(x: number, y: number)
.decl query(y: number)
.output query
node(x) :- parent(x, _).
node(x) :- parent(_, x).
samegen(x, x) :- node(x).
samegen(x, y) :- parent(x, a), samegen(a, b), parent(y, b).
query(y) :- samegen(12, y).
"""


def test_same_generation_from_one_node() -> None:
    """A binary heap of 4095 nodes: only the ancestors of node 12 and their levels are
    explored (the whole relation would hold 5.6 million pairs)."""
    edges = [(i, i // 2) for i in range(2, 4096)]
    program = Program(SAME_GENERATION)
    assert {adorned_name("samegen", "bf")} <= set(program.ir.relations)
    result = program.run(facts={"parent": edges})
    assert result.tuples("query") == {(y,) for y in range(8, 16)}
    assert result.stats["strata"], "no evaluation statistics"
    derived = sum(sum(s["sizes"].values()) for s in result.stats["strata"])
    assert derived < 20_000, derived
