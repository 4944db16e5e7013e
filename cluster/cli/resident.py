"""The resident process: ``dask-datalog daemon start`` keeps one process with the engine
imported, and each ``dask-datalog run`` of the same user, installation and environment is a
child it forks instead of a fresh interpreter. A run then starts in milliseconds, not the
0.15 s of importing Python, NumPy and the engine (most of a small program's time: Soufflé's
compiled programs start in a few). Gradle's daemon and Bazel's server do the same for the same
reason.

The command (the client) connects to a Unix socket in a directory only its user can enter,
hands over its standard input, output and error (``SCM_RIGHTS``), working directory, arguments
and environment, and forwards its signals to the child; the child runs the command exactly as
a fresh process would (``cluster.cli.run_to_exit``) and the resident process sends back its
exit status. Output goes straight from the child to the command's own descriptors.

A resident process serves only commands that would import the same thing the same way: the
socket's name is a digest of the interpreter, this package's location and the environment
variables read when a library loads (OpenMP's, OpenBLAS's, glibc's, Python's, ours). It
answers "stale" and exits once any of its modules' files changed, and exits after
``--idle-timeout`` seconds without a run. Without one (none started, another environment, a
stale one) the command runs as it always does, in its own process.

This module is imported by every ``run`` command before anything else: it imports only what
the command needs to be served (the resident process is resident_server.py)."""

from __future__ import annotations

import os
import stat
import struct
import sys
import zlib

# typing.TYPE_CHECKING's value without importing typing (this module starts every command).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import socket
    from typing import Any

PROTOCOL = 1
# Environment variables a library reads once, when it loads: a process that loaded them with
# other values must not serve the command.
LOAD_TIME_ENV = (
    "OMP_",
    "GOMP_",
    "KMP_",
    "OPENBLAS_",
    "MKL_",
    "MALLOC_",
    "GLIBC_",
    "LD_",
    "PYTHON",
    "DASK_DATALOG_",
    "LANG",
    "LC_",
)
DEFAULT_IDLE_TIMEOUT = 3600.0
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
# Replies: the child's pid follows STARTED; STALE: the process exits, the command runs itself.
STARTED, STALE, STATUS, STOPPING = b"P", b"S", b"I", b"K"
HEADER = struct.Struct("!4sI")  # the request's kind (b"run " and the control words) and length


def directory() -> str:
    """Where this user's resident processes listen: ``$XDG_RUNTIME_DIR/dask-datalog``, else
    ``/tmp/dask-datalog-UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "dask-datalog")
    return os.path.join("/tmp", f"dask-datalog-{os.getuid()}")


def private(path: str) -> bool:
    """Whether ``path`` is a directory (not a link) of this user that no one else can enter:
    anything else could be someone else's socket."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def socket_path() -> str:
    """The socket of the resident process that may serve this process's commands."""
    key = [str(PROTOCOL), sys.executable, os.path.dirname(os.path.abspath(__file__))]
    key += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(LOAD_TIME_ENV))
    return os.path.join(directory(), f"{zlib.crc32(chr(0).join(key).encode('utf-8', 'surrogateescape')):08x}.sock")


def _connect(path: str) -> socket.socket | None:
    """A connection to the process listening on ``path``; None without one. ``socket`` is
    imported only where a socket file is there: a command no process serves pays nothing."""
    if not (os.path.exists(path) and private(os.path.dirname(path))):
        return None
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:  # none listening: no socket file, or one left by a process that ended
        sock.close()
        return None
    return sock


def pack(items: list[str]) -> bytes:
    return b"\0".join(os.fsencode(item) for item in items)


def unpack(data: bytes) -> list[str]:
    return [os.fsdecode(item) for item in data.split(b"\0")] if data else []


def read(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or fewer where the other side closed."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def run_in_resident(argv: list[str]) -> int | None:
    """The exit status of ``dask-datalog ARGV`` run by this user's resident process, or None
    where none serves this process, or ``DASK_DATALOG_RESIDENT=off`` (the command then runs
    itself)."""
    if os.environ.get("DASK_DATALOG_RESIDENT") == "off" or not sys.platform.startswith("linux"):
        return None
    sock = _connect(socket_path())
    if sock is None:
        return None
    import socket  # imported by _connect already

    with sock:
        try:
            env = [f"{k}={v}" for k, v in os.environ.items()]
            body = struct.pack("!I", len(argv)) + pack([os.getcwd(), *argv, *env])
            socket.send_fds(sock, [HEADER.pack(b"run ", len(body))], [0, 1, 2])
            sock.sendall(body)
            reply = read(sock, 1)
            if reply != STARTED:  # STALE (it exits), or it went away: run here
                return None
            (pid,) = struct.unpack("!q", read(sock, 8))
        except OSError:  # a standard descriptor closed, the process ending meanwhile: no run started
            return None
        _forward_signals(pid)
        try:
            status = read(sock, 4)
        except OSError:
            status = b""
    if len(status) < 4:
        sys.stderr.write("dask-datalog: the resident process ended during the run (its child's status is lost)\n")
        return 1
    return int(struct.unpack("!i", status)[0])


def _forward_signals(pid: int) -> None:
    """The command's signals go to the child, which acts on them as a run in its own process
    would (Ctrl-C stops it, SIGTERM checkpoints it)."""
    import signal

    def forward(number: int, frame: Any) -> None:
        try:
            os.kill(pid, number)
        except ProcessLookupError:  # it has just ended: its status is on the way
            return

    for name in FORWARDED:
        number = getattr(signal, name)
        if signal.getsignal(number) is not signal.SIG_IGN:  # one this command ignores (a background job's Ctrl-C) stays so
            signal.signal(number, forward)


def control(word: bytes, path: str | None = None) -> bytes | None:
    """Send a control request (``b"stat"``, ``b"stop"``) to the resident process on ``path``
    (default: this process's): its reply, None where none listens."""
    sock = _connect(path or socket_path())
    if sock is None:
        return None
    with sock:
        sock.sendall(HEADER.pack(word, 0))
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply or None


# ---- the ``daemon`` command ----------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """The ``daemon`` subparser, on the CLI's subparsers action ``sub``."""
    daemon = sub.add_parser(
        "daemon",
        help="keep a resident process that runs `dask-datalog run` commands without starting Python each time",
        description="Keep a resident process with the engine imported: each later `dask-datalog run` by this "
        "user, from this installation and with the same library settings in its environment (OMP_*, "
        "OPENBLAS_*, MALLOC_*, PYTHON*, DASK_DATALOG_*, ...), is a child it forks, started in milliseconds "
        "instead of the ~0.15 s of importing Python, NumPy and the engine. The run is the same: its output, "
        "errors, exit status and signals are the command's. Without a resident process, or once the "
        "installation changed, commands run in their own process as always.",
    )
    action = daemon.add_subparsers(dest="action", required=True, metavar="{start,stop,status}")
    start = action.add_parser("start", help="start one for this environment (nothing if one runs)")
    start.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"end after this long without a run (default: {DEFAULT_IDLE_TIMEOUT:.0f})",
    )
    action.add_parser("stop", help="stop the one of this environment")
    action.add_parser("status", help="say whether one serves this environment (exit status 1 if none)")


def main(args: argparse.Namespace) -> int:
    """``dask-datalog daemon start|stop|status``."""
    path = socket_path()
    if args.action == "status":
        reply = control(b"stat")
        if reply is None or not reply.startswith(STATUS):
            print(f"no resident process serves this environment ({path})")
            return 1
        print(f"resident process at {path}: {reply[1:].decode()}")
        return 0
    if args.action == "stop":
        reply = control(b"stop")
        print(f"stopped the resident process at {path}" if reply == STOPPING else f"no resident process at {path}")
        return 0
    return _start(path, args.idle_timeout)


def _start(path: str, idle_timeout: float) -> int:
    import subprocess
    import time

    if not sys.platform.startswith("linux"):
        print("dask-datalog daemon: error: the resident process runs on Linux only", file=sys.stderr)
        return 1
    if not idle_timeout > 0:
        print("dask-datalog daemon: error: --idle-timeout must be a number of seconds above 0", file=sys.stderr)
        return 2
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as error:
        print(f"dask-datalog daemon: error: cannot create {folder}: {error.strerror or error}", file=sys.stderr)
        return 1
    if not private(folder):
        print(
            f"dask-datalog daemon: error: {folder} must be a directory of this user that no one else can enter "
            "(mode 700); it is not, so a socket there could be someone else's",
            file=sys.stderr,
        )
        return 1
    reply = control(b"stat")
    if reply is not None and reply.startswith(STATUS):  # (a stale one answers STALE and ends)
        print(f"resident process at {path}: {reply[1:].decode()} (already running)")
        return 0
    log_path = path.removesuffix(".sock") + ".log"
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "dask_datalog.cluster.cli.resident_server", path, repr(idle_timeout)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C there is for commands
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = control(b"stat")
        if reply is not None and reply.startswith(STATUS):
            print(f"resident process at {path}: {reply[1:].decode()} (ends after {idle_timeout:g} s without a run)")
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.02)
    with open(log_path) as log:
        why = log.read().strip()
    child.kill()
    print(f"dask-datalog daemon: error: the resident process did not start{': ' + why if why else ''}", file=sys.stderr)
    return 1
