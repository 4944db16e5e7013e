"""Hand-checked answers for the reference evaluator, so the oracle itself can be trusted.

The programs are built directly as IR (the dataclasses are public) so these tests do not
depend on the front end; where the front end is importable, a few are also parsed from
Soufflé text and must give the same answers.
"""

from __future__ import annotations

import pytest
from reference import (
    INT32_MAX,
    INT32_MIN,
    UINT32_MAX,
    BudgetExceeded,
    arith,
    c_div,
    c_mod,
    evaluate,
    strata,
    wrap,
)

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError

# ----------------------------------------------------------------- IR building shorthands

W = ir.Wildcard()


def V(name: str) -> ir.Var:
    return ir.Var(name)


def N(value: int) -> ir.Const:
    return ir.Const(value, "number")


def U(value: int) -> ir.Const:
    return ir.Const(value, "unsigned")


def S(value: str) -> ir.Const:
    return ir.Const(value, "symbol")


def A(relation: str, *args: ir.Term) -> ir.Atom:
    return ir.Atom(relation, tuple(args))


def Not(relation: str, *args: ir.Term) -> ir.Negation:
    return ir.Negation(A(relation, *args))


def Op(op: str, left: ir.Term, right: ir.Term, type: ir.BaseType = "number") -> ir.Call:
    return ir.Call(op, (left, right), type)


def Cmp(op: str, left: ir.Term, right: ir.Term) -> ir.Comparison:
    return ir.Comparison(op, left, right)


def Agg(
    result: str,
    func: str,
    target: ir.Term | None,
    *body: ir.BodyLiteral,
    type: ir.BaseType = "number",
) -> ir.Aggregation:
    return ir.Aggregation(V(result), func, target, tuple(body), type)


def R(head: ir.Atom, *body: ir.BodyLiteral) -> ir.Rule:
    return ir.Rule(head, tuple(body))


def Rel(name: str, *types: ir.BaseType) -> ir.Relation:
    return ir.Relation(name, tuple(ir.Attribute(f"a{i}", t, t) for i, t in enumerate(types)))


def P(relations: list[ir.Relation], rules: list[ir.Rule]) -> ir.Program:
    return ir.Program({r.name: r for r in relations}, tuple(rules))


def frontend_or_skip():  # type: ignore[no-untyped-def]
    return pytest.importorskip("dask_datalog.engine.frontend")


# ----------------------------------------------------------------- recursion

# 1 -> 2 -> 3 -> 4 -> 2: everything in {2,3,4} reaches everything in {2,3,4}; 1 reaches them.
EDGES = {(1, 2), (2, 3), (3, 4), (4, 2)}
CYCLE = {2, 3, 4}
PATHS = {(1, b) for b in CYCLE} | {(a, b) for a in CYCLE for b in CYCLE}


def tc_program(nonlinear: bool) -> ir.Program:
    x, y, z = V("x"), V("y"), V("z")
    last = A("path", y, z) if nonlinear else A("edge", y, z)
    return P(
        [Rel("edge", "number", "number"), Rel("path", "number", "number")],
        [R(A("path", x, y), A("edge", x, y)), R(A("path", x, z), A("path", x, y), last)],
    )


@pytest.mark.parametrize("nonlinear", [False, True])
def test_transitive_closure(nonlinear: bool) -> None:
    out = evaluate(tc_program(nonlinear), {"edge": EDGES})
    assert out["path"] == PATHS
    assert out["edge"] == EDGES


def test_same_generation() -> None:
    # Tree: 1 has children 2, 3; 2 has 4, 5; 3 has 6. par(child, parent).
    par = {(2, 1), (3, 1), (4, 2), (5, 2), (6, 3)}
    x, y, p, a, b = V("x"), V("y"), V("p"), V("a"), V("b")
    prog = P(
        [Rel("par", "number", "number"), Rel("sg", "number", "number")],
        [
            R(A("sg", x, y), A("par", x, p), A("par", y, p), Cmp("!=", x, y)),
            R(A("sg", x, y), A("par", x, a), A("sg", a, b), A("par", y, b)),
        ],
    )
    want = {(2, 3), (3, 2), (4, 5), (5, 4), (4, 6), (6, 4), (5, 6), (6, 5)}
    assert evaluate(prog, {"par": par})["sg"] == want


def test_mutual_recursion() -> None:
    # even/odd distance from 0 along a chain 0 -> 1 -> ... -> 5.
    x, y = V("x"), V("y")
    prog = P(
        [Rel("next", "number", "number"), Rel("even", "number"), Rel("odd", "number")],
        [
            R(A("even", N(0))),
            R(A("odd", y), A("even", x), A("next", x, y)),
            R(A("even", y), A("odd", x), A("next", x, y)),
        ],
    )
    out = evaluate(prog, {"next": {(i, i + 1) for i in range(5)}})
    assert out["even"] == {(0,), (2,), (4,)}
    assert out["odd"] == {(1,), (3,), (5,)}


# ----------------------------------------------------------------- negation, strata


def test_negation_of_lower_stratum() -> None:
    x, y = V("x"), V("y")
    base = tc_program(nonlinear=False)
    prog = P(
        [*base.relations.values(), Rel("node", "number"), Rel("unreach", "number", "number")],
        [
            *base.rules,
            R(A("node", x), A("edge", x, W)),
            R(A("node", y), A("edge", W, y)),
            R(A("unreach", x, y), A("node", x), A("node", y), Not("path", x, y)),
        ],
    )
    out = evaluate(prog, {"edge": EDGES})
    assert out["node"] == {(1,), (2,), (3,), (4,)}
    assert out["unreach"] == {(1, 1), (2, 1), (3, 1), (4, 1)}


def test_negation_with_wildcard_and_constant() -> None:
    x = V("x")
    prog = P(
        [Rel("e", "number", "number"), Rel("n", "number"), Rel("leaf", "number"), Rel("not_to_3", "number")],
        [
            R(A("leaf", x), A("n", x), Not("e", x, W)),
            R(A("not_to_3", x), A("n", x), Not("e", x, N(3))),
        ],
    )
    out = evaluate(prog, {"e": {(1, 2), (2, 3)}, "n": {(1,), (2,), (3,)}})
    assert out["leaf"] == {(3,)}
    assert out["not_to_3"] == {(1,), (3,)}


def test_strata_order_three_levels() -> None:
    x = V("x")
    prog = P(
        [Rel("a", "number"), Rel("b", "number"), Rel("c", "number"), Rel("d", "number")],
        [
            R(A("d", x), A("a", x), Not("c", x)),  # written first, evaluated last
            R(A("c", x), A("a", x), Not("b", x)),
            R(A("b", x), A("a", x), Cmp(">", x, N(2))),
        ],
    )
    levels = [{r.head.relation for r in s} for s in strata(prog)]
    assert levels == [{"b"}, {"c"}, {"d"}]
    out = evaluate(prog, {"a": {(1,), (2,), (3,), (4,)}})
    assert out["b"] == {(3,), (4,)}
    assert out["c"] == {(1,), (2,)}
    assert out["d"] == {(3,), (4,)}


# ----------------------------------------------------------------- aggregates

AGG_RELS = [
    Rel("e", "number", "number"),
    Rel("node", "number"),
    Rel("out", "number", "number"),
    Rel("total", "number"),
]
AGG_FACTS = {"e": {(1, 10), (1, 20), (2, 5)}, "node": {(1,), (2,), (3,)}}


def run_agg(func: str, *, grouped: bool = True, facts: dict | None = None) -> set:
    x, y, n = V("x"), V("y"), V("n")
    target = None if func == "count" else y
    if grouped:
        rule = R(A("out", x, n), A("node", x), Agg("n", func, target, A("e", x, y)))
        name = "out"
    else:
        rule = R(A("total", n), Agg("n", func, target, A("e", V("$w0"), y)))
        name = "total"
    return evaluate(P(AGG_RELS, [rule]), facts if facts is not None else AGG_FACTS)[name]


def test_count_grouped_with_empty_group() -> None:
    assert run_agg("count") == {(1, 2), (2, 1), (3, 0)}


def test_sum_grouped_with_empty_group() -> None:
    assert run_agg("sum") == {(1, 30), (2, 5), (3, 0)}


def test_min_max_grouped_empty_group_has_no_result() -> None:
    assert run_agg("min") == {(1, 10), (2, 5)}
    assert run_agg("max") == {(1, 20), (2, 5)}


def test_ungrouped_aggregates() -> None:
    assert run_agg("count", grouped=False) == {(3,)}
    assert run_agg("sum", grouped=False) == {(35,)}
    assert run_agg("min", grouped=False) == {(5,)}
    assert run_agg("max", grouped=False) == {(20,)}


def test_ungrouped_aggregates_on_empty_relation() -> None:
    empty = {"e": set(), "node": set()}
    assert run_agg("count", grouped=False, facts=empty) == {(0,)}
    assert run_agg("sum", grouped=False, facts=empty) == {(0,)}
    assert run_agg("min", grouped=False, facts=empty) == set()
    assert run_agg("max", grouped=False, facts=empty) == set()


def test_count_counts_tuples_through_wildcards() -> None:
    # `count : { e(x, _) }` is 2 for x = 1, whether the wildcard is still a Wildcard
    # or already renamed to a fresh variable as the front end does.
    x, n = V("x"), V("n")
    for hole in (W, V("$w0")):
        rule = R(A("out", x, n), A("node", x), Agg("n", "count", None, A("e", x, hole)))
        assert evaluate(P(AGG_RELS, [rule]), AGG_FACTS)["out"] == {(1, 2), (2, 1), (3, 0)}


def test_sum_is_over_bindings_not_distinct_values() -> None:
    facts = {"e": {(1, 5), (2, 5)}, "node": set()}
    assert run_agg("sum", grouped=False, facts=facts) == {(10,)}


def test_sum_wraps() -> None:
    facts = {"e": {(1, INT32_MAX), (2, 1)}, "node": set()}
    assert run_agg("sum", grouped=False, facts=facts) == {(INT32_MIN,)}


def test_aggregate_body_filter_and_result_in_comparison() -> None:
    # big(x) :- node(x), count : { e(x, y), y > 7 } >= 2.
    x, y = V("x"), V("y")
    rule = R(
        A("total", x),
        A("node", x),
        Agg("$c", "count", None, A("e", x, y), Cmp(">", y, N(7))),
        Cmp(">=", V("$c"), N(2)),
    )
    assert evaluate(P(AGG_RELS, [rule]), AGG_FACTS)["total"] == {(1,)}


def test_aggregate_grouped_by_head_variable_and_deferred() -> None:
    # The aggregate is written before the atom that binds its grouping variable.
    x, y, n = V("x"), V("y"), V("n")
    rule = R(A("out", x, n), Agg("n", "max", y, A("e", x, y)), A("node", x))
    assert evaluate(P(AGG_RELS, [rule]), AGG_FACTS)["out"] == {(1, 20), (2, 5)}


def test_aggregate_target_expression() -> None:
    # sum y * 2 : { e(x, y) } per node.
    x, y, n = V("x"), V("y"), V("n")
    rule = R(A("out", x, n), A("node", x), Agg("n", "sum", Op("*", y, N(2)), A("e", x, y)))
    assert evaluate(P(AGG_RELS, [rule]), AGG_FACTS)["out"] == {(1, 60), (2, 10), (3, 0)}


# ----------------------------------------------------------------- arithmetic


def test_wrap_helpers() -> None:
    assert wrap(INT32_MAX + 1, "number") == INT32_MIN
    assert wrap(INT32_MIN - 1, "number") == INT32_MAX
    assert wrap(-1, "unsigned") == UINT32_MAX
    assert wrap(UINT32_MAX + 1, "unsigned") == 0


@pytest.mark.parametrize(
    ("a", "b", "q", "r"),
    [(7, 2, 3, 1), (-7, 2, -3, -1), (7, -2, -3, 1), (-7, -2, 3, -1), (6, 3, 2, 0), (-1, 5, 0, -1)],
)
def test_c_division(a: int, b: int, q: int, r: int) -> None:
    assert c_div(a, b) == q and c_mod(a, b) == r
    pos = ir.NOWHERE
    assert arith("/", a, b, "number", pos) == q
    assert arith("%", a, b, "number", pos) == r


def test_arithmetic_in_head_wraps() -> None:
    x = V("x")
    prog = P(
        [Rel("n", "number"), Rel("u", "unsigned"), Rel("plus", "number"), Rel("times", "number"), Rel("minus", "unsigned")],
        [
            R(A("plus", Op("+", x, N(1))), A("n", x)),
            R(A("times", Op("*", x, N(2))), A("n", x)),
            R(A("minus", Op("-", x, U(1), "unsigned")), A("u", x)),
        ],
    )
    out = evaluate(prog, {"n": {(INT32_MAX,), (2**30,)}, "u": {(0,), (5,)}})
    assert out["plus"] == {(INT32_MIN,), (2**30 + 1,)}
    assert out["times"] == {(-2,), (INT32_MIN,)}
    assert out["minus"] == {(UINT32_MAX,), (4,)}


def test_division_in_rules_truncates() -> None:
    x = V("x")
    prog = P(
        [Rel("n", "number"), Rel("q", "number", "number", "number")],
        [R(A("q", x, Op("/", x, N(2)), Op("%", x, N(-3))), A("n", x))],
    )
    out = evaluate(prog, {"n": {(-7,), (7,), (-1,)}})
    assert out["q"] == {(-7, -3, -1), (7, 3, 1), (-1, 0, -1)}


def test_division_by_zero_raises_at_the_rule() -> None:
    x = V("x")
    where = ir.Pos("p.dl", 3, 1)
    rule = ir.Rule(A("q", Op("/", N(1), x)), (A("n", x),), where)
    prog = P([Rel("n", "number"), Rel("q", "number")], [rule])
    with pytest.raises(DatalogError) as err:
        evaluate(prog, {"n": {(0,)}})
    assert err.value.pos == where
    assert evaluate(prog, {"n": {(1,)}})["q"] == {(1,)}


def test_equality_binds_either_side_and_filters_when_bound() -> None:
    x, y = V("x"), V("y")
    prog = P(
        [Rel("n", "number"), Rel("succ", "number", "number"), Rel("pred", "number", "number"), Rel("same", "number")],
        [
            R(A("succ", x, y), A("n", x), Cmp("=", y, Op("+", x, N(1)))),
            R(A("pred", x, y), Cmp("=", Op("-", x, N(1)), y), A("n", x)),  # deferred
            R(A("same", x), A("n", x), A("n", y), Cmp("=", x, y)),
        ],
    )
    out = evaluate(prog, {"n": {(1,), (5,)}})
    assert out["succ"] == {(1, 2), (5, 6)}
    assert out["pred"] == {(1, 0), (5, 4)}
    assert out["same"] == {(1,), (5,)}


@pytest.mark.parametrize(
    ("op", "want"),
    [("=", {2}), ("!=", {1, 3}), ("<", {1}), ("<=", {1, 2}), (">", {3}), (">=", {2, 3})],
)
def test_comparisons(op: str, want: set[int]) -> None:
    x = V("x")
    prog = P([Rel("n", "number"), Rel("m", "number")], [R(A("m", x), A("n", x), Cmp(op, x, N(2)))])
    assert evaluate(prog, {"n": {(1,), (2,), (3,)}})["m"] == {(v,) for v in want}


def test_unsigned_comparison_is_unsigned() -> None:
    x = V("x")
    prog = P([Rel("u", "unsigned"), Rel("big", "unsigned")], [R(A("big", x), A("u", x), Cmp(">", x, U(10)))])
    assert evaluate(prog, {"u": {(UINT32_MAX,), (3,)}})["big"] == {(UINT32_MAX,)}


# ----------------------------------------------------------------- atoms, facts, symbols


def test_repeated_variables_constants_and_wildcards_in_atoms() -> None:
    x, y = V("x"), V("y")
    prog = P(
        [Rel("e", "number", "number", "number"), Rel("loop", "number"), Rel("mid", "number"), Rel("pair", "number", "number")],
        [
            R(A("loop", x), A("e", x, x, W)),
            R(A("mid", y), A("e", N(1), y, W)),
            R(A("pair", x, N(7)), A("e", x, W, y), Cmp("=", y, N(0))),
        ],
    )
    out = evaluate(prog, {"e": {(1, 1, 0), (1, 2, 9), (3, 3, 3), (4, 5, 0)}})
    assert out["loop"] == {(1,), (3,)}
    assert out["mid"] == {(1,), (2,)}
    assert out["pair"] == {(1, 7), (4, 7)}


def test_program_facts_union_with_input_facts() -> None:
    x = V("x")
    prog = P(
        [Rel("n", "number"), Rel("m", "number")],
        [R(A("n", N(9))), R(A("m", N(0))), R(A("m", x), A("n", x))],
    )
    out = evaluate(prog, {"n": {(1,), (9,)}})
    assert out["n"] == {(1,), (9,)}
    assert out["m"] == {(0,), (1,), (9,)}


def test_expression_in_body_atom() -> None:
    # next_of(x) :- n(x), n(x + 1).
    x = V("x")
    prog = P([Rel("n", "number"), Rel("m", "number")], [R(A("m", x), A("n", Op("+", x, N(1))), A("n", x))])
    assert evaluate(prog, {"n": {(1,), (2,), (4,)}})["m"] == {(1,)}


def test_symbols() -> None:
    x, y = V("x"), V("y")
    prog = P(
        [Rel("likes", "symbol", "symbol"), Rel("fan", "symbol", "symbol"), Rel("tag", "symbol", "number")],
        [
            R(A("fan", x, S("cheese")), A("likes", x, S("cheese"))),
            R(A("fan", x, y), A("likes", x, y), Cmp("!=", y, S("cheese")), Cmp("!=", x, y)),
            R(A("tag", x, N(1)), A("likes", x, W), Cmp("=", x, S("a b"))),
        ],
    )
    likes = {("ann", "cheese"), ("bob", "ann"), ("cy", "cy"), ("a b", "x")}
    out = evaluate(prog, {"likes": likes})
    assert out["fan"] == {("ann", "cheese"), ("bob", "ann"), ("a b", "x")}
    assert out["tag"] == {("a b", 1)}


def test_ordered_comparison_on_symbols_is_by_their_bytes() -> None:
    """As C++ compares std::strings (Soufflé's symbols): "Z" < "a" < "m" < "é"."""
    x = V("x")
    prog = P([Rel("s", "symbol"), Rel("t", "symbol")], [R(A("t", x), A("s", x), Cmp("<", x, S("m")))])
    assert evaluate(prog, {"s": {("a",), ("Z",), ("z",), ("é",)}})["t"] == {("a",), ("Z",)}
    with pytest.raises(TypeError):
        evaluate(P([Rel("s", "symbol"), Rel("t", "symbol")], [R(A("t", x), A("s", x), Cmp("<", x, N(1)))]), {"s": {("a",)}})


# ----------------------------------------------------------------- guard rails


def test_unsafe_body_is_an_error_not_a_silent_answer() -> None:
    x, y = V("x"), V("y")
    prog = P([Rel("n", "number"), Rel("m", "number")], [R(A("m", y), A("n", x), Cmp("<", y, x))])
    with pytest.raises(ValueError, match="unsafe"):
        evaluate(prog, {"n": {(1,)}})


def test_bad_fact_types_are_rejected() -> None:
    prog = P([Rel("n", "number")], [])
    with pytest.raises(ValueError):
        evaluate(prog, {"n": {("a",)}})
    with pytest.raises(ValueError):
        evaluate(prog, {"n": {(INT32_MAX + 1,)}})


def test_budget() -> None:
    with pytest.raises(BudgetExceeded):
        evaluate(tc_program(nonlinear=True), {"edge": EDGES}, max_steps=10)
    with pytest.raises(BudgetExceeded):
        evaluate(tc_program(nonlinear=True), {"edge": EDGES}, max_tuples=5)


# ----------------------------------------------------------------- through the front end


def test_parsed_programs_agree_with_hand_built_ir() -> None:
    frontend = frontend_or_skip()
    tc = frontend.load_program(
        """
        .decl edge(x: number, y: number)
        .input edge
        .decl path(x: number, y: number)
        .output path
        path(x, y) :- edge(x, y).
        path(x, z) :- path(x, y), path(y, z).
        """
    )
    assert evaluate(tc, {"edge": EDGES})["path"] == PATHS
    agg = frontend.load_program(
        """
        .decl e(x: number, y: number)
        .decl node(x: number)
        .decl c(x: number, n: number)
        .decl s(x: number, n: number)
        .decl m(x: number, n: number)
        .decl big(x: number)
        c(x, n) :- node(x), n = count : { e(x, _) }.
        s(x, sum y : { e(x, y) }) :- node(x).
        m(x, n) :- node(x), n = min y : { e(x, y) }.
        big(x) :- node(x), count : { e(x, y), y > 7 } >= 2.
        """
    )
    out = evaluate(agg, AGG_FACTS)
    assert out["c"] == {(1, 2), (2, 1), (3, 0)}
    assert out["s"] == {(1, 30), (2, 5), (3, 0)}
    assert out["m"] == {(1, 10), (2, 5)}
    assert out["big"] == {(1,)}
    arith_prog = frontend.load_program(
        """
        .decl n(x: number)
        .decl q(x: number, d: number, r: number)
        .decl w(x: number)
        .decl u(x: unsigned)
        .decl v(x: unsigned)
        q(x, x / 2, x % -3) :- n(x).
        w(x + 1) :- n(x), x > 100.
        v(x - 1) :- u(x).
        """
    )
    out = evaluate(arith_prog, {"n": {(-7,), (7,), (INT32_MAX,)}, "u": {(0,)}})
    assert {t for t in out["q"] if t[0] != INT32_MAX} == {(-7, -3, -1), (7, 3, 1)}
    assert out["w"] == {(INT32_MIN,)}
    assert out["v"] == {(UINT32_MAX,)}
