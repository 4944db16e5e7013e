"""Executing a plan on one shard: the semi-naive fixpoint and the operators of its rule versions."""
