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
import pyarrow.compute as pc


def texts(strings: list[str]) -> pa.Array:
    """The UTF-8 bytes of ``strings`` (surrogate escapes back to the bytes they stand for)."""
    try:
        return pa.array(strings, type=pa.large_string()).cast(pa.large_binary())
    except UnicodeEncodeError:
        return pa.array([s.encode("utf-8", "surrogateescape") for s in strings], type=pa.large_binary())


def take(chunks: list[pa.Array], ids: np.ndarray) -> pa.Array:
    """Rows ``ids`` of the texts held in ``chunks`` (merged into one first, in place: each
    growth of the table adds a chunk, each gather reads one)."""
    if len(chunks) > 1:
        chunks[:] = [pa.concat_arrays(chunks)]
    return chunks[0].take(pa.array(ids)) if chunks else texts([])


def concatenate(parts: list[pa.Array]) -> pa.Array:
    """``cat(a, b, ...)``: the texts side by side, row by row."""
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, pa.scalar(b"", pa.large_binary()))


def to_string(values: np.ndarray) -> pa.Array:
    """``to_string(n)``: the decimal text of each integer, as C++'s ``std::to_string``."""
    return pc.cast(pa.array(values), pa.large_string())


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


def nul_terminated(strings: pa.Array) -> pa.Array:
    """Each text followed by a NUL byte: what C functions read (``addresses``)."""
    nul = pa.scalar(b"\0", pa.large_binary())
    return pc.binary_join_element_wise(strings, nul, pa.scalar(b"", pa.large_binary()))


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
        return list(result.cast(pa.large_string()).to_pylist())
    except pa.ArrowInvalid:
        return [b.decode("utf-8", "surrogateescape") for b in result.to_pylist()]


def contains(needles: pa.Array, haystacks: pa.Array) -> np.ndarray:
    """``contains(a, b)`` per row: whether ``a`` occurs in ``b``."""
    hay = haystacks.to_numpy(zero_copy_only=False).astype(bytes)
    needle = needles.to_numpy(zero_copy_only=False).astype(bytes)
    return np.strings.find(hay, needle) >= 0


def match(pattern: str, strings: pa.Array) -> np.ndarray | None:
    """``match(pattern, s)`` for one pattern over many texts: whether all of ``s`` matches;
    None for a pattern ECMAScript refuses (Soufflé then warns, and both ``match`` and
    ``!match`` are false), reported on stderr once."""
    if not _ecmascript_braces(pattern):
        return _refused(pattern)
    anchored = f"^(?:{pattern})$"
    try:
        return np.asarray(pc.match_substring_regex(strings, pattern=anchored).to_numpy(zero_copy_only=False), dtype=bool)
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
