"""Front end on valid programs: the IR it builds (positions, normalisation, types) and the
strata it finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program, load_program_file
from dask_datalog.engine.frontend.strata import Stratum, stratify

REACH = """
.decl edge(x: number, y: number)
.input edge
.decl path(x: number, y: number)
.output path
path(x, y) :- edge(x, y).
path(x, z) :- path(x, y), edge(y, z).
"""

SG = """
.decl edge(x: number, y: number)
.input edge
.decl sg(x: number, y: number)
.output sg
sg(x, y) :- edge(p, x), edge(p, y), x != y.
sg(x, y) :- edge(a, x), sg(a, b), edge(b, y).
"""

CSPA = """
.decl assign(x: number, y: number)
.decl dereference(x: number, y: number)
.input assign
.input dereference
.decl ValueFlow(x: number, y: number)
.decl MemoryAlias(x: number, y: number)
.decl ValueAlias(x: number, y: number)
.output ValueFlow
.output MemoryAlias
.output ValueAlias
ValueFlow(y, x)   :- assign(y, x).
ValueFlow(x, y)   :- assign(x, z), MemoryAlias(z, y).
ValueFlow(x, y)   :- ValueFlow(x, z), ValueFlow(z, y).
MemoryAlias(x, w) :- dereference(y, x), ValueAlias(y, z), dereference(z, w).
ValueAlias(x, y)  :- ValueFlow(z, x), ValueFlow(z, y).
ValueAlias(x, y)  :- ValueFlow(z, x), MemoryAlias(z, w), ValueFlow(w, y).
ValueFlow(x, x)   :- assign(x, _).      ValueFlow(x, x)   :- assign(_, x).
MemoryAlias(x, x) :- assign(_, x).      MemoryAlias(x, x) :- assign(x, _).
"""

ANDERSEN = """
.decl AddressOf(y: number, x: number)
.decl Assign(y: number, x: number)
.decl Load(y: number, x: number)
.decl Store(y: number, x: number)
.input AddressOf
.input Assign
.input Load
.input Store
.decl PointsTo(y: number, x: number)
.output PointsTo
PointsTo(y, x) :- AddressOf(y, x).
PointsTo(y, x) :- PointsTo(z, x), Assign(y, z).
PointsTo(y, w) :- PointsTo(x, z), Load(y, x), PointsTo(z, w).
PointsTo(z, w) :- PointsTo(y, z), Store(y, x), PointsTo(x, w).
"""


def V(name: str) -> ir.Var:
    return ir.Var(name)


def C(value: int | str, type: ir.BaseType = "number") -> ir.Const:
    return ir.Const(value, type)


def rules_of(text: str) -> tuple[ir.Rule, ...]:
    return load_program(text).rules


# ---- the benchmark programs ----------------------------------------------------------------


def test_reach() -> None:
    p = load_program(REACH, "reach.dl")
    assert list(p.relations) == ["edge", "path"]
    assert p.relations["path"].types == ("number", "number")
    assert p.inputs == (ir.InputSpec("edge"),) and p.outputs == (ir.OutputSpec("path"),)
    assert p.source == "reach.dl"
    assert p.rules[1] == ir.Rule(
        ir.Atom("path", (V("x"), V("z"))),
        (ir.Atom("path", (V("x"), V("y"))), ir.Atom("edge", (V("y"), V("z")))),
    )
    (stratum,) = stratify(p)
    assert stratum == Stratum(frozenset({"path"}), p.rules, True)


def test_sg() -> None:
    p = load_program(SG)
    assert p.rules[0].body[2] == ir.Comparison("!=", V("x"), V("y"))
    assert [(s.relations, s.recursive) for s in stratify(p)] == [(frozenset({"sg"}), True)]


def test_cspa_is_one_mutually_recursive_stratum() -> None:
    p = load_program(CSPA)
    (stratum,) = stratify(p)
    assert stratum.relations == {"ValueFlow", "MemoryAlias", "ValueAlias"}
    assert stratum.recursive and len(stratum.rules) == 10
    assert p.rules[6].body == (ir.Atom("assign", (V("x"), ir.Wildcard())),)


def test_andersen() -> None:
    p = load_program(ANDERSEN)
    assert len(p.inputs) == 4
    assert [(s.relations, s.recursive, len(s.rules)) for s in stratify(p)] == [(frozenset({"PointsTo"}), True, 4)]


# ---- positions ---------------------------------------------------------------------------


def test_positions_on_every_node() -> None:
    text = ".decl e(x: number, y: number)\n.decl r(x: number)\nr(x) :- e(x, y), y > 1 + x.\n"
    p = load_program(text, "p.dl")
    assert p.relations["e"].pos == ir.Pos("p.dl", 1, 7)
    rule = p.rules[0]
    assert rule.pos == ir.Pos("p.dl", 3, 1)
    assert rule.head.pos == ir.Pos("p.dl", 3, 1)
    assert rule.head.args[0].pos == ir.Pos("p.dl", 3, 3)
    atom, cmp = rule.body
    assert atom.pos == ir.Pos("p.dl", 3, 9)
    assert cmp.pos == ir.Pos("p.dl", 3, 20)  # the operator
    assert isinstance(cmp, ir.Comparison) and isinstance(cmp.right, ir.Call)
    assert cmp.right.pos == ir.Pos("p.dl", 3, 24)
    assert cmp.right.args[0].pos == ir.Pos("p.dl", 3, 22)


def test_positions_do_not_affect_equality() -> None:
    assert load_program(REACH, "a.dl").rules == load_program("\n\n" + REACH, "b.dl").rules


def test_directive_positions_and_params() -> None:
    text = (
        ".decl a(x: symbol)\n.decl b(x: symbol)\n"
        '.input a(IO=file, filename="in/a.tsv", delimiter=",")\n'
        '.output a, b(filename="o.csv", delimiter="\\t")\n.printsize b\n'
    )
    p = load_program(text, "p.dl")
    assert p.inputs == (ir.InputSpec("a", "in/a.tsv", ","),)
    assert p.inputs[0].pos == ir.Pos("p.dl", 3, 8)
    assert p.outputs == (ir.OutputSpec("a", "o.csv", "\t"), ir.OutputSpec("b", "o.csv", "\t"))
    assert p.outputs[1].pos == ir.Pos("p.dl", 4, 12)
    assert p.printsizes == ("b",)


def test_souffles_io_parameters() -> None:
    """What Soufflé 2.5's readers and writers honour, values quoted or not (semantic-store4
    writes ``delimiter=BOB``); rfc4180 makes the comma the default delimiter but not the
    header's joint; ``name`` names the default file and the printed table."""
    text = (
        ".decl a(x: symbol, y: number)\n"
        '.input a(IO=stdin, headers=true, rfc4180="true", columns="1:0", compress=true)\n'
        ".input a(name=other, delimiter=BOB)\n"
        ".output a(IO=stdout, headers=true, rfc4180=true, name=Zed)\n"
        ".output a(compress=true, delimiter=BOB, attributeNames=p)\n"
        ".output a(IO=stdoutprintsize, filename=x)\n"
        ".printsize a(IO=file, headers=false)\n"
        '.limitsize a(n="5")\n'
    )
    p = load_program(text, "p.dl")
    assert p.inputs == (
        ir.InputSpec("a", None, ",", io="stdin", headers=True, rfc4180=True, columns=(1, 0)),
        ir.InputSpec("a", "other.facts", "BOB"),
    )
    assert p.outputs == (
        ir.OutputSpec("a", "Zed.csv", ",", io="stdout", headers=True, rfc4180=True, name="Zed"),
        ir.OutputSpec("a", None, "BOB", compress=True, header="p"),
        ir.OutputSpec("a", "x", io="stdoutprintsize"),
    )
    assert p.outputs[0].header_line(p.relations["a"]) == "x\ty"
    assert load_program(".decl a(x: symbol, y: number)\n.output a(delimiter=BOB)").outputs[0].header == "xBOBy"
    assert p.printsizes == ("a",) and p.limits == (("a", 5),)


# ---- types ---------------------------------------------------------------------------------


def test_type_aliases_resolve_to_base_types() -> None:
    p = load_program(".type Id <: unsigned\n.type Node = Id\n.type Name <: symbol\n.decl r(n: Node, s: Name, k: number)\n")
    assert p.relations["r"].attributes == (
        ir.Attribute("n", "unsigned", "Node"),
        ir.Attribute("s", "symbol", "Name"),
        ir.Attribute("k", "number", "number"),
    )


def test_constants_take_the_type_of_their_column() -> None:
    (fact, rule) = rules_of(
        ".decl u(x: unsigned, s: symbol)\n.decl n(x: number)\n"
        'u(4294967295, "a\\"b\\\\c\\td").\n'
        'n(x) :- u(y, "z"), y < 3, x = -2147483648.\n'
    )
    assert fact == ir.Rule(ir.Atom("u", (C(4294967295, "unsigned"), C('a"b\\c\td', "symbol"))), ())
    assert fact.head.args[0].type == "unsigned"
    _, less, eq = rule.body
    assert less == ir.Comparison("<", V("y"), C(3, "unsigned"), type="unsigned")
    assert eq == ir.Comparison("=", V("x"), C(-2147483648))


def test_arithmetic_types_are_resolved() -> None:
    (rule,) = rules_of(".decl u(x: unsigned)\n.decl v(x: unsigned, y: number)\nv(x * 2, y) :- u(x), y = -(1 + 2) % 3.\n")
    head = rule.head.args[0]
    assert head == ir.Call("*", (V("x"), C(2, "unsigned")), "unsigned")
    eq = rule.body[1]
    assert isinstance(eq, ir.Comparison)
    assert eq.right == ir.Call("%", (ir.Call("neg", (ir.Call("+", (C(1), C(2))),)), C(3)), "number")


def test_literal_only_variables_default_to_number() -> None:
    (rule,) = rules_of(".decl r(x: number)\n.decl e(x: number)\nr(x) :- e(x), y = 5, y < x.\n")
    assert rule.body[1] == ir.Comparison("=", V("y"), C(5))


def test_number_literal_forms() -> None:
    (fact,) = rules_of(".decl r(a: number, b: number, c: number)\nr(0x1F, 0b101, - 7).\n")
    assert fact.head.args == (C(31), C(5), C(-7))
    # the widest unsigned, written in binary and in hex (Soufflé's semantic-bin1)
    (fact,) = rules_of(".decl u(a: unsigned, b: unsigned)\nu(0b" + "1" * 32 + ", 0xFFFFFFFF).\n")
    assert fact.head.args == (C(2**32 - 1, "unsigned"), C(2**32 - 1, "unsigned"))


# ---- normalisation ---------------------------------------------------------------------------


def test_facts_are_rules_with_an_empty_body_and_folded_arithmetic() -> None:
    rules = rules_of(
        ".decl r(x: number, y: number)\n.decl u(x: unsigned)\n"
        "r(1, 2). r(7 / -2, -7 % 3). r(2147483647 + 1, 3 * (2 + 1)).\nu(0 - 1).\n"
    )
    assert [r.body for r in rules] == [(), (), (), ()]
    assert [r.head.args for r in rules] == [(C(1), C(2)), (C(-3), C(-1)), (C(-2147483648), C(9)), (C(4294967295, "unsigned"),)]


def test_aggregate_in_comparison_becomes_aggregation_literal() -> None:
    (rule,) = rules_of(
        ".decl e(x: number, y: number)\n.decl c(x: number, n: number)\nc(x, n) :- e(x, _), n = count : { e(x, _) }.\n"
    )
    atom, agg, eq = rule.body
    assert atom == ir.Atom("e", (V("x"), ir.Wildcard()))  # `_` outside aggregates stays
    assert agg == ir.Aggregation(V("$a0"), "count", None, (ir.Atom("e", (V("x"), V("$w0"))),), "number")
    assert eq == ir.Comparison("=", V("n"), V("$a0"))
    assert isinstance(agg, ir.Aggregation) and agg.pos == ir.Pos("<string>", 3, 25)


def test_aggregates_in_head_and_inline_comparison() -> None:
    (rule,) = rules_of(
        ".decl e(x: unsigned, y: unsigned)\n.decl node(x: unsigned)\n"
        ".decl s(x: unsigned, n: unsigned)\n"
        "s(x, sum y : { e(x, y) }) :- node(x), count : e(x, _) > 1.\n"
    )
    assert rule.head == ir.Atom("s", (V("x"), V("$a0")))
    node, count, bigger, total = rule.body
    assert node == ir.Atom("node", (V("x"),))
    assert count == ir.Aggregation(V("$a1"), "count", None, (ir.Atom("e", (V("x"), V("$w0"))),), "number")
    assert bigger == ir.Comparison(">", V("$a1"), C(1))
    assert total == ir.Aggregation(V("$a0"), "sum", V("y"), (ir.Atom("e", (V("x"), V("y"))),), "unsigned")


def test_min_max_target_expression_and_filters() -> None:
    (rule,) = rules_of(
        ".decl e(x: number, y: number)\n.decl m(x: number, n: number)\n"
        "m(x, n) :- e(x, _), n = max y * 2 : { e(x, y), y != 3, !e(y, _) }.\n"
    )
    agg = rule.body[1]
    assert isinstance(agg, ir.Aggregation)
    assert agg.target == ir.Call("*", (V("y"), C(2)))
    # a `_` under negation keeps meaning "any value", it is not a counted position
    assert agg.body == (
        ir.Atom("e", (V("x"), V("y"))),
        ir.Comparison("!=", V("y"), C(3)),
        ir.Negation(ir.Atom("e", (V("y"), ir.Wildcard()))),
    )


def test_aggregate_local_variables_do_not_leak_between_aggregates() -> None:
    (rule,) = rules_of(
        ".decl node(x: number)\n.decl e(x: number, y: number)\n.decl s(a: number, b: number)\n"
        "s(a, b) :- a = count : { node(x) }, b = count : { e(x, _) }.\n"
    )
    first, second = rule.body[0], rule.body[2]
    assert isinstance(first, ir.Aggregation) and isinstance(second, ir.Aggregation)
    assert first.body == (ir.Atom("node", (V("x"),)),)
    assert second.body == (ir.Atom("e", (V("$x_0"), V("$w0"))),)


def test_bound_by_equality_chain() -> None:
    (rule,) = rules_of(
        ".decl e(x: number)\n.decl r(x: number, y: number, z: number)\nr(x, y, z) :- e(x), z = y + 1, y = x * 2, !e(z).\n"
    )
    assert len(rule.body) == 4


def test_disjunction_expands_into_rules() -> None:
    rules = rules_of(
        ".decl a(x: number)\n.decl b(x: number)\n.decl c(x: number)\n.decl r(x: number)\n"
        "r(x) :- a(x), (b(x) ; c(x)), x > 0 ; c(x).\n"
    )
    bodies = [[lit.relation if isinstance(lit, ir.Atom) else "cmp" for lit in r.body] for r in rules]
    assert bodies == [["a", "b", "cmp"], ["a", "c", "cmp"], ["c"]]


def test_several_heads_share_one_body() -> None:
    rules = rules_of(".decl a(x: number)\n.decl b(x: number)\n.decl c(x: number)\na(x), b(x) :- c(x).\n")
    assert [r.head.relation for r in rules] == ["a", "b"]
    assert rules[0].body == rules[1].body


def test_comments_and_declaration_order_do_not_matter() -> None:
    p = load_program(
        "// line comment\nr(x) :- e(x). /* block\n comment */ .decl r(x: n)\n"
        ".type n <: number\n.decl e(x: n) // trailing\n.input e\n"
    )
    assert list(p.relations) == ["r", "e"] and len(p.rules) == 1


def test_nullary_relations() -> None:
    rules = rules_of(".decl flag()\n.decl e(x: number)\nflag().\nflag() :- e(_).\n")
    assert rules[0] == ir.Rule(ir.Atom("flag", ()), ())


def test_ir_is_hashable_and_picklable() -> None:
    import pickle

    p = load_program(CSPA)
    assert pickle.loads(pickle.dumps(p)) == p
    assert hash(p) == hash(load_program(CSPA))


# ---- stratification --------------------------------------------------------------------------


def test_strata_order_and_flags() -> None:
    p = load_program(
        ".decl e(x: number)\n.decl a(x: number)\n.decl b(x: number)\n.decl c(x: number)\n"
        ".decl d(x: number, n: number)\n.decl f(x: number)\n"
        "c(x) :- e(x), !b(x).\n"
        "b(x) :- a(x), b(x).\nb(x) :- e(x).\n"
        "a(x) :- e(x).\n"
        "d(x, n) :- e(x), n = count : { c(x) }.\n"
        "f(1).\n"
    )
    assert [(sorted(s.relations), s.recursive, len(s.rules)) for s in stratify(p)] == [
        (["a"], False, 1),
        (["b"], True, 2),
        (["c"], False, 1),
        (["d"], False, 1),
        (["f"], False, 1),
    ]


def test_independent_strata_come_in_declaration_order() -> None:
    p = load_program(".decl z(x: number)\n.decl y(x: number)\n.decl x(x: number)\nx(1).\ny(1).\nz(1).\n")
    assert [set(s.relations) for s in stratify(p)] == [{"z"}, {"y"}, {"x"}]


def test_negation_and_aggregation_of_lower_strata_are_fine() -> None:
    p = load_program(
        ".decl e(x: number, y: number)\n.decl p(x: number, y: number)\n"
        ".decl q(x: number, y: number)\n.decl n(x: number, c: number)\n"
        "p(x, y) :- e(x, y).\np(x, z) :- p(x, y), e(y, z).\n"
        "q(x, y) :- e(x, y), !p(y, x).\n"
        "n(x, c) :- e(x, _), c = count : { p(x, _) }.\n"
    )
    assert [sorted(s.relations) for s in stratify(p)] == [["p"], ["q"], ["n"]]


def _chain_program(n: int, cycle: bool) -> ir.Program:
    """r0 <- r1 <- ... <- r{n-1} (and r0 <- r{n-1} when ``cycle``), built directly."""
    rel = {f"r{i}": ir.Relation(f"r{i}", (ir.Attribute("x", "number", "number"),)) for i in range(n)}
    x = (V("x"),)
    rules = [ir.Rule(ir.Atom(f"r{i}", x), (ir.Atom(f"r{i + 1}", x),)) for i in range(n - 1)]
    rules.append(ir.Rule(ir.Atom(f"r{n - 1}", x), (ir.Atom("r0", x),) if cycle else ()))
    return ir.Program(rel, tuple(rules))


def test_thousands_of_relations_do_not_recurse_deeply() -> None:
    strata = stratify(_chain_program(3000, cycle=False))
    assert [next(iter(s.relations)) for s in strata[:3]] == ["r2999", "r2998", "r2997"]
    assert len(strata) == 3000 and not any(s.recursive for s in strata)
    (big,) = stratify(_chain_program(3000, cycle=True))
    assert len(big.relations) == 3000 and big.recursive


# ---- files -----------------------------------------------------------------------------------


def test_load_program_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "reach.dl"
    path.write_text(REACH)
    p = load_program_file(path)
    assert p.source == str(path) and p.rules[0].pos.file == str(path)
    with pytest.raises(DatalogError, match="cannot read program"):
        load_program_file(tmp_path / "missing.dl")


def test_souffle_1_type_declarations_are_subtypes() -> None:
    p = load_program(".number_type Id\n.symbol_type Name\n.decl r(n: Id, s: Name)\n")
    assert p.relations["r"].attributes == (ir.Attribute("n", "number", "Id"), ir.Attribute("s", "symbol", "Name"))


SUBTYPES = ".type T <: symbol\n.type S <: symbol\n.type N <: number\n.type M = N\n.type K <: M\n"


@pytest.mark.parametrize(
    "rules, where, message",
    [
        # Soufflé 2.5: "Atom's argument type is not a subtype of its declared type"
        (".decl a(t:T)\n.decl b(s:S)\na(x) :- b(x).\n", "8:3", "x is a S (argument 1 of b), but argument 1 of a is a T"),
        (
            ".decl a(x:N)\n.decl b(x:number)\na(x) :- b(x).\n",
            "8:3",
            "x is a number (argument 1 of b), but argument 1 of a is a N",
        ),
        # "Unable to deduce type for variable x"
        (
            ".decl a(t:T)\n.decl b(s:S)\n.decl c(s:symbol)\nc(x) :- a(x), b(x).\n",
            "9:17",
            "x is a T (argument 1 of a) and a S (argument 1 of b)",
        ),
        (
            ".decl a(t:T)\n.decl b(s:S)\n.decl c(s:symbol)\nc(x) :- a(x), b(y), x = y.\n",
            "9:23",
            "x is a T (argument 1 of a) and y is a S",
        ),
    ],
)
def test_subtypes_are_checked_as_souffle_does(rules: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        load_program(SUBTYPES + rules)
    assert f"{info.value.pos.line}:{info.value.pos.col}" == where
    assert f"type mismatch: {message}" in info.value.message


def test_subtypes_that_fit_are_accepted() -> None:
    """A subtype's values go into its supertypes' columns (through `=` names too), constants and
    arithmetic into any subtype of their base type, and a variable bound to a type and its
    subtype has the subtype."""
    load_program(
        SUBTYPES + ".decl k(x:K)\n.decl n(x:N)\n.decl m(x:M)\n.decl t(x:T)\n.decl s(x:symbol)\n"
        'k(1). t("a").\nn(x) :- k(x).\nm(x) :- k(x), n(x).\nk(x + 1) :- k(x), x < 3.\ns(x) :- t(x).\nt("b") :- s(_).\n'
    )


# ---- Soufflé's declarations and pragmas ------------------------------------------------------


def test_one_decl_declares_several_relations_and_storage_qualifiers_are_ignored() -> None:
    p = load_program(".decl a, b(x: number, y: symbol) btree\n.decl c(x: number) brie no_magic\n")
    assert p.relations["a"].attributes == p.relations["b"].attributes
    assert [a.name for a in p.relations["b"].attributes] == ["x", "y"]
    assert p.relations["b"].pos == ir.Pos("<string>", 1, 10)
    assert p.relations["c"].arity == 1


def test_pragmas_neutral_ones_are_accepted_and_directories_kept() -> None:
    text = '.pragma "magic-transform" "*"\n.pragma "suppress-warnings" "a"\n.pragma "fact-dir" "in"\n.decl a(x: number)\n'
    p = load_program(text)
    assert p.pragma("fact-dir") == "in" and p.pragma("output-dir") is None
    assert p == load_program(".decl a(x: number)\n")  # no part of the program's meaning


def test_an_equivalence_relation_holds_the_closure_of_what_is_put_in_it(backend: str) -> None:
    """Soufflé's eqrel, on every path the engine has: the equivalence classes {1, 2, 3, 4} and
    {7}; the old ``output`` qualifier is the directive."""
    from dask_datalog.cluster import Program

    text = ".decl e(a: number, b: number)\n.decl eq(x: number, y: number) eqrel output\neq(a, b) :- e(a, b).\neq(7, 7).\n"
    program = Program(text)
    assert [o.relation for o in program.ir.outputs] == ["eq"]
    result = program.run(facts={"e": [(1, 2), (3, 2), (4, 3)]}, backend=backend)
    assert result.tuples("eq") == {(a, b) for a in range(1, 5) for b in range(1, 5)} | {(7, 7)}


def test_a_plan_after_a_rule_is_accepted_and_changes_nothing() -> None:
    rules = ".decl a(x: number)\n.decl b(x: number)\na(x) :- b(x), a(x).\n"
    planned = load_program(rules + ".plan 0:(2,1)\n")
    assert planned == load_program(rules)


# ---- the C preprocessor, as Soufflé runs it --------------------------------------------------


def test_the_preprocessor_includes_defines_and_keeps_the_users_lines(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "decls.dl").write_text("#pragma once\n.decl e(x: number, y: number)\n")
    (tmp_path / "prog.dl").write_text(
        '#include "decls.dl"\n#include "decls.dl"\n/* two\n lines */\n#define EDGE(a, b) e(a, b)\n'
        "#if RAM_DOMAIN_SIZE == 32 && defined(WIDE)\nEDGE(1, 2).\n#endif\nEDGE(3,\n 4).\n.decl r(x: number)\nr(x) :- q(x).\n"
    )
    with pytest.raises(DatalogError) as info:
        load_program_file(tmp_path / "prog.dl", [tmp_path / "lib"], {"WIDE": "1"})
    assert info.value.pos == ir.Pos(str(tmp_path / "prog.dl"), 12, 9)  # q, undeclared, where the user wrote it
    text = (tmp_path / "prog.dl").read_text().replace("r(x) :- q(x).", "r(x) :- e(x, _).")
    (tmp_path / "prog.dl").write_text(text)
    program = load_program_file(tmp_path / "prog.dl", [tmp_path / "lib"], {"WIDE": "1"})
    assert {r.head.args for r in program.rules if r.head.relation == "e"} == {(C(1), C(2)), (C(3), C(4))}
    assert len(load_program_file(tmp_path / "prog.dl", [tmp_path / "lib"]).rules) == 2  # no WIDE: no e(1, 2)


def test_preprocessor_errors_and_its_absence(tmp_path: Path) -> None:
    program = tmp_path / "p.dl"
    program.write_text('.decl a(x: number)\n#include "missing.dl"\n')
    with pytest.raises(DatalogError, match=r"cannot find include file missing\.dl") as info:
        load_program_file(program)
    assert info.value.pos == ir.Pos(str(program), 2, 1)
    program.write_text(".decl a(x: number)\n#error stop here\n")
    with pytest.raises(DatalogError, match="stop here") as info:
        load_program_file(program)
    assert info.value.pos is not None and info.value.pos.line == 2
    program.write_text(".decl a(x: number)\n#define N 1\na(N).\n")
    with pytest.raises(DatalogError, match="unsupported: C preprocessor line") as info:
        load_program_file(program, preprocessor=False)
    assert info.value.pos == ir.Pos(str(program), 2, 1)


SCANNER_CONSTANTS = """
.decl a(x: number)
a(1.2.3.4). a(255.255.255.255). a(__LINE__).
.decl b(x: number)
b(x) :- a(x), true.
b(0) :- false.
b(1) :- a(_), (false ; x = 7), x = 7.
.decl f(s: symbol)
f(__FILE__).
.decl e(n: number)
e(count : { false } + 10 * count : { true }).
"""


def test_true_false_ipv4_line_and_file() -> None:
    """Soufflé's scanner constants, with the answers Soufflé 2.5 gives this program: an IPv4
    literal is its 32-bit number (255.255.255.255 is -1), __LINE__ the line, __FILE__ the
    file as named; true adds nothing and false leaves its alternative out."""
    from dask_datalog.cluster import Program

    result = Program(SCANNER_CONSTANTS, filename="prog.dl").run()
    assert result.tuples("b") == {(16909060,), (-1,), (3,), (1,)}
    assert result.tuples("f") == {("prog.dl",)}
    assert result.tuples("e") == {(10,)}
    with pytest.raises(DatalogError, match="IP out of range"):
        load_program("r(1.2.3.256).\n.decl r(x: number)")


UNIONS = """
.type Pos <: number
.type Neg <: number
.type Sign = Pos | Neg
.type Name = Short | Long
.type Short <: symbol
.type Long = Longer
.type Longer <: symbol
.decl pos(x: Pos)
.decl neg(x: Neg)
.decl sign(x: Sign)
.decl short(s: Short)
.decl named(s: Name)
pos(1). neg(-1). short("a").
sign(x) :- pos(x).
sign(x) :- neg(x).
named(s) :- short(s).
"""


def test_union_types() -> None:
    """A union holds its members' values (an alias of a member counts as the member); its
    members must share one primitive type; a union may not contain itself (Soufflé's checks)."""
    from dask_datalog.cluster import Program

    result = Program(UNIONS).run()
    assert result.tuples("sign") == {(1,), (-1,)} and result.tuples("named") == {("a",)}
    with pytest.raises(DatalogError, match=r"Union type U is defined over \{number, symbol\}"):
        load_program(".type S <: symbol\n.type U = S | number")
    with pytest.raises(DatalogError, match="Infinite descent in the definition of type U"):
        load_program(".type U = V | number\n.type V = U | number")
    with pytest.raises(DatalogError, match="type mismatch: x is a Sign"):
        load_program(UNIONS + "pos(x) :- sign(x).")


@pytest.mark.parametrize("preprocessor", [True, False])
def test_souffles_include_and_once(tmp_path: Path, preprocessor: bool) -> None:
    """``.include "file"`` beside the including file (nested ones beside theirs), ``.once``
    against including a file twice, with or without the C preprocessor, as Soufflé 2.5 answers;
    __LINE__ and errors name the included file's own lines."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.dl").write_text('.once\n.include "main.dl"\n.include "sub/other.dl"\n.decl ok(x: number)\nok(1).\n')
    (tmp_path / "sub" / "other.dl").write_text('.include "leaf.dl"\nok(__LINE__).\n')
    (tmp_path / "sub" / "leaf.dl").write_text("ok(100).\n")
    from dask_datalog.cluster import Program

    program = Program.from_file(tmp_path / "main.dl", preprocessor=preprocessor)
    assert program.run().tuples("ok") == {(1,), (2,), (100,)}
    (tmp_path / "sub" / "leaf.dl").write_text("ok(1).\nok(x).\n")
    with pytest.raises(DatalogError) as info:
        load_program_file(tmp_path / "main.dl", preprocessor=preprocessor)
    assert str(info.value).startswith(f"{tmp_path / 'sub' / 'leaf.dl'}:2:"), str(info.value)
    (tmp_path / "sub" / "other.dl").write_text('.include "missing.dl"\n')
    with pytest.raises(DatalogError, match=r"cannot find include file missing\.dl"):
        load_program_file(tmp_path / "main.dl", preprocessor=preprocessor)


NESTED_AGGREGATES = """
.decl p(x: number)
p(2). p(3). p(5). p(7). p(11).
.decl d(s: number)
d(s) :- s = sum y : { p(n), y = sum z : { p(z), z < n }, y < 10 }.
.decl e(n: number, c: number)
e(n, c) :- p(n), c = count : { p(m), m < n, k = max q : { p(q), q < m }, k > 2 }.
.decl f(c: number)
f(c) :- c = count : { p(n), 0 = count : { p(m), m > n } }.
"""


@pytest.mark.parametrize("workers", [1, 3])
def test_nested_aggregates(workers: int) -> None:
    """An aggregate inside an aggregate's body, grouped by what it shares with that body: the
    answers Soufflé 2.5 gives."""
    from test_sharded import relation_tuples, run_sharded

    shards = run_sharded(load_program(NESTED_AGGREGATES), workers)
    assert relation_tuples(shards, "d") == {(7,)}
    assert relation_tuples(shards, "e") == {(2, 0), (3, 0), (5, 0), (7, 1), (11, 2)}
    assert relation_tuples(shards, "f") == {(1,)}


WITNESSES = """
.decl Student(name: symbol, height: number)
Student("Anna", 170). Student("Rachel", 177). Student("Quarantina", 180). Student("Tie", 180).
.decl Tallest(student: symbol, height: number)
Tallest(student, n) :- n = max height : { Student(student, height) }.
.decl A(x: number, y: number)
A(1, 2). A(5, 6). A(-50, 3). A(54, 5).
.decl MinSum(x: number, y: number, s: number)
MinSum(x, y, s) :- s = min x + y : { A(x, y) }.
.decl Any(x: number)
Any(x) :- _ = max y : { A(x, y) }.
.decl Shadow(y: number)
Shadow(y) :- y = min x + y : { A(x, y), x > 1 }.
"""


NEGATED_BODIES = """
.decl a(x: number) .decl b(x: number) .decl c(x: number)
.decl r1, r2, r3, r4, r5, r6(x: number)
a(1). a(2). a(3). a(4). b(1). b(2). c(2). c(3).
r1(x) :- a(x), !(b(x); c(x)).
r2(x) :- a(x), !(b(x), c(x)).
r3(x) :- a(x), !(x < 2; c(x)).
r4(x) :- a(x), !(!b(x), x != 4).
r5(x) :- a(x), !(true).
r6(x) :- a(x), !(false; (b(x), !c(x))).
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_negated_body_is_soufflés_de_morgan(workers: int) -> None:
    """``!(body)`` as Soufflé's RuleBody::negate: one literal of each alternative fails, a
    comparison by its opposite. The expected tuples are Soufflé 2.5's output for this program."""
    from test_sharded import relation_tuples, run_sharded

    shards = run_sharded(load_program(NEGATED_BODIES), workers)
    expected = {"r1": {4}, "r2": {1, 3, 4}, "r3": {4}, "r4": {1, 2, 4}, "r5": set(), "r6": {2, 3, 4}}
    for name, values in expected.items():
        assert relation_tuples(shards, name) == {(v,) for v in values}, name


MATERIALISED = """
.decl D, B(x: number, y: number)
D(2, 1). D(2, 2). D(1, 3). D(1, 4). B(2, 1). B(2, 2). B(2, 3). B(2, 4).
.decl G, K, S, Q, R, One(a: number)
.decl M(a: float)
.decl P(x: number, c: number)
G(c) :- c = count : { B(x, _), D(x, _) }.
K(c) :- c = count : { B(x, _), x > max y : { D(y, _) } - 1 }.
S(c) :- c = sum y : { B(x, y), D(x, _) }.
M(c) :- c = mean to_float(y) : { B(x, y), D(x, _) }.
P(x, c) :- D(x, _), c = count : { B(x, _), D(_, z), z > 2 }.
Q(c) :- c = count : { B(x, x) }.
R(c) :- c = count : { B(_, y), D(_, y) }.
One(c) :- c = count : { B(x, _), x > 1 }.
"""


@pytest.mark.parametrize("workers", [1, 3])
def test_a_materialised_aggregate_body_counts_its_named_variables(workers: int) -> None:
    """Soufflé 2.5 materialises an aggregate body of several atoms (or an inner aggregate, or a
    variable twice in its one atom) into a relation of its named variables, so count and sum
    run over their distinct rows, not over every binding; one atom counts its tuples. The
    expected values are Soufflé 2.5's own output for this program."""
    from test_sharded import relation_tuples, run_sharded

    shards = run_sharded(load_program(MATERIALISED), workers)
    expected = {"G": {(1,)}, "K": {(1,)}, "S": {(10,)}, "M": {(2.5,)}, "P": {(1, 0), (2, 2)}, "Q": {(1,)}, "R": {(4,)}}
    for name, tuples in {**expected, "One": {(4,)}}.items():
        assert relation_tuples(shards, name) == tuples, name


@pytest.mark.parametrize("workers", [1, 2])
def test_aggregate_witnesses_and_scoping(workers: int) -> None:
    """Soufflé 2.5's witnesses: a variable of a min/max body used outside and grounded nowhere
    else takes the values of every body tuple attaining the result (both tallest students);
    one grounded outside only by the aggregate's own result is another variable inside."""
    from test_sharded import relation_tuples, run_sharded

    shards = run_sharded(load_program(WITNESSES), workers)
    assert relation_tuples(shards, "Tallest") == {("Quarantina", 180), ("Tie", 180)}
    assert relation_tuples(shards, "MinSum") == {(-50, 3, -47)}
    assert relation_tuples(shards, "Any") == {(5,)}
    assert relation_tuples(shards, "Shadow") == {(11,)}
    with pytest.raises(DatalogError, match="used inside and outside the aggregate"):
        load_program(WITNESSES + ".decl C(x: number, c: number)\nC(x, c) :- c = count : { A(x, _) }.")
