"""Fact-file reading and Python-fact encoding (engine/fact_input.py), output writing (engine/relation_output.py)."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from engine_modes import ARRAY_API, KERNELS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats import fact_input
from dask_datalog.engine.formats.fact_input import (
    FactFormat,
    _line_start,
    _read_slow,
    encode_rows,
    read_facts,
    read_facts_range,
    read_text,
)
from dask_datalog.engine.formats.relation_output import (
    decode_columns,
    format_relation,
    sort_rows,
    to_numpy,
    to_pandas,
    write_relation,
)
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.storage import sets
from dask_datalog.engine.values import UINT32_MAX, SymbolBatch, SymbolTable, decode
from dask_datalog.spmd.inputs import Inputs, read_part

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny"


def rel(name: str, *types: str, type_names: tuple[str, ...] | None = None) -> ir.Relation:
    names = type_names or types
    return ir.Relation(name, tuple(ir.Attribute(chr(ord("a") + i), t, n) for i, (t, n) in enumerate(zip(types, names))))


EDGE = rel("edge", "number", "number")


def _read_fast(data: bytes, relation: ir.Relation, symbols: SymbolTable, fmt: FactFormat | str) -> np.ndarray | None:
    """The fast path alone, its symbols interned into ``symbols``."""
    batch = SymbolBatch(symbols)
    rows = fact_input._read_fast(data, relation, batch, fmt)
    batch.intern()
    return rows


def write_file(tmp_path: Path, content: str | bytes, name: str = "r.facts") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def expected_text(path: Path) -> str:
    """Distinct edges of a graph file, sorted numerically, as write_relation must print them."""
    pairs = {tuple(map(int, line.split("\t"))) for line in path.read_text().splitlines() if line}
    return "".join(f"{a}\t{b}\n" for a, b in sorted(pairs))


def roundtrip(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable, delimiter: str = "\t") -> str:
    out = io.StringIO()
    write_relation(out, rows, relation, symbols, delimiter)
    return out.getvalue()


# ----------------------------------------------------------------------------- reading good files


@pytest.mark.parametrize("name", ["data_5.txt", "data_10.txt", "dummy.facts", "data_22.txt", "tc_paper.txt", "paper.txt"])
def test_tiny_graphs_round_trip(name: str) -> None:
    symbols = SymbolTable()
    rows = read_facts(TINY / name, EDGE, symbols)
    assert rows.dtype == np.uint32 and rows.flags.c_contiguous and rows.shape[1] == 2
    unique = np.unique(rows, axis=0)
    assert roundtrip(unique, EDGE, symbols) == expected_text(TINY / name)


def test_trailing_blank_line_is_skipped() -> None:
    assert (TINY / "paper.txt").read_bytes().endswith(b"\n\n")
    assert len(read_facts(TINY / "paper.txt", EDGE, SymbolTable())) == 8


@pytest.mark.parametrize("n_parts", [1, 2, 3])
@pytest.mark.parametrize("end", ["\n", "\r\n", ""])
def test_an_empty_line_is_the_empty_string_in_one_symbol_column(tmp_path: Path, n_parts: int, end: str) -> None:
    """As in Soufflé, and as writing a one-column relation holding "" produces: the empty
    line is a tuple (it was skipped, and "" lost); the file's last line break starts none. A
    BOM is a line's text wherever it is, the file's start included (Soufflé's binary reads it
    into the first symbol), also where a worker's byte range starts."""
    relation = rel("r", "symbol")
    path = write_file(tmp_path, f"\ufeffx{end}{end}y{end}\ufeff{end}".encode() if end else b"\xef\xbb\xbfx\n\ny")
    want = [("\ufeffx",), ("",), ("y",), ("\ufeff",)] if end else [("\ufeffx",), ("",), ("y",)]
    assert read_parts(path, relation, n_parts) == want
    symbols = SymbolTable()
    rows = read_facts(path, relation, symbols)
    out = tmp_path / "out.facts"
    write_relation(out, np.unique(rows, axis=0), relation, symbols)
    assert sorted(decoded(read_facts(out, relation, symbols), relation, symbols)) == sorted(want)


@pytest.mark.parametrize(
    "path, lines, distinct",
    [
        ("OL.cedge/data_7035.txt", 7035, 7029),
        ("cal.cedge/edge.facts", 21693, 21693),
        ("TG.cedge/data_23874.txt", 23874, 23797),
        ("p2p-Gnutella09/data_26013.txt", 26013, 26013),  # CRLF
    ],
)
def test_real_graphs_match_pandas(path: str, lines: int, distinct: int) -> None:
    assert _read_fast((DATA / path).read_bytes(), EDGE, SymbolTable(), "\t") is not None  # no silent slow path
    rows = read_facts(DATA / path, EDGE, SymbolTable())
    assert rows.shape == (lines, 2)
    assert len(np.unique(rows, axis=0)) == distinct
    frame = pd.read_csv(DATA / path, sep="\t", header=None).to_numpy()
    np.testing.assert_array_equal(decode(rows, "number"), frame)


def test_crlf_output_is_lf_and_sorted() -> None:
    path = DATA / "p2p-Gnutella09/data_26013.txt"
    assert b"\r\n" in path.read_bytes()
    symbols = SymbolTable()
    text = roundtrip(read_facts(path, EDGE, symbols), EDGE, symbols)
    assert "\r" not in text
    assert text == expected_text(path)


@pytest.mark.parametrize(
    "content",
    [
        "1\t2\r\n3\t4\r\n\r\n",
        "1\t2\n\n\n3\t4",
        "\n\n1\t2\n3\t4\n\n",
        "1\t2\r\n3\t4\r",  # a \r before the end of the file is a line end's too
    ],
)
def test_line_end_variants(tmp_path: Path, content: str) -> None:
    rows = read_facts(write_file(tmp_path, content), EDGE, SymbolTable())
    np.testing.assert_array_equal(decode(rows, "number"), [[1, 2], [3, 4]])


@pytest.mark.parametrize("content", ["", "\n", "\r\n\r\n"])
def test_empty_files_have_no_facts(tmp_path: Path, content: str) -> None:
    assert read_facts(write_file(tmp_path, content), EDGE, SymbolTable()).shape == (0, 2)


def test_negative_numbers_sort_numerically(tmp_path: Path) -> None:
    symbols = SymbolTable()
    path = write_file(tmp_path, "3\t0\n-10\t5\n-2\t-7\n1\t1\n-2\t-8\n2147483647\t0\n-2147483648\t0\n")
    rows = read_facts(path, EDGE, symbols)
    assert roundtrip(rows, EDGE, symbols) == ("-2147483648\t0\n-10\t5\n-2\t-8\n-2\t-7\n1\t1\n3\t0\n2147483647\t0\n")


def test_unsigned_extremes_round_trip(tmp_path: Path) -> None:
    relation = rel("u", "unsigned", "number")
    symbols = SymbolTable()
    rows = read_facts(write_file(tmp_path, "4294967295\t-1\n0\t0\n2147483648\t1\n"), relation, symbols)
    assert rows[:, 0].tolist() == [UINT32_MAX, 0, 2**31]
    assert roundtrip(rows, relation, symbols) == "0\t0\n2147483648\t1\n4294967295\t-1\n"


def test_symbols_keep_spaces_quotes_and_sort_by_text(tmp_path: Path) -> None:
    relation = rel("s", "symbol", "number", "symbol")
    symbols = SymbolTable()
    symbols.intern("zzz")  # ids must not decide the order
    content = 'hello world\t1\tx\n"quoted"\t2\t\nhello world\t-1\ty\n Lead\t3\tz\n'
    rows = read_facts(write_file(tmp_path, content), relation, symbols)
    assert rows.shape == (4, 3)
    assert roundtrip(rows, relation, symbols) == (' Lead\t3\tz\n"quoted"\t2\t\nhello world\t-1\ty\nhello world\t1\tx\n')


def test_symbols_with_the_delimiter_are_written_unquoted(tmp_path: Path) -> None:
    relation = rel("s", "symbol", "symbol")
    symbols = SymbolTable()
    rows = read_facts(write_file(tmp_path, "a\tb\tc,d\n"), rel("t", "symbol", "symbol", "symbol"), symbols)
    rows = rows[:, 1:]
    assert roundtrip(rows, relation, symbols, delimiter=",") == "b,c,d\n"
    assert roundtrip(rows, relation, symbols) == "b\tc,d\n"


def test_multi_character_delimiter(tmp_path: Path) -> None:
    relation = rel("s", "symbol", "number")
    symbols = SymbolTable()
    rows = read_facts(write_file(tmp_path, "b::2\na::1\n"), relation, symbols, "::")
    assert roundtrip(rows, relation, symbols, delimiter="::") == "a::1\nb::2\n"


def test_comma_delimiter_fast_path(tmp_path: Path) -> None:
    rows = read_facts(write_file(tmp_path, "5,6\n1,2\n"), EDGE, SymbolTable(), ",")
    assert decode(rows, "number").tolist() == [[5, 6], [1, 2]]


def test_symbol_ids_are_shared_across_columns_and_files(tmp_path: Path) -> None:
    relation = rel("s", "symbol", "symbol")
    symbols = SymbolTable()
    first = read_facts(write_file(tmp_path, "a\tb\n", "1.facts"), relation, symbols)
    second = read_facts(write_file(tmp_path, "b\ta\n", "2.facts"), relation, symbols)
    assert first[0].tolist() == second[0][::-1].tolist()
    assert sorted(symbols.strings) == ["a", "b"]


@pytest.mark.parametrize("batch_bytes", [None, 1, 40])
def test_a_runs_files_are_interned_together_in_reading_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_bytes: int | None
) -> None:
    """read_part interns the symbol columns of all its files at once (a SymbolBatch; or in
    passes of ``batch_bytes``): the table and the rows are those of reading the files one by
    one, a relation read from two files included (its blocks joined once filled in), and a
    file that takes the reference reader (brackets with a comma, a record column) before fast
    ones."""
    if batch_bytes is not None:
        monkeypatch.setattr("dask_datalog.engine.values._BATCH_BYTES", batch_bytes)
    program = load_program(
        """
        .type P = [x:symbol, y:number]
        .decl b(x:symbol, y:symbol)
        .input b(delimiter=",")
        .decl c(p:P, s:symbol)
        .input c
        .decl d(s:symbol)
        .input d
        .decl a(x:symbol, n:number, y:symbol)
        .input a
        .input a(filename="a2.facts")
        """
    )
    files = {
        "a.facts": "m\t1\tn\nn\t2\to\n",
        "a2.facts": "p\t3\tm\nq\t4\tq\n",
        "b.facts": "[x,y],o\nr,m\n",
        "c.facts": "[k, 5]\tr\n[m, 6]\tk\n",
        "d.facts": "s\nm\n\nt\n",
    }
    for name, content in files.items():
        write_file(tmp_path, content, name)
    symbols = SymbolTable()
    got = read_part(program, symbols, Inputs(fact_dir=tmp_path))
    want = SymbolTable()
    expected: dict[str, list[np.ndarray]] = {}
    for name, path, fmt, _ in Inputs(fact_dir=tmp_path).files(program):
        assert path is not None
        expected.setdefault(name, []).append(read_facts(path, program.relations[name], want, fmt))
    assert symbols.strings == want.strings == ["[x,y]", "r", "o", "m", "k", "s", "", "t", "n", "p", "q"]
    assert got.keys() == expected.keys()
    for name, blocks in expected.items():
        assert got[name].tolist() == np.concatenate(blocks).tolist()


@pytest.mark.parametrize(
    "content, types",
    [
        ("1\t2\n-3\t4\n\n2147483647\t-2147483648\r\n", ("number", "number")),
        ("x y\t1\t4294967295\nz\t-5\t0\n", ("symbol", "number", "unsigned")),
        ("a\n\nb\n a\n", ("symbol",)),
        ("1\t\t2\n", ("unsigned", "symbol", "number")),
        ("1.5\t-2\n-0\t3\n.5\t4\n1e-3\t5\n16777217\t6\n0.1\t7\n", ("float", "number")),
        ("x\t2.5e3\t1\ny\t-0.0\t4294967295\n", ("symbol", "float", "unsigned")),
    ],
)
def test_fast_and_slow_paths_agree(content: str, types: tuple[str, ...]) -> None:
    relation = rel("r", *types)
    fast_symbols, slow_symbols = SymbolTable(), SymbolTable()
    fast = _read_fast(content.encode(), relation, fast_symbols, "\t")
    slow = _read_slow(content.encode(), "f", relation, slow_symbols, "\t")
    assert fast is not None
    decoded_fast = [fast_symbols.lookup(fast[:, j]) if t == "symbol" else fast[:, j] for j, t in enumerate(types)]
    decoded_slow = [slow_symbols.lookup(slow[:, j]) if t == "symbol" else slow[:, j] for j, t in enumerate(types)]
    for f, s in zip(decoded_fast, decoded_slow):
        assert f.tolist() == s.tolist()


# ----------------------------------------------------------------------------- nullary relations


# As Soufflé 2.5 reads them (its binary, checked): any line makes the fact, an empty one too.
NULLARY_FILES = [("()\n", True), ("\n()\r\n()\n", True), ("", False), ("\n", True), ("\n\n", True), ("x\n", True), ("  ", True)]


@pytest.mark.parametrize("content, holds", NULLARY_FILES)
def test_nullary_relation(tmp_path: Path, content: str, holds: bool) -> None:
    relation = rel("flag")
    symbols = SymbolTable()
    rows = read_facts(write_file(tmp_path, content), relation, symbols)
    assert rows.shape == (int(holds), 0)
    assert roundtrip(rows, relation, symbols) == ("()\n" if holds else "")


# ----------------------------------------------------------------------------- bad files


BAD_FILES = [
    # (content, types, line, col, message substring)
    ("1\t2\n3\n", ("number", "number"), 2, 2, "expected 2 tab-separated fields for edge(a:number, b:number), found 1"),
    ("1\tx1\n", ("number", "number"), 1, 3, "expected an integer for column b (number), found 'x1'"),
    ("1\t\n", ("number", "number"), 1, 3, "expected an integer for column b (number), found an empty field"),
    ("12345678901\t1\n", ("number", "number"), 1, 1, "12345678901 does not fit in a 32-bit number"),
    ("2147483648\t0\n", ("number", "number"), 1, 1, "2147483648 does not fit in a 32-bit number"),
    ("0\t-2147483649\n", ("number", "number"), 1, 3, "-2147483649 does not fit in a 32-bit number"),
    ("99999999999999999999999\t0\n", ("number", "number"), 1, 1, "does not fit in a 32-bit number"),
    ("5\n-1\n", ("unsigned",), 2, 1, "-1 starts with a minus, but column a is unsigned"),
    ("-0\n", ("unsigned",), 1, 1, "-0 starts with a minus"),  # Soufflé's check, before the number
    (" -1\n", ("unsigned",), 1, 1, "-1 is negative, but column a is unsigned"),  # Soufflé: 4294967295
    ("4294967296\n", ("unsigned",), 1, 1, "4294967296 does not fit in a 32-bit unsigned"),  # Soufflé: 0
    ("0x100000000\n", ("unsigned",), 1, 1, "0x100000000 does not fit in a 32-bit unsigned"),  # Soufflé: 0
    ("0x\n", ("unsigned",), 1, 1, "expected an integer for column a (unsigned), found '0x'"),
    ("0x 1\n", ("unsigned",), 1, 1, "found '0x 1'"),
    ("0XFF\n", ("unsigned",), 1, 1, "found '0XFF'"),
    ("0b102\n", ("unsigned",), 1, 1, "found '0b102'"),
    ("1 \t2\n", ("number", "number"), 1, 1, "found '1 '"),  # space before, never after
    ("0x10\t1\n", ("number", "number"), 1, 1, "found '0x10'"),  # hex and binary: unsigned only
    ("0b1\t1\n", ("number", "number"), 1, 1, "found '0b1'"),
    ("+-1\t2\n", ("number", "number"), 1, 1, "found '+-1'"),
    ("1.5\t2\n", ("number", "number"), 1, 1, "found '1.5'"),
    ("1\t2\r3\t4\n", ("number", "number"), 1, 3, "found '2\\r3'"),  # a lone \r ends no line
    ("1\t2\r\r\n", ("number", "number"), 1, 3, "found '2\\r'"),  # one \r is dropped
    ("\ufeff1\t2\n", ("number", "number"), 1, 1, "found '\\ufeff1'"),  # a BOM is text, as in Soufflé
    ("1\t2\r\n3\t4\r\n5\tq\r\n", ("number", "number"), 3, 3, "found 'q'"),
    ("0x1FFFFFFFF\n", ("unsigned",), 1, 1, "0x1FFFFFFFF does not fit in a 32-bit unsigned"),
    ("0X10\n", ("unsigned",), 1, 1, "found '0X10'"),
    ("1\t1.5 \n", ("number", "float"), 1, 3, "expected a float for column b (float), found '1.5 '"),
    ("1\tx\n", ("symbol", "float"), 1, 3, "expected a float for column b (float), found 'x'"),
    ("1e39\n", ("float",), 1, 1, "1e39 is out of the range of a 32-bit float for column a"),
    ("2\n1e-40\n", ("float",), 2, 1, "1e-40 is out of the range of a 32-bit float"),
    ("1\t2\n\n\nx\t1\n", ("number", "number"), 4, 1, "found 'x'"),
    ("a b\tc\n", ("symbol", "number"), 1, 5, "expected an integer for column b (number), found 'c'"),
    ("a\n", ("symbol", "symbol"), 1, 2, "expected 2 tab-separated fields"),
    ("ok\t1\n\xff\t2\n".encode("latin-1"), ("symbol", "number"), 2, 1, "invalid UTF-8 byte 0xff"),
]


def test_unsigned_fields_may_be_hex_or_binary(tmp_path: Path) -> None:
    """As Soufflé reads them (its semantic-load9): 0x and 0b (lower case) in unsigned columns."""
    path = write_file(tmp_path, "0xFFFFFFFF,0b101,7\n0x0,0b0,0x1f\n")
    rows = read_facts(path, rel("u", "unsigned", "unsigned", "unsigned"), SymbolTable(), ",")
    assert rows.tolist() == [[4294967295, 5, 7], [0, 0, 31]]


def test_float_fields_round_trip_as_soufflé_prints_them(tmp_path: Path) -> None:
    relation = rel("f", "float", "symbol")
    content = "inf\ta\n-nan\tb\n 0x1p-149\tc\n1.00000005960464477550\td\n-0\te\n0\tf\n3.4028235e38\tg\n"
    symbols = SymbolTable()
    rows = read_facts(write_file(tmp_path, content), relation, symbols)
    assert set(roundtrip(rows, relation, symbols).splitlines()) == {
        "inf\ta", "-nan\tb", "1.40129846e-45\tc", "1.00000012\td", "-0\te", "0\tf", "3.40282347e+38\tg",
    }  # fmt: skip
    # Float order, NaNs beyond the infinities by their sign (-nan first), -0.0 before 0.0.
    column = to_numpy(rows, relation, symbols)[:, 0].astype(float)
    assert np.isnan(column[0]) and column[1:].tolist() == [
        -0.0,
        0.0,
        2.0**-149,
        float(np.float32(1.0000001)),
        3.4028234663852886e38,
        np.inf,
    ]
    assert np.signbit(column[1]) and not np.signbit(column[2])
    frame = to_pandas(rows, relation, symbols)
    assert frame["a"].dtype == np.float32


def test_python_floats_are_rounded_to_float32() -> None:
    relation = rel("f", "float", "number")
    rows = encode_rows([(0.1, 1), (16777217, 2), ("1e-3", 3)], relation, SymbolTable(), "<facts>")
    values = decode(np.ascontiguousarray(rows[:, 0]), "float")
    assert values.tolist() == [float(np.float32(0.1)), 16777216.0, float(np.float32(0.001))]
    with pytest.raises(DatalogError, match=r"<facts>:1:1: error: 1e\+39 does not fit in a 32-bit float"):
        encode_rows([(1e39, 1)], relation, SymbolTable(), "<facts>")
    with pytest.raises(DatalogError, match="expected a float for column a"):
        encode_rows([(True, 1)], relation, SymbolTable(), "<facts>")


@pytest.mark.parametrize("content, types, line, col, message", BAD_FILES)
def test_bad_fact_file(tmp_path: Path, content: str | bytes, types: tuple[str, ...], line: int, col: int, message: str) -> None:
    path = write_file(tmp_path, content)
    symbols = SymbolTable()
    with pytest.raises(DatalogError) as info:
        read_facts(path, rel("edge", *types), symbols)
    assert str(info.value).startswith(f"{path}:{line}:{col}: error: ")
    assert message in info.value.message
    assert info.value.pos == ir.Pos(str(path), line, col)
    assert len(symbols) == 0  # nothing interned from a rejected file


def test_error_names_the_type_alias(tmp_path: Path) -> None:
    relation = rel("edge", "number", "number", type_names=("Node", "Node"))
    with pytest.raises(DatalogError, match=r"column b \(Node\), found 'y'"):
        read_facts(write_file(tmp_path, "1\ty\n"), relation, SymbolTable())


def test_first_bad_line_of_a_large_file(tmp_path: Path) -> None:
    good = "".join(f"{i}\t{i + 1}\n" for i in range(100_000))
    path = write_file(tmp_path, good + "7\t2147483648\n" + good)
    with pytest.raises(DatalogError) as info:
        read_facts(path, EDGE, SymbolTable())
    assert str(info.value).startswith(f"{path}:100001:3: error: 2147483648 does not fit")


def test_missing_file_is_reported_at_the_input_directive(tmp_path: Path) -> None:
    where = ir.Pos("prog.dl", 3, 1)
    with pytest.raises(DatalogError) as info:
        read_facts(tmp_path / "edge.facts", EDGE, SymbolTable(), pos=where)
    assert str(info.value).startswith("prog.dl:3:1: error: ")
    assert f"fact file {tmp_path / 'edge.facts'} for edge(a:number, b:number) does not exist" in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DatalogError, match="cannot read fact file"):
        read_facts(tmp_path, EDGE, SymbolTable(), pos=ir.Pos("prog.dl", 2, 1))


# ----------------------------------------------------------------------------- writing and decoding


def test_write_to_path_creates_directories(tmp_path: Path) -> None:
    symbols = SymbolTable()
    rows = read_facts(TINY / "data_5.txt", EDGE, symbols)
    target = tmp_path / "out" / "sub" / "path.csv"
    write_relation(target, rows, EDGE, symbols)
    assert target.read_text() == expected_text(TINY / "data_5.txt")


def test_write_empty_relation(tmp_path: Path) -> None:
    target = tmp_path / "empty.csv"
    write_relation(target, np.empty((0, 2), dtype=np.uint32), EDGE, SymbolTable())
    assert target.read_bytes() == b""


def test_sort_rows_three_columns_with_symbols() -> None:
    relation = rel("r", "symbol", "number", "unsigned")
    symbols = SymbolTable()
    rows = encode_rows([("b", 1, 2), ("a", 5, 0), ("b", -1, 9), ("a", 5, 1)], relation, symbols, "<test>")
    assert to_numpy(rows, relation, symbols).tolist() == [["a", 5, 0], ["a", 5, 1], ["b", -1, 9], ["b", 1, 2]]
    assert sort_rows(rows, relation, symbols).flags.c_contiguous


def test_to_numpy_numeric_is_int64_and_sorted() -> None:
    relation = rel("r", "number", "unsigned")
    symbols = SymbolTable()
    rows = encode_rows(np.array([[3, 4294967295], [-3, 1]], dtype=np.int64), relation, symbols, "<test>")
    result = to_numpy(rows, relation, symbols)
    assert result.dtype == np.int64
    assert result.tolist() == [[-3, 1], [3, 4294967295]]


def test_to_pandas_columns_and_dtypes() -> None:
    relation = rel("r", "symbol", "number", "unsigned")
    symbols = SymbolTable()
    rows = encode_rows([("y", -1, 7), ("x", 2, 8)], relation, symbols, "<test>")
    frame = to_pandas(rows, relation, symbols)
    assert list(frame.columns) == ["a", "b", "c"]
    assert [str(t) for t in frame.dtypes] == ["object", "int32", "uint32"]
    assert frame.values.tolist() == [["x", 2, 8], ["y", -1, 7]]


def test_large_relation_write_is_sorted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = np.unique(rng.integers(-(2**31), 2**31, size=(200_000, 2)), axis=0)
    symbols = SymbolTable()
    rows = encode_rows(values[rng.permutation(len(values))], EDGE, symbols, "<test>")
    target = tmp_path / "big.csv"
    write_relation(target, rows, EDGE, symbols)
    back = pd.read_csv(target, sep="\t", header=None).to_numpy()
    np.testing.assert_array_equal(back, values)  # np.unique sorted them lexicographically


# ----------------------------------------------------------------------------- Python facts


def test_encode_rows_accepts_frames_arrays_and_tuples() -> None:
    relation = rel("r", "symbol", "number")
    symbols = SymbolTable()
    frame = pd.DataFrame({"s": ["a", "b"], "n": [1, -2]})
    from_frame = encode_rows(frame, relation, symbols, "<test>")
    from_tuples = encode_rows([("a", 1), ("b", -2)], relation, symbols, "<test>")
    from_strings = encode_rows(np.array([("a", 1), ("b", -2)]), relation, symbols, "<test>")  # dtype <U
    np.testing.assert_array_equal(from_frame, from_tuples)
    np.testing.assert_array_equal(from_frame, from_strings)
    assert all(type(s) is str for s in symbols.strings)


def test_encode_rows_one_column_and_nullary() -> None:
    symbols = SymbolTable()
    assert decode(encode_rows(np.array([5, -5]), rel("r", "number"), symbols, "<t>"), "number").tolist() == [[5], [-5]]
    assert encode_rows([()], rel("flag"), symbols, "<t>").shape == (1, 0)
    assert encode_rows([], rel("flag"), symbols, "<t>").shape == (0, 0)
    assert encode_rows([], EDGE, symbols, "<t>").shape == (0, 2)


@pytest.mark.parametrize(
    "data, types, where, message",
    [
        (np.array([[1, 2], [3, 2**31]]), ("number", "number"), "<facts>:2:2", "2147483648 does not fit in a 32-bit number"),
        (np.array([[1], [-1]]), ("unsigned",), "<facts>:2:1", "-1 is negative"),
        (np.array([[2**32]], dtype=np.uint64), ("unsigned",), "<facts>:1:1", "does not fit in a 32-bit unsigned"),
        ([(1, 2), (1, 2, 3)], ("number", "number"), "<facts>:2:1", "expected 2 values for edge(a:number, b:number), found 3"),
        ([("a", 1.5)], ("symbol", "number"), "<facts>:1:2", "expected an integer for column b (number), found 1.5"),
        ([(True,)], ("number",), "<facts>:1:1", "found True"),
        ([(1, "x")], ("number", "number"), "<facts>:1:2", "found 'x'"),
        ([(1,)], ("symbol",), "<facts>:1:1", "expected a string for column a (symbol), found 1"),
        (pd.DataFrame({"a": [1]}), ("number", "number"), "<facts>:1:1", "expected 2 columns"),
        (np.array([[1.0, 2.0]]), ("number", "number"), "<facts>:1:1", "found 1.0"),
    ],
)
def test_encode_rows_errors(data: object, types: tuple[str, ...], where: str, message: str) -> None:
    symbols = SymbolTable()
    with pytest.raises(DatalogError) as info:
        encode_rows(data, rel("edge", *types), symbols, "<facts>")
    assert str(info.value).startswith(f"{where}: error: ")
    assert message in info.value.message
    assert len(symbols) == 0


# ----------------------------------------------------------------------------- reading byte ranges


def decoded(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> list[tuple[object, ...]]:
    return list(zip(*(c.tolist() for c in decode_columns(rows, relation, symbols))))


def read_parts(path: Path, relation: ir.Relation, n_parts: int, fmt: FactFormat | str = "\t") -> list[tuple[object, ...]]:
    """Every part read with its own table, decoded and concatenated in part order."""
    lines: list[tuple[object, ...]] = []
    for part in range(n_parts):
        symbols = SymbolTable()
        rows = read_facts_range(path, relation, symbols, fmt, part=part, n_parts=n_parts)
        assert rows.dtype == np.uint32 and rows.flags.c_contiguous and rows.shape[1] == relation.arity
        lines += decoded(rows, relation, symbols)
    return lines


FIELD_TEXT = st.text(st.sampled_from('ab é\ufeff"x,;'), max_size=4)  # a BOM is text past the file's start
FIELDS = {
    "number": st.integers(-(2**31), 2**31 - 1).map(str),
    "unsigned": st.integers(0, 2**32 - 1).map(str),
    "symbol": FIELD_TEXT,
}


@st.composite
def fact_files(draw: st.DrawFn) -> tuple[tuple[str, ...], bytes]:
    """Random types and file content: mixed line ends, empty lines, maybe a BOM, maybe no final break,
    maybe one bad field (a number column given text)."""
    types = tuple(draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3)))
    rows = draw(st.lists(st.tuples(*(FIELDS[t] for t in types)), max_size=12))
    lines = ["\t".join(r) for r in rows]
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(draw(st.integers(0, len(lines))), "")
    if lines and draw(st.booleans()):
        lines[draw(st.integers(0, len(lines) - 1))] = "\t".join(["x"] * len(types))
    ends = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines), max_size=len(lines)))
    text = "".join(line + end for line, end in zip(lines, ends))
    if text and draw(st.booleans()):
        text = text.removesuffix(ends[-1])
    return types, ("\ufeff" * draw(st.booleans()) + text).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=fact_files(), n_parts=st.integers(1, 5))
def test_parts_together_read_the_whole_file(tmp_path: Path, case: tuple[tuple[str, ...], bytes], n_parts: int) -> None:
    types, content = case
    relation = rel("r", *types)
    path = write_file(tmp_path, content)
    symbols = SymbolTable()
    try:
        whole = decoded(read_facts(path, relation, symbols), relation, symbols)
    except DatalogError as e:
        with pytest.raises(DatalogError) as info:
            read_parts(path, relation, n_parts)
        assert (str(info.value), info.value.pos) == (str(e), e.pos)
        return
    assert read_parts(path, relation, n_parts) == whole


@settings(max_examples=400, deadline=None)
@given(
    case=fact_files(),
    delimiter=st.sampled_from(["\t", ";", "::", " "]),
    extra=st.booleans(),
    invalid=st.booleans(),
)
def test_kernel_reader_is_the_reference_reader(
    case: tuple[tuple[str, ...], bytes], delimiter: str, extra: bool, invalid: bool
) -> None:
    """The kernel's reading of unquoted numbers and symbols is the reference reader's, whatever
    the text (line ends, empty lines, BOM, multi-byte delimiters, fields beyond those read, a
    column map, bytes that are no UTF-8): the same rows and texts where the reference reads the
    file, and no fast answer where it reports an error (None: the reference then names it)."""
    types, content = case
    content = content.replace(b"\t", delimiter.encode())
    if invalid and content:
        content = content[: len(content) // 2] + b"\xff" + content[len(content) // 2 :]
    relation = rel("r", *types)
    fmt = FactFormat(delimiter, columns=tuple(range(1, len(types) + 1)) if extra else None)
    if extra:  # the file's first field is skipped: each line gets one in front
        content = b"\n".join(b"s" + delimiter.encode() + line if line.strip(b"\r") else line for line in content.split(b"\n"))
    fast_symbols, slow_symbols = SymbolTable(), SymbolTable()
    fast = _read_fast(content, relation, fast_symbols, fmt)
    try:
        slow = _read_slow(content, "f", relation, slow_symbols, fmt)
    except DatalogError:
        assert fast is None
        return
    assert fast is not None, "the kernel left a file the reference reads to the slow path"
    assert decoded(fast, relation, fast_symbols) == decoded(slow, relation, slow_symbols)


@pytest.mark.parametrize("n_parts", range(1, 8))
@pytest.mark.parametrize(
    "content",
    [
        "1\t2\r\n3\t4\r\n5\t6\r\n",  # every cut point, \r\n pairs split among them
        "1\t2\r\n3\t4\n\n5\t6",
        "\r\n\r\n1\t2",
        "1\t2",
        "",
    ],
)
def test_ranges_split_line_breaks_cleanly(tmp_path: Path, content: str, n_parts: int) -> None:
    path = write_file(tmp_path, content)
    assert read_parts(path, EDGE, n_parts) == decoded(read_facts(path, EDGE, SymbolTable()), EDGE, SymbolTable())


@pytest.mark.parametrize(
    "content, starts",
    [
        (b"a\r\nb\rc\n\nd", [0, 3, 3, 3, 7, 7, 7, 7, 8, 9]),  # a cut inside \r\n goes past the pair; a lone \r is text
        (b"x" * 4095 + b"\r\nz", {1: 4097, 4095: 4097, 4096: 4097, 4097: 4097}),  # \r\n across a read block
        (b"x" * 10_000 + b"\ny", {1: 10_001, 10_001: 10_001}),  # a line longer than a block
        (b"x\r", {1: 2}),
    ],
)
def test_line_start_is_the_first_line_at_or_after_an_offset(
    tmp_path: Path, content: bytes, starts: list[int] | dict[int, int]
) -> None:
    expected = dict(enumerate(starts)) if isinstance(starts, list) else starts
    with write_file(tmp_path, content).open("rb") as f:
        assert {k: _line_start(f, k, len(content)) for k in expected} == expected


def test_part_reads_its_share_of_a_large_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_file(tmp_path, "".join(f"{i % 10}\t{-i}\r\n" for i in range(300_000)))
    size = path.stat().st_size
    whole = read_facts(path, EDGE, SymbolTable())
    read: list[int] = []
    real_open = Path.open

    def counting_open(self: Path, *args: object, **kwargs: object) -> object:
        f = real_open(self, *args, **kwargs)  # type: ignore[call-overload]
        real_read = f.read
        f.read = lambda n=-1: read.append(len(data := real_read(n))) or data
        return f

    monkeypatch.setattr(Path, "open", counting_open)
    parts = [read_facts_range(path, EDGE, SymbolTable(), part=k, n_parts=7) for k in range(7)]
    assert size < sum(read) <= size + 7 * 2 * ((1 << 12) + 1)  # the ranges, a block per boundary found
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_error_in_a_later_part_names_the_files_line(tmp_path: Path) -> None:
    lines = [f"{i:04d}\t{i:010d}\n" for i in range(3000)]  # 16 bytes each: parts of 1000 lines
    lines[1500] = "0007\t2147483648\n"  # part 1 of 0..2
    lines[2500] = "0007\t000000000x\n"  # part 2: its error is still the file's first bad line
    path = write_file(tmp_path, "".join(lines))
    with pytest.raises(DatalogError) as whole:
        read_facts(path, EDGE, SymbolTable())
    assert str(whole.value).startswith(f"{path}:1501:6: error: 2147483648 does not fit")
    assert len(read_facts_range(path, EDGE, SymbolTable(), part=0, n_parts=3)) == 1000
    for part in (1, 2):
        symbols = SymbolTable()
        with pytest.raises(DatalogError) as info:
            read_facts_range(path, EDGE, symbols, part=part, n_parts=3)
        assert (str(info.value), info.value.pos) == (str(whole.value), whole.value.pos)
        assert len(symbols) == 0


def test_error_in_a_symbol_part_is_the_whole_files(tmp_path: Path) -> None:
    relation = rel("s", "symbol", "number")
    path = write_file(tmp_path, "a\t1\r\nb\t2\r\n\xff\t3\r\n".encode("latin-1"))
    with pytest.raises(DatalogError) as whole:
        read_facts(path, relation, SymbolTable())
    with pytest.raises(DatalogError) as info:
        read_facts_range(path, relation, SymbolTable(), part=2, n_parts=3)
    assert (
        (str(info.value), info.value.pos)
        == (str(whole.value), whole.value.pos)
        == (
            f"{path}:3:1: error: invalid UTF-8 byte 0xff",
            ir.Pos(str(path), 3, 1),
        )
    )


@pytest.mark.parametrize("content, holds", NULLARY_FILES)
def test_nullary_relation_is_answered_by_part_zero(tmp_path: Path, content: str, holds: bool) -> None:
    path = write_file(tmp_path, content)
    parts = [read_facts_range(path, rel("flag"), SymbolTable(), part=k, n_parts=3) for k in range(3)]
    assert [p.shape for p in parts] == [(int(holds), 0), (0, 0), (0, 0)]


@pytest.mark.parametrize("part", range(3))
def test_missing_file_in_every_part(tmp_path: Path, part: int) -> None:
    where = ir.Pos("prog.dl", 3, 1)
    with pytest.raises(DatalogError, match="does not exist") as info:
        read_facts_range(tmp_path / "edge.facts", EDGE, SymbolTable(), pos=where, part=part, n_parts=3)
    assert info.value.pos == where


# ----------------------------------------------------------------------------- Soufflé's reader parameters
# Every expectation below is what Soufflé 2.5's binary reads from the same bytes (checked).


def read_all(
    tmp_path: Path, content: bytes | str, types: tuple[str, ...], fmt: FactFormat | str = "\t"
) -> set[tuple[object, ...]]:
    """The file's tuples through the fast path where it applies and through the reference
    reader alone, which must agree; then through 1-3 byte ranges."""
    data = content.encode() if isinstance(content, str) else content
    relation = rel("r", *types)
    path = write_file(tmp_path, data)
    symbols = SymbolTable()
    tuples = decoded(read_facts(path, relation, symbols, fmt), relation, symbols)
    if not data.startswith(b"\x1f\x8b"):
        slow_symbols = SymbolTable()
        fmt_ = FactFormat(fmt) if isinstance(fmt, str) else fmt
        text = data.split(b"\n", 1)[1] if fmt_.headers and b"\n" in data else (b"" if fmt_.headers else data)
        assert decoded(_read_slow(text, "f", relation, slow_symbols, fmt_), relation, slow_symbols) == tuples
    for n_parts in (2, 3):
        assert read_parts(path, relation, n_parts, fmt) == tuples
    return set(tuples)


@pytest.mark.parametrize(
    "field, value",
    [(" 5", 5), ("+5", 5), ("\v5", 5), ("\f-3", -3), ("007", 7), ("-0", 0), ("-2147483648", -(2**31))],
)
def test_number_fields_as_stoi_reads_them(tmp_path: Path, field: str, value: int) -> None:
    assert read_all(tmp_path, f"{field}\t1\n", ("number", "number")) == {(value, 1)}


@pytest.mark.parametrize(
    "field, value",
    [
        ("0x10", 16),
        ("0xFFFFFFFF", 2**32 - 1),
        ("0xAbC", 2748),
        ("0b1101", 13),
        ("0b" + "0" * 70 + "1", 1),
        ("0b 1", 1),  # after 0b, std::stoul's own rules: spaces and a sign
        ("0b+1", 1),
        ("0b-0", 0),
        (" +5", 5),
        (" -0", 0),
        ("4294967295", 2**32 - 1),
    ],
)
def test_unsigned_fields_in_decimal_hex_and_binary(tmp_path: Path, field: str, value: int) -> None:
    assert read_all(tmp_path, f"{field}\tx\n", ("unsigned", "symbol")) == {(value, "x")}
    assert read_all(tmp_path, f"{field}\t7\n", ("unsigned", "unsigned")) == {(value, 7)}


def test_semantic_load9_hex_and_binary_files(tmp_path: Path) -> None:
    """Soufflé's own test: unsigned columns in hex and binary, comma-separated."""
    hex_rows = read_all(tmp_path, "0xFFFFFFFF,0xFFFFFFFE,0xFFFFFFFD\n0x1,0x0,0x1\n", ("unsigned",) * 3, ",")
    assert hex_rows == {(4294967295, 4294967294, 4294967293), (1, 0, 1)}
    ones = "1" * 32
    binary = f"0b1101,0b000,0b1111\n0b{ones},0b{ones[:-1]}0,0b{ones[:-2]}01\n"
    assert read_all(tmp_path, binary, ("unsigned",) * 3, ",") == {(13, 0, 15), (4294967295, 4294967294, 4294967293)}


@pytest.mark.parametrize(
    "content, types, fmt, want",
    [
        ("1g2\n3g4\n5g6\n", ("number",), "g", {(1,), (3,), (5,)}),  # syntactic-output_directive1
        ("a\tb\tc\nd\te\tf\n", ("symbol", "symbol"), "\t", {("a", "b"), ("d", "e")}),
        ("1\t2\t\n", ("number", "number"), "\t", {(1, 2)}),
        ("1\t2\tx\ty\n3\t4\n", ("number", "unsigned"), "\t", {(1, 2), (3, 4)}),
        ('a b\tc\t"\n', ("symbol", "symbol"), "\t", {("a b", "c")}),  # what follows is never parsed
    ],
)
def test_fields_after_those_read_are_ignored(
    tmp_path: Path, content: str, types: tuple[str, ...], fmt: str, want: set[tuple[object, ...]]
) -> None:
    assert read_all(tmp_path, content, types, fmt) == want


def test_columns_pick_the_fields(tmp_path: Path) -> None:
    """``columns="2:0"``: attribute 0 from field 2, attribute 1 from field 0; the rest unread."""
    fmt = FactFormat(",", columns=(2, 0))
    assert read_all(tmp_path, "s,t,1\nu,v,2,9\n", ("number", "symbol"), fmt) == {(1, "s"), (2, "u")}
    assert read_all(tmp_path, "zz,7,[\n", ("number",), FactFormat(",", columns=(1,))) == {(7,)}


@pytest.mark.parametrize("n_lines", [0, 1, 3])
def test_headers_skip_the_first_line(tmp_path: Path, n_lines: int) -> None:
    """semantic-load7 and 8: the header is any first line; the lines after it are read."""
    body = "".join(f"{i}, {i + 1}\r\n" for i in range(n_lines))
    fmt = FactFormat(", ", headers=True)
    assert read_all(tmp_path, "x\ty\n" + body, ("number", "number"), fmt) == {(i, i + 1) for i in range(n_lines)}
    assert read_all(tmp_path, "not a, header", ("number", "number"), fmt) == set()


@pytest.mark.parametrize("content, holds", [("h\n", False), ("h", False), ("h\n\n", True), ("h\nx\n", True), ("", False)])
def test_a_nullary_relation_with_a_header_holds_iff_a_line_follows(tmp_path: Path, content: str, holds: bool) -> None:
    path = write_file(tmp_path, content)
    assert read_facts(path, rel("flag"), SymbolTable(), FactFormat(headers=True)).shape == (int(holds), 0)


RFC4180 = 'a"b,c\n"x""y",z\n"e",\n,\n"l1\r\nl2","k"\r\n"u,v",w,extra\n"",""\n'


@pytest.mark.parametrize(
    "content, types, want",
    [
        (RFC4180, ("symbol", "symbol"), {('a"b', "c"), ('x"y', "z"), ("e", ""), ("", ""), ("l1\r\nl2", "k"), ("u,v", "w")}),
        ('"foo\nbar",nothing,"one\ntwo"\n', ("symbol",) * 3, {("foo\nbar", "nothing", "one\ntwo")}),  # semantic-load11
        ('FOO,"Line1\n\nLine3.\n"\n', ("symbol", "symbol"), {("FOO", "Line1\n\nLine3.\n")}),  # semantic-load12
        ('"foo""bar"""\n', ("symbol",), {('foo"bar"',)}),  # semantic-load13
        ('"1",0x2,"+3"\n4,"0b1",5\n', ("number", "unsigned", "number"), {(1, 2, 3), (4, 1, 5)}),
        ('"a\tb",c\n', ("symbol", "symbol"), {("a\tb", "c")}),
        ("1,2\n3,4\n", ("number", "number"), {(1, 2), (3, 4)}),  # no quote: the plain reader
        ('a,"m\nn"\n', ("symbol",), {("a",), ('n"',)}),  # a field never read opens no quote
    ],
)
def test_rfc4180_fields(tmp_path: Path, content: str, types: tuple[str, ...], want: set[tuple[object, ...]]) -> None:
    assert read_all(tmp_path, content, types, FactFormat(",", rfc4180=True)) == want


def test_rfc4180_quotes_across_many_lines_take_the_fast_path(tmp_path: Path) -> None:
    """Well-formed quotes (pyarrow's reading is then Soufflé's) with a field too many per line."""
    lines = [f'{i},"s{i % 7}\n""q"", {i}",0x{i:x},extra\n' for i in range(5000)]
    content = "".join(lines).encode()
    relation = rel("r", "number", "symbol", "unsigned")
    fmt = FactFormat(",", rfc4180=True)
    symbols = SymbolTable()
    fast = _read_fast(content, relation, symbols, fmt)
    assert fast is not None
    assert decoded(fast, relation, symbols) == [(i, f's{i % 7}\n"q", {i}', i) for i in range(5000)]
    assert read_all(tmp_path, content, ("number", "symbol", "unsigned"), fmt) == set(decoded(fast, relation, symbols))


@pytest.mark.parametrize(
    "content, line, col, message",
    [
        ('a,"b\nc\n', 1, 3, "the quoted field is never closed"),
        ('a,"b"c\n', 1, 6, "expected comma or the end of the line after the closing quote"),
        ('"a" ,b\n', 1, 4, "expected comma or the end of the line"),
        ('x,y\n"a\nb"\n', 3, 3, "expected 2 comma-separated fields for edge(a:symbol, b:symbol), found 1"),
    ],
)
def test_rfc4180_errors(tmp_path: Path, content: str, line: int, col: int, message: str) -> None:
    path = write_file(tmp_path, content)
    with pytest.raises(DatalogError) as info:
        read_facts(path, rel("edge", "symbol", "symbol"), SymbolTable(), FactFormat(",", rfc4180=True))
    assert info.value.pos == ir.Pos(str(path), line, col)
    assert message in info.value.message


@pytest.mark.parametrize(
    "content, types, want",
    [
        ("[a,b],c\n[p,q]z,r\n", ("symbol", "symbol"), {("[a,b]", "c"), ("[p,q]", "")}),  # what follows ] is skipped
        ("5,[1,2]\n", ("number", "symbol"), {(5, "[1,2]")}),
        ("[[x],[y]],[]\n", ("symbol", "symbol"), {("[[x],[y]]", "[]")}),
    ],
)
def test_brackets_group_fields_with_a_comma_delimiter(
    tmp_path: Path, content: str, types: tuple[str, ...], want: set[tuple[object, ...]]
) -> None:
    """Soufflé reads records ``[a, b]`` so, and does it for symbols too; a tab delimiter does not."""
    assert read_all(tmp_path, content, types, ",") == want
    assert read_all(tmp_path, "[a\tb]\n", ("symbol", "symbol")) == {("[a", "b]")}


@pytest.mark.parametrize("content, col", [("a]b,c\n", 1), ("x,n]\n", 3), ("x,[s\n", 3)])
def test_an_unbalanced_bracket_is_an_error(tmp_path: Path, content: str, col: int) -> None:
    path = write_file(tmp_path, content)
    with pytest.raises(DatalogError) as info:
        read_facts(path, rel("edge", "symbol", "symbol"), SymbolTable(), ",")
    assert info.value.pos == ir.Pos(str(path), 1, col)
    assert "unbalanced bracket" in info.value.message


def test_a_lone_carriage_return_is_text(tmp_path: Path) -> None:
    assert read_all(tmp_path, "a\rb\tc\r\nd\te\r", ("symbol", "symbol")) == {("a\rb", "c"), ("d", "e")}


def gzipped(text: bytes) -> bytes:
    return gzip.compress(text, mtime=0)


@pytest.mark.parametrize(
    "data",
    [
        gzipped(b"1\t2\n1\t3\n2\t4\n"),  # semantic-load6
        gzipped(b"1\t2\n") + gzipped(b"1\t3\n2\t4\n"),  # members one after another
        gzipped(b"1\t2\n1\t3\n2\t4\n") + b"not gzip\n",  # zlib ignores what follows
    ],
)
def test_gzip_fact_files_are_read_decompressed(tmp_path: Path, data: bytes) -> None:
    assert read_all(tmp_path, data, ("number", "number")) == {(1, 2), (1, 3), (2, 4)}
    assert read_parts(write_file(tmp_path, data), EDGE, 3) == read_parts(write_file(tmp_path, data), EDGE, 1)


def test_gzip_with_headers_and_rfc4180(tmp_path: Path) -> None:
    data = gzipped(b'x,y\n"a,b",c\n')
    assert read_all(tmp_path, data, ("symbol", "symbol"), FactFormat(",", headers=True, rfc4180=True)) == {("a,b", "c")}


@pytest.mark.parametrize(
    "data, message",
    [
        (gzipped(b"1\t2\n3\t4\n")[:-6], "the gzip data ends early"),
        (gzipped(b"1\t2\n")[:-8] + bytes(4) + gzipped(b"1\t2\n")[-4:], "corrupt gzip data: "),  # its checksum
        (b"\x1f\x8bnot really", "corrupt gzip data"),
    ],
)
def test_corrupt_gzip_is_an_error_at_the_files_start(tmp_path: Path, data: bytes, message: str) -> None:
    """Soufflé reads what zlib gives before the damage and says nothing."""
    path = write_file(tmp_path, data)
    with pytest.raises(DatalogError) as info:
        read_facts(path, EDGE, SymbolTable())
    assert info.value.pos == ir.Pos(str(path), 1, 1)
    assert message in info.value.message


def test_standard_input_text(tmp_path: Path) -> None:
    symbols = SymbolTable()
    rows = read_text(b"a\t1\nb\t2\n", "<stdin>", rel("r", "symbol", "number"), symbols)
    assert decoded(rows, rel("r", "symbol", "number"), symbols) == [("a", 1), ("b", 2)]
    with pytest.raises(DatalogError) as info:
        read_text(b"a\tx\n", "<stdin>", rel("r", "symbol", "number"), SymbolTable())
    assert info.value.pos == ir.Pos("<stdin>", 1, 3)


# ----------------------------------------------------------------------------- one table for all workers


def test_sorted_union_ids_are_text_order_and_remap_rows(tmp_path: Path) -> None:
    relation = rel("s", "symbol", "number", "symbol")
    path = write_file(tmp_path, "zeta\t1\ta\nb\t2\t\u00e9\n\nB\t3\tzeta\n\t4\tb\n")
    tables = [SymbolTable() for _ in range(3)]
    parts = [read_facts_range(path, relation, t, part=k, n_parts=3) for k, t in enumerate(tables)]
    union, maps = SymbolTable.sorted_union_maps([*tables, ["extra"]])
    assert union.strings == sorted({"zeta", "a", "b", "\u00e9", "B", "", "extra"})
    assert union.text_rank().tolist() == list(range(len(union)))
    merged = []
    for rows, table, m in zip(parts, tables, maps):
        assert m.dtype == np.uint32 and union.lookup(m).tolist() == table.strings
        rows = rows.copy()
        rows[:, [0, 2]] = m[rows[:, [0, 2]]]
        merged.append(rows)
    rows = np.concatenate(merged)
    symbols = SymbolTable()
    assert decoded(rows, relation, union) == decoded(read_facts(path, relation, symbols), relation, symbols)


def test_sorted_union_of_nothing() -> None:
    assert len(SymbolTable.sorted_union([])) == 0
    union, maps = SymbolTable.sorted_union_maps([[], SymbolTable()])
    assert len(union) == 0 and [m.tolist() for m in maps] == [[], []]


# ----------------------------------------------------------------------------- formatting


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize(
    "types, data, delimiter",
    [
        (("number", "unsigned"), [(-5, 7), (3, 4294967295), (-5, 0)], "\t"),  # the CPU kernel
        (("symbol", "number"), [("b", 1), ("a", -2)], ","),  # pyarrow
        (("symbol", "symbol"), [("x,y", "q"), ('"', "\u00e9")], ","),  # symbols pyarrow refuses
        (("number",), [(1,), (-1,)], "::"),  # multi-byte delimiter
        ((), [()], "\t"),
        ((), [], "\t"),
        (("number", "number"), [], "\t"),
    ],
)
def test_format_relation_is_what_write_relation_writes(
    tmp_path: Path, types: tuple[str, ...], data: list[tuple[object, ...]], delimiter: str, kernels: bool
) -> None:
    relation = rel("r", *types)
    symbols = SymbolTable()
    rows = encode_rows(data, relation, symbols, "<test>")
    target = tmp_path / "out.csv"
    backend = KERNELS if kernels else ARRAY_API
    write_relation(target, rows, relation, symbols, delimiter, backend=backend)
    formatted = format_relation(rows, relation, symbols, delimiter, backend=backend)
    assert formatted == target.read_bytes()
    assert formatted.decode() == roundtrip(rows, relation, symbols, delimiter)


@pytest.mark.parametrize("types", [("number", "unsigned"), ("number", "number", "unsigned"), ("symbol", "number")])
def test_chunked_writing_from_packed_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, types: tuple[str, ...]) -> None:
    """write_outputs formats a chunk at a time straight from the packed rows (PackedRows):
    the same bytes as formatting the host rows at once, and ``written`` hears the running total
    after each chunk, ending at the file's size."""
    from dask_datalog.engine.formats import relation_output
    from dask_datalog.engine.frontend import load_program
    from dask_datalog.engine.storage.hisa import pack
    from dask_datalog.partition.transport import LocalTransport
    from dask_datalog.spmd.shard import Shard
    from dask_datalog.spmd.writer import write_outputs

    monkeypatch.setattr(relation_output, "FORMAT_CHUNK_ROWS", 7)
    decls = ", ".join(f"c{j}:{t}" for j, t in enumerate(types))
    program = load_program(f".decl r({decls})\n.output r\n")
    relation = program.relations["r"]
    symbols = SymbolTable()
    rng = np.random.default_rng(3)
    data = sorted(
        {
            tuple(f"s{v % 5}" if t == "symbol" else int(v) - 50 * (t == "number") for t, v in zip(types, row))
            for row in rng.integers(0, 100, size=(60, len(types)))
        }
    )
    rows = encode_rows(data, relation, symbols, "<test>")
    packed = sets.sort_unique(pack([rows[:, j] for j in range(len(types))], len(rows), np), KERNELS)
    shard = Shard(0, 1, program, symbols, "numpy", {"r": packed}, {})
    heard: list[tuple[str, int]] = []
    write_outputs(LocalTransport(), shard, str(tmp_path), "csv", written=lambda name, n: heard.append((name, n)))
    text = (tmp_path / "r.csv").read_bytes()
    assert text.decode() == roundtrip(rows, relation, symbols)
    totals = [n for _, n in heard]
    assert {name for name, _ in heard} == {"r"} and len(totals) == -(-len(data) // 7)
    assert totals == sorted(totals) and totals[-1] == len(text)


def test_chunks_written_behind_land_in_order_and_errors_on_either_side_reach_the_writer() -> None:
    """Past one chunk the writer writes each chunk on a helper thread while it formats the next:
    every chunk lands at its offset, formatted on the caller's thread (the helper only writes),
    the offsets heard in order; an error while formatting, or while writing, is raised where the
    chunks are written, after the chunks before it."""
    import threading

    from dask_datalog.spmd.writer import _write_behind, _write_in_turn

    formatted: set[str] = set()
    landed: dict[int, bytes] = {}

    def chunks(fail_at: int | None = None) -> Iterator[bytes]:
        for i in range(5):
            formatted.add(threading.current_thread().name)
            if i == fail_at:
                raise AssertionError("not sorted and duplicate-free")
            yield f"chunk {i}\n".encode()

    def write_at(piece: bytes | memoryview, at: int) -> int:
        if bytes(piece) == b"chunk 3\n" and at < 0:
            raise OSError(28, "No space left on device")
        landed[at] = bytes(piece)
        return len(piece)

    for way in (_write_in_turn, _write_behind):
        landed.clear()
        ends = list(way(chunks(), write_at, 100))
        assert ends == [100 + 8 * (i + 1) for i in range(5)]
        assert landed == {100 + 8 * i: f"chunk {i}\n".encode() for i in range(5)}
    assert formatted == {threading.current_thread().name}
    heard: list[int] = []
    with pytest.raises(AssertionError, match="not sorted"):
        heard.extend(_write_behind(chunks(fail_at=3), write_at, 0))
    assert heard == [8, 16]  # the third chunk is written, but heard only once the fourth is made
    with pytest.raises(OSError, match="No space left"):
        list(_write_behind(chunks(), write_at, -40))


@pytest.mark.parametrize("width", [1, 2])
def test_packed_rows_out_of_order_are_an_engine_bug_not_sorted_over(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    """The engine hands every relation sorted and duplicate-free; writing checks that on the
    packed words, chunk by chunk (the boundaries included), and crashes on a violation rather
    than writing duplicates or re-sorting quietly."""
    from dask_datalog.engine.formats import relation_output
    from dask_datalog.engine.formats.relation_output import PackedRows

    monkeypatch.setattr(relation_output, "FORMAT_CHUNK_ROWS", 4)
    arity = 2 * width
    good = np.arange(40, dtype=np.uint64).reshape(-1, width) * 3
    assert PackedRows(good, arity, KERNELS).in_order()
    assert sets.is_sorted_unique(good, np) and sets.is_sorted_unique(good[:1], np)
    for broken in (4, 5, 9):  # a duplicate at a chunk's boundary, one inside a chunk, a step down
        rows = good.copy()
        rows[broken] = rows[broken - 1] - (broken == 9)
        assert not sets.is_sorted_unique(rows, np)
        with pytest.raises(AssertionError, match="not sorted and duplicate-free"):
            PackedRows(rows, arity, KERNELS).in_order()


# ----------------------------------------------------------------------------- Soufflé's .input/.output parameters in a run
# A program's I/O as Soufflé 2.5 does it, on 1-3 shards (threads running the workers' code):
# the expected files are what Soufflé's binary writes for the same program and facts, up to
# the order of the lines (it orders symbols by first appearance, this engine by text).

IO_PROGRAM = """
.decl A(x:number, y:symbol)
.input A(columns="2:0", delimiter=",")
.decl H(x:number, y:number)
.input H(headers=true, delimiter=", ")
.decl Q(x:symbol, y:symbol)
.input Q(rfc4180=true)
.decl U(x:unsigned, y:unsigned)
.input U(delimiter=",")
.output A(name="Zed", attributeNames="p|q", headers=true)
.output H(compress=true)
.output Q(rfc4180=true, headers=true)
.output U(delimiter=";", headers=true)
.output U(IO=stdout)
.output H(IO=stdoutprintsize)
"""
IO_FACTS = {
    "A.facts": b"s,t,1\nu,v,2,9\n",
    "H.facts": b"x\ty\n1, 2\n1, 3\n2, 4",
    "Q.facts": RFC4180.encode(),
    "U.facts": gzipped(b"0xFFFFFFFF,0b101\n 7,+8\r\n0x0,0b0\n"),
}
IO_FILES = {
    "Zed.csv": b"p|q\n1\ts\n2\tu\n",
    "H.csv.gz": b"1\t2\n1\t3\n2\t4\n",
    "Q.csv": b'x\ty\n"",""\n"a\\""b","c"\n"e",""\n"l1\r\nl2","k"\n"u,v","w"\n"x\\""y","z"\n',
    "U.csv": b"x;y\n0;0\n7;8\n4294967295;5\n",
}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_runs_inputs_and_outputs_take_souffles_parameters(tmp_path: Path, n: int) -> None:
    from dask_datalog.engine.backend import get_backend
    from dask_datalog.engine.frontend import load_program
    from dask_datalog.spmd.inputs import Inputs
    from dask_datalog.spmd.shard import evaluate_shard
    from dask_datalog.spmd.threads import run_in_threads
    from dask_datalog.spmd.writer import print_outputs, write_outputs

    program = load_program(IO_PROGRAM)
    for name, data in IO_FACTS.items():
        write_file(tmp_path, data, name)
    texts: list[dict[int, bytes]] = [{} for _ in range(n)]

    def shard(transport: Any) -> int:
        done = evaluate_shard(transport, program, get_backend("numpy"), Inputs(tmp_path), replicate_below=0)
        texts[transport.rank] = write_outputs(transport, done, str(tmp_path / "out"), "csv")
        return int(done.stats["local_sizes"]["H"])

    sizes = run_in_threads(n, shard)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(IO_FILES)
    for name, want in IO_FILES.items():
        data = (tmp_path / "out" / name).read_bytes()
        assert (gzip.decompress(data) if name.endswith(".gz") else data) == want, name
    printed = io.StringIO()
    joined = {index: b"".join(t.get(index, b"") for t in texts) for index in texts[0]}
    print_outputs(printed, program, str(tmp_path / "out"), joined, lambda name: sum(sizes))
    assert printed.getvalue() == "H\t3\n---------------\nU\n===============\n0\t0\n7\t8\n4294967295\t5\n===============\n"


LIMITSIZE_PROGRAM = """
.decl E(x:number, y:number)
.input E
.decl P(x:number, y:number)
.input P
P(x,z) :- P(x,y), E(y,z).
.limitsize P(n=5)
.decl Q(x:number)
Q(1).
Q(x+1) :- Q(x), x < 50.
.limitsize Q(n=0)
.decl A(x:number)
.decl B(x:number)
A(1).
B(x+1) :- A(x), x < 100.
A(x+1) :- B(x), x < 100.
.limitsize A(n=4)
.limitsize B(n=30)
.decl C(x:number)
C(x) :- E(x, _).
C(y) :- C(x), E(x, y).
.limitsize C(n=2)
.decl N(x:number)
N(x) :- E(x, _).
.limitsize N(n=1)
.decl L(x:number)
L(1).
L(x+1) :- L(x), x < 1000.
.limitsize L(n=47)
"""


@pytest.mark.parametrize("n", [1, 2, 3])
def test_limitsize_stops_where_souffle_stops(tmp_path: Path, n: int) -> None:
    """Soufflé 2.5 ends a recursive stratum after the iteration that brings a limited relation
    to its limit or past it (so the count may pass it: P, C), with the tuples of that
    iteration; its non-recursive rules run first, alone (Q keeps its fact); a relation outside
    any recursion (N) and the other relations of a stopped recursion (B) are not limited
    beyond that. L is Soufflé's own test (semantic-limitsize). Counts and P's tuples as its
    binary gives them."""
    from dask_datalog.engine.backend import get_backend
    from dask_datalog.engine.frontend import load_program
    from dask_datalog.spmd.inputs import Inputs
    from dask_datalog.spmd.shard import evaluate_shard
    from dask_datalog.spmd.threads import run_in_threads

    program = load_program(LIMITSIZE_PROGRAM)
    write_file(tmp_path, "1\t2\n2\t3\n3\t4\n4\t5\n5\t6\n6\t7\n7\t8\n10\t11\n", "E.facts")
    write_file(tmp_path, "1\t2\n3\t4\n", "P.facts")

    def shard(transport: Any) -> tuple[dict[str, int], list[tuple[object, ...]]]:
        done = evaluate_shard(transport, program, get_backend("numpy"), Inputs(tmp_path), replicate_below=0)
        return dict(done.stats["local_sizes"]), decoded(done.host_rows("P"), program.relations["P"], done.symbols)

    results = run_in_threads(n, shard)
    sizes = {name: sum(local[name] for local, _ in results) for name in "PQABCNL"}
    assert sizes == {"P": 6, "Q": 1, "A": 4, "B": 3, "C": 8, "N": 8, "L": 47}
    assert sorted(t for _, rows in results for t in rows) == [(1, 2), (1, 3), (1, 4), (3, 4), (3, 5), (3, 6)]
