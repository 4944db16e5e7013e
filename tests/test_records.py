"""Soufflé's records and algebraic data types: programs with the answers Soufflé 2.5 gave
(written here), in process and on 1-4 in-process shards, every shard ending with the same
record table; generated programs that make records (recursively too) against the reference
evaluator on 1-4 shards, and against Soufflé itself where its binary sits beside the
repository; the record table and its agreement; checkpoints; errors at their positions."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference import Value, evaluate
from test_checkpoint import answers, in_process, on_shards, suspend
from test_sharded import relation_tuples, run_sharded

from dask_datalog.engine import ir
from dask_datalog.engine.checkpoint import CheckpointOptions
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.plan import plan_program
from dask_datalog.engine.values import MISSING, RecordTable, SymbolTable
from dask_datalog.spmd.shard import Shard

SOUFFLE = Path(__file__).resolve().parents[2] / "shared" / "peers" / "souffle-2.5" / "bin" / "souffle"

BASICS = r"""
.type P = [a: number, b: symbol]
.type L = [h: number, t: L]
.type E = []
.type Q = [p: P, k: unsigned]
.decl p(x: P)
p([1, "abc"]). p([-2, "a b"]). p([3, "x,y"]). p([4, "q\"r"]). p([5, ""]). p(nil). p([2, "z"]).
.decl l(x: L)
l(nil).
l([0, nil]).
l([n + 1, t]) :- l(t), t = [n, _], n < 3.
.decl e(x: E)
e([]). e(nil).
.decl heads(n: number, s: symbol)
heads(n, s) :- p([n, s]).
.decl pairs(x: P, y: P)
pairs(x, y) :- p(x), p(y), x = [n, _], y = [m, _], n + 1 = m.
.decl notp(n: number)
notp(n) :- l([n, _]), !p([n, "abc"]).
.decl c(n: number)
c(n) :- n = count : { p(x), x != nil }.
.decl anon(x: number)
anon(z) :- heads(x, y), v = [x, y], w = v, w = [z, t], z > 1, t != "".
.decl under(x: number)
under(z) :- p(v), v = [z, _].
.decl q(x: Q)
q([[n, s], 7]) :- p([n, s]), n > 2.
.decl qs(s: symbol)
qs(s) :- q([[_, s], k]), k = 7.
.decl ids(n: number)
ids(n) :- p(x), n = ord(x), x = nil.
.output p, l, e, heads, pairs, notp, c, anon, q, qs, ids, under
"""
BASICS_OUT = {
    "anon": {"2", "3", "4"},
    "c": {"6"},
    "e": {"nil", "[]"},
    "heads": {"-2\ta b", "1\tabc", "2\tz", "3\tx,y", '4\tq"r', "5\t"},
    "ids": {"0"},
    "l": {"nil", "[0, nil]", "[1, [0, nil]]", "[2, [1, [0, nil]]]", "[3, [2, [1, [0, nil]]]]"},
    "notp": {"0", "2", "3"},
    "p": {"nil", "[1, abc]", "[3, x,y]", "[-2, a b]", '[4, q"r]', "[5, ]", "[2, z]"},
    "pairs": {"[1, abc]\t[2, z]", '[3, x,y]\t[4, q"r]', '[4, q"r]\t[5, ]', "[2, z]\t[3, x,y]"},
    "q": {"[[3, x,y], 7]", '[[4, q"r], 7]', "[[5, ], 7]"},
    "qs": {"", "x,y", 'q"r'},
    "under": {"-2", "1", "2", "3", "4", "5"},
}

ADTS = """
.type T = Leaf {n: number} | Node {l: T, r: T} | Empty {} | Named {s: symbol, k: number}
.type Day = Mon {} | Tue {} | Wed {}
.decl t(x: T)
t($Leaf(1)). t($Leaf(2)). t($Empty()). t($Named("a b", 3)).
t($Node(a, b)) :- t(a), t(b), a = $Leaf(x), b = $Leaf(y), x < y.
t($Node(a, $Empty())) :- t(a), a = $Named(_, _).
.decl leaves(n: number)
leaves(x) :- t($Node($Leaf(x), _)).
.decl kinds(k: symbol)
kinds("leaf") :- t($Leaf(_)).
kinds("node") :- t(x), x = $Node(_, _).
kinds("empty") :- t($Empty()).
kinds("named") :- t($Named(s, _)), s = "a b".
.decl d(x: Day, y: Day)
d($Mon(), $Tue()). d($Tue(), $Wed()).
.decl before(x: Day, y: Day)
before(x, y) :- d(x, y).
before(x, z) :- d(x, y), before(y, z).
.decl same(n: number)
same(1) :- $Leaf(1) = $Leaf(1).
same(2) :- $Leaf(1) != $Leaf(2).
same(3) :- $Leaf(1) != $Empty().
same(4) :- t(x), x = $Leaf(2), x != $Leaf(1).
.decl named(x: T, n: number)
named(x, n) :- t(x), x = $Named(_, n).
.output t, leaves, kinds, d, before, same, named
"""
ADTS_OUT = {
    "before": {"$Mon\t$Tue", "$Mon\t$Wed", "$Tue\t$Wed"},
    "d": {"$Mon\t$Tue", "$Tue\t$Wed"},
    "kinds": {"empty", "leaf", "named", "node"},
    "leaves": {"1"},
    "named": {"$Named(a b, 3)\t3"},
    "same": {"1", "2", "3", "4"},
    "t": {"$Leaf(1)", "$Leaf(2)", "$Empty", "$Named(a b, 3)", "$Node($Leaf(1), $Leaf(2))", "$Node($Named(a b, 3), $Empty)"},
}

INPUTS = """
.type P = [a: number, b: symbol]
.type L = [h: unsigned, t: L]
.type T = A {x: number} | B {} | C {l: T, r: T} | D {s: symbol, n: number}
.type Day = Mon {} | Tue {}
.decl p(x: P, y: number)
.input p
.decl r(x: P, y: P)
.input r(delimiter=",")
.decl l(x: L)
.input l
.decl t(x: T, d: Day)
.input t
.decl ps(s: symbol)
ps(s) :- p([_, s], _).
ps(s) :- r([_, s], _).
.decl lh(h: unsigned)
lh(h) :- l([h, _]).
.decl td(s: symbol, n: number)
td(s, n) :- t($D(s, n), _).
.decl tc(d: Day)
tc(d) :- t($C(_, _), d).
.output p, r, l, t, ps, lh, td, tc
"""
INPUT_FILES = {
    "p.facts": '[1, abc]\t1\n[2,"x y"]\t2\n[ 3 , def ]\t3\nnil\t4\n[4, "q\\"r"]\t5\n[5, a b]\t6\n[-6,"tab\\\\x"]\t7\n',
    "r.facts": "[1, a],[2, b]\nnil,[3, cd]\n[4, e],nil\n",
    "l.facts": "nil\n[1,nil]\n[4294967295, [2, nil]]\n",
    "t.facts": '$A(1)\t$Mon\n$B\t$Tue\n$C($A(2), $B)\t$Tue\n$D(hi, 3)\t$Mon\n$D("x y",-4)\t$Tue\n$C($C($B, $B), $D(z, 0))\t$Mon\n',
}
INPUTS_OUT = {
    "l": {"nil", "[1, nil]", "[4294967295, [2, nil]]"},
    "lh": {"4294967295", "1"},
    "p": {"nil\t4", "[1, abc]\t1", "[2, x y]\t2", "[3, def ]\t3", '[4, q"r]\t5', "[5, a b]\t6", "[-6, tab\\x]\t7"},
    "ps": {"abc", "x y", "def ", 'q"r', "a b", "tab\\x", "a", "e"},
    "r": {"nil\t[3, cd]", "[1, a]\t[2, b]", "[4, e]\tnil"},
    "t": {
        "$A(1)\t$Mon",
        "$B\t$Tue",
        "$C($A(2), $B)\t$Tue",
        "$D(hi, 3)\t$Mon",
        "$D(x y, -4)\t$Tue",
        "$C($C($B, $B), $D(z, 0))\t$Mon",
    },
    "tc": {"$Mon", "$Tue"},
    "td": {"x y\t-4", "hi\t3"},
}


def lines(shards: list[Shard], name: str) -> set[str]:
    """A relation as the lines of its output file (tab-separated texts)."""
    return {"\t".join(str(v) for v in t) for t in relation_tuples(shards, name)}


def same_tables(shards: list[Shard]) -> None:
    first = shards[0].symbols.records.parts()
    for s in shards[1:]:
        theirs = s.symbols.records.parts()
        assert [k for k, _, _ in theirs] == [k for k, _, _ in first], "shards disagree on the record table's parts"
        for (_, ids, rows), (_, their_ids, their_rows) in zip(first, theirs):
            assert np.array_equal(ids, their_ids) and np.array_equal(rows, their_rows), "shards disagree on record ids"


def tables_equal(a: RecordTable, b: RecordTable) -> bool:
    return [(k, i.tolist(), r.tolist()) for k, i, r in a.parts()] == [(k, i.tolist(), r.tolist()) for k, i, r in b.parts()]


@pytest.mark.parametrize(
    ("text", "files", "want"),
    [(BASICS, {}, BASICS_OUT), (ADTS, {}, ADTS_OUT), (INPUTS, INPUT_FILES, INPUTS_OUT)],
    ids=["basics", "adts", "inputs"],
)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_programs_give_souffles_answers_on_shards(
    text: str, files: dict[str, str], want: dict[str, set[str]], n: int, tmp_path: Path
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    program = load_program(text)
    shards = run_sharded(program, n, fact_dir=tmp_path)
    same_tables(shards)
    for name, expected in want.items():
        assert lines(shards, name) == expected, name


@pytest.mark.parametrize(("text", "want"), [(BASICS, BASICS_OUT), (ADTS, ADTS_OUT)], ids=["basics", "adts"])
def test_the_output_files_hold_souffles_lines(text: str, want: dict[str, set[str]], tmp_path: Path) -> None:
    """The CSV files themselves, through the writer: records with the delimiter inside them,
    quotes, empty symbols, nested ADTs."""
    from dask_datalog.cluster.api import Program

    Program(text).run(backend="numpy").write(tmp_path)
    for name, expected in want.items():
        assert set((tmp_path / f"{name}.csv").read_text().split("\n")[:-1]) == expected, name


# ------------------------------------------------------------------ generated programs

WORDS = ("a", "b", "ab", "x y", "")
NUMBERS = (-1, 0, 1, 2, 3)
DECLS = """
.type P = [n: number, s: symbol]
.type L = [h: number, t: L]
.type T = Leaf {n: number} | Node {l: T, r: T} | Tag {s: symbol, p: P}
.decl w(n: number, s: symbol)
.decl p(x: P)
.decl l(x: L)
.decl t(x: T)
.decl o(n: number, s: symbol)
.decl c(k: number)
.output p
.output l
.output t
.output o
.output c
"""
TEMPLATES = (
    "p([n, s]) :- w(n, s).",
    "p([n + 1, s]) :- p([n, s]), n < 3.",
    "l([n, nil]) :- w(n, _).",
    "l(nil).",
    "l([n, t]) :- p([n, _]), l(t), t = [m, _], m < n.",
    "t($Leaf(n)) :- w(n, _).",
    "t($Node(a, b)) :- t(a), t(b), a = $Leaf(x), b = $Leaf(y), x < y.",
    "t($Tag(s, r)) :- p(r), r = [n, s], n > 0.",
    "o(n, s) :- t($Tag(s, [n, _])).",
    'o(n, "list") :- l([n, [_, nil]]).',
    "o(n, s) :- p([n, s]), !w(n, s).",
    'o(x, "node") :- t($Node($Leaf(x), _)).',
    "c(k) :- k = count : { p(r) }.",
    "o(n, s) :- p(a), p(b), a != b, a = [n, s], b = [n, _].",
    "o(n, s) :- w(n, s), !p([n + 1, s]).",
    'p(r) :- l([n, t]), t = [m, nil], r = [n + m, "sum"], n + m < 5.',
    "o(n, s) :- w(n, s), v = [n, s], !p(v).",
    "c(k) :- t(x), x = $Node($Leaf(k), $Leaf(_)).",
)


def generated(seed: int) -> tuple[str, list[tuple[int, str]]]:
    rng = random.Random(seed)
    rules = rng.sample(TEMPLATES, rng.randint(4, len(TEMPLATES)))
    facts = sorted({(rng.choice(NUMBERS), rng.choice(WORDS)) for _ in range(rng.randint(1, 6))})
    return DECLS + "\n".join(rules) + "\n", facts


def render(value: Value, attr: ir.Attribute, relation: ir.Relation) -> Value:
    """A value of the reference evaluator as Soufflé writes it (numbers and symbols stay)."""
    if attr.record is None:
        return value
    d = relation.record_type(attr.record)
    if isinstance(d, ir.RecordType):
        if value is None:
            return "nil"
        assert isinstance(value, tuple)
        return "[" + ", ".join(str(render(v, f, relation)) for v, f in zip(value, d.fields)) + "]"
    if d.enum:
        assert isinstance(value, int)
        return "$" + d.branches[value].name
    assert isinstance(value, tuple)
    index, payload = value
    assert isinstance(index, int)
    branch = d.branches[index]
    if not branch.fields:
        return "$" + branch.name
    values = [payload] if len(branch.fields) == 1 else list(payload)  # type: ignore[arg-type]
    return f"${branch.name}(" + ", ".join(str(render(v, f, relation)) for v, f in zip(values, branch.fields)) + ")"


def rendered(program: ir.Program, model: dict[str, set[tuple[Value, ...]]], name: str) -> set[tuple[Value, ...]]:
    relation = program.relations[name]
    return {tuple(render(v, a, relation) for v, a in zip(t, relation.attributes)) for t in model[name]}


@pytest.mark.parametrize("seed", range(40))
def test_made_records_match_the_reference_on_shards(seed: int) -> None:
    text, facts = generated(seed)
    program = load_program(text, f"<records seed {seed}>")
    want = evaluate(program, {"w": facts})
    n = 1 + seed % 4
    shards = run_sharded(program, n, facts={"w": facts}, chunk_rows=4 if seed % 5 == 0 else None)
    same_tables(shards)
    if n > 1:  # the table does not depend on the split: one shard makes the same one
        assert tables_equal(run_sharded(program, 1, facts={"w": facts})[0].symbols.records, shards[0].symbols.records)
    for name in ("p", "l", "t", "o", "c"):
        assert relation_tuples(shards, name) == rendered(program, want, name), (
            f"{name} on {n} shards differs\n{text}\nfacts {facts}"
        )


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
@pytest.mark.parametrize("seed", range(0, 40, 4))
def test_made_records_match_souffle(seed: int, tmp_path: Path) -> None:
    """The reference is checked against Soufflé itself: same program, same facts."""
    text, facts = generated(seed)
    (tmp_path / "prog.dl").write_text(text.replace(".decl w(n: number, s: symbol)", ".decl w(n: number, s: symbol)\n.input w"))
    (tmp_path / "w.facts").write_text("".join(f"{n}\t{s}\n" for n, s in facts))
    (tmp_path / "out").mkdir()
    subprocess.run([str(SOUFFLE), "prog.dl", "-F", ".", "-D", "out"], cwd=tmp_path, check=True, capture_output=True)
    program = load_program(text)
    want = evaluate(program, {"w": facts})
    for name in ("p", "l", "t", "o", "c"):
        got = set((tmp_path / "out" / f"{name}.csv").read_text().split("\n")[:-1])
        assert got == {"\t".join(str(v) for v in t) for t in rendered(program, want, name)}, f"{name}\n{text}\nfacts {facts}"


# ------------------------------------------------------------------ the record table


def test_the_record_table_interns_finds_and_unpacks() -> None:
    table = RecordTable()
    inner = table.intern_one(("number",), (5,))
    outer = table.intern_one(("number", "record"), (1, inner))
    assert (inner, outer) == (1, 2) and table.intern_one(("number", "record"), (1, inner)) == outer
    kinds = ("number", "record")
    assert table.find(kinds, np.array([[1, 1], [1, 0]], np.uint32)).tolist() == [outer, MISSING]
    assert table.missing(kinds, np.array([[1, 0], [1, 1], [1, 0]], np.uint32)).tolist() == [[1, 0]]
    table.append(kinds, np.array([[1, 0], [7, 7]], np.uint32))
    assert len(table) == 4 and table.find(kinds, np.array([[7, 7]], np.uint32)).tolist() == [4]
    found, rows = table.unpack(kinds, np.array([0, 1, 2, 3, 4, MISSING], np.uint32))
    assert found.tolist() == [False, False, True, True, True, False]  # nil, another part, unknown
    assert rows.tolist() == [[1, 1], [1, 0], [7, 7]]
    empty = table.intern_one((), ())
    assert table.find((), np.zeros((2, 0), np.uint32)).tolist() == [empty, empty]
    for i in range(200):  # many appends: the sorted runs merge, lookups stay exact
        table.append(("number", "number", "number"), np.array([[i, i + 1, i + 2]], np.uint32))
    probe = np.array([[0, 1, 2], [199, 200, 201], [1, 1, 1]], np.uint32)
    assert table.find(("number", "number", "number"), probe).tolist() == [6, 205, MISSING]
    assert tables_equal(RecordTable.restored(table.parts()), table)


def local_table(records: list[tuple[str, int]], strings: list[str]) -> tuple[RecordTable, np.ndarray]:
    """A shard's reading table of [symbol, [number]] records, with its symbols' agreed ids."""
    symbols = SymbolTable()
    for s, n in records:
        inner = symbols.records.intern_one(("number",), (n,))
        symbols.records.intern_one(("symbol", "record"), (symbols.intern(s), inner))
    return symbols.records, SymbolTable.sorted_union([strings]).ids_of(symbols.strings)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_agreed_tables_do_not_depend_on_the_split(split: int) -> None:
    records = [("b", 2), ("a", 1), ("c", 2), ("a", 3), ("b", 1)]
    strings = sorted({s for s, _ in records})
    whole, _ = RecordTable.agreed([local_table(records, strings)])
    parts = [local_table(records[k::split], strings) for k in range(split)]
    table, maps = RecordTable.agreed(parts)
    assert tables_equal(table, whole)
    for (local, _), mapping in zip(parts, maps):  # every local id maps to the same record
        for kinds, ids, rows in local.parts():
            if kinds == ("number",):
                assert table.unpack(kinds, mapping[ids])[1].tolist() == rows.tolist()


def test_symbols_reordered_for_output_keep_their_records() -> None:
    symbols = SymbolTable.sorted_union([["b", "d"]])
    record = symbols.records.intern_one(("symbol",), (symbols.id_of("d"),))
    symbols.append(["a"])  # made while evaluating: out of text order
    mapping, ordered = symbols.reordered()
    _, rows = ordered.records.unpack(("symbol",), np.array([record], np.uint32))
    assert ordered.lookup(rows[:, 0]).tolist() == ["d"] and mapping.tolist() == [1, 2, 0]


# ------------------------------------------------------------------ checkpoints

PATHS = """
.type Path = [node: number, rest: Path]
.decl edge(a: number, b: number)
.decl path(a: number, p: Path, k: number)
path(b, [b, [a, nil]], 1) :- edge(a, b).
path(c, [c, p], k + 1) :- path(b, p, k), edge(b, c), k < 4.
.decl ends(a: number, b: number)
ends(a, b) :- path(b, p, _), p = [_, r], r = [a, _].
.output path
.output ends
"""


@pytest.mark.parametrize(("before", "after", "k"), [(0, 2, 1), (2, 3, 2), (3, 0, 0)])
def test_records_survive_a_checkpoint_on_another_number_of_shards(before: int, after: int, k: int, tmp_path: Path) -> None:
    program = load_program(PATHS)
    edges = np.array([(i, j) for i in range(12) for j in (i + 1, i + 3) if j < 12], dtype=np.int64)
    facts = {"edge": edges}
    want = in_process(program, facts)
    suspend(program, before, facts, tmp_path, k)
    resume = CheckpointOptions(str(tmp_path), resume="", verify=True, attempt="second")
    got = in_process(program, facts, resume) if after == 0 else answers(on_shards(program, after, facts, resume), program)
    assert got == want


# ------------------------------------------------------------------ errors

TYPES = """
.decl e(x: number, y: number)
.decl r(x: number)
.type P = [x: number, y: number]
.type E = Num {n: number} | Add {a: E, b: E}
.type F = X {}
.decl p(x: P)
.decl q(x: E)
"""
ERRORS = [
    # (id, program, "line:col", message substring)
    ("record-as-number", "r(x) :- e(x, _), x = [1, 2].", "1:22", "type mismatch: a record where a number is expected"),
    ("too-few-elements", "p([1]).", "1:3", "wrong number of elements: record type P has 2, this record 1"),
    ("too-many-elements", "p([1, 2, 3]).", "1:3", "wrong number of elements: record type P has 2, this record 3"),
    ("unknown-branch", "q($Mul(1)).", "1:3", "unknown ADT branch $Mul"),
    ("branch-arity", "q($Num(1, 2)).", "1:3", "arity mismatch: branch Num of E takes 1 argument, not 2"),
    ("branch-argument", 'q($Num("a")).', "1:8", 'type mismatch: "a" is a symbol, but argument n of $Num is a number'),
    ("branch-of-another-type", "q($X()).", "1:3", "type mismatch: $X is a branch of F"),
    ("branch-without-parentheses", "r(1) :- q($Add).", "1:15", "unexpected ')'; expected '('"),
    ("nil-as-number", "r(nil).", "1:3", "type mismatch: nil where a number is expected"),
    ("nil-as-adt", "q(nil).", "1:3", "type mismatch: nil where a E is expected"),
    ("record-subtype", ".type S <: P", "1:7", "subtype S cannot be derived from record type P"),
    ("record-order", "r(1) :- p(x), p(y), x < y.", "1:23", "compared with = and != only"),
    ("underscore-in-negated-record", "r(1) :- e(a, _), !p([a, _]).", "1:25", "ungrounded record"),
    ("underscore-in-head-record", "p([_, 1]) :- e(_, _).", "1:4", "_ cannot appear in the head"),
    ("records-of-two-sizes", "r(1) :- a = [1, 2], a = [1].", "1:25", "a record of 1 elements where one of 2 is expected"),
    ("nil-of-no-type", "r(1) :- x = nil.", "1:13", "cannot tell which record type this nil is"),
    ("unbound-in-record", "p([x, y]) :- e(x, _).", "1:7", "unsafe rule: variable y in the head"),
    (
        "record-made-in-aggregate",
        "r(c) :- e(x, _), c = count : { p(w), v = [x, 1], v != w }.",
        "1:40",
        "a record made inside an aggregate",
    ),
    ("sum-of-records", "r(c) :- c = sum y : { p(y) }.", "1:13", "sum over records is not supported"),
    ("unknown-field-type", ".type T = [x: Undefined]", "1:15", "unknown type Undefined"),
    ("unknown-branch-type", ".type T = Z {x: Undefined}", "1:17", "unknown type Undefined in branch Z"),
    ("duplicate-field", ".type T = [x: number, x: symbol]", "1:23", "duplicate field name x in record type T"),
    ("duplicate-branch", ".type T = Num {}", "6:11", "duplicate branch Num"),  # E's, declared second
    (
        "two-record-types",
        ".decl p2(x: P2)\n.type P2 = [x: number, y: number]\np2(x) :- p(x).",
        "3:4",
        "type mismatch: x is a P2",
    ),
]


@pytest.mark.parametrize(("text", "where", "message"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_record_programs(text: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        plan_program(load_program(text + "\n" + TYPES, "prog.dl"))
    err = str(info.value)
    assert err.startswith(f"prog.dl:{where}: error: "), err
    assert message in err, err


@pytest.mark.parametrize(
    ("line", "where", "message"),
    [
        ("[1, 2", "1:5", "expected ']', found the end of the field"),
        ("[1, 2]x", "1:7", "unexpected 'x' after the value"),
        ("[99999999999, a]", "1:2", "does not fit in a 32-bit unsigned"),
        ("[-1, a]", "1:2", "expected an unsigned number"),
        ("$Nope(1)", "1:6", "T has no branch $Nope"),
        ("$A", "1:3", "expected '(', found the end of the field"),
    ],
)
def test_bad_record_facts(line: str, where: str, message: str, tmp_path: Path) -> None:
    text = ".type R = [a: unsigned, b: symbol]\n.type T = A {x: number} | B {}\n.decl r(x: R)\n.decl t(x: T)\n"
    name = "t" if line.startswith("$") else "r"
    (tmp_path / f"{name}.facts").write_text(line + "\n")
    program = load_program(text + f".input {name}\n", "prog.dl")
    with pytest.raises(DatalogError) as info:
        run_sharded(program, 1, fact_dir=tmp_path)
    err = str(info.value)
    assert err.startswith(f"{tmp_path / (name + '.facts')}:{where}: error: "), err
    assert message in err, err


def test_records_given_as_python_rows_are_read_as_text() -> None:
    program = load_program(
        ".type R = [a: number, b: symbol]\n.decl r(x: R, n: number)\n.decl o(b: symbol)\no(b) :- r([_, b], _)."
    )
    rows: list[Any] = [("[1, x]", 1), ("nil", 2), ('[2, "y z"]', 3)]
    shards = run_sharded(program, 2, facts={"r": rows})
    assert relation_tuples(shards, "o") == {("x",), ("y z",)}
    with pytest.raises(DatalogError, match=r"facts\['r'\]:1:1: error: cannot read '\[1' as R"):
        run_sharded(program, 1, facts={"r": [("[1", 1)]})


# ------------------------------------------------------------------ with the other front-end stages

COMPONENTS = """
.comp Shapes<N> {
    .type Shape = Dot {x: N} | Box {a: N, b: N} | Nothing {}
    .type Pair = [first: Shape, second: N]
    .decl s(x: Shape)
    .decl p(x: Pair)
    s($Dot(1)). s($Box(1, 2)). s($Nothing()).
    p([x, n]) :- s(x), x = $Box(n, _).
    .decl read(x: Shape)
    .input read
    .output s, p, read
}
.init one = Shapes<number>
.decl sizes(n: number)
sizes(n) :- one.p([$one.Box(_, n), _]).
.output sizes
"""
COMPONENTS_OUT = {
    "one.s": {"$one.Dot(1)", "$one.Box(1, 2)", "$one.Nothing"},
    "one.p": {"[$one.Box(1, 2), 1]"},
    "one.read": {"$one.Box(3, 4)", "$one.Nothing"},
    "sizes": {"2"},
}
INLINED = """
.type Conn = [first: symbol, second: symbol]
.decl a(x: Conn, y: Conn) inline
a(["Hello", "Goodbye"], ["temporary", "value"]).
a(["temporary", "value"], ["NO", "NO"]).
a(["can", "do"], ["my", "value"]).
.decl b(x: Conn, y: Conn) inline
b(["good job", "bad job"], ["can", "do"]).
b(x, y) :- a(x, y), x != ["temporary", "value"].
.decl c(x: Conn) inline
c(x) :- a(z, y), b(x, z), x != y.
.decl d(x: symbol)
d(x) :- c([x, _]).
.output d
"""


def test_records_and_adts_in_components_and_inline_relations(tmp_path: Path) -> None:
    """A component's ADT branches are its instance's (``$one.Box``, in fact files too, as
    Soufflé names them); a ``_`` inside a record passed to an inline relation is a variable of
    its own (Soufflé's evaluation-inline_records)."""
    (tmp_path / "one.read.facts").write_text("$one.Box(3, 4)\n$one.Nothing\n")
    shards = run_sharded(load_program(COMPONENTS), 2, fact_dir=tmp_path)
    for name, expected in COMPONENTS_OUT.items():
        assert lines(shards, name) == expected, name
    assert lines(run_sharded(load_program(INLINED), 3), "d") == {"Hello", "good job"}


def test_rfc4180_output_quotes_records_as_souffle(tmp_path: Path) -> None:
    """Soufflé's syntactic-input_directive_rfc4180: the record quoted whole, its symbols in
    doubled quotes, a quote in one as ``\\""``."""
    from dask_datalog.cluster.api import Program

    text = '.type A = C {x: symbol, y: symbol}\n.decl r(v: A, i: unsigned)\nr($C("a", "q\\"r"), 1).\n.output r(rfc4180="true")\n'
    Program(text).run(backend="numpy").write(tmp_path)
    assert (tmp_path / "r.csv").read_text() == '"$C(""a"", ""q\\""r"")",1\n'


# Soufflé turns ``_ = [...]`` (either side, a record literal on the other) into true before it
# checks anything (ResolveAnonymousRecordAliases); any other ``_`` as a whole side is its error
# "Underscore in binary relation".
UNDERSCORE_SIDES = """
.decl s(x: number)
s(1). s(2).
.decl r(k: number, x: number)
r(1, 5) :- _ = [1].
r(2, x) :- s(x), [x, x] = _.
r(3, x) :- s(x), _ = [_, y], y = x + 1.
r(4, c) :- c = count : { s(_), _ = [2] }.
.output r
"""
UNDERSCORE_SIDES_OUT = {"1\t5", "2\t1", "2\t2", "3\t1", "3\t2", "4\t2"}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_underscore_equal_to_a_record_is_true_as_in_souffle(n: int) -> None:
    shards = run_sharded(load_program(UNDERSCORE_SIDES), n)
    assert lines(shards, "r") == UNDERSCORE_SIDES_OUT


@pytest.mark.parametrize("literal", ["_ != [1]", "_ = 1", "1 = _", "_ = nil", "x = _", "_ < x"])
def test_underscore_as_any_other_side_is_an_error(literal: str) -> None:
    with pytest.raises(DatalogError, match="_ can only be an argument of a body atom"):
        load_program(f".decl s(x: number)\n.decl r(x: number)\nr(x) :- s(x), {literal}.")


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
def test_underscore_sides_match_souffle(tmp_path: Path) -> None:
    (tmp_path / "prog.dl").write_text(UNDERSCORE_SIDES)
    done = subprocess.run([str(SOUFFLE), "-D", ".", "prog.dl"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert set((tmp_path / "r.csv").read_text().splitlines()) == UNDERSCORE_SIDES_OUT
