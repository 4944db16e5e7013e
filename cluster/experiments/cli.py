"""``dask-datalog gen`` and ``dask-datalog scale``: synthetic inputs, and scaling experiments on
them or on any fact directory. ``cli.build_parser`` adds the subcommands and ``cli.main`` hands
them to ``main`` here. A bad argument is argparse's usage and one error line (exit 2); a bad
program, fact file or cluster one line (exit 1); never a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dask_datalog.cluster.experiments import generate
from dask_datalog.engine.errors import DatalogError

if TYPE_CHECKING:
    from dask_datalog.cluster.experiments import scaling

COMMANDS = ("gen", "scale")
DEFAULT_WORKERS = (1, 2, 4)
PLOTS_MISSING = "error: the plots need matplotlib: pip install 'dask-datalog[scale]' (or give --no-plots)"


def add_parsers(sub: Any) -> None:
    """The ``gen`` and ``scale`` subparsers, on the CLI's subparsers action ``sub``."""
    gen = sub.add_parser(
        "gen",
        help="write synthetic fact files: graphs, points-to inputs, inputs of the flowlog-bench programs",
        description="Write synthetic fact files (one tuple per line, sorted, no duplicates). By default each "
        "relation goes to OUT_DIR/<relation>.facts, tab-separated: edge.facts for the graphs (examples/reach.dl, "
        "examples/sg.dl), the relations of examples/andersen.dl and examples/cspa.dl for the points-to inputs. "
        "With --for PROGRAM.dl each goes to the file and delimiter that PROGRAM's .input directive for it "
        "declares, so that PROGRAM reads the directory with -F (Soufflé's too); the program must read exactly "
        "the relations the kind makes. Vectorised NumPy; the same kind, parameters, seed and NumPy give the "
        "same bytes.",
    )
    kinds = gen.add_subparsers(dest="kind", required=True, metavar="KIND")
    for g in generate.GENERATORS.values():
        kind = kinds.add_parser(
            g.kind, help=g.summary, description=f"{g.summary}. Weak scaling (scale --weak) grows it as {g.growth}."
        )
        kind.add_argument(
            "out_dir", type=Path, nargs="?", metavar="OUT_DIR", help="directory to write the fact files into (created if missing)"
        )
        kind.add_argument("-o", "--out", type=Path, metavar="DIR", help="the same as OUT_DIR")
        kind.add_argument(
            "--for",
            dest="for_program",
            type=Path,
            metavar="PROGRAM",
            help="name and delimit the files as PROGRAM.dl's .input directives declare (names match exactly, or "
            "ignoring case where that is unambiguous)",
        )
        kind.add_argument("--seed", type=int, default=0, help="random seed, 0 or more (default: 0)")
        for p in g.params:
            kind.add_argument(
                f"--{p.flag}",
                dest=p.name,
                type=p.type,
                default=p.default,
                metavar=p.name.upper(),
                help=f"{p.help} (default: {p.default})",
            )
        kind.set_defaults(command_parser=kind)

    scale = sub.add_parser(
        "scale",
        help="time a program on several worker counts: runs.csv, plots and a summary table",
        description="Time a program on several worker counts. Strong scaling (default): the same input on every "
        "count; weak scaling (--weak): an input generated for each count, growing with the workers. Each count "
        "gets its own embedded local Dask cluster (single-threaded workers, each with its share of the cores, or "
        "one GPU per worker with cupy); 0 workers is the run in this process, the baseline. Every cluster does "
        "one untimed warm-up run, then --repeat timed runs, each one Program.run() as the client sees it (no "
        "checkpoints, no retries). Writes OUT/runs.csv (one row per run: wall time, iterations, tuples, bytes "
        "exchanged, phase times per worker averaged over workers, coordination time, efficiency against the "
        "smallest positive count n1 with median time t1: strong n1*t1/(n*tn), weak t1/tn), three PNG plots "
        "(time, efficiency and phase breakdown against the workers) and prints medians and min-max per count.",
    )
    scale.add_argument("program", type=Path, help="the Datalog program (.dl)")
    source = scale.add_mutually_exclusive_group(required=True)
    source.add_argument("-F", "--fact-dir", type=Path, help="directory of the program's .input fact files")
    source.add_argument(
        "--gen",
        choices=tuple(generate.GENERATORS),
        metavar="KIND",
        help="generate the input instead: " + ", ".join(generate.GENERATORS) + " (see dask-datalog gen KIND --help)",
    )
    scale.add_argument(
        "--gen-args",
        default="",
        metavar="NAME=VALUE,...",
        help="parameters of --gen, e.g. 'scale=16,edge-factor=8' (defaults as in dask-datalog gen)",
    )
    scale.add_argument("--seed", type=int, default=0, help="seed of --gen (default: 0)")
    scale.add_argument(
        "--weak",
        action="store_true",
        help="weak scaling: the --gen input grows with the workers (rmat: scale + log2(workers), power-of-two counts; "
        "chain: length x workers; grid: height x workers; andersen, cspa and the program inputs: size x workers; 0 counts as 1)",
    )
    scale.add_argument(
        "--workers",
        metavar="N,N,...",
        help="worker counts, comma-separated; 0 = in this process, without Dask (default: 1,2,4)",
    )
    scale.add_argument("--repeat", type=int, default=3, metavar="N", help="timed runs per worker count (default: 3)")
    scale.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array backend (default: auto)")
    scale.add_argument(
        "--scheduler-file",
        type=Path,
        metavar="FILE",
        help="measure a running cluster instead, at its size: Program.run(client=...) puts one shard on every worker "
        "of the cluster and cannot use only some of them, so --workers does not go with it; resize the cluster and "
        "run again (into another --out) for other counts. Fact files and OUT must be on a file system the workers share",
    )
    scale.add_argument(
        "--out", type=Path, default=Path("results"), metavar="DIR", help="directory for runs.csv and the plots (default: results)"
    )
    scale.add_argument(
        "--no-plots",
        action="store_true",
        help="write runs.csv and the table only (the plots need matplotlib: pip install 'dask-datalog[scale]')",
    )
    scale.set_defaults(command_parser=scale)


def main(args: argparse.Namespace) -> int:
    return gen_command(args) if args.command == "gen" else scale_command(args)


def gen_command(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.command_parser
    if (args.out_dir is None) == (args.out is None):
        parser.error("give the output directory once: OUT_DIR or -o DIR")
    out_dir: Path = args.out_dir or args.out
    params = {p.name: getattr(args, p.name) for p in generate.GENERATORS[args.kind].params}
    program = None
    if args.for_program is not None:
        from dask_datalog.engine.frontend.load import load_program_file  # the front end only for --for

        try:
            program = load_program_file(args.for_program)
        except DatalogError as error:
            print(str(error) if error.pos is not None else f"{args.for_program}: error: {error.message}", file=sys.stderr)
            return 1
    try:
        relations = generate.generate(args.kind, params, args.seed)
        targets = generate.targets_for(program, out_dir, relations) if program is not None else None
    except generate.BadParameter as error:
        parser.error(str(error))
    try:
        counts = generate.write_facts(out_dir, relations, targets)
    except OSError as error:
        print(f"{error.filename or out_dir}: error: {error.strerror or error}", file=sys.stderr)
        return 1
    written = targets or generate.default_targets(out_dir, relations)
    for name, count in counts.items():
        print(f"{written[name].path}\t{count}")
    return 0


def scale_command(args: argparse.Namespace) -> int:
    # Imported here: every command builds this parser, only `scale` runs experiments.
    from dask_datalog.cluster.api import Program
    from dask_datalog.cluster.experiments import scaling

    parser: argparse.ArgumentParser = args.command_parser
    experiment = _experiment(parser, args)
    plots = not args.no_plots
    if plots and not _matplotlib():
        print(PLOTS_MISSING, file=sys.stderr)
        return 1
    try:
        program = Program.from_file(args.program)
    except DatalogError as error:  # the program file itself: name it first
        print(str(error) if error.pos is not None else f"{args.program}: error: {error.message}", file=sys.stderr)
        return 1
    try:
        runs = scaling.run_experiment(experiment, program, scaling.log_to_stderr)
    except generate.BadParameter as error:  # weak growth on an external cluster's size
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DatalogError as error:
        print(str(error), file=sys.stderr)
        return 1
    except (OSError, TimeoutError, RuntimeError) as error:  # RuntimeError: a cluster that did not start, a lost worker
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {experiment.out / scaling.RUNS_CSV} holds the worker counts measured before", file=sys.stderr)
        return 130
    summaries = scaling.summarize(runs)
    title = scaling.title(runs)
    print(f"{experiment.scaling} scaling: {title}; {experiment.repeat} timed run(s) per worker count after one warm-up")
    print(scaling.format_table(summaries))
    written = [experiment.out / scaling.RUNS_CSV]
    if plots:
        from dask_datalog.cluster.experiments.plots import write_plots

        written += write_plots(summaries, experiment.scaling, title, experiment.out)
    print("wrote " + ", ".join(map(str, written)))
    problems = scaling.inconsistent(runs)
    for problem in problems:
        print(f"error: the runs disagree on {problem}", file=sys.stderr)
    return 1 if problems else 0


def _experiment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> scaling.Experiment:
    """The arguments, checked, as an experiment (``parser.error`` exits 2)."""
    import psutil

    from dask_datalog.cluster.experiments import scaling

    if args.gen is None and (args.weak or args.gen_args):
        parser.error("--weak and --gen-args need --gen KIND (an input that can be generated for each worker count)")
    if args.fact_dir is not None and not args.fact_dir.is_dir():
        parser.error(f"-F {args.fact_dir}: no such directory")
    if args.scheduler_file is not None and args.workers is not None:
        parser.error(
            "--workers cannot go with --scheduler-file: a run uses every worker of an existing cluster (resize the cluster instead)"
        )
    if args.scheduler_file is not None and not args.scheduler_file.is_file():
        parser.error(f"--scheduler-file {args.scheduler_file}: no such file")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        workers = _counts(args.workers) if args.workers is not None else DEFAULT_WORKERS
    except ValueError:
        parser.error(f"--workers {args.workers!r}: expected worker counts like 1,2,4 (0 = in this process)")
    try:
        params = generate.parse_args_text(args.gen, args.gen_args) if args.gen is not None else {}
        if args.gen is not None:  # every input it will make, before hours of measuring the first ones
            grown = (
                [generate.weak(args.gen, params, n) for n in workers] if args.weak and args.scheduler_file is None else [params]
            )
            for each in grown:
                generate.check_memory(args.gen, each, psutil.virtual_memory().available)
        if args.seed < 0:
            raise generate.BadParameter(f"--seed must be 0 or more, not {args.seed}")
    except generate.BadParameter as error:
        parser.error(str(error))
    return scaling.Experiment(
        program=args.program,
        out=args.out,
        workers=workers,
        repeat=args.repeat,
        backend=args.backend,
        scaling=scaling.WEAK if args.weak else scaling.STRONG,
        fact_dir=args.fact_dir,
        gen=args.gen,
        gen_params=params,
        seed=args.seed,
        scheduler_file=args.scheduler_file,
    )


def _counts(text: str) -> tuple[int, ...]:
    """``1,2,4`` -> (1, 2, 4): distinct, increasing, 0 or more (ValueError otherwise)."""
    counts = sorted({int(item) for item in text.split(",")})
    if not counts or counts[0] < 0:
        raise ValueError(text)
    return tuple(counts)


def _matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
