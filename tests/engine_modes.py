"""The two states of the CPU backend a process goes through (engine/backend.py): NumPy's own
array-API formulation until numba pays off, then the numba kernels. Tests pin one or the
other so both are checked whatever ran before them in the session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dask_datalog.engine import backend


@contextlib.contextmanager
def numba_mode(loaded: bool) -> Iterator[None]:
    """loaded=True: kernels for every operation; False: as before numba is worth loading."""
    saved = backend._kernels, backend.KERNEL_MIN_ROWS, backend.KERNEL_AFTER_S
    if loaded:
        backend.KERNEL_MIN_ROWS = 0
    else:
        backend._kernels, backend.KERNEL_MIN_ROWS, backend.KERNEL_AFTER_S = None, 1 << 62, 1e9
    try:
        yield
    finally:
        backend._kernels, backend.KERNEL_MIN_ROWS, backend.KERNEL_AFTER_S = saved
