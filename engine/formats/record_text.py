"""Records and ADT values as text, read and written the way Soufflé 2.5 does (its
``ReadStream::readRecord``/``readADT`` and ``WriteStream::outputRecord``/``outputADT``).

Written: ``[1, abc]`` (elements joined by ", ", symbols as they are), ``nil``, ``[]`` for a
record type of no fields, ``$A(1, x)``, ``$B`` for a branch of no arguments. Read: the same, with
white space allowed before every element, comma and closing bracket; a symbol is either
double-quoted (a backslash takes the next character as it is) or runs up to the next ``,`` or
``]`` (``)`` in a branch), trailing spaces included; ``nil`` is any text starting with ``nil``;
numbers are C's ``stoi``/``stoul`` (a sign, decimal digits, within 32 bits), floats its ``stof``
(``values.parse_float``), written as Soufflé writes them. Nothing may follow a value in its
field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.values import (
    INT32_MAX,
    INT32_MIN,
    UINT32_MAX,
    SymbolTable,
    decode,
    decode_scalar,
    encode_scalar,
    float_end,
    format_float,
    parse_float,
)

_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_SPACE = " \t\n\v\f\r"
_BRANCH_NAME = re.compile(r"[A-Za-z0-9_?.]*")


class RecordSyntaxError(ValueError):
    """A field that is no value of its type; ``args[0]`` says why, ``at`` is the character."""

    def __init__(self, message: str, at: int):
        super().__init__(message)
        self.at = at


class _Reader:
    """One field's text -> its value, records interned in ``symbols.records`` (children first),
    symbols in ``symbols``."""

    def __init__(self, relation: ir.Relation, symbols: SymbolTable, text: str):
        self.relation, self.symbols, self.text, self.at = relation, symbols, text, 0

    def fail(self, message: str) -> RecordSyntaxError:
        return RecordSyntaxError(message, self.at)

    def skip_space(self) -> None:
        while self.at < len(self.text) and self.text[self.at] in _SPACE:
            self.at += 1

    def expect(self, char: str) -> None:
        self.skip_space()
        if self.at >= len(self.text):
            raise self.fail(f"expected '{char}', found the end of the field")
        if self.text[self.at] != char:
            raise self.fail(f"expected '{char}', found '{self.text[self.at]}'")
        self.at += 1

    def value(self, base: ir.BaseType, type_name: str | None, stops: str) -> int:
        """The encoded value of the element at hand: a record or ADT of ``type_name``, else of
        ``base``; ``stops``: what ends an unquoted symbol here. Read with a stack of the
        records open, not by recursion: a list of a million elements nests that deep."""
        opened: list[_Open] = []
        while True:
            result = self.start(base, type_name, stops, opened)
            while result is not None:
                if not opened:
                    return result
                top = opened[-1]
                top.values.append(result)
                if len(top.values) < len(top.fields):
                    self.expect(",")
                    result = None
                else:
                    self.expect(top.close)
                    opened.pop()
                    result = top.done(tuple(top.values))
            top = opened[-1]
            following = top.fields[len(top.values)]
            self.skip_space()
            base, type_name, stops = following.type, following.record, "," + top.close

    def start(self, base: ir.BaseType, type_name: str | None, stops: str, opened: list[_Open]) -> int | None:
        """A value read whole, or None once the record or branch it starts is open."""
        if type_name is None:
            return self.symbols.intern(self.symbol(stops)) if base == "symbol" else self.number(base)
        definition = self.relation.record_type(type_name)
        records = self.symbols.records
        if isinstance(definition, ir.RecordType):
            self.skip_space()
            if self.text.startswith("nil", self.at):
                self.at += 3
                return 0
            self.expect("[")
            kinds = tuple(f.type for f in definition.fields)
            if not kinds:
                self.expect("]")
                return records.intern_one((), ())
            opened.append(_Open(definition.fields, "]", lambda row: records.intern_one(kinds, row)))
            return None
        self.expect("$")
        name = _BRANCH_NAME.match(self.text, self.at)
        assert name is not None
        self.at = name.end()
        index = next((i for i, b in enumerate(definition.branches) if b.name == name.group(0)), None)
        if index is None:
            raise self.fail(f"{definition.name} has no branch ${name.group(0)}")
        fields = definition.branches[index].fields
        tag = encode_scalar(index, "number")
        if definition.enum:
            return tag
        if not fields:
            return records.intern_one(("number", "record"), (tag, records.intern_one((), ())))
        self.expect("(")

        def done(row: tuple[int, ...]) -> int:
            if len(fields) == 1:
                return records.intern_one(("number", fields[0].type), (tag, row[0]))
            return records.intern_one(("number", "record"), (tag, records.intern_one(tuple(f.type for f in fields), row)))

        opened.append(_Open(fields, ")", done))
        return None

    def number(self, base: ir.BaseType) -> int:
        if base == "float":
            end = float_end(self.text, self.at)
            bits = None if end is None else parse_float(self.text[self.at : end])
            if end is None or bits is None:
                raise self.fail("expected a float that fits in 32 bits")
            self.at = end
            return encode_scalar(bits, "float")
        match = _NUMBER.match(self.text, self.at)
        if match is None or (base == "unsigned" and match.group(1) == "-"):
            raise self.fail(f"expected {'an unsigned' if base == 'unsigned' else 'a'} number")
        number = int(match.group(2)) * (-1 if match.group(1) == "-" else 1)
        low, high = (INT32_MIN, INT32_MAX) if base == "number" else (0, UINT32_MAX)
        if not low <= number <= high:
            raise self.fail(f"{match.group(0).strip()} does not fit in a 32-bit {base}")
        self.at = match.end()
        return encode_scalar(number, base)

    def symbol(self, stops: str) -> str:
        text = self.text
        if text.startswith('"', self.at):
            out, at = [], self.at + 1
            while at < len(text) and text[at] != '"':
                at += text[at] == "\\"
                out.append(text[at : at + 1])
                at += 1
            if at >= len(text):
                raise self.fail("unterminated quoted symbol")
            self.at = at + 1
            return "".join(out)
        end = min((i for i in (text.find(c, self.at) for c in stops) if i >= 0), default=-1)
        if end < 0:
            raise self.fail(f"expected '{stops[-1]}', found the end of the field")
        symbol, self.at = text[self.at : end], end
        return symbol


@dataclass
class _Open:
    """A record or branch being read: its fields, what closes it, what its elements become once
    all are read, and those read so far."""

    fields: tuple[ir.Attribute, ...]
    close: str
    done: Callable[[tuple[int, ...]], int]
    values: list[int] = field(default_factory=list)


def read_value(text: str, attribute: ir.Attribute, relation: ir.Relation, symbols: SymbolTable) -> int:
    """The encoded value of one field of a record or ADT column (raises RecordSyntaxError)."""
    assert attribute.record is not None
    reader = _Reader(relation, symbols, text)
    value = reader.value(attribute.type, attribute.record, "")
    if reader.at != len(text):
        raise reader.fail(f"unexpected '{text[reader.at]}' after the value")
    return value


def read_column(
    texts: list[str], attribute: ir.Attribute, relation: ir.Relation, symbols: SymbolTable
) -> tuple[np.ndarray, tuple[int, RecordSyntaxError] | None]:
    """The encoded values of a column's fields, each distinct text read once; on a bad field,
    (the first bad row, its error) instead of raising, so the caller can say where it is."""
    distinct, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    values = np.empty(len(distinct), dtype=np.uint32)
    for k, text in enumerate(distinct):
        try:
            values[k] = read_value(text, attribute, relation, symbols)
        except RecordSyntaxError as error:
            return values[:0], (int(np.argmax(inverse.reshape(-1) == k)), error)
    return values[inverse.reshape(-1)], None


class _Writer:
    """Texts of the records and ADT values of one relation's columns. Every record reachable
    from the values asked for is found first (a vectorised unpacking per type and level), then
    each value asked for is written out from those shapes, depth first with a stack (a long
    list nests deep), in time its text's length."""

    def __init__(self, relation: ir.Relation, symbols: SymbolTable, rfc4180: bool, json: str | None = None):
        self.relation, self.symbols, self.rfc4180, self.json = relation, symbols, rfc4180, json
        self.shapes: dict[tuple[str, int], tuple[str, list[tuple[ir.Attribute, int]], str]] = {}

    def column(self, values: np.ndarray, attribute: ir.Attribute) -> list[str]:
        assert attribute.record is not None
        self.find(attribute.record, values)
        return [self.text(attribute, int(v)) for v in values]

    def text(self, attribute: ir.Attribute, value: int) -> str:
        pieces: list[str] = []
        pending: list[str | tuple[ir.Attribute, int]] = [(attribute, value)]
        while pending:
            item = pending.pop()
            if isinstance(item, str):
                pieces.append(item)
                continue
            f, v = item
            shape = self.shapes.get((f.record, v)) if f.record is not None else None
            if shape is None:
                pieces.append(self.scalar(f, v))
                continue
            opening, elements, closing = shape
            pending.append(closing)
            for k in reversed(range(len(elements))):
                pending.append(elements[k])
                if self.json == "object":
                    pending.append(f"{self.quote(elements[k][0].name)}: ")
                if k:
                    pending.append(", ")
            pending.append(opening)
        return "".join(pieces)

    def scalar(self, f: ir.Attribute, value: int) -> str:
        """A value that holds no record: a number, a symbol, nil, an enum's branch."""
        if f.record is not None:
            definition = self.relation.record_type(f.record)
            if isinstance(definition, ir.AdtType):
                assert definition.enum, f"no record {value} of {f.record}"
                return "$" + definition.branches[int(decode(np.array([value], np.uint32), "number")[0])].name
            assert value == 0, f"no record {value} of {f.record}"
            return "null" if self.json else "nil"
        if self.json:
            return self.json_scalar(f, value)
        if f.type == "symbol":
            text = str(self.symbols.lookup(np.array([value]))[0])
            return '""' + text.replace('"', '\\""') + '""' if self.rfc4180 else text
        if f.type == "float":
            return format_float(decode_scalar(value, "float"))
        return str(decode(np.array([value], np.uint32), f.type)[0])

    def quote(self, text: str) -> str:
        from dask_datalog.engine.formats.json_text import quote  # json_text writes its tuples with this module

        return quote(text)

    def json_scalar(self, f: ir.Attribute, value: int) -> str:
        from dask_datalog.engine.formats.json_text import format_values

        if f.type == "symbol":
            return self.quote(str(self.symbols.lookup(np.array([value]))[0]))
        return format_values(np.array([value], np.uint32), f.type)[0]

    def find(self, type_name: str, ids: np.ndarray) -> None:
        """Every record reachable from ``ids`` (of ``type_name``) into ``shapes``, level by level."""
        frontier: dict[str, np.ndarray] = {type_name: ids}
        while frontier:
            following: dict[str, list[np.ndarray]] = {}
            for name, values in frontier.items():
                values = np.unique(values)
                values = values[[(name, int(v)) not in self.shapes for v in values]] if values.size else values
                for f, children in self.unpack(name, values):
                    following.setdefault(f, []).append(children)
            frontier = {name: np.concatenate(parts) for name, parts in following.items()}

    def unpack(self, name: str, ids: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """Records the shapes of ``ids`` of type ``name``; yields (type, ids) of their nested
        records and ADT values."""
        definition = self.relation.record_type(name)
        records = self.symbols.records
        if isinstance(definition, ir.RecordType):
            found, rows = records.unpack(tuple(f.type for f in definition.fields), ids)
            opening, closing = ("{", "}") if self.json == "object" else ("[", "]")
            yield from self.shape(name, ids[found], rows, definition.fields, opening, closing)
            return
        if definition.enum:
            return
        for index, branch in enumerate(definition.branches):
            payload = branch.fields[0].type if len(branch.fields) == 1 else "record"
            found, rows = records.unpack(("number", payload), ids)
            mine = rows[:, 0] == encode_scalar(index, "number")
            which, rows = ids[found][mine], rows[mine]
            if len(branch.fields) == 1:
                yield from self.shape(name, which, rows[:, 1:], branch.fields, f"${branch.name}(", ")")
                continue
            inner, elements = records.unpack(tuple(f.type for f in branch.fields), rows[:, 1])
            opening, closing = (f"${branch.name}(", ")") if branch.fields else (f"${branch.name}", "")
            yield from self.shape(name, which[inner], elements, branch.fields, opening, closing)

    def shape(
        self, name: str, ids: np.ndarray, rows: np.ndarray, fields: tuple[ir.Attribute, ...], opening: str, closing: str
    ) -> Iterator[tuple[str, np.ndarray]]:
        for i, row in zip(ids.tolist(), rows.tolist()):
            self.shapes[(name, i)] = (opening, list(zip(fields, row)), closing)
        for j, f in enumerate(fields):
            if f.record is not None and rows.shape[0]:
                yield f.record, rows[:, j]


def write_column(
    values: np.ndarray,
    attribute: ir.Attribute,
    relation: ir.Relation,
    symbols: SymbolTable,
    rfc4180: bool = False,
    json: str | None = None,
) -> np.ndarray:
    """The texts of a record or ADT column's encoded values (an object array), each distinct
    value rendered once; ``rfc4180``: as Soufflé's rfc4180 output writes them, in quotes, the
    symbols inside in doubled quotes (a quote in one as ``\\""``); ``json`` "list" or
    "object": as Soufflé's JSON writer writes records (``json_text``; no ADTs)."""
    distinct, inverse = np.unique(np.asarray(values), return_inverse=True)
    written = _Writer(relation, symbols, rfc4180, json).column(distinct, attribute)
    texts = np.array([f'"{t}"' for t in written] if rfc4180 else written, dtype=object)
    return texts[inverse.reshape(-1)] if len(texts) else np.empty(0, dtype=object)


def any_records(relation: ir.Relation) -> bool:
    """Whether a relation has a record or ADT column (read and written as text here)."""
    return any(a.record is not None for a in relation.attributes)
