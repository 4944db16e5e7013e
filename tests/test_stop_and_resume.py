"""Stopping a job from outside, as users and batch systems do: SIGTERM (a walltime warning,
``scancel``) checkpoints at the next iteration boundary and exits 75 with the command that
continues it; ``--resume`` continues on any number of workers, or in process, to the same
outputs, and refuses a changed input or program; ``--timeout`` and Ctrl-C stop every worker
within about a second; a job stopped on a cluster leaves nothing behind and does not disturb a
job running beside it. Through the real command (embedded cluster) and the API on a real
cluster; every test under a hard timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from distributed import Client, LocalCluster
from test_worker_loss import REACH, assert_no_job_left, chain, cli, hard_timeout, outputs, start_scheduler

from dask_datalog.cluster import Program
from dask_datalog.cluster.cli.main import build_parser
from dask_datalog.cluster.cli.run_command import IN_PROCESS, CheckpointDirectory
from dask_datalog.engine.errors import RunTimeout
from dask_datalog.spmd.options import RunOptions

COMMAND = [sys.executable, "-m", "dask_datalog.cluster.cli", "run"]


@pytest.fixture(scope="module")
def long_chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """REACH on a 2,500-edge chain (2,500 iterations, seconds on two workers) and its answer."""
    base = tmp_path_factory.mktemp("chain")
    facts = base / "facts"
    facts.mkdir()
    np.savetxt(facts / "edge.facts", chain(2500), fmt="%d", delimiter="\t")
    done = cli([REACH, "-F", facts, "-D", base / "want", "--no-cluster"])
    assert done.returncode == 0, done.stderr
    return {"facts": facts, "want": base / "want"}


def start(args: list[object]) -> subprocess.Popen[str]:
    return subprocess.Popen([*COMMAND, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.communicate()
        pytest.fail(f"the command did not stop within {timeout} s")


def wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["embedded", "in-process"])
def test_sigterm_checkpoints_and_resume_continues_to_the_same_outputs(
    long_chain: dict[str, Path], where: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    mode = ["--workers", "2"] if where == "embedded" else ["--no-cluster"]
    process = start(
        [REACH, "-F", long_chain["facts"], "-D", tmp_path / "out", *mode, "--checkpoint", checkpoint, "--checkpoint-every", "0.2"]
    )
    wait_for(checkpoint / "latest")  # evaluating, with a checkpoint written
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    assert process.returncode == 75, err
    first, second = err.strip().splitlines()
    assert re.fullmatch(
        rf"stopped by SIGTERM in stratum 0 after iteration \d+; the checkpoint is in {re.escape(str(checkpoint))}", first
    ), err
    assert second.startswith("continue with: dask-datalog run ") and second.endswith(f"--resume {checkpoint}")
    assert not (tmp_path / "out" / "path.csv").exists()
    # The printed command, on another number of workers, then in process from the same checkpoint.
    words = shlex.split(second.removeprefix("continue with: "))[2:]
    for other in (["--workers", "3"], ["--no-cluster"]):
        resumed = [w for w in words if w not in ("--workers", "2", "--no-cluster")] + other
        done = subprocess.run(
            [*COMMAND, *resumed, "--stats", str(tmp_path / "stats.json")], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert outputs(tmp_path / "out") == outputs(long_chain["want"])
        (tmp_path / "out" / "path.csv").unlink()


def test_sigterm_without_a_checkpoint_directory_keeps_a_temporary_one(long_chain: dict[str, Path], tmp_path: Path) -> None:
    """The embedded cluster's own checkpoint directory outlives a SIGTERM: the message names it."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = subprocess.Popen(
        [
            *COMMAND,
            str(REACH),
            "-F",
            str(long_chain["facts"]),
            "-D",
            str(tmp_path / "out"),
            "--workers",
            "2",
            "--checkpoint-every",
            "0.2",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temporary)},
    )
    deadline = time.monotonic() + 60
    while not list(temporary.glob("dask-datalog-checkpoint-*/latest")):
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    assert process.returncode == 75, err
    directory = re.search(r"the checkpoint is in (\S+)", err).group(1)  # type: ignore[union-attr]
    assert Path(directory).parent == temporary
    try:
        done = subprocess.run(
            [
                *COMMAND,
                str(REACH),
                "-F",
                str(long_chain["facts"]),
                "-D",
                str(tmp_path / "out"),
                "--no-cluster",
                "--resume",
                directory,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert outputs(tmp_path / "out") == outputs(long_chain["want"])
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("where", ["embedded", "in-process"])
def test_the_time_limits_sigterm_to_every_process_still_leaves_a_run_that_resumes(
    long_chain: dict[str, Path], where: str, tmp_path: Path
) -> None:
    """A batch system warns the command (SIGTERM), then at its time limit signals every process
    of the job, the embedded workers too, while the run checkpoints: whether it stops at its
    checkpoint or at once, it exits 75 with the command that resumes (never 0 after computing
    on without the request, never 143), and that command gives the same outputs."""
    checkpoint = tmp_path / "ckpt"
    mode = ["--workers", "2"] if where == "embedded" else ["--no-cluster"]
    args = [
        REACH,
        "-F",
        long_chain["facts"],
        "-D",
        tmp_path / "out",
        *mode,
        "--checkpoint",
        checkpoint,
        "--checkpoint-every",
        "0",
    ]
    process = subprocess.Popen([*COMMAND, *map(str, args)], stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(checkpoint / "latest")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # it may be gone already, stopped at its checkpoint
        os.killpg(process.pid, signal.SIGTERM)
    _, err = finish(process)
    assert process.returncode == 75, err
    first, second = err.strip().splitlines()[-2:]  # the embedded scheduler may log its lost workers first
    at = r"in stratum 0 after iteration \d+"
    stopped = (
        rf"stopped by SIGTERM( {at}; the checkpoint|: .+; the latest checkpoint \({at}\)) is in {re.escape(str(checkpoint))}"
    )
    assert re.fullmatch(stopped, first), err
    assert second.startswith("continue with: dask-datalog run ") and second.endswith(f"--resume {checkpoint}"), err
    words = shlex.split(second.removeprefix("continue with: "))[2:]
    every = words.index("--checkpoint-every")
    del words[every : every + 2]  # a checkpoint at each of the remaining iterations: minutes
    words = [w for w in words if w not in mode]
    done = subprocess.run([*COMMAND, *words, "--no-cluster"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert outputs(tmp_path / "out") == outputs(long_chain["want"])


@pytest.mark.parametrize("order", ["together", "cluster-first"])
def test_scancel_of_an_external_cluster_ends_resumable_and_quiet(long_chain: dict[str, Path], order: str, tmp_path: Path) -> None:
    """``scancel`` of a batch job signals every process at once: the scheduler, the workers
    (with their nannies) and the run on ``--scheduler-file``. The run ends with one resumable
    stop (exit 75), without a traceback (the thread asking the workers to stop, the client's
    abandoned reconnection), and the printed command gives the same outputs. When the cluster
    goes first and the run sees it before its own signal, it is a lost scheduler: one line,
    exit 1 (not killed by the late signal), and its checkpoint resumes as well."""
    scheduler_file = tmp_path / "scheduler.json"
    checkpoint = tmp_path / "ckpt"
    cluster = [start_scheduler(scheduler_file)]
    try:
        wait_for(scheduler_file)
        cluster.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                ],
                stderr=subprocess.DEVNULL,
            )
        )
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        run = start(
            [
                REACH,
                "-F",
                long_chain["facts"],
                "-D",
                tmp_path / "out",
                "--scheduler-file",
                scheduler_file,
                "--checkpoint",
                checkpoint,
                "--checkpoint-every",
                "0",
            ]
        )
        wait_for(checkpoint / "latest")
        if order == "cluster-first":
            for process in cluster:
                process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            run.send_signal(signal.SIGTERM)
        else:
            for process in [run, *cluster]:
                process.send_signal(signal.SIGTERM)
        _, err = finish(run)
    finally:
        for process in cluster:
            process.kill()
            process.wait()
    assert "Traceback" not in err and "Exception in thread" not in err and " ERROR " not in err, err
    if run.returncode == 1 and order == "cluster-first":
        assert err == "error: lost the Dask scheduler (client connecting): the run was stopped\n", err
        words = [str(REACH), "-F", str(long_chain["facts"]), "-D", str(tmp_path / "out"), "--resume", str(checkpoint)]
    else:
        assert run.returncode == 75, err
        first, second = err.strip().splitlines()
        assert re.fullmatch(rf"stopped by SIGTERM.* is in {re.escape(str(checkpoint))}", first), err
        words = shlex.split(second.removeprefix("continue with: "))[2:]
        at = words.index("--scheduler-file")
        del words[at : at + 2]
        every = words.index("--checkpoint-every")
        del words[every : every + 2]
    done = subprocess.run([*COMMAND, *words, "--no-cluster"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert outputs(tmp_path / "out") == outputs(long_chain["want"])


def test_only_the_runs_own_checkpoints_are_offered_after_a_stop_at_once(long_chain: dict[str, Path], tmp_path: Path) -> None:
    """What the command offers to resume after a run stopped at once (a second SIGTERM): with
    ``--checkpoint DIR``, not a checkpoint an earlier run left in DIR (exit 143, "none yet"),
    but one this run committed; with ``--resume DIR``, the checkpoint it resumed from."""
    checkpoint = tmp_path / "ckpt"
    earlier = start(
        [
            REACH,
            "-F",
            long_chain["facts"],
            "-D",
            tmp_path / "out",
            "--no-cluster",
            "--checkpoint",
            checkpoint,
            "--checkpoint-every",
            "0",
        ]
    )
    wait_for(checkpoint / "latest")
    earlier.send_signal(signal.SIGTERM)
    finish(earlier)
    assert earlier.returncode == 75
    left = (checkpoint / "latest").read_text().strip()

    def checkpoints(*flags: object) -> CheckpointDirectory:
        args = build_parser().parse_args(["run", str(REACH), "-F", str(long_chain["facts"]), *map(str, flags)])
        return CheckpointDirectory(args, IN_PROCESS)

    with checkpoints("--checkpoint", checkpoint) as fresh:
        assert fresh.resumable() is None
        shutil.copytree(checkpoint / left, checkpoint / "run-mine-00000")  # as if this run committed one
        (checkpoint / "latest").write_text("run-mine-00000\n")
        assert fresh.resumable() is not None and fresh.resumable().name == left  # type: ignore[union-attr]
    (checkpoint / "latest").write_text(left + "\n")
    with checkpoints("--resume", checkpoint) as resumed:
        manifest = resumed.resumable()
        assert manifest is not None and manifest.name == left
    with checkpoints() as temporary:  # in process: a temporary directory, which SIGTERM alone writes into
        assert temporary.resumable() is None
    assert not Path(temporary.directory).exists()  # type: ignore[arg-type]


def test_resume_refuses_a_changed_input_or_program(long_chain: dict[str, Path], tmp_path: Path) -> None:
    facts = tmp_path / "facts"
    facts.mkdir()
    (facts / "edge.facts").write_bytes((long_chain["facts"] / "edge.facts").read_bytes())
    checkpoint = tmp_path / "ckpt"
    process = start(
        [REACH, "-F", facts, "-D", tmp_path / "out", "--no-cluster", "--checkpoint", checkpoint, "--checkpoint-every", "0.2"]
    )
    wait_for(checkpoint / "latest")
    process.send_signal(signal.SIGTERM)
    finish(process)
    assert process.returncode == 75
    other = tmp_path / "other.dl"
    other.write_text(REACH.read_text().replace(".output path", ".output path\n.decl unused(x:number)\nunused(x) :- edge(x, x)."))
    done = cli([other, "-F", facts, "-D", tmp_path / "out", "--no-cluster", "--resume", checkpoint])
    assert done.returncode == 1
    assert done.stderr == f"error: cannot resume from {checkpoint}: the program is not the one that was checkpointed\n"
    with open(facts / "edge.facts", "a") as f:
        f.write("7\t3\n")
    done = cli([REACH, "-F", facts, "-D", tmp_path / "out", "--workers", "2", "--resume", checkpoint])
    assert done.returncode == 1
    assert done.stderr == (
        f"error: cannot resume from {checkpoint}: the input of edge ({facts / 'edge.facts'}) changed since the checkpoint was written\n"
    )
    done = cli([REACH, "-F", facts, "-D", tmp_path / "out", "--no-cluster", "--resume", tmp_path / "nothing"])
    assert done.returncode == 1 and done.stderr == f"error: cannot resume: no complete checkpoint in {tmp_path / 'nothing'}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", [["--workers", "2"], ["--no-cluster"]])
def test_timeout_stops_the_run(tmp_path: Path, mode: list[str]) -> None:
    np.savetxt(tmp_path / "edge.facts", chain(20_000), fmt="%d", delimiter="\t")
    started = time.monotonic()
    done = cli([REACH, "-F", tmp_path, "-D", tmp_path / "out", *mode, "--timeout", "3"], timeout=60)
    assert done.returncode == 124, done.stderr
    assert re.fullmatch(r"error: the run went past its time limit of 3 s and was stopped( on every worker)?\n", done.stderr), (
        done.stderr
    )
    assert time.monotonic() - started < 20  # the cluster's start and stop included


@pytest.mark.parametrize("after_s", [1.5, 5])
def test_ctrl_c_stops_the_command(tmp_path: Path, after_s: float) -> None:
    """Ctrl-C while the embedded cluster starts (1.5 s) or while the run goes (5 s): the run
    stops on every worker and the command ends with 130. A KeyboardInterrupt raised inside
    distributed's client there once hung the command; Ctrl-C now asks the run to stop."""
    np.savetxt(tmp_path / "edge.facts", chain(20_000), fmt="%d", delimiter="\t")
    process = start([REACH, "-F", tmp_path, "-D", tmp_path / "out", "--workers", "2"])
    time.sleep(after_s)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = finish(process, timeout=30)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: the run was stopped on every worker"
    assert time.monotonic() - sent < 10  # the embedded cluster's shutdown included


def test_a_stopped_job_leaves_nothing_and_the_job_beside_it_finishes() -> None:
    """Two jobs on one cluster: one past its time limit is stopped on every worker within about
    a second and frees all it held; the other, running meanwhile, is right."""
    with hard_timeout(90):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        try:
            program = Program.from_file(REACH)
            errors: list[BaseException] = []
            stopped_at: list[float] = []

            def long_job() -> None:
                try:
                    program.run(facts={"edge": chain(20_000)}, client=client, options=RunOptions(timeout=4))
                except BaseException as error:
                    stopped_at.append(time.monotonic())
                    errors.append(error)

            thread = threading.Thread(target=long_job)
            thread.start()
            time.sleep(1.0)
            other = program.run(facts={"edge": chain(300)}, client=client)
            assert other.tuples("path") == {(i, j) for i in range(300) for j in range(i + 1, 301)}
            thread.join(60)
            assert len(errors) == 1 and isinstance(errors[0], RunTimeout), errors
            other.close()
            assert_no_job_left(client, list(client.ncores()))
            assert time.monotonic() - stopped_at[0] < 6  # including the polling of assert_no_job_left
        finally:
            client.close()
            cluster.close()


def test_workers_stop_computing_within_a_second_of_a_timeout() -> None:
    """A single iteration that computes for seconds (a large join, no collective to wait in)
    still stops within about a second: the loop asks its Control between chunks."""
    with hard_timeout(90):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        try:
            program = Program(
                ".decl a(x:number, z:number)\n.decl b(z:number, y:number)\n.decl c(x:number, y:number)\n"
                "c(x, y) :- a(x, z), b(z, y), x != y.\n"
            )
            rng = np.random.default_rng(0)
            a = np.stack([np.arange(4000), rng.integers(0, 4, 4000)], axis=1)
            b = np.stack([rng.integers(0, 4, 40_000), np.arange(40_000)], axis=1)
            t0 = time.monotonic()
            with pytest.raises(RunTimeout):
                program.run(facts={"a": a, "b": b}, client=client, chunk_rows=1 << 16, options=RunOptions(timeout=2))
            raised = time.monotonic()
            assert raised - t0 < 2 + 5
            deadline = raised + 3
            while any(client.run(lambda dask_worker: len(dask_worker.state.tasks)).values()):
                assert time.monotonic() < deadline, "a worker went on computing"
                time.sleep(0.05)
        finally:
            client.close()
            cluster.close()
