"""Direct TCP connections between the workers of one job phase, driven from the task thread.

A round through Dask's RPC (``exchange.DaskTransport`` without a mesh) hops from the task thread
to the worker's event loop and back, and the loop's other duties and the GIL handoffs between
the two threads cost 1.5-3.5 ms per round on a busy 2-core machine: 426 rounds of REACH on
luxembourg_osm made 2 workers slower than 1. Here the task thread itself writes to and reads
from plain sockets, one connection per ordered pair of workers (so sends and receives never
share a socket), with non-blocking I/O under one selector so that two workers sending large
parts to each other cannot both block in ``send``.

Messages are pickles (protocol 5) whose array buffers travel out of band as raw frames, so
array data is never copied into the pickle: ``[seq u64][frames u32][length u64 * frames]``,
then the frames. Workers take part in the same rounds in the same order, so each connection
carries exactly one message per round, and a message is read to its exact length (the next
round's message, if a peer is ahead, stays in the socket).

``MeshTransport`` makes it a ``Transport``. The Dask runtime exchanges the listening addresses
through its rendezvous (cluster/runtime/phase.py) and uses the mesh on ``tcp://`` clusters,
where it is measured fastest (docs/benchmarks.md); other protocols (TLS, UCX, in-process) use
Dask's comms (cluster/runtime/comm.py). ``Mesh.from_sockets`` takes sockets connected
elsewhere: socket pairs make a whole mesh in one process, without Dask (``tests/test_mesh.py``).
"""

from __future__ import annotations

import pickle
import selectors
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from dask_datalog.engine.errors import PeerLost
from dask_datalog.partition.transport import Rounds

_HEADER = struct.Struct("<QI")  # round number, frame count
_LENGTH = struct.Struct("<Q")
_HELLO = struct.Struct("<I")  # the connecting worker's rank
_CHUNK = 1 << 22  # bytes per send call: keeps one peer from monopolising the loop


def encode(obj: Any) -> list[memoryview]:
    """Frames of one message body: the pickle, then each out-of-band buffer."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        frames = [memoryview(head)] + [b.raw() for b in buffers]
    except BufferError:  # a non-contiguous buffer: pickle it in band
        frames = [memoryview(pickle.dumps(obj, protocol=5))]
    return frames


def decode(frames: list[bytearray]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


class _Outgoing:
    """One message being written to one socket."""

    def __init__(self, seq: int, frames: list[memoryview]):
        lengths = b"".join(_LENGTH.pack(f.nbytes) for f in frames)
        self.views = [memoryview(_HEADER.pack(seq, len(frames)) + lengths), *(f.cast("B") for f in frames)]

    def write(self, sock: socket.socket) -> bool:
        """Send what the socket takes now; True when the message is out."""
        while self.views:
            view = self.views[0]
            try:
                sent = sock.send(view[:_CHUNK])
            except BlockingIOError:
                return False
            except OSError as error:  # EPIPE, ECONNRESET, ETIMEDOUT...: the peer is gone either way
                raise PeerLost(f"a peer closed its connection: {error}") from error
            if sent < view.nbytes:
                self.views[0] = view[sent:]
                if sent == 0:
                    return False
            else:
                self.views.pop(0)
        return True


class _Incoming:
    """One message being read from one socket: header, lengths, frames, each to its exact size."""

    def __init__(self, seq: int):
        self.seq = seq
        self.frames: list[bytearray] = []
        self.lengths: list[int] = []
        self.stage = "header"
        self.buffer: bytearray | None = bytearray(_HEADER.size)
        self.filled = 0

    def read(self, sock: socket.socket) -> bool:
        """Read what is there; True when the message is complete."""
        while self.buffer is not None:
            if self.filled < len(self.buffer):
                try:
                    n = sock.recv_into(memoryview(self.buffer)[self.filled :])
                except BlockingIOError:
                    return False
                except OSError as error:  # ECONNRESET, ETIMEDOUT...: the peer is gone either way
                    raise PeerLost(f"a peer closed its connection: {error}") from error
                if n == 0:
                    raise PeerLost("a peer closed its connection")
                self.filled += n
                continue
            self._advance()
        return True

    def _advance(self) -> None:
        """The current buffer is full: go on to the next part of the message (None: done)."""
        assert self.buffer is not None
        if self.stage == "header":
            seq, count = _HEADER.unpack(self.buffer)
            if seq != self.seq:
                raise RuntimeError(f"message for round {seq} arrived in round {self.seq}: the workers diverged")
            self.stage, self.buffer = "lengths", bytearray(_LENGTH.size * count)
        elif self.stage == "lengths":
            self.lengths = [v for (v,) in _LENGTH.iter_unpack(self.buffer)]
            self.stage, self.buffer = "frames", bytearray(self.lengths[0])
        else:
            self.frames.append(self.buffer)
            more = len(self.frames) < len(self.lengths)
            self.buffer = bytearray(self.lengths[len(self.frames)]) if more else None
        self.filled = 0


class Mesh:
    """This worker's sockets to and from every peer of one job phase."""

    def __init__(self, rank: int, size: int, host: str | None = None):
        """``host``: listen there for the peers' connections (``connect``); None: no listener,
        the sockets come from ``from_sockets``."""
        self.rank = rank
        self.size = size
        self.listener: socket.socket | None = None
        self.address: tuple[str, int] | None = None
        if host is not None:
            self.listener = socket.create_server((host, 0), backlog=max(16, size))
            self.address = (host, self.listener.getsockname()[1])
        self.send_to: dict[int, socket.socket] = {}
        self.receive_from: dict[int, socket.socket] = {}
        self.selector = selectors.DefaultSelector()

    @classmethod
    def from_sockets(
        cls, rank: int, size: int, send_to: dict[int, socket.socket], receive_from: dict[int, socket.socket]
    ) -> Mesh:
        """A mesh over sockets connected elsewhere (socket pairs in one process: tests without
        Dask or a network). The mesh owns them from now on and closes them in ``close``."""
        peers = set(range(size)) - {rank}
        if set(send_to) != peers or set(receive_from) != peers:
            raise ValueError(f"rank {rank} of {size} needs one socket each way to each of {sorted(peers)}")
        mesh = cls(rank, size)
        mesh.send_to, mesh.receive_from = dict(send_to), dict(receive_from)
        mesh._ready()
        return mesh

    def connect(self, addresses: list[tuple[str, int]], timeout: float = 60.0) -> None:
        """Connect to every peer's listener (the backlog holds them until accepted), then
        accept every peer's connection to ours."""
        if self.listener is None:
            raise RuntimeError("a mesh made from sockets has no listener to connect through")
        for p, address in enumerate(addresses):
            if p != self.rank:
                sock = socket.create_connection(address, timeout=timeout)
                sock.sendall(_HELLO.pack(self.rank))
                self.send_to[p] = sock
        self.listener.settimeout(timeout)
        while len(self.receive_from) < self.size - 1:
            sock, _ = self.listener.accept()
            sock.settimeout(timeout)
            (peer,) = _HELLO.unpack(_read_exactly(sock, _HELLO.size))
            self.receive_from[peer] = sock
        self._ready()

    def _ready(self) -> None:
        """Non-blocking from now on (``exchange`` waits in the selector), and no Nagle delay on
        the small messages of the late rounds (TCP only: socket pairs have no such option)."""
        for sock in (*self.send_to.values(), *self.receive_from.values()):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)

    def exchange(self, seq: int, parts: dict[int, Any], poll_s: float, check: Callable[[], None]) -> tuple[dict[int, Any], float]:
        """Send ``parts[p]`` to every peer p and receive one message from each; ``check`` runs
        whenever nothing happened for ``poll_s`` (it raises to stop the job). Returns the
        messages and the time the last send completed."""
        outgoing = {p: _Outgoing(seq, encode(part)) for p, part in parts.items()}
        incoming = {p: _Incoming(seq) for p in self.receive_from}
        received: dict[int, Any] = {}
        for p in list(outgoing):
            if outgoing[p].write(self.send_to[p]):
                del outgoing[p]
        sent_at = time.perf_counter()
        try:  # registered inside: whatever fails leaves the selector empty for the next round
            for p in outgoing:
                self.selector.register(self.send_to[p], selectors.EVENT_WRITE, ("out", p))
            for p in incoming:
                self.selector.register(self.receive_from[p], selectors.EVENT_READ, ("in", p))
            while outgoing or len(received) < len(incoming):
                events = self.selector.select(poll_s)
                if not events:
                    check()
                for key, _ in events:
                    direction, p = key.data
                    if direction == "out":
                        if outgoing[p].write(self.send_to[p]):
                            del outgoing[p]
                            self.selector.unregister(self.send_to[p])
                            sent_at = time.perf_counter()
                    elif incoming[p].read(self.receive_from[p]):
                        received[p] = decode(incoming[p].frames)
                        self.selector.unregister(self.receive_from[p])
        finally:
            for key in list(self.selector.get_map().values()):
                self.selector.unregister(key.fileobj)
        return received, sent_at

    def close(self) -> None:
        self.selector.close()
        listener = [] if self.listener is None else [self.listener]
        for sock in (*listener, *self.send_to.values(), *self.receive_from.values()):
            sock.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise PeerLost("a peer closed its connection during set-up")
        data += chunk
    return bytes(data)


class MeshTransport:
    """A ``Transport`` over a ``Mesh``: one message per peer per round, read to its exact length.
    ``check()`` runs whenever a round has waited ``poll_s`` with nothing to do (it raises to
    stop: the run was stopped elsewhere) and at most every ``poll_s`` otherwise; a peer whose
    connection closes ends the round with ``PeerLost``."""

    kind = "mesh"

    def __init__(self, mesh: Mesh, check: Callable[[], None] = lambda: None, poll_s: float = 0.5):
        self.mesh = mesh
        self.rank = mesh.rank
        self.size = mesh.size
        self.poll_s = poll_s
        self.rounds = Rounds(mesh.rank, mesh.size, check, poll_s)
        self.stats = self.rounds.stats

    def alltoall(self, parts: Sequence[Any]) -> list[Any]:
        return self.rounds.run(parts, lambda seq, out: self.mesh.exchange(seq, out, self.poll_s, self.rounds.check))

    def allgather(self, part: Any) -> list[Any]:
        return self.alltoall([part] * self.size)

    def close(self) -> None:
        self.mesh.close()
