"""The CPU backend's code paths (engine/backend.py), as Backend objects tests pick: NumPy with
the compiled kernels, and the array-API formulation CuPy runs (``numpy-xp``)."""

from __future__ import annotations

from dask_datalog.engine.backend import NUMPY, NUMPY_XP

KERNELS = NUMPY
ARRAY_API = NUMPY_XP
