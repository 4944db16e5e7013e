"""Fact input: fact files and Python data (rows, arrays, DataFrames) -> encoded uint32 rows.

Kept apart from ``relation_output`` because reading is where user data is parsed and checked
(every error names file:line:col), while output only renders rows the engine already holds.

Input format (Soufflé's): one tuple per line, fields split by the delimiter, no header, no
quoting, ``\\r\\n`` (or a lone ``\\r``) ends a line as well as ``\\n``, a leading UTF-8 BOM is
ignored. An empty line is the empty string in a relation of one symbol column (as in Soufflé,
and how such a relation holding "" is written; the line break that ends the file starts no
tuple); elsewhere empty lines are skipped (Soufflé rejects the file: real graphs, GPULog's among
them, end in a blank line). A number field is ``-?[0-9]+`` (no spaces, no ``+``, no hex) and
must fit its type: int32 for number, 0..2^32-1 for unsigned. A symbol field is the raw text, the
empty string included. A nullary relation holds iff its file has a line, whatever the line
holds, an empty one too (as in Soufflé; ``relation_output.write_relation`` writes ``()``).
Records and ADT values are read as Soufflé reads them (``record_text``); a delimiter with a comma
only ends a field outside square brackets then.

The fast paths are a C kernel for numbers only and pyarrow's multithreaded CSV reader beside
symbols. ``_read_slow`` is the specification: on any failure of a fast path it rescans the text
line by line, so the error names the first bad line, and it is also the reader for what the fast
paths cannot take (multi-byte delimiters, empty files).
``read_facts_range`` reads the lines of one of n byte ranges, for workers sharing one file.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import IO, Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats import record_text
from dask_datalog.engine.storage import cpu_kernels
from dask_datalog.engine.values import INT32_MAX, INT32_MIN, UINT32_MAX, SymbolTable, encode

_INTEGER = re.compile(r"-?[0-9]+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DELIMITER_NAMES = {"\t": "tab", ",": "comma", " ": "space", ";": "semicolon", "|": "bar"}
_NUMERIC_BYTES = b"0123456789-\r\n"
_ANY_CONTENT = re.compile(rb"[^\r\n]")
_BREAK_BYTE = re.compile(rb"[\r\n]")
_BOM = "\ufeff".encode()
_SLOW_ONLY_DELIMITERS = ("\0", "\r", "\n")
_BOUNDS = {"number": (INT32_MIN, INT32_MAX), "unsigned": (0, UINT32_MAX)}


def signature(relation: ir.Relation) -> str:
    """``edge(a:number, b:number)``, as error messages show a relation."""
    attrs = ", ".join(f"{a.name}:{a.type_name}" for a in relation.attributes)
    return f"{relation.name}({attrs})"


# ----------------------------------------------------------------------------- reading


def read_facts(
    path: Path | str,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str = "\t",
    pos: ir.Pos | None = None,
) -> np.ndarray:
    """Read a fact file into an (n, arity) C-contiguous uint32 array of encoded values.

    Duplicate lines are kept (the engine deduplicates). ``pos`` is the ``.input`` directive,
    where a missing or unreadable file is reported.
    """
    return read_facts_range(path, relation, symbols, delimiter, pos)


def read_facts_range(
    path: Path | str,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str = "\t",
    pos: ir.Pos | None = None,
    part: int = 0,
    n_parts: int = 1,
) -> np.ndarray:
    """``read_facts`` restricted to the lines that start in byte range ``part`` of ``n_parts``
    equal ones, so n workers can each read their share of one file in parallel.

    Only that range and the tail of its last line are read. Concatenated in part order, the
    parts hold exactly the whole file's rows. A nullary relation is one fact about the whole
    file: part 0 answers it, the other parts are empty. On a bad line the error is the one
    ``read_facts`` raises for the whole file (found by rescanning it, the rare path), so
    every failing worker reports the same first bad line with its true line number.
    """
    path = Path(path)
    whole = relation.arity == 0
    try:
        with path.open("rb") as f:
            if whole and part > 0:
                return np.empty((0, 0), dtype=np.uint32)
            size = os.fstat(f.fileno()).st_size
            lo, hi = (0, size) if whole else (part * size // n_parts, (part + 1) * size // n_parts)
            start, end = _line_start(f, lo, size), _line_start(f, hi, size)
            f.seek(start)
            data = f.read(end - start)
    except FileNotFoundError:
        raise DatalogError(pos, f"fact file {path} for {signature(relation)} does not exist") from None
    except OSError as e:
        raise DatalogError(pos, f"cannot read fact file {path} for {signature(relation)}: {e.strerror}") from None
    # Only the file's own start may hold a BOM; a range starting with one starts with a line's
    # text, which the fast readers would take for a BOM.
    file_start = start == 0
    # pyarrow takes one-byte delimiters only, and neither NUL (a ValueError) nor a line break
    if (
        relation.arity > 0
        and not record_text.any_records(relation)
        and len(delimiter.encode()) == 1
        and delimiter not in _SLOW_ONLY_DELIMITERS
        and _ANY_CONTENT.search(data)
        and (file_start or not data.startswith(_BOM))
    ):
        rows = _read_fast(data, relation, symbols, delimiter)
        if rows is not None:
            return rows
    try:
        return _read_slow(data, str(path), relation, symbols, delimiter, file_start)
    except DatalogError:
        if (start, end) != (0, size):  # line numbers count from the range: rescan for the file's error
            _read_slow(path.read_bytes(), str(path), relation, SymbolTable(), delimiter)
        raise


def _line_start(f: IO[bytes], offset: int, size: int) -> int:
    """The first line start at or after ``offset``: just past the first line break that ends
    there or later (a ``\\r\\n`` split by ``offset`` ends after it), or the end of the file."""
    if offset in (0, size):
        return offset
    at, block_size = offset - 1, 1 << 12
    f.seek(at)
    while block := f.read(block_size + 1):  # one byte more: what follows a \r at the block's end
        found = _BREAK_BYTE.search(block, 0, block_size)
        if found:
            i = found.start()
            return at + i + 1 + (block[i : i + 2] == b"\r\n")
        at += block_size
        block_size *= 2
        f.seek(at)
    return size


def _int_column(column: Any) -> np.ndarray:
    """A null-free integer pyarrow column as NumPy through its data buffer. pyarrow's own
    to_numpy imports pandas on first use (0.45 s), a third of a small run's wall time."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    assert array.null_count == 0, "fact columns are parsed with no null values"
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _read_fast(data: bytes, relation: ir.Relation, symbols: SymbolTable, delimiter: str) -> np.ndarray | None:
    """The fast readers; None when anything is off (the slow path explains). Numbers only: one
    pass of the CPU kernel, which checks the grammar and ranges as it parses. With symbols:
    pyarrow's multithreaded reader, number columns read as text, matched, then cast (its
    integer parser would also take spaces and hex)."""
    if "symbol" not in relation.types:
        if delimiter.encode() in _NUMERIC_BYTES:
            return None  # a digit, '-' or a line break as the delimiter: the reference reader's
        signed = np.array([t == "number" for t in relation.types])
        return cpu_kernels.parse_numeric(data, relation.arity, signed, ord(delimiter))
    import pyarrow as pa  # imported when used: 65 MB and 60 ms that numeric inputs never need
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    names = [f"c{j}" for j in range(relation.arity)]
    arrow_types = {"number": pa.int32(), "unsigned": pa.uint32()}
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=False, escape_char=False, ignore_empty_lines=not _empty_is_a_tuple(relation)
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for name, t in zip(names, relation.types):
            if t != "symbol":
                column = table[name]
                if not pc.all(pc.match_substring_regex(column, r"^-?[0-9]+$")).as_py():
                    return None
                table = table.set_column(names.index(name), name, pc.cast(column, arrow_types[t]))
    except pa.ArrowException:
        return None
    rows = np.empty((table.num_rows, relation.arity), dtype=np.uint32)
    for j, (name, t) in enumerate(zip(names, relation.types)):
        if t != "symbol":
            rows[:, j] = encode(_int_column(table[name]), t)
    # Symbols are interned only once everything parsed: a bad file leaves the table untouched.
    for j, (name, t) in enumerate(zip(names, relation.types)):
        if t == "symbol":
            encoded = pc.dictionary_encode(table[name].combine_chunks())
            ids = np.fromiter(
                (symbols.intern(s) for s in encoded.dictionary.to_pylist()),
                dtype=np.uint32,
                count=len(encoded.dictionary),
            )
            rows[:, j] = ids[_int_column(encoded.indices)]
    return rows


def _empty_is_a_tuple(relation: ir.Relation) -> bool:
    """Whether an empty line is a tuple (the empty string) rather than skipped."""
    return relation.types == ("symbol",)


def _read_slow(
    data: bytes, file: str, relation: ir.Relation, symbols: SymbolTable, delimiter: str, file_start: bool = True
) -> np.ndarray:
    """Line-by-line reader: the reference for the format, and the source of precise errors.
    ``file_start``: ``data`` begins the file (where a BOM is skipped)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = max(data.rfind(b"\n", 0, e.start), data.rfind(b"\r", 0, e.start)) + 1
        bad_line = len(_LINE_BREAK.findall(data[: e.start].decode("utf-8"))) + 1
        col = len(data[line_start : e.start].decode("utf-8")) + 1
        raise DatalogError(ir.Pos(file, bad_line, col), f"invalid UTF-8 byte 0x{data[e.start]:02x}") from None
    if file_start:
        text = text.removeprefix("\ufeff")
    arity = relation.arity
    columns: list[list[Any]] = [[] for _ in range(arity)]
    column_bounds = [None if a.record else _BOUNDS.get(a.type) for a in relation.attributes]
    records = record_text.any_records(relation)
    split = (lambda line: record_text.split_fields(line, delimiter)) if records else (lambda line: line.split(delimiter))
    row_lines: list[int] = []  # with records: each row's line, for an error found once all are read
    match = _INTEGER.fullmatch
    lines = _LINE_BREAK.split(text)
    if lines[-1] == "":  # the end of the last line, or an empty file
        lines.pop()
    if arity == 0:  # as in Soufflé: any line, whatever it holds (an empty one too), is the fact
        return np.empty((int(bool(lines)), 0), dtype=np.uint32)
    keep_empty = _empty_is_a_tuple(relation)
    for lineno, line in enumerate(lines, start=1):
        if not line and not keep_empty:
            continue
        fields = split(line)
        if len(fields) != arity:
            col = len(delimiter.join(fields[:arity])) + 1 + (len(delimiter) if len(fields) > arity else 0)
            raise DatalogError(
                ir.Pos(file, lineno, col),
                f"expected {arity} {_delimiter_name(delimiter)}-separated field{'s' * (arity != 1)} "
                f"for {signature(relation)}, found {len(fields)}",
            )
        for j, field in enumerate(fields):
            bounds = column_bounds[j]
            if bounds is None:
                columns[j].append(field)
                continue
            if match(field) and bounds[0] <= (value := _int(field)) <= bounds[1]:
                columns[j].append(value)
                continue
            col = len(delimiter.join(fields[:j])) + (len(delimiter) if j else 0) + 1
            raise _integer_error(field, relation.attributes[j], ir.Pos(file, lineno, col))
        if records:
            row_lines.append(lineno)
    rows = np.empty((len(columns[0]), arity), dtype=np.uint32)
    for j, attr in enumerate(relation.attributes):
        if attr.record is not None:
            values, bad = record_text.read_column(columns[j], attr, relation, symbols)
            rows[:, j] = values if bad is None else 0
            if bad is not None:
                row, error = bad
                lineno = row_lines[row]
                fields = split(lines[lineno - 1])
                col = len(delimiter.join(fields[:j])) + (len(delimiter) if j else 0) + 1 + error.at
                raise DatalogError(
                    ir.Pos(file, lineno, col),
                    f"cannot read {_shorten(repr(fields[j]))} as {attr.type_name} for column {attr.name}: {error}",
                )
        elif attr.type == "symbol":
            rows[:, j] = symbols.intern_many(np.array(columns[j], dtype=object)) if columns[j] else []
        else:
            rows[:, j] = encode(np.array(columns[j], dtype=np.int64), attr.type)
    return rows


def _int(field: str) -> int:
    """A field matching ``_INTEGER`` as an int; one too long for any 32-bit type (which
    ``int`` could refuse to convert: over 4300 digits) as a value just out of range."""
    if len(field) <= 20:
        return int(field)
    negative = field.startswith("-")
    digits = field.lstrip("-").lstrip("0")
    if len(digits) > 20:
        return -(1 << 64) if negative else 1 << 64
    return int(digits or "0") * (-1 if negative else 1)


def _shorten(text: str, limit: int = 60) -> str:
    """``text`` for an error message: a long field is cut, its length said."""
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-10:]} ({len(text)} characters)"


def _parse_integer(field: str, attr: ir.Attribute, pos: ir.Pos) -> int:
    if not _INTEGER.fullmatch(field):
        raise _integer_error(field, attr, pos)
    value = _int(field)
    lo, hi = _BOUNDS[attr.type]
    if not lo <= value <= hi:
        raise _range_error(value, attr, pos, _shorten(field))
    return value


def _integer_error(field: str, attr: ir.Attribute, pos: ir.Pos) -> DatalogError:
    """The error for a field already known not to be a valid integer of the column's type."""
    if not _INTEGER.fullmatch(field):
        found = "an empty field" if field == "" else _shorten(repr(field))
        return DatalogError(pos, f"expected an integer for column {attr.name} ({attr.type_name}), found {found}")
    return _range_error(_int(field), attr, pos, _shorten(field))


def _check_range(value: int, attr: ir.Attribute, pos: ir.Pos) -> None:
    lo, hi = _BOUNDS[attr.type]
    if not lo <= value <= hi:
        raise _range_error(value, attr, pos)


def _range_error(value: int, attr: ir.Attribute, pos: ir.Pos, shown: str | None = None) -> DatalogError:
    if shown is None:  # str() of an int over 4300 digits fails: say how big it is instead
        shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"
    if attr.type == "unsigned" and value < 0:
        return DatalogError(pos, f"{shown} is negative, but column {attr.name} is unsigned")
    lo, hi = _BOUNDS[attr.type]
    return DatalogError(pos, f"{shown} does not fit in a 32-bit {attr.type} ({lo}..{hi}) for column {attr.name}")


def _delimiter_name(delimiter: str) -> str:
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


# ----------------------------------------------------------------------------- encoding Python data


def encode_rows(data: Any, relation: ir.Relation, symbols: SymbolTable, origin: str) -> np.ndarray:
    """Facts given in Python (rows of values, an (n, arity) array, a DataFrame) -> encoded rows.

    Integer arrays are range-checked without a Python loop; object and string data are checked
    value by value. Errors point at ``origin:row:column``, both 1-based.
    """
    arity = relation.arity
    if is_dataframe(data):
        if data.shape[1] != arity:
            raise DatalogError(ir.Pos(origin, 1, 1), f"expected {arity} columns for {signature(relation)}, found {data.shape[1]}")
        columns = [data.iloc[:, j].to_numpy() for j in range(arity)]
    elif isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == arity:
        columns = [data[:, j] for j in range(arity)]
    elif isinstance(data, np.ndarray) and data.ndim == 1 and arity == 1:
        columns = [data]
    else:
        rows = [tuple(r) for r in data]
        for i, r in enumerate(rows):
            if len(r) != arity:
                raise DatalogError(ir.Pos(origin, i + 1, 1), f"expected {arity} values for {signature(relation)}, found {len(r)}")
        if arity == 0:
            return np.empty((int(bool(rows)), 0), dtype=np.uint32)
        columns = [np.array([r[j] for r in rows], dtype=object) for j in range(arity)]
    n = len(columns[0]) if columns else 0
    out = np.empty((n, arity), dtype=np.uint32)
    encoded_symbols: list[tuple[int, np.ndarray]] = []
    for j, (column, attr) in enumerate(zip(columns, relation.attributes)):
        if attr.type == "symbol" or attr.record is not None:
            for i, v in enumerate(column):
                if not isinstance(v, str):
                    raise DatalogError(
                        ir.Pos(origin, i + 1, j + 1),
                        f"expected a string for column {attr.name} ({attr.type_name}), found {_show(v)}",
                    )
            encoded_symbols.append((j, column.astype(object)))  # np.str_ -> str
        else:
            out[:, j] = encode(_integer_column(column, attr, origin, j), attr.type)
    for j, column in encoded_symbols:  # interned last: a rejected input leaves no symbols behind
        attr = relation.attributes[j]
        if attr.record is None:
            out[:, j] = symbols.intern_many(column) if len(column) else []
            continue
        values, bad = record_text.read_column(list(column), attr, relation, symbols)
        if bad is not None:
            row, error = bad
            raise DatalogError(
                ir.Pos(origin, row + 1, j + 1),
                f"cannot read {_show(column[row])} as {attr.type_name} for column {attr.name}: {error}",
            )
        out[:, j] = values
    return out


def _integer_column(column: np.ndarray, attr: ir.Attribute, origin: str, j: int) -> np.ndarray:
    """A column of ints (or of decimal strings, as ``np.array`` makes of mixed rows) -> int64."""
    if column.dtype.kind in "iu":
        lo, hi = _BOUNDS[attr.type]
        bad = (column < lo) | (column > hi)  # numpy 2 compares with out-of-range ints exactly
        if bad.any():
            i = int(np.argmax(bad))
            _check_range(int(column[i]), attr, ir.Pos(origin, i + 1, j + 1))
        return column.astype(np.int64)
    parsed = np.empty(len(column), dtype=np.int64)
    for i, v in enumerate(column):
        pos = ir.Pos(origin, i + 1, j + 1)
        if isinstance(v, str):
            parsed[i] = _parse_integer(v, attr, pos)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            _check_range(int(v), attr, pos)
            parsed[i] = int(v)
        else:
            raise DatalogError(pos, f"expected an integer for column {attr.name} ({attr.type_name}), found {_show(v)}")
    return parsed


def _show(value: Any) -> str:
    """repr of a user's value, numpy scalars shown as the Python value they hold."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def is_dataframe(data: Any) -> bool:
    """A pandas DataFrame, recognised without importing pandas."""
    return type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")
