"""Where a shard's tuples live: hash-indexed sorted arrays (hisa.py), sorted-set operations
(sets.py), the bitmap mirror (dense.py) and the compiled CPU kernels behind them."""
