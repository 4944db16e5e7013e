"""How relations split over shards: the owner hash (identical on NumPy and CuPy), bucketing
by destination, and placement decisions derived from a plan. Used by the Dask layer.
``REPLICATE_BELOW`` is here, not in placement.py, so that the CLI's parser reads it without
importing the planner."""

# Per replica, in packed canonical rows: small against a worker's memory, cheap to broadcast
# once per run, and it removes an exchange from every iteration (docs/benchmarks.md,
# "Replication", has the measurements behind the figure).
REPLICATE_BELOW = 64 * 2**20
