"""Choosing the array namespace. Engine code is written once against ``xp`` (NumPy or CuPy);
the few primitives where a hand-written kernel measurably beats the array-API formulation
(hash-table build and probe, merge-based set difference and merge) are dispatched here: numba
on the CPU, the vectorised ``xp`` formulation elsewhere. Nothing imports CuPy unless asked."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

BackendName = Literal["auto", "numpy", "cupy"]


@dataclass(frozen=True)
class Backend:
    name: str  # "numpy" or "cupy"
    xp: ModuleType

    def asnumpy(self, a: Any) -> np.ndarray:
        return a if self.xp is np else self.xp.asnumpy(a)

    def asarray(self, a: Any) -> Any:
        return self.xp.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work, so phase timings are honest on the GPU."""
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()


def cupy_usable() -> bool:
    """True when CuPy is installed and sees at least one GPU (never raises)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device: the CPU backend is the answer, not an error
        return False


def get_backend(name: BackendName = "auto") -> Backend:
    if name == "numpy" or (name == "auto" and not cupy_usable()):
        return Backend("numpy", np)
    if name in ("cupy", "auto"):
        import cupy

        return Backend("cupy", cupy)
    raise ValueError(f"unknown backend {name!r}: expected auto, numpy or cupy")
