"""The resident process (cluster/cli/resident.py): a ``run`` it serves is the run the command
makes in its own process (outputs, errors, exit status, Ctrl-C), and it serves no command it
might run otherwise (another environment, changed code, someone else's directory). Real
processes: ``dask-datalog daemon start`` started for real, in a runtime directory of the test's
own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dask_datalog.cluster.cli import resident, resident_server
from dask_datalog.engine import compile_cache

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resident process runs on Linux only")

ROOT = Path(__file__).parents[1]
REACH = ROOT / "examples" / "reach.dl"
FACTS = ROOT / "examples" / "facts" / "reach"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of the test's commands: its own runtime directory, commands served."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    out = {k: v for k, v in os.environ.items() if k != "DASK_DATALOG_RESIDENT"}
    out["XDG_RUNTIME_DIR"] = str(runtime)
    return out


def dask_datalog(*args: object, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dask_datalog.cluster.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


@pytest.fixture
def daemon(env: dict[str, str]):  # type: ignore[no-untyped-def]
    started = dask_datalog("daemon", "start", env=env)
    assert started.returncode == 0, started.stderr
    yield
    dask_datalog("daemon", "stop", env=env)
    end(started.stdout)


def end(started: str) -> None:
    """The resident process ``daemon start`` reported, and every run it forked (its session's
    process group), gone whatever a failed test left."""
    pid = int(started.split("pid ")[1].split(",")[0])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def served(env: dict[str, str]) -> int | None:
    """Runs the environment's resident process has started; None without one."""
    status = dask_datalog("daemon", "status", env=env)
    if status.returncode:
        return None
    return int(status.stdout.split(", ")[1].split()[0])


def cold(env: dict[str, str]) -> dict[str, str]:
    return env | {"DASK_DATALOG_RESIDENT": "off"}


def test_a_served_run_is_the_run_in_its_own_process(tmp_path: Path, env: dict[str, str], daemon: None) -> None:
    """Outputs, standard output, the summary line and the exit status, from another working
    directory with relative paths: the child takes the command's."""
    here = tmp_path / "here"
    here.mkdir()
    args = ("run", os.path.relpath(REACH, here), "-F", os.path.relpath(FACTS, here))
    warm = dask_datalog(*args, "-D", "warm", env=env, cwd=here)
    own = dask_datalog(*args, "-D", "own", env=cold(env), cwd=here)
    assert warm.returncode == own.returncode == 0, (warm.stderr, own.stderr)
    assert served(env) == 1
    assert sorted(p.name for p in (here / "warm").iterdir()) == sorted(p.name for p in (here / "own").iterdir())
    for path in (here / "own").iterdir():
        assert (here / "warm" / path.name).read_bytes() == path.read_bytes()
    assert warm.stdout == own.stdout
    assert warm.stderr.startswith("done: in process") and warm.stderr.split(",")[:2] == own.stderr.split(",")[:2]
    piped = dask_datalog(*args, "-D", "-", env=env, cwd=here)  # outputs on the command's standard output
    assert piped.returncode == 0 and piped.stdout == dask_datalog(*args, "-D", "-", env=cold(env), cwd=here).stdout
    assert served(env) == 2


@pytest.mark.parametrize(
    "case",
    [
        ("program", "bad(x) :- .\n"),
        ("program", ".decl e(x:number)\n.input e\n.decl p(x:number)\n.output p\np(x) :- e(y).\n"),
        ("missing", ""),
        ("flag", ""),
    ],
)
def test_a_served_error_is_the_error_in_its_own_process(
    tmp_path: Path, env: dict[str, str], daemon: None, case: tuple[str, str]
) -> None:
    kind, text = case
    program = tmp_path / "p.dl"
    if kind == "program":
        program.write_text(text)
    args: tuple[object, ...] = ("run", program, "-F", tmp_path, "-D", tmp_path / "out")
    if kind == "missing":
        args = ("run", tmp_path / "none.dl")
    if kind == "flag":
        args = ("run", REACH, "--workers", "0")
    warm, own = dask_datalog(*args, env=env), dask_datalog(*args, env=cold(env))
    assert warm.returncode == own.returncode != 0
    assert warm.stderr == own.stderr and "Traceback" not in warm.stderr
    assert served(env) == 1


def long_run(tmp_path: Path) -> list[str]:
    """A command that runs for seconds, in little memory: what one node reaches along a
    200,000-edge chain, an iteration per edge."""
    (tmp_path / "edge.facts").write_text("".join(f"{i}\t{i + 1}\n" for i in range(200_000)))
    (tmp_path / "start.facts").write_text("0\n")
    program = tmp_path / "reach_from.dl"
    program.write_text(
        ".decl edge(x:number, y:number)\n.input edge\n.decl start(x:number)\n.input start\n"
        ".decl reach(x:number)\n.output reach\nreach(x) :- start(x).\nreach(y) :- reach(x), edge(x, y).\n"
    )
    return [
        sys.executable,
        "-m",
        "dask_datalog.cluster.cli",
        "run",
        str(program),
        "-F",
        str(tmp_path),
        "-D",
        str(tmp_path / "out"),
    ]


def interruptible(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``command`` started with Ctrl-C at its default, as one typed at a terminal has it, and
    its standard error read: tests started in the background (``make test &``) hand their
    commands SIGINT ignored, and a command keeps an ignored Ctrl-C ignored, as a background
    job's should be."""
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_ctrl_c_stops_a_served_run_as_it_stops_its_own(tmp_path: Path, env: dict[str, str], daemon: None) -> None:
    for environment in (env, cold(env)):
        with interruptible(long_run(tmp_path), environment) as proc:
            time.sleep(2.0)  # the run is under way
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, (proc.returncode, err)
    assert served(env) == 1


def test_a_killed_command_ends_its_run(tmp_path: Path, env: dict[str, str], daemon: None) -> None:
    """A command killed outright cannot forward anything: the resident process sees it gone
    and stops the child (SIGTERM), which would otherwise run on unseen."""
    with subprocess.Popen(long_run(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) as proc:
        time.sleep(1.0)
        proc.kill()
    deadline = time.monotonic() + 8  # the run alone would go on for 10 s and more
    status = ""
    while time.monotonic() < deadline:
        status = dask_datalog("daemon", "status", env=env).stdout
        if "0 running" in status:
            break
        time.sleep(0.2)
    assert "1 run(s) served, 0 running" in status


def test_a_run_ends_with_its_resident_process(tmp_path: Path, env: dict[str, str]) -> None:
    """The resident process killed outright (it holds the command's status): the command
    says so and ends with 1, and the run ends too (SIGTERM from the kernel, prctl's death
    signal) instead of going on unseen."""
    started = dask_datalog("daemon", "start", env=env)
    resident = int(started.stdout.split("pid ")[1].split(",")[0])
    try:
        # stderr to a file: the run writes there too, and a pipe would stay open as long as it runs
        with (
            open(tmp_path / "err", "w") as err,
            subprocess.Popen(long_run(tmp_path), stdout=subprocess.DEVNULL, stderr=err, env=env) as proc,
        ):
            time.sleep(1.0)
            children = Path(f"/proc/{resident}/task/{resident}/children").read_text().split()
            assert len(children) == 1
            os.kill(resident, signal.SIGKILL)
            proc.wait(timeout=30)
        message = (tmp_path / "err").read_text()
        assert proc.returncode == 1 and "the resident process ended during the run" in message, message
        deadline = time.monotonic() + 5  # the run alone would go on for 10 s and more
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{children[0]}").exists() or "Z" in Path(f"/proc/{children[0]}/stat").read_text().split()[2]
    finally:
        end(started.stdout)


def test_requests_no_command_sends_leave_the_resident_process_serving(tmp_path: Path, env: dict[str, str], daemon: None) -> None:
    """A short header, a run without descriptors, an unknown word, a body cut short: each
    connection is closed, the process goes on serving."""
    import socket
    import struct

    path = Path(env["XDG_RUNTIME_DIR"]) / "dask-datalog"
    (sock_file,) = path.glob("*.sock")
    for message in (
        b"ru",
        struct.pack("!4sI", b"run ", 0),
        struct.pack("!4sI", b"what", 3) + b"abc",
        struct.pack("!4sI", b"run ", 99) + b"x",
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_file))
            sock.sendall(message)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            assert sock.recv(100) == b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # descriptors, and a body without a directory
        sock.connect(str(sock_file))
        socket.send_fds(sock, [struct.pack("!4sI", b"run ", 4)], [0, 1, 2])
        sock.sendall(struct.pack("!I", 0))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        assert sock.recv(100) == b""
    done = dask_datalog("run", REACH, "-F", FACTS, "-D", tmp_path / "out", env=env)
    assert done.returncode == 0 and served(env) == 1


def test_another_environment_is_not_served(tmp_path: Path, env: dict[str, str], daemon: None) -> None:
    """OpenMP reads OMP_NUM_THREADS once, when it loads: a process that loaded it otherwise
    must not run the command."""
    other = env | {"OMP_NUM_THREADS": "1" if env.get("OMP_NUM_THREADS") != "1" else "2"}
    done = dask_datalog("run", REACH, "-F", FACTS, "-D", tmp_path / "out", env=other)
    assert done.returncode == 0 and (tmp_path / "out" / "path.csv").exists()
    assert served(env) == 0 and served(other) is None


def test_a_directory_others_can_enter_is_never_used(tmp_path: Path, env: dict[str, str], daemon: None) -> None:
    folder = Path(env["XDG_RUNTIME_DIR"]) / "dask-datalog"
    folder.chmod(0o755)
    try:
        done = dask_datalog("run", REACH, "-F", FACTS, "-D", tmp_path / "out", env=env)
        assert done.returncode == 0 and (tmp_path / "out" / "path.csv").exists()
        started = dask_datalog("daemon", "start", env=env)
        assert started.returncode == 1 and "mode 700" in started.stderr
    finally:
        folder.chmod(0o700)
    assert served(env) == 0


def test_changed_code_ends_the_resident_process_and_the_command_runs_itself(tmp_path: Path, env: dict[str, str]) -> None:
    """A resident process watching a file (as it watches its modules) answers the first
    command after the file changed with "stale", ends, and the command runs in its own process."""
    watched = tmp_path / "module.py"
    watched.write_text("x = 1\n")
    serve = (
        "from dask_datalog.cluster.cli import environment_defaults, resident, resident_server\n"
        "environment_defaults()\n"
        "resident_server.warm_up()\n"
        f"resident_server.serve(resident.socket_path(), 60.0, resident_server.Snapshot([{str(watched)!r}]))\n"
    )
    os.makedirs(Path(env["XDG_RUNTIME_DIR"]) / "dask-datalog", mode=0o700)
    with subprocess.Popen([sys.executable, "-c", serve], env=env) as proc:
        deadline = time.monotonic() + 60
        while served(env) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dask_datalog("run", REACH, "-F", FACTS, "-D", tmp_path / "a", env=env).returncode == 0
        assert served(env) == 1
        time.sleep(0.01)
        watched.write_text("x = 2\n")
        done = dask_datalog("run", REACH, "-F", FACTS, "-D", tmp_path / "b", env=env)
        assert done.returncode == 0 and (tmp_path / "b" / "path.csv").read_bytes() == (tmp_path / "a" / "path.csv").read_bytes()
        assert proc.wait(timeout=30) == 0
    assert served(env) is None


def test_a_second_resident_process_for_the_same_socket_leaves_the_first_serving(env: dict[str, str], daemon: None) -> None:
    """Two `daemon start` at once: the later process finds the socket answered and ends,
    rather than take its file and leave the first listening where no one can reach it."""
    path = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dask_datalog.cluster.cli import environment_defaults, resident\n"
            "environment_defaults(); print(resident.socket_path())",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    second = subprocess.run(
        [sys.executable, "-m", "dask_datalog.cluster.cli.resident_server", path, "60"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert second.returncode == 1 and "already listens" in second.stderr
    assert served(env) == 0


def test_an_idle_resident_process_ends(env: dict[str, str]) -> None:
    started = dask_datalog("daemon", "start", "--idle-timeout", "0.5", env=env)
    try:
        assert started.returncode == 0
        deadline = time.monotonic() + 30
        while served(env) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served(env) is None
        assert dask_datalog("daemon", "stop", env=env).stdout.startswith("no resident process")
    finally:
        end(started.stdout)


def test_a_stopped_resident_process_finishes_its_runs_first(tmp_path: Path, env: dict[str, str], daemon: None) -> None:
    """``daemon stop`` during a run: later commands run themselves at once, the run goes on
    and its command gets its status."""
    with interruptible(long_run(tmp_path), env) as proc:
        time.sleep(1.0)
        assert dask_datalog("daemon", "stop", env=env).stdout.startswith("stopped")
        assert served(env) is None
        done = dask_datalog("run", REACH, "-F", FACTS, "-D", tmp_path / "cold", env=env)
        assert done.returncode == 0 and proc.poll() is None  # served meanwhile: not by it
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err


def test_start_status_stop(env: dict[str, str]) -> None:
    assert served(env) is None
    first = dask_datalog("daemon", "start", env=env)
    try:
        again = dask_datalog("daemon", "start", env=env)
        assert first.returncode == again.returncode == 0 and "already running" in again.stdout
        assert served(env) == 0
        assert dask_datalog("daemon", "stop", env=env).stdout.startswith("stopped")
        assert served(env) is None
        assert dask_datalog("daemon", "start", "--idle-timeout", "0", env=env).returncode == 2
    finally:
        end(first.stdout)


def test_the_key_is_the_environment_libraries_read_when_they_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In one process: the socket's name changes with what a library reads once (OpenMP's,
    glibc's, ours) and not with what a run reads as it goes."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    base = resident.socket_path()
    assert base.startswith(str(tmp_path / "dask-datalog") + os.sep)
    for name in ("OMP_NUM_THREADS", "MALLOC_ARENA_MAX", "PYTHONHASHSEED", "DASK_DATALOG_PROGRAM_CACHE", "LC_ALL"):
        with monkeypatch.context() as m:
            m.setenv(name, "7")
            assert resident.socket_path() != base, name
    with monkeypatch.context() as m:
        m.setenv("HOME", "/elsewhere")
        assert resident.socket_path() == base


def test_a_command_no_process_serves_imports_no_socket(tmp_path: Path) -> None:
    """Every ``run`` asks first; where no socket file is there it must cost nothing (``socket``
    took 2.5 ms to import, a cold run's start is 0.14 s)."""
    probe = (
        "import sys\n"
        "from dask_datalog.cluster.cli import resident\n"
        "assert resident.run_in_resident(['run', 'p.dl']) is None\n"
        "assert 'socket' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DASK_DATALOG_RESIDENT"} | {"XDG_RUNTIME_DIR": str(tmp_path)}
    (tmp_path / "dask-datalog").mkdir(mode=0o700)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_snapshot_sees_a_changed_or_removed_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("1")
    b.write_text("2")
    snapshot = resident_server.Snapshot([str(a), str(b)])
    assert not snapshot.changed()
    b.write_text("22")
    assert snapshot.changed()
    snapshot = resident_server.Snapshot([str(a), str(b)])
    a.unlink()
    assert snapshot.changed()


def test_only_a_private_directory_of_this_user_is_trusted(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    assert resident.private(str(mine))
    mine.chmod(0o750)
    assert not resident.private(str(mine))
    link = tmp_path / "link"
    link.symlink_to(mine)
    mine.chmod(0o700)
    assert not resident.private(str(link))
    assert not resident.private(str(tmp_path / "none"))


def test_its_runs_leave_the_compiled_methods_alone_once_saved(tmp_path: Path, env: dict[str, str]) -> None:
    """With a cold method cache (engine/compile_cache.py) the resident process saves what its
    imports compiled before it serves; the first run adds what it imports later (a program the
    program cache lacks: the front end); every later one, whose child compiles that again,
    finds it in the file and writes nothing."""
    env = env | {"DASK_DATALOG_PROGRAM_CACHE": str(tmp_path / "cache")}
    started = dask_datalog("daemon", "start", env=env)
    try:
        assert started.returncode == 0, started.stderr
        (methods,) = (tmp_path / "cache").glob("dataclass-methods.*.marshal")
        saved = methods.stat().st_size
        # The run's imports, some 500 texts, saved before it served (`daemon start` alone: ~25).
        assert len(compile_cache._read(methods)) > 300
        stamp = None
        for k in range(3):
            program = tmp_path / f"reach{k}.dl"  # a program loaded afresh each time
            program.write_text(f"// run {k}\n{REACH.read_text()}")
            run = dask_datalog("run", program, "-F", FACTS, "-D", tmp_path / f"out{k}", env=env)
            assert run.returncode == 0, run.stderr
            if k == 0:
                stamp = methods.stat().st_mtime_ns
        assert served(env) == 3
        assert methods.stat().st_mtime_ns == stamp and methods.stat().st_size > saved
    finally:
        dask_datalog("daemon", "stop", env=env)
        end(started.stdout)
