"""The transport over Dask's comms (cluster/runtime/comm.py) in one process: each rank a thread
with its comms on an event loop of its own, as on a worker's task thread, over real tcp://
listeners on loopback (no cluster): rounds of small and large parts, a peer closing mid-round,
a stop asked while a round waits, and a connection for another phase refused."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dask_datalog.cluster.runtime.comm import CommTransport
from dask_datalog.engine.errors import PeerLost

TIMEOUT_S = 60.0


class Stop(Exception):
    pass


def run_ranks(
    n: int,
    body: Callable[[CommTransport], Any],
    phase: Callable[[int], str] = lambda r: "run/0/evaluate",
    check: Callable[[int], Callable[[], None]] = lambda r: lambda: None,
) -> list[Any]:
    """``body(transport)`` on ``n`` threads, after their comms are connected; results (or the
    exception each raised) by rank."""
    addresses: list[Any] = [None] * n
    ready = threading.Barrier(n, timeout=TIMEOUT_S)
    results: list[Any] = [None] * n

    def rank(r: int) -> None:
        transport = None
        try:
            transport = CommTransport(phase(r), r, n, "tcp://127.0.0.1", {}, {}, ("dask", "pickle"), check(r), poll_s=0.05)
            addresses[r] = transport.address
            ready.wait()
            transport.connect(addresses)
            results[r] = body(transport)
        except BaseException as error:  # handed to the test through results
            results[r] = error
        finally:
            if transport is not None:
                transport.close()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
        assert not t.is_alive(), "a rank hung"
    return results


@pytest.mark.parametrize("n", [2, 3])
def test_rounds_deliver_every_part_to_its_rank(n: int) -> None:
    def body(t: CommTransport) -> list[Any]:
        got = []
        for seq in range(20):
            got.append(t.alltoall([(t.rank, p, seq) for p in range(n)]))
        got.append(t.allgather({"rank": t.rank}))
        return got

    results = run_ranks(n, body)
    for r, rounds in enumerate(results):
        assert not isinstance(rounds, BaseException), rounds
        for seq, parts in enumerate(rounds[:-1]):
            assert parts == [(p, r, seq) for p in range(n)]
        assert rounds[-1] == [{"rank": p} for p in range(n)]


def test_large_parts_both_ways_at_once() -> None:
    big = 4 << 20  # 32 MiB of uint64 to each peer: through Dask's serializers, out of band

    def body(t: CommTransport) -> bool:
        parts = [np.full(big, 10 * t.rank + p, dtype=np.uint64) for p in range(2)]
        received = t.alltoall(parts)
        return all(bool((received[p] == 10 * p + t.rank).all()) and received[p].shape == (big,) for p in range(2))

    assert run_ranks(2, body) == [True, True]
    # and the statistics counted them
    stats = run_ranks(2, lambda t: (t.alltoall([np.zeros(1000, np.uint64)] * 2), t.stats.snapshot())[1])
    assert all(s["rounds"] == 1 and s["bytes_sent"] == 8000 == s["bytes_received"] for s in stats)


def test_a_peer_closing_ends_the_waiting_round_with_peer_lost() -> None:
    def body(t: CommTransport) -> Any:
        t.alltoall([1, 1])
        if t.rank == 1:
            return "left"  # closes its comms (the finally) while rank 0 waits in the next round
        return t.alltoall([2, 2])

    results = run_ranks(2, body)
    assert results[1] == "left"
    assert isinstance(results[0], PeerLost), results[0]


def test_a_stop_while_waiting_ends_the_round_with_the_check_error() -> None:
    stop = threading.Event()

    def check(rank: int) -> Callable[[], None]:
        def raise_when_stopped() -> None:
            if rank == 0 and stop.is_set():
                raise Stop("stopped from outside")

        return raise_when_stopped

    def body(t: CommTransport) -> Any:
        t.alltoall([1, 1])
        if t.rank == 1:
            stop.set()
            stop.wait()
            threading.Event().wait(1.0)  # rank 0 waits for this rank's part, which never comes in time
            return "late"
        return t.alltoall([2, 2])

    results = run_ranks(2, body, check=check)
    assert isinstance(results[0], Stop), results[0]


def test_a_connection_for_another_phase_is_refused() -> None:
    """Rank 1 belongs to another attempt's phase: rank 0 refuses its hello, so neither end ever
    pairs with a stale peer (rank 0 waits for its real peer and times out here)."""
    import dask_datalog.cluster.runtime.comm as comm

    original = comm.CONNECT_S
    comm.CONNECT_S = 1.0
    try:
        results = run_ranks(2, lambda t: t.alltoall([0, 0]), phase=lambda r: f"run/{r}/evaluate")
    finally:
        comm.CONNECT_S = original
    assert any(isinstance(r, (TimeoutError, PeerLost)) for r in results), results
    assert not any(r == [0, 0] for r in results), results
