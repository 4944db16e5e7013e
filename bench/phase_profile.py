"""Where a run's time goes: per-phase totals (join, dedup, difference, merge; device-
synchronised), load and evaluation time, iteration count and the costliest iterations, for
one program on one graph. With --probe-check it also times the join's key lookup on the
chosen backend: binary search over the sorted key directory, and on the CPU the hash table.

    python bench/phase_profile.py --program reach --graph ../shared/data/fe_body/data_163734.txt --backend cupy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dask_datalog.cluster import Program
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.execution.phases import PHASES
from dask_datalog.engine.storage.hisa import HashTable

ROOT = Path(__file__).resolve().parents[1]


def probe_check(backend_name: str, n_keys: int = 200_000, n_queries: int = 20_000_000) -> None:
    backend = get_backend(backend_name)  # type: ignore[arg-type]
    xp = backend.xp
    rng = xp.random.default_rng(0) if hasattr(xp.random, "default_rng") else xp.random
    prefix = xp.sort(rng.integers(0, 4 * n_keys, n_keys * 4).astype(xp.uint64))
    queries = rng.integers(0, 4 * n_keys, n_queries).astype(xp.uint64)
    table = HashTable.build(prefix, xp)
    variants = [("sorted directory", lambda: table.lookup_directory(queries, xp))]
    if backend.name == "numpy":  # 20 M probes: the kernels serve them, so this is the table
        variants.append(("hash table", lambda: table.lookup(queries, backend)))
    for name, fn in variants:
        fn()
        backend.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        backend.synchronize()
        print(f"probe {name}: {(time.perf_counter() - t0) / 5 * 1e3:.2f} ms for {n_queries:,} queries")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--program", default="reach", help="an example name (examples/<name>.dl) or a .dl path")
    parser.add_argument("--graph", type=Path, required=True, help="edge file (tab-separated pairs)")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "numpy-xp", "cupy"))
    parser.add_argument("--top", type=int, default=5, help="how many of the costliest iterations to list")
    parser.add_argument("--probe-check", action="store_true")
    args = parser.parse_args()

    path = Path(args.program) if args.program.endswith(".dl") else ROOT / "examples" / f"{args.program}.dl"
    program = Program.from_file(path)
    # Warm-up on a tiny graph: imports, CUDA context, kernel loading are not the run's cost.
    program.run(facts={"edge": ROOT / "tests/data/tiny/data_10.txt"}, backend=args.backend)
    t0 = time.perf_counter()
    result = program.run(facts={"edge": args.graph}, backend=args.backend)
    wall = time.perf_counter() - t0
    stats = result.stats
    iterations = [it for s in stats["strata"] for it in s["iterations"]]
    totals = {p: sum(it[p] for it in iterations) for p in PHASES}
    print(f"{path.name} on {args.graph} with {stats['backend']}: sizes {result.sizes}")
    print(f"wall {wall:.3f} s = load {stats['load_s']:.3f} s + evaluation {stats['total_s']:.3f} s + output decode")
    print(f"iterations {len(iterations)}; phases: " + ", ".join(f"{p} {t:.3f} s" for p, t in totals.items()))
    rest = stats["total_s"] - sum(totals.values())
    print(
        f"outside the phases (planning the step, Python, bookkeeping): {rest:.3f} s, {rest / max(1, len(iterations)) * 1e3:.2f} ms per iteration"
    )
    costly = sorted(range(len(iterations)), key=lambda i: -iterations[i]["time_s"])[: args.top]
    for i in costly:
        it = iterations[i]
        print(f"  iteration {i}: {it['time_s']:.3f} s, delta {it['delta']}, " + ", ".join(f"{p} {it[p]:.3f}" for p in PHASES))
    if args.probe_check:
        probe_check(args.backend)


if __name__ == "__main__":
    main()
