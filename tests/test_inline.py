"""``inline`` relations: generated programs with some relations inlined (the ones no output
reads directly and no recursion goes through) give the reference's answers on 1-3 shards;
Soufflé's rules for what may be inlined hold, and its answers on hand-made programs."""

from __future__ import annotations

import random
import re

import pytest
from program_gen import generate_case
from test_sharded import relation_tuples, run_sharded

from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.frontend.strata import stratify

SEEDS = range(60)


def with_inline(seed: int) -> tuple[str, list[str], list[str]]:
    """A generated program with a third of its outputs kept and, of the other relations
    defined by rules outside any recursion, some declared inline."""
    case = generate_case(seed)
    rng = random.Random(seed)
    outputs = re.findall(r"^\.output (\w+)$", case.text, flags=re.M)
    kept = sorted(rng.sample(outputs, max(1, len(outputs) // 3))) if outputs else []
    flat = {r for s in stratify(case.program) if not s.recursive for r in s.relations}
    defined = {r.head.relation for r in case.program.rules}
    inputs = {i.relation for i in case.program.inputs}
    chosen = sorted(r for r in (flat & defined) - inputs - set(kept) if rng.random() < 0.6)
    lines = []
    for line in case.text.splitlines():
        if line.startswith(".output ") and line[8:] not in kept:
            continue
        name = re.match(r"\.decl (\w+)\(", line)
        lines.append(f"{line} inline" if name and name.group(1) in chosen else line)
    return "\n".join(lines) + "\n", kept, chosen


@pytest.mark.parametrize("seed", SEEDS)
def test_inlined_relations_keep_the_outputs(seed: int) -> None:
    text, kept, chosen = with_inline(seed)
    try:
        program = load_program(text, f"<inline seed {seed}>")
    except DatalogError as e:  # Soufflé's limits: a negated use whose rule brings new variables, a use in an aggregate
        refusals = ("Cannot inline negated relation which may introduce new variables", "several rules inside an aggregate")
        assert any(refusal in str(e) for refusal in refusals), str(e)
        return
    assert not set(chosen) & set(program.relations), "an inline relation was built"
    case = generate_case(seed)
    n = 1 + seed % 3
    shards = run_sharded(program, n, facts=case.api_facts())
    for name in kept:
        assert relation_tuples(shards, name) == case.expected[name], f"{name} differs on {n} shards\n{text}"


def test_inlining_happens() -> None:
    inlined = 0
    for seed in SEEDS:
        try:
            load_program(with_inline(seed)[0])
        except DatalogError:
            continue
        inlined += bool(with_inline(seed)[2])
    assert inlined >= len(SEEDS) // 3, inlined


LESS_THAN = """
.decl lt(x: number, y: number) inline
lt(x, y) :- x < y.
.decl small(x: number) inline
small(1). small(2).
.decl n(x: number)
n(1). n(2). n(3).
.decl r(x: number, y: number)
r(x, y) :- n(x), n(y), lt(x, y), !small(y).
.decl s(x: number)
s(x) :- n(x), !lt(x, 2).
.output r
.output s
"""


def test_an_inline_relation_grounded_where_it_is_used() -> None:
    """lt's rule alone binds nothing; where lt is read, both arguments are bound. Its negation
    is x >= 2; small's facts, negated, become two inequalities (Soufflé's answers)."""
    shards = run_sharded(load_program(LESS_THAN), 2)
    assert relation_tuples(shards, "r") == {(1, 3), (2, 3)}
    assert relation_tuples(shards, "s") == {(2,), (3,)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (".decl a(x: number) inline\n.output a\na(1).", "IO relation a cannot be inlined"),
        (
            ".decl a(x: number) inline\n.decl b(x: number) inline\na(x) :- b(x).\nb(x) :- a(x).\n.decl c(x: number)\nc(x) :- a(x).",
            "Cannot inline cyclically dependent relations {a, b}",
        ),
        (
            ".decl a(x: number) inline\n.decl e(x: number, y: number)\ne(1, 2).\na(x) :- e(x, y).\n.decl c(x: number)\nc(x) :- e(x, _), !a(x).",
            "Cannot inline negated relation which may introduce new variables",
        ),
        (
            '.pragma "inline-exclude" "b"\n.decl b(x: number, y: number) inline\nb(x, y) :- x != y.\n.decl c(x: number)\nc(x) :- b(x, x).',
            "unsafe rule",
        ),
    ],
)
def test_what_cannot_be_inlined(text: str, message: str) -> None:
    with pytest.raises(DatalogError, match=re.escape(message)):
        load_program(text)
