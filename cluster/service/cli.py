"""``dask-datalog serve`` and ``dask-datalog job ...``: the service and its client on the
command line. A refusal or an unreachable service is one line on stderr and exit status 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dask_datalog.engine.errors import DatalogError

COMMANDS = ("serve", "job")
DEFAULT_PORT = 8780


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the job service (REST API under /api/jobs) on a Dask cluster",
        description="Run the Datalog job service: jobs submitted over its REST API (or `dask-datalog job`) run on one "
        "Dask cluster kept warm, an embedded local one by default. Records survive a restart (SQLite in --state-dir). "
        "docs/service.md has the details.",
    )
    _serve_arguments(serve)
    job = sub.add_parser(
        "job",
        help="submit, watch, stop and fetch jobs of a running service",
        description="Talk to a running `dask-datalog serve`: its address from --address or $DASK_DATALOG_SERVICE "
        "(default http://127.0.0.1:8780), the token from --token or $DASK_DATALOG_TOKEN (default: the one token of a "
        "local serve's ~/.dask-datalog/service/tokens.json).",
    )
    job.add_argument("--address", help="the service's URL (default: $DASK_DATALOG_SERVICE, else http://127.0.0.1:8780)")
    job.add_argument("--token", help="bearer token (default: $DASK_DATALOG_TOKEN)")
    job.add_argument("--ca-file", help="CA certificate (PEM) of an https service with a private CA")
    verbs = job.add_subparsers(dest="verb", required=True)
    submit = verbs.add_parser("submit", help="submit a program; prints the job's id at once")
    submit.add_argument("program", type=Path, help="the Datalog program (.dl)")
    submit.add_argument("-F", "--fact-dir", help="folder of fact files, uploaded (with --on-service: a folder the cluster reads)")
    submit.add_argument(
        "-D",
        "--output-dir",
        help="with --wait, where the outputs are downloaded (with --on-service: a folder the cluster writes)",
    )
    submit.add_argument(
        "--on-service", action="store_true", help="-F and -D name folders on the service's side, under its --root"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the job's end; exit 0 only when it SUCCEEDED")
    submit.add_argument("--format", choices=("csv", "parquet"), default="csv", help="how the outputs are written (default: csv)")
    submit.add_argument(
        "-M", "--macro", action="append", default=[], metavar="NAME=VALUE", help="a preprocessor macro (repeatable)"
    )
    submit.add_argument("--retries", type=int, default=2, help="lost workers the run survives (default: 2)")
    submit.add_argument("--timeout", type=float, metavar="SECONDS", help="stop the run after SECONDS (the job FAILS)")
    submit.add_argument("--memory-limit", metavar="BYTES", help="memory for the data of each worker, e.g. 4GiB")
    submit.add_argument(
        "--checkpoint",
        action="store_true",
        help="checkpoint into the job's folder: a lost worker's retry, or a restart of the service, resumes from there",
    )
    submit.add_argument("--checkpoint-every", type=float, metavar="SECONDS", help="seconds between checkpoints")
    verbs.add_parser("status", help="a job's record as JSON").add_argument("id")
    stop = verbs.add_parser("stop", help="stop a job and print its final state (a running one ends within a second)")
    stop.add_argument("id")
    stop.add_argument("--no-wait", action="store_true", help="print the state at once, without waiting for the end")
    logs = verbs.add_parser("logs", help="a job's log: submission, per-iteration progress, its end")
    logs.add_argument("id")
    logs.add_argument("--follow", action="store_true", help="go on printing lines as they come, until the job ends")
    verbs.add_parser("list", help="your jobs (every job for an admin): id, state, owner, iterations, tuples, program")
    result = verbs.add_parser("result", help="a finished job's output relation (without RELATION: the relations it wrote)")
    result.add_argument("id")
    result.add_argument("relation", nargs="?")
    result.add_argument(
        "--format",
        choices=("csv", "parquet"),
        help="the format wanted (default: the job's); the other one is converted on the service",
    )
    result.add_argument("-o", "--output", type=Path, help="write it to this file (default: stdout)")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on; 0: any free one (default: {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("~/.dask-datalog/service"),
        help="where the job records (jobs.sqlite), the jobs' folders and the made token file live "
        "(default: ~/.dask-datalog/service; on an external cluster, a folder its workers see)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder jobs may read facts from and write outputs to, by path (repeatable; without one, facts are uploaded "
        "and outputs stay in the job's folder)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help='JSON {"tokens": {"<token>": "<user>"}, "admins": ["<user>"]} (default: STATE/tokens.json, made with one '
        "admin token for you when missing)",
    )
    parser.add_argument(
        "--max-jobs", type=int, default=4, metavar="N", help="jobs running at once; more wait in a FIFO queue (default: 4)"
    )
    parser.add_argument(
        "--max-request-size",
        default="256MiB",
        metavar="BYTES",
        help="largest request accepted, uploads included (default: 256MiB)",
    )
    parser.add_argument(
        "--open-metrics",
        action="store_true",
        help="serve /metrics (Prometheus) without a token (default: it needs a bearer token, as the API does)",
    )
    parser.add_argument("--ssl-certfile", type=Path, metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", type=Path, metavar="FILE", help="the certificate's private key (PEM)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDR", help="address of a running Dask scheduler (default: an embedded cluster)")
    where.add_argument("--scheduler-file", type=Path, metavar="FILE", help="scheduler file of a running Dask cluster")
    parser.add_argument(
        "--workers", type=int, metavar="N", help="workers of the embedded cluster (default: one per core, or per GPU)"
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="the embedded cluster's array backend"
    )


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dask.utils import parse_bytes

    try:
        if args.command == "serve":
            from dask_datalog.cluster.service import server  # here: every command builds this parser

            if args.max_jobs < 1:
                parser.error("--max-jobs must be at least 1")
            if args.workers is not None and (args.scheduler or args.scheduler_file):
                parser.error("--workers sizes the embedded cluster; it cannot go with --scheduler or --scheduler-file")
            try:
                limit = int(parse_bytes(args.max_request_size))
            except (ValueError, TypeError):
                parser.error(f"--max-request-size: {args.max_request_size!r} is not a size (e.g. 100MB)")
            return server.serve(args, limit)
        return _job(args, parser)
    except DatalogError as error:
        print(str(error), file=sys.stderr)
        return error.exit_status


def _job(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dask_datalog.cluster.service.client import ServiceClient

    client = ServiceClient(args.address, args.token, args.ca_file or True)
    try:
        if args.verb == "submit":
            return _submit(client, args, parser)
        if args.verb == "status":
            print(json.dumps(client.status(args.id), indent=1))
        elif args.verb == "stop":
            record = client.stop(args.id)
            print((record if args.no_wait else client.wait(args.id))["state"])
        elif args.verb == "list":
            for job in client.list():
                print(
                    f"{job['id']}  {job['state']:<9}  {job['owner']}  {job['iterations']} iterations  {job['tuples']:,} tuples  {job['program_name']}"
                )
        elif args.verb == "logs":
            lines = client.follow(args.id) if args.follow else iter(_pages(client, args.id))
            for line in lines:
                print(line, flush=True)
        else:
            return _result(client, args)
    finally:
        client.close()
    return 0


def _pages(client: Any, job: str) -> list[str]:
    lines: list[str] = []
    while True:
        page = client.logs(job, len(lines))
        lines += page["lines"]
        if not page["lines"]:
            return lines


def _submit(client: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dask.utils import parse_bytes

    if args.output_dir and not (args.wait or args.on_service):
        parser.error("-D downloads the outputs when the job ends: it needs --wait (or --on-service)")
    options: dict[str, Any] = {
        "format": args.format,
        "retries": args.retries,
        "timeout": args.timeout,
        "checkpoint": args.checkpoint,
        "checkpoint_every": args.checkpoint_every,
    }
    if args.macro:
        options["macros"] = dict(_macro(m) for value in args.macro for m in value.split())
    if args.memory_limit:
        options["memory_limit"] = int(parse_bytes(args.memory_limit))
    if args.on_service:
        job = client.submit(args.program, fact_dir=args.fact_dir, output_dir=args.output_dir, **options)
    else:
        job = client.submit(args.program, facts=args.fact_dir, **options)
    print(job, flush=True)
    if not args.wait:
        return 0
    record = client.wait(job)
    if record["state"] != "SUCCEEDED":
        print(f"job {job} {record['state']}: {record['error']}", file=sys.stderr)
        return 1
    if args.output_dir and not args.on_service:
        target = Path(args.output_dir)
        target.mkdir(parents=True, exist_ok=True)
        for relation, written in record["results"].items():
            name = Path(written["path"]).name + (".parquet" if written["format"] == "parquet" else "")
            (target / name).write_bytes(client.result(job, relation))
    return 0


def _macro(word: str) -> tuple[str, str]:
    name, _, text = word.partition("=")
    return name, text if "=" in word else "1"


def _result(client: Any, args: argparse.Namespace) -> int:
    if args.relation is None:
        record = client.status(args.id)
        for relation, written in record["results"].items():
            print(f"{relation}\t{written['format']}\t{written['path']}")
        return 0
    data = client.result(args.id, args.relation, args.format)
    if args.output is not None:
        args.output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0
