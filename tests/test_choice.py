"""``choice-domain``: one tuple kept per key value, the same choice on every shard count, and
Soufflé's picks where its answer does not hang on its own numbering of input symbols."""

from __future__ import annotations

import random

import pytest
from test_sharded import relation_tuples, run_sharded

from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program

MATCHING = """
.decl edge(x: number, y: number)
.decl matching(x: number, y: number) choice-domain x, y
matching(x, y) :- edge(x, y).
.decl chain(prev: number, next: number) choice-domain prev, next
chain(0, 1).
chain(x, y) :- chain(_, x), edge(x, y).
"""


@pytest.mark.parametrize("seed", range(12))
def test_a_choice_is_a_maximal_matching_whatever_the_shards(seed: int) -> None:
    """Both keys functional, nothing more could be added, and the same choice on 1-4 shards."""
    rng = random.Random(seed)
    edges = sorted({(rng.randrange(12), rng.randrange(12)) for _ in range(rng.randrange(1, 40))})
    program = load_program(MATCHING)
    answers = []
    for n in (1, 2, 3, 4):
        shards = run_sharded(program, n, facts={"edge": edges})
        matching = relation_tuples(shards, "matching")
        assert len({x for x, _ in matching}) == len(matching) == len({y for _, y in matching})
        assert all(any(x == a or y == b for a, b in matching) for x, y in edges), "not maximal"
        answers.append((matching, relation_tuples(shards, "chain")))
    assert all(a == answers[0] for a in answers)


SOUFFLE_ANSWERED = """
.decl c(x: number, y: number)
c(2, 0). c(2, 5).
.decl b(x: number, y: number) choice-domain x
b(x, y) :- c(x, y).
.decl r1(x: symbol, y: symbol) choice-domain (x, x)
r1("a", "b"). r1("a", "c").
.decl r3(x: symbol, y: symbol) choice-domain (x, y), (y, x)
r3("a", "b"). r3("a", "c").
.decl m(s: symbol, n: number, g: number)
.decl best(s: symbol, n: number, g: number) choice-domain g
best(s, n, g) :- m(s, n, g).
.decl named(s: symbol)
named("Katrina").
"""


def test_souffles_picks() -> None:
    """Soufflé 2.5's answers: the least candidate first (2, 0); a key written twice or in two
    orders is one key; among symbols, a program constant comes first (Katrina, whom Soufflé
    numbered before the names it read)."""
    marks = [("Ora", 92, 8), ("Katrina", 92, 8), ("Florence", 92, 8), ("Wes", 96, 9)]  # read, not written
    shards = run_sharded(load_program(SOUFFLE_ANSWERED), 2, facts={"m": marks})
    assert relation_tuples(shards, "b") == {(2, 0)}
    assert len(relation_tuples(shards, "r1")) == 1 and len(relation_tuples(shards, "r3")) == 2
    assert relation_tuples(shards, "best") == {("Katrina", 92, 8), ("Wes", 96, 9)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (".decl r(x: number, y: number) choice-domain z", "Attribute z not found in relation definition."),
        (".decl r(x: number, y: number) choice-domain x btree", "syntax error"),
    ],
)
def test_choice_domain_errors(text: str, message: str) -> None:
    with pytest.raises(DatalogError, match=message):
        load_program(text)
