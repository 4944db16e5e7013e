"""A run of n >= 1 shards over a transport, without Dask: every shard runs the same code."""
