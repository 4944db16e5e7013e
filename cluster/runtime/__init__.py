"""The Dask runtime: clusters, the tasks workers run, and the client that steers a run."""
