"""deploy/slurm/ under a real SLURM: private clusters (munged, slurmctld and slurmd of Debian's
slurm-wlm, installed with apt-get when missing) run both scripts through sbatch. One has a
single node, this machine. The other has two, dd-node1 and dd-node2: each a network and UTS
namespace of this machine with its own address on a bridge and its own slurmd, slurmctld on the
host's end of the bridge, the file system shared (as a cluster's shared one). Checked:

- two cluster jobs at once on the node, and a single-node job, write the bytes an in-process
  run writes; their logs have no traceback and no cancelled step, and end with the command's
  `done:` line and the script's exit-status line;
- a bad program fails its job (exit 1) with one `file:line:col: error:` line, no traceback;
- the job's memory sizes the run: a cluster worker's limit is its share of --mem-per-cpu or
  of --mem, and a single-node run outgrowing half of --mem ends with one `out of memory
  budget` line;
- `scancel` leaves no process of the job and no scheduler file;
- a job that cannot finish within its 1-minute limit is warned (`--signal`), checkpoints,
  requeues itself and resumes, until the outputs are those of an in-process run;
- on two nodes (`--nodes=2 --ntasks-per-node=2`): the cluster script's 4 workers, two on each
  node, write the bytes an in-process run writes, with a clean log; with --mem each worker's
  limit is its node's share; `scancel` leaves no process of the job on either node; a job
  paused as the time limit's warning does (`scancel --batch --signal=USR1`) checkpoints,
  requeues itself and resumes on both nodes;
- serve.sbatch: the job service beside the cluster's scheduler says where it listens; a job
  submitted by one `dask-datalog job` process and followed by others (status, logs, result)
  gives the bytes an in-process run writes; the time limit's warning stops the service and
  the job cleanly.

Every job of a cluster is submitted at its start and runs beside the others; each test waits
for its own. About 110 s on the 2-core development machine for the single node (the walltime
jobs: 30 s of waiting for slurmctld's first time-limit pass, then 60 s; on a machine loaded by
other work a requeued job may need a third start, 60 s more), then about 60 s for the two nodes
(the paused job: 15 s of waiting before its second start), plus apt-get's time on a machine
without SLURM. Without root, or where the namespaces cannot be made, the two-node tests skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from netns import Namespaces
from test_worker_loss import REACH, chain, cli

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
CAL = ROOT / "tests" / "data" / "cal.cedge"
VENV = Path(sys.prefix)
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
# Dask at INFO (asked for by the jobs that check workers' memory limits) logs a worker's
# connection closing at shutdown with a traceback: the only one those logs may hold. Its shape
# varies (a read or a write found the stream closed; tornado's error chained or not): every
# line up to the CommClosedError, none of them another log record.
CLOSED_COMM = re.compile(
    r"^.* - INFO - Batched Comm Closed .*\n(?:(?!\d{4}-\d\d-\d\d ).*\n)*?distributed\.comm\.core\.CommClosedError.*\n",
    re.M,
)
# slurmctld's pass over running jobs, every 30 s (debug2): time limits and --signal warnings.
TIME_LIMIT_PASS = "Testing job time limits"


def _install_slurm() -> None:
    """Debian's slurm-wlm and munge when missing; a skip saying why when they cannot be had."""
    if os.geteuid() != 0:
        pytest.skip("the private SLURM runs its daemons as root")
    if all(shutil.which(c) for c in ("munged", "slurmctld", "slurmd", "sbatch")):
        return
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm and munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # stale package lists: update, then try again
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"apt-get could not install slurm-wlm and munge: {done.stderr.strip()[-400:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Job:
    id: str
    facts: Path
    out: Path
    log: Path
    tmp: Path  # the job's TMPDIR: where the cluster script keeps its scheduler file
    checkpoint: Path

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def slurm_nodes(count: int) -> Namespaces:
    """SLURM nodes dd-node1 .. dd-node<count> as namespaces of this machine (netns.py), each
    with its address on a bridge (10.77.x.0/24) and, for its slurmd, a hostname of its own."""
    return Namespaces(
        [f"dd-node{i}" for i in range(1, count + 1)], prefix="dd", octet=77, tools=("ip", "nsenter", "unshare", "hostname")
    )


class Slurm:
    """A private SLURM under ``root``: its own munged socket, ports, state and spool. One node, the
    host itself; or, given a ``network``, its nodes, one slurmd in each namespace, slurmctld on the
    host's bridge address. Its daemons and its jobs' processes carry its ``SLURM_CONF``."""

    def __init__(self, root: Path, network: Namespaces | None = None):
        self.root = root
        self.network = network
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen[bytes]] = []
        # For the walltime jobs' checkpoints: up to 50 MB each, thousands of them; in memory
        # where /dev/shm has room (containers often give it 64 MB).
        shm = os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 2**30
        self.scratch = Path(tempfile.mkdtemp(prefix="dd-test-", dir="/dev/shm" if shm else root))

    def start(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = munge / "socket"
        self._daemon(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={munge / 'pid'}",
                f"--log-file={munge / 'log'}",
                f"--seed-file={munge / 'seed'}",
            ],
        )
        self._until(sock.exists, 10, "munged did not create its socket")
        host = socket.gethostname()
        if self.network:
            self.network.create()
            controller, nodes = self.network.gateway, {n: self.network.address(n) for n in self.network.names}
            # 16 CPUs a node: the two-node jobs of the module (2 tasks a node each, 8 CPUs) all run
            # at once, a requeued one too
            sizes = "CPUs=16 RealMemory=16000"
        else:
            controller, nodes = "127.0.0.1", {host: "127.0.0.1"}
            # 32 CPUs whatever the machine has, so that every job of the module runs at once (they
            # ask for 20): a walltime job left pending behind slower ones (a loaded machine) would
            # start too late for its first warning and run into its time limit
            sizes = "CPUs=32 RealMemory=32000"
        r = self.root
        self.conf.write_text(
            f"""\
ClusterName=dd-test
SlurmctldHost={host}({controller})
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again 15 s later (default 120)
AuthInfo=socket={sock},cred_expire=15
StateSaveLocation={r}/state
# %n, the node's name: a slurmd starting kills the one named in its pid file ("killing old slurmd")
SlurmdSpoolDir={r}/spool-%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd-%n.log
# debug2 logs the time-limit pass the walltime jobs are submitted after
SlurmctldDebug=debug2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# start pending jobs (a requeued one) within a second, not at the next minute
SchedulerParameters=sched_interval=1
# scancel: SIGKILL 5 s after SIGTERM (default 30)
KillWait=5
# ended jobs stay in scontrol's records for the checks
MinJobAge=600
# the CPUs of the node lines, whatever the machine has
SlurmdParameters=config_overrides
"""
            + "".join(f"NodeName={n} NodeAddr={a} NodeHostname={n} {sizes} State=UNKNOWN\n" for n, a in nodes.items())
            + f"""\
PartitionName=test Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (r / "state").mkdir()
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for node in nodes:
            (r / f"spool-{node}").mkdir()
            slurmd = ["slurmd", "-D", "-f", str(self.conf), "-N", node]
            self._daemon(f"slurmd-{node}", self.network.command(node, *slurmd, hostname=True) if self.network else slurmd)

        def idle() -> bool:
            done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
            return done.stdout.split() == ["idle"] * len(nodes)

        self._until(idle, 30, "the nodes did not come up")

    def _daemon(self, name: str, command: list[str]) -> None:
        with open(self.root / f"{name}.out", "wb") as out:
            self.daemons.append(subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT))

    def _until(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what}; {self.root}:\n" + "\n".join(f"{p.name}: {p.read_text()[-2000:]}" for p in self.root.glob("*.out"))
                )
            time.sleep(0.2)

    def processes(self, *markers: str) -> list[psutil.Process]:
        """This cluster's processes whose environment also holds every ``NAME=value`` marker."""
        wanted = dict(m.split("=", 1) for m in (f"SLURM_CONF={self.conf}", *markers))
        found = []
        for process in psutil.process_iter():
            try:
                environ = process.environ()
            except (psutil.Error, OSError):
                continue
            if all(environ.get(k) == v for k, v in wanted.items()):
                found.append(process)
        return found

    def stop(self) -> None:
        """Cancels what is left, stops the daemons by their PIDs, then kills any process of this
        cluster still there (job steps outlive slurmd) and removes the nodes' namespaces."""
        if self.conf.exists():
            ids = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["scancel", *ids], env=self.env, capture_output=True)
                deadline = time.monotonic() + 20
                while (
                    time.monotonic() < deadline
                    and subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True).stdout.strip()
                ):
                    time.sleep(0.5)
        for daemon in reversed(self.daemons):
            daemon.terminate()
        for daemon in self.daemons:
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        ours = {p.pid for p in self.processes()}
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                # slurmstepd clears its environment, but keeps slurmd's log open
                if (
                    process.pid in ours
                    or (self.network and self.network.node_of(process.pid))
                    or any(f.path.startswith(f"{self.root}/") for f in process.open_files())
                ):
                    process.kill()
        if self.network:
            self.network.remove()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def submit(self, script: str, name: str, facts: Path, *options: str, program: Path = REACH, **env: object) -> Job:
        """sbatch from the repository root, as the scripts' headers say; the log in root."""
        job_tmp = self.root / f"{name}.tmp"
        job_tmp.mkdir()
        exports = {"PROGRAM": program, "FACTS": facts, "OUT": self.root / name, "VENV": VENV, "TMPDIR": job_tmp, **env}
        command = [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            f"--output={self.root}/{name}-%j.log",
            "--export=ALL," + ",".join(f"{k}={v}" for k, v in exports.items()),
            *options,
            f"deploy/slurm/{script}",
        ]
        done = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip().split(";")[0]
        out = self.root / name
        return Job(
            job_id, facts, out, self.root / f"{name}-{job_id}.log", job_tmp, Path(str(env.get("CHECKPOINT", out / "checkpoint")))
        )

    def show(self, job: Job) -> dict[str, str]:
        text = subprocess.run(["scontrol", "show", "job", job.id], env=self.env, capture_output=True, text=True).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job: Job, seconds: float) -> dict[str, str]:
        """The job's record once it ended and nothing of it runs any more."""
        deadline = time.monotonic() + seconds
        while True:
            record = self.show(job)
            live = subprocess.run(["squeue", "-h", "-j", job.id], env=self.env, capture_output=True, text=True).stdout.strip()
            if record.get("JobState") in FINAL and not live:
                return record
            if time.monotonic() > deadline:
                pytest.fail(f"job {job.id} still {record.get('JobState')} after {seconds} s; its log:\n{job.text()}")
            time.sleep(0.5)

    def after_time_limit_pass(self) -> None:
        """Returns right after slurmctld's next pass over its running jobs' time limits."""
        log = self.root / "slurmctld.log"
        deadline = time.monotonic() + 40
        with open(log) as f:
            f.seek(0, os.SEEK_END)
            while time.monotonic() < deadline:
                if TIME_LIMIT_PASS in f.read():
                    return
                time.sleep(0.1)
        pytest.fail(f"no {TIME_LIMIT_PASS!r} line in {log} for 40 s")


def _running(root: Path, network: Namespaces | None = None) -> Iterator[Slurm]:
    if not (VENV / "bin" / "dask-datalog").exists():
        pytest.skip(f"needs the installed command in {VENV}")
    _install_slurm()
    cluster = Slurm(root, network)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    yield from _running(tmp_path_factory.mktemp("slurm"))


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    """A second private SLURM: two nodes, dd-node1 and dd-node2, in namespaces of this machine."""
    yield from _running(tmp_path_factory.mktemp("slurm-two-nodes"), slurm_nodes(2))


def _chain_facts(root: Path, n: int) -> Path:
    facts = root / f"chain{n}"
    if not facts.exists():  # written once: jobs may be reading it
        facts.mkdir()
        np.savetxt(facts / "edge.facts", chain(n), fmt="%d", delimiter="\t")
    return facts


# Walltime jobs: REACH on a chain of n edges takes n iterations, and a checkpoint at every one
# (CHECKPOINT_EVERY=0) makes each cost what writing the relation does, so a run costs about n^3.
# n is chosen from a timed in-process run on a short chain so that the run takes 55 s by the n^3
# rule (about 45 s in fact: the short run's fixed costs count for more), about twice what the
# first start runs before its warning (2400 edges on the 2-core development machine).
#
# When: slurmctld looks at running jobs every 30 s and warns a job at the first look less than
# 30 s + N before its end (--signal=...@N): with a 1-minute limit and N=10, the first look 20 s
# or more after the job started. Submitted just after a look, the first start is warned at the
# next one, 30 s on; a requeued job starts again (cred_expire) 15-20 s after the look that
# warned it, and is warned at the second look after, 40 s on, when it has finished.
# The warning before the minute's limit (the scripts' own: 120 s). The single-node job's comes
# 20 s before: at 10 s, under the rest of the suite's load, the iteration in progress and its
# checkpoint once outlasted it and the limit cancelled the job before it requeued itself. The
# cluster job's stays at 10 s: each start spends seconds starting its cluster, and a warning at
# 20 s once came before a start's run began (nothing to checkpoint: the job failed).
WALLTIME = {
    "walltime-cluster": ("run-cluster.sbatch", "B:USR1@10", ["--ntasks=2"]),  # the scripts' own signal
    "walltime-single": ("run-single-node.sbatch", "B:TERM@20", []),
}
CALIBRATION = 1200  # edges: a few seconds


def _walltime_chain(slurm: Slurm) -> int:
    start = time.monotonic()
    done = cli(
        [
            REACH,
            "-F",
            _chain_facts(slurm.root, CALIBRATION),
            "-D",
            slurm.root / "calibration",
            "--no-cluster",
            "--checkpoint",
            slurm.scratch / "calibration",
            "--checkpoint-every",
            "0",
        ]
    )
    assert done.returncode == 0, done.stderr
    return round(CALIBRATION * (55 / (time.monotonic() - start)) ** (1 / 3))


@pytest.fixture(scope="module")
def jobs(slurm: Slurm) -> dict[str, Job]:
    """Every job of the module: they run side by side on the node, each test waits for its own."""
    facts = _chain_facts(slurm.root, _walltime_chain(slurm))  # first, on a quiet machine
    bad = slurm.root / "bad.dl"
    bad.write_text(REACH.read_text().replace("edge(y, z)", "edg(y, z)"))
    jobs = {
        "cluster": slurm.submit("run-cluster.sbatch", "cluster", CAL, "--nodes=1", "--ntasks=2"),
        "cluster-2": slurm.submit("run-cluster.sbatch", "cluster-2", CAL, "--ntasks-per-node=2", "--cpus-per-task=2"),
        "single": slurm.submit("run-single-node.sbatch", "single", CAL, "--cpus-per-task=2"),
        # Dask's info lines show each worker's memory limit: its share, from --mem-per-cpu
        "bad-cluster": slurm.submit(
            "run-cluster.sbatch", "bad-cluster", CAL, "--mem-per-cpu=1000", program=bad, DASK_LOGGING__DISTRIBUTED="info"
        ),
        "bad-cluster-mem": slurm.submit(
            "run-cluster.sbatch",
            "bad-cluster-mem",
            CAL,
            "--mem=3000",
            "--ntasks=3",
            program=bad,
            DASK_LOGGING__DISTRIBUTED="info",
        ),
        "bad-single": slurm.submit("run-single-node.sbatch", "bad-single", CAL, program=bad),
        "small-memory": slurm.submit("run-single-node.sbatch", "small-memory", CAL, "--mem=4"),  # MB
    }
    slurm.after_time_limit_pass()  # the first, 30 s after slurmctld started: the jobs above run meanwhile
    for name, (script, warning, options) in WALLTIME.items():
        jobs[name] = slurm.submit(
            script, name, facts, *options, "--time=1", f"--signal={warning}", CHECKPOINT=slurm.scratch / name, CHECKPOINT_EVERY=0
        )
    cancel = _chain_facts(slurm.root, 4000)  # minutes, checkpointing at every iteration
    jobs["cancel-cluster"] = slurm.submit("run-cluster.sbatch", "cancel-cluster", cancel, "--ntasks=2", CHECKPOINT_EVERY=0)
    jobs["cancel-single"] = slurm.submit("run-single-node.sbatch", "cancel-single", cancel, CHECKPOINT_EVERY=0)
    return jobs


def _reference(facts: Path, out: Path) -> bytes:
    """path.csv as an in-process run writes it."""
    done = cli([REACH, "-F", facts, "-D", out, "--no-cluster"])
    assert done.returncode == 0, done.stderr
    return (out / "path.csv").read_bytes()


def _no_scheduler_file(job: Job) -> None:
    left = [*job.tmp.glob("dask-scheduler-*"), *job.out.glob("scheduler*.json")]
    assert not left, f"left behind: {left}"


def _assert_clean_success(slurm: Slurm, job: Job, record: dict[str, str]) -> None:
    """Exit 0; the log ends with the command's summary and the script's line; no traceback, no
    Dask error, no cancelled or killed step."""
    log = job.text()
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    lines = log.splitlines()
    assert lines[-2].startswith("done: "), log
    assert lines[-1] == f"dask-datalog job {job.id}: done, outputs in {job.out} (exit status 0)", log
    for noise in ("Traceback", "CommClosedError", "ERROR", "WARNING", "CANCELLED", "Killed"):
        assert noise not in log, log
    assert not job.checkpoint.exists()
    _no_scheduler_file(job)
    assert not slurm.processes(f"SLURM_JOB_ID={job.id}")


def test_scancel_leaves_no_process_and_no_scheduler_file(slurm: Slurm, jobs: dict[str, Job]) -> None:
    cancel = [jobs["cancel-cluster"], jobs["cancel-single"]]
    deadline = time.monotonic() + 120
    waiting = list(cancel)
    while waiting:
        for job in list(waiting):
            assert time.monotonic() < deadline and slurm.show(job)["JobState"] in ("PENDING", "RUNNING"), job.text()
            if (job.checkpoint / "latest").exists():  # the run is evaluating: it checkpoints every iteration
                subprocess.run(["scancel", job.id], env=slurm.env, check=True)
                waiting.remove(job)
        time.sleep(0.1)
    for job in cancel:
        record = slurm.wait(job, 60)
        assert record["JobState"] == "CANCELLED" and record["Restarts"] == "0", job.text()
        assert not slurm.processes(f"SLURM_JOB_ID={job.id}")
        _no_scheduler_file(job)


def test_two_cluster_jobs_at_once_and_a_single_node_job(slurm: Slurm, jobs: dict[str, Job], tmp_path: Path) -> None:
    want = _reference(CAL, tmp_path / "want")
    records = {name: slurm.wait(jobs[name], 180) for name in ("cluster", "cluster-2", "single")}
    for name, record in records.items():
        _assert_clean_success(slurm, jobs[name], record)
        assert (jobs[name].out / "path.csv").read_bytes() == want
        assert (jobs[name].out / "stats.json").exists()
    first, second = records["cluster"], records["cluster-2"]
    assert first["StartTime"] < second["EndTime"] and second["StartTime"] < first["EndTime"], "the cluster jobs did not overlap"
    assert "2 worker(s)" in jobs["cluster"].text() and "2 worker(s)" in jobs["cluster-2"].text()


def test_a_bad_program_fails_the_job_with_one_line(slurm: Slurm, jobs: dict[str, Job]) -> None:
    for name in ("bad-cluster", "bad-cluster-mem", "bad-single"):
        job = jobs[name]
        record = slurm.wait(job, 180)
        log = job.text()
        assert record["JobState"] == "FAILED" and record["ExitCode"] == "1:0", log
        errors = re.findall(rf"^{re.escape(str(slurm.root / 'bad.dl'))}:\d+:\d+: error: .+$", log, re.M)
        assert len(errors) == 1, log
        assert "Traceback" not in CLOSED_COMM.sub("", log), log
        assert log.splitlines()[-1] == f"dask-datalog job {job.id}: failed (exit status 1): the error is above", log
        assert not slurm.processes(f"SLURM_JOB_ID={job.id}")
        _no_scheduler_file(job)


def test_the_jobs_memory_sizes_the_run(slurm: Slurm, jobs: dict[str, Job]) -> None:
    # a cluster worker's memory limit: its cores (1) times --mem-per-cpu=1000 (MiB); or its
    # node's --mem=3000 (MiB) over the node's 3 tasks
    for name, workers in (("bad-cluster", 1), ("bad-cluster-mem", 3)):
        log = jobs[name].text()
        assert len(re.findall(r"Memory: +0\.98 GiB", log)) == workers, log
        assert "each worker's memory limit: 1000 MiB" in log, log
    # the single-node run's budget: half of --mem=4, which REACH on cal outgrows
    job = jobs["small-memory"]
    record = slurm.wait(job, 180)
    log = job.text()
    assert record["JobState"] == "FAILED" and record["ExitCode"] == "1:0", log
    assert re.search(r"^error: out of memory budget: .* over the budget of 2\.0 MiB", log, re.M), log
    assert "Traceback" not in log, log


def test_walltime_checkpoints_requeues_and_resumes(slurm: Slurm, jobs: dict[str, Job], tmp_path: Path) -> None:
    want = _reference(jobs["walltime-single"].facts, tmp_path / "want")
    for name in WALLTIME:
        job = jobs[name]
        record = slurm.wait(job, 400)
        log = job.text()
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
        restarts = int(record["Restarts"])
        assert restarts >= 1, log
        assert log.count("(exit status 75); requeueing") == restarts, log
        assert log.count("resuming from") == restarts, log
        assert (job.out / "path.csv").read_bytes() == want
        assert not job.checkpoint.exists()
        lines = log.splitlines()
        assert lines[-2].startswith("done: ") and lines[-1].endswith("(exit status 0)"), log
        assert "Traceback" not in log and "CommClosedError" not in log and "STEP" not in log, log
        assert not slurm.processes(f"SLURM_JOB_ID={job.id}")


# The two-node jobs: run-cluster.sbatch with one worker per task, 2 tasks on each node; all run at
# once, each test waits for its own.
TWO_NODES = ("--nodes=2", "--ntasks-per-node=2")
# REACH on a chain of 800 edges with a checkpoint at every iteration: 800 iterations, about 7 s of
# run on 4 workers, time enough to pause it after its first checkpoint.
PAUSE_CHAIN = 800


@pytest.fixture(scope="module")
def two_node_jobs(two_nodes: Slurm) -> dict[str, Job]:
    slurm = two_nodes
    return {
        "cluster": slurm.submit("run-cluster.sbatch", "cluster", CAL, *TWO_NODES),
        # Dask's info lines: each worker's address, and its memory limit, its share of --mem (a node's)
        "cluster-mem": slurm.submit(
            "run-cluster.sbatch", "cluster-mem", CAL, *TWO_NODES, "--mem=2000", DASK_LOGGING__DISTRIBUTED="info"
        ),
        "cancel": slurm.submit("run-cluster.sbatch", "cancel", _chain_facts(slurm.root, 4000), *TWO_NODES, CHECKPOINT_EVERY=0),
        "pause": slurm.submit(
            "run-cluster.sbatch",
            "pause",
            _chain_facts(slurm.root, PAUSE_CHAIN),
            *TWO_NODES,
            CHECKPOINT=slurm.scratch / "pause",
            CHECKPOINT_EVERY=0,
        ),
    }


def _eventually(condition: Callable[[], bool], seconds: float = 10) -> bool:
    """Whether ``condition()`` holds within ``seconds``: a job's slurmstepd may still be exiting
    for a moment after squeue stopped listing the job."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _on_nodes(slurm: Slurm, job: Job) -> Counter[tuple[str | None, str]]:
    """The job's processes by node and kind: `dask worker` (a task's nanny), `slurmstepd` (whose
    environment is cleared, but whose name gives the job) or any other."""
    found: Counter[tuple[str | None, str]] = Counter()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if command[:1] == ["slurmstepd:"] or (command and command[0].startswith("slurmstepd: [")):
                if f"[{job.id}." in " ".join(command):
                    found[slurm.network.node_of(process.pid), "slurmstepd"] += 1
            elif process.environ().get("SLURM_JOB_ID") == job.id and process.environ().get("SLURM_CONF") == str(slurm.conf):
                kind = "dask worker" if command[1:3] == [str(VENV / "bin" / "dask"), "worker"] else "other"
                found[slurm.network.node_of(process.pid), kind] += 1
    return found


def test_two_nodes_scancel_leaves_no_process_on_either_node_and_a_paused_job_resumes(
    two_nodes: Slurm, two_node_jobs: dict[str, Job], tmp_path: Path
) -> None:
    slurm = two_nodes
    cancel, pause = two_node_jobs["cancel"], two_node_jobs["pause"]
    deadline = time.monotonic() + 120
    waiting = [cancel, pause]
    while waiting:
        for job in list(waiting):
            assert time.monotonic() < deadline and slurm.show(job)["JobState"] in ("PENDING", "RUNNING"), job.text()
            if not (job.checkpoint / "latest").exists():  # the run is evaluating once it is there
                continue
            if job is cancel:
                running = _on_nodes(slurm, job)
                assert running["dd-node1", "dask worker"] == running["dd-node2", "dask worker"] == 2, running
                assert running["dd-node1", "slurmstepd"] and running["dd-node2", "slurmstepd"], running
                subprocess.run(["scancel", job.id], env=slurm.env, check=True)
            else:  # as the time limit's warning does: to the batch shell alone
                subprocess.run(["scancel", "--batch", "--signal=USR1", job.id], env=slurm.env, check=True)
            waiting.remove(job)
        time.sleep(0.1)

    record = slurm.wait(cancel, 60)
    assert record["JobState"] == "CANCELLED" and record["Restarts"] == "0", cancel.text()
    assert _eventually(lambda: not _on_nodes(slurm, cancel)), _on_nodes(slurm, cancel)
    _no_scheduler_file(cancel)
    assert (cancel.checkpoint / "latest").exists()  # submitting the same command resumes from it

    want = _reference(pause.facts, tmp_path / "want")
    record = slurm.wait(pause, 180)
    log = pause.text()
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0" and record["Restarts"] == "1", log
    assert log.count(": 2 node(s), 4 worker(s); scheduler") == 2, log
    assert log.count("(exit status 75); requeueing") == 1 and log.count("resuming from") == 1, log
    assert (pause.out / "path.csv").read_bytes() == want
    assert not pause.checkpoint.exists()
    assert log.splitlines()[-1] == f"dask-datalog job {pause.id}: done, outputs in {pause.out} (exit status 0)", log
    assert "Traceback" not in log and "CommClosedError" not in log and "Killed" not in log, log
    assert _eventually(lambda: not _on_nodes(slurm, pause)), _on_nodes(slurm, pause)


def test_a_cluster_job_on_two_nodes(two_nodes: Slurm, two_node_jobs: dict[str, Job], tmp_path: Path) -> None:
    slurm = two_nodes
    want = _reference(CAL, tmp_path / "want")
    first, second = (slurm.network.address(n) for n in slurm.network.names)
    for name in ("cluster", "cluster-mem"):
        job = two_node_jobs[name]
        record = slurm.wait(job, 180)
        log = job.text()
        assert record["NodeList"] == "dd-node[1-2]", record
        assert re.search(
            rf"start 1: 2 node\(s\), 4 worker\(s\); scheduler tcp://{re.escape(first)}:\d+, .* of dd-node1$", log, re.M
        ), log
        assert "done: cluster (--scheduler), 4 workers," in log, log
        assert (job.out / "path.csv").read_bytes() == want
        assert _eventually(lambda job=job: not _on_nodes(slurm, job)), _on_nodes(slurm, job)
    _assert_clean_success(slurm, two_node_jobs["cluster"], slurm.show(two_node_jobs["cluster"]))

    # the workers' own lines: two on each node, each limited to its share, --mem=2000 (MiB) over
    # the 2 tasks of its node
    job = two_node_jobs["cluster-mem"]
    log = job.text()
    assert Counter(re.findall(r"Start worker at: +tcp://([\d.]+):", log)) == {first: 2, second: 2}, log
    assert "each worker's memory limit: 1000 MiB" in log, log
    assert len(re.findall(r"Memory: +0\.98 GiB", log)) == 4, log
    assert log.splitlines()[-1] == f"dask-datalog job {job.id}: done, outputs in {job.out} (exit status 0)", log
    quiet = CLOSED_COMM.sub("", log)
    for noise in ("Traceback", "CommClosedError", "ERROR", "WARNING", "CANCELLED", "Killed"):
        assert noise not in quiet, log


# -- the job service on an allocation (serve.sbatch) ------------------------------------------------


def _job_command(address: str, *args: object) -> subprocess.CompletedProcess[str]:
    """``dask-datalog job`` as its own process: each call connects anew (and disconnects)."""
    command = [sys.executable, "-m", "dask_datalog.cluster.cli", "job", "--address", address, "--token", "alice-token"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_the_service_on_an_allocation_runs_jobs_submitted_from_outside(slurm: Slurm, tmp_path: Path) -> None:
    """serve.sbatch: a cluster of 2 workers and the service beside its scheduler; a job
    submitted by one process, then followed by others (status, logs, result), gives the
    one-shot run's bytes; the time limit's warning stops the service, and the job, cleanly."""
    tokens = slurm.root / "service-tokens.json"
    tokens.write_text('{"tokens": {"alice-token": "alice"}, "admins": []}')
    job = slurm.submit("serve.sbatch", "serve", CAL, "--ntasks=2", STATE=slurm.root / "service", TOKEN_FILE=tokens, PORT=0)
    deadline = time.monotonic() + 180
    while not (found := re.search(r"the service is at (https?)://(\S+):(\d+);", job.text())):
        assert time.monotonic() < deadline and slurm.show(job)["JobState"] in ("PENDING", "RUNNING"), job.text()
        time.sleep(0.5)
    scheme, node, port = found.groups()
    assert (scheme, node) == ("http", socket.gethostname()), job.text()
    address = f"http://127.0.0.1:{port}"  # HOST 0.0.0.0: every interface
    assert f"export DASK_DATALOG_SERVICE=http://{node}:{port} DASK_DATALOG_TOKEN=<a token of {tokens}>" in job.text()

    submitted = _job_command(address, "submit", REACH, "-F", CAL)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    deadline = time.monotonic() + 180
    while (state := json.loads(_job_command(address, "status", job_id).stdout)["state"]) not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state == "SUCCEEDED", _job_command(address, "logs", job_id).stdout
    logs = _job_command(address, "logs", job_id).stdout.splitlines()
    assert logs[0] == f"submitted by alice: {REACH}" and logs[1] == "running on 2 workers", logs
    assert logs[-1].startswith("SUCCEEDED") and logs[-1].endswith("on 2 workers"), logs
    assert _job_command(address, "result", job_id, "path").stdout.encode() == _reference(CAL, tmp_path / "want")
    listed = _job_command(address, "list").stdout
    assert job_id in listed and "SUCCEEDED" in listed

    subprocess.run(["scancel", "--batch", "--signal=USR1", job.id], env=slurm.env, check=True)  # as the time limit warns
    record = slurm.wait(job, 120)
    log = job.text()
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    assert log.splitlines()[-1] == f"dask-datalog job {job.id}: the service stopped (exit status 0)", log
    for noise in ("Traceback", "CommClosedError", "ERROR", "CANCELLED", "Killed"):
        assert noise not in log, log
    assert not slurm.processes(f"SLURM_JOB_ID={job.id}")
    left = [*job.tmp.glob("dask-scheduler-*"), *job.tmp.glob("dask-datalog-serve-*")]
    assert not left, f"left behind: {left}"  # neither the scheduler file nor the service's line
