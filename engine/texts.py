"""Columns of texts as NumPy arrays, the symbol table's storage, and what interning, text order
and output do with them: the CPU kernels' hash index and sort over the texts' bytes
(``kernels.c``), never a Python loop over texts, and no pyarrow, whose import alone (45-50 ms)
cost a symbol program more than all its text work. The string functors (``text.py``) view these
arrays as pyarrow ones without a copy.

A text is the UTF-8 bytes of a string: Soufflé's strings are C++ byte strings, so texts compare
and sort by their bytes, and the bytes a ``substr`` cut out of a character live on as they are
(in Python strings as surrogate escapes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_datalog.engine.storage import cpu_kernels


@dataclass(frozen=True)
class Texts:
    """n texts: text i is ``data[offsets[i]:offsets[i + 1]]``. ``offsets`` (n + 1 int64) need not
    start at 0: a slice shares its column's bytes."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1] - self.offsets[0])

    def sizes(self) -> np.ndarray:
        """Each text's length in bytes."""
        return np.diff(self.offsets)

    def slice(self, start: int, stop: int | None = None) -> Texts:
        return Texts(self.data, self.offsets[start : (len(self) if stop is None else stop) + 1])

    def take(self, rows: np.ndarray) -> Texts:
        """The texts at ``rows`` (host integers), one per row."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"text rows out of range 0..{len(self) - 1}")
        return Texts(*cpu_kernels.gather_spans(self.data, np.stack([self.offsets[rows], self.offsets[rows + 1]], axis=1)))

    def where(self, keep: np.ndarray) -> Texts:
        """The texts where the boolean ``keep`` is true."""
        return self.take(np.flatnonzero(keep))

    def bytes(self) -> bytes:
        """The texts' bytes side by side."""
        return self.data[self.offsets[0] : self.offsets[-1]].tobytes()


EMPTY = Texts(np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64))


def of_strings(strings: list[str]) -> Texts:
    """The UTF-8 bytes of ``strings`` (surrogate escapes back to the bytes they stand for): one
    encode of them all joined, the lengths in bytes from their lengths in code points."""
    joined = "".join(strings)
    data = joined.encode("utf-8", "surrogateescape")
    chars = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    if len(data) == len(joined):  # ASCII: a byte per code point
        sizes = chars
    else:
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        width = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000) - 2 * ((points >= 0xDC80) & (points <= 0xDCFF))
        before = np.zeros(len(points) + 1, dtype=np.int64)  # bytes before each code point
        np.cumsum(width, out=before[1:])
        ends = np.cumsum(chars)
        sizes = before[ends] - before[ends - chars]
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return Texts(np.frombuffer(data, dtype=np.uint8), offsets)


def strings(texts: Texts) -> list[str]:
    """The Python strings of texts; bytes that do not decode (``substr`` cutting a multi-byte
    character, as Soufflé may) are kept as surrogate escapes. One decode of all the bytes when
    they are UTF-8 and no text starts inside a character (the offsets then convert to code
    points), else one per text."""
    raw = texts.bytes()
    offsets = texts.offsets - texts.offsets[0]
    if raw.isascii():
        joined = raw.decode("ascii")
    else:
        data = np.frombuffer(raw, dtype=np.uint8)
        inside = (data & 0xC0) == 0x80  # continuation bytes
        try:
            joined = raw.decode("utf-8")
        except UnicodeDecodeError:
            return [b.decode("utf-8", "surrogateescape") for b in blobs(texts)]
        if inside[offsets[:-1][texts.sizes() > 0]].any():
            return [b.decode("utf-8", "surrogateescape") for b in blobs(texts)]
        before = np.zeros(len(data) + 1, dtype=np.int64)
        np.cumsum(inside, out=before[1:])
        offsets = offsets - before[offsets]
    bounds = offsets.tolist()
    return [joined[a:b] for a, b in itertools.pairwise(bounds)]


def blobs(texts: Texts) -> list[bytes]:
    """The texts as Python bytes, one per text."""
    raw = texts.bytes()
    return [raw[a:b] for a, b in itertools.pairwise((texts.offsets - texts.offsets[0]).tolist())]


def concatenate(parts: list[Texts]) -> Texts:
    """The texts of several columns, one after the other."""
    parts = [p for p in parts if len(p)]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return EMPTY
    data = np.concatenate([p.data[p.offsets[0] : p.offsets[-1]] for p in parts])
    ends = np.cumsum([p.nbytes for p in parts])
    offsets = np.concatenate([[0], *(p.offsets[1:] - p.offsets[0] + (end - p.nbytes) for p, end in zip(parts, ends))])
    return Texts(data, offsets.astype(np.int64))


def _capacity(rows: int) -> int:
    """A hash index's slots for ``rows`` texts: a power of two, at least twice as many."""
    return 1 << max(4, (2 * rows - 1).bit_length())


def dictionary(texts: Texts) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of the distinct texts, in order of first appearance; each row's number among
    them): one pass of the hash index over the column."""
    n = len(texts)
    if n > cpu_kernels.MAX_TEXT_ROWS:
        raise AssertionError(f"dictionary: {n} texts at once, more than a 32-bit index holds")
    first = cpu_kernels.index_texts(texts.data, texts.offsets, 0, n, np.zeros(_capacity(n), dtype=np.uint64))
    is_first = first == np.arange(n)
    numbers = np.cumsum(is_first) - 1
    return np.flatnonzero(is_first), numbers[first]


def order(texts: Texts) -> np.ndarray:
    """The rows of ``texts`` in text order (bytes compared as C++ compares strings; stable)."""
    return cpu_kernels.sort_texts(texts.data, texts.offsets)


class Table:
    """Distinct texts, appended to in place (capacity doubled as they grow, so that appending k
    texts costs O(k) however large the table), and their hash index: which row holds a text.
    Pickled as its texts alone (the index is made again where next asked)."""

    def __init__(self, texts: Texts = EMPTY) -> None:
        self._data = np.ascontiguousarray(texts.data[texts.offsets[0] : texts.offsets[-1]])
        self._offsets = texts.offsets - texts.offsets[0]
        self._rows = len(texts)
        self._slots = np.zeros(0, dtype=np.uint64)
        self._indexed = 0  # rows the index holds

    def __len__(self) -> int:
        return self._rows

    @property
    def texts(self) -> Texts:
        return Texts(self._data[: self._offsets[self._rows]], self._offsets[: self._rows + 1])

    def __getstate__(self) -> dict[str, Any]:
        texts = self.texts
        return {"_data": texts.data.copy(), "_offsets": texts.offsets.copy(), "_rows": self._rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _slots=np.zeros(0, dtype=np.uint64), _indexed=0)

    def append(self, texts: Texts) -> None:
        """Add texts (distinct, none in the table yet: the caller's to know) after the others."""
        used, n = int(self._offsets[self._rows]), len(texts)
        if used + texts.nbytes > len(self._data) or not self._data.flags.writeable:  # made from bytes: read-only
            self._data = _grown(self._data, used + texts.nbytes)
        if self._rows + n + 1 > len(self._offsets):
            self._offsets = _grown(self._offsets, self._rows + n + 1)
        self._data[used : used + texts.nbytes] = texts.data[texts.offsets[0] : texts.offsets[-1]]
        self._offsets[self._rows + 1 : self._rows + n + 1] = texts.offsets[1:] - texts.offsets[0] + used
        self._rows += n

    def find(self, queries: Texts) -> np.ndarray:
        """Per text of ``queries``, the row that holds it, -1 where none does."""
        if not self._rows:
            return np.full(len(queries), -1, dtype=np.int64)
        texts = self.texts
        if self._indexed < self._rows:
            if 2 * self._rows > len(self._slots):  # grown past half full: index every row again
                self._slots, self._indexed = np.zeros(_capacity(2 * self._rows), dtype=np.uint64), 0
            if self._rows > cpu_kernels.MAX_TEXT_ROWS:
                raise AssertionError("the symbol table is full (2^32 - 2 texts)")
            first = cpu_kernels.index_texts(texts.data, texts.offsets, self._indexed, self._rows, self._slots)
            if (first != np.arange(self._indexed, self._rows)).any():
                raise AssertionError("a text twice in a table of distinct texts")
            self._indexed = self._rows
        return cpu_kernels.find_texts(texts.data, texts.offsets, self._slots, queries.data, queries.offsets)


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` copied into one of at least ``size`` elements, twice its length or more."""
    grown = np.zeros(max(size, 2 * len(array), 16), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
