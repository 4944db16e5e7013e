"""``dask-datalog``: the command line. Bad programs and fact files print
``file:line:col: error: message`` and exit 1; nothing the user wrote ends in a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engine.errors import DatalogError
from .api import Program


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-datalog",
        description="Evaluate Soufflé-syntax Datalog on hash-indexed sorted arrays (NumPy or CuPy).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="evaluate a program to its fixpoint and write its outputs")
    run.add_argument("program", type=Path, help="the Datalog program (.dl)")
    run.add_argument("-F", "--fact-dir", type=Path, default=Path("."), help="directory of .input fact files (default: .)")
    run.add_argument(
        "-D",
        "--output-dir",
        default=".",
        help="directory for .output relations as <name>.csv; '-' prints them to stdout (default: .)",
    )
    run.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        default="auto",
        help="array backend: cupy when a GPU is visible, else numpy (default: auto)",
    )
    run.add_argument("--stats", type=Path, help="write per-stratum, per-iteration statistics as JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        program = Program.from_file(args.program)
        result = program.run(fact_dir=args.fact_dir, backend=args.backend)
        result.write(args.output_dir, sys.stdout)
    except DatalogError as err:
        print(str(err), file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"{err.filename}: error: no such file", file=sys.stderr)
        return 1
    if args.stats:
        args.stats.write_text(json.dumps(result.stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
