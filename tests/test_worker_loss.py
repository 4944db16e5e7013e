"""Fault injection on real clusters: a worker process killed with SIGKILL while the job loads,
in the middle of the fixpoint and while it writes its outputs, for REACH and for a program with
negation and aggregates, on 2 and 3 workers. With retries (the default) the outputs are byte
for byte those of an undisturbed run; with ``--retries 0`` the job ends with one clear line
within 10 s of the kill, and a cluster whose killed worker is not restarted finishes on fewer.

The kill comes from inside the worker (``cluster/faults.py``: SIGKILL of its own process at a
named point, once), so each phase is hit exactly; the marker file it creates dates the kill.
Every test runs under a hard timeout: the bug this guards against is a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
from distributed import Client, LocalCluster
from test_checkpoint import MIXED
from test_cli import summary
from test_distributed import REACHED_FROM_0

from dask_datalog.cluster import Program
from dask_datalog.cluster.runtime import coordinator, dask_adapter, phase
from dask_datalog.cluster.runtime.coordinator import Membership
from dask_datalog.cluster.runtime.faults import ENV as FAULT
from dask_datalog.cluster.runtime.plugin import PLUGIN_NAME, DatalogPlugin
from dask_datalog.engine.errors import ClusterError, DatalogError, RunTimeout, WorkerLost
from dask_datalog.spmd.options import RunOptions

ROOT = Path(__file__).resolve().parent.parent
REACH = ROOT / "examples" / "reach.dl"
CHAIN = 20_000  # REACH on a chain this long runs for minutes: it is always killed mid-run


def chain(n: int) -> np.ndarray:
    return np.stack([np.arange(n), np.arange(1, n + 1)], axis=1).astype(np.int64)


@contextmanager
def hard_timeout(seconds: int) -> Iterator[None]:
    """Fail the test (rather than hang the suite) when its body runs past ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it; a hang kills it and its workers and fails the test."""
    command = [sys.executable, "-m", "dask_datalog.cluster.cli", "run", *map(str, args)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in [*psutil.Process(process.pid).children(recursive=True)]:
            child.kill()
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the command hung for {timeout} s\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


# -- the fault matrix ---------------------------------------------------------------------------

PROGRAMS = {"reach": REACH.read_text(), "mixed": MIXED}
POINTS = ["load", "iteration-300", "write"]


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both programs over one graph (a 600-node chain, so the fixpoint takes 600 iterations,
    and backward chords in its first half: cycles, nodes on none), with the undisturbed
    outputs of an in-process run."""
    base = tmp_path_factory.mktemp("workload")
    facts = base / "facts"
    facts.mkdir()
    rng = np.random.default_rng(5)
    low = rng.integers(0, 250, size=20)
    edges = np.concatenate([chain(600), np.stack([low + rng.integers(1, 50, size=20), low], axis=1)])
    np.savetxt(facts / "edge.facts", edges, fmt="%d", delimiter="\t")
    paths = {"facts": facts}
    for name, text in PROGRAMS.items():
        program = base / f"{name}.dl"
        program.write_text(text)
        done = cli([program, "-F", facts, "-D", base / f"want-{name}", "--no-cluster"])
        assert done.returncode == 0, done.stderr
        paths[name] = program
        paths[f"want-{name}"] = base / f"want-{name}"
    return paths


def outputs(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_a_killed_worker_costs_a_retry_not_the_answer(
    workload: dict[str, Path], program: str, workers: int, point: str, tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    out = tmp_path / "out"
    args = [
        workload[program],
        "-F",
        workload["facts"],
        "-D",
        out,
        "--workers",
        workers,
        "--checkpoint-every",
        "0.05",
        "--stats",
        tmp_path / "stats.json",
    ]
    done = cli(args, {FAULT: f"{point}:{workers - 1}:{marker}"})
    assert marker.exists(), "the fault was not injected"
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(summary("embedded cluster", workers), done.stderr), done.stderr  # nothing but the summary
    assert outputs(out) == outputs(workload[f"want-{program}"])
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [r["rank"] for r in stats["recoveries"]] == [workers - 1], stats["recoveries"]
    assert stats["workers"] == workers
    if point.startswith("iteration") and program == "reach":
        # Checkpoints every 50 ms: the retry started from one, not from the inputs.
        assert stats["resumed_from"] is not None and stats["resumed_from"][1] > 0


@pytest.mark.parametrize("point", POINTS)
def test_with_no_retries_a_killed_worker_ends_the_job_in_one_line_within_10_s(
    workload: dict[str, Path], point: str, tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    args = [workload["mixed"], "-F", workload["facts"], "-D", tmp_path / "out", "--workers", 2, "--retries", 0]
    done = cli(args, {FAULT: f"{point}:1:{marker}"})
    ended = time.time()
    assert marker.exists(), "the fault was not injected"
    assert ended - marker.stat().st_mtime < 10
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    phase = (
        "while writing the outputs"
        if point == "write"
        else "(while loading the inputs|during stratum \\d+, after iteration \\d+)"
    )
    assert re.fullmatch(rf"error: worker tcp://\S+ \(rank 1\) was lost {phase}; the run was stopped", lines[0]), lines[0]


def test_retries_run_out(workload: dict[str, Path], tmp_path: Path) -> None:
    """Every attempt loses its worker: after --retries 1 the job ends naming the loss and the
    retries spent."""
    args = [workload["reach"], "-F", workload["facts"], "-D", tmp_path / "out", "--workers", 2, "--retries", 1]
    done = cli(args, {FAULT: "load:0:always"})
    assert done.returncode == 1, done.stderr
    expected = r"error: worker \S+ \(rank 0\) was lost while loading the inputs; the run was stopped \(after 1 retry\)\n"
    assert re.fullmatch(expected, done.stderr), done.stderr


# -- the API on clusters ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tcp://", "ws://"])  # direct sockets (mesh.py); one-way Dask RPCs
def test_killed_worker_without_retries_stops_the_job_and_the_cluster_runs_the_next_one(protocol: str) -> None:
    with hard_timeout(40):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, protocol=protocol, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        try:
            pids = client.run(os.getpid)
            victim = sorted(pids)[1]
            survivor = sorted(pids)[0]
            started = threading.Event()
            killed_at: list[float] = []

            def kill_on_first_event() -> None:
                started.wait()
                killed_at.append(time.monotonic())
                os.kill(pids[victim], signal.SIGKILL)

            threading.Thread(target=kill_on_first_event, daemon=True).start()
            with pytest.raises(WorkerLost) as lost:
                Program.from_file(REACH).run(
                    facts={"edge": chain(CHAIN)},
                    client=client,
                    progress=lambda event: started.set(),
                    options=RunOptions(retries=0),
                )
            detected_s = time.monotonic() - killed_at[0]
            assert detected_s < 10
            message = lost.value.message
            expected = (
                rf"worker {re.escape(victim)} \(rank 1\) was lost during stratum 0, after iteration \d+; the run was stopped"
            )
            assert re.fullmatch(expected, message), message
            # The survivor ended its task and forgot the run; nothing of it is left.
            assert_no_job_left(client, [survivor])
            # The nanny restarted the worker under a new address; the next job runs on both.
            client.wait_for_workers(2, timeout=20)
            result = Program.from_file(REACH).run(facts={"edge": chain(200)}, client=client)
            assert result.tuples("path") == {(i, j) for i in range(200) for j in range(i + 1, 201)}
            assert result.stats["workers"] == 2
            result.close()
        finally:
            client.close()
            cluster.close()


def assert_no_job_left(client: Client, workers: list[str]) -> None:
    """No run state, no task and no shard of any run on ``workers`` (tasks are released a moment
    after the client's cancel reaches the worker)."""
    held: dict[str, object] = {}
    for _ in range(50):
        held = client.run(_job_state, workers=workers)
        if all(v == (0, [], 0) for v in held.values()):
            return
        time.sleep(0.1)
    assert held == dict.fromkeys(workers, (0, [], 0))


def _job_state(dask_worker: object) -> tuple[int, list[str], int]:
    import gc

    from dask_datalog.spmd.shard import Shard

    gc.collect()
    tasks = [str(k) for k in dask_worker.state.tasks if "datalog" in str(k)]  # type: ignore[attr-defined]
    shards = sum(isinstance(o, Shard) for o in gc.get_objects())
    return len(dask_worker.plugins[PLUGIN_NAME].runs), tasks, shards  # type: ignore[attr-defined]


def start_scheduler(scheduler_file: Path) -> subprocess.Popen[bytes]:
    """A `dask scheduler` of its own, any port, writing ``scheduler_file`` (stop it by PID)."""
    command = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(scheduler_file)]
    return subprocess.Popen([*command, "--port", "0", "--dashboard-address", ":0"], stderr=subprocess.DEVNULL)


def test_a_lost_worker_that_does_not_come_back_leaves_the_job_on_fewer(tmp_path: Path) -> None:
    """Three workers without nannies: the killed one stays dead, and after ``rejoin_s`` the
    retry re-hashes the latest checkpoint onto the two left."""
    scheduler_file = tmp_path / "scheduler.json"
    processes = [start_scheduler(scheduler_file)]
    try:
        with hard_timeout(90):
            while not scheduler_file.exists():
                time.sleep(0.1)
            worker = [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                "--scheduler-file",
                str(scheduler_file),
                "--no-nanny",
                "--nthreads",
                "1",
            ]
            env = {**os.environ, FAULT: f"iteration-250:2:{tmp_path / 'killed'}"}
            processes += [subprocess.Popen(worker, stderr=subprocess.DEVNULL, env=env) for _ in range(3)]
            with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
                client.wait_for_workers(3, timeout=30)
                options = RunOptions(checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=0.05, rejoin_s=1.0)
                notes: list[str] = []
                result = Program.from_file(REACH).run(
                    facts={"edge": chain(400)}, client=client, options=options, progress=lambda e: notes.append(e.get("note", ""))
                )
                assert (tmp_path / "killed").exists()
                assert result.sizes["path"] == 400 * 401 // 2
                assert result.tuples("path") == {(i, j) for i in range(400) for j in range(i + 1, 401)}
                assert result.stats["workers"] == 2
                assert result.stats["recoveries"][0]["workers"] == 2 and result.stats["resumed_from"] is not None
                assert any(re.search(r"lost .*retry 1/2 from the latest checkpoint on 2 workers", n) for n in notes), notes
                result.close()
    finally:
        for p in processes:
            p.kill()
            p.wait()


def test_a_worker_that_stops_answering_is_taken_as_lost() -> None:
    """SIGSTOP keeps a worker's connections open, so the scheduler would wait minutes for it:
    its heartbeats stop, the job counts it lost after ``silent_s`` and finishes on the other."""
    with hard_timeout(90):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        pids = client.run(os.getpid)
        frozen = sorted(pids)[1]
        try:
            started = threading.Event()

            def freeze() -> None:
                started.wait()
                os.kill(pids[frozen], signal.SIGSTOP)

            threading.Thread(target=freeze, daemon=True).start()
            notes: list[str] = []

            def progress(event: dict) -> None:
                started.set()
                notes.append(event.get("note", ""))

            options = RunOptions(silent_s=3.0, rejoin_s=1.0)
            t0 = time.monotonic()
            result = Program.from_file(REACH).run(facts={"edge": chain(1500)}, client=client, options=options, progress=progress)
            assert result.sizes["path"] == 1500 * 1501 // 2
            assert result.stats["workers"] == 1
            assert result.stats["recoveries"][0]["lost"] == frozen
            assert any(f"worker {frozen} (rank 1) stopped answering (no heartbeat for 3 s)" in n for n in notes), notes
            assert time.monotonic() - t0 < 60
            result.close()
        finally:
            os.kill(pids[frozen], signal.SIGCONT)
            client.close()
            cluster.close()


def test_workers_slow_to_answer_the_client_are_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering a run on workers that are all there but slow to answer (a loaded machine:
    a Soufflé suite case beside ``make test`` took more than 5 s) is waited for; only past
    TELL_LIMIT_S does the run end, with a line that says so."""
    monkeypatch.setattr(coordinator, "TELL_S", 0.1)
    register = DatalogPlugin.open_run

    def slow_open_run(self: DatalogPlugin, run: str, attempt: int) -> None:
        time.sleep(0.5)
        register(self, run, attempt)

    monkeypatch.setattr(DatalogPlugin, "open_run", slow_open_run)  # in-process workers share the class
    program = Program(REACHED_FROM_0)
    with hard_timeout(60):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        try:
            result = program.run(facts={"e": chain(20)}, client=client)
            assert result.sizes["r"] == 21
            result.close()
            monkeypatch.setattr(coordinator, "TELL_LIMIT_S", 0.2)
            with pytest.raises(ClusterError, match=r"did not answer within 0\.2 s"):
                program.run(facts={"e": chain(20)}, client=client)
        finally:
            client.close()
            cluster.close()


def test_a_task_stuck_where_it_cannot_see_the_abort_does_not_hold_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker's phase fails as it opens; the other is stuck where no stop reaches it (here
    before its phase opens). The client raises the failure ABORT_WAIT_S after the abort
    instead of waiting for the stuck task (a clean clone's make test once hung in that wait)."""
    monkeypatch.setattr(coordinator, "ABORT_WAIT_S", 1.0)
    enter = phase.Phase.__enter__
    release = threading.Event()

    def rank_dependent_enter(self: phase.Phase) -> phase.Phase:
        if self.rank == 0:
            raise DatalogError(None, "injected failure on rank 0")
        release.wait(30)  # no check of the run's stop in here
        return enter(self)

    monkeypatch.setattr(phase.Phase, "__enter__", rank_dependent_enter)  # in-process workers share the class
    program = Program(REACHED_FROM_0)
    with hard_timeout(60):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        try:
            t0 = time.monotonic()
            with pytest.raises(DatalogError, match="injected failure on rank 0"):
                program.run(facts={"e": chain(20)}, client=client)
            assert time.monotonic() - t0 < 15, "the client waited for the stuck task"
            release.set()  # it goes on, finds its run aborted and ends
            assert_no_job_left(client, sorted(client.scheduler_info()["workers"]))
        finally:
            release.set()
            client.close()
            cluster.close()


def test_a_peer_whose_rendezvous_never_answers_holds_no_task_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that never answers the rendezvous (its event loop held up, the reply lost) while
    staying in the cluster: the run ends at its time limit, and the worker that asked stops with
    it rather than waiting on the answer for good (its task thread held and its phase open: the
    next run on that worker would wait for it)."""
    monkeypatch.setattr(phase, "ANSWER_S", 0.3)  # in-process workers read this module
    program = Program(REACHED_FROM_0)

    async def never(**_: object) -> None:
        await asyncio.Event().wait()

    with hard_timeout(60):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        try:
            workers = sorted(client.scheduler_info()["workers"])
            program.run(facts={"e": chain(5)}, client=client).close()  # the plugin registers its handler here
            client.run(lambda dask_worker: dask_adapter.add_handler(dask_worker, "datalog_address", never), workers=workers[1:])
            with pytest.raises(RunTimeout):
                program.run(facts={"e": chain(50)}, client=client, options=RunOptions(timeout=2.0))
            assert_no_job_left(client, workers)
        finally:
            client.close()
            cluster.close()


def test_a_worker_lost_after_the_evaluation_costs_a_retry_when_results_are_gathered() -> None:
    """The shards live on the workers after ``run``: one lost before ``tuples``/``write`` is
    evaluated again (from the inputs: no checkpoint directory here), then gathered."""
    with hard_timeout(60):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        try:
            result = Program.from_file(REACH).run(facts={"edge": chain(300)}, client=client)
            pids = client.run(os.getpid)
            os.kill(pids[sorted(pids)[0]], signal.SIGKILL)
            assert result.tuples("path") == {(i, j) for i in range(300) for j in range(i + 1, 301)}
            assert [r["rank"] for r in result.stats["recoveries"]] == [0]
            result.close()
        finally:
            client.close()
            cluster.close()


def test_a_worker_that_joined_since_the_last_look_is_not_taken_as_lost() -> None:
    """Membership caches the scheduler's listing for WATCH_S; a peer missing from it (a retry's
    restarted worker, found a moment after the loss that filled the cache) is looked for again
    before it counts as lost. Seen in CI: the restarted worker taken as lost, a second retry."""
    with (
        hard_timeout(60),
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        members = Membership(client, RunOptions())
        (first,) = dask_adapter.scheduler_workers(client)
        assert members.lost([first], lambda: "here", force=True) is None
        cluster.scale(2)
        client.wait_for_workers(2, timeout=30)
        peers = sorted(dask_adapter.scheduler_workers(client))
        assert members.lost(peers, lambda: "here") is None  # the cache predates the second worker
        cluster.scale(1)
        while len(dask_adapter.scheduler_workers(client)) > 1:
            time.sleep(0.05)
        (gone,) = set(peers) - set(dask_adapter.scheduler_workers(client))
        lost = members.lost(peers, lambda: "here", force=True)
        assert lost is not None and (lost.address, lost.how) == (gone, "was lost")


def test_a_loss_is_worded_with_the_progress_reported_while_the_scheduler_was_asked() -> None:
    """A worker killed right after its first progress event: the event reaches the client while
    Membership asks the scheduler for its listing (a round trip), so where the run was must be
    read once the loss is seen, not before the question. Seen in a clean clone's make test: "was
    lost while loading the inputs" for a run already past its first iteration. In one process:
    a client whose scheduler answers only after the event has arrived."""
    record = coordinator.RunRecord("run")

    class SchedulerAnsweringLate:
        status = "running"
        scheduler = type("Scheduler", (), {"identity": None})()

        def sync(self, call: object, **_: object) -> dict[str, object]:
            record.reached({"stratum": 0, "iteration": 3})  # the event, handled meanwhile
            return {"workers": {"tcp://a:1": {"last_seen": 1.0}}}  # rank 1 is gone

    members = Membership(SchedulerAnsweringLate(), RunOptions())
    lost = members.lost(["tcp://a:1", "tcp://b:2"], record.where, force=True)
    assert lost is not None and (lost.address, lost.rank, lost.how) == ("tcp://b:2", 1, "was lost")
    assert lost.where == "during stratum 0, after iteration 3"
