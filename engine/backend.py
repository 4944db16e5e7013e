"""Choosing the array namespace and the kernel policy. Engine code is written once against
``xp`` (NumPy or CuPy); the few primitives where a hand-written kernel measurably beats the
array-API formulation (hash-table build and probe, merge-based set difference and merge, join
expansion and gather, the bitmap, CSV formatting) ask their ``Backend`` for the numba kernels
(``kernels_for``) and run the ``xp`` formulation when it hands out none. Nothing imports CuPy
unless asked."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .errors import DatalogError

BackendName = Literal["auto", "numpy", "cupy", "numpy-xp"]
KernelPolicy = Literal["auto", "always", "never"]

# numba costs ~0.7 s per process (import plus JIT runtime start), which a small run never
# repays. So under the "auto" policy NumPy runs its own formulation until one operation
# reaches KERNEL_MIN_ROWS rows or the process has been computing for KERNEL_AFTER_S seconds
# since its first decision (a run that long is worth the start-up); from then on every
# operation uses the kernels. Both paths give identical results.
KERNEL_MIN_ROWS = 1 << 22
KERNEL_AFTER_S = 0.5

# The process-wide part of the policy, since numba's cost is per process: the kernels module
# once loaded, and when "auto" first decided. Read and written in this module only.
_loaded: ModuleType | None = None
_first_use: float | None = None


@dataclass(frozen=True)
class Backend:
    """An array namespace and the engine's code path on it.

    ``name``: "numpy", "cupy", or "numpy-xp" (NumPy driven through exactly the array-API
    formulation CuPy runs, so CPU-only machines check the GPU's code path). ``kernels``: when
    the numba kernels serve an operation; only "numpy" has them:

    - "auto": once they pay for numba's start-up (see KERNEL_MIN_ROWS): what users get;
    - "always": on every operation, tiny ones too (tests, to drive the kernels);
    - "never": NumPy's own formulation (as "auto" runs before the kernels pay off), or, on
      "numpy-xp" and "cupy", the array-API formulation."""

    name: str
    xp: ModuleType
    kernels: KernelPolicy

    def __post_init__(self) -> None:
        if self.kernels != "never" and (self.name != "numpy" or self.xp is not np):
            raise ValueError(f"backend {self.name!r} has no numba kernels: kernels must be 'never'")

    def kernels_for(self, rows: int) -> ModuleType | None:
        """The numba kernels module for an operation over ``rows`` rows, or None: run the
        ``xp`` formulation."""
        if self.kernels == "never":
            return None
        if self.kernels == "always" or _loaded is not None:
            return load_kernels()
        global _first_use
        now = time.perf_counter()
        _first_use = now if _first_use is None else _first_use
        if rows < KERNEL_MIN_ROWS and now - _first_use < KERNEL_AFTER_S:
            return None
        return load_kernels()

    @property
    def numpy_native(self) -> bool:
        """Whether NumPy-only calls may replace the array-API formulation where no kernel
        serves (np.repeat with array counts, which CuPy lacks): "numpy" only."""
        return self.name == "numpy"

    def asnumpy(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a) if self.name == "cupy" else np.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work, so phase timings are honest on the GPU."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()


def load_kernels() -> ModuleType:
    """Import (once per process) and return the numba kernels. A process that calls this
    ahead, such as a benchmark's warm-up, has every later "auto" operation served by them."""
    global _loaded
    if _loaded is None:
        from . import cpu_kernels

        _loaded = cpu_kernels
    return _loaded


NUMPY = Backend("numpy", np, "auto")
NUMPY_XP = Backend("numpy-xp", np, "never")


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


def get_backend(name: BackendName | Backend = "auto") -> Backend:
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

        return Backend("cupy", cupy, "never")
    raise ValueError(f"unknown backend {name!r}: expected auto, numpy or cupy")
