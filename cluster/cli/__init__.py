"""The ``dask-datalog`` command line."""

from dask_datalog.cluster.cli.main import command, main

__all__ = ["command", "main"]
