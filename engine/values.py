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

from collections.abc import Iterable
from typing import Any

import numpy as np

from .ir import BaseType

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

    @property
    def strings(self) -> list[str]:
        return list(self._strings)
