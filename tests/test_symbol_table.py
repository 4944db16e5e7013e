"""The symbol table's bulk operations (the CPU kernels' hash index and sort over NumPy texts,
engine/texts.py) against the per-string semantics they replace, a Python dict and sort:
interning in order of first appearance, text order as C++ compares strings (UTF-8 bytes), and
shards that agree on one table whatever the split."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_datalog.engine import text
from dask_datalog.engine import texts as tx
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.values import SymbolBatch, SymbolTable
from dask_datalog.spmd.inputs import Inputs, agree
from dask_datalog.spmd.threads import run_in_threads

# Strings equal after normalisation but not in bytes, outside the BMP, empty, NUL, and the
# surrogate escapes a substr leaves of a character it cut (bytes 0x80 and 0xff).
SPECIAL = ["", "é", "e\u0301", "Å", "A\u030a", "\U0001f600", "\U00010000", "a\x00b", "\udc80", "\udcff", '"', "z"]
STRINGS = st.one_of(st.text(max_size=6), st.sampled_from(SPECIAL))


def text_key(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def per_string(batches: list[list[str]]) -> tuple[SymbolTable, list[list[int]]]:
    """The reference: a table interned one string at a time."""
    table = SymbolTable()
    return table, [[table.intern(s) for s in batch] for batch in batches]


def as_bytes(strings: list[str]) -> list[bytes]:
    return [text_key(s) for s in strings]


@settings(max_examples=200, deadline=None)
@given(st.lists(STRINGS, max_size=30))
def test_texts_dictionary_and_order_are_a_dict_and_a_sort_of_the_bytes(strings: list[str]) -> None:
    column = tx.of_strings(strings)
    assert tx.blobs(column) == as_bytes(strings) and tx.strings(column) == strings
    first, codes = tx.dictionary(column)
    seen: dict[bytes, int] = {}
    want_codes = [seen.setdefault(b, len(seen)) for b in as_bytes(strings)]
    assert codes.tolist() == want_codes and tx.blobs(column.take(first)) == list(seen)
    assert tx.order(column).tolist() == sorted(range(len(strings)), key=lambda i: (text_key(strings[i]), i))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(STRINGS, max_size=40), max_size=6), st.lists(STRINGS, max_size=20), st.integers(0, 3))
def test_a_text_table_finds_what_it_holds_as_it_grows(groups: list[list[str]], queries: list[str], skip: int) -> None:
    """Appends past the index's capacity (it is made again), finds between them; columns that
    are slices of longer ones (offsets not from 0)."""
    table = tx.Table()
    held: dict[bytes, int] = {}
    for group in groups:
        new = list(dict.fromkeys(b for b in as_bytes(group) if b not in held))
        padded = tx.of_strings(["pad"] * skip + [b.decode("utf-8", "surrogateescape") for b in new])
        table.append(padded.slice(skip))
        held.update((b, len(held)) for b in new)
        asked = tx.of_strings(["x"] * skip + queries + group).slice(skip)
        assert table.find(asked).tolist() == [held.get(b, -1) for b in as_bytes(queries + group)]
    assert tx.blobs(table.texts) == list(held)
    back = pickle.loads(pickle.dumps(table))
    assert back.find(tx.of_strings(queries)).tolist() == [held.get(b, -1) for b in as_bytes(queries)]


def test_a_text_table_of_many_texts_finds_each() -> None:
    rng = np.random.default_rng(5)
    words = sorted({"".join(chr(97 + c) for c in rng.integers(0, 26, size=rng.integers(0, 12))) for _ in range(20000)})
    table = tx.Table()
    for part in np.array_split(np.array(words, dtype=object), 7):
        table.append(tx.of_strings(part.tolist()))
    assert table.find(tx.of_strings(words[::-1])).tolist() == list(range(len(words)))[::-1]
    assert table.find(tx.of_strings(["A", "zzzzzzzzzzzzz"])).tolist() == [-1, -1]
    assert tx.order(table.texts).tolist() == list(range(len(words)))  # sorted by bytes already


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(STRINGS, STRINGS, st.integers(-3, 8), st.integers(-2, 8)), max_size=12))
def test_cat_and_substr_work_on_the_bytes(rows: list[tuple[str, str, int, int]]) -> None:
    """``cat`` and ``substr`` (engine/text.py) against Python's bytes: substr counts bytes, cuts
    characters, and gives "" out of range."""
    lefts, rights = tx.of_strings([r[0] for r in rows]), tx.of_strings(["q"] + [r[1] for r in rows]).slice(1)
    joined = text.concatenate([lefts, rights, lefts])
    assert tx.blobs(joined) == [text_key(a) + text_key(b) + text_key(a) for a, b, _, _ in rows]
    start = np.array([r[2] for r in rows], dtype=np.int64)
    length = np.array([r[3] for r in rows], dtype=np.int64)
    cut, bad = text.substring(lefts, start, length)
    want = [b"" if i < 0 or i > len(text_key(a)) else text_key(a)[i:] if n < 0 else text_key(a)[i : i + n] for a, _, i, n in rows]
    assert tx.blobs(cut) == want
    assert tx.strings(cut) == [b.decode("utf-8", "surrogateescape") for b in want]
    assert bad.tolist() == [i < 0 or i > len(text_key(a)) for a, _, i, _ in rows]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(STRINGS, max_size=12), max_size=5), st.lists(STRINGS, max_size=4))
def test_bulk_interning_is_per_string_interning(batches: list[list[str]], singles: list[str]) -> None:
    # Single strings interned between the batches, as the reference readers and constants do.
    mixed = [part for batch, single in zip(batches, singles + [""] * len(batches)) for part in (batch, [single])]
    want, want_ids = per_string(mixed)
    table = SymbolTable()
    got_ids = []
    for k, part in enumerate(mixed):
        if k % 2:
            got_ids.append([table.intern(s) for s in part])
        else:
            got_ids.append(table.intern_many(np.array(part, dtype=object)).tolist())
    assert got_ids == want_ids
    assert table.strings == want.strings and len(table) == len(want)
    assert all(table.id_of(s) == want.id_of(s) for s in want.strings)
    assert table.lookup(np.arange(len(table))).tolist() == want.strings


@settings(max_examples=150, deadline=None)
@given(st.lists(STRINGS, max_size=4), st.lists(st.lists(st.lists(STRINGS, max_size=8), max_size=3), max_size=4))
def test_batched_columns_get_the_ids_of_interning_them_one_by_one(before: list[str], groups: list[list[list[str]]]) -> None:
    """Columns added to a batch, the table interned into directly between groups of them (as
    the reference readers do): the ids and the table of interning every column as it comes."""
    want, _ = per_string([before])
    table, _ = per_string([before])
    batch = SymbolBatch(table)
    expected, filled = [], []
    for k, group in enumerate(groups):
        for column in group:
            expected.append([want.intern(s) for s in column])
            rows = np.full((len(column), 2), 7, dtype=np.uint32)
            batch.add(tx.of_strings(column), rows, 1)
            filled.append(rows)
        single = f"single {k}"
        assert batch.intern().intern(single) == want.intern(single)
    batch.intern()
    assert [rows[:, 1].tolist() for rows in filled] == expected
    assert all((rows[:, 0] == 7).all() for rows in filled)  # only the column named is filled
    assert table.strings == want.strings


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(STRINGS, max_size=10), min_size=1, max_size=4), st.lists(STRINGS, max_size=8))
def test_union_remap_append_and_order_follow_the_text_order(parts: list[list[str]], made: list[str]) -> None:
    locals_ = [per_string([p])[0] for p in parts]
    union, maps = SymbolTable.sorted_union_maps([*locals_, ["z"]])
    everything = sorted({s for p in parts for s in p} | {"z"}, key=text_key)
    assert union.strings == everything and union.text_ordered
    assert SymbolTable.sorted_union([*locals_, ["z"]]).strings == everything
    for local, mapping in zip(locals_, maps):  # each local id's id in the union
        assert [union.strings[i] for i in mapping.tolist()] == local.strings
    # Strings, given more than once, and nothing map alike.
    again, maps = SymbolTable.sorted_union_maps([[], ["z", "z"], *parts])
    assert again.strings == everything
    assert [m.tolist() for m in maps] == [[], [everything.index("z")] * 2, *([everything.index(s) for s in p] for p in parts)]
    assert union.ids_of(list(reversed(everything))).tolist() == list(range(len(everything)))[::-1]
    with pytest.raises(KeyError):
        union.ids_of(["z", "\U0010ffff never held"])

    new = union.missing(made)
    assert new == sorted(set(made) - set(everything), key=text_key)
    ids = union.append(new)
    assert ids.tolist() == list(range(len(everything), len(everything) + len(new)))
    assert union.ids_of(made).tolist() == [union.strings.index(s) for s in made]
    with pytest.raises(AssertionError):
        union.append(["z"])

    order = sorted(range(len(union)), key=lambda i: text_key(union.strings[i]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    assert union.text_rank().tolist() == rank.tolist()
    mapping, ordered = union.reordered()
    assert ordered.strings == sorted(union.strings, key=text_key) and ordered.text_ordered
    assert [ordered.strings[i] for i in mapping.tolist()] == union.strings
    for needle in ('"', "\x00", "é"):
        assert union.holds_any([needle]) == any(needle in s for s in union.strings)


def test_holds_any_searches_the_texts_added_since_it_answered() -> None:
    table = SymbolTable.sorted_union([["a", "b"]])
    assert not table.holds_any(['"']) and not table.holds_any(["\n", "\r"])
    table.append(['x"y'])
    assert table.holds_any(['"']) and not table.holds_any(["\n", "\r"])
    table.intern("p\rq")
    assert table.holds_any(["\n", "\r"]) and table.holds_any(['"'])
    assert pickle.loads(pickle.dumps(table)).holds_any(["\r"])


@settings(max_examples=40, deadline=None)
@given(st.lists(STRINGS, max_size=12))
def test_a_table_survives_pickling_and_checkpoint_order(strings: list[str]) -> None:
    table, _ = per_string([strings])
    back = pickle.loads(pickle.dumps(table))
    assert back.strings == table.strings and [back.id_of(s) for s in table.strings] == list(range(len(table)))
    restored = SymbolTable.in_order(table.strings, 0)
    assert restored.strings == table.strings and table.ids_of(restored.strings).tolist() == list(range(len(table)))


FILE_STRINGS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\x00"), max_size=5),
    st.sampled_from([s for s in SPECIAL if s not in ("\udc80", "\udcff", "a\x00b")]),
)
PROGRAM = """
.decl r(a: symbol, b: symbol)
.input r
.decl s(a: symbol, n: number)
.output r
"""


def agreed(n: int, fact_dir: Path | None, facts: dict[str, Any]) -> list[tuple[SymbolTable, dict[str, np.ndarray]]]:
    program = load_program(PROGRAM + '.decl c(a: symbol)\nc("const").\n')
    starts = run_in_threads(n, lambda transport: agree(transport, program, Inputs(fact_dir, facts.get(transport.rank, {}))))
    return [(start.symbols, start.inputs) for start in starts]


@pytest.mark.parametrize("n", [1, 3])
@settings(max_examples=20, deadline=None)
@given(rows=st.lists(st.tuples(FILE_STRINGS, FILE_STRINGS), min_size=1, max_size=20), given_rows=st.lists(STRINGS, max_size=6))
def test_shards_agree_on_one_table_in_text_order(n: int, rows: list[tuple[str, str]], given_rows: list[str]) -> None:
    """A fact file read in byte ranges (the fast reader's bulk interning) and rows handed over
    per shard (``encode_rows``): every shard ends with the same table, the sorted union of all
    strings and the program's constants, and its rows decode to the strings it read."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "r.facts").write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
        dealt = {k: {"s": [(s, i) for i, s in enumerate(given_rows) if i % n == k]} for k in range(n)}
        shards = agreed(n, Path(directory), dealt)
    everything = sorted({s for row in rows for s in row} | set(given_rows) | {"const"}, key=text_key)
    for symbols, _ in shards:
        assert symbols.strings == everything and symbols.text_ordered
    read = [tuple(symbols.strings[i] for i in row) for symbols, inputs in shards for row in inputs["r"].tolist()]
    assert sorted(read) == sorted(rows)
    handed = [symbols.strings[row[0]] for symbols, inputs in shards for row in inputs["s"].tolist()]
    assert sorted(handed) == sorted(given_rows)


SOUFFLE = Path(__file__).resolve().parents[2] / "shared" / "peers" / "souffle-2.5" / "bin" / "souffle"
QUOTED = r"""
.type R = [a: symbol, n: number]
.decl s(x: symbol)
s("a\"b"). s("plain"). s(""). s("é,x"). s("q\"\"q"). s("😀").
.decl r(x: symbol, n: number, f: float, rec: R, y: symbol)
r(x, 1, 2.5, [x, 3], substr("é", 0, 1)) :- s(x).
r(x, -4, 0.1, nil, cat(x, "\"")) :- s(x).
.output r(rfc4180=true, delimiter=",")
.output s(rfc4180=true)
.output r(IO=file, filename="plain.csv")
"""


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
def test_symbol_columns_are_written_as_souffle_writes_them(tmp_path: Path) -> None:
    """Gathered by id and quoted by pyarrow's kernels: rfc4180 quotes symbols (a quote as
    ``\\""``) and records but not numbers or floats; the bytes a substr cut out of a
    character are written as they are."""
    import subprocess

    from dask_datalog.cluster.api import Program

    (tmp_path / "sf").mkdir()
    (tmp_path / "prog.dl").write_text(QUOTED)
    subprocess.run([str(SOUFFLE), "-D", "sf", "prog.dl"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    Program(QUOTED).run(backend="numpy").write(tmp_path / "ours")
    for name in ("r.csv", "s.csv", "plain.csv"):
        theirs = (tmp_path / "sf" / name).read_bytes().splitlines()
        ours = (tmp_path / "ours" / name).read_bytes().splitlines()
        assert ours == sorted(ours) and sorted(theirs) == ours, name


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
def test_a_lone_surrogate_escape_in_json_input_is_read_as_souffle_holds_it(tmp_path: Path) -> None:
    """``"\\ud800"`` in JSON is no character; json11 puts its 3-byte form into the string, which
    the table holds as those bytes (it crashed the writer before)."""
    import subprocess

    from dask_datalog.cluster.api import Program

    program = '.decl r(s: symbol)\n.input r(IO=jsonfile, filename="r.json")\n.output r\n.decl n(s: symbol, k: number)\nn(s, strlen(s)) :- r(s).\n.output n\n'
    (tmp_path / "r.json").write_bytes(b'[["\\ud800x"], ["ok"], ["\\u00e9"]]')
    (tmp_path / "prog.dl").write_text(program)
    (tmp_path / "sf").mkdir()
    subprocess.run([str(SOUFFLE), "-F", ".", "-D", "sf", "prog.dl"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    Program(program).run(backend="numpy", fact_dir=tmp_path).write(tmp_path / "ours")
    for name in ("r.csv", "n.csv"):
        theirs = (tmp_path / "sf" / name).read_bytes().splitlines()
        assert sorted(theirs) == (tmp_path / "ours" / name).read_bytes().splitlines(), name
