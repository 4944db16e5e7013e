"""Synthetic inputs for the points-to benchmarks (andersen.dl, cspa.dl).

The Graspan/GPULog inputs are only published as Git-LFS objects, so benchmarks run on generated
programs instead. Real programs keep most flows inside a function, where a few variables
(parameters, `this`) take most of them, and cross functions rarely (calls, globals). So each fact
goes from a uniform variable to a Zipf-picked variable of the same function, or, with probability
``cross``, to any variable. Raising ``cross`` joins functions into larger strongly connected flows
and makes the derived relations grow faster than linearly (see examples/README.md for sizes).
Same seed, size and numpy, same files.

    python examples/generate_points_to.py OUT_DIR --kind andersen --size 100000 --seed 1
    dask-datalog run examples/andersen.dl -F OUT_DIR -D out/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

# Facts per variable, for each relation (size = number of variables).
ANDERSEN = {"AddressOf": 0.5, "Assign": 1.0, "Load": 0.2, "Store": 0.2}
CSPA = {"assign": 1.0, "dereference": 0.5}
FUNCTION = 32  # variables per function (default): most facts stay inside one


def relation(
    rng: np.random.Generator, n: int, per_var: float, skew: float, cross: float, function: int = FUNCTION
) -> np.ndarray:
    """Distinct (src, dst) pairs without self-loops, sorted.

    src is uniform. dst is, with probability ``cross``, any variable (a call or a global);
    else a variable of src's function (the block of ``function`` consecutive ids), picked by a
    Zipf law over its position, so the first variables of a function (parameters, ``this``)
    are the popular ones.
    """
    m = max(1, int(n * per_var))
    src = rng.integers(0, n, m)
    local = np.minimum(src - src % function + (rng.zipf(skew, m) - 1) % function, n - 1)
    pairs = np.stack([src, np.where(rng.random(m) < cross, rng.integers(0, n, m), local)], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0).astype(np.int32)


def write(path: Path, pairs: np.ndarray) -> None:
    table = pa.table({"a": pairs[:, 0], "b": pairs[:, 1]})
    pacsv.write_csv(table, str(path), pacsv.WriteOptions(include_header=False, delimiter="\t"))


def generate(
    out: Path, kind: str, size: int, seed: int, skew: float = 1.5, cross: float = 0.005, function: int = FUNCTION
) -> dict[str, int]:
    """Write ``<out>/<relation>.facts`` for ``kind``; return the number of facts per relation."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, per_var in (ANDERSEN if kind == "andersen" else CSPA).items():
        pairs = relation(rng, size, per_var, skew, cross, function)
        write(out / f"{name}.facts", pairs)
        counts[name] = len(pairs)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="fact directory to write")
    parser.add_argument("--kind", choices=("andersen", "cspa"), required=True)
    parser.add_argument("--size", type=int, default=10_000, help="number of variables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skew", type=float, default=1.5, help="Zipf exponent (> 1); lower = flatter")
    parser.add_argument("--cross", type=float, default=0.005, help="fraction of facts that cross functions")
    parser.add_argument("--function", type=int, default=FUNCTION, help="variables per function")
    args = parser.parse_args()
    counts = generate(args.out, args.kind, args.size, args.seed, args.skew, args.cross, args.function)
    for name, count in counts.items():
        print(f"{args.out / name}.facts\t{count}")


if __name__ == "__main__":
    main()
