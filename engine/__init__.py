"""Everything one shard needs: front end (grammar, parser, checker, strata), planning, HISA
relations and sorted-set kernels, the semi-naive evaluator, fact I/O. See docs/architecture.md."""
