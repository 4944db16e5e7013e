"""The ``dask-datalog`` command line."""

from dask_datalog.cluster.cli.main import main

__all__ = ["main"]
