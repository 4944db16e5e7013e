"""The points-to input generator of ``examples/`` (a script there, not a package module), for
tests that need inputs shaped like real programs: variables clustered in functions, a few
popular ones per function, a fraction of flows across functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "examples" / "generate_points_to.py"
_spec = importlib.util.spec_from_file_location("generate_points_to", _PATH)
assert _spec is not None and _spec.loader is not None
_generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_generator)


def clustered_points_to(out: Path, kind: str, variables: int, function: int, cross: float, seed: int) -> dict[str, int]:
    """Write ``kind``'s ("cspa" or "andersen") fact files into ``out``; facts per relation."""
    return _generator.generate(out, kind, variables, seed, cross=cross, function=function)
