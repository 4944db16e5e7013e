#!/usr/bin/env python3
"""What a user-defined functor costs per call: ``@f(x)`` over 10^6 distinct argument rows, the
whole term evaluation (distinct rows, decoding, the calls, encoding, the scatter back) as a rule
step runs it, for a C functor of each result class (number, float, symbol) called through the
compiled loop, the C loop alone, and a Python functor over NumPy arrays; beside the built-in
``x + x`` on the same column. Median of --repeat runs, on this machine's CPU (NumPy backend).

    .venv/bin/python bench/user_functors.py [--rows 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dask_datalog.engine import functors, ir, user_functors
from dask_datalog.engine.frontend import load_program
from dask_datalog.engine.storage import cpu_kernels
from dask_datalog.engine.values import SymbolTable

LIBRARY = r"""
#include <stdint.h>
#include <stdio.h>
int32_t add1(int32_t x) { return x + 1; }
float half(int32_t x) { return (float)x / 2.0f; }
const char *show(int32_t x) { static char buf[16]; snprintf(buf, sizeof buf, "%d", x); return buf; }
"""
PROGRAM = """
.functor add1(x: number): number
.functor half(x: number): float
.functor show(x: number): symbol
.decl r(x: number)
.decl s(x: number, a: number, b: float, c: symbol)
s(x, @add1(x), @half(x), @show(x)) :- r(x).
"""


def median_s(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit("bench/user_functors.py: no C compiler to build the functor library")
    where = Path(tempfile.mkdtemp())
    (where / "f.c").write_text(LIBRARY)
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(where / "libbench.so"), str(where / "f.c")], check=True)
    program = user_functors.bind(load_program(PROGRAM), libraries=["bench"], library_dirs=[str(where)])
    symbols = SymbolTable()
    ctx = functors.Context(np, symbols, user=user_functors.implementations(program.functors))
    rule = program.rules[0]
    calls = {c.name: c for c in ir.calls(rule.head)}
    rng = np.random.default_rng(0)
    column = (rng.permutation(args.rows).astype(np.uint32) - np.uint32(args.rows // 2)) ^ np.uint32(0x80000000)
    n = args.rows

    def per_call(seconds: float) -> str:
        return f"{seconds:8.3f} s  {seconds / n * 1e9:7.1f} ns/row"

    plus = ir.Call("+", (ir.Var("x"), ir.Var("x")), "number")
    print(f"{n:,} distinct rows, median of {args.repeat}")
    print("x + x (built in)          ", per_call(median_s(lambda: functors.apply(plus, [column, column], ctx), args.repeat)))
    for name in ("@add1", "@half"):
        seconds = median_s(lambda name=name: functors.apply(calls[name], [column], ctx), args.repeat)
        print(f"{name:<10} (C, whole step)", per_call(seconds))
    show = calls["@show"]
    seconds = median_s(lambda: functors.of(show).makes(show, [column], ctx), args.repeat)  # type: ignore[misc]
    print("@show      (C, texts made)", per_call(seconds))
    address = user_functors.implementations(program.functors)["@add1"].address  # type: ignore[attr-defined]
    values = functors.decode_int(column, "number", np)
    seconds = median_s(lambda: cpu_kernels.call_functor(address, "number", n, [values], []), args.repeat)
    print("@add1      (C loop alone) ", per_call(seconds))
    python = user_functors.bind(load_program(PROGRAM), {"add1": lambda x: x + np.int32(1)}, ["bench"], [str(where)])
    ctx.user = user_functors.implementations(python.functors)
    seconds = median_s(lambda: functors.apply(calls["@add1"], [column], ctx), args.repeat)
    print("@add1      (Python, NumPy)", per_call(seconds))


if __name__ == "__main__":
    main()
