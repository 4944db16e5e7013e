"""``dask-datalog serve``: the job service on one Dask cluster, the embedded one by default,
kept warm (the engine imported, the workers started) for every job it runs."""

from __future__ import annotations

import argparse
import getpass
import signal
import socket
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from dask_datalog.cluster.cli.run_command import cluster_client
from dask_datalog.cluster.service.auth import Roots, Tokens
from dask_datalog.engine.errors import DatalogError

if TYPE_CHECKING:
    import uvicorn


def serve(args: argparse.Namespace, max_request_bytes: int) -> int:
    """Serve until SIGINT or SIGTERM; then the running jobs are stopped (STOPPED) and the
    queued ones stay PENDING for the next start."""
    import uvicorn

    from dask_datalog.cluster.service.app import create_app
    from dask_datalog.cluster.service.jobs import JobService

    state = args.state_dir.expanduser()
    if args.token_file is not None:
        tokens, where = Tokens.load(args.token_file), args.token_file
    elif (state / "tokens.json").exists():
        tokens, where = Tokens.load(state / "tokens.json"), state / "tokens.json"
    else:
        tokens, where = Tokens.create(state / "tokens.json", getpass.getuser()), state / "tokens.json"
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise DatalogError(None, "HTTPS needs both --ssl-certfile and --ssl-keyfile")
    for f in (args.ssl_certfile, args.ssl_keyfile):
        if f is not None and not f.is_file():
            raise DatalogError(None, f"TLS file {f} does not exist")
    listener = _listen(args.host, args.port)
    args.tls_ca_file = args.tls_cert = args.tls_key = None  # a tls:// scheduler: Dask's configuration applies
    with cluster_client(args) as client:
        embedded = args.scheduler is None and args.scheduler_file is None  # small jobs run here (local.py)
        service = JobService(state, client, args.max_jobs, Roots(args.root), args.in_process_below if embedded else 0)
        try:
            app = create_app(service, tokens, max_request_bytes, open_metrics=args.open_metrics)
            config = uvicorn.Config(
                app,
                log_level="warning",
                ssl_certfile=args.ssl_certfile,
                ssl_keyfile=args.ssl_keyfile,
                timeout_graceful_shutdown=2,
            )
            scheme = "https" if args.ssl_certfile else "http"
            host, port = listener.getsockname()[:2]
            workers = len(client.scheduler_info()["workers"])
            print(
                f"dask-datalog service at {scheme}://{host}:{port} on {workers} workers ({client.scheduler.address}); "
                f"state {state}; tokens {where}",
                flush=True,
            )
            for job in service.recovered:
                print(f"job {job} was running when the service stopped: marked FAILED", file=sys.stderr, flush=True)
            # uvicorn raises the signal that stopped it again once it is done: with a handler
            # that does nothing, the service then stops its jobs and closes the cluster.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: None)
            _signalled_server(config, service.signalled).run(sockets=[listener])
        finally:
            service.close()
    return 0


def _signalled_server(config: uvicorn.Config, signalled: threading.Event) -> uvicorn.Server:
    """uvicorn's server, which also sets ``signalled`` on the SIGINT or SIGTERM that stops it:
    a job whose cluster went with the same signal learns of the shutdown before the service
    stops its jobs (runner.SHUTDOWN_GRACE_S)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            signalled.set()
            super().handle_exit(sig, frame)

    return Server(config)


def _listen(host: str, port: int) -> socket.socket:
    """The service's socket, bound here so that port 0 (any free port) can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waited for the client's delayed ACK (40 ms, measured).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        raise DatalogError(None, f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    listener.listen(128)
    return listener
