"""Every use of distributed's private surface, in one place, each with the reason. The rest of
the package calls these functions and the public API only, so a distributed release that moves
one of these touches this module alone (pyproject pins the range tested)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

SETTLE_S = 10.0  # the longest a closing worker waits for its heartbeat in flight


def current_task() -> tuple[Any, Any]:
    """(worker, key of the task running in this thread), both public API, then ``secede``: the
    task leaves the worker's thread pool, so a job's long-running tasks never hold the slots
    other jobs on the same cluster need."""
    from distributed import get_worker, secede

    worker = get_worker()
    key = worker.get_current_task()
    secede()
    return worker, key


def task_wanted(worker: Any, key: Any) -> bool:
    """Whether the worker still runs task ``key`` for the client. Private: ``worker.state.tasks``
    (the worker state machine's table) is the only place that says a running task was released
    (Client.close, cancel, Ctrl-C) without waiting for the task to return."""
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state in ("executing", "long-running")


def task_keys(worker: Any) -> list[str]:
    """The keys of every task the worker holds (running, waiting, or a result in memory).
    Private: ``worker.state.tasks``, the worker state machine's table, as ``task_wanted``."""
    return [str(key) for key in worker.state.tasks]


def every(seconds: float, callback: Callable[[], None]) -> Any:
    """``callback()`` every ``seconds`` on the worker's event loop, started now; ``.stop()``
    ends it (tornado's ``PeriodicCallback``, what distributed's own periodic work uses)."""
    from tornado.ioloop import PeriodicCallback

    periodic = PeriodicCallback(callback, seconds * 1000)
    periodic.start()
    return periodic


def settled_heartbeat(worker: Any) -> Callable[[], Awaitable[None]]:
    """Wrap the worker's heartbeat so that closing it waits for one in flight; returns the
    coroutine that stops the heartbeat and waits (for teardown). ``Worker.close`` stops the
    heartbeat's periodic callback but not a heartbeat in flight, then closes the connection
    pool under it, which logs an ERROR with a traceback ("Failed to communicate with scheduler
    during heartbeat") after a clean shutdown (seen at the end of a SLURM job, under load).
    Private: ``worker.periodic_callbacks["heartbeat"]`` and tornado's ``callback`` attribute."""
    periodic = worker.periodic_callbacks.get("heartbeat")
    if periodic is None:
        return _nothing
    idle = asyncio.Event()
    idle.set()
    beat = periodic.callback

    async def tracked() -> None:
        idle.clear()
        try:
            await beat()
        finally:
            idle.set()

    periodic.callback = tracked

    async def settle() -> None:
        periodic.stop()
        # Bounded: a heartbeat hung on a dead scheduler ends with its connect timeout, later.
        await asyncio.wait([asyncio.ensure_future(idle.wait())], timeout=SETTLE_S)

    return settle


async def _nothing() -> None:
    return None


def closing(worker: Any) -> bool:
    """Whether the worker is closing (public: ``Worker.status``, ``distributed.core.Status``)."""
    from distributed.core import Status

    return bool(worker.status in (Status.closing, Status.closing_gracefully, Status.closed))


def memory_limit(worker: Any) -> int | None:
    """The worker's memory limit in bytes (None: unlimited). ``Worker.memory_manager`` is
    public; its ``memory_limit`` attribute is what the nanny and the spilling policy read."""
    limit = getattr(worker.memory_manager, "memory_limit", None)
    return int(limit) if limit else None


def add_handler(worker: Any, name: str, handler: Callable[..., Any]) -> None:
    """Private: ``worker.handlers`` is how distributed's own extensions (the P2P shuffle) give
    peers an RPC endpoint on a worker; there is no public registration call."""
    worker.handlers[name] = handler


async def call(worker: Any, address: str, handler: str, **message: Any) -> Any:
    """Call ``handler`` on the worker at ``address`` and wait for its answer (``worker.rpc``:
    the worker's connection pool, the way peers reach each other)."""
    return await getattr(worker.rpc(address), handler)(**message)


def run_on_loop(loop: Any, coroutine: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``coroutine(*args)`` on the worker's event loop from a task thread and wait for it.
    ``distributed.utils.sync`` is not documented API; it is what ``Client`` uses for the same
    hop and it carries exceptions across it."""
    from distributed.utils import sync

    return sync(loop, coroutine, *args)


def serialized(part: Any) -> Any:
    """Mark a message part for Dask's serialisation (array data travels as frames, not pickled
    into the message). Public: ``distributed.protocol.to_serialize``."""
    from distributed.protocol.serialize import to_serialize

    return to_serialize(part)


def scheduler_workers(client: Any) -> dict[str, Any]:
    """The workers the scheduler knows now, by address, with their ``last_seen``: asked of the
    scheduler each time. ``client.scheduler.identity`` is the call ``Client.scheduler_info``
    documents for fresh worker information; ``scheduler_info()`` itself fills a cache that the
    client's periodic refresh (asking for no worker details) may empty meanwhile, so a check
    through it can find every worker gone (seen: a healthy worker taken as lost)."""
    return dict(client.sync(client.scheduler.identity, n_workers=-1)["workers"])


def address_host(address: str) -> str:
    """The host of a worker address (``distributed.comm.get_address_host``)."""
    from distributed.comm.addressing import get_address_host

    return get_address_host(address)


def listen_address(address: str) -> str:
    """An address to listen on beside the worker's: same protocol and host, any port (public
    ``distributed.comm.addressing``)."""
    from distributed.comm.addressing import parse_address, parse_host_port, unparse_address

    protocol, location = parse_address(address)
    if protocol == "inproc":
        return "inproc://"
    return unparse_address(protocol, parse_host_port(location)[0])


def security_args(worker: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(connection, listen) arguments for comms between workers, with the cluster's TLS
    credentials: public ``Security.get_connection_args``/``get_listen_args``."""
    return worker.security.get_connection_args("worker"), worker.security.get_listen_args("worker")


def serializers(address: str) -> tuple[str, ...]:
    """Dask's serializer families for a comm on ``address``'s protocol: "cuda" first where the
    comm carries device buffers (UCX), so CuPy arrays are not copied through the host."""
    return ("cuda", "dask", "pickle") if address.startswith("ucx") else ("dask", "pickle")


async def flushed(comm: Any) -> None:
    """Wait until what was written to a tcp/tls comm has left the process. Private: a
    ``TCP`` comm's ``write`` returns once its frames are queued in tornado's ``IOStream``
    (``comm.stream``), which writes the rest only while the loop runs; a round that returned
    then would leave a peer waiting for our bytes while this thread computes. Comms without a
    stream (UCX, in-process) complete their writes themselves."""
    stream = getattr(comm, "stream", None)
    if stream is not None and stream.writing():
        await stream.write(b"")


def ask_peers(worker: Any, addresses: list[str], handler: str, within_s: float, late: Any, **message: Any) -> list[Any]:
    """``handler(**message)`` on each worker of ``addresses`` through the worker's connection
    pool, from a task thread; their answers in order. A peer that has not answered within
    ``within_s`` (its event loop held up, the reply lost) gives ``late``: the task thread is
    never held longer, so its caller checks its run's stop and asks again. A peer that cannot
    be reached ends the phase (``PeerLost``): it failed or was lost, which the client sees too."""
    from dask_datalog.engine.errors import PeerLost

    async def answer(address: str) -> Any:
        try:
            return await asyncio.wait_for(call(worker, address, handler, **message), within_s)
        except TimeoutError:
            return late

    async def ask() -> list[Any]:
        return list(await asyncio.gather(*(answer(address) for address in addresses)))

    try:
        return run_on_loop(worker.loop, ask)
    except OSError as error:  # distributed's CommClosedError and connection errors are OSErrors
        raise PeerLost(f"a peer could not be reached: {error}") from error


@contextmanager
def quiet_client_log(quiet: bool) -> Iterator[None]:
    """While ``quiet``, the ``distributed.client`` logger says nothing below CRITICAL: closing a
    client whose scheduler died cancels its reconnection loop, which logs the cancellation as an
    ERROR with a traceback (the logger's name is distributed's module name, not an API)."""
    log = logging.getLogger("distributed.client")
    level = log.level
    if quiet:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
