"""The one internal value representation: every attribute is a uint32 whose unsigned order is
the attribute's own order, so sort, unique, searchsorted and packing two columns into a uint64
need no per-type code.

- ``number`` (int32): the bit pattern with the sign bit flipped.
- ``unsigned`` (uint32): itself.
- ``symbol``: the id from the run's SymbolTable. A single process's ids order by first
  appearance, not by text (output sorts by text, see ``relation_output.sort_rows``). Where several
  workers must agree on ids, each interns into a local table and all of them re-encode into
  ``SymbolTable.sorted_union`` of those tables, whose ids are in text order.
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
    for base, prefix, digits in ((10, "", "[0-9]"), (2, "", "[01]"),
                                 (16, "(?:0[xX](?=[0-9a-fA-F]))?", "[0-9a-fA-F]"))
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
    """Interns strings to dense uint32 ids. One table per run (or per worker, merged by
    ``sorted_union``); ids are never reused."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._strings: list[str] = []

    @classmethod
    def sorted_union(cls, collections: Iterable[SymbolTable | Iterable[str]]) -> SymbolTable:
        """A table of every string in ``collections`` whose ids are the strings' text order
        (``text_rank``'s order). It depends only on the set of strings, so workers that built
        local tables agree on it by exchanging their strings, and id order is output order."""
        lists = [c._strings if isinstance(c, SymbolTable) else c for c in collections]
        parts = [np.fromiter(map(str, strings), dtype=object) for strings in lists]  # np.str_ -> str
        strings = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=object)
        table = cls()
        table._strings = strings.tolist()
        table._ids = dict(zip(table._strings, range(len(table._strings))))
        return table

    @classmethod
    def in_order(cls, strings: Iterable[str]) -> SymbolTable:
        """A table whose ids are the positions in ``strings`` (a checkpoint's table)."""
        table = cls()
        for s in strings:
            table.intern(s)
        return table

    def remap_to(self, other: SymbolTable) -> np.ndarray:
        """m[id here] = ``other``'s id for the same string, so ``m[rows[:, j]]`` re-encodes a symbol
        column into ``other`` (KeyError for a string ``other`` lacks)."""
        return np.fromiter(map(other._ids.__getitem__, self._strings), dtype=np.uint32, count=len(self._strings))

    def __len__(self) -> int:
        return len(self._strings)

    def intern(self, s: str) -> int:
        i = self._ids.get(s)
        if i is None:
            i = self._ids[s] = len(self._strings)
            self._strings.append(s)
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
        order = np.argsort(np.array(self._strings, dtype=object), kind="stable")
        rank = np.empty(len(order), dtype=np.uint32)
        rank[order] = np.arange(len(order), dtype=np.uint32)
        return rank

    def strings_from(self, first: int) -> list[str]:
        """The strings of ids ``first`` and up (what per-id caches have not seen yet)."""
        return self._strings[first:]

    @property
    def strings(self) -> list[str]:
        return list(self._strings)
