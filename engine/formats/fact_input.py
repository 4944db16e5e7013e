"""Fact input: fact files and Python data (rows, arrays, DataFrames) -> encoded uint32 rows.

Kept apart from ``relation_output`` because reading is where user data is parsed and checked
(every error names file:line:col), while output only renders rows the engine already holds.

Input format: Soufflé 2.5's CSV reader (its ReadStreamCSV.h; every rule here checked against
its binary). A file whose first bytes are gzip's is read decompressed (zlib's rules: members
concatenated, trailing bytes that are no gzip member ignored; a corrupt or truncated stream,
which Soufflé reads as far as it goes, is an error here). A line ends in ``\\n``, one ``\\r``
before it dropped (a lone ``\\r`` is text, a UTF-8 BOM too: part of the first field).
``headers`` skips the first line. Fields are split by the delimiter (a tab; a comma with
``rfc4180``); a line gives the fields its relation needs (``columns`` picks them, else the
first ones) and the rest of it is ignored; fewer is an error. With ``rfc4180`` a field that
starts with a quote is quoted: ``""`` is a quote, line breaks inside are kept, the closing quote
must end the field. Without it, a delimiter holding a comma does not split inside ``[...]``
(Soufflé's record syntax), and an unbalanced bracket is an error. A number field is
``[space]*[+-]?[0-9]+`` and must fit int32; an unsigned field also ``0x`` + hex digits or
``0b`` + binary digits, no minus but before 0, and must fit 32 bits (Soufflé keeps what
overflows modulo 2^32: an error here). A float field is what C's strtof reads, all of it, as in
Soufflé: white space, a sign, a decimal or ``0x`` hex float with an exponent or none, ``inf``,
``infinity``, ``nan`` (any case); past the largest float, or tiny and inexact (strtof's ERANGE),
is an error. A symbol field is the raw text, the empty string
included. An empty line is the empty string in a relation read from one symbol field (as in
Soufflé); elsewhere it is skipped (Soufflé rejects the file: real graphs, GPULog's among them,
end in a blank line). A nullary relation holds iff a line follows the header, whatever it
holds, an empty one too (as in Soufflé; ``relation_output.write_relation`` writes ``()``).
Record and ADT fields are read as Soufflé reads them (``record_text``), by the reference reader.

The fast paths are a C kernel for unquoted integers and symbols (one pass: it parses the
numbers and finds each symbol's bytes) and pyarrow's multithreaded CSV reader beside floats or
quotes (integers among them then go through the kernel too, floats through pyarrow's cast where
it reads as strtof does). ``_read_slow`` is the
specification: on any failure of a fast path it rescans the text line by line, so the error
names the first bad line, and it also reads what the fast paths cannot take (brackets with a
comma delimiter, lone ``\\r``, quotes that are not rfc4180's clean form, extra fields with
quoting, multi-byte delimiters for symbols).
``read_facts_range`` reads the lines of one of n byte ranges, for workers sharing one file; a
gzip or rfc4180 file (whose lines cannot be found from the middle) is read whole by part 0.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats import record_text
from dask_datalog.engine.storage import cpu_kernels
from dask_datalog.engine.texts import Texts
from dask_datalog.engine.values import (
    INT32_MAX,
    INT32_MIN,
    UINT32_MAX,
    SymbolBatch,
    SymbolTable,
    encode,
    float_key,
    float_value,
    is_float_text,
    parse_float,
)

_INTEGER = re.compile(r"-?[0-9]+")
_DELIMITER_NAMES = {"\t": "tab", ",": "comma", " ": "space", ";": "semicolon", "|": "bar"}
_BOUNDS = {"number": (INT32_MIN, INT32_MAX), "unsigned": (0, UINT32_MAX)}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff".encode()
_LONE_CR = re.compile(rb"\r(?!\n)")
# What std::stoi / std::stoul take (C's isspace first); unsigned fields may also be 0x / 0b.
_SPACE = "[ \t\n\v\f\r]*"
_DECIMAL = re.compile(_SPACE + r"([+-]?)([0-9]+)")
_BINARY = re.compile("0b" + _SPACE + r"([+-]?)([01]+)")
_HEX = re.compile(r"0x()([0-9a-fA-F]+)")
_PYARROW_REFUSES = ("\0", "\r", "\n")  # as CSV delimiters
_PLAIN_FLOAT = r"^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"  # what pyarrow's cast reads as strtof does
_EXACT_ZERO = r"^-?[0.]*(?:[eE].*)?$"


def signature(relation: ir.Relation) -> str:
    """``edge(a:number, b:number)``, as error messages show a relation."""
    attrs = ", ".join(f"{a.name}:{a.type_name}" for a in relation.attributes)
    return f"{relation.name}({attrs})"


@dataclass(frozen=True)
class FactFormat:
    """How a fact file's text is read: the ``.input`` parameters of Soufflé's CSV reader
    (``ir.InputSpec`` carries them). ``columns[i]``: the file field attribute i is read from."""

    delimiter: str = "\t"
    headers: bool = False
    rfc4180: bool = False
    columns: tuple[int, ...] | None = None
    json: bool = False  # Soufflé's JSON (json_text), not CSV

    @classmethod
    def of(cls, spec: ir.InputSpec) -> FactFormat:
        json = spec.io in ("json", "jsonfile")
        return cls(spec.delimiter, spec.headers and spec.io == "file", spec.rfc4180, spec.columns, json)


def _format(fmt: FactFormat | str) -> FactFormat:
    """A format, or a delimiter standing for the default format with it."""
    return FactFormat(fmt) if isinstance(fmt, str) else fmt


# ----------------------------------------------------------------------------- reading


def read_facts(
    path: Path | str,
    relation: ir.Relation,
    symbols: SymbolTable | SymbolBatch,
    fmt: FactFormat | str = "\t",
    pos: ir.Pos | None = None,
) -> np.ndarray:
    """Read a fact file into an (n, arity) C-contiguous uint32 array of encoded values.

    Duplicate lines are kept (the engine deduplicates). ``fmt``: the format, or just its
    delimiter. ``pos`` is the ``.input`` directive, where a missing or unreadable file is
    reported. With a ``SymbolBatch`` for ``symbols`` (a run reading many files), the symbol
    columns are filled in by its ``intern``, the other files' with them.
    """
    return read_facts_range(path, relation, symbols, fmt, pos)


def read_facts_range(
    path: Path | str,
    relation: ir.Relation,
    symbols: SymbolTable | SymbolBatch,
    fmt: FactFormat | str = "\t",
    pos: ir.Pos | None = None,
    part: int = 0,
    n_parts: int = 1,
) -> np.ndarray:
    """``read_facts`` restricted to the lines that start in byte range ``part`` of ``n_parts``
    equal ones, so n workers can each read their share of one file in parallel.

    Only that range and the tail of its last line are read. Concatenated in part order, the
    parts hold exactly the whole file's rows. A nullary relation is one fact about the whole
    file, and a gzip or rfc4180 file cannot be cut at a line found from the middle: part 0
    reads those whole, the other parts are empty. On a bad line the error is the one
    ``read_facts`` raises for the whole file (found by rescanning it, the rare path), so every
    failing worker reports the same first bad line with its true line number.
    """
    fmt = _format(fmt)
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            compressed = f.read(2) == _GZIP_MAGIC
            whole = relation.arity == 0 or fmt.rfc4180 or compressed or fmt.json
            if whole and part > 0:
                return np.empty((0, relation.arity), dtype=np.uint32)
            lo, hi = (0, size) if whole else (part * size // n_parts, (part + 1) * size // n_parts)
            start, end = _line_start(f, lo, size), _line_start(f, hi, size)
            f.seek(start)
            data = f.read(end - start)
    except FileNotFoundError:
        raise DatalogError(pos, f"fact file {path} for {signature(relation)} does not exist") from None
    except OSError as e:
        raise DatalogError(pos, f"cannot read fact file {path} for {signature(relation)}: {e.strerror}") from None
    if compressed:
        data = _gunzip(data, ir.Pos(str(path), 1, 1))
    try:
        return read_text(data, str(path), relation, symbols, fmt, start == 0)
    except DatalogError:
        if (start, end) != (0, size):  # line numbers count from the range: rescan for the file's error
            read_text(path.read_bytes(), str(path), relation, SymbolTable(), fmt)
        raise


def _gunzip(data: bytes, pos: ir.Pos) -> bytes:
    """A gzip file's content, as zlib's gzread gives it: member after member, until the bytes
    left are no gzip member (ignored, as zlib does). Errors are the file's, at its start."""
    out = []
    while data[:2] == _GZIP_MAGIC:
        stream = zlib.decompressobj(wbits=31)
        try:
            out.append(stream.decompress(data))
        except zlib.error as e:
            raise DatalogError(pos, f"corrupt gzip data: {e}") from None
        if not stream.eof:
            raise DatalogError(pos, "the gzip data ends early (a truncated file?)")
        data = stream.unused_data
    return b"".join(out)


def read_text(
    data: bytes,
    file: str,
    relation: ir.Relation,
    symbols: SymbolTable | SymbolBatch,
    fmt: FactFormat | str = "\t",
    file_start: bool = True,
) -> np.ndarray:
    """Fact text (a file's, or a range of its lines; standard input's) -> encoded rows; errors
    name ``file``. ``file_start``: ``data`` begins the file (where a header is skipped). With a
    ``SymbolBatch``, its ``intern`` fills in the symbol columns (``read_facts``)."""
    batch = symbols if isinstance(symbols, SymbolBatch) else SymbolBatch(symbols)
    rows = _read_rows(data, file, relation, batch, _format(fmt), file_start)
    if batch is not symbols:
        batch.intern()
    return rows


def _read_rows(
    data: bytes, file: str, relation: ir.Relation, symbols: SymbolBatch, fmt: FactFormat, file_start: bool
) -> np.ndarray:
    """``read_text``'s rows, their symbol columns added to ``symbols``."""
    if fmt.json:
        from dask_datalog.engine.formats import json_text  # only JSON input needs it (and json)

        return json_text.read_rows(data, file, relation, symbols.intern())
    first_line = 1
    if fmt.headers and file_start:
        cut = data.find(b"\n")
        data, first_line = (b"" if cut < 0 else data[cut + 1 :]), 2
    if relation.arity == 0:  # as in Soufflé: any line, whatever it holds (an empty one too), is the fact
        return np.empty((int(bool(data)), 0), dtype=np.uint32)
    rows = _read_fast(data, relation, symbols, fmt) if data and not record_text.any_records(relation) else None
    if rows is not None:
        return rows
    return _read_slow(data, file, relation, symbols.intern(), fmt, first_line)


def _line_start(f: IO[bytes], offset: int, size: int) -> int:
    """The first line start at or after ``offset``: just past the first ``\\n`` at ``offset - 1``
    or later, or the end of the file."""
    if offset in (0, size):
        return offset
    at, block_size = offset - 1, 1 << 12
    f.seek(at)
    while block := f.read(block_size):
        found = block.find(b"\n")
        if found >= 0:
            return at + found + 1
        at += len(block)
        block_size *= 2
    return size


def _fields(relation: ir.Relation, fmt: FactFormat) -> np.ndarray:
    """target[k]: the attribute that field k of a line is read into, -1 for a field skipped;
    as many fields as the last attribute needs."""
    columns = fmt.columns or tuple(range(relation.arity))
    target = np.full(max(columns, default=-1) + 1, -1, dtype=np.int64)
    target[list(columns)] = np.arange(relation.arity)
    return target


def _int_column(column: Any) -> np.ndarray:
    """A null-free integer pyarrow column as NumPy through its data buffer. pyarrow's own
    to_numpy imports pandas on first use (0.45 s), a third of a small run's wall time, and so
    does ``DataType.to_pandas_dtype``: the dtype comes from the type's kind and width."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    assert array.null_count == 0, "fact columns are parsed with no null values"
    kind = "f" if pa.types.is_floating(array.type) else "i" if pa.types.is_signed_integer(array.type) else "u"
    assert kind != "u" or pa.types.is_unsigned_integer(array.type), f"not a numeric column: {array.type}"
    dtype = np.dtype(f"{kind}{array.type.bit_width // 8}")
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _read_fast(data: bytes, relation: ir.Relation, symbols: SymbolBatch, fmt: FactFormat | str = "\t") -> np.ndarray | None:
    """The fast readers; None when anything is off (the slow path explains). Integers and
    symbols unquoted: one pass of the CPU kernel, which checks the grammar and ranges as it
    parses (pyarrow's reader cost a small file a few ms, and its first use far more). With
    floats or quotes: pyarrow's multithreaded reader, every field read as text, integers then
    parsed by the kernel, floats cast by pyarrow. The symbol columns go to ``symbols``."""
    fmt = _format(fmt)
    delimiter = fmt.delimiter.encode()
    quoted = fmt.rfc4180 and b'"' in data  # rfc4180 without a quote reads as plain text
    if ("," in fmt.delimiter and not fmt.rfc4180 and (b"[" in data or b"]" in data)) or "\n" in fmt.delimiter:
        return None  # brackets group fields: the reference reader's
    target = _fields(relation, fmt)
    keep_empty = relation.types == ("symbol",) and len(target) == 1
    if set(relation.types) <= set(cpu_kernels.KINDS) and not quoted:
        return _read_by_kernel(data, delimiter, target, relation, symbols, keep_empty)
    if (
        len(delimiter) != 1
        or fmt.delimiter in _PYARROW_REFUSES
        or data.startswith(_BOM)  # pyarrow would drop it
        or (b"\r" in data and _LONE_CR.search(data))  # pyarrow would end a line there
        or (quoted and not _quotes_well_formed(data, delimiter[0]))
    ):
        return None
    table = _arrow_table(data, len(target), fmt.delimiter, quoted, keep_empty)
    if table is None:
        trimmed = _first_fields(data, len(target), delimiter[0], quoted)
        table = None if trimmed is None else _arrow_table(trimmed, len(target), fmt.delimiter, quoted, keep_empty)
    if table is None:
        return None
    rows = np.empty((table.num_rows, relation.arity), dtype=np.uint32)
    for k, j in enumerate(target):
        if j >= 0 and relation.types[j] != "symbol":
            column, t = table.column(k), relation.types[j]
            parsed = _parse_floats(column) if t == "float" else _parse_numbers(column, t == "number")
            if parsed is None:
                return None
            rows[:, j] = parsed
    # Symbols are added only once everything parsed: a bad file leaves the table untouched.
    from dask_datalog.engine import text

    for k, j in enumerate(target):
        if j >= 0 and relation.types[j] == "symbol":
            symbols.add(text.of_arrow(table.column(k)), rows, j)
    return rows


def _read_by_kernel(
    data: bytes, delimiter: bytes, target: np.ndarray, relation: ir.Relation, symbols: SymbolBatch, keep_empty: bool
) -> np.ndarray | None:
    """Unquoted numbers and symbols in one pass of the CPU kernel (it parses the numbers and
    finds each symbol field's bytes); the symbol columns' texts go to ``symbols``. Text that is
    not UTF-8 is the reference reader's to report, as a symbol of it would be wrong."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    parsed = cpu_kernels.parse_fields(data, delimiter, target, [cpu_kernels.KINDS[t] for t in relation.types], keep_empty)
    if parsed is None:
        return None
    rows, texts = parsed
    columns = (j for j, t in enumerate(relation.types) if t == "symbol")
    for j, (gathered, offsets) in zip(columns, texts, strict=True):
        symbols.add(Texts(gathered, offsets), rows, j)
    return rows


def _arrow_table(data: bytes, width: int, delimiter: str, quoted: bool, keep_empty: bool) -> Any:
    """``width`` text columns by pyarrow's CSV reader, or None where it fails (a line with
    more or fewer fields, bad UTF-8...)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"c{k}" for k in range(width)]
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                double_quote=quoted,
                escape_char=False,
                newlines_in_values=quoted,
                ignore_empty_lines=not keep_empty,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowException:
        return None


def _first_fields(data: bytes, width: int, delimiter: int, quoted: bool) -> bytes | None:
    """``data`` with each record cut before its ``width``-th delimiter (the fields a line has
    beyond those read are ignored), vectorised: a mask of the bytes from each cut to its record's
    end. ``quoted``: the quotes are well-formed rfc4180 ones, and a delimiter or line break
    after an odd number of them is inside a quoted field; unless a quote is cut off: Soufflé
    never reads the fields it ignores, so there a quote opens nothing (None: the reference
    reader's)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(buffer == ord("\n"))
    delimiters = np.flatnonzero(buffer == delimiter)
    quotes = np.flatnonzero(buffer == ord('"')) if quoted else np.empty(0, dtype=np.intp)
    if quoted:
        breaks = breaks[np.searchsorted(quotes, breaks) % 2 == 0]
        delimiters = delimiters[np.searchsorted(quotes, delimiters) % 2 == 0]
    ends = np.append(breaks, len(buffer))
    starts = np.concatenate([[0], breaks + 1])
    nth = np.searchsorted(delimiters, starts) + width - 1
    cuts = (
        np.where(nth < len(delimiters), delimiters[np.minimum(nth, max(len(delimiters) - 1, 0))], ends)
        if len(delimiters)
        else ends
    )
    cut = cuts < ends
    marks = np.zeros(len(buffer) + 1, dtype=np.int8)
    marks[cuts[cut]] = 1
    marks[ends[cut]] = -1
    dropped = np.cumsum(marks[:-1], dtype=np.int8) != 0
    if dropped[quotes].any():
        return None
    kept = buffer[~dropped].tobytes()
    return kept if data.endswith(b"\n") or not data else kept + b"\n"  # a last line cut to nothing stays a line


def _quotes_well_formed(data: bytes, delimiter: int) -> bool:
    """Whether every quote of ``data`` is where rfc4180's quoted fields put them (vectorised):
    quotes pair up, each pair's first quote starts a field or follows the previous pair (an
    escaped ``""``), its second ends the field or precedes the next pair. Then pyarrow reads
    the fields as Soufflé does; elsewhere (a quote inside an unquoted field, text after a
    closing quote, a quote left open) the reference reader decides."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buffer == ord('"'))
    if len(quotes) % 2:
        return False
    opening, closing = quotes[0::2], quotes[1::2]
    escaped = opening[1:] == closing[:-1] + 1  # pair i+1 opens right after pair i closes
    before = buffer[np.maximum(opening - 1, 0)]
    opens_field = (opening == 0) | (before == delimiter) | (before == ord("\n")) | np.append(False, escaped)
    last = len(buffer) - 1
    after = buffer[np.minimum(closing + 1, last)]
    crlf = (after == ord("\r")) & (buffer[np.minimum(closing + 2, last)] == ord("\n")) & (closing + 2 <= last)
    ends_field = (closing == last) | (after == delimiter) | (after == ord("\n")) | crlf
    return bool(np.all(opens_field) and np.all(ends_field | np.append(escaped, False)))


def _parse_numbers(column: Any, signed: bool) -> np.ndarray | None:
    """A text column's numbers, encoded, by the kernel over its values one a line; None when a
    value is no number of the type (or holds a line break or a ``\\r``, which would change
    the count)."""
    from dask_datalog.engine import text as texts

    values = texts.binary(column)
    n = len(values)
    text = texts.of_arrow(texts.terminated(values, b"\n")).bytes()
    if b"\r" in text:
        return None
    parsed = cpu_kernels.parse_fields(
        text, b"\n", np.zeros(1, dtype=np.int64), [cpu_kernels.NUMBER if signed else cpu_kernels.UNSIGNED]
    )
    return parsed[0][:, 0] if parsed is not None and len(parsed[0]) == n else None


def _parse_floats(column: Any) -> np.ndarray | None:
    """A text column's floats, encoded, by pyarrow's cast; None unless every value is a plain
    decimal (which the cast reads as strtof does) away from the ends of the float range (where
    strtof's ERANGE needs the exact value: the reference reader decides)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pc.all(pc.match_substring_regex(column, _PLAIN_FLOAT)).as_py():
        return None
    cast = pc.cast(column, pa.float32())
    tiny = pc.and_(pc.less_equal(pc.abs(cast), 2.0**-126), pc.invert(pc.match_substring_regex(column, _EXACT_ZERO)))
    if pc.any(tiny).as_py() or pc.any(pc.is_inf(cast)).as_py():
        return None
    return encode(_int_column(cast), "float")


def _read_slow(
    data: bytes,
    file: str,
    relation: ir.Relation,
    symbols: SymbolTable,
    fmt: FactFormat | str = "\t",
    first_line: int = 1,
) -> np.ndarray:
    """Line-by-line reader, Soufflé's ReadStreamCSV written out: the reference for the format,
    and the source of precise errors. ``first_line``: the file's line number of ``data``'s
    first line."""
    fmt = _format(fmt)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        bad_line = first_line + data.count(b"\n", 0, e.start)
        col = len(data[line_start : e.start].decode("utf-8")) + 1
        raise DatalogError(ir.Pos(file, bad_line, col), f"invalid UTF-8 byte 0x{data[e.start]:02x}") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the end of the last line, or an empty file
        lines.pop()
    target = _fields(relation, fmt).tolist()
    keep_empty = relation.types == ("symbol",) and len(target) == 1
    columns: list[list[Any]] = [[] for _ in range(relation.arity)]
    where: list[list[ir.Pos]] = [[] for _ in range(relation.arity)]  # of record fields, read once all are
    reader = _LineReader(lines, file, first_line, fmt.delimiter, fmt.rfc4180, relation, len(target))
    while reader.next_line():
        if not reader.line and not keep_empty:
            continue
        for k, j in enumerate(target):
            value, pos = reader.field(k)
            if j < 0:
                continue
            attr = relation.attributes[j]
            if attr.record is not None:
                where[j].append(pos)
            if attr.type == "symbol" or attr.record is not None:
                columns[j].append(value)
            else:
                columns[j].append(_fact_float(value, attr, pos) if attr.type == "float" else _fact_integer(value, attr, pos))
    rows = np.empty((len(columns[0]), relation.arity), dtype=np.uint32)
    for j, attr in enumerate(relation.attributes):
        if attr.record is not None:
            values, bad = record_text.read_column(columns[j], attr, relation, symbols)
            if bad is not None:
                row, error = bad
                pos = where[j][row]
                raise DatalogError(
                    replace(pos, col=pos.col + error.at),
                    f"cannot read {_shorten(repr(columns[j][row]))} as {attr.type_name} for column {attr.name}: {error}",
                )
            rows[:, j] = values
        elif attr.type == "symbol":
            rows[:, j] = symbols.intern_many(np.array(columns[j], dtype=object)) if columns[j] else []
        elif attr.type == "float":
            rows[:, j] = float_key(np.array(columns[j], dtype=np.uint32))
        else:
            rows[:, j] = encode(np.array(columns[j], dtype=np.int64), attr.type)
    return rows


class _LineReader:
    """Soufflé's ``readNextLine`` and ``nextElement`` over the lines of a text: the current
    line (its trailing ``\\r`` dropped), where its next field starts, and the fields read off
    it, a quoted one going on over later lines."""

    def __init__(
        self, lines: list[str], file: str, first_line: int, delimiter: str, rfc4180: bool, relation: ir.Relation, width: int
    ):
        self.lines, self.file, self.delimiter, self.rfc4180 = lines, file, delimiter, rfc4180
        self.brackets = "," in delimiter and not rfc4180
        self.relation, self.width = relation, width
        self.next, self.number = 0, first_line - 1
        self.line, self.crlf, self.start = "", False, 0

    def next_line(self) -> bool:
        if self.next == len(self.lines):
            return False
        line = self.lines[self.next]
        self.next += 1
        self.number += 1
        self.crlf = line.endswith("\r")
        self.line, self.start = line.removesuffix("\r") if self.crlf else line, 0
        return True

    def pos(self, index: int) -> ir.Pos:
        return ir.Pos(self.file, self.number, index + 1)

    def field(self, k: int) -> tuple[str, ir.Pos]:
        """Field k of the record (the fields before it read): its text and where it starts."""
        line, start, delimiter = self.line, self.start, self.delimiter
        if start > len(line):
            raise DatalogError(
                self.pos(len(line)),
                f"expected {self.width} {_delimiter_name(delimiter)}-separated field{'s' * (self.width != 1)} "
                f"for {signature(self.relation)}, found {k}",
            )
        pos = self.pos(start)
        if self.rfc4180 and line.startswith('"', start):
            return self._quoted(pos), pos
        end = self._bracket_end(start) if self.brackets else line.find(delimiter, start)
        end = len(line) if end < 0 else end
        self.start = end + len(delimiter)
        return line[start:end], pos

    def _quoted(self, pos: ir.Pos) -> str:
        """A quoted field: ``""`` is a quote, a line break inside is kept (``\\r\\n`` as it was)."""
        parts: list[str] = []
        at = self.start + 1
        while True:
            if at == len(self.line):
                ended_crlf = self.crlf
                if not self.next_line():
                    raise DatalogError(pos, "the quoted field is never closed")
                parts.append("\r\n" if ended_crlf else "\n")
                at = 0
                continue
            quote = self.line.find('"', at)
            if quote < 0:
                parts.append(self.line[at:])
                at = len(self.line)
                continue
            parts.append(self.line[at:quote])
            at = quote + 1
            if self.line.startswith('"', at):
                parts.append('"')
                at += 1
                continue
            break
        if at != len(self.line) and not self.line.startswith(self.delimiter, at):
            raise DatalogError(
                self.pos(at), f"expected {_delimiter_name(self.delimiter)} or the end of the line after the closing quote"
            )
        self.start = at + len(self.delimiter)
        return "".join(parts)

    def _bracket_end(self, start: int) -> int:
        """Where a field ends when the delimiter holds a comma: at the first delimiter outside
        brackets (Soufflé reads records ``[a, b]`` so); an unbalanced bracket is an error."""
        line, delimiter = self.line, self.delimiter
        unbounded = len(line) + 1

        def after(at: int) -> int:
            found = line.find(delimiter, at)
            return unbounded if found < 0 else found

        end, depth, next_delimiter = start, 0, after(start)
        while end < min(next_delimiter, len(line)) or depth:
            if end >= len(line):  # Soufflé reads past the line here
                break
            depth += {"[": 1, "]": -1}.get(line[end], 0)
            if depth < 0:
                break
            end += 1
            if end == next_delimiter and depth:
                next_delimiter = after(end)
        if depth:
            raise DatalogError(self.pos(start), f"unbalanced bracket in the field ({_delimiter_name(delimiter)} with brackets)")
        return end


def _fact_integer(field: str, attr: ir.Attribute, pos: ir.Pos) -> int:
    """A fact file's number or unsigned field as Soufflé's reader takes it (module docstring)."""
    grammar = _DECIMAL
    if attr.type == "unsigned":
        if field.startswith("0b"):
            grammar = _BINARY
        elif field.startswith("0x"):
            grammar = _HEX
        elif field.startswith("-") and _DECIMAL.fullmatch(field):
            raise DatalogError(pos, f"{_shorten(field)} starts with a minus, but column {attr.name} is unsigned")
    match = grammar.fullmatch(field)
    if match is None:
        found = "an empty field" if field == "" else _shorten(repr(field))
        raise DatalogError(pos, f"expected an integer for column {attr.name} ({attr.type_name}), found {found}")
    sign, digits = match.groups()
    value = _int(digits, {_BINARY: 2, _HEX: 16}.get(grammar, 10)) * (-1 if sign == "-" else 1)
    lo, hi = _BOUNDS[attr.type]
    if not lo <= value <= hi:
        raise _range_error(value, attr, pos, _shorten(field))
    return value


def _fact_float(field: str, attr: ir.Attribute, pos: ir.Pos) -> int:
    """A fact file's float field as Soufflé's reader takes it (module docstring): its bits."""
    bits = parse_float(field)
    if bits is None:
        raise _float_error(field, attr, pos)
    return bits


def _float_error(field: str, attr: ir.Attribute, pos: ir.Pos) -> DatalogError:
    """The error for a text that is no float strtof reads without ERANGE."""
    if is_float_text(field):
        return DatalogError(pos, f"{_shorten(field)} is out of the range of a 32-bit float for column {attr.name}")
    found = "an empty field" if field == "" else _shorten(repr(field))
    return DatalogError(pos, f"expected a float for column {attr.name} ({attr.type_name}), found {found}")


def _int(digits: str, base: int = 10) -> int:
    """Digits (an optional minus first, in base 10) as an int; too many for any 32-bit type
    (which ``int`` could refuse to convert: over 4300) as a value just out of range."""
    negative = digits.startswith("-")
    digits = digits.lstrip("-").lstrip("0")
    if len(digits) > 70:
        return -(1 << 70) if negative else 1 << 70
    return int(digits or "0", base) * (-1 if negative else 1)


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
        elif attr.type == "float":
            out[:, j] = encode(_float_column(column, attr, origin, j), "float")
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


def _float_column(column: np.ndarray, attr: ir.Attribute, origin: str, j: int) -> np.ndarray:
    """A column of floats, ints or their texts -> float32, each rounded to the nearest float
    (a text read as a float fact field is); one past the largest float is an error."""
    if column.dtype.kind in "fiu":
        values = column.astype(np.float64)
    else:
        values = np.empty(len(column), dtype=np.float64)
        for i, v in enumerate(column):
            pos = ir.Pos(origin, i + 1, j + 1)
            if isinstance(v, str):
                values[i] = float_value(_fact_float(v, attr, pos))
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                values[i] = float(v)
            else:
                raise DatalogError(pos, f"expected a float for column {attr.name} ({attr.type_name}), found {_show(v)}")
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32)
    bad = np.isinf(rounded) & ~np.isinf(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DatalogError(
            ir.Pos(origin, i + 1, j + 1), f"{_show(column[i])} does not fit in a 32-bit float for column {attr.name}"
        )
    return rounded


def _show(value: Any) -> str:
    """repr of a user's value, numpy scalars shown as the Python value they hold."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def is_dataframe(data: Any) -> bool:
    """A pandas DataFrame, recognised without importing pandas."""
    return type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")
