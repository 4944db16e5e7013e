"""``python -m dask_datalog.cluster.cli``: the ``dask-datalog`` command."""

from dask_datalog.cluster.cli import command

command()
