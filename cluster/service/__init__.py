"""The Datalog job service: ``dask-datalog serve`` and ``dask-datalog job`` (docs/service.md)."""
