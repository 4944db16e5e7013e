"""The command line: where a run happens (embedded cluster, existing cluster, this process),
what it writes, and how it fails."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from dask_datalog.cluster.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
REACH = ROOT / "examples" / "reach.dl"
FACTS = ROOT / "examples" / "facts" / "reach"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("reference")
    assert main(["run", str(REACH), "-F", str(FACTS), "-D", str(out), "--no-cluster"]) == 0
    return (out / "path.csv").read_bytes()


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as c:
        yield c


def test_embedded_cluster_with_workers(tmp_path: Path, reference: bytes) -> None:
    stats = tmp_path / "stats.json"
    code = main(
        [
            "run",
            str(REACH),
            "-F",
            str(FACTS),
            "-D",
            str(tmp_path),
            "--workers",
            "2",
            "--stats",
            str(stats),
            "--replicate-below",
            "0",
        ]
    )
    assert code == 0
    assert (tmp_path / "path.csv").read_bytes() == reference
    data = json.loads(stats.read_text())
    assert data["workers"] == 2
    assert len(data["per_worker"]) == 2
    iteration = data["per_worker"][0]["strata"][-1]["iterations"][-1]
    assert {"join", "dedup", "merge", "exchange", "delta"} <= set(iteration)
    assert {"bytes_sent", "bytes_received", "send_s", "wait_s"} <= set(iteration["exchange"])
    assert not data["placement"]["edge"]["replicated"], "--replicate-below 0 partitions even small inputs"
    assert data["bytes_exchanged"] > 0


def test_scheduler_address_and_file(tmp_path: Path, cluster: LocalCluster, reference: bytes) -> None:
    address = cluster.scheduler_address
    assert main(["run", str(REACH), "-F", str(FACTS), "-D", str(tmp_path / "a"), "--scheduler", address]) == 0
    assert (tmp_path / "a" / "path.csv").read_bytes() == reference
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": address}))
    assert main(["run", str(REACH), "-F", str(FACTS), "-D", str(tmp_path / "b"), "--scheduler-file", str(scheduler_file)]) == 0
    assert (tmp_path / "b" / "path.csv").read_bytes() == reference
    with Client(address, set_as_default=False) as client:  # the job left nothing behind
        assert not any(client.run(lambda dask_worker: len(dask_worker.plugins["dask-datalog"].runs)).values())


def test_parquet_output(tmp_path: Path, cluster: LocalCluster, reference: bytes) -> None:
    code = main(
        [
            "run",
            str(REACH),
            "-F",
            str(FACTS),
            "-D",
            str(tmp_path),
            "--format",
            "parquet",
            "--scheduler",
            cluster.scheduler_address,
        ]
    )
    assert code == 0
    table = pq.read_table(tmp_path / "path")
    lines = [f"{x}\t{y}\n" for x, y in zip(table.column("x").to_pylist(), table.column("y").to_pylist())]
    assert "".join(lines).encode() == reference
    assert len(list((tmp_path / "path").glob("part-*.parquet"))) == 2


def test_stdout_output_with_a_cluster(capsys: pytest.CaptureFixture[str], cluster: LocalCluster, reference: bytes) -> None:
    assert main(["run", str(REACH), "-F", str(FACTS), "-D", "-", "--scheduler", cluster.scheduler_address]) == 0
    out = capsys.readouterr().out
    assert out == f"---------------\npath\nx\ty\n===============\n{reference.decode()}===============\npath\t16\n"


STDIO = b""".decl A(x:number, y:number)
A(1,2).
.output A(IO=stdout,headers=true)
.decl C(x:number)
.input C(IO=stdin)
.output C(IO=stdoutprintsize)
.output C(compress=true)
.printsize A
"""


@pytest.mark.parametrize("where", [["--no-cluster"], ["--workers", "2"]], ids=["no-cluster", "embedded-cluster"])
def test_stdin_input_and_stdout_outputs_beside_an_output_directory(tmp_path: Path, where: list[str]) -> None:
    """``IO=stdin`` reads the command's standard input (the workers get it from the command);
    ``IO=stdout`` prints a table (a header only with headers=true, as semantic-store5), and
    ``IO=stdoutprintsize`` a size, while -D still gets the files: stdout and the file byte for
    byte what Soufflé 2.5's binary gives."""
    program = tmp_path / "p.dl"
    program.write_bytes(STDIO)
    run = subprocess.run(
        cli_command(program, "-D", tmp_path / "out", "--quiet", *where), input=b"3\n4\n", capture_output=True, timeout=240
    )
    assert (run.returncode, run.stderr) == (0, b"")
    assert run.stdout == b"---------------\nA\nx\ty\n===============\n1\t2\n===============\nA\t1\nC\t2\n"
    assert gzip.decompress((tmp_path / "out" / "C.csv.gz").read_bytes()) == b"3\n4\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["C.csv.gz"]


def test_stdout_with_dash_d_prints_every_output_with_its_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-D - makes every .output IO=stdout with headers=true (Soufflé's IODefaults): the header
    joins the names with the delimiter given (a tab under rfc4180's comma), the rows keep
    their quoting; IO=stdoutprintsize outputs turn into tables too."""
    program = tmp_path / "p.dl"
    program.write_text(
        '.decl S(x:symbol, y:number)\nS("a\\"b", 1).\n.output S(rfc4180=true)\n.output S(delimiter=";")\n'
        ".output S(IO=stdoutprintsize)\n"
    )
    assert main(["run", str(program), "-D", "-", "--no-cluster"]) == 0
    table = "---------------\nS\n{header}\n===============\n{row}\n===============\n"
    assert capsys.readouterr().out == (
        table.format(header="x\ty", row='"a\\""b",1')
        + table.format(header="x;y", row='a"b;1')
        + table.format(header="x\ty", row='a"b\t1')
    )


def test_bad_fact_file_is_one_line_on_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cluster: LocalCluster
) -> None:
    (tmp_path / "edge.facts").write_text("1\t2\n3\tx\n")
    assert main(["run", str(REACH), "-F", str(tmp_path), "--no-cluster"]) == 1
    single = capsys.readouterr().err
    assert main(["run", str(REACH), "-F", str(tmp_path), "--scheduler", cluster.scheduler_address]) == 1
    err = capsys.readouterr().err
    assert err == single
    assert err.startswith(f"{tmp_path / 'edge.facts'}:2:") and err.count("\n") == 1


def test_bad_program_never_starts_a_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program = tmp_path / "bad.dl"
    program.write_text(".decl e(x:number)\ne(x) :- f(x).\n")
    assert main(["run", str(program)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{program}:2:9: error:")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2", "--no-cluster"], "--workers sizes the embedded cluster"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--format", "parquet", "-D", "-"], "--format parquet needs an output directory"),
        (["--scheduler", "tcp://x:1", "--no-cluster"], "not allowed with argument"),
    ],
)
def test_argument_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["run", str(REACH), *args])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_scheduler_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(REACH), "-F", str(FACTS), "--scheduler-file", str(tmp_path / "none.json")]) == 1
    assert "scheduler file" in capsys.readouterr().err


# ---- every user error, on both paths, as the user sees it: a process's stderr and exit code

FIB = b""".decl Fib(n: number, x: number)
Fib(0, 0).
Fib(1, 1).
Fib(n, x + y) :- Fib(n - 1, x), Fib(n - 2, y), n <= 25.
.output Fib
"""


def _error_cases(tmp_path: Path) -> list[tuple[str, list[str], str | None]]:
    """(case, arguments of ``run``, expected stderr prefix; None: the run must succeed)."""
    facts, no_facts, bad_facts = tmp_path / "facts", tmp_path / "no_facts", tmp_path / "bad_facts"
    for d in (facts, no_facts, bad_facts):
        d.mkdir()
    (facts / "edge.facts").write_bytes((FACTS / "edge.facts").read_bytes())
    (bad_facts / "edge.facts").write_text("1\t2\n3\tx\n")
    (bad_facts / "q.facts").write_text('a,"b\nc\n')
    (bad_facts / "z.facts").write_bytes(gzip.compress(b"1\t2\n")[:-6])
    files = {
        "reach.dl": REACH.read_bytes(),
        "bom.dl": b"\xef\xbb\xbf" + REACH.read_bytes(),
        "fib.dl": FIB,
        "latin1.dl": b".decl e(x: number)\n// caf\xe9\ne(1).\n",
        "syntax.dl": b".decl e(x: number)\ne(1) :- \n",
        "quote.dl": b'.decl q(x: symbol, y: symbol)\n.input q(filename="q.facts", rfc4180=true)\n',
        "gzip.dl": b'.decl e(x: number, y: number)\n.input e(filename="z.facts")\n',
        "limit.dl": b".decl e(x: number)\n.limitsize e(n=-1)\n",
        "headers.dl": b".decl e(x: number)\n.input e(headers=1)\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    prog = {name: str(tmp_path / name) for name in files}
    return [
        ("bom-program", [prog["bom.dl"], "-F", str(facts)], None),
        ("ungrounded", [prog["fib.dl"]], f"{prog['fib.dl']}:4:5: error: unsafe rule: variable n in the head is not bound"),
        ("not-utf8", [prog["latin1.dl"]], f"{prog['latin1.dl']}:2:7: error: not UTF-8 text"),
        ("syntax", [prog["syntax.dl"]], f"{prog['syntax.dl']}:2:9: error: syntax error"),  # the last line with text, as Soufflé
        ("missing-program", [str(tmp_path / "none.dl")], f"{tmp_path / 'none.dl'}: error: cannot read program"),
        (
            "missing-fact-file",
            [prog["reach.dl"], "-F", str(no_facts)],
            f"{prog['reach.dl']}:4:8: error: fact file {no_facts / 'edge.facts'}",
        ),
        (
            "bad-fact-line",
            [prog["reach.dl"], "-F", str(bad_facts)],
            f"{bad_facts / 'edge.facts'}:2:3: error: expected an integer",
        ),
        (
            "open-quote",
            [prog["quote.dl"], "-F", str(bad_facts)],
            f"{bad_facts / 'q.facts'}:1:3: error: the quoted field is never closed",
        ),
        ("cut-gzip", [prog["gzip.dl"], "-F", str(bad_facts)], f"{bad_facts / 'z.facts'}:1:1: error: the gzip data ends early"),
        ("limitsize", [prog["limit.dl"]], f"{prog['limit.dl']}:2:16: error: syntax error"),
        ("headers", [prog["headers.dl"]], f"{prog['headers.dl']}:2:10: error: headers must be true or false, not '1'"),
    ]


def cli_command(*args: object) -> list[str]:
    """``dask-datalog run ARGS`` as a command line for a subprocess."""
    return [sys.executable, "-m", "dask_datalog.cluster.cli", "run", *map(str, args)]


@pytest.mark.parametrize("after_s", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_ctrl_c_at_any_moment_of_the_start_ends_without_a_traceback(tmp_path: Path, after_s: float) -> None:
    """A SIGINT while the command starts (its imports, the program's loading, the run) ends it
    with status 130, or by the signal before Python's handler exists, and never with a
    traceback through the command: its imports ran before any command's own Ctrl-C handling,
    and an import cut short printed one (NumPy's as an ImportError). Before ``command`` runs
    (the interpreter's start, the package's own import) a Ctrl-C is Python's to report."""
    import signal

    (tmp_path / "edge.facts").write_text("".join(f"{i}\t{i + 1}\n" for i in range(2000)))
    cmd = cli_command(Path(__file__).parents[1] / "examples" / "reach.dl", "-F", tmp_path, "-D", tmp_path / "out", "--quiet")
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        time.sleep(after_s)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    if "Traceback" in err:  # Python's own: the interpreter's start or the package's import, before `command` runs
        assert not re.search(r'cli/(__init__|main)\.py", line \d+, in (command|main)', err), err
    else:
        assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, err)


def summary(mode: str, workers: int | None = None) -> str:
    """The line a successful run ends with on stderr."""
    count = r"\d+ workers?" if workers is None else f"{workers} worker{'s' if workers != 1 else ''}"
    return rf"done: {mode} \([^)]*\), {count}, \d+\.\d\d s, [\d,]+ tuples derived, peak memory [\d,]+ MiB\n"


@pytest.mark.parametrize(
    ("flags", "mode", "why", "workers"),
    [
        ([], "in process", "one process is fastest on one machine", 1),
        (["--cluster"], "embedded cluster", "--cluster", None),
        (["--workers", "2"], "embedded cluster", "--workers 2", 2),
        (["--no-cluster"], "in process", "--no-cluster", 1),
    ],
)
def test_the_run_goes_where_it_is_fastest_and_says_where(
    tmp_path: Path, reference: bytes, flags: list[str], mode: str, why: str, workers: int | None
) -> None:
    """Without a GPU one process is fastest: the default runs in process; the summary line and
    the statistics say where the run went and why."""
    stats = tmp_path / "stats.json"
    command = cli_command(str(REACH), "-F", str(FACTS), "-D", str(tmp_path), "--stats", str(stats), *flags)
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(summary(mode, workers), run.stderr), run.stderr
    assert f"({why})" in run.stderr
    assert f" {len(reference.splitlines()):,} tuples derived," in run.stderr  # path's, not edge's too
    assert json.loads(stats.read_text())["mode"] == {"mode": mode, "why": why}
    assert (tmp_path / "path.csv").read_bytes() == reference
    quiet = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=120)
    assert (quiet.returncode, quiet.stderr) == (0, "")


@pytest.mark.parametrize("where", [["--no-cluster"], ["--workers", "2"]], ids=["no-cluster", "embedded-cluster"])
def test_user_errors_are_one_line_on_stderr(tmp_path: Path, where: list[str], reference: bytes) -> None:
    """Each case in its own ``dask-datalog`` process (all at once: the cluster path starts a
    cluster per process): one ``file[:line:col]: error: ...`` line, exit 1, no traceback."""
    cases = _error_cases(tmp_path)
    runs = []
    for case, args, _ in cases:
        out = tmp_path / "out" / case
        out.mkdir(parents=True)
        command = cli_command(*args, "-D", str(out), *where)
        runs.append(subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for (case, _, expected), run in zip(cases, runs):
        _, err = run.communicate(timeout=240)
        if expected is None:
            mode = "in process" if where == ["--no-cluster"] else "embedded cluster"
            assert run.returncode == 0 and re.fullmatch(summary(mode), err), (case, err)
            assert (tmp_path / "out" / case / "path.csv").read_bytes() == reference, case
            continue
        assert "Traceback" not in err, (case, err)
        assert run.returncode == 1, (case, err)
        assert err.startswith(expected) and err.count("\n") == 1 and err.endswith("\n"), (case, err)
        assert re.fullmatch(r"[^\n]+?(:\d+:\d+)?: error: [^\n]+\n", err), (case, err)


def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    """`-D - | head`: the pipe closes under the CLI; no error line, exit 141 as for SIGPIPE."""
    big = ROOT / "tests" / "data" / "cal.cedge"
    command = cli_command(str(REACH), "-F", str(big), "-D", "-", "--no-cluster")
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout is not None and run.stdout.read(64)
    run.stdout.close()
    _, err = run.communicate(timeout=120)
    assert (run.returncode, err) == (141, b"")


def on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    """``dask-datalog run ARGS`` with stderr on a pseudo-terminal (where the progress line shows)
    and stdout a pipe: its exit status, what the terminal showed (escape codes removed), its
    stdout."""
    import os
    import pty
    import threading

    primary, secondary = pty.openpty()
    command = cli_command(*args)
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=secondary, env={**os.environ, "COLUMNS": "200", "TERM": "xterm"}
        ) as run:  # its end closes the stdout pipe
            os.close(secondary)
            stdout: list[bytes] = []
            reader = threading.Thread(target=lambda: stdout.append(run.stdout.read()))  # type: ignore[union-attr]
            reader.start()
            screen = b""
            while True:
                try:
                    chunk = os.read(primary, 1 << 16)
                except OSError:  # the child closed its end
                    break
                if not chunk:
                    break
                screen += chunk
            reader.join(120)
            status = run.wait(timeout=120)
    finally:
        os.close(primary)
    return status, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace")), stdout[0].decode()


def terminals_and_pipes() -> set[tuple[str, str]]:
    """This process's open pseudo-terminals and pipes (descriptor, what it refers to): what
    ``on_a_terminal`` opens. Not every descriptor: other threads of a test process (a module's
    Dask clusters under xdist) open and close sockets and event loops meanwhile."""
    import os

    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith(("/dev/pts/", "/dev/ptmx", "pipe:")):
            found.add((fd, target))
    return found


def test_progress_line_on_a_terminal_follows_every_phase(tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here) the line says where the run goes, follows the
    iterations, then the bytes each output has written; the run ends with the summary. The
    helper leaves no descriptor open (its terminal, its pipe)."""
    before = terminals_and_pipes()
    status, text, _ = on_a_terminal([str(REACH), "-F", str(ROOT / "tests" / "data" / "cal.cedge"), "-D", str(tmp_path)])
    assert terminals_and_pipes() <= before
    assert status == 0
    size = (tmp_path / "path.csv").stat().st_size
    assert "in process (one process is fastest on one machine)" in text
    assert re.search(r"stratum 1/1  iteration \d+  delta [\d,]+", text), text
    assert f"writing path: {size / 2**20:.1f} MiB" in text, text
    assert re.search(summary("in process", 1).replace(r"\n", r"\r?\n"), text), text


@pytest.mark.parametrize("where", [["--no-cluster"], ["--workers", "2"]])
def test_outputs_on_stdout_stay_there_while_the_progress_line_is_on_a_terminal(tmp_path: Path, where: list[str]) -> None:
    """-D - with stderr on a terminal (the progress line shown) and stdout redirected: the
    relations and .printsize lines reach stdout, not the terminal."""
    status, screen, stdout = on_a_terminal([str(REACH), "-F", str(FACTS), "-D", "-", *where])
    assert status == 0
    assert stdout.startswith("---------------\npath\nx\ty\n===============\n") and stdout.count("\n") > 4, stdout
    assert "===============" not in screen, screen


def test_a_cluster_without_workers_is_one_line(tmp_path: Path) -> None:
    """--scheduler before any worker joined: one line and exit 1, not a traceback."""
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=":0") as cluster:
        command = cli_command(str(REACH), "-F", str(FACTS), "-D", str(tmp_path), "--scheduler", cluster.scheduler_address)
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr == "error: the Dask cluster has no workers (yet): start some, or wait for them to join\n"


# What only a cluster, the service, the experiments, a terminal's progress line, Parquet or
# DataFrames need; cluster/cli/main.py and the modules it imports load them where they are used.
NOT_IN_PROCESS = (
    "dask",
    "distributed",
    "fastapi",
    "uvicorn",
    "starlette",
    "httpx",
    "psutil",
    "rich",
    "pyarrow",
    "pandas",
    "matplotlib",
    "pcpp",
)


def run_probe(probe: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``probe`` run by a fresh interpreter (what it imports is its own), which must succeed."""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("given", [{}, {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_NUM_THREADS": "4"}])
def test_the_command_picks_thread_policies_the_user_did_not(given: dict[str, str]) -> None:
    """``dask-datalog`` runs with one OpenBLAS thread and sleeping OpenMP threads unless the
    environment says otherwise (cluster/cli/__init__.py): set before NumPy and the kernels
    load, since both read them once."""
    probe = (
        "import os\n"
        "import dask_datalog.cluster.cli.main as main\n"
        "main.command = lambda: print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_NUM_THREADS'])\n"
        "from dask_datalog.cluster.cli import command\n"
        "command()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")} | given
    done = run_probe(probe, env)
    assert done.stdout.split() == ([given["OMP_WAIT_POLICY"], given["OPENBLAS_NUM_THREADS"]] if given else ["PASSIVE", "1"])


def test_a_run_in_process_imports_only_what_it_uses(tmp_path: Path) -> None:
    """The command's default run (in this process), --no-cluster and the API without a client
    never import Dask, the service's web stack or the other optional dependencies: a run in this
    process pays for none of them at start-up, and works where they are broken."""
    csda = tmp_path / "csda.dl"
    csda.write_text(
        ".decl nullEdge(x:number, y:number)\n.input nullEdge\n.decl arc(x:number, y:number)\n.input arc\n"
        ".decl null(x:number, y:number)\n.output null\n"
        "null(x, y) :- nullEdge(x, y).\nnull(x, y) :- null(x, w), arc(w, y).\n"
    )
    (tmp_path / "nullEdge.facts").write_text("1\t2\n")
    (tmp_path / "arc.facts").write_text("2\t3\n3\t4\n")
    probe = (
        "import sys\n"
        "from dask_datalog.cluster.cli.main import main\n"
        f"assert main(['run', {str(REACH)!r}, '-F', {str(FACTS)!r}, '-D', {str(tmp_path / 'a')!r}]) == 0\n"
        f"assert main(['run', {str(csda)!r}, '-F', {str(tmp_path)!r}, '-D', {str(tmp_path / 'b')!r}, '--no-cluster']) == 0\n"
        "from dask_datalog.cluster import Program\n"
        f"assert Program.from_file({str(REACH)!r}).run(fact_dir={str(FACTS)!r}).tuples('path')\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {NOT_IN_PROCESS!r})\n"
        "assert not loaded, loaded\n"
    )
    assert "done: in process" in run_probe(probe).stderr
    assert (tmp_path / "b" / "null.csv").read_text() == "1\t2\n1\t3\n1\t4\n"


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_a_plain_run_skips_what_only_some_runs_need(tmp_path: Path, cache: str) -> None:
    """A run without --profile, --stats, checkpoints, JSON directives or user functors imports
    neither the profile (engine/execution/profile.py), the JSON formats and ``json``, nor
    engine/user_functors.py: start-up is most of a small run, so what only some runs need is
    imported where they need it. Cold: the program is parsed and checked; warm: it comes from
    the program cache."""
    env = dict(os.environ, DASK_DATALOG_PROGRAM_CACHE=str(tmp_path / "cache"))
    run_args = f"['run', {str(REACH)!r}, '-F', {str(FACTS)!r}, '-D', {str(tmp_path / 'out')!r}, '--quiet']"
    lazy = (
        "dask_datalog.engine.execution.profile",
        "dask_datalog.engine.formats.json_text",
        "json",
        "dask_datalog.engine.user_functors",
    )
    probe = (
        "import sys\n"
        "from dask_datalog.cluster.cli.main import main\n"
        f"assert main({run_args}) == 0\n"
        f"loaded = sorted(set({lazy!r}) & set(sys.modules))\n"
        "assert not loaded, loaded\n"
        f"assert main({run_args[:-1]}, '--profile', {str(tmp_path / 'p.json')!r}]) == 0\n"
        f"assert set({lazy[:1]!r}) <= set(sys.modules)\n"
    )
    if cache == "warm":
        run_probe(probe, env)
    run_probe(probe, env)
    assert (tmp_path / "out" / "path.csv").read_text()
    assert "rules" in json.loads((tmp_path / "p.json").read_text())


def test_a_run_with_symbols_skips_pyarrow_compute(tmp_path: Path) -> None:
    """A run that reads symbols, makes some (cat, substr, to_string), matches, searches and
    writes them calls pyarrow's kernels by name (engine/arrow_compute.py): importing
    pyarrow.compute cost a small run 40-60 ms, and `match` imported pandas (0.3-0.5 s). Its
    outputs are the texts Soufflé writes."""
    program = tmp_path / "names.dl"
    program.write_text(
        ".decl person(name:symbol, age:number)\n.input person\n"
        ".decl tag(t:symbol)\n.output tag\n"
        'tag(cat(n, "-", to_string(a))) :- person(n, a), match("a.*", n).\n'
        'tag(substr(n, 0, 2)) :- person(n, _), !contains("o", n).\n'
    )
    (tmp_path / "person.facts").write_text("ann\t30\nbob\t4\namy\t7\n")
    probe = (
        "import sys\n"
        "from dask_datalog.cluster.cli.main import main\n"
        f"assert main(['run', {str(program)!r}, '-F', {str(tmp_path)!r}, '-D', {str(tmp_path)!r}]) == 0\n"
        "assert not {'pyarrow.compute', 'pandas'} & set(sys.modules), sorted(sys.modules)\n"
    )
    run_probe(probe)
    assert (tmp_path / "tag.csv").read_text() == "am\namy-7\nan\nann-30\n"


def test_a_run_with_symbols_and_no_regular_expression_skips_pyarrow(tmp_path: Path) -> None:
    """A run that reads, interns, compares, makes (cat, substr, to_string), searches and
    writes symbols never imports pyarrow (45-50 ms of a 0.2-0.7 s run): the symbol table's
    texts are NumPy arrays (engine/texts.py); only ``match``, Parquet and pyarrow's CSV paths
    (floats, quoted fields) need it. Its outputs are the texts Soufflé writes."""
    program = tmp_path / "names.dl"
    program.write_text(
        ".decl person(name:symbol, age:number)\n.input person\n"
        ".decl tag(t:symbol, n:number)\n.output tag\n"
        ".decl before(a:symbol, b:symbol)\n.output before\n"
        'tag(cat(n, "-", to_string(a)), strlen(n)) :- person(n, a), a > 5.\n'
        'tag(substr(n, 0, 2), to_number("12")) :- person(n, _), !contains("o", n).\n'
        "before(a, b) :- person(a, _), person(b, _), a < b.\n"
    )
    (tmp_path / "person.facts").write_text("ann\t30\nbob\t4\namy\t7\né\t1\n")
    probe = (
        "import sys\n"
        "from dask_datalog.cluster.cli.main import main\n"
        f"assert main(['run', {str(program)!r}, '-F', {str(tmp_path)!r}, '-D', {str(tmp_path)!r}]) == 0\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'pandas')], sorted(sys.modules)\n"
    )
    run_probe(probe)
    assert (tmp_path / "tag.csv").read_text() == "am\t12\namy-7\t3\nan\t12\nann-30\t3\né\t12\n"
    pairs = sorted((a, b) for a in ("ann", "bob", "amy", "é") for b in ("ann", "bob", "amy", "é") if a.encode() < b.encode())
    assert (tmp_path / "before.csv").read_text() == "".join(f"{a}\t{b}\n" for a, b in pairs)


def test_the_parser_is_built_without_the_engine() -> None:
    """``--help``, every subcommand's parser and ``job`` start without the engine, lark or
    Dask: building the parser imports the flags' modules only (cluster/cli/run_arguments.py)."""
    probe = (
        "import sys\n"
        "from dask_datalog.cluster.cli.main import build_parser\n"
        "parser = build_parser()\n"
        "assert parser.parse_args(['job', 'status', 'x']).verb == 'status'\n"
        "heavy = ('lark', 'dask_datalog.engine.frontend', 'dask_datalog.cluster.api', 'dask_datalog.spmd.run')\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith(heavy) or m.split('.')[0] in {NOT_IN_PROCESS!r})\n"
        "assert not loaded, loaded\n"
    )
    run_probe(probe)
    helped = subprocess.run([sys.executable, "-m", "dask_datalog.cluster.cli", "run", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())  # as argparse wraps it at any width
    assert "--replicate-below BYTES static relations smaller than this" in text and "(default: 64 MiB)" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "p.dl"],
        ["run", "p.dl", "-F", "f", "-D", "-", "--workers", "3", "--stats", "s.json"],
        ["run", "p.dl", "--no-cluster", "--backend", "numpy", "--retries", "0", "--format", "parquet"],
    ],
)
def test_a_run_command_line_parses_alike_with_the_run_parser_alone(argv: list[str]) -> None:
    """``main`` builds only the ``run`` subcommand for a ``run`` command line (the others' parsers
    cost ~10 ms a run): the same arguments, the same usage in errors, as the whole parser."""
    from dask_datalog.cluster.cli.main import SUBCOMMANDS, build_parser
    from dask_datalog.cluster.experiments import cli as experiment_cli
    from dask_datalog.cluster.service import cli as service_cli

    whole, alone = build_parser(), build_parser(only_run=True)
    assert alone.parse_args(argv) == whole.parse_args(argv)
    assert alone.format_usage() == whole.format_usage()
    assert set(SUBCOMMANDS) == {"run", "daemon", *experiment_cli.COMMANDS, *service_cli.COMMANDS}


@pytest.mark.parametrize("where", [["--no-cluster"], ["--workers", "2"]])
def test_the_summary_time_is_the_commands_wall_time(tmp_path: Path, where: list[str]) -> None:
    """The summary's time is the whole command's, start-up and the cluster's shutdown included:
    never more than the wall time measured outside (psutil's process start time made it up to a
    second more), and short of it only by the interpreter's exit after the line (measured: a
    few ms; the bound here leaves room for a loaded machine). The start is known to a clock
    tick (/proc/self/stat counts whole ticks, so it reads up to one tick early) and the line
    rounds to 10 ms, so the summary may pass the outside time by a tick plus 5 ms."""
    command = cli_command(str(REACH), "-F", str(FACTS), "-D", str(tmp_path), *where)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    outside = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    summary_s = float(re.search(r", (\d+\.\d\d) s, ", done.stderr)[1])
    resolution = 1 / os.sysconf("SC_CLK_TCK") + 0.005
    assert summary_s <= outside + resolution, (summary_s, outside)
    assert outside - summary_s < 0.3, (summary_s, outside)


def test_the_programs_fact_dir_pragma_is_the_default_and_f_wins(tmp_path: Path) -> None:
    """As in Soufflé: ``.pragma "fact-dir"`` names the facts when -F is not given."""
    (tmp_path / "pragma").mkdir()
    (tmp_path / "given").mkdir()
    (tmp_path / "pragma" / "a.facts").write_text("1\n")
    (tmp_path / "given" / "a.facts").write_text("2\n")
    program = tmp_path / "p.dl"
    program.write_text(f'.pragma "fact-dir" "{tmp_path / "pragma"}"\n.decl a(x: number)\n.input a\n.output a\n')
    for extra, want in (([], "1\n"), (["-F", str(tmp_path / "given")], "2\n")):
        out = tmp_path / f"out{len(extra)}"
        assert main(["run", str(program), "-D", str(out), "--no-cluster", "--quiet", *extra]) == 0
        assert (out / "a.csv").read_text() == want


def test_the_collector_is_settled_only_in_the_process_the_command_started() -> None:
    """``command`` holds the cyclic collector off while it imports and loads; ``settle_collector``
    then freezes that heap and runs the collector every RUN_THRESHOLD young objects. A caller of
    ``main`` (these tests, an embedding program) keeps its own collector as it is."""
    import gc

    from dask_datalog.cluster.cli.process import RUN_THRESHOLD, settle_collector

    before = gc.get_threshold()
    settle_collector()  # enabled here: nothing changes
    assert gc.isenabled() and gc.get_threshold() == before
    gc.disable()
    try:
        settle_collector()
        assert gc.isenabled() and gc.get_threshold()[0] == RUN_THRESHOLD and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        gc.enable()
