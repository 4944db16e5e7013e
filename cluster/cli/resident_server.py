"""The resident process itself (``dask-datalog daemon start`` runs this module): it imports what a
``run`` imports, listens on the socket resident.py names, and forks a child per command, which
runs the command as a fresh process would and whose exit status goes back to the command."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from dask_datalog.cluster.cli.resident import HEADER, STALE, STARTED, STATUS, STOPPING, control, read, socket_path, unpack

PR_SET_PDEATHSIG = 1  # prctl(2)


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
    lack it: the kernels' own check, cpu_kernels._serial_in_child). The dataclass methods the
    imports compiled are saved here, before any run (engine/compile_cache.py)."""
    from dask_datalog.cluster.cli import main, run_command  # noqa: F401  (imported to be inherited)
    from dask_datalog.engine import compile_cache
    from dask_datalog.engine.frontend import parser

    parser._lark()  # built once per process: inherited here
    compile_cache.save()


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
    reply = control(b"stat", path)
    if reply is not None and reply.startswith(STATUS):  # two `daemon start` at once: the other one serves
        raise SystemExit(f"a resident process already listens on {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        if os.path.exists(path):  # a socket left by a process that ended: none answered
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
        head, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
        if len(head) < HEADER.size:
            conn.close()
            return None
        word, length = HEADER.unpack(head)
        body = read(conn, length)
        stale = watched.changed()  # some hundred stat calls: once a request
        if word == b"stat" and not stale:
            conn.sendall(STATUS + f"pid {os.getpid()}, {served[0]} run(s) served, {len(children)} running".encode())
            conn.close()
            return None
        if word in (b"stop", b"stat") or stale:
            conn.sendall(STOPPING if word == b"stop" else STALE)
            conn.close()
            return "stop"
        if word != b"run " or len(fds) != 3 or len(body) < length:
            conn.close()
            return None
        (count,) = struct.unpack("!I", body[:4])
        fields = unpack(body[4:])
        cwd, argv, env = fields[0], fields[1 : 1 + count], fields[1 + count :]
        pid = os.fork()
        if pid == 0:
            _child(conn, fds, listener, children, wake, cwd, argv, env, peer)
        served[0] += 1
        conn.sendall(STARTED + struct.pack("!q", pid))
        conn.settimeout(None)
        children[pid] = conn
        return None
    except (OSError, ValueError, IndexError, struct.error):  # the command went away, or sent what no command sends
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
    import ctypes  # NumPy has imported it: nothing to load
    import signal

    import dask_datalog.cluster.cli as cli

    try:
        resident = os.getppid()
        # Killed with the resident process (which holds the command's status): the command
        # then ends with a message, and so does its run, rather than go on unseen. SIGTERM: a
        # run stops as at a batch system's limit (a checkpoint, where it keeps them).
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != resident:  # it died before the call
            os._exit(1)
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


def _resident_main(path: str, idle_timeout: str) -> None:
    """The resident process (``daemon start`` runs it): the command's environment defaults and
    method cache (engine/compile_cache.py), the imports, then ``serve``."""
    from dask_datalog.cluster.cli import environment_defaults
    from dask_datalog.engine import compile_cache

    environment_defaults()
    compile_cache.install()
    if socket_path() != path:
        raise SystemExit(f"the environment changed between `daemon start` and its process ({socket_path()} != {path})")
    warm_up()
    serve(path, float(idle_timeout), Snapshot.of_package())


if __name__ == "__main__":
    _resident_main(*sys.argv[1:])
