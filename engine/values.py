"""The one internal value representation: every attribute is a uint32 whose unsigned order is
the attribute's own order, so sort, unique, searchsorted and packing two columns into a uint64
need no per-type code.

- ``number`` (int32): the bit pattern with the sign bit flipped.
- ``unsigned`` (uint32): itself.
- ``symbol``: the id from the run's SymbolTable, whose ids are in text order on every shard
  (``SymbolTable`` says how it is made), so symbols sort like numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from dask_datalog.engine.ir import BaseType

SIGN = np.uint32(0x80000000)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1


def encode(values: Any, type: BaseType, xp: Any = np) -> Any:
    """int32 / uint32 / symbol-id array -> encoded uint32 array."""
    if type == "number":
        return values.astype(xp.int32).view(xp.uint32) ^ SIGN
    return values.astype(xp.uint32)


def decode(encoded: Any, type: BaseType, xp: Any = np) -> Any:
    """Encoded uint32 array -> int32 (number) or uint32 (unsigned, symbol id)."""
    if type == "number":
        return (encoded ^ SIGN).view(xp.int32)
    return encoded


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


def encode_scalar(value: int, type: BaseType) -> int:
    """A constant's encoded value as a Python int (symbols are interned by the caller)."""
    if type == "number":
        return (value & 0xFFFFFFFF) ^ 0x80000000
    return value & 0xFFFFFFFF


class SymbolTable:
    """The strings of a run and their uint32 ids, ids never reused.

    One policy on every path: a run's table is made once, before evaluation, by
    ``sorted_union`` of every string its inputs hold (on every shard) and of the program's
    constants; ids are the strings' text order, so the table is the same on every shard and
    packed rows sort in output order. The one declared place where strings may join that table
    later is ``append`` (for functors that make strings during evaluation): every shard must
    call it with the same strings in the same order, and ids from ``ordered`` on are then out
    of text order, which output handles (``text_ordered``, ``reordered``). While a shard reads
    its inputs it interns into a table of its own (``intern``: ids in reading order), which is
    re-encoded into the agreed one (``remap_to``)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._strings: list[str] = []
        self.ordered = 0  # ids below this are in text order

    @classmethod
    def sorted_union(cls, collections: Iterable[SymbolTable | Iterable[str]]) -> SymbolTable:
        """A table of every string in ``collections`` whose ids are the strings' text order. It
        depends only on the set of strings, so shards that built local tables agree on it by
        exchanging their strings."""
        lists = [c._strings if isinstance(c, SymbolTable) else c for c in collections]
        parts = [np.fromiter(map(str, strings), dtype=object) for strings in lists]  # np.str_ -> str
        strings = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=object)
        table = cls()
        table._strings = strings.tolist()
        table._ids = dict(zip(table._strings, range(len(table._strings))))
        table.ordered = len(table._strings)
        return table

    @classmethod
    def in_order(cls, strings: Iterable[str], ordered: int) -> SymbolTable:
        """A table whose ids are the positions in ``strings``, the first ``ordered`` of them in
        text order (a checkpoint's table)."""
        table = cls()
        for s in strings:
            table.intern(s)
        table.ordered = ordered
        return table

    def append(self, strings: list[str]) -> np.ndarray:
        """The ids of ``strings``, distinct and none in the table yet, added after the others.
        Every shard must call it with the same strings in the same order (made by a
        collective: e.g. the sorted union of what each shard produced), so ids stay the same
        everywhere."""
        first = len(self._strings)
        self._ids.update(zip(strings, range(first, first + len(strings))))
        self._strings.extend(strings)
        if len(self._ids) != len(self._strings):
            raise AssertionError("append: a string already in the table, or twice")
        return np.arange(first, len(self._strings), dtype=np.uint32)

    def missing(self, strings: Iterable[str]) -> list[str]:
        """The distinct ``strings`` the table lacks, in text order (what a shard brings to the
        agreement on new symbols)."""
        ids = self._ids
        return sorted({s for s in strings if s not in ids})

    def ids_of(self, strings: list[str]) -> np.ndarray:
        """The ids of strings the table holds (KeyError for one it lacks)."""
        return np.fromiter(map(self._ids.__getitem__, strings), dtype=np.uint32, count=len(strings))

    @property
    def text_ordered(self) -> bool:
        """Whether id order is text order (packed rows then sort in output order)."""
        return self.ordered == len(self._strings)

    def reordered(self) -> tuple[np.ndarray, SymbolTable]:
        """(m, table): ``table`` holds the same strings with ids in text order and ``m[id]`` is
        a string's id there, for output once ``append`` broke the text order."""
        table = SymbolTable.sorted_union([self._strings])
        return self.remap_to(table), table

    def remap_to(self, other: SymbolTable) -> np.ndarray:
        """m[id here] = ``other``'s id for the same string, so ``m[rows[:, j]]`` re-encodes a symbol
        column into ``other`` (KeyError for a string ``other`` lacks)."""
        return np.fromiter(map(other._ids.__getitem__, self._strings), dtype=np.uint32, count=len(self._strings))

    def __len__(self) -> int:
        return len(self._strings)

    def intern(self, s: str) -> int:
        """The id of ``s``, added after the others when new (a shard's reading table)."""
        i = self._ids.get(s)
        if i is None:
            i = self._ids[s] = len(self._strings)
            self._strings.append(s)
        return i

    def id_of(self, s: str) -> int:
        """The id of a string the table must hold (a program constant: every agreed table has
        them all)."""
        i = self._ids.get(s)
        if i is None:
            raise AssertionError(f"symbol {s!r} is not in the run's symbol table")
        return i

    def intern_many(self, strings: np.ndarray) -> np.ndarray:
        """Array of str -> uint32 ids; one dict lookup per distinct string, not per row."""
        uniques, inverse = np.unique(np.asarray(strings, dtype=object), return_inverse=True)
        ids = np.fromiter((self.intern(s) for s in uniques), dtype=np.uint32, count=len(uniques))
        return ids[inverse.reshape(-1)]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """uint32 ids -> object array of the original strings."""
        table = np.array(self._strings, dtype=object)
        return table[np.asarray(ids, dtype=np.int64)]

    def text_rank(self) -> np.ndarray:
        """rank[id] = position of the symbol's text in sorted order (for sorted output)."""
        if self.text_ordered:
            return np.arange(len(self._strings), dtype=np.uint32)
        # By UTF-8 bytes, as C++ compares strings: code point order but for the surrogate
        # escapes of bytes a substr cut out of a character.
        order = np.argsort(np.array([s.encode("utf-8", "surrogateescape") for s in self._strings], dtype=object), kind="stable")
        rank = np.empty(len(order), dtype=np.uint32)
        rank[order] = np.arange(len(order), dtype=np.uint32)
        return rank

    def strings_from(self, first: int) -> list[str]:
        """The strings of ids ``first`` and up (what per-id caches have not seen yet)."""
        return self._strings[first:]

    @property
    def strings(self) -> list[str]:
        return list(self._strings)
