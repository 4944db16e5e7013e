"""``dask-datalog run``'s flags. Only what their defaults and help name is imported here: every
command (``--help`` too) builds this parser, while the engine is imported by run_command.py
when a run starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dask_datalog.engine.errors import EXIT_SUSPENDED, EXIT_TERMINATED, EXIT_TIMEOUT
from dask_datalog.partition import REPLICATE_BELOW
from dask_datalog.spmd.options import ExchangeKind


def add_parser(sub: Any) -> None:
    """The ``run`` subparser, on the CLI's subparsers action ``sub``."""
    run = sub.add_parser(
        "run",
        help="evaluate a program to its fixpoint and write its outputs",
        description="Evaluate a program to its fixpoint and write its outputs. By default the run goes where "
        "it is fastest: in this process on one CPU or GPU (the CPU kernels use every core), on an embedded "
        "local Dask cluster with one worker per GPU when there are several; --cluster or --workers start the "
        "embedded cluster anyway, --scheduler or --scheduler-file use a running one. A program loaded before "
        "comes checked from $XDG_CACHE_HOME/dask-datalog/programs (~/.cache/...), or the folder "
        "DASK_DATALOG_PROGRAM_CACHE names (set empty: no cache).",
    )
    run.add_argument("program", type=Path, help="the Datalog program (.dl)")
    run.add_argument(
        "-F",
        "--fact-dir",
        type=Path,
        help='directory of .input fact files (default: the program\'s .pragma "fact-dir", else .)',
    )
    run.add_argument(
        "-D",
        "--output-dir",
        help="directory for .output relations as <name>.csv; '-' prints them to stdout "
        '(default: the program\'s .pragma "output-dir", else .)',
    )
    run.add_argument(
        "-I",
        "--include-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="where #include and .include look for files, after the including file's own directory (repeatable)",
    )
    run.add_argument(
        "-M",
        "--macro",
        action="append",
        default=[],
        metavar="'NAME[=VALUE] ...'",
        help="macros for the C preprocessor, as Soufflé's -M (repeatable; a bare NAME is 1)",
    )
    run.add_argument(
        "-L",
        "--library-dir",
        action="append",
        metavar="DIR",
        help="where -l libraries are looked for, in order, before the dynamic loader's own path, as Soufflé's "
        "-L (repeatable; default: .)",
    )
    run.add_argument(
        "-l",
        "--libraries",
        action="append",
        metavar="NAME",
        help="a shared library lib<NAME>.so whose C functions compute the program's .functor declarations, "
        "as Soufflé's -l (repeatable; default: functors)",
    )
    run.add_argument(
        "--no-preprocessor",
        action="store_true",
        help="do not run the C preprocessor (as Soufflé's flag; a # line is then an error)",
    )
    run.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default="csv",
        help="csv: one <name>.csv per relation; parquet: a dataset <name>/part-NNNNN.parquet (default: csv)",
    )
    run.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        default="auto",
        help="array backend: cupy when a GPU is visible, else numpy (default: auto)",
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDR", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--scheduler-file", type=Path, metavar="FILE", help="scheduler file of a running Dask cluster")
    where.add_argument("--no-cluster", action="store_true", help="evaluate in this process, without Dask")
    where.add_argument(
        "--cluster", action="store_true", help="start the embedded local Dask cluster even where one process is faster"
    )
    tls = run.add_argument_group(
        "TLS",
        "for a scheduler that requires TLS (a tls:// address); with --scheduler or --scheduler-file only. "
        "Without these flags Dask's configuration applies, as for any Dask client: the "
        "distributed.comm.tls.ca-file / .client.cert / .client.key keys, e.g. the environment variables "
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY.",
    )
    tls.add_argument(
        "--tls-ca-file", type=Path, metavar="FILE", help="CA certificate (PEM) that signed the cluster's certificates"
    )
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="this client's certificate (PEM)")
    tls.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="this client's private key (PEM), unless the --tls-cert file holds it"
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="workers of the embedded cluster (default: one per GPU with cupy, else one per core)",
    )
    run.add_argument(
        "--replicate-below",
        type=int,
        metavar="BYTES",
        default=REPLICATE_BELOW,
        help="static relations smaller than this are copied to every worker instead of partitioned "
        f"(default: {REPLICATE_BELOW // 2**20} MiB)",
    )
    reliability = run.add_argument_group(
        "checkpoints, retries and limits",
        "A run on a cluster survives lost workers: it starts again from its latest checkpoint "
        "(or from its inputs) on the workers present, up to --retries times. The embedded cluster "
        "checkpoints into a temporary directory of its own; an external cluster needs --checkpoint "
        "on a file system every worker shares. On SIGTERM (a batch system's walltime warning, "
        f"scancel) the run writes a checkpoint at the next iteration boundary and exits with status {EXIT_SUSPENDED}; "
        "a second SIGTERM stops it at once (still 75 when it has an earlier checkpoint, else "
        f"{EXIT_TERMINATED}); run the same command with --resume DIR to continue.",
    )
    reliability.add_argument("--checkpoint", type=Path, metavar="DIR", help="write checkpoints into DIR (created if missing)")
    reliability.add_argument(
        "--checkpoint-every",
        type=float,
        metavar="SECONDS",
        help="seconds between checkpoints (default: every 30 s at least, and never more than 10%% of the run)",
    )
    reliability.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue from the latest checkpoint in DIR (same program and inputs, checked by hash); goes on checkpointing there",
    )
    reliability.add_argument(
        "--retries", type=int, default=2, metavar="N", help="lost workers a run survives before it fails (default: 2)"
    )
    reliability.add_argument(
        "--timeout", type=float, metavar="SECONDS", help=f"stop the run after SECONDS (exit status {EXIT_TIMEOUT})"
    )
    reliability.add_argument(
        "--memory-limit",
        metavar="BYTES",
        help="memory for the data of each worker (or of this process), e.g. 4GiB: joins are chunked to fit, and a run "
        "whose relations outgrow it ends with a message naming the relation (default: half the Dask worker's memory "
        "limit; in process or with CuPy, half the machine's or the GPU's memory)",
    )
    run.add_argument(
        "--exchange",
        choices=tuple(ExchangeKind),
        default=ExchangeKind.AUTO.value,
        help="how workers exchange tuples: mesh (direct sockets, tcp:// clusters), comm (Dask's comms: tcp, tls, "
        "ucx) or auto (the mesh where it runs, measured fastest there; comm elsewhere) (default: auto)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress display (it is off anyway when stderr is not a terminal)")
    run.add_argument(
        "--stats",
        type=Path,
        help="write per-stratum, per-iteration (per-worker) statistics as JSON to this file, with the costliest rules "
        '("rules": time, share, tuples out, evaluations)',
    )
    run.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="time and count every rule version (per stratum, iteration and worker) and write the profile as JSON "
        "to FILE (schema: docs/architecture.md, Profiles); the costliest rules are printed on stderr",
    )
