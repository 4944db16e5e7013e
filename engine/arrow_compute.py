"""pyarrow's compute kernels called by name, without importing ``pyarrow.compute``.

That module wraps each of its ~290 functions in Python as it is imported (40-60 ms on the
2-core machine, a quarter of a small run's start, on every run that reads a symbol), and
pyarrow's own array methods (``take``, ``filter``, ``cast``, ``unique``...) import it on first
use. The bulk text operations every run with symbols makes (``engine/text.py``: interning,
the agreed table's text order, gathering a column's texts for output) call these instead;
the string functors, rarer, use ``pyarrow.compute`` itself.

The one private API of pyarrow used in the package lives here: ``pyarrow._compute``, the
compiled module ``pyarrow.compute`` re-exports its ``call_function`` and option classes from.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

# Private: pyarrow.compute's compiled core, whose call_function and option classes it
# re-exports as they are (pyarrow.compute.call_function is this function).
from pyarrow import _compute


def take(values: Any, indices: Any) -> Any:
    """``values[indices]`` (pyarrow arrays; indices checked against the bounds)."""
    return _compute.call_function("take", [values, indices])


def filter(values: Any, mask: Any) -> Any:
    """The values where the boolean ``mask`` is true."""
    return _compute.call_function("filter", [values, mask])


def cast(values: Any, to: pa.DataType) -> Any:
    """``values`` as type ``to``, checked (pyarrow's safe cast: UTF-8 validated for a string)."""
    return _compute.call_function("cast", [values], _compute.CastOptions.safe(to))


def dictionary_encode(values: Any) -> Any:
    """A dictionary array: the distinct values in order of first appearance, and each row's
    index among them."""
    return _compute.call_function("dictionary_encode", [values])


def unique(values: Any) -> Any:
    """The distinct values, in order of first appearance."""
    return _compute.call_function("unique", [values])


def sort_indices(values: Any) -> Any:
    """The positions of ``values`` in ascending order (stable)."""
    return _compute.call_function("sort_indices", [values], _compute.SortOptions())


def index_in(values: Any, value_set: Any) -> Any:
    """Per value, its position in ``value_set``, null where absent."""
    return _compute.call_function("index_in", [values], _compute.SetLookupOptions(value_set))


def equal(a: Any, b: Any) -> Any:
    """Per row, whether ``a`` and ``b`` are equal (a boolean array)."""
    return _compute.call_function("equal", [a, b])


def binary_join_element_wise(*parts: Any) -> Any:
    """Per row, the texts of ``parts[:-1]`` joined by the last part's text (the separator)."""
    return _compute.call_function("binary_join_element_wise", list(parts))


def match_substring_regex(values: Any, pattern: str) -> Any:
    """Per text, whether RE2's ``pattern`` matches a part of it (pa.ArrowInvalid: RE2 refuses
    the pattern)."""
    return _compute.call_function("match_substring_regex", [values], _compute.MatchSubstringOptions(pattern))
