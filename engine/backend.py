"""Choosing the array namespace and the kernels. Engine code is written once against ``xp``
(NumPy or CuPy); the few primitives where a compiled loop measurably beats the array-API
formulation (hash-table build and probe, merge-based set difference and merge, join expansion
and gather, the bitmap, CSV formatting) ask their ``Backend`` for the CPU kernels
(``kernels``, engine/kernels.c) and run the ``xp`` formulation when it hands out none. Nothing
imports CuPy unless asked."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from dask_datalog.engine.errors import DatalogError

BackendName = Literal["auto", "numpy", "cupy", "numpy-xp"]


@dataclass(frozen=True)
class Backend:
    """An array namespace and the engine's code path on it: "numpy" (the compiled kernels
    where they exist, NumPy elsewhere), "cupy", or "numpy-xp" (NumPy driven through exactly
    the array-API formulation CuPy runs, so CPU-only machines check the GPU's code path)."""

    name: str
    xp: ModuleType

    @property
    def kernels(self) -> ModuleType | None:
        """The CPU kernels module on "numpy", else None: run the ``xp`` formulation."""
        return _cpu_kernels() if self.name == "numpy" else None

    def asnumpy(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a) if self.name == "cupy" else np.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work, so phase timings are honest on the GPU."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()


@functools.cache
def _cpu_kernels() -> ModuleType:
    """The kernels module, imported on first use (a cached call: asked for many times an iteration)."""
    from dask_datalog.engine.storage import cpu_kernels

    return cpu_kernels


NUMPY = Backend("numpy", np)
NUMPY_XP = Backend("numpy-xp", np)


def gpu_count() -> int:
    """GPUs CuPy sees (0 without CuPy, a driver or a device)."""
    if importlib.util.find_spec("cupy") is None:
        return 0
    import cupy

    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except cupy.cuda.runtime.CUDARuntimeError:  # no driver or no device: use the CPU
        return 0


def cupy_usable() -> bool:
    """True when CuPy is installed and sees at least one GPU."""
    return gpu_count() > 0


def get_backend(name: BackendName | str | Backend = "auto") -> Backend:
    """The backend named (a Backend is returned as it is); ValueError for an unknown name."""
    if isinstance(name, Backend):
        return name
    if name == "numpy-xp":
        return NUMPY_XP
    if name == "numpy" or (name == "auto" and not cupy_usable()):
        return NUMPY
    if name in ("cupy", "auto"):
        if not cupy_usable():
            raise DatalogError(None, "backend cupy needs CuPy and a visible GPU (pip install 'dask-datalog[gpu]')")
        import cupy

        return Backend("cupy", cupy)
    raise ValueError(f"unknown backend {name!r}: expected auto, numpy or cupy")
