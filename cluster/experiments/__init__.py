"""``dask-datalog gen`` and ``scale``: synthetic inputs and scaling experiments."""
