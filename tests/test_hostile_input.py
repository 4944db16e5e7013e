"""Hostile input (docs/contracts.md, "Rejected input"): whatever bytes reach the parser or a
fact reader, the answer is a Program / rows, or a DatalogError naming file:line:col, never
another exception and never a hang.

The property tests run a few seconds in the normal suite; ``pytest -m fuzz`` runs the same
properties with many more examples."""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_datalog.engine import ir
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats.fact_input import FactFormat, _gunzip, encode_rows, read_facts, read_facts_range
from dask_datalog.engine.formats.relation_output import write_relation
from dask_datalog.engine.frontend import load_program, load_program_file
from dask_datalog.engine.frontend.parser import MAX_ALTERNATIVES, MAX_NESTING
from dask_datalog.engine.values import SymbolTable
from dask_datalog.spmd.inputs import Inputs, read_part
from dask_datalog.spmd.run import run_in_process

QUICK = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20_000, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
HEADER = ".decl e(x:number, y:number)\n.decl r(x:number)\n.decl s(x:symbol)\n"

load_program(HEADER)  # builds the lark parser once, outside every example's deadline


# ---- properties ------------------------------------------------------------------------------


def _lines(text: str) -> int:
    return text.count("\n") + 1


def load_or_clean_error(text: str, filename: str = "hostile.dl") -> ir.Program | None:
    """The parser's property: a Program, or a DatalogError at a position inside ``text``."""
    try:
        program = load_program(text, filename)
    except DatalogError as e:
        assert e.pos is not None, str(e)
        assert e.pos.file == filename
        assert 1 <= e.pos.line <= _lines(text.removeprefix("\ufeff")), str(e)
        assert e.pos.col >= 1, str(e)
        assert str(e).startswith(f"{e.pos}: error: ")
        return None
    assert isinstance(program, ir.Program)
    return program


_FACT_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def read_or_clean_error(
    path: Path,
    relation: ir.Relation,
    fmt: FactFormat | str,
    part: int = 0,
    n_parts: int = 1,
    symbols: SymbolTable | None = None,
) -> np.ndarray | None:
    """The fact reader's property: (n, arity) uint32 rows, or a DatalogError at path:line:col."""
    try:
        rows = read_facts_range(path, relation, SymbolTable() if symbols is None else symbols, fmt, None, part, n_parts)
    except DatalogError as e:
        assert e.pos is not None, str(e)
        assert e.pos.file == str(path)
        data = path.read_bytes()
        if data.startswith(b"\x1f\x8b") and e.pos.line > 1:  # a line of the decompressed text
            data = _gunzip(data, e.pos)
        assert 1 <= e.pos.line <= len(_FACT_LINE_BREAK.split(data)), str(e)
        assert e.pos.col >= 1, str(e)
        return None
    assert rows.dtype == np.uint32 and rows.ndim == 2 and rows.shape[1] == relation.arity
    return rows


# ---- program text: strategies --------------------------------------------------------------

_PIECES = [
    ".decl",
    ".input",
    ".output",
    ".printsize",
    ".type",
    ".comp",
    ".init",
    ".override",
    "C<T>",
    "overridable",
    "c.e",
    "e",
    "r",
    "s",
    "x",
    "y",
    "_",
    "(",
    ")",
    ",",
    ".",
    ":-",
    ";",
    "!",
    "=",
    "!=",
    "<",
    "<=",
    "+",
    "-",
    "*",
    "/",
    "%",
    ":",
    "{",
    "}",
    "count",
    "sum",
    "min",
    "max",
    "number",
    "symbol",
    "unsigned",
    "0",
    "1",
    "-1",
    "2147483648",
    "4294967296",
    "9" * 300,
    "0x" + "f" * 40,
    '"a"',
    '"',
    '"\\q"',
    "/*",
    "*/",
    "//",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "\0",
    "\ufeff",
    "#include",
    "filename=",
    '"../up"',
    "delimiter=",
    "@f",
    "$",
    "[",
    "]",
    "1.5",
    "band",
    "é",
    "\x7f",
]
_programs = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(_PIECES), max_size=80).map(" ".join),
    st.lists(st.sampled_from(_PIECES), max_size=80).map("".join).map(lambda t: HEADER + t),
)


# ---- program text: properties ---------------------------------------------------------------


@QUICK
@given(_programs)
def test_parser_never_crashes(text: str) -> None:
    load_or_clean_error(text)


@QUICK
@given(st.binary(max_size=300))
def test_program_file_bytes_never_crash(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("prog") / "p.dl"
    path.write_bytes(data)
    try:
        load_program_file(path)
    except DatalogError as e:
        assert e.pos is not None and e.pos.file == str(path) and e.pos.line >= 1 and e.pos.col >= 1, str(e)


@pytest.mark.fuzz
@LONG
@given(_programs)
def test_parser_never_crashes_long(text: str) -> None:
    load_or_clean_error(text)


@pytest.mark.fuzz
@LONG
@given(st.binary(max_size=2000))
def test_program_bytes_never_crash_long(data: bytes) -> None:
    load_or_clean_error(data.decode("utf-8", "replace"))


# ---- program text: the cases hypothesis would take long to reach --------------------------

RULE = HEADER + "r(x) :- e(x, _), x = {}.\n"


def _nested_aggregates(n: int) -> str:
    return HEADER + "r(x) :- e(x, _), x = " + "count : { e(y, _), y = " * n + "1" + " }" * n + ".\n"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(RULE.format("(" * 10_000 + "1" + ")" * 10_000), id="10k-parentheses"),
        pytest.param(RULE.format("+".join(["x"] * 10_000)), id="10k-term-sum"),
        pytest.param(RULE.format("(" * 5_000 + "+".join(["1"] * 5_000) + ")" * 5_000), id="parenthesised-sum"),
        pytest.param(RULE.format("-" * 10_000 + "1"), id="10k-unary-minus"),
        pytest.param(RULE.format("1*(" * 3_000 + "1" + ")" * 3_000), id="nested-products"),
        pytest.param(HEADER + "r(x) :- " + "(" * 5_000 + "e(x, _)" + ")" * 5_000 + ".", id="nested-bodies"),
        pytest.param(_nested_aggregates(2_000), id="2k-nested-aggregates"),
        pytest.param(HEADER + "r(x) :- e(x, _), " + ", ".join(["(e(x, _); e(_, x))"] * 40) + ".", id="2^40-dnf"),
        pytest.param(HEADER + "r(" + "9" * 300 + ").", id="300-digit-literal"),
        pytest.param(HEADER + "r(" + "9" * 10_000 + ").", id="10k-digit-literal"),
        pytest.param(HEADER + "r(-" + "9" * 10_000 + ").", id="negative-10k-digits"),
        pytest.param(HEADER + "r(0x" + "f" * 10_000 + ").", id="10k-digit-hex"),
        pytest.param(HEADER + "r(" + "0" * 10_000 + "7).", id="leading-zeros"),
        pytest.param(HEADER + "r(x) :- e(x, _), x = " + "1" * 5_000 + " + 1.", id="literal-in-arithmetic"),
        pytest.param(HEADER + 's("' + "a" * 1_000_000 + '").', id="1MB-symbol"),
        pytest.param(HEADER + "r(1) :- e(1, " + "a" * 1_000_000 + ").", id="1MB-variable"),
        pytest.param(HEADER + 'r(1) :- s("' + "b" * 1_000_000 + '"), 1 < "c".', id="1MB-symbol-in-error"),
        pytest.param(HEADER.replace("\n", "\r\n") + "r(1).\rr(2).\n\r\nr(3)", id="mixed-line-endings"),
        pytest.param(HEADER + "r(1).\0r(2).", id="nul-byte"),
        pytest.param(HEADER + 's("a\0b").', id="nul-in-string"),
        pytest.param(HEADER + 's("abc).\nr(1).', id="unterminated-string"),
        pytest.param(HEADER + "r(1). /* never closed\n" * 3, id="unterminated-comment"),
        pytest.param(HEADER + "r(1", id="end-inside-atom"),
        pytest.param("\ufeff" * 3 + HEADER, id="repeated-bom"),
        pytest.param(HEADER * 2, id="duplicate-declarations"),
    ],
)
def test_hostile_program(text: str) -> None:
    load_or_clean_error(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (RULE.format("+".join(["x"] * 10_000)), "nesting too deep"),
        (RULE.format("-" * 10_000 + "1"), "nesting too deep"),
        (HEADER + "r(x) :- " + "(" * 5_000 + "e(x, _)" + ")" * 5_000 + ".", "nesting too deep"),
        (_nested_aggregates(2_000), "nesting too deep"),
        (HEADER + "r(x) :- e(x, _), " + ", ".join(["(e(x, _); e(_, x))"] * 40) + ".", "disjunction too large"),
        (HEADER + "r(" + "9" * 10_000 + ").", "integer literal 999999999999...999999 (10000 digits) is out of range"),
        (HEADER + "r(0x" + "f" * 10_000 + ").", "is out of range (Soufflé reads at most 64 bits)"),
        (HEADER + "r(" + "9" * 10_000 + ".0).", "(10002 characters) is out of the range of a 32-bit float"),
    ],
)
def test_limits_are_clean_errors(text: str, message: str) -> None:
    with pytest.raises(DatalogError, match=re.escape(message)) as info:
        load_program(text, "limits.dl")
    assert info.value.pos is not None and info.value.pos.line == 4


def test_leading_zeros_and_parentheses_within_limits() -> None:
    program = load_program(RULE.format("(" * 10_000 + "x" + ")" * 10_000) + "r(" + "0" * 10_000 + "7).\n")
    assert program.rules[1].head.args[0].value == 7


def test_nesting_at_the_limit_runs_end_to_end() -> None:
    """Just under MAX_NESTING, every later stage (checker, planner, evaluator, pickling to
    workers) still copes: the limit protects them, it is not the first thing to break."""
    depth = MAX_NESTING - 8  # the atom argument and comparison add a few levels
    text = RULE.format("+".join(["x"] * depth)) + ".output r\ne(0, 2).\n" + RULE.format("-" * depth + "x").removeprefix(HEADER)
    program = load_program(text)
    pickle.loads(pickle.dumps(program))
    run = run_in_process(program, get_backend("numpy"), Inputs())
    assert run.sizes["r"] == 1  # r(0), from both rules
    alternatives = HEADER + "r(x) :- e(x, _), " + ", ".join(["(e(x, _); e(_, x))"] * 10) + "."
    assert len(load_program(alternatives).rules) == MAX_ALTERNATIVES


# ---- .input / .output filenames --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../e.facts", 'filename "../e.facts" leaves the fact directory'),
        ("a/../../e.facts", "leaves the fact directory"),
        ("./../e.facts", "leaves the fact directory"),
        ("a/b/../../../x", "leaves the fact directory"),
        ("..", "leaves the fact directory"),
        ("", "the filename must not be empty"),
        (".", "names a directory, not a file"),
        ("a/..", "names a directory, not a file"),
        ("a/", "names a directory, not a file"),
        ("a\0b", "must not contain a NUL character"),
    ],
)
@pytest.mark.parametrize("kind", ["input", "output"])
def test_io_filename_cannot_escape(kind: str, name: str, message: str) -> None:
    text = HEADER + f'.{kind} e(delimiter=",", filename="{name}")\n'
    message = message.replace("fact directory", "fact directory" if kind == "input" else "output directory")
    with pytest.raises(DatalogError, match=re.escape(message)) as info:
        load_program(text, "io.dl")
    assert str(info.value.pos) == f"io.dl:4:{len(kind) + 20}"  # the directive's filename=


@pytest.mark.parametrize(
    "name", ["e.facts", "a/../e.facts", "./e.facts", "sub/./e.facts", "a//e.facts", "..e", "e..", "/abs/e.facts"]
)
def test_io_filename_inside_or_absolute(name: str) -> None:
    program = load_program(HEADER + f'.input e(filename="{name}")\n.output r(filename="{name}")\n')
    assert program.inputs[0].filename == name and program.outputs[0].filename == name


def test_relative_filenames_resolve_inside_the_directories(tmp_path: Path) -> None:
    """What the checker lets through is read and written inside -F / -D, in-process."""
    facts, out = tmp_path / "facts", tmp_path / "out"
    (facts / "sub").mkdir(parents=True)
    (facts / "x").mkdir()  # the OS resolves x/.. on disk
    (facts / "sub" / "e.tsv").write_text("1\t2\n")
    program = load_program(
        HEADER + '.input e(filename="x/../sub/e.tsv")\n.output r(filename="deep/../r.out")\nr(x) :- e(x, _).\n'
    )
    assert read_part(program, SymbolTable(), Inputs(facts))["e"].shape == (1, 2)
    run_in_process(program, get_backend("numpy"), Inputs(facts)).write(str(out))
    assert (out / "r.out").read_text() == "1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts", "out"]


# ---- fact files ------------------------------------------------------------------------------

_TYPES = ("number", "unsigned", "symbol")
_relations = st.lists(st.sampled_from(_TYPES), max_size=3).map(
    lambda ts: ir.Relation("f", tuple(ir.Attribute(f"c{i}", t, t) for i, t in enumerate(ts)))
)
_delimiters = st.sampled_from(["\t", ",", " ", ";", "::", "\t\t", "é", "\n", "\r", "\0"])
_FIELDS = [
    "",
    "0",
    "1",
    "-1",
    "-",
    "+1",
    " 1",
    "0x1",
    "2147483647",
    "2147483648",
    "-2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9" * 300,
    "-" + "9" * 5000,
    "0" * 5000 + "1",
    "a",
    "é",
    "\0",
    "\x00x",
    "\ufeff",
    "()",
    '"q"',
    "\\",
    "1.5",
    "a" * 1000,
    "0xFFFFFFFF",
    "0b101",
    "0b",
    "\v7",
    '"',
    '"a""b"',
    '"a\nb"',
    '"x"y',
    "[a,b]",
    "[",
    "]",
]
_fields_line = st.lists(st.sampled_from(_FIELDS) | st.text(max_size=8), max_size=5)
_breaks = st.sampled_from(["\n", "\r\n", "\r", "", "\n\n", "\r\r\n"])


@st.composite
def _formats(draw: st.DrawFn, relation: ir.Relation) -> FactFormat:
    """The .input parameters of Soufflé's reader, at random: a delimiter, headers, rfc4180,
    a column map."""
    delimiter = draw(_delimiters)
    columns = None
    if relation.arity and draw(st.booleans()):
        columns = tuple(draw(st.permutations(range(relation.arity + draw(st.integers(0, 2))))))[: relation.arity]
    return FactFormat(delimiter, draw(st.booleans()), '"' not in delimiter and draw(st.booleans()), columns)


@st.composite
def _fact_files(draw: st.DrawFn) -> tuple[ir.Relation, FactFormat, bytes]:
    relation = draw(_relations)
    fmt = draw(_formats(relation))
    if draw(st.booleans()):
        return relation, fmt, draw(st.binary(max_size=400))
    lines = draw(st.lists(st.tuples(_fields_line, _breaks, st.booleans()), max_size=12))
    text = "".join(fmt.delimiter.join(fs) + (fmt.delimiter if trailing else "") + br for fs, br, trailing in lines)
    data = ("\ufeff" if draw(st.booleans()) else "").encode() + text.encode()
    if draw(st.booleans()):  # gzip, maybe cut short or followed by other bytes
        data = gzip.compress(data)[: draw(st.sampled_from([None, 15, -5]))] + draw(
            st.sampled_from([b"", b"x\n", gzip.compress(b"1")])
        )
    return relation, fmt, data


def _check_fact_file(directory: Path, relation: ir.Relation, fmt: FactFormat, data: bytes, n_parts: int) -> None:
    path = directory / "f.facts"
    path.write_bytes(data)
    symbols = SymbolTable()
    whole = read_or_clean_error(path, relation, fmt, symbols=symbols)
    parts = [read_or_clean_error(path, relation, fmt, k, n_parts, symbols) for k in range(n_parts)]
    if whole is None:
        assert any(p is None for p in parts) or relation.arity == 0  # a part fails where the file does
    else:
        assert all(p is not None for p in parts)
        assert np.array_equal(np.concatenate(parts), whole)


@QUICK
@given(_fact_files(), st.integers(1, 4))
def test_fact_reader_never_crashes(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[ir.Relation, str, bytes], n_parts: int
) -> None:
    _check_fact_file(tmp_path_factory.mktemp("facts"), *case, n_parts)


@pytest.mark.fuzz
@LONG
@given(_fact_files(), st.integers(1, 6))
def test_fact_reader_never_crashes_long(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[ir.Relation, str, bytes], n_parts: int
) -> None:
    _check_fact_file(tmp_path_factory.mktemp("facts"), *case, n_parts)


NUM2 = ir.Relation("e", (ir.Attribute("a", "number", "number"), ir.Attribute("b", "unsigned", "unsigned")))
SYM2 = ir.Relation("s", (ir.Attribute("a", "symbol", "symbol"), ir.Attribute("b", "number", "number")))


@pytest.mark.parametrize(
    ("relation", "data", "where", "message"),
    [
        (
            NUM2,
            b"1\t2\n3\t" + b"9" * 5000 + b"\n",
            "2:3",
            "999999999999999999999999999999999999999...9999999999 (5000 characters) does not fit in a 32-bit unsigned",
        ),
        (NUM2, b"-" + b"9" * 5000 + b"\t1\n", "1:1", "does not fit in a 32-bit number"),
        (NUM2, b"1\t-" + b"9" * 5000 + b"\n", "1:3", "starts with a minus, but column b is unsigned"),
        (SYM2, b"x\t" + b"1" * 300 + b"\n", "1:3", "(300 characters) does not fit in a 32-bit number"),
        (NUM2, b"1\t2\r\n3\r4\t5\n", "2:1", "expected an integer for column a (number), found '3\\r4'"),
        (NUM2, b"1\n", "1:2", "expected 2 tab-separated fields for e(a:number, b:unsigned), found 1"),
        (NUM2, b"1\t2\n\n\n1\n", "4:2", "found 1"),
        (NUM2, b"1\t\0\n", "1:3", "expected an integer for column b (unsigned), found '\\x00'"),
        (SYM2, b"a\n", "1:2", "found 1"),
        (
            SYM2,
            b"x" * 1_000_000 + b"\t" + b"y" * 1_000_000 + b"\n",
            "1:1000002",
            "found 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy...yyyyyyyyy' (1000002 characters)",
        ),
        (NUM2, b"1\t2\n\xff\t3\n", "2:1", "invalid UTF-8 byte 0xff"),
    ],
)
def test_fact_errors(tmp_path: Path, relation: ir.Relation, data: bytes, where: str, message: str) -> None:
    path = tmp_path / "e.facts"
    path.write_bytes(data)
    with pytest.raises(DatalogError, match=re.escape(message)) as info:
        read_facts(path, relation, SymbolTable())
    assert str(info.value.pos) == f"{path}:{where}"


def test_hostile_but_valid_facts(tmp_path: Path) -> None:
    path = tmp_path / "s.facts"
    long = "z" * 1_000_000
    path.write_bytes(f"\ufeffa\0b\t1\r\n\r\n{long}\t{'0' * 5000}7\nc\rd\t-2147483648\textra\n\n".encode())
    symbols = SymbolTable()
    rows = read_facts(path, SYM2, symbols)
    assert [symbols.lookup(rows[:, 0:1].ravel()).tolist()] == [["\ufeffa\0b", long, "c\rd"]]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(10**5000, 1)], "a 16610-bit integer does not fit in a 32-bit number"),
        ([(1, -(10**5000))], "a 16610-bit integer is negative, but column b is unsigned"),
        ([("9" * 5000, 1)], "(5000 characters) does not fit in a 32-bit number"),
        ([(1, "1" * 30)], "111111111111111111111111111111 does not fit in a 32-bit unsigned"),
    ],
)
def test_python_facts_huge_integers(rows: list[tuple[object, object]], message: str) -> None:
    with pytest.raises(DatalogError, match=re.escape(message)):
        encode_rows(rows, NUM2, SymbolTable(), "facts['e']")


@pytest.mark.parametrize("delimiter", ["\0", "\n", "\r", '"', "é", "::"])
def test_odd_delimiters_round_trip_or_fail_cleanly(tmp_path: Path, delimiter: str) -> None:
    """A delimiter pyarrow refuses (NUL, a line break, a quote) or cannot take (multi-byte)
    goes through the plain Python reader and writer instead of crashing."""
    relation = ir.Relation("e", (ir.Attribute("a", "number", "number"), ir.Attribute("b", "symbol", "symbol")))
    out = tmp_path / "e.csv"
    symbols = SymbolTable()
    rows = encode_rows([(1, "x"), (-2, "y")], relation, symbols, "rows")
    write_relation(out, rows, relation, symbols, delimiter)
    numeric = ir.Relation("n", (ir.Attribute("a", "number", "number"), ir.Attribute("b", "number", "number")))
    write_relation(tmp_path / "n.csv", encode_rows([(1, 2)], numeric, SymbolTable(), "rows"), numeric, SymbolTable(), delimiter)
    for path, rel in ((out, relation), (tmp_path / "n.csv", numeric)):
        read_or_clean_error(path, rel, delimiter)
