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
the client needs (the server's imports are inside ``serve``)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import sys
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

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
_HEADER = struct.Struct("!4sI")  # the request's kind (b"run " and the control words) and length


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
    if not private(os.path.dirname(path)):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:  # none listening: no socket file, or one left by a process that ended
        sock.close()
        return None
    return sock


def _pack(items: list[str]) -> bytes:
    return b"\0".join(os.fsencode(item) for item in items)


def _unpack(data: bytes) -> list[str]:
    return [os.fsdecode(item) for item in data.split(b"\0")] if data else []


def _read(sock: socket.socket, n: int) -> bytes:
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
    with sock:
        try:
            env = [f"{k}={v}" for k, v in os.environ.items()]
            body = struct.pack("!I", len(argv)) + _pack([os.getcwd(), *argv, *env])
            socket.send_fds(sock, [_HEADER.pack(b"run ", len(body))], [0, 1, 2])
            sock.sendall(body)
            reply = _read(sock, 1)
            if reply != STARTED:  # STALE (it exits), or it went away: run here
                return None
            (pid,) = struct.unpack("!q", _read(sock, 8))
        except OSError:  # a standard descriptor closed, the process ending meanwhile: no run started
            return None
        _forward_signals(pid)
        try:
            status = _read(sock, 4)
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
        with contextlib.suppress(ProcessLookupError):  # it has just ended: its status is on the way
            os.kill(pid, number)

    for name in FORWARDED:
        number = getattr(signal, name)
        if signal.getsignal(number) is not signal.SIG_IGN:  # one this command ignores (a background job's Ctrl-C) stays so
            signal.signal(number, forward)


def control(word: bytes) -> bytes | None:
    """Send a control request (``b"stat"``, ``b"stop"``) to this process's resident process:
    its reply, None where none listens."""
    sock = _connect(socket_path())
    if sock is None:
        return None
    with sock:
        sock.sendall(_HEADER.pack(word, 0))
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply or None


# ---- the resident process ----------------------------------------------------------------


class Snapshot:
    """The files a process runs (its modules, the kernels' library), by modification time and
    size: a changed one means a reinstall or an edit the process does not run."""

    def __init__(self, files: list[str]):
        self.files = {path: self._stamp(path) for path in files}

    @staticmethod
    def _stamp(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    @classmethod
    def of_package(cls) -> Snapshot:
        files = [
            m.__file__
            for name, m in list(sys.modules.items())
            if name.startswith("dask_datalog") and getattr(m, "__file__", None)
        ]
        return cls([f for f in files if f is not None])

    def changed(self) -> bool:
        return any(self._stamp(path) != stamp for path, stamp in self.files.items())


def warm_up() -> None:
    """Import what a ``run`` imports and build what every run builds the same (the grammar's
    parser), so a child starts with it: nothing that starts a thread (a forked child would
    lack it: the kernels' own check, cpu_kernels._serial_in_child)."""
    from dask_datalog.cluster.cli import main, run_command  # noqa: F401  (imported to be inherited)
    from dask_datalog.engine.frontend import parser

    parser._lark()  # built once per process: inherited here


def serve(path: str, idle_timeout: float, watched: Snapshot) -> None:
    """Listen on ``path`` until stopped, stale or idle for ``idle_timeout`` seconds; fork a
    child per run request and send each command its child's exit status. Once stopped or
    stale it listens no more (new commands run themselves) but stays until its runs end, so
    that each command still gets its status."""
    import gc
    import select
    import signal
    import time

    gc.freeze()  # what the imports made: never scanned, shared with every child unwritten
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        if os.path.exists(path):  # a socket left by a process that ended (``start`` found none listening)
            os.unlink(path)
        listener.bind(path)
    finally:
        os.umask(old_umask)
    mine = os.stat(path).st_ino  # at the end, removed only if still this one's (a new one may have replaced it)
    listener.listen(16)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that set_wakeup_fd sees it
    signal.set_wakeup_fd(wake_w)
    # pid -> the connection of the command it runs for; None once that command went away
    children: dict[int, socket.socket | None] = {}
    served = [0]  # runs started, for ``daemon status``
    last = time.monotonic()
    listening = True
    try:
        while listening or children:
            waiting: list[Any] = [wake_r, *(c for c in children.values() if c is not None)] + ([listener] if listening else [])
            left = idle_timeout - (time.monotonic() - last)
            if not children and left <= 0:
                return
            ready, _, _ = select.select(waiting, [], [], max(left, 0.05) if not children else None)
            if wake_r in ready:
                os.read(wake_r, 4096)
            _reap(children)
            for pid, conn in list(children.items()):
                if conn is not None and conn in ready:  # the command was killed: its run ends too
                    conn.close()
                    children[pid] = None
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            if listening and listener in ready:
                conn, _ = listener.accept()
                if _request(conn, listener, children, watched, (wake_r, wake_w), served) == "stop":
                    listening = False
                    _unlisten(listener, path, mine)
            if children:  # idle counts from the end of the last run, not from a status request
                last = time.monotonic()
    finally:
        _unlisten(listener, path, mine)


def _unlisten(listener: socket.socket, path: str, mine: int) -> None:
    """No more connections: the socket closed and its file removed, if still this process's."""
    listener.close()
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == mine:
            os.unlink(path)


def _reap(children: dict[int, socket.socket | None]) -> None:
    """Send each ended child's command its exit status (a signal's: 128 + its number, as a
    shell reports it)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):  # the command is gone
            conn.sendall(struct.pack("!i", code if code >= 0 else 128 - code))
        conn.close()


def _request(
    conn: socket.socket,
    listener: socket.socket,
    children: dict[int, socket.socket | None],
    watched: Snapshot,
    wake: tuple[int, int],
    served: list[int],
) -> str | None:
    """Answer one connection; "stop" where the process is to end."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    peer, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():  # the directory admits no one else; a second lock all the same
        conn.close()
        return None
    conn.settimeout(10)
    fds: list[int] = []
    try:
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        if len(head) < _HEADER.size:
            conn.close()
            return None
        word, length = _HEADER.unpack(head)
        body = _read(conn, length)
        if word == b"stat" and not watched.changed():
            conn.sendall(STATUS + f"pid {os.getpid()}, {served[0]} run(s) served, {len(children)} running".encode())
            conn.close()
            return None
        if word in (b"stop", b"stat") or watched.changed():
            conn.sendall(STOPPING if word == b"stop" else STALE)
            conn.close()
            return "stop"
        if word != b"run " or len(fds) != 3 or len(body) < length:
            conn.close()
            return None
        (count,) = struct.unpack("!I", body[:4])
        fields = _unpack(body[4:])
        cwd, argv, env = fields[0], fields[1 : 1 + count], fields[1 + count :]
        pid = os.fork()
        if pid == 0:
            _child(conn, fds, listener, children, wake, cwd, argv, env, peer)
        served[0] += 1
        conn.sendall(STARTED + struct.pack("!q", pid))
        conn.settimeout(None)
        children[pid] = conn
        return None
    except OSError:  # the command went away mid-request
        conn.close()
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _child(
    conn: socket.socket,
    fds: list[int],
    listener: socket.socket,
    children: dict[int, socket.socket | None],
    wake: tuple[int, int],
    cwd: str,
    argv: list[str],
    env: list[str],
    command_pid: int,
) -> None:
    """The forked child: the command's descriptors, directory, environment and arguments, then
    the command, as in its own process (never returns); its time counts from the command's
    start (``command_pid``'s)."""
    import signal

    import dask_datalog.cluster.cli as cli

    try:
        signal.set_wakeup_fd(-1)
        for name in ("SIGCHLD", "SIGTERM", "SIGHUP", "SIGQUIT"):  # as a fresh interpreter has them
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sock in (conn, listener, *children.values()):
            if sock is not None:
                sock.close()
        for fd in wake:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(item.split("=", 1) for item in env if "=" in item)  # type: ignore[misc]
        sys.argv = ["dask-datalog", *argv]
        cli.command_process = str(command_pid)
        _reopen_standard_streams()
    except BaseException as error:  # before the command: say why, and end
        os.write(2, f"dask-datalog: the resident process could not start the run: {error!r}\n".encode())
        os._exit(1)
    os._exit(_status_of(cli.run_to_exit))


def _status_of(command: Callable[[], object]) -> int:
    """The exit status an interpreter running ``command`` as its program ends with (a
    SystemExit's code, 1 and the traceback for any other exception), its output flushed:
    the child ends here, never back in the resident process's loop."""
    import traceback

    status = 0
    try:
        command()
    except SystemExit as stop:  # argparse's usage errors, among others
        if isinstance(stop.code, int):
            status = stop.code
        elif stop.code is not None:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that left: as the interpreter ignores it at exit
            stream.flush()
    return status


def _reopen_standard_streams() -> None:
    """Python's standard streams over the command's descriptors, buffered as a fresh process
    buffers them (lines for a terminal)."""
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = open(0, encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115


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
            [sys.executable, "-m", "dask_datalog.cluster.cli.resident", path, repr(idle_timeout)],
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


def _resident_main(path: str, idle_timeout: str) -> None:
    """The resident process (``daemon start`` runs it): the command's environment defaults,
    the imports, then ``serve``."""
    from dask_datalog.cluster.cli import environment_defaults

    environment_defaults()
    if socket_path() != path:
        raise SystemExit(f"the environment changed between `daemon start` and its process ({socket_path()} != {path})")
    warm_up()
    serve(path, float(idle_timeout), Snapshot.of_package())


if __name__ == "__main__":
    _resident_main(*sys.argv[1:])
