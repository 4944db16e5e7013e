"""The points-to input generator (``dask-datalog gen andersen|cspa``), for tests that need inputs
shaped like real programs: variables clustered in functions, a few popular ones per function, a
fraction of flows across functions."""

from __future__ import annotations

from pathlib import Path

from dask_datalog.cluster.experiments.generate import generate, write_facts


def clustered_points_to(out: Path, kind: str, variables: int, function: int, cross: float, seed: int) -> dict[str, int]:
    """Write ``kind``'s ("cspa" or "andersen") fact files into ``out``; facts per relation."""
    return write_facts(out, generate(kind, {"size": variables, "function": function, "cross": cross}, seed))
