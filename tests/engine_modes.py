"""The CPU backend's code paths (engine/backend.py), as Backend objects tests pick: NumPy with
the numba kernels on every operation, NumPy's own formulation (what a process runs before
numba pays off), and the array-API formulation CuPy runs (``numpy-xp``). A test that names its
backend checks that path whatever ran before it in the session."""

from __future__ import annotations

import dataclasses

import numpy as np

from dask_datalog.engine.backend import Backend, KernelPolicy, get_backend

KERNELS = Backend("numpy", np, "always")
BEFORE_NUMBA = Backend("numpy", np, "never")
ARRAY_API = get_backend("numpy-xp")


def with_kernels(name: str, kernels: KernelPolicy) -> Backend:
    """The backend ``--backend name`` selects, with kernel policy ``kernels`` when it is NumPy
    (numpy-xp and cupy have no kernels and stay as they are)."""
    backend = get_backend(name)  # type: ignore[arg-type]
    return dataclasses.replace(backend, kernels=kernels) if backend.name == "numpy" else backend
