"""Choosing the array namespace. Engine code is written once against ``xp`` (NumPy or CuPy);
the few primitives where a hand-written kernel measurably beats the array-API formulation
(hash-table build and probe, merge-based set difference and merge) are dispatched here: numba
on the CPU, the vectorised ``xp`` formulation elsewhere. Nothing imports CuPy unless asked."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .errors import DatalogError

BackendName = Literal["auto", "numpy", "cupy", "numpy-xp"]


@dataclass(frozen=True)
class Backend:
    name: str  # "numpy" or "cupy"
    xp: ModuleType

    def asnumpy(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a) if self.name == "cupy" else np.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work, so phase timings are honest on the GPU."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()


# numba costs ~0.7 s per process (import plus JIT runtime start), which a small run never
# repays. So NumPy runs the array-API formulation until one operation reaches
# KERNEL_MIN_ROWS rows or the process has been computing for KERNEL_AFTER_S seconds (a run
# that long is worth the start-up); from then on every operation uses the kernels. Both
# paths give identical results; tests set KERNEL_MIN_ROWS to 0 to drive the kernels.
KERNEL_MIN_ROWS = 1 << 22
KERNEL_AFTER_S = 0.5
_first_use: float | None = None
_kernels: ModuleType | None = None


def cpu_kernels(xp: Any, rows: int) -> ModuleType | None:
    """The numba kernels module when ``xp`` is NumPy and they are (or are now) worth it."""
    global _first_use, _kernels
    if xp is not np:
        return None
    if _kernels is None:
        now = time.perf_counter()
        _first_use = now if _first_use is None else _first_use
        if rows < KERNEL_MIN_ROWS and now - _first_use < KERNEL_AFTER_S:
            return None
        from . import cpu_kernels as kernels

        _kernels = kernels
    return _kernels


class _ArrayApiNumpy(ModuleType):
    """NumPy under another name: the kernels dispatch on ``xp is numpy``, so through this the
    CPU runs exactly the array-API code path that CuPy runs. The test suite uses it to cover
    the GPU's code on machines without a GPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


ARRAY_API_NUMPY = Backend("numpy-xp", _ArrayApiNumpy("numpy_xp"))


def cupy_usable() -> bool:
    """True when CuPy is installed and sees at least one GPU."""
    if importlib.util.find_spec("cupy") is None:
        return False
    import cupy

    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except cupy.cuda.runtime.CUDARuntimeError:  # no driver or no device: use the CPU
        return False


def get_backend(name: BackendName | Backend = "auto") -> Backend:
    if isinstance(name, Backend):
        return name
    if name == "numpy-xp":
        return ARRAY_API_NUMPY
    if name == "numpy" or (name == "auto" and not cupy_usable()):
        return Backend("numpy", np)
    if name in ("cupy", "auto"):
        if not cupy_usable():
            raise DatalogError(None, "backend cupy needs CuPy and a visible GPU (pip install 'dask-datalog[gpu]')")
        import cupy

        return Backend("cupy", cupy)
    raise ValueError(f"unknown backend {name!r}: expected auto, numpy or cupy")
