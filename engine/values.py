"""The one internal value representation: every attribute is a uint32 whose unsigned order is
the attribute's own order, so sort, unique, searchsorted and packing two columns into a uint64
need no per-type code.

- ``number`` (int32): the bit pattern with the sign bit flipped.
- ``unsigned`` (uint32): itself.
- ``float`` (IEEE binary32, Soufflé's 32-bit float): the bit pattern with the sign bit flipped
  when positive and every bit flipped when negative, so unsigned order is float order (-0.0
  just below +0.0, NaNs beyond the infinities). Distinct bit patterns are distinct values, as in
  Soufflé: -0.0 and +0.0 are two tuples, though ``=`` finds them equal.
- ``symbol``: the id from the run's SymbolTable, whose ids are in text order on every shard
  (``SymbolTable`` says how it is made), so symbols sort like numbers.
- ``record`` (records, ADTs that are not enums): the id from the run's RecordTable, 0 for nil;
  ordered by id, which only ``=`` and ``!=`` compare (an enum is its branch's number).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from dask_datalog.engine import texts as tx
from dask_datalog.engine.ir import BaseType, Const, Record

SIGN = np.uint32(0x80000000)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1


def encode(values: Any, type: BaseType, xp: Any = np) -> Any:
    """int32 / uint32 / float32 / symbol-id array -> encoded uint32 array."""
    if type == "number":
        return values.astype(xp.int32).view(xp.uint32) ^ SIGN
    if type == "float":
        return float_key(values.astype(xp.float32).view(xp.uint32), xp)
    return values.astype(xp.uint32)


def decode(encoded: Any, type: BaseType, xp: Any = np) -> Any:
    """Encoded uint32 array -> int32 (number), float32 (float) or uint32 (unsigned, symbol id)."""
    if type == "number":
        return (encoded ^ SIGN).view(xp.int32)
    if type == "float":
        return float_bits(encoded, xp).view(xp.float32)
    return encoded


def float_key(bits: Any, xp: Any = np) -> Any:
    """IEEE float32 bit patterns (uint32) -> their encoding, whose unsigned order is float order."""
    return bits ^ xp.where(bits >= SIGN, np.uint32(0xFFFFFFFF), SIGN)


def float_bits(encoded: Any, xp: Any = np) -> Any:
    """The inverse of ``float_key``."""
    return encoded ^ xp.where(encoded >= SIGN, SIGN, np.uint32(0xFFFFFFFF))


_SATURATED = np.uint64(1 << 63)


def _saturating_mul(x: Any, y: Any, xp: Any) -> Any:
    """x * y for uint64 arrays of at most 2^63, saturated at 2^63 instead of wrapping."""
    over = y > _SATURATED // xp.maximum(x, np.uint64(1))
    return xp.where(over, _SATURATED, x * y)


def _saturating_power(base: Any, exponent: Any, xp: Any) -> Any:
    """base ^ exponent for uint64 arrays, exact up to 2^63 and 2^63 beyond: square and
    multiply over the exponent's bits, vectorised over the rows."""
    result = xp.ones_like(base)
    base = xp.minimum(base, _SATURATED)
    bits = int(exponent.max()).bit_length() if exponent.shape[0] else 0
    for _ in range(bits):
        odd = (exponent & np.uint64(1)) == np.uint64(1)
        result = xp.where(odd, _saturating_mul(result, base, xp), result)
        base = _saturating_mul(base, base, xp)
        exponent = exponent >> np.uint64(1)
    return result


def power(a: Any, b: Any, type: BaseType, xp: Any = np) -> tuple[Any, Any]:
    """Soufflé's ``a ^ b``: the C cast of ``pow((double)a, (double)b)`` to the type, computed
    exactly in integers. number (int64 arrays in, int64 out): the truncated power when it fits
    in int32, else INT32_MIN (x86's value for an out-of-range cast, 0^-1 = inf included).
    unsigned (uint64 in and out): the low 32 bits of the power rounded to a double, 0 from
    2^63 up (the cast goes through int64). Also returns where the result is undefined:
    unsigned powers so close to halfway between two doubles that the libm's rounding decides
    (see POWER_UNDEFINED); Soufflé's values there differ between C libraries."""
    if type == "number":
        magnitude = _saturating_power(xp.abs(a).astype(xp.uint64), xp.maximum(b, 0).astype(xp.uint64), xp)
        odd = (b & 1) == 1
        signed = magnitude.astype(xp.int64)
        value = xp.where(magnitude < np.uint64(1 << 31), xp.where((a < 0) & odd, -signed, signed), INT32_MIN)
        # A negative exponent: |a ^ b| < 1 truncates to 0, but for bases 1, -1 and 0 (inf).
        inverse = xp.where(a == 1, 1, xp.where(a == -1, xp.where(odd, -1, 1), xp.where(a == 0, INT32_MIN, 0)))
        return xp.where(b < 0, inverse, value), xp.zeros(a.shape, dtype=bool)
    r = _saturating_power(a, b, xp)
    shift = sum((r >= np.uint64(1 << k)).astype(xp.uint64) for k in range(53, 63))  # bits past 53
    ulp = np.uint64(1) << shift
    low = r & (ulp - np.uint64(1))
    half = ulp >> np.uint64(1)
    rounded = r - low + xp.where(low > half, ulp, np.uint64(0))
    distance = xp.where(low > half, low - half, half - low)
    undefined = (shift > 0) & (low != 0) & (r < _SATURATED) & (distance * np.uint64(20) <= ulp)
    value = xp.where(rounded >= _SATURATED, np.uint64(0), rounded & np.uint64(0xFFFFFFFF))
    return value, undefined


_NUMBER_SYNTAX = {
    base: re.compile(r"[ \t\n\v\f\r]*([+-]?)" + prefix + f"({digits}+)")
    for base, prefix, digits in ((10, "", "[0-9]"), (2, "", "[01]"), (16, "(?:0[xX](?=[0-9a-fA-F]))?", "[0-9a-fA-F]"))
}


def parse_number(text: str) -> int | None:
    """Soufflé's ``to_number``, None where it stops the run: a decimal, ``0x`` hex or ``0b``
    binary prefix of the text (C's strtol: leading white space and a sign allowed, anything
    after the digits ignored) that fits in int32."""
    base = 2 if text.startswith(("0b", "-0b")) else 16 if text.startswith(("0x", "-0x")) else 10
    if base == 2:  # Soufflé drops the 0b itself: strtol does not know it
        text = text.replace("0b", "", 1)
    match = _NUMBER_SYNTAX[base].match(text)
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    if len(digits) > 40:  # far out of range; int() of very long strings is refused
        return None
    value = int(digits, base) * (-1 if sign == "-" else 1)
    return value if INT32_MIN <= value <= INT32_MAX else None


def parse_unsigned(text: str) -> int | None:
    """Soufflé's ``to_unsigned`` of a symbol, None where it stops the run: C's strtoul of a
    ``0b`` binary (the ``0b`` removed), ``0x`` hex or decimal prefix of the text (white space and
    a sign allowed, anything after the digits ignored), taken mod 2^32 (the C cast), but not
    text starting with ``-`` or past 2^64 - 1 (where C++'s stoul throws)."""
    if text.startswith("-"):
        return None
    base = 2 if text.startswith("0b") else 16 if text.startswith("0x") else 10
    match = _NUMBER_SYNTAX[base].match(text[2:] if base == 2 else text)
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    if len(digits) > 64:
        return None
    value = int(digits, base)
    if value >= 1 << 64:
        return None
    return (-value if sign == "-" else value) & 0xFFFFFFFF


def encode_scalar(value: int, type: BaseType) -> int:
    """A constant's encoded value as a Python int: a float constant is its IEEE bit pattern
    (symbols are interned by the caller)."""
    if type == "number":
        return (value & 0xFFFFFFFF) ^ 0x80000000
    if type == "float":
        return value ^ (0xFFFFFFFF if value >= 0x80000000 else 0x80000000)
    return value & 0xFFFFFFFF


def decode_scalar(encoded: int, type: BaseType) -> int:
    """The inverse of ``encode_scalar``."""
    if type == "number":
        value = encoded ^ 0x80000000
        return value - (1 << 32) if value >= 1 << 31 else value
    if type == "float":
        return encoded ^ (0x80000000 if encoded >= 0x80000000 else 0xFFFFFFFF)
    return encoded


# ---- floats: Soufflé's RamFloat is a C float, read by strtof and printed by iostream ----

FLOAT_NAN = 0x7FC00000  # a quiet NaN; x86's own NaN (0/0, inf - inf) is FLOAT_NAN | SIGN
FLOAT_INF = 0x7F800000
FLOAT_MAX = 0x7F7FFFFF
_MIN_NORMAL_EXPONENT = -126


def float_value(bits: int) -> float:
    """The float32 with IEEE bit pattern ``bits``, as a Python float."""
    value: float = struct.unpack("<f", struct.pack("<I", bits))[0]
    return value


def float_of(value: float) -> int:
    """A Python float that is a float32 value -> its bit pattern."""
    bits: int = struct.unpack("<I", struct.pack("<f", value))[0]
    return bits


def format_float(bits: int) -> str:
    """Soufflé's text of a float: C++ iostream at max_digits10 (9) significant digits, which is
    printf's ``%.9g`` (enough to read the same float back); a NaN is ``nan`` or ``-nan`` by its
    sign bit, as glibc prints it."""
    value = float_value(bits)
    if value != value:
        return "-nan" if bits >= 0x80000000 else "nan"
    return f"{value:.9g}"


def round_float32(num: int, den: int) -> tuple[int, bool]:
    """num / den (num >= 0, den > 0) rounded to the nearest float32, ties to even, as strtof
    and C's conversions round: (bit pattern, exact). Past the largest float: infinity, inexact."""
    if num == 0:
        return 0, True
    e = num.bit_length() - den.bit_length()  # 2^(e-1) < num/den < 2^(e+1)
    if (num << max(0, -e)) < (den << max(0, e)):
        e -= 1  # now 2^e <= num/den < 2^(e+1)
    quantum = max(e, _MIN_NORMAL_EXPONENT) - 23  # the spacing of floats there, as a power of 2
    n, d = (num, den << quantum) if quantum >= 0 else (num << -quantum, den)
    mantissa, rest = divmod(n, d)
    if 2 * rest > d or (2 * rest == d and mantissa & 1):
        mantissa += 1
    if mantissa == 1 << 24:  # rounded up into the next binade
        mantissa, quantum = 1 << 23, quantum + 1
    if mantissa < 1 << 23:  # subnormal (quantum is 2^-149)
        return mantissa, rest == 0
    biased = quantum + 23 + 127
    if biased >= 255:
        return FLOAT_INF, False
    return (biased << 23) | (mantissa - (1 << 23)), rest == 0


_FLOAT_SYNTAX = re.compile(
    r"[ \t\n\v\f\r]*(?P<sign>[+-]?)(?:"
    r"0[xX](?P<hex>[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP](?P<pexp>[+-]?[0-9]+))?"
    r"|(?P<dec>[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE](?P<eexp>[+-]?[0-9]+))?"
    r"|(?P<inf>[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    r"|(?P<nan>[nN][aA][nN](?:\([0-9A-Za-z_]*\))?))"
)
_DIGITS_KEPT = 120  # more decimal digits than any float32 rounding can depend on


def is_float_text(text: str) -> bool:
    """Whether all of ``text`` is a float as strtof writes one, in range or not."""
    return float_end(text) == len(text)


def float_end(text: str, at: int = 0) -> int | None:
    """Where the float strtof reads from ``text[at:]`` ends (None: it reads none), as Soufflé
    reads a float element of a record."""
    match = _FLOAT_SYNTAX.match(text, at)
    return None if match is None else match.end()


def parse_float(text: str, whole: bool = True) -> int | None:
    """C's strtof, as Soufflé reads a float (a fact field with ``whole``: the field must be
    all number; ``to_float``: a prefix, anything after ignored): white space, a sign, then a
    decimal or ``0x`` hex float with optional exponent, ``inf``/``infinity`` or ``nan``, any
    case. Its bit pattern, or None where strtof finds no number or sets ERANGE (C++'s stof
    then throws): past the largest float, or below the smallest normal one and inexact."""
    match = _FLOAT_SYNTAX.match(text)
    if match is None or (whole and match.end() != len(text)):
        return None
    sign = 0x80000000 if match["sign"] == "-" else 0
    if match["inf"]:
        return sign | FLOAT_INF
    if match["nan"]:
        return sign | FLOAT_NAN
    if match["hex"] is not None:
        whole_digits, _, fraction = match["hex"].partition(".")
        digits, base, scale = whole_digits + fraction, 16, -4 * len(fraction)
        exponent = int(match["pexp"] or "0") if len(match["pexp"] or "") < 12 else None
    else:
        whole_digits, _, fraction = match["dec"].partition(".")
        digits, base, scale = whole_digits + fraction, 10, -len(fraction)
        exponent = int(match["eexp"] or "0") if len(match["eexp"] or "") < 12 else None
    digits = digits.lstrip("0")
    if not digits:
        return sign
    if exponent is None:  # an exponent of a dozen digits: far out of range either way
        exponent = -(10**12) if (match["pexp"] or match["eexp"] or "").startswith("-") else 10**12
    if len(digits) > _DIGITS_KEPT:  # the digits dropped only decide whether it is exact
        kept = digits[:_DIGITS_KEPT] + ("1" if digits[_DIGITS_KEPT:].strip("0") else "")
        scale += len(digits) - len(kept)
        digits = kept
    mantissa = int(digits, base)
    power = exponent + scale  # of 10, or of 2 for hex
    magnitude = len(digits) + power if base == 10 else mantissa.bit_length() + power
    if magnitude > (40 if base == 10 else 130):
        return None  # overflow
    if magnitude < (-50 if base == 10 else -160):
        return None  # underflow to zero, inexact
    radix = 10 if base == 10 else 2
    num, den = (mantissa * radix**power, 1) if power >= 0 else (mantissa, radix**-power)
    bits, exact = round_float32(num, den)
    tiny = False
    if num << -_MIN_NORMAL_EXPONENT < den:  # below the smallest normal float: x86 glibc calls it
        # tiny unless 24 bits of precision (the exponent unbounded) round it up to that float
        scaled, rest = divmod(num << 150, den)
        tiny = scaled + (2 * rest > den or (2 * rest == den and scaled & 1)) < 1 << 24
    if bits == FLOAT_INF or (tiny and not exact):
        return None
    return sign | bits


class SymbolTable:
    """The strings of a run and their uint32 ids, ids never reused.

    One policy on every path: a run's table is made once, before evaluation, by
    ``sorted_union`` of every string its inputs hold (on every shard) and of the program's
    constants; ids are the strings' text order (their UTF-8 bytes compared, as C++ compares
    strings), so the table is the same on every shard and packed rows sort in output order.
    The one declared place where strings may join that table later is ``append`` (for
    functors that make strings during evaluation): every shard must call it with the same
    strings in the same order, and ids from ``ordered`` on are then out of text order, which
    output handles (``text_ordered``, ``reordered``). While a shard reads its inputs it
    interns into a table of its own (``SymbolBatch``, ``intern``: ids in reading order), which
    is re-encoded into the agreed one (``sorted_union_maps``).

    The texts are held as NumPy arrays of UTF-8 bytes (``engine/texts.py``: a ``substr`` cut
    out of a character lives on as its bytes), so the bulk operations (interning a column, the
    union, re-encoding, text order, gathering a column's texts) are the CPU kernels' hash index
    and sort over whole columns, without pyarrow. Python strings and a dict of them are made
    only for the per-string paths (program constants, the reference readers), and then only
    once per string."""

    def __init__(self) -> None:
        self._table = tx.Table()  # the texts of ids 0..len(_table)
        self._pending: list[str] = []  # strings interned one at a time, ids len(_table).. (in _strings)
        self._strings: list[str] = []  # Python strings of the first ids, made when first needed
        self._ids: dict[str, int] = {}  # string -> id for the first len(_ids) ids, likewise
        self._objects = np.zeros(0, dtype=object)  # the strings as an object array, for lookup
        self._found: dict[str, int] = {}  # id_of's answers: no Python string per id for a few constants
        self._holding: dict[tuple[str, ...], tuple[int, bool]] = {}  # holds_any's answers, and the ids they cover
        self.ordered = 0  # ids below this are in text order
        self.records = RecordTable()  # the run's records, whose symbol elements are ids here

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its texts alone: the Python strings, the dict and the index are caches,
        made again where needed."""
        self.texts()  # the pending strings join the texts
        caches = SymbolTable().__dict__
        return {**self.__dict__, **{k: caches[k] for k in ("_strings", "_ids", "_objects", "_found", "_holding")}}

    @classmethod
    def _of_texts(cls, held: tx.Texts, ordered: int) -> SymbolTable:
        table = cls()
        table._table = tx.Table(held)
        table.ordered = ordered
        return table

    @classmethod
    def sorted_union(cls, collections: Iterable[SymbolTable | Iterable[str] | tx.Texts]) -> SymbolTable:
        """A table of every string in ``collections`` (tables, strings, or texts) whose ids are
        the strings' text order. It depends only on the set of strings, so shards that built
        local tables agree on it by exchanging their texts."""
        return cls.sorted_union_maps(collections)[0]

    @classmethod
    def sorted_union_maps(
        cls, collections: Iterable[SymbolTable | Iterable[str] | tx.Texts]
    ) -> tuple[SymbolTable, list[np.ndarray]]:
        """``sorted_union``, and per collection the union's id of each of its strings, in their
        order (of a table: ``m[id there]``, which re-encodes its symbol columns into the union),
        from the one hash pass that finds the distinct strings rather than a lookup of every
        string again."""
        parts = [_texts_of(c) for c in collections]
        every = tx.concatenate(parts)
        first, codes = tx.dictionary(every)
        distinct = every.take(first)
        order = tx.order(distinct)
        rank = np.empty(len(order), dtype=np.uint32)
        rank[order] = np.arange(len(order), dtype=np.uint32)
        maps = np.split(rank[codes], np.cumsum([len(p) for p in parts])[:-1]) if parts else []
        return cls._of_texts(distinct.take(order), len(order)), maps

    @classmethod
    def in_order(cls, strings: Iterable[str] | tx.Texts, ordered: int) -> SymbolTable:
        """A table whose ids are the positions in ``strings`` (distinct strings, or texts), the
        first ``ordered`` of them in text order (a checkpoint's table, or a shard's reading
        table from the texts it sent)."""
        return cls._of_texts(_texts_of(strings), ordered)

    def texts(self) -> tx.Texts:
        """Every id's text, in id order."""
        if self._pending:
            self._table.append(tx.of_strings(self._pending))
            self._pending = []
        return self._table.texts

    def texts_of(self, ids: np.ndarray) -> tx.Texts:
        """The texts of host ``ids``, one per row."""
        return self.texts().take(np.asarray(ids, dtype=np.int64))

    def _add(self, new: tx.Texts) -> np.ndarray:
        """Append distinct texts the table lacks; their ids."""
        first = len(self.texts())  # pending strings first: ids stay in order
        self._table.append(new)
        return np.arange(first, len(self._table), dtype=np.uint32)

    def _index(self, queries: tx.Texts) -> np.ndarray:
        """Per text, its id here, -1 where the table lacks it (the table's hash index)."""
        self.texts()
        return self._table.find(queries)

    def intern_texts(self, values: tx.Texts) -> np.ndarray:
        """Texts (one per row) -> uint32 ids, the new distinct ones added after the others in
        order of first appearance: the bulk form of ``intern``, one hash pass over the column
        and one lookup of its distinct texts in the table."""
        first, codes = tx.dictionary(values)
        distinct = values.take(first)
        ids = self._index(distinct)
        new = ids < 0
        if new.any():
            ids[new] = self._add(distinct.where(new))
        return ids.astype(np.uint32)[codes]

    def intern_many(self, strings: np.ndarray) -> np.ndarray:
        """Array of str -> uint32 ids (``intern_texts`` of their UTF-8 bytes)."""
        if not len(strings):
            return np.zeros(0, dtype=np.uint32)
        return self.intern_texts(tx.of_strings(np.asarray(strings, dtype=object).reshape(-1).tolist()))

    def append(self, strings: list[str]) -> np.ndarray:
        """The ids of ``strings``, distinct and none in the table yet, added after the others.
        Every shard must call it with the same strings in the same order (made by a
        collective: e.g. the sorted union of what each shard produced), so ids stay the same
        everywhere."""
        if not strings:
            return np.zeros(0, dtype=np.uint32)
        new = tx.of_strings(strings)
        if len(tx.dictionary(new)[0]) != len(strings) or (self._index(new) >= 0).any():
            raise AssertionError("append: a string already in the table, or twice")
        return self._add(new)

    def missing(self, strings: list[str]) -> list[str]:
        """The distinct ``strings`` the table lacks, in text order (what a shard brings to the
        agreement on new symbols)."""
        if not strings:
            return []
        given = tx.of_strings(strings)
        distinct = given.take(tx.dictionary(given)[0])
        lacking = distinct.where(self._index(distinct) < 0)
        return tx.strings(lacking.take(tx.order(lacking)))

    def ids_of(self, strings: list[str]) -> np.ndarray:
        """The ids of strings the table holds (KeyError for one it lacks)."""
        if not strings:
            return np.zeros(0, dtype=np.uint32)
        ids = self._index(tx.of_strings(strings))
        if (ids < 0).any():
            raise KeyError(strings[int(np.argmax(ids < 0))])
        return ids.astype(np.uint32)

    @property
    def text_ordered(self) -> bool:
        """Whether id order is text order (packed rows then sort in output order)."""
        return self.ordered == len(self)

    def reordered(self) -> tuple[np.ndarray, SymbolTable]:
        """(m, table): ``table`` holds the same strings with ids in text order and ``m[id]`` is
        a string's id there, for output once ``append`` broke the text order."""
        order = self._text_order()
        mapping = np.empty(len(order), dtype=np.uint32)
        mapping[order] = np.arange(len(order), dtype=np.uint32)
        table = SymbolTable._of_texts(self.texts_of(order), len(order))
        table.records = self.records.remapped(mapping)
        return mapping, table

    def __len__(self) -> int:
        return len(self._table) + len(self._pending)

    def _python(self) -> list[str]:
        """Every id's Python string (made from the texts once, then kept; strings interned one
        at a time are kept as they come)."""
        if len(self._strings) < len(self):
            self._strings.extend(tx.strings(self.texts().slice(len(self._strings))))
        return self._strings

    def _dict(self) -> dict[str, int]:
        """string -> id over the whole table (extended by the ids it has not seen yet)."""
        strings = self._python()
        if len(self._ids) < len(strings):
            self._ids.update(zip(strings[len(self._ids) :], range(len(self._ids), len(strings))))
        return self._ids

    def intern(self, s: str) -> int:
        """The id of ``s``, added after the others when new: one string (the reference readers,
        a program's constants)."""
        ids = self._dict()
        i = ids.get(s)
        if i is None:
            i = ids[s] = len(self)
            self._strings.append(s)
            self._pending.append(s)
        return i

    def id_of(self, s: str) -> int:
        """The id of a string the table must hold (a program constant: every agreed table has
        them all)."""
        i = self._found.get(s)
        if i is None:
            i = int(self._index(tx.of_strings([s]))[0])
            if i < 0:
                raise AssertionError(f"symbol {s!r} is not in the run's symbol table")
            self._found[s] = i
        return i

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """uint32 ids -> object array of the original strings."""
        if len(self._objects) != len(self):  # made once per growth: callers look up one record element at a time
            self._objects = np.array(self._python(), dtype=object)
        return self._objects[np.asarray(ids, dtype=np.int64)]

    def _text_order(self) -> np.ndarray:
        """The ids sorted by text, as C++ compares strings: by UTF-8 bytes (code point order
        but for the bytes a substr cut out of a character)."""
        return tx.order(self.texts())

    def text_rank(self) -> np.ndarray:
        """rank[id] = position of the symbol's text in sorted order (for sorted output)."""
        if self.text_ordered:
            return np.arange(len(self), dtype=np.uint32)
        order = self._text_order()
        rank = np.empty(len(order), dtype=np.uint32)
        rank[order] = np.arange(len(order), dtype=np.uint32)
        return rank

    def holds_any(self, needles: Iterable[str]) -> bool:
        """Whether any text holds one of ``needles`` (what makes output quote or escape). Output
        asks it for every relation it writes: the answer is kept, and only texts added since
        are searched for it again (texts never change)."""
        key = tuple(needles)
        searched, found = self._holding.get(key, (0, False))
        if not found and searched < len(self):
            data = self.texts().slice(searched).bytes()
            found = any(data.find(n.encode("utf-8", "surrogateescape")) >= 0 for n in key if n)
            self._holding[key] = (len(self), found)
        return found

    def strings_from(self, first: int) -> list[str]:
        """The strings of ids ``first`` and up."""
        return self._python()[first:]

    @property
    def strings(self) -> list[str]:
        return list(self._python())


# The text a SymbolBatch holds before it interns on its own: large inputs are interned in
# passes of this size rather than all held (their copy and dictionary beside them) at once.
_BATCH_BYTES = 1 << 26


class SymbolBatch:
    """Symbol columns of several fact files, interned into ``table`` together (``intern``): one
    dictionary encoding of all of them and one lookup in the table, where interning each
    column as it is read costs a lookup in the growing table per column (most of reading a
    program's many small symbol files). The ids are the ones interning the columns one at a
    time, in the order they were added, gives: new texts in order of first appearance."""

    def __init__(self, table: SymbolTable):
        self.table = table
        self._columns: list[tuple[tx.Texts, np.ndarray, int]] = []
        self._bytes = 0

    def add(self, values: tx.Texts, rows: np.ndarray, j: int) -> None:
        """Column ``j`` of ``rows`` is to hold the ids of ``values`` (one text per row), filled
        in by ``intern`` (at the latest)."""
        self._columns.append((values, rows, j))
        self._bytes += values.nbytes
        if self._bytes >= _BATCH_BYTES:
            self.intern()

    def intern(self) -> SymbolTable:
        """Fill in every column added so far and return the table: what interns into it
        directly (the reference reader, records, JSON) calls this first, so that ids stay in
        reading order."""
        if self._columns:
            columns, self._columns, self._bytes = self._columns, [], 0
            ids = self.table.intern_texts(tx.concatenate([values for values, _, _ in columns]))
            at = 0
            for values, rows, j in columns:
                rows[:, j] = ids[at : at + len(values)]
                at += len(values)
        return self.table


def _texts_of(collection: SymbolTable | Iterable[str] | tx.Texts) -> tx.Texts:
    """A table's texts, texts, or strings: as texts."""
    if isinstance(collection, SymbolTable):
        return collection.texts()
    if isinstance(collection, tx.Texts):
        return collection
    return tx.of_strings(list(map(str, collection)))  # np.str_ -> str


Kinds = tuple[BaseType, ...]  # a record's element types: which part of the record table holds it
MISSING = 0xFFFFFFFF  # RecordTable.find's id for a record the table lacks: no relation holds one
_NO_PART = -1
_MIX = np.uint64(0x100000001B3)


def distinct_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of an (n, k) uint32 array, in lexicographic order."""
    if rows.shape[1] == 0:
        return rows[: min(1, rows.shape[0])]
    return np.unique(rows, axis=0)


def _keys(rows: np.ndarray) -> np.ndarray:
    """A uint64 per row: the elements themselves up to two, a hash of them beyond (equal keys
    are then told apart by comparing the elements)."""
    n, k = rows.shape
    if k == 0:
        return np.zeros(n, dtype=np.uint64)
    keys = rows[:, 0].astype(np.uint64)
    if k == 2:
        return (keys << np.uint64(32)) | rows[:, 1]
    for j in range(1, k):
        keys = (keys ^ rows[:, j]) * _MIX
        keys ^= keys >> np.uint64(29)
    return keys


class _Part:
    """The records of one kinds: their element rows, their ids, and runs of (key, row) sorted
    by key, merged as in a log-structured tree so that adding records costs O(log n) merges of
    the newest runs."""

    def __init__(self, arity: int):
        self.rows = np.zeros((0, arity), dtype=np.uint32)
        self.ids = np.zeros(0, dtype=np.uint32)
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, rows: np.ndarray, ids: np.ndarray) -> None:
        first = self.rows.shape[0]
        self.rows = np.concatenate([self.rows, rows])
        self.ids = np.concatenate([self.ids, ids])
        keys = _keys(rows)
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], order.astype(np.int64) + first))
        while len(self.runs) > 1 and self.runs[-2][0].shape[0] <= 2 * self.runs[-1][0].shape[0]:
            (k1, r1), (k2, r2) = self.runs.pop(), self.runs.pop()
            keys, at = np.concatenate([k2, k1]), np.concatenate([r2, r1])
            order = np.argsort(keys, kind="stable")
            self.runs.append((keys[order], at[order]))

    def find(self, rows: np.ndarray) -> np.ndarray:
        """The ids of ``rows`` (MISSING where absent), one vectorised probe per run."""
        found = np.full(rows.shape[0], MISSING, dtype=np.uint32)
        keys = _keys(rows)
        for run_keys, at in self.runs:
            lo = np.searchsorted(run_keys, keys, side="left")
            counts = np.searchsorted(run_keys, keys, side="right") - lo
            query = np.repeat(np.arange(rows.shape[0]), counts)
            candidate = at[np.repeat(lo, counts) + np.arange(query.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)]
            same = np.all(self.rows[candidate] == rows[query], axis=1)
            found[query[same]] = self.ids[candidate[same]]
        return found


class RecordTable:
    """The records of a run and their uint32 ids: 0 is nil, ids from 1 number the records in
    the order they joined the table (children before the records that hold them). A record is
    kept in the part for its kinds (its elements' base types) as a row of encoded elements, so
    equal records (same kinds, same elements) have one id; records of different types with the
    same kinds share the part, as in Soufflé, whose record table is one per arity.

    The policy is the symbol table's: made before evaluation from the inputs' records and the
    program's (``agreed``, the same on every shard whatever the split of the inputs), then grown
    only by ``append``, with the same rows in the same order on every shard (the agreement of
    an AGREE step). Shards reading their inputs intern into tables of their own
    (``intern_one``: staged in Python, moved into the arrays when next read)."""

    def __init__(self) -> None:
        self._parts: dict[Kinds, _Part] = {}
        self._kinds: list[Kinds] = []  # part number -> kinds
        self._part_of = np.full(1, _NO_PART, dtype=np.int32)  # per id (0: nil)
        self._row_of = np.zeros(1, dtype=np.int64)
        self._staged: dict[tuple[Kinds, tuple[int, ...]], int] = {}
        self._size = 0  # ids 1.._size are taken, staged ones included
        self._device: tuple[Any, int, Any, Any, dict[Kinds, Any]] | None = None

    def __len__(self) -> int:
        return self._size

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its device copies (a worker's table goes to a client without GPU)."""
        return {**self.__dict__, "_device": None}

    def _part(self, kinds: Kinds) -> _Part:
        part = self._parts.get(kinds)
        if part is None:
            part = self._parts[kinds] = _Part(len(kinds))
            self._kinds.append(kinds)
        return part

    def _flush(self) -> None:
        """Move the staged records into the arrays."""
        if not self._staged:
            return
        staged, self._staged = self._staged, {}
        by_kinds: dict[Kinds, list[tuple[tuple[int, ...], int]]] = {}
        for (kinds, row), i in staged.items():
            by_kinds.setdefault(kinds, []).append((row, i))
        for kinds, entries in by_kinds.items():
            rows = np.array([r for r, _ in entries], dtype=np.uint32).reshape(len(entries), len(kinds))
            self._store(kinds, rows, np.fromiter((i for _, i in entries), dtype=np.uint32, count=len(entries)))

    def _store(self, kinds: Kinds, rows: np.ndarray, ids: np.ndarray) -> None:
        part = self._part(kinds)
        if self._part_of.shape[0] <= self._size:
            grown = max(self._size + 1, 2 * self._part_of.shape[0])
            self._part_of = np.concatenate([self._part_of, np.full(grown - self._part_of.shape[0], _NO_PART, np.int32)])
            self._row_of = np.concatenate([self._row_of, np.zeros(grown - self._row_of.shape[0], np.int64)])
        self._part_of[ids] = self._kinds.index(kinds)
        self._row_of[ids] = np.arange(part.rows.shape[0], part.rows.shape[0] + rows.shape[0])
        part.add(rows, ids)
        self._device = None

    def intern_one(self, kinds: Kinds, row: tuple[int, ...]) -> int:
        """The id of one record (its elements encoded, nested records as ids of this table),
        added after the others when new: for a shard's reading table and the program's
        constants, built a record at a time."""
        key = (kinds, row)
        i = self._staged.get(key)
        if i is None and kinds in self._parts:
            found = int(self._parts[kinds].find(np.array([row], dtype=np.uint32).reshape(1, len(kinds)))[0])
            i = None if found == MISSING else found
        if i is None:
            if self._size + 1 >= MISSING:
                raise AssertionError("the record table is full (2^32 - 2 records)")
            self._size += 1
            i = self._staged[key] = self._size
        return i

    def find(self, kinds: Kinds, rows: np.ndarray) -> np.ndarray:
        """The ids of the records ``rows`` (host uint32, one record a row), MISSING where the
        table lacks one."""
        self._flush()
        part = self._parts.get(kinds)
        if part is None:
            return np.full(rows.shape[0], MISSING, dtype=np.uint32)
        return part.find(np.ascontiguousarray(rows, dtype=np.uint32))

    def missing(self, kinds: Kinds, rows: np.ndarray) -> np.ndarray:
        """The distinct ``rows`` the table lacks, in row order (what a shard brings to the
        agreement on new records)."""
        rows = distinct_rows(np.asarray(rows, dtype=np.uint32))
        return rows[self.find(kinds, rows) == MISSING]

    def append(self, kinds: Kinds, rows: np.ndarray) -> None:
        """Add distinct records the table lacks, ids in row order. Every shard must call it with
        the same rows in the same order (agreed: ``agreed_made``), so ids stay the same
        everywhere."""
        self._flush()
        if not rows.shape[0]:
            return
        if self._size + rows.shape[0] >= MISSING:
            raise AssertionError("the record table is full (2^32 - 2 records)")
        ids = np.arange(self._size + 1, self._size + 1 + rows.shape[0], dtype=np.uint32)
        self._size += rows.shape[0]
        self._store(kinds, np.ascontiguousarray(rows, dtype=np.uint32), ids)

    def parts(self) -> list[tuple[Kinds, np.ndarray, np.ndarray]]:
        """(kinds, ids, element rows) per part: the whole table."""
        self._flush()
        return [(kinds, self._parts[kinds].ids, self._parts[kinds].rows) for kinds in self._kinds]

    @classmethod
    def restored(cls, parts: Iterable[tuple[Kinds, np.ndarray, np.ndarray]]) -> RecordTable:
        """The table ``parts()`` gave (a checkpoint's)."""
        table = cls()
        parts = list(parts)
        table._size = sum(int(ids.shape[0]) for _, ids, _ in parts)
        for kinds, ids, rows in parts:
            ids = np.asarray(ids, dtype=np.uint32)
            table._store(kinds, np.asarray(rows, dtype=np.uint32).reshape(ids.shape[0], len(kinds)), ids)
        return table

    @classmethod
    def of_constants(cls, records: Iterable[Record], symbols: SymbolTable) -> RecordTable:
        """A table of records of constants (the program's), their symbols ids of ``symbols``."""
        table = cls()

        def intern(record: Record) -> int:
            row = tuple(
                intern(a)
                if isinstance(a, Record)
                else symbols.id_of(str(a.value))
                if a.type == "symbol"
                else encode_scalar(int(a.value), a.type)
                for a in record.args
                if isinstance(a, (Record, Const))
            )
            return table.intern_one(record.kinds, row)

        for record in records:
            intern(record)
        return table

    def unpack(self, kinds: Kinds, ids: Any, xp: Any = np) -> tuple[Any, Any]:
        """(mask, elements): which of ``ids`` (a column in ``xp``) are records of ``kinds``
        (not nil, not of another part), and their element rows, in ``xp`` (arrays copied to a
        device once per growth of the table)."""
        self._flush()
        if self._device is None or self._device[0] is not xp:
            copy = (lambda a: a) if xp is np else xp.asarray
            self._device = (
                xp,
                self._size + 1,
                copy(self._part_of[: self._size + 1]),
                copy(self._row_of[: self._size + 1]),
                {k: copy(p.rows) for k, p in self._parts.items()},
            )
        _, size, part_of, row_of, elements = self._device
        if kinds not in self._parts:
            return xp.zeros(ids.shape[0], dtype=bool), xp.zeros((0, len(kinds)), dtype=xp.uint32)
        known = ids < size
        mask = known & (part_of[xp.where(known, ids, 0)] == self._kinds.index(kinds))
        return mask, elements[kinds][row_of[ids[mask]]]

    def remapped(self, symbols: np.ndarray) -> RecordTable:
        """The same records (the same ids) with their symbols re-encoded by ``symbols[id]``
        (``SymbolTable.reordered``)."""
        table = RecordTable()
        table._size = self._size
        for kinds, ids, rows in self.parts():
            rows = rows.copy()
            for j, kind in enumerate(kinds):
                if kind == "symbol":
                    rows[:, j] = symbols[rows[:, j]]
            table._store(kinds, rows, ids)
        return table

    @classmethod
    def agreed(cls, sources: list[tuple[RecordTable, np.ndarray | None]]) -> tuple[RecordTable, list[np.ndarray]]:
        """One table of the records of every source (a shard's reading table with the map of its
        symbol ids into the agreed symbol table, or a table already in agreed symbol ids: None),
        and per source the map of its record ids into it. Records join by height (those whose
        nested records all have ids first) and, within a height, in order of kinds and elements:
        the table depends only on the set of records, not on which source held them."""
        table = cls()
        maps = []
        pending: list[list[tuple[Kinds, np.ndarray, np.ndarray]]] = []
        for source, _ in sources:
            ids = np.full(len(source) + 1, MISSING, dtype=np.uint32)
            ids[0] = 0
            maps.append(ids)
            pending.append(source.parts())
        while any(pending):
            ready: dict[Kinds, list[tuple[int, np.ndarray, np.ndarray]]] = {}
            for s, (parts, (_, symbol_map)) in enumerate(zip(pending, sources)):
                waiting = []
                for kinds, ids, rows in parts:
                    nested = [j for j, kind in enumerate(kinds) if kind == "record"]
                    known = np.all(maps[s][rows[:, nested]] != MISSING, axis=1)
                    if known.any():
                        remapped = rows[known].copy()
                        for j, kind in enumerate(kinds):
                            if kind == "record":
                                remapped[:, j] = maps[s][remapped[:, j]]
                            elif kind == "symbol" and symbol_map is not None:
                                remapped[:, j] = symbol_map[remapped[:, j]]
                        ready.setdefault(kinds, []).append((s, ids[known], remapped))
                    if not known.all():
                        waiting.append((kinds, ids[~known], rows[~known]))
                pending[s] = waiting
            if not ready:
                raise AssertionError("records whose nested records never get an id")
            for kinds in sorted(ready):
                entries = ready[kinds]
                table.append(kinds, table.missing(kinds, np.concatenate([rows for _, _, rows in entries])))
                for s, ids, rows in entries:
                    maps[s][ids] = table.find(kinds, rows)
        return table, maps


Made = list[str] | np.ndarray  # what a shard brings to an agreement: texts, or records of one kinds


def agreed_made(parts: list[Made]) -> Made:
    """What every shard appends after an agreement on new values: the sorted union of what each
    shard made (texts, or the element rows of records of one kinds)."""
    if parts and isinstance(parts[0], np.ndarray):
        return distinct_rows(np.concatenate(parts))
    return sorted(set().union(*parts))
