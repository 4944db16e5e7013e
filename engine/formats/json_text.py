"""Relations as Soufflé 2.5's JSON (``IO=json`` on stdout, ``IO=jsonfile``), both ways
(its WriteStreamJSON.h and ReadStreamJSON.h).

Written: ``[`` then each tuple, ``,\\n`` between them, then ``]\\n``; a tuple is a list of its
values, or with ``format=object`` an object keyed by attribute names; a record is a list (an
object keyed by its field names), ``nil`` is ``null``; a symbol is a JSON string escaped as
json11 escapes (control characters, ``"``, ``\\``, U+2028/9; other text as it is); an unsigned
is written as the signed number of its bits and a float as C++ streams print it (``%g``),
as Soufflé does. A nullary relation that holds its tuple is ``[null\\n]``. ADT values, which
Soufflé 2.5 cannot write as JSON (it stops), are refused when the program is checked.

Read: one JSON array whose first element says the format (a list, or an object keyed by
attribute names); values as json11 gives them to Soufflé: a number's integer part (an
unsigned takes a negative one's bits, one past 32 bits is the smallest number), a missing or mistyped number 0, a missing or mistyped
symbol the empty string, a missing or ``null`` record ``nil``. What Soufflé 2.5 reads as
garbage is refused instead: floats (it stores the integer part as the float's bits) and an
object that lacks an attribute (it reads the zero id of whatever was interned first).
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats import record_text
from dask_datalog.engine.values import INT32_MAX, INT32_MIN, SymbolTable, decode, decode_scalar, encode_scalar, float_value

# json11's escapes: the named ones, other control characters as \u00XX, and U+2028/9.
_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def quote(text: str) -> str:
    """A symbol as json11's ``dump`` writes it."""
    return '"' + text.translate(_ESCAPES) + '"'


def format_float(bits: int) -> str:
    """A float as ``ostream << float`` prints it: ``%g``, six significant digits."""
    value = float_value(bits)
    if value != value:
        return "-nan" if bits >= 0x80000000 else "nan"
    return f"{value:g}"


def format_rows(rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable, objects: bool) -> bytes:
    """Rows (in output order) as Soufflé's JSON elements, each followed by ``,\\n`` (a nullary
    relation's tuple: ``null\\n``); ``document`` frames them."""
    if relation.arity == 0:
        return b"null\n" if len(rows) else b""
    rows = np.asarray(rows)
    columns = []
    for j, a in enumerate(relation.attributes):
        values = np.ascontiguousarray(rows[:, j])
        if a.record is not None:
            texts = record_text.write_column(values, a, relation, symbols, json="object" if objects else "list")
        elif a.type == "symbol":
            distinct, inverse = np.unique(values, return_inverse=True)
            texts = np.array([quote(s) for s in symbols.lookup(distinct)], dtype=object)[inverse.reshape(-1)]
        else:
            texts = np.array(format_values(values, a.type), dtype=object)
        columns.append([f"{quote(a.name)}: {t}" for t in texts] if objects else texts)
    opening, closing = ("{", "}") if objects else ("[", "]")
    lines = (opening + ", ".join(map(str, row)) + closing + ",\n" for row in zip(*columns))
    return "".join(lines).encode("utf-8", "surrogateescape")


def format_values(values: np.ndarray, base: ir.BaseType) -> list[str]:
    """Numbers as Soufflé's JSON writer prints them (an unsigned as its bits' signed number)."""
    if base == "float":
        return [format_float(decode_scalar(b, "float")) for b in values.tolist()]
    return [str(v) for v in (values.view(np.int32) if base == "unsigned" else decode(values, base)).tolist()]


def document(elements: bytes) -> bytes:
    """The whole JSON text of a relation from its elements (``format_rows``, joined in order)."""
    return b"[" + elements.removesuffix(b",\n") + b"]\n"


def refusal(relation: ir.Relation) -> str | None:
    """Why Soufflé 2.5 cannot write ``relation`` as JSON, if it cannot: it stops at an ADT."""
    seen: set[str] = set()
    pending = [a.record for a in relation.attributes if a.record is not None]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        definition = relation.record_type(name)
        if isinstance(definition, ir.AdtType):
            return f"the ADT {name} (Soufflé 2.5 stops at ADT values in JSON)"
        pending += [f.record for f in definition.fields if f.record is not None]
    return None


# ----------------------------------------------------------------------------- reading


def _undecodable(error: UnicodeError) -> tuple[bytes, int]:
    """The bytes of the surrogates in a JSON string: a surrogate escape the raw byte it stands
    for (a file's bytes that are no UTF-8), any other one (a ``\\ud800`` escape, alone) its
    3-byte form, as json11 writes it into a C++ string."""
    assert isinstance(error, UnicodeEncodeError)
    chars = error.object[error.start : error.end]
    out = b"".join(bytes([ord(c) - 0xDC00]) if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("utf-8", "surrogatepass") for c in chars)
    return out, error.end


codecs.register_error("dask_datalog_json", _undecodable)


def _as_bytes(text: str) -> str:
    """A JSON string as the bytes Soufflé holds for it, in the run's form of a string (bytes
    that are no UTF-8 as surrogate escapes)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "dask_datalog_json").decode("utf-8", "surrogateescape")


def read_rows(data: bytes, file: str, relation: ir.Relation, symbols: SymbolTable) -> np.ndarray:
    """A JSON document (a file's, or standard input's) -> encoded rows; errors name ``file``."""
    where = ir.Pos(file, 1, 1)
    try:
        document = json.loads(data.decode("utf-8", "surrogateescape")) if data.strip() else None
    except (ValueError, RecursionError) as error:
        raise DatalogError(where, f"cannot read JSON for {relation.name}: {error}") from None
    if not isinstance(document, list):
        raise DatalogError(where, f"JSON input for {relation.name} must be one array of tuples")
    if not document:
        return np.empty((0, relation.arity), dtype=np.uint32)
    objects = isinstance(document[0], dict)
    if not objects and not isinstance(document[0], list):
        raise DatalogError(where, f"JSON input for {relation.name}: the input is neither list nor object format")
    reader = _Reader(relation, symbols, where)
    rows = np.empty((len(document), relation.arity), dtype=np.uint32)
    try:
        for j, a in enumerate(relation.attributes):
            rows[:, j] = [reader.value(reader.element(t, j, a.name, objects, relation.name), a) for t in document]
    except RecursionError:
        raise DatalogError(where, f"JSON input for {relation.name}: records nested too deep") from None
    return rows


class _Reader:
    """Values of one document as json11 hands them to Soufflé's reader."""

    def __init__(self, relation: ir.Relation, symbols: SymbolTable, where: ir.Pos):
        self.relation, self.symbols, self.where = relation, symbols, where

    def element(self, holder: Any, j: int, name: str, objects: bool, what: str) -> Any:
        """Element ``j`` (attribute or field ``name``) of a tuple or record, None when absent
        from a list; an object must hold every attribute and no other."""
        if objects:
            if not isinstance(holder, dict):
                raise DatalogError(self.where, f"JSON input for {self.relation.name}: {json.dumps(holder)[:60]} is no object")
            unknown = set(holder) - {a for a in self._names(what)}
            if unknown:
                raise DatalogError(self.where, f"JSON input for {self.relation.name}: invalid parameter: {sorted(unknown)[0]}")
            if name not in holder:
                raise DatalogError(
                    self.where, f"JSON input for {self.relation.name}: {what} lacks {name} (Soufflé 2.5 reads garbage)"
                )
            return holder[name]
        if not isinstance(holder, list):
            raise DatalogError(self.where, f"JSON input for {self.relation.name}: {json.dumps(holder)[:60]} is no list")
        return holder[j] if j < len(holder) else None

    def _names(self, what: str) -> list[str]:
        if what == self.relation.name:
            return [a.name for a in self.relation.attributes]
        definition = self.relation.record_type(what)
        assert isinstance(definition, ir.RecordType)
        return [f.name for f in definition.fields]

    def value(self, item: Any, a: ir.Attribute) -> int:
        """The encoded value of ``item`` for attribute (or field) ``a`` (records recursively:
        Python's json nests no deeper than the interpreter's recursion, checked in ``read_rows``)."""
        if a.record is None:
            return self.scalar(item, a)
        return self.record(item, a)

    def record(self, item: Any, a: ir.Attribute) -> int:
        assert a.record is not None
        definition = self.relation.record_type(a.record)
        if not isinstance(definition, ir.RecordType):
            raise DatalogError(self.where, f"unsupported: the ADT {a.record} in JSON input (Soufflé 2.5 stops at it)")
        if item is None:
            return 0
        objects = isinstance(item, dict)
        kinds = tuple(f.type for f in definition.fields)
        elements = tuple(self.value(self.element(item, k, f.name, objects, a.record), f) for k, f in enumerate(definition.fields))
        return self.symbols.records.intern_one(kinds, elements)

    def scalar(self, item: Any, a: ir.Attribute) -> int:
        if a.type == "symbol":
            return self.symbols.intern(_as_bytes(item) if isinstance(item, str) else "")
        if a.type == "float":
            raise DatalogError(
                self.where, f"unsupported: float {a.name} in JSON input (Soufflé 2.5 reads the integer part as the float's bits)"
            )
        number = 0 if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) else int(item)
        if not INT32_MIN <= number <= INT32_MAX:  # json11's (int) cast of the double, as x86 makes it
            number = INT32_MIN
        return encode_scalar(number & 0xFFFFFFFF, "unsigned") if a.type == "unsigned" else encode_scalar(number, "number")
