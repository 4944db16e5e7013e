"""``dask-datalog serve`` on a cluster that was running before it: a ``dask scheduler`` and two
``dask worker`` processes (each under its nanny) started on loopback by the test and stopped by
their PIDs, the service given ``--scheduler ADDR`` or ``--scheduler-file FILE``. Jobs go
through ``dask-datalog job``; their outputs are compared with the one-shot ``dask-datalog run``'s.

Faults: a worker killed with SIGKILL while a job runs costs a retry, as it does ``run``
(``--retries``): the nanny restarts it, the job SUCCEEDS with the same outputs and its log says
the retry. A bad program fails its job in one line and the service runs the next one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client
from test_service import BAD, TOKENS, one_shot, until
from test_worker_loss import REACH, chain

from dask_datalog.cluster.service.client import ServiceClient

CLI = [sys.executable, "-m", "dask_datalog.cluster.cli"]
DASK = str(Path(sys.executable).parent / "dask")
# REACH on a chain this long takes as many iterations, seconds on two workers: time for the
# kill to land mid-run, after KILL_AFTER of them.
# Long enough that a worker killed once 20 iterations were reported dies mid-run on an idle
# machine too (800 finished before the kill landed there: about 0.5 ms an iteration).
CHAIN = 6000
KILL_AFTER = 20


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process we started, SIGKILL if it has not exited 20 s later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class External:
    """A scheduler and two nanny-managed workers on 127.0.0.1, as a cluster someone else runs."""

    def __init__(self, folder: Path):
        self.scheduler_file = folder / "scheduler.json"
        quiet = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"}
        self.processes: list[subprocess.Popen[bytes]] = []
        scheduler = [DASK, "scheduler", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1", "--port", "0"]
        self.processes.append(subprocess.Popen([*scheduler, "--dashboard-address", ":0"], env=quiet))
        until(self.scheduler_file.exists, "the scheduler file")
        until(lambda: "address" in self._info(), "the scheduler's address")
        self.address = self._info()["address"]
        for _ in range(2):
            worker = [DASK, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--nanny", "--death-timeout", "60"]
            self.processes.append(subprocess.Popen(worker, env=quiet))
        self.client = Client(self.address, timeout="30s")
        self.client.wait_for_workers(2, timeout=60)

    def _info(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.scheduler_file.read_text()))
        except ValueError:  # being written
            return {}

    def close(self) -> None:
        self.client.close()
        for process in reversed(self.processes):  # the workers (their nannies stop them), then the scheduler
            _stop(process)


@pytest.fixture
def external(tmp_path: Path) -> Iterator[External]:
    cluster = External(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


class Service:
    """``dask-datalog serve`` on ``where`` (its --scheduler or --scheduler-file arguments)."""

    def __init__(self, state: Path, *where: str):
        state.mkdir(parents=True, exist_ok=True)
        (state / "tokens.json").write_text(json.dumps(TOKENS))
        command = [*CLI, "serve", "--port", "0", "--state-dir", str(state), *where]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.banner = self.process.stdout.readline()
        match = re.search(r"at (http://\S+) on", self.banner)
        assert match, (self.banner, self.process.stderr.read() if self.process.poll() is not None else "")  # type: ignore[union-attr]
        self.address = match.group(1)

    def job(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DASK_DATALOG_SERVICE": self.address, "DASK_DATALOG_TOKEN": "alice-token"}
        return subprocess.run([*CLI, "job", *args], capture_output=True, text=True, env=env, timeout=180)

    def stop(self) -> int:
        """SIGTERM, as a user stops it; its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.mark.parametrize("how", ["--scheduler", "--scheduler-file"])
def test_serve_on_an_existing_cluster_gives_the_one_shot_runs_outputs(external: External, tmp_path: Path, how: str) -> None:
    facts = tmp_path / "facts"
    facts.mkdir()
    np.savetxt(facts / "edge.facts", chain(50), fmt="%d", delimiter="\t")
    where = external.address if how == "--scheduler" else str(external.scheduler_file)
    service = Service(tmp_path / "state", how, where)
    try:
        assert f"on 2 workers ({external.address})" in service.banner, service.banner
        submitted = service.job("submit", str(REACH), "-F", str(facts))
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        until(lambda: json.loads(service.job("status", job).stdout)["state"] == "SUCCEEDED", "the job to succeed")
        record = json.loads(service.job("status", job).stdout)
        assert record["owner"] == "alice" and record["error"] is None
        want = one_shot(REACH, facts, tmp_path / "cli") / "path.csv"
        assert service.job("result", job, "path").stdout == want.read_text()
        # The CSV job's result as Parquet, converted on the service: the same rows, typed.
        converted = service.job("result", job, "path", "--format", "parquet", "-o", str(tmp_path / "path.parquet"))
        assert converted.returncode == 0, converted.stderr
        table = pq.read_table(tmp_path / "path.parquet")
        assert table.schema.names == ["x", "y"] and str(table.schema.field("x").type) == "int32"
        rows = zip(table.column("x").to_pylist(), table.column("y").to_pylist())
        assert [f"{x}\t{y}" for x, y in rows] == want.read_text().splitlines()
        logs = service.job("logs", job).stdout.splitlines()
        assert logs[1] == "running on 2 workers" and logs[-1].startswith("SUCCEEDED") and "on 2 workers" in logs[-1], logs
        # A bad program fails its job in one line; the service, and the cluster, go on.
        (tmp_path / "bad.dl").write_text(BAD)
        failed = service.job("submit", str(tmp_path / "bad.dl"), "--wait")
        assert failed.returncode == 1
        assert failed.stderr == f"job {failed.stdout.strip()} FAILED: {tmp_path / 'bad.dl'}:3:9: error: undeclared relation b\n"
        again = service.job("submit", str(REACH), "-F", str(facts), "--wait", "-D", str(tmp_path / "again"))
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "again" / "path.csv").read_bytes() == want.read_bytes()
    finally:
        assert service.stop() == 0, service.process.stderr.read()  # type: ignore[union-attr]
    # The service's SIGTERM closes its client, not the cluster, which it does not own.
    assert len(external.client.scheduler_info()["workers"]) == 2


def test_a_worker_killed_during_a_job_costs_a_retry_and_the_job_succeeds(external: External, tmp_path: Path) -> None:
    facts = tmp_path / "facts"
    facts.mkdir()
    np.savetxt(facts / "edge.facts", chain(CHAIN), fmt="%d", delimiter="\t")
    service = Service(tmp_path / "state", "--scheduler-file", str(external.scheduler_file))
    try:
        jobs = ServiceClient(service.address, "alice-token")
        job = jobs.submit(REACH, facts=facts, retries=2)
        until(lambda: jobs.status(job)["iterations"] >= KILL_AFTER, f"{KILL_AFTER} iterations")
        pids = external.client.run(os.getpid)
        victim = sorted(pids)[1]
        os.kill(pids[victim], signal.SIGKILL)  # the worker process, not its nanny: it is restarted
        record = jobs.wait(job, timeout=300)
        log = jobs.logs(job, limit=10000)["lines"]
        assert record["state"] == "SUCCEEDED", (record, log)
        assert jobs.result(job, "path") == (one_shot(REACH, facts, tmp_path / "cli") / "path.csv").read_bytes()
        retries = [line for line in log if re.search(rf"worker {re.escape(victim)} \(rank \d\) .*; retry 1/2 from ", line)]
        assert len(retries) == 1, log
        assert not any("retry 2/2" in line for line in log), log
        # The service goes on: the next job runs, on the restarted worker too.
        external.client.wait_for_workers(2, timeout=60)
        small = tmp_path / "small"
        small.mkdir()
        np.savetxt(small / "edge.facts", chain(30), fmt="%d", delimiter="\t")
        after = jobs.wait(jobs.submit(REACH, facts=small), timeout=120)
        assert after["state"] == "SUCCEEDED"
        assert jobs.result(after["id"], "path") == (one_shot(REACH, small, tmp_path / "small-cli") / "path.csv").read_bytes()
        jobs.close()
    finally:
        assert service.stop() == 0, service.process.stderr.read()  # type: ignore[union-attr]


def test_a_lost_worker_with_no_retry_left_fails_its_job_in_one_line(external: External, tmp_path: Path) -> None:
    facts = tmp_path / "facts"
    facts.mkdir()
    np.savetxt(facts / "edge.facts", chain(CHAIN), fmt="%d", delimiter="\t")
    service = Service(tmp_path / "state", "--scheduler", external.address)
    try:
        jobs = ServiceClient(service.address, "alice-token")
        job = jobs.submit(REACH, facts=facts, retries=0)
        until(lambda: jobs.status(job)["iterations"] >= KILL_AFTER, f"{KILL_AFTER} iterations")
        pids = external.client.run(os.getpid)
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        record = jobs.wait(job, timeout=120)
        assert record["state"] == "FAILED", record
        assert re.fullmatch(
            rf"error: worker {re.escape(victim)} \(rank \d\) was lost during stratum \d+, after iteration \d+; the run was stopped",
            record["error"],
        ), record["error"]
        jobs.close()
    finally:
        assert service.stop() == 0, service.process.stderr.read()  # type: ignore[union-attr]
