"""Relation output: encoded rows -> sorted, decoded CSV text, Parquet parts, NumPy or pandas.

Kept apart from ``fact_input`` because output never parses user data: it only orders and renders
rows the engine already holds, for the CLI, the workers' output tasks and the Python API.
Symbols sort by text, not by id; a nullary relation is written as ``()`` (Soufflé's form).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from . import ir
from .backend import NUMPY, Backend
from .values import SIGN, SymbolTable, decode

if TYPE_CHECKING:  # pandas costs 0.4 s to import; only DataFrame users pay it
    import pandas as pd


def sort_rows(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> np.ndarray:
    """Rows in output order: lexicographic over columns, numbers numerically, symbols by text.

    The encoding already orders numbers; symbol ids are replaced by their text rank for the sort.
    """
    if len(rows) < 2 or relation.arity == 0:
        return np.ascontiguousarray(rows)
    has_symbols = "symbol" in relation.types
    rank = symbols.text_rank() if has_symbols else None
    keys = [rank[rows[:, j]] if t == "symbol" else rows[:, j] for j, t in enumerate(relation.types)]
    if relation.arity == 2:
        packed = (keys[0].astype(np.uint64) << np.uint64(32)) | keys[1]
        if not has_symbols:  # keys are the values: sort and unpack, no gather
            if bool(np.all(packed[1:] >= packed[:-1])):  # the engine hands relations sorted
                return np.ascontiguousarray(rows)
            packed.sort()
            return np.stack([(packed >> np.uint64(32)).astype(np.uint32), packed.astype(np.uint32)], axis=1)
        order = np.argsort(packed)
    else:
        order = np.lexsort(keys[::-1])
    return np.ascontiguousarray(rows[order])


def decode_columns(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> list[np.ndarray]:
    """Encoded rows -> one array per attribute: int32 (number), uint32 (unsigned), object str (symbol)."""
    return [
        symbols.lookup(rows[:, j]) if t == "symbol" else decode(np.ascontiguousarray(rows[:, j]), t)
        for j, t in enumerate(relation.types)
    ]


def write_relation(
    out: str | Path | IO[str],
    rows: np.ndarray,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str = "\t",
    *,
    backend: Backend = NUMPY,
) -> None:
    """Write distinct encoded rows, sorted and decoded, to a path or a text stream (e.g. stdout)."""
    _emit(out, format_relation(rows, relation, symbols, delimiter, backend=backend))


_PYARROW_REFUSES = ("\0", "\r", "\n", '"')  # as write_csv delimiters


def format_relation(
    rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable, delimiter: str = "\t", *, backend: Backend = NUMPY
) -> bytes:
    """The bytes ``write_relation`` writes: distinct encoded rows, sorted and decoded, one per line.

    Separate from writing so that a worker can format its share and hand the bytes on. pyarrow
    writes unquoted CSV fast; symbols holding the delimiter, a quote or a line break (pyarrow
    refuses those unquoted) and multi-byte delimiters go through a plain Python formatter; a
    numba kernel formats numbers when ``backend``'s kernel policy hands it out (the rows are
    NumPy arrays whatever backend the run used).
    """
    rows = sort_rows(rows, relation, symbols)
    if relation.arity == 0:
        return b"()\n" if len(rows) else b""
    kernels = backend.kernels_for(rows.size)
    if kernels is not None and "symbol" not in relation.types and len(delimiter.encode()) == 1:
        signed = np.array([t == "number" for t in relation.types])
        raw = np.ascontiguousarray(rows, dtype=np.uint32) ^ np.where(signed, SIGN, np.uint32(0)).astype(np.uint32)
        return kernels.format_rows(raw, signed, np.uint8(ord(delimiter))).tobytes()
    columns = decode_columns(rows, relation, symbols)
    texts = "\0".join(symbols.strings) if "symbol" in relation.types else ""
    exotic = any(c in texts for c in (delimiter, '"', "\n", "\r"))
    if exotic or len(delimiter.encode()) != 1 or delimiter in _PYARROW_REFUSES:
        return "".join(delimiter.join(map(str, r)) + "\n" for r in zip(*columns)).encode()
    table = pa.Table.from_arrays([_arrow_column(c) for c in columns], names=[f"c{j}" for j in range(len(columns))])
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none"))
    return sink.getvalue().to_pybytes()


def _arrow_column(column: np.ndarray) -> pa.Array:
    """NumPy -> Arrow without pa.array, which imports pandas (0.4 s) on first use. Integer
    columns wrap their buffer; symbol columns go through a dictionary of their distinct texts."""
    if column.dtype != object:
        column = np.ascontiguousarray(column)
        return pa.Array.from_buffers(pa.from_numpy_dtype(column.dtype), len(column), [None, pa.py_buffer(column)])
    texts, codes = np.unique(column, return_inverse=True)
    data = "".join(texts).encode()
    lengths = np.fromiter((len(t.encode()) for t in texts), dtype=np.int32, count=len(texts))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    dictionary = pa.Array.from_buffers(pa.string(), len(texts), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    indices = _arrow_column(codes.astype(np.int32).reshape(-1))
    return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())


def _emit(out: str | Path | IO[str], data: bytes) -> None:
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(data)
    else:
        out.write(data.decode("utf-8"))


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
    import pyarrow.parquet as pq

    rows = sort_rows(rows, relation, symbols)
    if relation.arity == 0:
        table = pa.Table.from_arrays([pa.array(np.ones(len(rows), dtype=bool))], names=["holds"])
    else:
        columns = [_arrow_column(c) for c in decode_columns(rows, relation, symbols)]
        table = pa.Table.from_arrays(columns, names=[a.name for a in relation.attributes])
    pq.write_table(table, path)


def to_numpy(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> np.ndarray:
    """Sorted decoded (n, arity) array: int64 when every column is numeric, else object."""
    columns = decode_columns(sort_rows(rows, relation, symbols), relation, symbols)
    dtype = object if "symbol" in relation.types else np.int64
    result = np.empty((len(rows), relation.arity), dtype=dtype)
    for j, col in enumerate(columns):
        result[:, j] = col.astype(dtype)
    return result


def to_pandas(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable) -> pd.DataFrame:
    """Sorted DataFrame, columns named by attribute: int32 / uint32 / object (str)."""
    columns = decode_columns(sort_rows(rows, relation, symbols), relation, symbols)
    import pandas as pd

    return pd.DataFrame({a.name: pd.Series(col, dtype=col.dtype) for a, col in zip(relation.attributes, columns)})
