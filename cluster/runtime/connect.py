"""Reaching a cluster: starting the embedded one, or connecting to a running one by address or
scheduler file, over TLS when it asks for it. Each failure a user can cause (an address nobody
answers at, a missing certificate, a cluster that cannot start) is a ``ClusterError`` or a
``DatalogError`` saying what to do, never distributed's traceback."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.engine.backend import gpu_count
from dask_datalog.engine.errors import ClusterError, DatalogError

CONNECT_TIMEOUT = "20s"  # a scheduler that does not answer within this is not there
START_ATTEMPTS = 3  # an embedded cluster whose worker died while it started is started again
READY_S = 10.0  # how long a started embedded cluster may take to have all its workers registered


@dataclass(frozen=True)
class TlsFiles:
    """``--tls-ca-file``, ``--tls-cert``, ``--tls-key``: a client's credentials for a
    ``tls://`` scheduler (the key may be in the certificate's file)."""

    ca_file: Path
    cert: Path
    key: Path | None = None


def default_workers() -> int:
    """CPU workers of an embedded cluster: one per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def start_cluster(workers: int | None, backend: str, processes: bool = True) -> Any:
    """An embedded cluster: ``LocalCUDACluster`` (one worker per GPU, or ``workers`` of them)
    when the backend is CuPy or auto and CuPy sees a GPU; else a ``LocalCluster`` of
    single-threaded worker processes, each allowed its share of the cores for the parallel
    CPU kernels (with CuPy and more workers than GPUs, these processes share the GPUs)."""
    import dask

    gpus = gpu_count() if backend in ("cupy", "auto") else 0
    if gpus and (workers is None or workers <= gpus):
        from dask_cuda import LocalCUDACluster

        kwargs = {} if workers is None else {"n_workers": workers}
        return LocalCUDACluster(threads_per_worker=1, silence_logs=logging.ERROR, dashboard_address=":0", **kwargs)
    from distributed import LocalCluster

    n = workers or default_workers()
    threads = str(max(1, default_workers() // n))
    # Each worker's CPU kernels get its share of the cores, so workers' spinning OpenMP
    # threads do not compete (docs/benchmarks.md, "Distributed", has the measurements).
    # Every worker process, restarted ones too, quiets Dask's loggers in its preload
    # (worker_setup.py), so a recovered command's stderr holds only its own lines.
    env = {"OMP_NUM_THREADS": threads}
    extra = {"env": env, "preload": ["dask_datalog.cluster.runtime.worker_setup"]} if processes else {}
    # Dask's profiler samples every task thread's stack with the GIL held: coarser sampling
    # keeps it out of short iterations. Dask's MALLOC_TRIM_THRESHOLD_ turns off glibc's
    # adaptive mmap threshold, making every large array fresh pages. Both measured in
    # docs/benchmarks.md, "Distributed".
    settings = {
        "distributed.worker.profile.interval": "100ms",
        "distributed.worker.profile.cycle": "10s",
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            with dask.config.set(settings):
                return LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=processes,
                    silence_logs=logging.CRITICAL,
                    dashboard_address=":0",
                    **extra,
                )
        except RuntimeError:
            # distributed's "Nanny failed to start": a worker process died before its nanny
            # registered it (killed, out of memory). LocalCluster closed itself; start again.
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


@contextmanager
def embedded_client(workers: int | None, backend: str) -> Iterator[Any]:
    """A client of a new embedded cluster; both close at the end."""
    from distributed import Client

    try:
        cluster = start_cluster(workers, backend)
    except RuntimeError as error:  # distributed's "Nanny failed to start"
        raise ClusterError(f"the embedded Dask cluster did not start: {error}") from None
    try:
        client = Client(cluster)
        try:
            _wait_for_workers(client, len(cluster.worker_spec))
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _wait_for_workers(client: Any, n: int) -> None:
    """Until the scheduler knows the cluster's ``n`` workers, for READY_S at most: a worker lost
    just after the start is restarted by its nanny meanwhile, and the run takes the workers
    there are (a loss then costs a retry, not the run). Polled rather than
    ``Client.wait_for_workers``, which replaces the cluster object's worker table and raised
    a KeyError at close when a worker left meanwhile."""
    deadline = time.monotonic() + READY_S
    while len(dask_adapter.scheduler_workers(client)) < n and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def external_client(scheduler: str | None, scheduler_file: Path | None, tls: TlsFiles | None) -> Iterator[Any]:
    """A client of the running cluster at ``scheduler`` or in ``scheduler_file``, closed at the
    end; if its scheduler is gone by then, without distributed's log of the reconnection it
    abandons (an ERROR with a traceback): the run said so in one line already."""
    from distributed import Client

    if scheduler_file is not None:
        if not scheduler_file.exists():
            raise DatalogError(None, f"scheduler file {scheduler_file} does not exist")
        try:
            address = str(json.loads(scheduler_file.read_text()).get("address", ""))
        except (ValueError, AttributeError):  # not a scheduler file: Client says so
            address = ""
        security = _security(tls, address)
        where = address or str(scheduler_file)
        client = _connect(lambda: Client(scheduler_file=str(scheduler_file), timeout=CONNECT_TIMEOUT, security=security), where)
    else:
        assert scheduler is not None
        security = _security(tls, scheduler)
        client = _connect(lambda: Client(scheduler, timeout=CONNECT_TIMEOUT, security=security), scheduler)
    try:
        yield client
    finally:
        with dask_adapter.quiet_client_log(client.status != "running"):
            client.close()


def _connect(make: Callable[[], Any], where: str) -> Any:
    """A client from ``make()``; a scheduler it cannot reach (``Client`` raises an OSError or a
    timeout) is the user's address or cluster, said in one line."""
    try:
        return make()
    except OSError as error:
        raise ClusterError(f"cannot reach the Dask scheduler at {where}: {error}") from None


def _security(tls: TlsFiles | None, address: str) -> Any:
    """The ``Security`` of ``tls``, or None: then ``Client`` takes Dask's configuration
    (``distributed.comm.tls.*``, or a ``distributed.client.security-loader``)."""
    import dask
    from distributed.security import Security

    if tls is not None:
        if address and not address.startswith("tls://"):  # distributed would refuse it with a traceback
            raise DatalogError(None, f"--tls-ca-file, --tls-cert and --tls-key need a tls:// scheduler address, not {address}")
        for f in (tls.ca_file, tls.cert, tls.key):
            if f is not None and not f.is_file():
                raise DatalogError(None, f"TLS file {f} does not exist")
        return Security(
            tls_ca_file=str(tls.ca_file),
            tls_client_cert=str(tls.cert),
            tls_client_key=str(tls.key) if tls.key else None,
            require_encryption=True,
        )
    if address.startswith("tls://") and not dask.config.get("distributed.client.security-loader", None):
        configured = Security()  # Dask's configuration; its attributes are set dynamically
        if not (getattr(configured, "tls_ca_file", None) and getattr(configured, "tls_client_cert", None)):
            # Client would fail with a TypeError about a missing ssl_context
            raise DatalogError(
                None,
                f"the scheduler {address} requires TLS: give --tls-ca-file and --tls-cert (and --tls-key), "
                "or set Dask's distributed.comm.tls.* configuration",
            )
    return None
