"""Soufflé's components (engine/frontend/components.py): programs using each feature, their
answers as Soufflé 2.5 gives them (``souffle prog.dl -D out``, written out below), and the
errors Soufflé reports, at the line it names."""

from __future__ import annotations

import io
import logging
from importlib import resources
from pathlib import Path

import lark
import pytest

from dask_datalog.cluster import Program
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program

# Type parameters in attribute types, in a component-local type and in nested .inits; a base
# with type arguments; rules that reach into nested instances (in a disjunction, a negation
# and an aggregate); the program using an instance's relations and its type.
GRAPHS = """
.type City <: symbol
.comp DiGraph<N> {
    .type Node <: N
    .decl edge(a: Node, b: Node)
    .decl reach(a: Node, b: Node)
    reach(x, y) :- edge(x, y).
    reach(x, z) :- reach(x, y), edge(y, z).
}
.comp Graph<N> : DiGraph<N> {
    edge(x, y) :- edge(y, x).
}
.comp Network<N> {
    .init road = Graph<N>
    .init rail = DiGraph<N>
    .decl link(a: N, b: N)
    link(x, y) :- road.reach(x, y) ; rail.reach(x, y).
    .decl road_only(a: N)
    road_only(x) :- road.reach(x, _), !rail.reach(x, _).
    .decl size(n: number)
    size(n) :- n = count : { link(_, _) }.
}
.init net = Network<City>
net.road.edge("a", "b").
net.rail.edge("b", "c").
net.rail.edge("c", "d").
.decl links_from(a: net.road.Node, n: number)
links_from(x, n) :- net.road.edge(x, _), n = count : { net.link(x, _) }.
.output net.link, net.road_only, net.size, links_from
.output net.rail.reach
"""

# Soufflé's evaluation-comp-override1, and an eqrel relation overridden: its rules go, the
# equivalence stays.
OVERRIDES = """
.comp A {
    .decl r(x: number) overridable
    r(1).
    .decl eq(x: number, y: number) eqrel overridable
    eq(1, 2).
}
.comp B : A {
    .override r
    r(2).
    .override eq
    eq(7, 8).
}
.comp C : B {
    .override r
    r(3).
}
.comp D : B {
    r(4).
}
.init a = A
.init b = B
.init c = C
.init d = D
.output a.r, b.r, c.r, d.r, a.eq, b.eq
"""

# A component's own relation hides the program's (base in Counter); a rule for a relation the
# instance does not declare goes up to the enclosing instance that does (Inner's total is
# Outer's) or to the program (seen), a rule with two heads one head at a time.
SCOPES = """
.decl seen(x: number)
.decl base(x: number)
base(1). base(2).
.comp Counter {
    .decl base(x: number)
    base(10).
    seen(x) :- base(x).
    .decl twice(x: number)
    twice(x + 1), seen(x + 1) :- base(x).
}
.comp Outer {
    .decl total(x: number)
    .init inner = Inner
}
.comp Inner {
    total(x) :- base(x).
}
.init c = Counter
.init o = Outer
.output seen, o.total, c.twice
"""

# A type parameter as the component of a nested .init and as a base component.
PARAMS = """
.comp Impl {
    .decl R(x: number)
    R(0). R(1).
}
.comp Wrap<T> {
    .init impl = T
    .decl out(x: number)
    out(x + 1) :- impl.R(x).
}
.comp Ext<T> : T {
    R(5).
}
.init w = Wrap<Impl>
.init e = Ext<Impl>
.output w.out, e.R
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            GRAPHS,
            {
                "net.link": {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b"), ("b", "c"), ("b", "d"), ("c", "d")},
                "net.road_only": {("a",)},
                "net.size": {(7,)},
                "links_from": {("a", 2), ("b", 4)},
                "net.rail.reach": {("b", "c"), ("b", "d"), ("c", "d")},
            },
            id="graphs",
        ),
        pytest.param(
            OVERRIDES,
            {
                "a.r": {(1,)},
                "b.r": {(2,)},
                "c.r": {(3,)},
                "d.r": {(2,), (4,)},
                "a.eq": {(1, 1), (1, 2), (2, 1), (2, 2)},
                "b.eq": {(7, 7), (7, 8), (8, 7), (8, 8)},
            },
            id="overrides",
        ),
        pytest.param(SCOPES, {"seen": {(10,), (11,)}, "o.total": {(1,), (2,)}, "c.twice": {(11,)}}, id="scopes"),
        pytest.param(PARAMS, {"w.out": {(1,), (2,)}, "e.R": {(0,), (1,), (5,)}}, id="params"),
    ],
)
def test_components_answer_as_souffle_does(text: str, expected: dict[str, set[tuple[object, ...]]], backend: str) -> None:
    program = Program(text)
    assert {o.relation for o in program.ir.outputs} == set(expected)
    result = program.run(backend=backend)
    assert {name: result.tuples(name) for name in expected} == expected


def test_an_instances_directives_read_and_write_its_files(tmp_path: Path) -> None:
    """``.input edge`` in instance g reads g.edge.facts; ``.output reach`` writes g.reach.csv."""
    (tmp_path / "g.edge.facts").write_text("1\t2\n2\t3\n")
    text = """
.comp Graph {
    .decl edge(x: number, y: number)
    .input edge
    .decl reach(x: number, y: number)
    .output reach
    reach(x, y) :- edge(x, y).
    reach(x, z) :- reach(x, y), edge(y, z).
}
.init g = Graph
"""
    Program(text).run(fact_dir=tmp_path).write(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["g.reach.csv"]
    assert sorted((tmp_path / "out" / "g.reach.csv").read_text().splitlines()) == ["1\t2", "1\t3", "2\t3"]


def test_qualified_names_whose_parts_are_keywords() -> None:
    """Soufflé's syntactic-dot_identifiers: pt.declA is one name, not pt, then .decl."""
    program = load_program(
        ".comp P {\n .decl declA(u: number)\n .decl typeA(u: number)\n}\n.init pt = P\npt.declA(3).\n.output pt.declA, pt.typeA\n"
    )
    assert set(program.relations) == {"pt.declA", "pt.typeA"}
    assert [o.relation for o in program.outputs] == ["pt.declA", "pt.typeA"]


def test_a_component_never_instantiated_is_never_checked() -> None:
    """As in Soufflé: its rules name relations that exist nowhere, and that is no error."""
    program = load_program(".comp C {\n .decl r(x: number)\n r(x) :- q(x).\n}\n.decl s(x: number)\n")
    assert set(program.relations) == {"s"}


def test_the_grammar_has_no_conflicts() -> None:
    """Qualified names (QNAME) and components left the LALR grammar conflict-free: lark
    resolves a shift/reduce conflict silently, logging it only in debug mode."""
    grammar = resources.files("dask_datalog.engine.frontend").joinpath("grammar.lark").read_text(encoding="utf-8")
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    lark.logger.addHandler(handler)
    level = lark.logger.level
    lark.logger.setLevel(logging.DEBUG)
    try:
        lark.Lark(grammar, parser="lalr", debug=True)
    finally:
        lark.logger.removeHandler(handler)
        lark.logger.setLevel(level)
    assert "conflict" not in log.getvalue().lower()


# (id, program, "line:col", message substring); Soufflé's own message in the comment, at the
# same line.
ERRORS: list[tuple[str, str, str, str]] = [
    # Referencing undefined component Graph
    ("undefined", ".decl r(x: number)\n.init g = Graph", "2:1", "undefined component Graph"),
    # Invalid number of type parameters for component G
    (
        "type-arguments",
        ".comp G<T> {\n}\n.init g = G",
        "3:1",
        "invalid number of type parameters for component G: it has 1, not 0",
    ),
    # Override of non-overridable relation r in component B
    (
        "override-not-overridable",
        ".comp A {\n .decl r(x: number)\n}\n.comp B : A {\n .override r\n}",
        "4:1",
        "override of non-overridable relation r in component B (declared without overridable in A at 2:8)",
    ),
    # Override of non-inherited relation r in component A
    (
        "override-not-inherited",
        ".comp A {\n .decl r(x: number) overridable\n .override r\n}",
        "1:1",
        "override of non-inherited relation r in component A",
    ),
    # Invalid cycle in inheritance for component A
    ("inheritance-cycle", ".comp A : B {\n}\n.comp B : A {\n}", "1:1", "invalid cycle in inheritance for component A"),
    # Component instantiation limit reached (semantic-comp_infinite_recursion)
    ("instantiation-limit", ".comp A<T> {\n .init x = T\n}\n.init a = A<A>", "2:2", "component instantiation limit reached"),
    # Component T not found (semantic-comp_params_inheritance)
    (
        "parameter-not-a-component",
        ".comp Impl {\n}\n.comp A<T> {\n .init impl = T\n}\n.comp D<K> : A<T> {\n}\n.init d = D<Impl>",
        "4:15",
        "component T not found",
    ),
    # Name clash on component G
    ("component-named-as-relation", ".decl G(x: number)\n.comp G {\n}", "2:1", "name clash on component G: the relation at 1:7"),
    # Name clash on instantiation g
    (
        "instance-twice",
        ".comp G {\n}\n.init g = G\n.init g = G",
        "4:1",
        "name clash on instantiation g: the instantiation at 3:1",
    ),
    # Name clash on instantiation x: components take their names before instances do
    ("instance-named-as-later-component", ".init x = A\n.comp A {}\n.comp x {}", "1:1", "the component at 3:1 has this name"),
    # Redefinition of relation x
    (
        "relation-redeclared-in-derived",
        ".comp A {\n .decl x(a: number)\n}\n.comp B : A {\n .decl x(a: number)\n}\n.init b = B",
        "5:8",
        "duplicate declaration of relation b.x (first declared at 2:8)",
    ),
    # Redefinition I/O operation x
    (
        "input-twice",
        ".comp A {\n .decl x(a: number)\n .input x\n}\n.comp B : A {\n .input x\n}\n.init b = B",
        "6:9",
        "redefinition of the .input directive for relation x (first at 3:9)",
    ),
    # syntax error, unexpected pragma directive
    ("pragma-in-component", '.comp A {\n .pragma "a" "b"\n}', "2:2", "syntax error: unexpected '.pragma'"),
    # syntax error, unexpected ., expecting ( or ","
    ("qualified-decl", ".decl a.b(x: number)", "1:8", "syntax error: unexpected '.'; expected '(', ',' or '='"),
    # Undefined type in attribute x:Missing
    ("unknown-type-inside", ".comp C {\n .decl r(x: Missing)\n}\n.init c = C", "2:13", "unknown type Missing"),
    # Undefined relation q
    ("undeclared-inside", ".comp C {\n .decl r(x: number)\n r(x) :- q(x).\n}\n.init c = C", "3:10", "undeclared relation q"),
    # Undefined relation c.s
    (
        "undeclared-qualified",
        ".comp C {\n .decl r(x: number)\n}\n.init c = C\nc.s(1).",
        "5:1",
        "undeclared relation c.s (did you mean c.r?)",
    ),
]


@pytest.mark.parametrize(("text", "where", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_component_errors_name_souffles_line(text: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        load_program(text, "comp.dl")
    assert str(info.value.pos) == f"comp.dl:{where}"
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (".comp A {" * 1_000 + "}" * 1_000, "components nested too deep"),
        (
            "".join(f".comp C{i} {{ .init a = C{i + 1} .init b = C{i + 1} }}\n" for i in range(40))
            + ".comp C40 { }\n.init top = C0",
            "too many component instances",
        ),
        (
            "".join(f".comp C{i} : C{i + 1} {{ }}\n" for i in range(2_000)) + ".comp X : C0 { .init y = Missing }",
            "more than 100 levels of inheritance",
        ),
        (
            "".join(f".comp C{i} : C{i + 1} {{ }}\n" for i in range(2_000)) + ".comp C2000 { }\n.init c = C0",
            "instantiation limit reached",
        ),
    ],
    ids=["nested", "instances", "lookup", "inheritance"],
)
def test_component_limits_are_clean_errors(text: str, message: str) -> None:
    """Hostile input: nesting, instances that multiply, and inheritance chains end in an
    error, never in Python's recursion limit or an expansion without end."""
    with pytest.raises(DatalogError, match=message):
        load_program(text)
