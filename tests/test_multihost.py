"""A real multi-host Dask cluster on one machine: three hosts, each a network namespace with its
own address on a veth whose other end is a port of a bridge of this machine. The head runs
`dask scheduler`, hosts 1 and 2 a `dask worker` each (nanny and worker process), and the
command runs here, on the bridge's own address, against `--scheduler tcp://<head>:<port>`; the
file system is shared, as a cluster's is. Checked:

- a run writes the bytes an in-process run writes, and its worker-to-worker rounds (the direct
  sockets of spmd/mesh.py) go host to host over the veths: host 1 has connections to host 2's
  address, and the bridge forwards megabytes between the workers' ports (about 9 MB), where the
  head sends them about 0.5 MB;
- host 2's link taken down mid-run (its veth's bridge end: a pulled cable, no FIN, no RST,
  the worker running on; after the run's first checkpoint): the job goes on, on host 1, from
  the latest checkpoint, and writes the same bytes; stderr holds the summary line alone,
  naming 1 worker, and --stats one recovery: host 2's worker, rank 1.

Nothing closes a connection when a link goes down, so only timeouts tell. The scheduler drops
the worker when the keepalive and TCP_USER_TIMEOUT that Dask sets on its connections
(`distributed.comm.timeouts.tcp`, default 30 s) give up, and the client counts a worker lost
when its heartbeats stopped for 30 s (SILENT_S), whichever comes first; `worker-ttl` (5 min) is
far later, and the mesh sockets (no keepalive) would wait for the kernel's retransmissions
(about 15 min), but the client stops the job on the survivor first. A retry then waits REJOIN_S
(10 s) for the lost worker to come back, and runs on the survivor from the inputs (or from the
latest checkpoint with --checkpoint). The cut worker, once its own keepalive gives up, closes
itself and its nanny. With the defaults a cut costs about 40 s plus the retry; here every
process of the cluster has `distributed.comm.timeouts.tcp` = 11 s (the least Dask accepts), so
it costs about 21 s, and the module takes about 40 s on the 2-core development machine.

Without root, or where the namespaces cannot be made, the module skips saying why. Teardown
(after a failure too) stops the processes it started by their PIDs (with their children),
kills by PID whatever still runs in the namespaces (`ip netns pids`: everything of the cluster
runs in one), then deletes the namespaces (their veths go with them), any veth left and the
bridge, and checks that nothing of them is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from netns import Namespaces
from test_cli import summary

ROOT = Path(__file__).resolve().parent.parent
REACH = ROOT / "examples" / "reach.dl"
VENV = Path(sys.executable).parent.parent
DASK, COMMAND = VENV / "bin" / "dask", VENV / "bin" / "dask-datalog"
# REACH on a chain of n edges takes n iterations and derives n(n+1)/2 paths: 2000 edges, about
# 4 s on two workers (2 million lines of path.csv). A chain of 10^5 edges would never end.
CHAIN = 2000
PATHS = CHAIN * (CHAIN + 1) // 2
# The least timeout Dask's keepalive set-up accepts (10 probes at least 1 s apart, after 1 s):
# the scheduler drops a worker it cannot reach this long after it last heard from it.
TCP_TIMEOUT_S = 11
REJOIN_S = 10  # spmd/options.py: a retry waits this long for the lost worker to come back
HEAD = 0  # the scheduler's host; workers on hosts 1 and 2


def until(condition: Callable[[], object], seconds: float, what: Callable[[], str] | str) -> object:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(what() if callable(what) else what)
        time.sleep(0.1)
    return value


def stop(processes: list[subprocess.Popen], grace: float = 5) -> None:
    """SIGTERM to each of ``processes`` at once, then SIGKILL, by PID, to whatever of them and
    of their children is left after ``grace`` (a nanny ends its worker process and resource
    tracker itself, unless it is killed first)."""
    tree: list[psutil.Process] = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(process.pid)
            tree += [parent, *parent.children(recursive=True)]
            parent.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    for process in processes:
        process.wait()


HOSTS = ("h0", "h1", "h2")  # the scheduler's, then the workers'


def counters(hosts: Namespaces) -> dict[str, int]:
    """Bytes through this machine's ends of the links: ``<veth>.rx`` what a host sent,
    ``<veth>.tx`` what it was sent; ``<bridge>.rx`` what this machine received from the hosts
    (not what the bridge forwards from port to port)."""
    found = {}
    for dev in (hosts.bridge, *map(hosts.veth, hosts.names)):
        for way in ("rx", "tx"):
            found[f"{dev}.{way}"] = int(Path(f"/sys/class/net/{dev}/statistics/{way}_bytes").read_text())
    return found


def connections(hosts: Namespaces, name: str) -> list[tuple[str, str]]:
    """Host ``name``'s established TCP connections, (local, peer) as `ss` prints them."""
    out = subprocess.run(hosts.command(name, "ss", "-tnH", "state", "established"), capture_output=True, text=True).stdout
    return [(f[-2], f[-1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 4]


class Cluster:
    """`dask scheduler` on the head, a `dask worker` (with its nanny) on each other host, each
    listening on and advertising its host's address (--host: the address the scheduler, the
    client and the other workers use), scratch space and logs in ``root``."""

    def __init__(self, root: Path, hosts: Namespaces):
        self.root, self.hosts = root, hosts
        self.scheduler_file = root / "scheduler.json"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: dict[int, str] = {}  # host -> worker address
        self.nannies: dict[int, str] = {}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": f"{TCP_TIMEOUT_S}s"}

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def _scheduler_written(self) -> bool:
        """Whether the scheduler file holds its JSON: distributed writes it in place, so it exists
        empty for a moment (a loaded machine's make test read it then: JSONDecodeError)."""
        try:
            return "address" in json.loads(self.scheduler_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    def start(self) -> None:
        self._start(
            "scheduler",
            self.hosts.command(
                HOSTS[HEAD],
                DASK,
                "scheduler",
                "--host",
                self.hosts.address(HOSTS[HEAD]),
                "--port",
                0,
                "--no-dashboard",
                "--scheduler-file",
                self.scheduler_file,
            ),
        )
        until(self._scheduler_written, 30, lambda: f"no scheduler file; {self.log('scheduler')}")
        workers = range(1, len(self.hosts.names))
        for i in workers:
            (self.root / f"worker{i}").mkdir()
            self._start(
                f"worker{i}",
                self.hosts.command(
                    HOSTS[i],
                    DASK,
                    "worker",
                    self.address,
                    "--host",
                    self.hosts.address(HOSTS[i]),
                    "--nthreads",
                    1,
                    "--no-dashboard",
                    "--local-directory",
                    self.root / f"worker{i}",
                ),
            )
        for i in workers:
            log = f"worker{i}"
            until(
                lambda log=log: "Registered to:" in self.log(log), 60, lambda log=log: f"{log} did not register: {self.log(log)}"
            )
            self.workers[i] = re.search(r"Start worker at: +(tcp://\S+)", self.log(log))[1]
            self.nannies[i] = re.search(r"Start Nanny at: +'(tcp://\S+)'", self.log(log))[1]

    def _start(self, name: str, command: list[str]) -> None:
        with open(self.root / f"{name}.log", "wb") as log:
            self.processes.append(
                subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            )

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(self, facts: Path, out: Path, *options: object) -> subprocess.Popen[str]:
        """The command against this cluster, from this machine (REACH)."""
        command = [COMMAND, "run", REACH, "-F", facts, "-D", out, "--scheduler", self.address, *options]
        return subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def mesh(self) -> list[tuple[str, str]]:
        """Host 1's connections with host 2 where neither end is a worker's or a nanny's port: a
        job's direct sockets (mesh.py), there while a phase runs. (Dask's own connections
        between the workers, to a worker's port, outlive the job that opened them.)"""
        dask = {a.removeprefix("tcp://") for a in (*self.workers.values(), *self.nannies.values())}
        peer = f"{self.hosts.address(HOSTS[2])}:"
        return [(a, b) for a, b in connections(self.hosts, HOSTS[1]) if b.startswith(peer) and a not in dask and b not in dask]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three hosts and the cluster on them, for the whole module: the test that cuts a host off
    comes last. Everything of it is removed after, whatever the tests did."""
    if not COMMAND.exists():
        pytest.skip(f"needs the installed command in {VENV}")
    hosts = Namespaces(HOSTS, prefix="ddmh", octet=78, tools=("ip", "nsenter", "ss"))
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), hosts)
    try:
        hosts.create()
        cluster.start()
        yield cluster
    finally:
        stop(cluster.processes[1:])  # the workers first: a nanny whose scheduler closes under it may wait for it
        stop(cluster.processes[:1])
        hosts.remove()
    assert not [p.pid for p in cluster.processes if psutil.pid_exists(p.pid)]
    assert until(lambda: not hosts.left(), 10, lambda: f"left behind: {hosts.left()}")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """facts/edge.facts, the chain; want/path.csv as an in-process run writes it."""
    base = tmp_path_factory.mktemp("multihost")
    (base / "facts").mkdir()
    (base / "facts" / "edge.facts").write_text("".join(f"{i}\t{i + 1}\n" for i in range(CHAIN)))
    done = subprocess.run(
        [str(COMMAND), "run", str(REACH), "-F", str(base / "facts"), "-D", str(base / "want"), "--no-cluster"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return base


def _finish(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The command's stdout and stderr; a hang fails the test (and kills it: the finally)."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the command hung for {timeout} s")


def test_a_job_on_two_hosts_exchanges_over_the_veths_and_writes_what_one_process_writes(cluster: Cluster, base: Path) -> None:
    hosts = cluster.hosts
    for i in (1, 2):
        assert cluster.workers[i].startswith(f"tcp://{hosts.address(HOSTS[i])}:") and cluster.nannies[i].startswith(
            f"tcp://{hosts.address(HOSTS[i])}:"
        )
    before = counters(hosts)
    process = cluster.run(base / "facts", base / "out")
    try:
        until(lambda: cluster.mesh() or process.poll() is not None, 30, "no connection from host 1 to host 2")
        assert process.poll() is None, "the job ended before its workers connected to each other"
        stdout, stderr = _finish(process, 120)
    finally:
        stop([process])
    after = counters(hosts)
    assert process.returncode == 0, stderr
    assert re.fullmatch(summary("cluster", 2), stderr), stderr
    assert stdout == f"path\t{PATHS}\n"
    assert (base / "out" / "path.csv").read_bytes() == (base / "want" / "path.csv").read_bytes()
    # What the workers sent, less all that went to the head or to this machine: at least what
    # went from worker to worker (about 8.6 MB of 9.6 MB), where the head sent about 0.5 MB.
    delta = {k: after[k] - before[k] for k in after}
    sent = delta[f"{hosts.veth(HOSTS[1])}.rx"] + delta[f"{hosts.veth(HOSTS[2])}.rx"]
    worker_to_worker = sent - delta[f"{hosts.veth(HOSTS[HEAD])}.tx"] - delta[f"{hosts.bridge}.rx"]
    assert worker_to_worker > 2_000_000, delta
    assert worker_to_worker > 5 * delta[f"{hosts.veth(HOSTS[HEAD])}.rx"], delta


def test_a_host_cut_off_mid_run_costs_a_retry_not_the_answer(cluster: Cluster, base: Path) -> None:
    hosts = cluster.hosts
    out, stats, checkpoints = base / "out-cut", base / "stats.json", base / "checkpoints"
    process = cluster.run(base / "facts", out, "--stats", stats, "--checkpoint", checkpoints, "--checkpoint-every", 0.2)
    try:
        # The first checkpoint says the fixpoint (about 3 s on two workers) is under way: on a
        # loaded machine a fixed delay after the mesh connected has cut only after the job ended.
        until(lambda: (checkpoints / "latest").exists() or process.poll() is not None, 60, "no checkpoint")
        assert process.poll() is None, "the job ended before the cut"
        hosts.link(HOSTS[2], "down")
        cut = time.monotonic()
        stdout, stderr = _finish(process, 120)
        ended = time.monotonic()
    finally:
        stop([process])
    assert process.returncode == 0, stderr
    assert re.fullmatch(summary("cluster", 1), stderr), stderr  # nothing but the summary: on host 1 alone
    assert stdout == f"path\t{PATHS}\n"
    assert (out / "path.csv").read_bytes() == (base / "want" / "path.csv").read_bytes()
    recoveries = json.loads(stats.read_text())["recoveries"]
    assert json.loads(stats.read_text())["resumed_from"] is not None
    assert [(r["lost"], r["rank"], r["attempt"], r["workers"]) for r in recoveries] == [(cluster.workers[2], 1, 1, 1)], recoveries
    assert re.fullmatch(r"during stratum 0, after iteration \d+|while writing the outputs", recoveries[0]["where"]), recoveries
    # The scheduler dropped host 2's worker when its keepalive gave up (not the client's 30 s
    # heartbeat check), the retry waited for it to come back, then ran again on host 1.
    removed = re.search(rf"Remove worker addr: {re.escape(cluster.workers[2])}", cluster.log("scheduler"))
    assert removed, cluster.log("scheduler")
    assert TCP_TIMEOUT_S - 1 + REJOIN_S < ended - cut < TCP_TIMEOUT_S + REJOIN_S + 20, (ended - cut, recoveries)
    # Its own keepalive gave up too: the worker closed, and its nanny with it.
    until(lambda: "Closing Nanny gracefully" in cluster.log("worker2"), 10, lambda: cluster.log("worker2"))
