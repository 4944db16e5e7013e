"""A worker that dies during a job: the client and the surviving peers know within seconds, the
job ends with one ``WorkerLost`` error naming the worker and where the job was, the survivors
keep no job state, and the cluster runs the next job (its nanny restarted the worker). No
recovery. Each test runs under a hard timeout: the bug this guards against is a hang.
"""

from __future__ import annotations

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

from dask_datalog.cluster import Program
from dask_datalog.cluster.exchange import PLUGIN_NAME
from dask_datalog.cluster.runtime import WorkerLost

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


@pytest.mark.parametrize("protocol", ["tcp://", "ws://"])  # direct sockets (mesh.py); one-way Dask RPCs
def test_killed_worker_stops_the_job_and_the_cluster_runs_the_next_one(protocol: str) -> None:
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
                Program.from_file(REACH).run(facts={"edge": chain(CHAIN)}, client=client, progress=lambda event: started.set())
            detected_s = time.monotonic() - killed_at[0]
            assert detected_s < 10
            message = str(lost.value)
            expected = rf"worker {re.escape(victim)} \(rank 1\) was lost during stratum 0, after iteration \d+; the job was stopped"
            assert re.fullmatch(expected, message), message
            # The survivor ended its task and dropped the job's mailbox; nothing of the job is left.
            mailboxes = client.run(lambda dask_worker: len(dask_worker.plugins[PLUGIN_NAME].mailboxes), workers=[survivor])
            assert mailboxes == {survivor: 0}
            for _ in range(50):
                held = client.run(lambda dask_worker: [k for k in dask_worker.state.tasks if "datalog" in str(k)], workers=[survivor])
                if not held[survivor]:
                    break
                time.sleep(0.1)
            assert held == {survivor: []}
            # The nanny restarted the worker under a new address; the next job runs on both.
            client.wait_for_workers(2, timeout=20)
            result = Program.from_file(REACH).run(facts={"edge": chain(200)}, client=client)
            assert result.tuples("path") == {(i, j) for i in range(200) for j in range(i + 1, 201)}
            assert result.stats["workers"] == 2
            result.close()
        finally:
            client.close()
            cluster.close()


def test_cli_reports_a_killed_worker_in_one_line(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "edge.facts", chain(CHAIN), fmt="%d", delimiter="\t")
    command = [sys.executable, "-m", "dask_datalog.cluster.cli", "run", str(REACH), "-F", str(tmp_path), "-D", str(tmp_path / "out")]
    start = time.monotonic()
    cli = subprocess.Popen([*command, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(cli.pid)
        workers: list[psutil.Process] = []
        while len(workers) < 2 and time.monotonic() - start < 15:
            workers = [p for p in parent.children(recursive=True) if "spawn_main" in " ".join(_cmdline(p))]
            time.sleep(0.1)
        assert len(workers) == 2, "the embedded cluster did not start"
        time.sleep(3.0)  # the job is evaluating by now (a 20,000-edge chain takes minutes)
        workers[1].send_signal(signal.SIGKILL)
        out, err = cli.communicate(timeout=15)
    finally:
        if cli.poll() is None:  # a hang: end it and its workers rather than the suite
            for process in [*parent.children(recursive=True), parent]:
                try:
                    process.kill()
                except psutil.Error:
                    pass
            cli.communicate()
    assert cli.returncode == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(r"error: worker tcp://\S+ \(rank \d\) was lost .+; the job was stopped", lines[0]), err


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # ended meanwhile
        return []
