"""``dask-datalog``: the command line. Bad programs and fact files print
``file:line:col: error: message`` and exit 1; nothing the user wrote ends in a traceback.

By default a run starts an embedded local Dask cluster (one worker per GPU, else one per core)
and evaluates one shard per worker; ``--scheduler``/``--scheduler-file`` submit to an existing
cluster instead (``--tls-*``: over TLS, as ``dask worker`` takes them; without them Dask's own
configuration applies), and ``--no-cluster`` evaluates in this process without Dask."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..engine.errors import DatalogError
from ..engine.plan import plan_program
from ..partition.placement import REPLICATE_BELOW
from .api import Program, Result
from .runtime import WorkerLost


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-datalog",
        description="Evaluate Soufflé-syntax Datalog on hash-indexed sorted arrays (NumPy or CuPy), on a Dask cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="evaluate a program to its fixpoint and write its outputs",
        description="Evaluate a program to its fixpoint and write its outputs. Without --scheduler or "
        "--scheduler-file an embedded local Dask cluster is started for the run.",
    )
    run.add_argument("program", type=Path, help="the Datalog program (.dl)")
    run.add_argument("-F", "--fact-dir", type=Path, default=Path("."), help="directory of .input fact files (default: .)")
    run.add_argument(
        "-D",
        "--output-dir",
        default=".",
        help="directory for .output relations as <name>.csv; '-' prints them to stdout (default: .)",
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
    tls = run.add_argument_group(
        "TLS",
        "for a scheduler that requires TLS (a tls:// address); with --scheduler or --scheduler-file only. "
        "Without these flags Dask's configuration applies, as for any Dask client: the "
        "distributed.comm.tls.ca-file / .client.cert / .client.key keys, e.g. the environment variables "
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY.",
    )
    tls.add_argument("--tls-ca-file", type=Path, metavar="FILE", help="CA certificate (PEM) that signed the cluster's certificates")
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="this client's certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="this client's private key (PEM), unless the --tls-cert file holds it")
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
    run.add_argument("--quiet", action="store_true", help="no progress display (it is off anyway when stderr is not a terminal)")
    run.add_argument("--stats", type=Path, help="write per-stratum, per-iteration (per-worker) statistics as JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and (args.scheduler or args.scheduler_file or args.no_cluster):
        parser.error("--workers sizes the embedded cluster; it cannot go with --scheduler, --scheduler-file or --no-cluster")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    tls_given = args.tls_ca_file or args.tls_cert or args.tls_key
    if tls_given and not (args.scheduler or args.scheduler_file):
        parser.error("--tls-ca-file, --tls-cert and --tls-key are for a cluster named by --scheduler or --scheduler-file")
    if tls_given and not (args.tls_ca_file and args.tls_cert):
        parser.error("TLS needs both --tls-ca-file and --tls-cert (and --tls-key unless the certificate file holds the key)")
    if args.format == "parquet" and args.output_dir == "-":
        parser.error("--format parquet needs an output directory, not '-'")
    program = None
    try:
        program = Program.from_file(args.program)
        with ExitStack() as stack:
            result = _run(program, args, stack)
            result.write(args.output_dir, args.format, sys.stdout)
            if args.stats:
                args.stats.write_text(json.dumps(result.stats, indent=1))
    except DatalogError as err:
        if program is None and err.pos is None:  # the program file itself: name it first
            print(f"{args.program}: error: {err.message}", file=sys.stderr)
        else:
            print(str(err), file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"{err.filename}: error: no such file", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `-D - | head`: the reader left; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, TimeoutError, WorkerLost) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the job was stopped on every worker", file=sys.stderr)
        return 130
    return 0


def _run(program: Program, args: argparse.Namespace, stack: ExitStack) -> Result:
    if args.no_cluster:
        return program.run(fact_dir=args.fact_dir, backend=args.backend)
    client = stack.enter_context(_client(args))
    progress = None
    if not args.quiet and sys.stderr.isatty():
        from .progress import ProgressDisplay

        strata = len(plan_program(program.ir).strata)
        display = stack.enter_context(ProgressDisplay(strata, client.dashboard_link))
        progress = display.handler
    result = program.run(
        fact_dir=args.fact_dir, backend=args.backend, client=client, progress=progress, replicate_below=args.replicate_below
    )
    stack.callback(result.close)
    return result


def _client(args: argparse.Namespace) -> Any:
    """A client of the cluster the arguments name, or of a new embedded one (closed on exit)."""
    from distributed import Client

    if args.scheduler:
        security = _security(args, args.scheduler)
        return Client(args.scheduler, timeout="20s", security=security)
    if args.scheduler_file:
        if not args.scheduler_file.exists():
            raise DatalogError(None, f"scheduler file {args.scheduler_file} does not exist")
        try:
            address = str(json.loads(args.scheduler_file.read_text()).get("address", ""))
        except (ValueError, AttributeError):  # not a scheduler file: Client says so
            address = ""
        security = _security(args, address)
        return Client(scheduler_file=str(args.scheduler_file), timeout="20s", security=security)
    from .runtime import start_cluster

    try:
        cluster = start_cluster(args.workers, args.backend)
    except RuntimeError as error:  # distributed's "Nanny failed to start", e.g. a worker process killed meanwhile
        raise DatalogError(None, f"the embedded Dask cluster did not start: {error}") from error
    return _OwnedClient(cluster)


def _security(args: argparse.Namespace, address: str) -> Any:
    """The ``Security`` the ``--tls-*`` flags give, or None: then ``Client`` takes Dask's
    configuration (``distributed.comm.tls.*``, or a ``distributed.client.security-loader``)."""
    import dask
    from distributed.security import Security

    if args.tls_ca_file:
        if address and not address.startswith("tls://"):  # distributed would refuse it with a traceback
            raise DatalogError(None, f"--tls-ca-file, --tls-cert and --tls-key need a tls:// scheduler address, not {address}")
        files = [f for f in (args.tls_ca_file, args.tls_cert, args.tls_key) if f is not None]
        for f in files:
            if not f.is_file():
                raise DatalogError(None, f"TLS file {f} does not exist")
        return Security(
            tls_ca_file=str(args.tls_ca_file),
            tls_client_cert=str(args.tls_cert),
            tls_client_key=str(args.tls_key) if args.tls_key else None,
            require_encryption=True,
        )
    if address.startswith("tls://") and not dask.config.get("distributed.client.security-loader", None):
        configured = Security()
        if not (configured.tls_ca_file and configured.tls_client_cert):
            # Client would fail with a TypeError about a missing ssl_context
            raise DatalogError(
                None,
                f"the scheduler {address} requires TLS: give --tls-ca-file and --tls-cert (and --tls-key), "
                "or set Dask's distributed.comm.tls.* configuration",
            )
    return None


class _OwnedClient:
    """A client whose cluster this process started: both close together."""

    def __init__(self, cluster: Any):
        from distributed import Client

        self.cluster = cluster
        self.client = Client(cluster)

    def __enter__(self) -> Any:
        return self.client

    def __exit__(self, *exc: Any) -> None:
        self.client.close()
        self.cluster.close()


if __name__ == "__main__":
    sys.exit(main())
