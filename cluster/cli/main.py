"""``dask-datalog``: the command line, one subcommand per module: ``run`` (its flags in
run_arguments.py, the run in run_command.py), ``gen`` and ``scale`` (cluster/experiments/cli.py),
``serve`` and ``job`` (cluster/service/cli.py), ``daemon`` (resident.py). Building the parser
imports no engine (but engine/compile_cache.py, which ``command`` saves), Dask or web code, and a
``run`` command line imports neither of the other two modules; each command imports what it
runs."""

from __future__ import annotations

import argparse
import os
import sys

from dask_datalog.cluster.cli import resident, run_arguments
from dask_datalog.cluster.cli.process import interrupts_deferred, settle_collector
from dask_datalog.engine import compile_cache

# Every subcommand, as the usage names them whichever parsers were built (errors print it); the
# other modules' COMMANDS, which a test holds to this.
SUBCOMMANDS = ("run", "gen", "scale", "serve", "job", "daemon")


def build_parser(only_run: bool = False) -> argparse.ArgumentParser:
    """The whole command line; with ``only_run``, the ``run`` subcommand alone (what parses a
    ``run`` command line the same way: the other subcommands' two dozen parsers cost ~10 ms,
    mostly gettext looking for catalogues, on every run)."""
    parser = argparse.ArgumentParser(
        prog="dask-datalog",
        description="Evaluate Soufflé-syntax Datalog on hash-indexed sorted arrays (NumPy or CuPy), on a Dask cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    run_arguments.add_parser(sub)
    if not only_run:
        from dask_datalog.cluster.experiments import cli as experiment_cli
        from dask_datalog.cluster.service import cli as service_cli

        experiment_cli.add_parsers(sub)
        service_cli.add_parsers(sub)
        resident.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(only_run=bool(words) and words[0] == "run")
    args = parser.parse_args(argv)
    if args.command == "run":
        with interrupts_deferred():
            from dask_datalog.cluster.cli import run_command  # the engine: `run` only

        return run_command.run(args, parser, argv)
    if args.command == "daemon":
        return resident.main(args)
    settle_collector()
    with interrupts_deferred():
        from dask_datalog.cluster.experiments import cli as experiment_cli
        from dask_datalog.cluster.service import cli as service_cli

    if args.command in experiment_cli.COMMANDS:
        return experiment_cli.main(args)
    return service_cli.main(args, parser)


def command() -> None:
    """``main``'s exit status, with what it wrote flushed and then
    no interpreter finalization. Tearing down the hundreds of modules Dask imports took 0.05-0.4 s
    after the summary line, which then understated the command's time; everything the command
    owns (clusters, temporary directories, files) is closed by ``main`` before it returns."""
    status = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left after the last write: as main() ends then
        status = 141
    sys.stderr.flush()
    compile_cache.save()  # after the output: a run that compiled no new method writes nothing
    os._exit(status)
