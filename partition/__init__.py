"""How relations split over shards: the owner hash (identical on NumPy and CuPy), bucketing
by destination, and placement decisions derived from a plan. Used by the Dask layer."""
