"""``dask-datalog``: the command line, one subcommand per module: ``run`` (run_command.py), ``gen``
and ``scale`` (cluster/experiments/cli.py)."""

from __future__ import annotations

import argparse

from dask_datalog.cluster.cli import run_command
from dask_datalog.cluster.experiments import cli as experiment_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-datalog",
        description="Evaluate Soufflé-syntax Datalog on hash-indexed sorted arrays (NumPy or CuPy), on a Dask cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_command.add_parser(sub)
    experiment_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in experiment_cli.COMMANDS:
        return experiment_cli.main(args)
    return run_command.run(args, parser, argv)
