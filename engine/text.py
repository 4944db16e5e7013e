"""Vectorised operations on symbol texts, what Soufflé's string functors compute (its
interpreter's ``Engine.cpp`` is the reference for each): whole columns at a time through
pyarrow's compute kernels and NumPy, never a Python loop over rows.

Texts are pyarrow binary arrays of UTF-8 bytes: Soufflé's strings are C++ byte strings, so
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
from typing import Any

import numpy as np
import pyarrow as pa

from dask_datalog.engine import arrow_compute as ac


def texts(strings: list[str]) -> pa.Array:
    """The UTF-8 bytes of ``strings`` (surrogate escapes back to the bytes they stand for), a
    large_binary array: one encode of them all joined, the lengths in bytes from their lengths
    in code points (no ``pa.array``, which imports pandas, 0.3-1 s, on first use)."""
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
    return from_buffers(np.frombuffer(data, dtype=np.uint8), offsets)


def release_unused() -> None:
    """Hand back to the system what pyarrow's memory pool keeps of freed arrays (its allocator
    holds on to it): once the inputs are read, so that their transient texts (every symbol
    column, their concatenation, its dictionary) do not stay resident under evaluation's peak
    (DOOP with 22 MiB of input: 0.94 -> 0.82 GB)."""
    pa.default_memory_pool().release_unused()


def binary(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A string or binary column as one large_binary array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values if values.type == pa.large_binary() else ac.cast(values, pa.large_binary())


def concatenate_arrays(chunks: list[pa.Array]) -> pa.Array:
    """Texts of several arrays, one after the other."""
    return pa.concat_arrays(chunks) if chunks else texts([])


def indices(ids: np.ndarray) -> pa.Array:
    """A NumPy integer array as a pyarrow one (for ``take``), sharing its buffer."""
    ids = np.ascontiguousarray(ids)
    return pa.Array.from_buffers(pa.from_numpy_dtype(ids.dtype), len(ids), [None, pa.py_buffer(ids)])


def mask(where: np.ndarray) -> pa.Array:
    """A NumPy boolean array as a pyarrow one (for ``filter``)."""
    bits = np.packbits(np.asarray(where, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(where), [None, pa.py_buffer(bits)])


def take(values: pa.Array, ids: np.ndarray) -> pa.Array:
    """The texts at positions ``ids`` (a NumPy integer array), one per id."""
    return ac.take(values, indices(ids))


def where(values: pa.Array, keep: np.ndarray) -> pa.Array:
    """The texts where the NumPy boolean array ``keep`` is true."""
    return ac.filter(values, mask(keep))


def integers(values: pa.Array, null: int = -1) -> np.ndarray:
    """An integer pyarrow array as int64, ``null`` where it has none (no pandas, no copy of
    pyarrow's own ``to_numpy`` machinery)."""
    dtype = np.dtype(f"{'i' if pa.types.is_signed_integer(values.type) else 'u'}{values.type.bit_width // 8}")
    out = np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize).astype(
        np.int64
    )
    if values.null_count:
        bits = np.unpackbits(np.frombuffer(values.buffers()[0], dtype=np.uint8), bitorder="little")
        out[bits[values.offset : values.offset + len(values)] == 0] = null
    return out


def positions(values: pa.Array, table: pa.Array) -> np.ndarray:
    """Per text of ``values``, its position in ``table`` (distinct texts), -1 where absent: one
    hash pass over each."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    if not len(table):
        return np.full(len(values), -1, dtype=np.int64)
    return integers(ac.index_in(values, table))


_HASH_BASE = np.uint64(0x100000001B3)
_HASH_LENGTH = np.uint64(0x9E3779B97F4A7C15)


def hashes(values: pa.Array) -> np.ndarray:
    """A uint64 per text of a large_binary array, equal for equal texts: the polynomial of its
    bytes (each plus one) in a fixed base modulo 2^64, its length mixed in; computed for all
    texts at once as differences of one prefix sum over the array's bytes. Different texts may
    share a hash, which ``SymbolTable`` checks by comparing the texts."""
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64, count=len(values) + 1, offset=values.offset * 8)
    raw = np.frombuffer(data(values), dtype=np.uint8)
    start, end = offsets[:-1] - offsets[0], offsets[1:] - offsets[0]
    sizes = end - start
    longest = int(sizes.max()) if len(sizes) else 0
    powers = np.empty(longest + 1, dtype=np.uint64)
    powers[0] = 1
    np.cumprod(np.full(longest, _HASH_BASE, dtype=np.uint64), out=powers[1:])
    within = np.arange(len(raw), dtype=np.int64) - np.repeat(start, sizes)  # each byte's place in its text
    prefix = np.zeros(len(raw) + 1, dtype=np.uint64)
    np.cumsum((raw.astype(np.uint64) + np.uint64(1)) * powers[within], out=prefix[1:])
    h = (prefix[end] - prefix[start]) ^ (sizes.astype(np.uint64) * _HASH_LENGTH)
    return h ^ (h >> np.uint64(29))


def booleans(values: pa.Array) -> np.ndarray:
    """A boolean pyarrow array (no nulls) as NumPy."""
    bits = np.unpackbits(np.frombuffer(values.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[values.offset : values.offset + len(values)].astype(bool)


def equal(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Per row, whether the texts of ``a`` and ``b`` are the same bytes."""
    return booleans(ac.equal(a, b)) if len(a) else np.zeros(0, dtype=bool)


def dictionary(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(distinct texts in order of first appearance, each row's position among them)."""
    encoded = ac.dictionary_encode(binary(values))
    return encoded.dictionary, integers(encoded.indices)


def sorted_distinct(values: pa.Array) -> pa.Array:
    """The distinct texts in text order (bytes compared, as C++ compares strings)."""
    distinct = ac.unique(values)
    return ac.take(distinct, ac.sort_indices(distinct))


def order(values: pa.Array) -> np.ndarray:
    """The positions of ``values`` in text order (stable)."""
    return integers(ac.sort_indices(values))


def distinct(values: pa.Array) -> pa.Array:
    """The distinct texts, in order of first appearance."""
    return ac.unique(values)


def data(values: pa.Array) -> bytes:
    """The bytes of a large_binary array's texts, side by side."""
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64, count=len(values) + 1, offset=values.offset * 8)
    buffer = values.buffers()[2]
    return b"" if buffer is None else buffer.to_pybytes()[offsets[0] : offsets[-1]]


def repeated(piece: bytes, n: int) -> pa.Array:
    """``n`` times the same text (a separator for the element-wise joins: pa.scalar imports
    pandas)."""
    data = np.tile(np.frombuffer(piece, dtype=np.uint8), n)
    return from_buffers(data, np.arange(n + 1, dtype=np.int64) * len(piece))


def concatenate(parts: list[pa.Array]) -> pa.Array:
    """``cat(a, b, ...)``: the texts side by side, row by row."""
    if len(parts) == 1:
        return parts[0]
    return ac.binary_join_element_wise(*parts, repeated(b"", len(parts[0])))


def substring(strings: pa.Array, start: np.ndarray, length: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """``substr(s, i, n)`` per row, in bytes as ``std::string::substr(i, n)`` with the 32-bit
    arguments read as ``size_t``: a negative ``n`` reaches the end of ``s``; an ``i`` past the
    end (or negative) is out of range, which gives "" and is reported (the second result: the
    rows out of range, as Soufflé warns on each)."""
    raw = strings
    offsets = np.frombuffer(raw.buffers()[1], dtype=np.int64)[raw.offset : raw.offset + len(raw) + 1]
    data = np.frombuffer(raw.buffers()[2], dtype=np.uint8) if raw.buffers()[2] is not None else np.zeros(0, np.uint8)
    sizes = offsets[1:] - offsets[:-1]
    start = start.astype(np.int64)
    length = length.astype(np.int64)
    bad = (start < 0) | (start > sizes)
    begin = np.where(bad, 0, start)
    taken = np.where(bad, 0, np.where(length < 0, sizes - begin, np.minimum(length, sizes - begin)))
    out_offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(taken, out=out_offsets[1:])
    # Byte k of output row r is byte (offsets[r] + begin[r] + k - out_offsets[r]) of the input.
    shift = np.repeat(offsets[:-1] + begin - out_offsets[:-1], taken)
    picked = data[shift + np.arange(int(out_offsets[-1]), dtype=np.int64)]
    result = pa.Array.from_buffers(
        pa.large_binary(), len(sizes), [None, pa.py_buffer(out_offsets), pa.py_buffer(picked.tobytes())]
    )
    return result, bad


def terminated(strings: pa.Array, end: bytes) -> pa.Array:
    """Each text followed by ``end``: a NUL byte is what C functions read (``addresses``), a
    line break what the fact parser does (its ``data`` one value a line)."""
    return ac.binary_join_element_wise(strings, repeated(end, len(strings)), repeated(b"", len(strings)))


def addresses(strings: pa.Array) -> np.ndarray:
    """The address of each text's first byte (int64), valid while ``strings`` lives."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset : strings.offset + len(strings)]
    return offsets + strings.buffers()[2].address


def from_buffers(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Texts from their bytes side by side and their (n + 1) int64 offsets."""
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def byte_strings(result: pa.Array) -> list[str]:
    """Python strings of a binary result; bytes that do not decode (``substr`` cutting a
    multi-byte character, as Soufflé may) are kept as surrogate escapes."""
    try:
        return list(ac.cast(result, pa.large_string()).to_pylist())
    except pa.ArrowInvalid:
        return [b.decode("utf-8", "surrogateescape") for b in result.to_pylist()]


def contains(needles: pa.Array, haystacks: pa.Array) -> np.ndarray:
    """``contains(a, b)`` per row: whether ``a`` occurs in ``b``."""
    hay = np.array(haystacks.to_pylist(), dtype=object).astype(bytes)  # not to_numpy: it imports pandas
    needle = np.array(needles.to_pylist(), dtype=object).astype(bytes)
    return np.strings.find(hay, needle) >= 0


def match(pattern: str, strings: pa.Array) -> np.ndarray | None:
    """``match(pattern, s)`` for one pattern over many texts: whether all of ``s`` matches;
    None for a pattern ECMAScript refuses (Soufflé then warns, and both ``match`` and
    ``!match`` are false), reported on stderr once."""
    if not _ecmascript_braces(pattern):
        return _refused(pattern)
    anchored = f"^(?:{pattern})$"
    try:
        return booleans(ac.match_substring_regex(strings, anchored))  # not to_numpy: it imports pandas (0.3-0.5 s)
    except pa.ArrowInvalid:
        compiled = _python_regex(pattern)
    if compiled is None:
        return _refused(pattern)
    return np.fromiter((compiled.fullmatch(b) is not None for b in strings.to_pylist()), dtype=bool, count=len(strings))


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


def warn_substr(strings: pa.Array, start: np.ndarray, length: np.ndarray, bad: np.ndarray) -> None:
    """Soufflé's warning for ``substr`` out of range, once per distinct call here (it repeats it
    for every tuple)."""
    for i in np.nonzero(bad)[0][:10]:
        text: Any = strings[int(i)].as_py().decode("utf-8", "surrogateescape")
        print(
            f'warning: wrong index position provided by substr("{text}",{int(start[i])},{int(length[i])}) functor.',
            file=sys.stderr,
        )
