"""The power operator ^, min/max and strlen/to_number, against values Soufflé 2.5 printed
(interpreter, x86-64, glibc) for the same programs: the engine on both code paths, the
reference evaluator, a fact folded by the checker, and shards in threads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import evaluate
from test_sharded import relation_tuples, run_sharded

from dask_datalog.cluster import Program
from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program

# (a, b, a ^ b) on number columns, from Soufflé 2.5.
NUMBER_POWERS = [
    (2, 31, -2147483648),
    (2, 32, -2147483648),
    (3, 40, -2147483648),
    (-2, 3, -8),
    (2, -1, 0),
    (0, 0, 1),
    (-2, -1, 0),
    (1, -5, 1),
    (-1, -5, -1),
    (-1, -4, 1),
    (0, -1, -2147483648),
    (-2, 31, -2147483648),
    (-2, 30, 1073741824),
    (3, 20, -2147483648),
    (-3, 19, -1162261467),
    (-7, 11, -1977326743),
    (10, 9, 1000000000),
    (10, 10, -2147483648),
    (46340, 2, 2147395600),
    (46341, 2, -2147483648),
    (2, -2147483648, 0),
    (0, -2147483648, -2147483648),
    (-1, 2147483647, -1),
    (-2147483648, 1, -2147483648),
    (2147483647, 1, 2147483647),
    (5, 0, 1),
]
# (a, b, a ^ b) on unsigned columns, from Soufflé 2.5: the low 32 bits of pow's double, 0 from 2^63.
UNSIGNED_POWERS = [
    (2, 31, 2147483648),
    (2, 32, 0),
    (3, 20, 3486784401),
    (3, 21, 1870418611),
    (3, 25, 1180052131),
    (3, 35, 3643840408),
    (3, 40, 0),
    (5, 27, 4195354624),
    (2, 62, 0),
    (2, 63, 0),
    (2, 64, 0),
    (4294967295, 1, 4294967295),
    (4294967295, 2, 0),
    (65537, 2, 131073),
    (0, 0, 1),
    (0, 4294967295, 0),
    (1, 4294967295, 1),
    (3037000499, 2, 2661407744),
    (3037000500, 2, 0),
    (2097151, 3, 6291456),
    (2097153, 3, 0),
]
# strlen (UTF-8 bytes) and to_number, from Soufflé 2.5.
STRLEN = [("abc", 3), ("", 0), ("é", 2), ("héllo", 6), ("日本語", 9), ("😀", 4), ("a b", 3)]
TO_NUMBER = [
    ("12", 12),
    ("-7", -7),
    ("+5", 5),
    ("-0", 0),
    ("00012", 12),
    ("2147483647", 2147483647),
    ("-2147483648", -2147483648),
    ("0x10", 16),
    ("-0x10", -16),
    ("+0x10", 0),
    (" 0x10", 0),
    ("0X10", 0),
    ("0x", 0),
    ("0xg", 0),
    ("0b11", 3),
    ("-0b11", -3),
    ("0b12", 1),
    ("0b-1", -1),
    ("0b 1", 1),
    ("0b0b1", 0),
    ("1e3", 1),
    ("12abc", 12),
    (" -12", -12),
    ("3.7", 3),
    ("007", 7),
]
NOT_NUMBERS = ["abc", "", "-", "+-5", "0b", "-0b", "0b2", "2147483648", "-2147483649", "0xFFFFFFFF", "١٢"]

POWERS = """
.decl pn(a:number, b:number)
.decl pu(a:unsigned, b:unsigned)
.decl rn(a:number, b:number, c:number)
.decl ru(a:unsigned, b:unsigned, c:unsigned)
rn(a, b, a ^ b) :- pn(a, b).
ru(a, b, a ^ b) :- pu(a, b).
"""
SYMBOLS = """
.decl s(x:symbol)
.decl len(x:symbol, n:number)
.decl num(x:symbol, n:number)
len(x, strlen(x)) :- s(x).
num(x, to_number(x)) :- s(x), x != "abc".
"""


def both(program: str, facts: dict[str, list[tuple]], backend) -> tuple[dict, dict]:
    """The engine's and the reference's model of one program."""
    result = Program(program).run(facts=facts, backend=backend)
    model = evaluate(load_program(program), facts)
    return {r: result.tuples(r) for r in model}, model


def test_powers_are_soufflés(backend) -> None:
    facts = {"pn": [(a, b) for a, b, _ in NUMBER_POWERS], "pu": [(a, b) for a, b, _ in UNSIGNED_POWERS]}
    for model in both(POWERS, facts, backend):
        assert model["rn"] == set(NUMBER_POWERS)
        assert model["ru"] == set(UNSIGNED_POWERS)


def test_strlen_and_to_number_are_soufflés(backend) -> None:
    facts = {"s": [(t,) for t, _ in STRLEN + TO_NUMBER]}
    for model in both(
        SYMBOLS.replace('x != "abc"', 'x != "abc", x != "", x != "é", x != "héllo", x != "日本語", x != "😀", x != "a b"'),
        facts,
        backend,
    ):
        assert {(t, n) for t, n in STRLEN} <= model["len"]
        assert model["num"] == set(TO_NUMBER)


def test_constants_are_folded_as_rules_compute() -> None:
    """Facts written with the operators are folded by the checker (Soufflé 2.5's values)."""
    program = load_program("""
        .decl n(i:number, x:number)
        n(1, 2^3^2). n(2, -2^2). n(3, 2*3^2). n(4, 2^-1^2). n(5, min(3, 1, 2)). n(6, max(3, 1, 2, 7)).
        n(7, min(1, 2) + max(3, 4)). n(8, 10-2^3-1). n(9, strlen("héllo")). n(10, to_number(" 0x10")).
        n(11, max(2, 3) ^ 2). n(12, (-3)^3). n(13, min (1, 2) * 3).
        .decl u(x:unsigned)
        u(3^21). u(max(4000000000, 5)).
    """)
    values = {r.head.relation + str(r.head.args[0].value): r.head.args[-1].value for r in program.rules}
    assert [values[f"n{i}"] for i in range(1, 14)] == [512, -4, 18, 0, 1, 7, 5, 1, 6, 0, 9, -27, 3]
    assert {values["u1870418611"], values["u4000000000"]} == {1870418611, 4000000000}


BITWISE = """
.decl n(x:number)
.decl s(x:number)
.decl r(a:number, b:number, c:number, band_:number, bor_:number, bxor_:number, shl:number, shr:number, shru:number,
        land_:number, lor_:number, lxor_:number, bnot_:number, lnot_:number)
r(a, b, c, a band b, a bor b, a bxor b, a bshl c, a bshr c, a bshru c, a land b, a lor b, a lxor b, bnot a, lnot a) :-
    n(a), n(b), s(c), c = b band 31.
.decl p(a:number, b:number, c:number, d:number, e:number)
p(1 lor 0 land 0, 6 band 3 bor 8, 1 bshl 2 + 1, 5 bxor 1 band 3, bnot 0 bshru 28).
"""
# The rows Soufflé 2.5 printed for BITWISE over n = {-7, 5, 2147483647, -2147483648} and
# s = 0..31 (its compiler, x86-64), and its p: the operators' precedence, shifts mod 32.
BITWISE_ROWS = {
    (-2147483648, -2147483648, 0, -2147483648, -2147483648, 0, -2147483648, -2147483648, -2147483648, 1, 1, 0, 2147483647, 0),
    (-2147483648, -7, 25, -2147483648, -7, 2147483641, 0, -64, 64, 1, 1, 0, 2147483647, 0),
    (-2147483648, 5, 5, 0, -2147483643, -2147483643, 0, -67108864, 67108864, 1, 1, 0, 2147483647, 0),
    (-2147483648, 2147483647, 31, 0, -1, -1, 0, -1, 1, 1, 1, 0, 2147483647, 0),
    (-7, -2147483648, 0, -2147483648, -7, 2147483641, -7, -7, -7, 1, 1, 0, 6, 0),
    (-7, -7, 25, -7, -7, 0, -234881024, -1, 127, 1, 1, 0, 6, 0),
    (-7, 5, 5, 1, -3, -4, -224, -1, 134217727, 1, 1, 0, 6, 0),
    (-7, 2147483647, 31, 2147483641, -1, -2147483642, -2147483648, -1, 1, 1, 1, 0, 6, 0),
    (5, -2147483648, 0, 0, -2147483643, -2147483643, 5, 5, 5, 1, 1, 0, -6, 0),
    (5, -7, 25, 1, -3, -4, 167772160, 0, 0, 1, 1, 0, -6, 0),
    (5, 5, 5, 5, 5, 0, 160, 0, 0, 1, 1, 0, -6, 0),
    (5, 2147483647, 31, 5, 2147483647, 2147483642, -2147483648, 0, 0, 1, 1, 0, -6, 0),
    (2147483647, -2147483648, 0, 0, -1, -1, 2147483647, 2147483647, 2147483647, 1, 1, 0, -2147483648, 0),
    (2147483647, -7, 25, 2147483641, -1, -2147483642, -33554432, 63, 63, 1, 1, 0, -2147483648, 0),
    (2147483647, 5, 5, 5, 2147483647, 2147483642, -32, 67108863, 67108863, 1, 1, 0, -2147483648, 0),
    (2147483647, 2147483647, 31, 2147483647, 2147483647, 0, -2147483648, 0, 0, 1, 1, 0, -2147483648, 0),
}


def test_bitwise_and_logical_operators_are_soufflés(backend) -> None:
    facts = {"n": [(-7,), (5,), (2147483647,), (-2147483648,)], "s": [(c,) for c in range(32)]}
    for model in both(BITWISE, facts, backend):
        assert model["r"] == BITWISE_ROWS
        assert model["p"] == {(1, 10, 8, 4, 15)}


@given(
    st.sampled_from(["+", "-", "*", "/", "%", "^", "min", "max", "band", "bor", "bxor", "bshl", "bshr", "bshru", "land", "lor"]),
    st.sampled_from(["number", "unsigned"]),
    st.integers(-(2**31), 2**32 - 1),
    st.integers(-(2**31), 2**32 - 1),
)
@settings(max_examples=300, deadline=None)
def test_a_folded_fact_and_a_rule_compute_the_same_value(op: str, type: str, a: int, b: int) -> None:
    """The checker folds facts through the evaluator's own functors (functors.fold): a fact
    ``r(a op b)`` and the rule deriving ``r(a op b)`` from ``e(a, b)`` agree, errors included."""
    low, high = (-(2**31), 2**31 - 1) if type == "number" else (0, 2**32 - 1)
    a, b = min(max(a, low), high), min(max(b, low), high)
    term = f"{op}({a}, {b})" if op in ("min", "max") else f"({a}) {op} ({b})"
    header = f".decl r(x:{type})\n.decl e(a:{type}, b:{type})\n"
    try:
        folded = load_program(header + f"r({term}).\n").rules[0].head.args[0].value
    except DatalogError as error:
        folded = ("error", error.message.split(" in ")[0])
    rule = term.replace(f"({a})", "x", 1).replace(f"({b})", "y", 1) if op not in ("min", "max") else f"{op}(x, y)"
    program = Program(header + f"r({rule}) :- e(x, y).\n")
    try:
        (computed,) = program.run(facts={"e": [(a, b)]}, backend="numpy").tuples("r")
        evaluated = computed[0]
    except DatalogError as error:
        evaluated = ("error", error.message.split(" in ")[0])
    assert folded == evaluated


def test_min_and_max_beside_the_aggregates() -> None:
    """``min (x) : {...}`` is still the aggregate; ``min(a, b)`` the functor."""
    program = load_program("""
        .decl a(x:number)
        .decl r(x:number, y:number, z:number)
        r(m, n, min(m, n)) :- m = min (x) : { a(x) }, n = max x + 1 : a(x).
    """)
    aggregates = [lit for lit in program.rules[0].body if isinstance(lit, ir.Aggregation)]
    assert [a.func for a in aggregates] == ["min", "max"]
    assert program.rules[0].head.args[2] == ir.Call("min", (ir.Var("m"), ir.Var("n")), "number")
    assert Program(
        program_text := """
        .decl a(x:number)
        .decl r(x:number, y:number, z:number)
        r(m, n, max(m, n, 0) ^ 2) :- m = min (x) : { a(x) }, n = max x + 1 : a(x).
    """
    ).run(facts={"a": [(-3,), (1,)]}).tuples("r") == {(-3, 2, 4)}, program_text


def test_power_is_right_associative_and_binds_tighter_than_minus() -> None:
    rule = load_program(".decl r(x:number, y:number)\nr(x, -x^2^x) :- r(x, _).").rules[0]
    power = ir.Call("^", (ir.Var("x"), ir.Call("^", (ir.Const(2, "number"), ir.Var("x")))))
    assert rule.head.args[1] == ir.Call("-", (ir.Const(0, "number"), power))


ERRORS = [
    ("r(x ^ y) :- e(x, _), u(y).", "1:7", "type mismatch: y is an unsigned, but ^ is computed on a number here"),
    ("u(min(x, y)) :- e(x, _), u(y).", "1:7", "x is a number, but min is computed on an unsigned here"),
    ("u(strlen(z)) :- s(z).", "1:3", "type mismatch: strlen(...) is a number, but argument 1 of u is an unsigned"),
    ("r(strlen(x)) :- e(x, _).", "1:10", "type mismatch: x is a number, but strlen takes a symbol"),
    ("s(z + z) :- s(z).", "1:5", "type mismatch: arithmetic (+) on symbols"),
    ("r(strlen(z, z)) :- s(z).", "1:3", "strlen takes one argument, not 2"),
    ("r(min(1)).", "1:9", "syntax error: unexpected ')'; expected ':'"),  # as Soufflé
    ('r(to_number("x1")).', "1:3", 'to_number: "x1" is not a number'),
    ("u(3^34).", "1:4", "unsigned power a ^ b: the result lies between 2^53 and 2^63"),
    ('s(cat("a", 1)).', "1:12", "type mismatch: 1 is a number, but cat takes a symbol"),
    ('s(substr("a", "b", 1)).', "1:15", 'type mismatch: "b" is a symbol, but substr takes a number'),
    ("s(cat()).", "1:3", "cat takes at least one argument, not 0"),
    ("r(1) :- s(x), contains(x, 2).", "1:27", "type mismatch: 2 is a number, but contains takes symbols"),
    ("r(1) :- s(x), match(x).", "1:15", "match takes 2 arguments, not 1"),
    (
        "r(c) :- c = count : { s(x), y = cat(x, x) }.",
        "1:33",
        "unsupported: cat(...) inside an aggregate (shards agree on its values)",
    ),
]
DECLS = "\n.decl e(x: number, y: number)\n.decl s(x: symbol)\n.decl u(x: unsigned)\n.decl r(x: number)\n"


@pytest.mark.parametrize(("text", "where", "message"), ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_errors_name_their_place(text: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        load_program(text + DECLS, "prog.dl")
    assert str(info.value).startswith(f"prog.dl:{where}: error: ") and message in str(info.value), str(info.value)


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_to_number_of_a_non_number_stops_the_run_at_the_call(text: str, backend) -> None:
    """Soufflé stops with "wrong string provided by to_number"; here a DatalogError at the call."""
    program = ".decl s(x:symbol)\n.decl r(n:number)\nr(to_number(x)) :- s(x)."
    with pytest.raises(DatalogError, match=r"prog.dl:3:3: error: to_number: .* is not a number"):
        Program(program, "prog.dl").run(facts={"s": [(text,), ("5",)]}, backend=backend)
    with pytest.raises(DatalogError, match="is not a number"):
        evaluate(load_program(program), {"s": {(text,), ("5",)}})


def test_unsigned_powers_libm_would_round_either_way_are_errors(backend) -> None:
    """3^34 is halfway between two doubles (Soufflé printed 4077925002, glibc's rounding)."""
    program = ".decl p(a:unsigned, b:unsigned)\n.decl r(c:unsigned)\nr(a ^ b) :- p(a, b)."
    with pytest.raises(DatalogError, match="3:5: error: unsigned power"):
        Program(program).run(facts={"p": [(3, 34)]}, backend=backend)
    with pytest.raises(DatalogError, match="unsigned power"):
        evaluate(load_program(program), {"p": {(3, 34)}})


@pytest.mark.parametrize("n", [1, 3])
def test_functors_on_shards(n: int) -> None:
    """Symbol ids are text-ordered per shard; strlen/to_number must read the right strings."""
    program = load_program(SYMBOLS + POWERS)
    texts = [t for t, _ in TO_NUMBER]
    facts = {"s": [(t,) for t in texts], "pn": [(a, b) for a, b, _ in NUMBER_POWERS]}
    shards = run_sharded(program, n, facts=facts)
    assert relation_tuples(shards, "num") == set(TO_NUMBER)
    assert relation_tuples(shards, "len") == {(t, len(t.encode())) for t in texts}
    assert relation_tuples(shards, "rn") == set(NUMBER_POWERS)
