"""Bad programs: each must fail with a DatalogError printed ``prog.dl:line:col: error: ...``
at the right place, with a message a user understands.

Declarations are global, so most cases write the faulty line first and append the shared
declarations after it: the position of the fault is then on line 1.
"""

from __future__ import annotations

import itertools

import pytest

from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program, load_program_file
from dask_datalog.engine.plan import plan_program

DECLS = """
.decl e(x: number, y: number)
.decl s(x: symbol)
.decl u(x: unsigned)
.decl r(x: number)
.decl f(x: float)
"""

CASES: list[tuple[str, str, str, str]] = [
    # (id, program, "line:col", message substring)
    # ---- syntax
    ("missing-dot", "r(x) :- e(x, _)\nr(1).", "2:1", "unexpected name r; expected ',', '.' or ';'"),
    ("decl-in-body", "r(x) :- ", "3:1", "unexpected '.decl'; expected a name, a number"),
    ("unclosed-decl", ".decl a(x: number", "3:1", "expected ')' or ','"),
    ("bad-char", "r(1) @", "1:6", "unexpected character '@'"),
    ("unterminated-string", 's("abc).', "1:3", "unterminated string"),
    ("unterminated-comment", "r(1). /* never closed", "1:7", "unterminated /* comment"),
    ("bad-escape", 's("a\\qb").', "1:5", "unknown escape sequence \\q"),
    ("empty-comparison", "r(x) :- e(x, _), x < .", "1:22", "unexpected '.'"),
    # ---- declarations and names
    ("undeclared-body", "r(x) :- e(x, y), z(y).", "1:18", "undeclared relation z"),
    ("undeclared-head", "q(x) :- e(x, _).", "1:1", "undeclared relation q"),
    ("undeclared-fact", "ee(1, 2).", "1:1", "undeclared relation ee (did you mean e?)"),
    ("undeclared-directive", ".output path", "1:9", "undeclared relation path in .output"),
    (
        "duplicate-decl",
        ".decl a(x: number)\n.decl a(y: number)",
        "2:7",
        "duplicate declaration of relation a (first declared at 1:7)",
    ),
    ("duplicate-attribute", ".decl a(x: number, x: symbol)", "1:20", "duplicate attribute name x"),
    ("unknown-type", ".decl a(x: node)", "1:12", "unknown type node"),
    ("unknown-alias-base", ".type T <: nubmer", "1:12", "unknown type nubmer (did you mean number?)"),
    ("cyclic-types", ".type A <: B\n.type B <: A", "1:7", "cyclic type definition: A -> B -> A"),
    ("duplicate-type", ".type T <: number\n.type T <: symbol", "2:7", "duplicate type T"),
    ("redefine-base-type", ".type number <: symbol", "1:7", "cannot redefine the built-in type"),
    # Soufflé: "Name clash on relation T"; `.type T` alone is Soufflé 1's `.type T <: symbol`
    ("relation-named-as-type", ".type T\n.decl T(x: T)", "2:7", "name clash: relation T has the name of the type at 1:7"),
    # ---- arity and types
    ("arity-too-few", "r(x) :- e(x).", "1:9", "arity mismatch: e is declared with 2 attributes but used with 1 argument"),
    ("arity-head", "r(x, y) :- e(x, y).", "1:1", "r is declared with 1 attribute but used with 2"),
    ("number-in-symbol", "s(1).", "1:3", "type mismatch: 1 is a number, but argument 1 of s is a symbol"),
    ("string-in-number", 'r("a").', "1:3", 'type mismatch: "a" is a symbol, but argument 1 of r'),
    (
        "var-symbol-number",
        "r(x) :- s(x).",
        "1:3",
        "x is a number (argument 1 of r, at 1:3) but argument 1 of s (at 1:11) is a symbol",
    ),
    ("var-number-unsigned", "r(x) :- e(x, _), u(x).", "1:3", "argument 1 of u (at 1:20) is an unsigned"),
    ("compare-symbol-number", "r(x) :- e(x, _), s(y), x = y.", "1:26", "cannot compare a number with a symbol"),
    ("to-string-into-number", "r(to_string(y)) :- r(y).", "1:3", "to_string(...) is a symbol, but argument 1 of r is a number"),
    ("arithmetic-on-symbols", "s(y) :- s(x), y = x - x.", "1:21", "arithmetic (-) on symbols"),
    (
        "string-in-arithmetic",
        'r(x) :- e(x, _), y = 1, x < y + "s".',
        "1:33",
        '"s" is a symbol, but + is computed on a number here',
    ),
    ("sum-over-symbols", "r(n) :- n = sum x : { s(x) }.", "1:13", "sum over symbols is not supported"),
    ("count-into-unsigned", "u(n) :- n = count : { s(_) }.", "1:11", "cannot compare an unsigned with a number"),
    ("number-too-big", "r(2147483648).", "1:3", "2147483648 does not fit in 32 bits as a number"),
    ("number-too-small", "r(x) :- e(x, _), x > -2147483649.", "1:22", "does not fit in 32 bits"),
    # Soufflé reads an unsigned literal as C's strtoull does, then keeps 32 bits: 2^32 is 0
    ("unsigned-negative", "u(-1).", "1:3", "-1 does not fit an unsigned"),
    ("unsigned-too-big", "u(x) :- u(x), x < 18446744073709551616.", "1:19", "(Soufflé reads 0..2^64 - 1"),
    # ---- safety
    ("unsafe-head", "r(x) :- e(_, _).", "1:3", "variable x in the head is not bound"),
    (
        "unsafe-negation",
        "r(x) :- e(x, _), !e(x, y).",
        "1:24",
        "variable y in the negation of e is not bound by any positive body atom",
    ),
    ("unsafe-comparison", "r(x) :- e(x, _), x < z.", "1:22", "variable z in this comparison"),
    ("unsafe-equality-cycle", "r(x) :- e(x, _), y = z, z = y.", "1:18", "variable y"),
    (
        "unsafe-grouping",
        "r(c) :- c = count : { e(x, _) }, x > 1.",
        "1:25",
        "variable x is used inside and outside the aggregate but not bound",
    ),
    (
        "unsafe-aggregate-target",
        "r(c) :- e(x, _), c = sum y : { e(x, _) }.",
        "1:26",
        "variable y in the aggregate target is not bound by any positive atom of the aggregate",
    ),
    ("unsafe-in-aggregate", "r(c) :- e(x, _), c = count : { e(x, y), y < w }.", "1:45", "variable w in this comparison"),
    # a variable inside arithmetic in a body atom is not bound by it (Soufflé: "Ungrounded
    # variable n"); each of these once passed the checker and crashed the planner
    (
        "ungrounded-fib",
        "Fib(n, x + y) :- Fib(n - 1, x), Fib(n - 2, y), n <= 25.\n.decl Fib(n: number, x: number)",
        "1:5",
        "variable n in the head is not bound by any positive body atom (at 1:22 it is inside "
        "arithmetic in Fib, which does not bind it)",
    ),
    (
        "ungrounded-only-in-atom-arithmetic",
        "r(x) :- e(x, y + 1).",
        "1:14",
        "variable y in arithmetic in an argument of e is not bound",
    ),
    (
        "ungrounded-arithmetic-then-comparison",
        "r(x) :- e(x, _), e(y * 2, _), y < 3.",
        "1:20",
        "variable y in arithmetic in an argument of e",
    ),
    (
        "ungrounded-in-negation-arithmetic",
        "r(x) :- e(x, _), !e(x + y, _).",
        "1:25",
        "variable y in the negation of e is not bound",
    ),
    (
        "ungrounded-in-aggregate-atom",
        "r(c) :- c = count : { e(x + 1, _) }.",
        "1:25",
        "unsafe aggregate: variable x in arithmetic in an argument of e is not bound by any positive atom of the aggregate body",
    ),
    ("ungrounded-aggregate-target", "r(s) :- s = sum y : { e(y + 1, _) }.", "1:25", "unsafe aggregate: variable y in arithmetic"),
    (
        "ungrounded-grouping",
        "r(c) :- e(x + 1, _), c = count : { e(x, _) }.",
        "1:38",
        "variable x is used inside and outside the aggregate but not bound by any positive atom "
        "outside it (at 1:11 it is inside arithmetic in e",
    ),
    ("ungrounded-equality-chain", "r(a) :- e(_, _), a = b + 1, b = a - 1.", "1:3", "variable a in the head is not bound"),
    ("ungrounded-head-arithmetic", "r(x + 1) :- e(y, _).", "1:3", "variable x in the head"),
    (
        "ungrounded-renamed-aggregate-local",
        "q(c, d) :- c = count : { e(x, _) }, d = count : { e(y, _), y < x }.\n.decl q(x: number, y: number)",
        "1:64",
        "unsafe aggregate: variable x in this comparison is not bound",
    ),
    (
        "ungrounded-renamed-aggregate-arithmetic",
        "q(c, d) :- c = count : { e(x, _) }, d = count : { e(x + 1, _) }.\n.decl q(x: number, y: number)",
        "1:53",
        "unsafe aggregate: variable x in arithmetic in an argument of e",
    ),
    ("wildcard-in-head", "r(_) :- e(_, _).", "1:3", "_ cannot appear in the head of a rule"),
    ("wildcard-in-comparison", "r(x) :- e(x, _), x != _.", "1:23", "_ can only be an argument"),
    ("fact-with-variable", "e(1, y).", "1:6", "a fact must be ground, but y is a variable"),
    ("fact-with-wildcard", "r(_).", "1:3", "a fact must be ground"),
    ("division-by-zero-fact", "r(1 / 0).", "1:5", "division by zero"),
    # ---- aggregates
    ("count-with-target", "r(n) :- n = count x : { e(x, _) }.", "1:13", "count takes no target"),
    ("sum-without-target", "r(n) :- n = sum : { e(_, _) }.", "1:13", "sum needs a target"),
    ("mean-of-numbers", "f(n) :- n = mean x : { e(x, _) }.", "1:13", "mean is defined on floats, not on a number"),
    (
        "disjunction-in-aggregate",
        "r(n) :- n = count : { e(_, _) ; r(_) }.",
        "1:13",
        "unsupported: disjunction (;) inside an aggregate body",
    ),
    # ---- stratification
    ("negation-self", "r(x) :- e(x, _), !r(x).", "1:18", "negation of r in a rule for r itself"),
    (
        "negation-cycle",
        ".decl p(x: number)\n.decl q(x: number)\nq(x) :- r(x), !p(x).\np(x) :- q(x).",
        "3:15",
        "negation of p in a rule for q, but p depends on q through p -> q",
    ),
    (
        "aggregation-cycle",
        ".decl p(x: number)\n.decl q(x: number)\np(n) :- r(x), n = count : { q(x) }.\nq(x) :- s2(x), p(x).\n.decl s2(x: number)",
        "3:19",
        "aggregation over q in a rule for p, but q depends on p through q -> p",
    ),
    # ---- directives
    (
        "io-stdout-input",
        ".input e(IO=stdout)",
        "1:10",
        "unsupported: IO=stdout for .input (supported: file, stdin, json, jsonfile)",
    ),
    ("io-sqlite", ".output r(IO=sqlite)", "1:11", "unsupported: IO=sqlite for .output (supported: file"),
    ("io-unknown-param", ".output r(header=true)", "1:11", "unknown parameter 'header' for .output"),
    ("io-columns-on-output", ".output e(columns=1)", "1:11", "unknown parameter 'columns' for .output"),
    ("io-flag-not-boolean", ".input e(headers=yes)", "1:10", "headers must be true or false, not 'yes'"),
    # Soufflé 2.5 gzips whatever compress says: "false" would not mean what it says
    ("io-compress-false", ".output e(compress=false)", "1:11", "compress must be true"),
    # Soufflé: "CSV delimiter cannot contain '"' character when rfc4180 is enabled.", when it runs
    ("io-rfc4180-quote", '.input e(rfc4180=true, delimiter="\\"")', "1:24", "cannot contain '\"' when rfc4180 is enabled"),
    ("io-columns-count", '.input e(columns="0")', "1:10", "columns must name a distinct file column for each of the 2"),
    ("io-columns-twice", '.input e(columns="1:1")', "1:10", 'e.g. "0:1"'),
    ("io-columns-not-numbers", '.input e(columns="a:b")', "1:10", "columns must name"),
    ("io-name-on-printsize", '.printsize r(name="x")', "1:14", "unsupported: name= on .printsize"),
    ("io-empty-delimiter", '.input e(delimiter="")', "1:10", "delimiter must not be empty"),
    ("printsize-param", ".printsize r(x=1)", "1:14", "unknown parameter 'x' for .printsize"),
    # Soufflé: "Redefinition of printsize directives for relation r", at the second one
    ("printsize-twice", ".printsize r\n.printsize u, r", "2:15", "redefinition of the .printsize directive for relation r"),
    ("binary-too-big", "u(0b1" + "0" * 64 + ").", "1:3", "is out of range (Soufflé reads at most 64 bits)"),
    # ---- components (more in test_components.py)
    ("init-undefined", ".init g = Graph<number>", "1:1", "undefined component Graph"),
    ("override-outside-component", ".override r", "1:1", "unexpected '.override'"),
    # ---- outside the supported subset
    # declared (a lattice's operators are), called refused
    ("functor-stateful", ".functor f(x: number): number stateful\nr(@f(1)).", "2:3", "unsupported: stateful functor f"),
    ("pragma", '.pragma "legacy"', "1:9", 'unsupported: .pragma "legacy"'),
    ("preprocessor-include", '#include "other.dl"', "1:1", "cannot find include file other.dl"),
    ("preprocessor-directive", "#frob", "1:1", "invalid preprocessing directive #frob"),
    # ---- numeric types (Soufflé: "Float constant (type mismatch)", "no valid overloads", ...)
    ("float-constant-as-number", "r(x) :- e(x, _), x = 1.5.", "1:20", "type mismatch: cannot compare a number with a float"),
    (
        "float-constant-in-number-arithmetic",
        "r(x + 1.5) :- e(x, _).",
        "1:7",
        "1.5 is a float, but + is computed on a number here",
    ),
    ("unsigned-constant-as-number", "r(1u).", "1:3", "type mismatch: 1u is an unsigned, but argument 1 of r is a number"),
    ("float-literal-too-big", "f(1" + "0" * 40 + ".0).", "1:3", "out of the range of a 32-bit float"),
    ("float-literal-too-small", "f(0." + "0" * 45 + "1).", "1:3", "out of the range of a 32-bit float"),
    ("number-literal-too-big-for-float", "f(" + "9" * 40 + ").", "1:3", "does not fit in a 32-bit float"),
    ("float-modulo", "f(x % 2) :- f(x).", "1:5", "% is not defined on floats"),
    ("float-bitwise", "f(x band x) :- f(x).", "1:5", "band is not defined on floats"),
    ("unsigned-negation", "u(-x) :- u(x).", "1:3", "unary minus is not defined on unsigneds"),
    ("float-number-compare", "r(x) :- e(x, _), f(y), x < y.", "1:26", "cannot compare a number with a float"),
    ("float-in-number-arithmetic", "r(x + y) :- e(x, _), f(y).", "1:7", "y is a float, but + is computed on a number here"),
    ("to-float-into-number", "r(to_float(x)) :- e(x, _).", "1:3", "to_float(...) is a float, but argument 1 of r is a number"),
    ("itof", "f(itof(1)).", "1:7", "itof is not a functor in Soufflé 2.5; write to_float(...)"),
    ("range-arity", "r(range(1)).", "1:3", "range takes 2 or 3 arguments, not 1"),
    ("range-of-symbols", 's(x) :- x = range("a", "b").', "1:13", "arithmetic (range) on symbols"),
    ("as-unknown-type", "f(as(1, flot)).", "1:9", "unknown type flot (did you mean float?)"),
    ("as-symbol-to-number", "r(as(x, number)) :- s(x).", "1:3", "unsupported: as(...) from a symbol to a number"),
    ("as-float-literal-to-number", "r(as(1.5, number)).", "1:6", "1.5 is a float, but as(..., number) makes it a number"),
    ("as-to-a-supertype", ".type T <: number\n.decl t(x: T)\nt(as(x, number)) :- e(x, _).", "3:3", "as(..., number) is a number"),
    ("ipv4-out-of-range", "r(1.2.3.256).", "1:3", "IP out of range"),
    (
        "mutually-dependent-aggregates",
        "r(i) :- e(i, j), 0 = count : { e(x, j), x < i }, 0 = count : { e(i, y), y < j }.",
        "1:22",
        "mutually dependent aggregates",
    ),
    ("eqrel-not-binary", ".decl eq(x: number, y: number, z: number) eqrel", "1:7", "equivalence relation eq is not binary"),
    ("storage-twice", ".decl b(x: number) btree brie", "1:26", "btree/brie/eqrel qualifier already set"),
    ("plan-alone", ".plan 1:(1)", "1:1", ".plan must follow the rule it orders"),
    # Soufflé's semantic-plan1 and -plan2: every atom once; a version per atom of the recursion
    ("plan-incomplete", "r(x) :- e(x, y), r(y).\n.plan 0:(1,3)", "2:7", "invalid execution order in .plan (incomplete)"),
    ("plan-version", "r(x) :- e(x, y), r(y).\n.plan 0:(2,1), 1:(1,2)", "2:16", "version 1: only versions 0..0 permitted"),
    ("plan-atoms", "r(x) :- e(x, y), r(y).\n.plan 0:(2)", "2:7", "invalid execution order in .plan: expected 2 atoms, not 1"),
    (
        "plan-earliest-of-two",
        "r(x) :- e(x, y), r(y).\n.plan 1:(1,2)\nr(x) :- r(y), e(y, x).\n.plan 0:(1,1)",
        "2:7",
        "execution plan for version 1",
    ),
    # Soufflé: "Ignored execution plan for non-recursive clause", an error
    ("plan-not-recursive", "r(x) :- e(x, _).\n.plan 0:(1)", "2:7", "execution plan for a rule that is not recursive"),
    ("output-twice", ".decl b(x: number) output output", "1:27", "output qualifier already set"),
    # Soufflé's semantic-subsumption: its three errors, each where Soufflé puts it
    ("subsumption-nullary", ".decl b() btree_delete", "1:7", 'Subsumptive relation "b" must not be a nullary relation'),
    (
        "subsumption-storage",
        ".decl b(x: number) btree\nb(x) <= b(y) :- x < y.",
        "1:7",
        'Relation "b" has one or more subsumptive rules and relational representation "btree_delete" is missing',
    ),
    (
        "subsumption-choice",
        ".decl c(x: number, y: number) choice-domain x\nc(x, y) <= c(x, z) :- y < z.",
        "1:7",
        "unsupported: choice-domain on c, which has subsumptive rules",
    ),
    (
        "subsumption-inline",
        ".decl i(x: number) inline\ni(1).\nr(x) <= r(y) :- i(x), x < y.",
        "3:17",
        "unsupported: the inline relation i in a subsumptive rule",
    ),
    ("subsumption-two-relations", "r(x) <= e(x, y) :- y < 0.", "1:1", "Subsumption must compare tuples from the same relation"),
    ("subsumption-plan-atoms", "r(x) <= r(y) :- x < y.\n.plan 0:(1,2,3)", "2:7", "expected 2 atoms, not 3"),
    ("subsumption-plan-version", "r(x) <= r(y) :- x < y.\n.plan 2:(2,1)", "2:7", "version 2: only versions 0..1 permitted"),
    ("record-as-number", "r(x) :- e(x, _), x = [1, 2].", "1:22", "type mismatch: a record where a number is expected"),
    ("undeclared-branch", "r(x) :- e(x, _), x = $Num(1).", "1:22", "unknown ADT branch $Num"),
    ("counter", "r($) :- e(_, _).", "1:3", "unsupported: $ counters"),
    ("user-functor", "r(@f(1)).", "1:3", "undeclared user-defined functor @f"),
    ("bitwise-on-symbols", 's(x) :- s(x), x = x band "a".', "1:21", "arithmetic (band) on symbols"),
    ("power-stars", "r(2 ** 3).", "1:5", "unsupported: ** (Soufflé's power operator is ^)"),
    ("limitsize-without-n", ".limitsize r", "1:12", ".limitsize r needs its size, e.g. .limitsize r(n=100)"),
    # Soufflé's stoi would read "0x3" as 0 and abort on "abc"
    ("limitsize-hex", ".limitsize r(n=0x3)", "1:14", "n must be a count from 0 to 2147483647, not '0x3'"),
    ("limitsize-too-large", ".limitsize r(n=2147483648)", "1:14", "n must be a count"),
    ("limitsize-other-param", ".limitsize r(n=1, m=2)", "1:19", "unknown parameter 'm' for .limitsize (supported: n)"),
    # Soufflé: "Redefinition of limitsize directives for relation r", at the second one
    (
        "limitsize-twice",
        ".limitsize r(n=1)\n.limitsize u, r(n=2)",
        "2:15",
        "redefinition of the .limitsize directive for relation r",
    ),
    ("limitsize-undeclared", ".limitsize q(n=1)", "1:12", "undeclared relation q in .limitsize"),
    # Soufflé counts an eqrel's closure in its data structure, which the rules added here do not mirror
    (
        "limitsize-eqrel",
        ".decl q(x: number, y: number) eqrel\n.limitsize q(n=1)",
        "2:12",
        "unsupported: .limitsize on the equivalence",
    ),
    # ---- several problems: the earliest is named, whichever check finds it (Soufflé sorts its
    # report by place), and a problem's consequences are not problems of their own
    (
        "earliest-of-two-rules",
        ".type T <: number\n.type S <: number\n.decl a(x: T)\n.decl b(x: S)\na(x) :- b(x).\nr(y) :- e(x, _).",
        "5:3",
        "type mismatch: x is a S (argument 1 of b), but argument 1 of a is a T",
    ),
    ("declaration-before-type", ".decl q(x: X)\n.type U = number | B", "1:12", "unknown type X"),
    ("branch-twice-is-placed-last", ".type A = X {}\n.type B = X {} | Y {z: W}", "2:24", "unknown type W in branch Y"),
    ("ungrounded-in-inline", ".decl b(x: number) inline\nb(x) :- 0 < x.\nr(x) :- b(x).", "2:13", "variable x in this comparison"),
    ("witness-not-its-consequence", "r(c) :- c = count : { e(x, _) }, x > 1, r(c + x).", "1:25", "used inside and outside"),
    ("counter-in-fact", "r(autoinc()).", "1:3", "Argument in fact is not constant: autoinc()"),
    (
        "witness-through-two-aggregates",
        "e(c, w) :- c = count : { e(x, _), x > min y : { e(y, w) } }.",
        "1:54",
        "unsupported: w, a witness of a min or max aggregate inside another aggregate",
    ),
]


@pytest.mark.parametrize(("text", "where", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_program(text: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        load_program(text + "\n" + DECLS, "prog.dl")
    err = str(info.value)
    assert err.startswith(f"prog.dl:{where}: error: "), err
    assert message in err, err


def test_error_carries_its_position() -> None:
    with pytest.raises(DatalogError) as info:
        load_program("r(x) :- q(x).\n" + DECLS, "prog.dl")
    assert (info.value.pos.file, info.value.pos.line, info.value.pos.col) == ("prog.dl", 1, 9)
    assert info.value.message == "undeclared relation q"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("r(x) :- ", "1:9", "syntax error: unexpected end of input; expected a name, a number"),
        (".decl a(x: number", "1:18", "syntax error: unexpected end of input; expected ')' or ','"),
        (
            "r(1)\n\n",
            "1:5",
            "syntax error: unexpected end of input; expected ',', '.' or ':-'",
        ),  # the last line with text (Soufflé)
        (".comp C {\n.comp D {\n}\n.comp E {\n.decl a(x: number)\n", "4:1", "unterminated component, missing '}'"),
    ],
)
def test_unexpected_end_of_input(text: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        load_program(text, "prog.dl")
    assert str(info.value).startswith(f"prog.dl:{where}: error: {message}")


# Bodies built from these pieces, one to three at a time, cover every way a variable gets
# bound or used: plain and arithmetic atom arguments, negations, comparisons and assignment
# chains in both directions, aggregates with arithmetic, negation and local variables (the
# last two aggregates share the local w, which the checker renames apart).
SAFETY_PIECES = [
    "e(x, y)",
    "e(y, z)",
    "e(x + 1, y)",
    "e(y * 2, z)",
    "e(x, x + 1)",
    "!e(x, y)",
    "!e(x + 1, z)",
    "x < y",
    "x = y + 1",
    "y = x - 1",
    "z = x + y",
    "x + 1 = z",
    "y = y",
    "z = count : { e(x, _) }",
    "y = count : { e(x + 1, w) }",
    "z = min w : { e(w, _), !e(y + 1, w) }",
    "x = max w : { e(w, w + 1) }",
    "z = count : { e(w, v), v = w + y }",
    "y = count : { e(v, _), v < w }",
]


def test_every_checked_rule_can_be_planned() -> None:
    """The checker's notion of bound must be the planner's: a rule it accepts always has an
    order in which every literal's variables are bound; one it rejects gets a positioned
    error. Checked over every body of up to three pieces."""
    decls = "\n.decl e(x: number, y: number)\n.decl q(x: number, y: number)\n.decl r(x: number)"
    accepted = 0
    for n in (1, 2, 3):
        for body in itertools.combinations(SAFETY_PIECES, n):
            for head in ("r(x)", "q(x + y, z)"):
                text = f"{head} :- {', '.join(body)}."
                try:
                    program = load_program(text + decls, "prog.dl")
                except DatalogError as err:
                    assert err.pos is not None and str(err).startswith(f"prog.dl:{err.pos.line}:{err.pos.col}: error: "), (
                        text,
                        str(err),
                    )
                    continue
                accepted += 1
                try:
                    plan_program(program)
                except AssertionError as err:
                    pytest.fail(f"the checker accepted {text!r}, the planner failed: {err}")
    assert accepted > 100  # the loop exercises the planner, not only the checker


# ---- program text and files: byte-order mark, bytes that are not UTF-8


def test_byte_order_mark_is_not_part_of_the_program(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dask_datalog.cluster import Program

    text = ".decl r(x: number)\nr(1).\n.output r\n"
    plain = load_program(text, "prog.dl")
    assert load_program("\ufeff" + text, "prog.dl") == plain
    assert Program("\ufeff" + text, "prog.dl").ir == plain
    path = tmp_path / "bom.dl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert Program.from_file(path).ir.rules == plain.rules
    with pytest.raises(DatalogError) as info:  # columns count from after the mark
        load_program("\ufeffr(1) @", "prog.dl")
    assert str(info.value).startswith("prog.dl:1:6: error: syntax error: unexpected character '@'")


@pytest.mark.parametrize(
    ("data", "where", "byte"),
    [
        (b"\xff.decl r(x: number)", "1:1", "0xff"),
        (b"\xef\xbb\xbf\xff.decl r(x: number)", "1:1", "0xff"),  # after a byte-order mark
        (b".decl r(x: number)\n// caf\xe9\nr(1).", "2:7", "0xe9"),  # Latin-1
        (b".decl r(x: number)\r\nr(1). // \xc3\xa9\xc3\xa9 \x80", "2:13", "0x80"),  # after UTF-8
        (b".decl r(x: number) // \xe2\x82", "1:23", "0xe2"),  # cut short at the end
    ],
    ids=["first-byte", "after-bom", "latin1", "after-multibyte", "truncated"],
)
def test_program_file_not_utf8(tmp_path, data: bytes, where: str, byte: str) -> None:  # type: ignore[no-untyped-def]
    from dask_datalog.cluster import Program

    path = tmp_path / "prog.dl"
    path.write_bytes(data)
    for load in (load_program_file, Program.from_file):
        with pytest.raises(DatalogError) as info:
            load(path)
        assert str(info.value).startswith(f"{path}:{where}: error: not UTF-8 text: byte {byte}")


def test_program_file_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dask_datalog.cluster import Program

    with pytest.raises(DatalogError, match=r"cannot read program .*none\.dl"):
        Program.from_file(tmp_path / "none.dl")
