"""pyarrow's compute kernels called by name, without importing ``pyarrow.compute``.

That module wraps each of its ~290 functions in Python as it is imported (40-60 ms on the
2-core machine, a quarter of a small run's start), and pyarrow's own array methods (``cast``,
``take``...) import it on first use. The string functors' commonest operations
(``engine/text.py``: ``cat``, ``match``, a CSV reader's text column as binary) call these
instead; the rarer ones use ``pyarrow.compute`` itself.

The one private API of pyarrow used in the package lives here: ``pyarrow._compute``, the
compiled module ``pyarrow.compute`` re-exports its ``call_function`` and option classes from.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

# Private: pyarrow.compute's compiled core, whose call_function and option classes it
# re-exports as they are (pyarrow.compute.call_function is this function).
from pyarrow import _compute


def cast(values: Any, to: pa.DataType) -> Any:
    """``values`` as type ``to``, checked (pyarrow's safe cast: UTF-8 validated for a string)."""
    return _compute.call_function("cast", [values], _compute.CastOptions.safe(to))


def binary_join_element_wise(*parts: Any) -> Any:
    """Per row, the texts of ``parts[:-1]`` joined by the last part's text (the separator)."""
    return _compute.call_function("binary_join_element_wise", list(parts))


def match_substring_regex(values: Any, pattern: str) -> Any:
    """Per text, whether RE2's ``pattern`` matches a part of it (pa.ArrowInvalid: RE2 refuses
    the pattern)."""
    return _compute.call_function("match_substring_regex", [values], _compute.MatchSubstringOptions(pattern))
