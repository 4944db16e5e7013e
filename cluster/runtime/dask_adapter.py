"""Every use of distributed's private surface, in one place, each with the reason. The rest of
the package calls these functions and the public API only, so a distributed release that moves
one of these touches this module alone (pyproject pins the range tested)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any


def current_task() -> tuple[Any, str]:
    """(worker, key of the task running in this thread), both public API, then ``secede``: the
    task leaves the worker's thread pool, so a job's long-running tasks never hold the slots
    other jobs on the same cluster need."""
    from distributed import get_worker, secede

    worker = get_worker()
    key = worker.get_current_task()
    secede()
    return worker, key


def task_wanted(worker: Any, key: str) -> bool:
    """Whether the worker still runs task ``key`` for the client. Private: ``worker.state.tasks``
    (the worker state machine's table) is the only place that says a running task was released
    (Client.close, cancel, Ctrl-C) without waiting for the task to return."""
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state in ("executing", "long-running")


def memory_limit(worker: Any) -> int | None:
    """The worker's memory limit in bytes (None: unlimited). ``Worker.memory_manager`` is
    public; its ``memory_limit`` attribute is what the nanny and the spilling policy read."""
    limit = getattr(worker.memory_manager, "memory_limit", None)
    return int(limit) if limit else None


def add_handler(worker: Any, name: str, handler: Callable[..., Any]) -> None:
    """Private: ``worker.handlers`` is how distributed's own extensions (the P2P shuffle) give
    peers an RPC endpoint on a worker; there is no public registration call."""
    worker.handlers[name] = handler


async def send_one_way(worker: Any, address: str, handler: str, **message: Any) -> None:
    """Call ``handler`` on the worker at ``address`` without waiting for a reply. Private:
    ``reply=False`` on ``worker.rpc``'s call: a round then costs one message per peer, not a
    request and a response."""
    await getattr(worker.rpc(address), handler)(reply=False, **message)


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
    from distributed.protocol import to_serialize

    return to_serialize(part)


def address_host(address: str) -> str:
    """The host of a worker address (``distributed.comm.get_address_host``)."""
    from distributed.comm import get_address_host

    return get_address_host(address)


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
