"""Relation output: encoded rows -> sorted, decoded CSV text, Parquet parts, NumPy or pandas.

Kept apart from ``fact_input`` because output never parses user data: it only orders and renders
rows the engine already holds, for the CLI, the workers' output tasks and the Python API.
Symbols sort by text, not by id; records and ADT values by id, written as Soufflé writes them
(``record_text``); floats as Soufflé writes them (``values.format_float``); a nullary relation
is written as ``()`` (Soufflé's form). With ``rfc4180`` every symbol is quoted the way Soufflé
2.5 writes it (WriteStreamCSV.h): a quote inside becomes ``\""``, which its own reader takes
back as ``\"``, not as the quote; a record is quoted whole, its symbols in doubled quotes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.backend import NUMPY, Backend
from dask_datalog.engine.formats import record_text
from dask_datalog.engine.storage import sets
from dask_datalog.engine.storage.cpu_kernels import KINDS
from dask_datalog.engine.storage.hisa import unpack
from dask_datalog.engine.texts import EMPTY
from dask_datalog.engine.values import SIGN, SymbolTable, decode, format_float

if TYPE_CHECKING:  # pandas costs 0.4 s to import; only DataFrame users pay it
    import pandas as pd

# Encoded (n, arity) uint32 rows: an array, or anything with len, shape, row slices that give
# arrays and np.asarray (PackedRows, which copies from packed rows a slice at a time).
Rows = Any


def host_rows(packed: Any, arity: int, backend: Backend) -> np.ndarray:
    """Packed rows on the backend -> (n, arity) encoded uint32 rows on the host, same order,
    filled a column at a time (no column-sized temporaries on the CPU)."""
    rows = np.empty((packed.shape[0], arity), dtype=np.uint32)
    for j in range(arity):
        rows[:, j] = backend.asnumpy(unpack(packed, j, backend.xp))
    return rows


@dataclass(frozen=True)
class PackedRows:
    """A relation's packed rows as (n, arity) host rows that are copied a slice at a time:
    writing a relation, already in output order, then holds one chunk beside the relation
    rather than a second copy of it. ``np.asarray`` makes the whole copy."""

    packed: Any
    arity: int
    backend: Backend

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.arity

    def __getitem__(self, rows: slice) -> np.ndarray:
        return host_rows(self.packed[rows], self.arity, self.backend)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return host_rows(self.packed, self.arity, self.backend)

    def in_order(self) -> bool:
        """True: the engine keeps every relation sorted and duplicate-free, which in packed
        words (column 0 highest) is output order when symbol ids are in text order. Checked on
        the packed words a chunk at a time; a relation that is not is an engine bug, never
        sorted over quietly."""
        step = FORMAT_CHUNK_ROWS
        for start in range(0, max(len(self) - 1, 0), step):
            if not sets.is_sorted_unique(self.packed[start : start + step + 1], self.backend.xp):
                raise AssertionError(f"a relation of {len(self)} rows is not sorted and duplicate-free near row {start}")
        return True


def sort_rows(rows: Rows, relation: ir.Relation, symbols: SymbolTable) -> Rows:
    """Rows in output order: lexicographic over columns, numbers numerically, symbols by text.

    The encoding orders numbers, and symbols too while the table's ids are in text order (the
    run's policy, values.SymbolTable): the engine hands such relations sorted, and they come
    back as they are. Otherwise symbol ids are replaced by their text rank for the sort.
    """
    has_symbols = "symbol" in relation.types and not symbols.text_ordered
    if len(rows) < 2 or relation.arity == 0 or (not has_symbols and _in_order(rows)):
        return rows
    rows = np.asarray(rows)
    rank = symbols.text_rank() if has_symbols else None
    keys = [rank[rows[:, j]] if rank is not None and t == "symbol" else rows[:, j] for j, t in enumerate(relation.types)]
    if relation.arity == 2:
        packed = (keys[0].astype(np.uint64) << np.uint64(32)) | keys[1]
        if not has_symbols:  # keys are the values: sort and unpack, no gather
            packed.sort()
            return np.stack([(packed >> np.uint64(32)).astype(np.uint32), packed.astype(np.uint32)], axis=1)
        order = np.argsort(packed)
    else:
        order = np.lexsort(keys[::-1])
    return np.ascontiguousarray(rows[order])


def _in_order(rows: Rows) -> bool:
    """Whether encoded rows are in lexicographic order, checked a chunk at a time so that the
    check adds no relation-sized temporaries (``PackedRows`` checks its packed words itself)."""
    if hasattr(rows, "in_order"):
        return bool(rows.in_order())
    for start in range(0, len(rows) - 1, FORMAT_CHUNK_ROWS):
        later = rows[start + 1 : start + 1 + FORMAT_CHUNK_ROWS]
        earlier = rows[start : start + len(later)]
        before = np.zeros(len(later), dtype=bool)
        tied = np.ones(len(later), dtype=bool)
        for j in range(rows.shape[1]):
            before |= tied & (earlier[:, j] < later[:, j])
            tied &= earlier[:, j] == later[:, j]
        if not bool(np.all(before | tied)):
            return False
    return True


def decode_columns(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> list[np.ndarray]:
    """Encoded rows -> one array per attribute: int32 (number), uint32 (unsigned), float32
    (float), object str (symbol; a record or ADT value as Soufflé writes it)."""
    return [
        record_text.write_column(np.ascontiguousarray(rows[:, j]), a, relation, symbols, False)
        if a.record is not None
        else symbols.lookup(rows[:, j])
        if a.type == "symbol"
        else decode(np.ascontiguousarray(rows[:, j]), a.type)
        for j, a in enumerate(relation.attributes)
    ]


def write_relation(
    out: str | Path | IO[str],
    rows: Rows,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str = "\t",
    *,
    backend: Backend = NUMPY,
    written: Callable[[int], None] | None = None,
    rfc4180: bool = False,
) -> None:
    """Write distinct encoded rows, sorted and decoded, to a path or a text stream (e.g. stdout),
    a chunk at a time; ``written(n)`` hears the bytes written so far after each chunk (progress)."""
    chunks = format_chunks(rows, relation, symbols, delimiter, backend=backend, rfc4180=rfc4180)
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                if written is not None:
                    written(f.tell())
    else:
        for chunk in chunks:
            out.write(bytes(chunk).decode("utf-8"))


def format_relation(
    rows: Rows,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str = "\t",
    *,
    backend: Backend = NUMPY,
    rfc4180: bool = False,
) -> bytes:
    """The bytes ``write_relation`` writes, at once: for a worker that formats its share and
    hands the bytes on, and for stdout."""
    return b"".join(format_chunks(rows, relation, symbols, delimiter, backend=backend, rfc4180=rfc4180))


_PYARROW_REFUSES = ("\0", "\r", "\n", '"')  # as write_csv delimiters

# Rows formatted at once: the text of a chunk (about 12 MB for two numbers; the writer holds two,
# one formatted while the other is written) is what writing adds to a run's memory, whatever
# the relation's size.
FORMAT_CHUNK_ROWS = 1 << 19


def format_chunks(
    rows: Rows,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str = "\t",
    *,
    backend: Backend = NUMPY,
    in_order: bool = False,
    rfc4180: bool = False,
) -> Iterator[bytes | memoryview]:
    """Distinct encoded rows, sorted and decoded, one per line, as a sequence of byte strings
    (views of the CPU kernel's uint8 arrays). ``in_order``: the rows are in output order already
    (a shard's range of the output), not sorted again. ``rfc4180``: symbols quoted.

    Numbers and unquoted symbols go through the CPU kernel when ``backend`` has it (the rows
    are NumPy arrays whatever backend the run used); otherwise pyarrow writes unquoted CSV,
    and symbols holding the delimiter, a quote or a line break (pyarrow refuses those
    unquoted), records, floats and multi-byte delimiters go through a plain Python formatter;
    quoted symbols are joined into lines by pyarrow's string kernels.
    """
    if not in_order:
        rows = sort_rows(rows, relation, symbols)
    if relation.arity == 0:
        if len(rows):
            yield b"()\n"
        return
    if _by_kernel(relation, delimiter, backend, rfc4180):
        kernels = backend.kernels
        assert kernels is not None
        kinds = np.array([KINDS[t] for t in relation.types], dtype=np.uint8)
        flip = np.where(kinds == kernels.NUMBER, SIGN, np.uint32(0)).astype(np.uint32)
        held = symbols.texts() if "symbol" in relation.types else EMPTY
        for start in range(0, len(rows), FORMAT_CHUNK_ROWS):
            chunk = rows[start : start + FORMAT_CHUNK_ROWS] ^ flip
            yield memoryview(kernels.format_rows(chunk, kinds, ord(delimiter), held.data, held.offsets))
        return
    if rfc4180 and ("symbol" in relation.types or record_text.any_records(relation)):
        for start in range(0, len(rows), FORMAT_CHUNK_ROWS):
            yield _quoted_lines(
                _quoted_columns(np.asarray(rows[start : start + FORMAT_CHUNK_ROWS]), relation, symbols), delimiter
            )
        return
    exotic = "symbol" in relation.types and symbols.holds_any((delimiter, '"', "\n", "\r"))
    plain = exotic or record_text.any_records(relation) or len(delimiter.encode()) != 1 or delimiter in _PYARROW_REFUSES
    for start in range(0, len(rows), FORMAT_CHUNK_ROWS):
        chunk = rows[start : start + FORMAT_CHUNK_ROWS]
        if plain:
            columns = _text_columns(chunk, relation, symbols)
            yield "".join(delimiter.join(map(str, r)) + "\n" for r in zip(*columns)).encode("utf-8", "surrogateescape")
        else:
            yield _arrow_csv(_arrow_columns(np.asarray(chunk), relation, symbols), delimiter)


def _by_kernel(relation: ir.Relation, delimiter: str, backend: Backend, rfc4180: bool) -> bool:
    """Whether the CPU kernel writes the relation: integers, and symbols as their bytes are
    (unquoted, as Soufflé writes them, a delimiter or line break in one included)."""
    return (
        backend.kernels is not None
        and set(relation.types) <= set(KINDS)
        and not record_text.any_records(relation)  # an enum is a number written as its branch
        and len(delimiter.encode()) == 1
        and not (rfc4180 and "symbol" in relation.types)
    )


def _text_columns(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> list[np.ndarray]:
    """``decode_columns`` with floats as their texts, each distinct value formatted once."""
    columns = decode_columns(rows, relation, symbols)
    return [_format_floats(c) if t == "float" else c for c, t in zip(columns, relation.types)]


def _format_floats(values: np.ndarray) -> np.ndarray:
    distinct, inverse = np.unique(values.view(np.uint32), return_inverse=True)
    texts = np.array([format_float(int(bits)) for bits in distinct.tolist()], dtype=object)
    return texts[inverse.reshape(-1)] if len(values) else np.empty(0, dtype=object)


_POWERS_OF_TEN = np.array([10**k for k in range(1, 10)], dtype=np.int64)


def text_length(
    rows: Rows,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str = "\t",
    *,
    backend: Backend = NUMPY,
    rfc4180: bool = False,
) -> int:
    """The bytes ``format_chunks(..., in_order=True)`` yields, without keeping them: counted
    from the digits and the texts' lengths where the kernel formats (a tenth of formatting's
    cost), else
    formatted a chunk at a time and measured."""
    if relation.arity == 0 or not _by_kernel(relation, delimiter, backend, rfc4180):
        chunks = format_chunks(rows, relation, symbols, delimiter, backend=backend, in_order=True, rfc4180=rfc4180)
        return sum(len(c) for c in chunks)
    total = len(rows) * relation.arity  # the delimiters and the line breaks
    sizes = symbols.texts().sizes() if "symbol" in relation.types else None
    for start in range(0, len(rows), FORMAT_CHUNK_ROWS):
        block = rows[start : start + FORMAT_CHUNK_ROWS]
        for j, t in enumerate(relation.types):
            values = np.ascontiguousarray(block[:, j])
            if sizes is not None and t == "symbol":
                total += int(sizes[values].sum())
                continue
            if t == "number":
                signed = decode(values, t).astype(np.int64)
                total += int(np.count_nonzero(signed < 0))
                values = np.abs(signed)
            total += len(values) + int(np.searchsorted(_POWERS_OF_TEN, values, side="right").sum())
    return total


def _arrow_columns(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> list[Any]:
    """Encoded rows (no records) -> one pyarrow column per attribute: a symbol column is the
    table's texts gathered by id (their bytes as they are, as Soufflé writes them), a float
    column its texts, an integer column its values."""
    from dask_datalog.engine import text

    columns = []
    for j, t in enumerate(relation.types):
        values = np.ascontiguousarray(rows[:, j])
        if t == "symbol":
            columns.append(_unchecked_text(text.arrow(symbols.texts_of(values))))
        else:
            decoded = decode(values, t)
            columns.append(_arrow_column(_format_floats(decoded) if t == "float" else decoded))
    return columns


def _arrow_csv(columns: list[Any], delimiter: str) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.Table.from_arrays(columns, names=[f"c{j}" for j in range(len(columns))])
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none"))
    return sink.getvalue().to_pybytes()


def _quoted_columns(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> list[Any]:
    """Encoded rows -> one pyarrow large_string column per attribute as rfc4180 output writes
    it, Soufflé's way: each symbol in quotes, a quote in it as ``\\""`` (the texts gathered
    by id and quoted by pyarrow's kernels); records quoted by record_text; numbers as text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from dask_datalog.engine import text

    quote, nothing = text.repeated(b'"', len(rows)), text.repeated(b"", len(rows))
    fields = []
    for j, a in enumerate(relation.attributes):
        values = np.ascontiguousarray(rows[:, j])
        if a.record is not None:
            field = _arrow_column(record_text.write_column(values, a, relation, symbols, True))
        elif a.type == "symbol":
            escaped = pc.replace_substring(text.arrow(symbols.texts_of(values)), pattern='"', replacement='\\""')
            field = _unchecked_text(pc.binary_join_element_wise(quote, escaped, quote, nothing))
        else:
            decoded = decode(values, a.type)
            field = _arrow_column(_format_floats(decoded) if a.type == "float" else decoded)
        fields.append(field.cast(pa.large_string()))
    return fields


def _unchecked_text(texts: Any) -> Any:
    """A large_binary array as large_string, not validated: the bytes a substr cut out of a
    character go out as they are, as Soufflé writes them."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.large_string(), len(texts), texts.buffers(), offset=texts.offset)


def _quoted_lines(fields: list[Any], delimiter: str) -> bytes:
    """rfc4180 columns (``_quoted_columns``) joined into lines."""
    import pyarrow.compute as pc

    from dask_datalog.engine import text

    n = len(fields[0])
    separator = _unchecked_text(text.repeated(delimiter.encode(), n))
    end, nothing = _unchecked_text(text.repeated(b"\n", n)), _unchecked_text(text.repeated(b"", n))
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*fields, separator), nothing, end)  # line + "\n" + ""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1, offset=lines.offset * 8)
    return lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def _arrow_column(column: np.ndarray) -> Any:
    """NumPy -> Arrow without pa.array, which imports pandas (0.4 s) on first use. Integer
    columns wrap their buffer; symbol columns go through a dictionary of their distinct texts."""
    import pyarrow as pa

    if column.dtype != object:
        column = np.ascontiguousarray(column)
        return pa.Array.from_buffers(pa.from_numpy_dtype(column.dtype), len(column), [None, pa.py_buffer(column)])
    texts, codes = np.unique(column, return_inverse=True)
    # surrogateescape: the bytes a substr cut out of a character go out as Soufflé writes them.
    data = "".join(texts).encode("utf-8", "surrogateescape")
    lengths = np.fromiter((len(t.encode("utf-8", "surrogateescape")) for t in texts), dtype=np.int32, count=len(texts))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    dictionary = pa.Array.from_buffers(pa.string(), len(texts), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    indices = _arrow_column(codes.astype(np.int32).reshape(-1))
    return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())


def parquet_part_name(part: int) -> str:
    """File name of part ``part`` of a relation's Parquet dataset (one part per worker)."""
    return f"part-{part:05d}.parquet"


def clear_parquet_parts(dataset: Path) -> None:
    """Make ``dataset`` an empty directory of parts: parts of an earlier run with more workers
    would otherwise join this run's data."""
    dataset.mkdir(parents=True, exist_ok=True)
    for stale in dataset.glob("part-*.parquet"):
        stale.unlink()


def write_parquet_part(path: Path, rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> None:
    """Sorted, decoded rows as one Parquet file, columns named by attribute. A nullary relation,
    which has no column to hold its one possible tuple, gets a boolean column ``holds``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sort_rows(rows, relation, symbols)
    if relation.arity == 0:
        table = pa.Table.from_arrays([pa.array(np.ones(len(rows), dtype=bool))], names=["holds"])
    else:
        columns = [_arrow_column(c) for c in decode_columns(rows, relation, symbols)]
        table = pa.Table.from_arrays(columns, names=[a.name for a in relation.attributes])
    pq.write_table(table, path)


def to_numpy(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> np.ndarray:
    """Sorted decoded (n, arity) array: int64 when every column is an integer, float64 when
    every column is numeric and one a float, else object."""
    columns = decode_columns(sort_rows(rows, relation, symbols), relation, symbols)
    dtype = (
        object
        if "symbol" in relation.types or record_text.any_records(relation)
        else np.float64
        if "float" in relation.types
        else np.int64
    )
    result = np.empty((len(rows), relation.arity), dtype=dtype)
    for j, col in enumerate(columns):
        result[:, j] = col.astype(dtype)
    return result


def to_pandas(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> pd.DataFrame:
    """Sorted DataFrame, columns named by attribute: int32 / uint32 / float32 / object (str)."""
    columns = decode_columns(sort_rows(rows, relation, symbols), relation, symbols)
    import pandas as pd

    return pd.DataFrame({a.name: pd.Series(col, dtype=col.dtype) for a, col in zip(relation.attributes, columns)})
