"""Vectorised operations on symbol texts, what Soufflé's string functors compute (its
interpreter's ``Engine.cpp`` is the reference for each): whole columns at a time through NumPy
and the CPU kernels over ``texts.Texts``, never a Python loop over rows; and the views of texts
as pyarrow arrays that ``match`` (RE2) and pyarrow's CSV readers and writers need. pyarrow is
imported only there (45-50 ms), never by importing this module.

Texts are UTF-8 bytes: Soufflé's strings are C++ byte strings, so
lengths and ``substr`` positions count bytes, ``substr`` may cut a character in two (such
bytes live on in Python strings as surrogate escapes), and ``match``'s ``.`` is one byte, as in
``std::regex_match`` over a ``std::string``. ``match`` is a full match of an ECMAScript regular
expression, run by RE2 (pyarrow) when RE2 accepts the pattern and by Python's ``re`` otherwise
(backreferences, lookaround), both anchored at the two ends.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import TYPE_CHECKING

import numpy as np

from dask_datalog.engine import texts as tx
from dask_datalog.engine.storage import cpu_kernels

if TYPE_CHECKING:  # imported where used: 45-50 ms that only match and the CSV paths pay
    import pyarrow as pa


def arrow(column: tx.Texts) -> pa.Array:
    """Texts as a large_binary array, sharing their buffers."""
    return from_buffers(column.data, column.offsets)


def of_arrow(values: pa.Array | pa.ChunkedArray) -> tx.Texts:
    """A string or binary column (pyarrow's CSV reader's) as texts, sharing its buffers."""
    values = binary(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64, count=len(values) + 1, offset=values.offset * 8)
    buffer = values.buffers()[2]
    return tx.Texts(np.zeros(0, dtype=np.uint8) if buffer is None else np.frombuffer(buffer, dtype=np.uint8), offsets)


def release_unused() -> None:
    """Hand back to the system what pyarrow's memory pool keeps of freed arrays (its allocator
    holds on to it): once the inputs are read, so that the transient columns of its CSV reader
    do not stay resident under evaluation's peak."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def binary(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A string or binary column as one large_binary array."""
    import pyarrow as pa

    from dask_datalog.engine import arrow_compute as ac

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values if values.type == pa.large_binary() else ac.cast(values, pa.large_binary())


def terminated(strings: pa.Array, end: bytes) -> pa.Array:
    """Each text of a pyarrow column followed by ``end`` (the fact parser reads one value a
    line: the texts side by side, a line break after each)."""
    from dask_datalog.engine import arrow_compute as ac

    return ac.binary_join_element_wise(strings, repeated(end, len(strings)), repeated(b"", len(strings)))


def repeated(piece: bytes, n: int) -> pa.Array:
    """``n`` times the same text (a separator for pyarrow's element-wise joins: pa.scalar
    imports pandas)."""
    data = np.tile(np.frombuffer(piece, dtype=np.uint8), n)
    return from_buffers(data, np.arange(n + 1, dtype=np.int64) * len(piece))


def from_buffers(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A large_binary array from texts' bytes side by side and their (n + 1) int64 offsets."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def concatenate(parts: list[tx.Texts]) -> tx.Texts:
    """``cat(a, b, ...)``: the texts side by side, row by row (the spans of every part's row,
    row-major, gathered from the parts' bytes joined)."""
    if len(parts) == 1:
        return parts[0]
    joined = tx.concatenate(parts)
    n = len(parts[0])
    bounds = joined.offsets - joined.offsets[0]
    starts = bounds[:-1].reshape(len(parts), n).T  # (n, parts): part k's text of row r
    ends = bounds[1:].reshape(len(parts), n).T
    data = joined.data[joined.offsets[0] : joined.offsets[-1]]
    gathered, offsets = cpu_kernels.gather_spans(data, np.ascontiguousarray(np.stack([starts, ends], axis=2).reshape(-1, 2)))
    return tx.Texts(gathered, offsets[:: len(parts)])


def substring(strings: tx.Texts, start: np.ndarray, length: np.ndarray) -> tuple[tx.Texts, np.ndarray]:
    """``substr(s, i, n)`` per row, in bytes as ``std::string::substr(i, n)`` with the 32-bit
    arguments read as ``size_t``: a negative ``n`` reaches the end of ``s``; an ``i`` past the
    end (or negative) is out of range, which gives "" and is reported (the second result: the
    rows out of range, as Soufflé warns on each)."""
    offsets = strings.offsets
    sizes = strings.sizes()
    start = start.astype(np.int64)
    length = length.astype(np.int64)
    bad = (start < 0) | (start > sizes)
    begin = np.where(bad, 0, start)
    taken = np.where(bad, 0, np.where(length < 0, sizes - begin, np.minimum(length, sizes - begin)))
    spans = np.stack([offsets[:-1] + begin, offsets[:-1] + begin + taken], axis=1)
    return tx.Texts(*cpu_kernels.gather_spans(strings.data, spans)), bad


def contains(needles: tx.Texts, haystacks: tx.Texts) -> np.ndarray:
    """``contains(a, b)`` per row: whether ``a`` occurs in ``b``."""
    hay = np.array(tx.blobs(haystacks), dtype=object).astype(bytes)
    needle = np.array(tx.blobs(needles), dtype=object).astype(bytes)
    return np.strings.find(hay, needle) >= 0


def match(pattern: str, strings: tx.Texts) -> np.ndarray | None:
    """``match(pattern, s)`` for one pattern over many texts: whether all of ``s`` matches;
    None for a pattern ECMAScript refuses (Soufflé then warns, and both ``match`` and
    ``!match`` are false), reported on stderr once."""
    import pyarrow as pa

    from dask_datalog.engine import arrow_compute as ac

    if not _ecmascript_braces(pattern):
        return _refused(pattern)
    anchored = f"^(?:{pattern})$"
    try:
        return _booleans(ac.match_substring_regex(arrow(strings), anchored))  # not to_numpy: it imports pandas (0.3-0.5 s)
    except pa.ArrowInvalid:
        compiled = _python_regex(pattern)
    if compiled is None:
        return _refused(pattern)
    return np.fromiter((compiled.fullmatch(b) is not None for b in tx.blobs(strings)), dtype=bool, count=len(strings))


def _booleans(values: pa.Array) -> np.ndarray:
    """A boolean pyarrow array (no nulls) as NumPy."""
    bits = np.unpackbits(np.frombuffer(values.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[values.offset : values.offset + len(values)].astype(bool)


_BRACE = re.compile(r"\\.|\[(?:\\.|[^\]])*\]|\{(\d+(?:,\d*)?\})?")


def _ecmascript_braces(pattern: str) -> bool:
    """Whether every ``{`` outside a class starts a quantifier ``{n}``, ``{n,}`` or ``{n,m}``:
    std::regex refuses any other brace, which RE2 and ``re`` read as a literal."""
    return all(not m.group(0).startswith("{") or m.group(1) for m in _BRACE.finditer(pattern))


@functools.cache
def _python_regex(pattern: str) -> re.Pattern[bytes] | None:
    """Python's ``re`` for the ECMAScript patterns RE2 refuses (backreferences, lookaround), on
    bytes as the texts are; None when it refuses the pattern too."""
    try:
        return re.compile(pattern.encode("utf-8", "surrogateescape"))
    except re.error:
        return None


@functools.cache
def _refused(pattern: str) -> None:
    print(f'warning: wrong pattern provided for match("{pattern}",...)', file=sys.stderr)
    return None


def warn_substr(strings: tx.Texts, start: np.ndarray, length: np.ndarray, bad: np.ndarray) -> None:
    """Soufflé's warning for ``substr`` out of range, once per distinct call here (it repeats it
    for every tuple)."""
    for i in np.nonzero(bad)[0][:10]:
        text = tx.strings(strings.slice(int(i), int(i) + 1))[0]
        print(
            f'warning: wrong index position provided by substr("{text}",{int(start[i])},{int(length[i])}) functor.',
            file=sys.stderr,
        )
