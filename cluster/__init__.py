"""The public API of dask-datalog: ``from dask_datalog.cluster import Program``."""

from dask_datalog.cluster.api import Program, Result

__all__ = ["Program", "Result"]
