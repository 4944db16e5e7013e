"""A shard's memory budget: how large a join chunk may be, and the clear end of a run whose
relations outgrow it (rather than the OS's OOM killer, or a Dask worker paused at its limit
with the run waiting on it).

The budget counts the engine's data: relations with their indexes and bitmaps (checked at the
loop's ``Control.check`` points) and, through the chunk size, the binding tables of a join.
A process also holds its code and libraries, so the default leaves room for them.
"""

from __future__ import annotations

import os
import sys

from dask_datalog.engine.backend import Backend

DEFAULT_SHARE = 0.5  # of the worker's memory limit (or of the machine or GPU) given to the data
CHUNK_SHARE = 8  # a join chunk's binding table takes at most 1/CHUNK_SHARE of the budget
ROW_BYTES = 64  # a binding-table row and its gather temporaries, about (8 uint32 columns, 2 copies)
MIN_CHUNK_ROWS = 1 << 12
# A join materialises chunk rows // JOIN_SHARE output rows at once (the chunk rows bound the
# head rows an iteration holds uncombined): a join chunk's binding table, packed head rows and
# the sort that deduplicates them take some 40 bytes a row at once, a held head row 8. cspa at
# 10x peaked at 329 MB joining 4 M rows at a time, 250 MB at 2 M, in the same CPU time, as
# REACH wiki-Vote.
JOIN_SHARE = 2
# A join or negation probes at most a PROBE_SHARE of the join rows of its outer table at once
# (``Operators.pieces``): a nested join's outer is a whole chunk of the join before it, and
# probing 2 M rows at once held 64 MB of probe state beside the chunks (dyck at 10x).
PROBE_SHARE = 4


def default_budget(backend: Backend, limit: int | None = None) -> int:
    """Bytes for one shard's data: a share of ``limit`` (a Dask worker's memory limit), else of
    the GPU's memory with CuPy, else of the machine's."""
    if limit:
        return int(limit * DEFAULT_SHARE)
    if backend.name == "cupy":
        import cupy

        return int(cupy.cuda.Device().mem_info[1] * DEFAULT_SHARE)
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * DEFAULT_SHARE)


def default_chunk_rows(backend: Backend) -> int:
    """Rows of head tuples an iteration holds uncombined, and (a ``JOIN_SHARE`` of them) of join
    output materialised at once, without a budget: 4 M on the CPU (about 100 MB
    with the sort that deduplicates them: 16 M took a REACH wiki-Vote run from 400 to 590 MiB
    at no gain in time), 128 M on a GPU, where fewer, larger sorts keep the device busy."""
    return 1 << 27 if backend.name == "cupy" else 1 << 22


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def chunk_rows_for(budget: int, backend: Backend) -> int:
    """``default_chunk_rows``, less under a small budget."""
    return max(MIN_CHUNK_ROWS, min(default_chunk_rows(backend), budget // (CHUNK_SHARE * ROW_BYTES)))
