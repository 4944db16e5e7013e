"""``cluster/mesh.py`` in one process, without Dask: meshes over socket pairs (and once over the
real listener on 127.0.0.1), each rank's ``exchange`` in its own thread, every thread joined
with a timeout so that a deadlock fails the test instead of hanging the suite. A "raw" peer is
the test itself writing the wire format by hand, to make a peer that is ahead, diverged or
gone mid-message."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from dask_datalog.engine.errors import PeerLost
from dask_datalog.spmd.mesh import Mesh, decode, encode

TIMEOUT_S = 20.0  # far above what any test needs: only a deadlock reaches it
POLL_S = 0.01


def _noop() -> None:
    pass


def run_threads(calls: list[Callable[[], Any]], timeout: float = TIMEOUT_S) -> list[Any]:
    """Each call in its own thread; their results in order. A thread still running after
    ``timeout`` fails the test (a deadlock); a call's exception is raised here."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def body(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as error:
            errors[i] = error

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung, f"threads {hung} still running after {timeout} s: deadlock"
    for error in errors:
        if error is not None:
            raise error
    return results


def in_thread(call: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
    return run_threads([call], timeout)[0]


Pair = Callable[[], tuple[socket.socket, socket.socket]]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1 (its close and reset behave unlike a unix pair's)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


PAIRS = {"unix": socket.socketpair, "tcp": tcp_pair}


def pair_meshes(n: int, pair: Pair = socket.socketpair) -> list[Mesh]:
    ends = {(s, d): pair() for s in range(n) for d in range(n) if s != d}
    return [
        Mesh.from_sockets(
            r,
            n,
            {p: ends[r, p][0] for p in range(n) if p != r},
            {p: ends[p, r][1] for p in range(n) if p != r},
        )
        for r in range(n)
    ]


@pytest.fixture
def meshes() -> Iterator[Callable[..., list[Mesh]]]:
    """Makes meshes and closes them all at the end, whatever happened."""
    made: list[Mesh] = []

    def make(n: int, pair: Pair = socket.socketpair) -> list[Mesh]:
        made.extend(pair_meshes(n, pair))
        return made[-n:]

    yield make
    for mesh in made:
        mesh.close()


def exchange(mesh: Mesh, seq: int, parts: dict[int, Any], check: Callable[[], None] = _noop) -> dict:
    received, _ = mesh.exchange(seq, parts, POLL_S, check)
    return received


def assert_selector_empty(mesh: Mesh) -> None:
    assert len(mesh.selector.get_map()) == 0, "sockets left registered after the round"


def assert_same(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for k in want:
            assert_same(got[k], want[k])
    else:
        assert got == want


# --- the raw peer: the wire format written and read by hand --------------------------------


def wire(seq: int, obj: Any) -> bytes:
    """One message as the mesh puts it on the wire: [seq u64][frames u32][length u64 * frames]
    then the frames."""
    frames = encode(obj)
    head = struct.pack("<QI", seq, len(frames)) + b"".join(struct.pack("<Q", f.nbytes) for f in frames)
    return head + b"".join(bytes(f) for f in frames)


def read_wire(sock: socket.socket, seq: int) -> Any:
    def exactly(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the mesh closed its end"
            data += chunk
        return bytes(data)

    got_seq, count = struct.unpack("<QI", exactly(12))
    assert got_seq == seq
    lengths = [struct.unpack("<Q", exactly(8))[0] for _ in range(count)]
    return decode([bytearray(exactly(n)) for n in lengths])


def raw_peer(pair: Pair = socket.socketpair) -> tuple[Mesh, socket.socket, socket.socket]:
    """Rank 0 as a mesh of 2, and the test's blocking sockets as rank 1: (mesh, to the mesh,
    from the mesh)."""
    to_mesh, mesh_in = pair()
    mesh_out, from_mesh = pair()
    for sock in (to_mesh, from_mesh):
        sock.settimeout(TIMEOUT_S)
    return Mesh.from_sockets(0, 2, {1: mesh_out}, {1: mesh_in}), to_mesh, from_mesh


# --- encoding ------------------------------------------------------------------------------


def test_encode_out_of_band_and_in_band() -> None:
    contiguous = np.arange(1000, dtype=np.int64)
    fortran = np.asfortranarray(np.arange(60, dtype=np.float32).reshape(6, 10))
    strided = np.arange(1000, dtype=np.int32)[::3]
    assert len(encode(contiguous)) == 2  # the pickle, then the array's buffer out of band
    assert len(encode(fortran)) == 2
    assert len(encode(strided)) == 1  # neither C nor F contiguous: numpy pickles it in band
    for obj in (contiguous, fortran, strided, np.empty(0, np.int64), [contiguous, strided, "x", None]):
        assert_same(decode([bytearray(f) for f in encode(obj)]), obj)
    back = decode([bytearray(f) for f in encode(fortran)])
    assert back.flags.f_contiguous


# --- rounds that work ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
def test_small_messages(meshes: Callable[..., list[Mesh]], n: int) -> None:
    ms = meshes(n)

    def rank(mesh: Mesh) -> dict[int, Any]:
        return exchange(mesh, 1, {p: ("from", mesh.rank, "to", p) for p in range(n) if p != mesh.rank})

    results = run_threads([lambda m=m: rank(m) for m in ms])
    for r, received in enumerate(results):
        assert received == {p: ("from", p, "to", r) for p in range(n) if p != r}
        assert_selector_empty(ms[r])


def test_large_messages_both_ways_at_once(meshes: Callable[..., list[Mesh]]) -> None:
    """64 MB and more each way at once, far above the socket buffers: both ranks are sending
    when their buffers fill, so a mesh that blocked in ``send`` would deadlock here."""
    ms = meshes(2)
    parts = {
        r: {
            "big": np.full(8 << 20, r + 1, dtype=np.int64),  # 64 MB
            "floats": np.linspace(0, r + 1, 1 << 18, dtype=np.float32),
            "fortran": np.asfortranarray(np.arange(300 * 7, dtype=np.int16).reshape(300, 7) * (r + 1)),
            "strided": np.arange(30_000, dtype=np.int32)[r::5],  # in band
            "empty": np.empty(0, np.float64),
        }
        for r in range(2)
    }
    assert len(encode(parts[0])) == 5  # several frames
    results = run_threads([lambda m=m: exchange(m, 1, {1 - m.rank: parts[m.rank]}) for m in ms])
    for r in range(2):
        assert_same(results[r][1 - r], parts[1 - r])
        assert_selector_empty(ms[r])


def test_large_messages_three_ranks(meshes: Callable[..., list[Mesh]]) -> None:
    ms = meshes(3)

    def part(src: int, dst: int) -> np.ndarray:
        return np.full((2 << 20) + src * 1000 + dst, src * 10 + dst, dtype=np.int64)  # ~16 MB

    results = run_threads([lambda m=m: exchange(m, 1, {p: part(m.rank, p) for p in range(3) if p != m.rank}) for m in ms])
    for r in range(3):
        for p in range(3):
            if p != r:
                assert_same(results[r][p], part(p, r))


def payload(seq: int, src: int, dst: int) -> Any:
    """What ``src`` sends ``dst`` in round ``seq``: sizes differ by round, sender and receiver,
    from empty to above a socket buffer, contiguous, Fortran-ordered and strided."""
    rng = np.random.default_rng(seq * 100 + src * 10 + dst)
    kind = (seq + src + dst) % 5
    n = int(rng.integers(0, 50_000)) * (seq % 3) + src * 7 + dst
    if kind == 0:
        return np.empty(0, dtype=np.int64)
    if kind == 1:
        return rng.integers(0, 1 << 40, n, dtype=np.int64)
    if kind == 2:
        return rng.integers(0, 100, 3 * n + 3, dtype=np.int32)[::3]  # non-contiguous: in band
    if kind == 3:
        return [np.asfortranarray(rng.random((n // 8 + 1, 8))), np.empty((0, 3), np.int8), (seq, src, dst)]
    return {"seq": seq, "src": src, "dst": dst, "a": rng.integers(0, 9, n, dtype=np.uint8)}


@pytest.mark.parametrize("n", [2, 3, 4])
def test_many_rounds_varying_sizes(meshes: Callable[..., list[Mesh]], n: int) -> None:
    ms = meshes(n)
    rounds = 30

    def rank(mesh: Mesh) -> None:
        for seq in range(1, rounds + 1):
            peers = [p for p in range(n) if p != mesh.rank]
            received = exchange(mesh, seq, {p: payload(seq, mesh.rank, p) for p in peers})
            assert received.keys() == set(peers)
            for p in peers:
                assert_same(received[p], payload(seq, p, mesh.rank))
            assert_selector_empty(mesh)

    run_threads([lambda m=m: rank(m) for m in ms])


def test_slow_rank_lets_the_other_run_ahead(meshes: Callable[..., list[Mesh]]) -> None:
    """Rank 1 goes on to the next round while rank 0 dawdles, so rank 1's next message (or its
    start, behind the end of this round's) waits in the socket: rank 0 must read each message
    to its exact length."""
    ms = meshes(2)
    rounds = 12

    def rank(mesh: Mesh) -> None:
        for seq in range(1, rounds + 1):
            other = 1 - mesh.rank
            received = exchange(mesh, seq, {other: payload(seq, mesh.rank, other)})
            assert_same(received[other], payload(seq, other, mesh.rank))
            if mesh.rank == 0:
                time.sleep(0.01)

    run_threads([lambda m=m: rank(m) for m in ms])


def test_peer_ahead_by_one_round() -> None:
    """Both of the raw peer's messages are in the socket before rank 0 starts round 1."""
    mesh, to_mesh, from_mesh = raw_peer()
    try:
        first, second = np.arange(10), np.arange(20_000, dtype=np.int32)[::2]
        to_mesh.sendall(wire(1, ("round", 1, first)) + wire(2, ("round", 2, second)))
        assert_same(in_thread(lambda: exchange(mesh, 1, {1: "a"})), {1: ("round", 1, first)})
        assert read_wire(from_mesh, 1) == "a"
        assert_same(in_thread(lambda: exchange(mesh, 2, {1: "b"})), {1: ("round", 2, second)})
        assert read_wire(from_mesh, 2) == "b"
    finally:
        mesh.close()
        to_mesh.close()
        from_mesh.close()


def test_real_listener_and_connect() -> None:
    """The path ``exchange.py`` takes: ``Mesh(rank, size, host)``, the addresses, ``connect``."""
    n = 3
    ms = [Mesh(r, n, "127.0.0.1") for r in range(n)]
    try:
        addresses = [m.address for m in ms]
        assert all(a is not None and a[0] == "127.0.0.1" and a[1] > 0 for a in addresses)
        run_threads([lambda m=m: m.connect(addresses, timeout=TIMEOUT_S) for m in ms])
        for m in ms:
            assert sorted(m.send_to) == sorted(m.receive_from) == [p for p in range(n) if p != m.rank]
            for sock in (*m.send_to.values(), *m.receive_from.values()):
                assert not sock.getblocking()
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        def rank(mesh: Mesh) -> None:
            peers = [p for p in range(n) if p != mesh.rank]
            for seq in range(1, 9):
                received = exchange(mesh, seq, {p: payload(seq, mesh.rank, p) for p in peers})
                for p in peers:
                    assert_same(received[p], payload(seq, p, mesh.rank))
            big = {p: np.full(1 << 21, mesh.rank, np.int64) for p in peers}  # 16 MB to each
            received = exchange(mesh, 9, big)
            for p in peers:
                assert_same(received[p], np.full(1 << 21, p, np.int64))

        run_threads([lambda m=m: rank(m) for m in ms])
    finally:
        for m in ms:
            m.close()


def test_from_sockets_wants_every_peer() -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError):
            Mesh.from_sockets(0, 3, {1: a}, {1: b})
    finally:
        a.close()
        b.close()


# --- rounds that fail ----------------------------------------------------------------------


def assert_fails_fast(mesh: Mesh, call: Callable[[], Any], error: type[BaseException], match: str | None = None) -> None:
    """``call`` raises ``error`` within a couple of seconds and leaves the selector empty."""
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        in_thread(call)
    assert time.monotonic() - t0 < 3.0
    assert_selector_empty(mesh)


@pytest.mark.parametrize("transport", PAIRS)
@pytest.mark.parametrize("sending", [10, 8 << 20], ids=["small", "8MB"])
def test_peer_closes_mid_message(transport: str, sending: int) -> None:
    """The raw peer sends the header and half of a frame, then closes: PeerLost, whether rank
    0 sees the end of file while reading or the broken pipe while still sending."""
    mesh, to_mesh, from_mesh = raw_peer(PAIRS[transport])
    try:
        message = wire(1, np.arange(10_000))  # half of it fits in the socket buffer
        to_mesh.sendall(message[: len(message) // 2])
        done = threading.Event()

        def close_soon() -> None:
            time.sleep(0.05)
            to_mesh.close()
            from_mesh.close()
            done.set()

        closer = threading.Thread(target=close_soon, daemon=True)
        closer.start()
        part = np.zeros(sending // 8, np.int64)
        assert_fails_fast(mesh, lambda: exchange(mesh, 1, {1: part}), PeerLost)
        closer.join(TIMEOUT_S)
        assert done.is_set()
    finally:
        mesh.close()
        to_mesh.close()
        from_mesh.close()


@pytest.mark.parametrize("transport", PAIRS)
def test_peer_closes_mid_header(transport: str) -> None:
    mesh, to_mesh, from_mesh = raw_peer(PAIRS[transport])
    try:
        to_mesh.sendall(wire(1, "x")[:5])
        to_mesh.close()
        from_mesh.close()
        assert_fails_fast(mesh, lambda: exchange(mesh, 1, {1: "y"}), PeerLost)
    finally:
        mesh.close()


@pytest.mark.parametrize("transport", PAIRS)
def test_peer_closes_before_sending(meshes: Callable[..., list[Mesh]], transport: str) -> None:
    """Rank 1 of 3 closes its mesh without ever taking part; ranks 0 and 2 are in the round."""
    ms = meshes(3, PAIRS[transport])

    def closer() -> None:
        time.sleep(0.05)
        ms[1].close()

    def rank(mesh: Mesh) -> Any:
        peers = [p for p in range(3) if p != mesh.rank]
        try:
            exchange(mesh, 1, {p: np.arange(1000) for p in peers})
        except PeerLost as lost:
            assert_selector_empty(mesh)
            return lost
        return None

    t0 = time.monotonic()
    results = run_threads([lambda: rank(ms[0]), closer, lambda: rank(ms[2])])
    assert time.monotonic() - t0 < 3.0
    assert isinstance(results[0], PeerLost) and isinstance(results[2], PeerLost)


def test_peer_closed_already() -> None:
    mesh, to_mesh, from_mesh = raw_peer()
    to_mesh.close()
    from_mesh.close()
    try:
        assert_fails_fast(mesh, lambda: exchange(mesh, 1, {1: np.arange(10)}), PeerLost)
    finally:
        mesh.close()


class Stopped(Exception):
    pass


def test_check_runs_while_waiting_and_its_error_ends_the_round(meshes: Callable[..., list[Mesh]]) -> None:
    """A silent peer: ``check`` runs every ``poll_s`` and its exception (a stopped job) comes
    out of ``exchange``."""
    ms = meshes(2)
    calls: list[float] = []

    def check() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 5:
            raise Stopped("the job was stopped")

    assert_fails_fast(ms[0], lambda: exchange(ms[0], 1, {1: "hello"}, check), Stopped, "stopped")
    assert len(calls) == 5
    # what rank 0 sent before it stopped is intact in rank 1's socket
    assert in_thread(lambda: exchange(ms[1], 1, {0: "hi"})) == {0: "hello"}


def test_check_is_not_needed_when_data_keeps_coming(meshes: Callable[..., list[Mesh]]) -> None:
    ms = meshes(2)

    def never() -> None:
        raise AssertionError("check ran although the round never waited poll_s")

    parts = {m.rank: np.arange(1 << 20) for m in ms}
    run_threads([lambda m=m: m.exchange(1, {1 - m.rank: parts[m.rank]}, 5.0, never) for m in ms])


def test_wrong_round_number_means_diverged_workers() -> None:
    mesh, to_mesh, from_mesh = raw_peer()
    try:
        to_mesh.sendall(wire(7, "from round 7"))
        assert_fails_fast(mesh, lambda: exchange(mesh, 3, {1: "round 3"}), RuntimeError, "diverged")
    finally:
        mesh.close()
        to_mesh.close()
        from_mesh.close()
