"""The job service (cluster/service/), layer by layer: the store and the queue without HTTP, the
REST app through FastAPI's test client on an in-process cluster, then end to end with a real
``dask-datalog serve`` subprocess on loopback with its embedded cluster.

Results are compared with the one-shot ``dask-datalog run`` (its ``main``, in this process) on the
same program and facts. The only time bound is a stop's, with its slack said where it is."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient

from dask_datalog.cluster.api import Program
from dask_datalog.cluster.cli.main import main
from dask_datalog.cluster.runtime.plugin import PLUGIN_NAME
from dask_datalog.cluster.service import runner
from dask_datalog.cluster.service.app import create_app
from dask_datalog.cluster.service.auth import Roots, Tokens
from dask_datalog.cluster.service.client import ServiceClient, ServiceError
from dask_datalog.cluster.service.jobs import JobService
from dask_datalog.cluster.service.queue import JobQueue, Stop
from dask_datalog.cluster.service.store import JobRecord, JobStore, State
from dask_datalog.engine.checkpoint import Checkpoints
from dask_datalog.engine.errors import ClusterError, Terminated
from dask_datalog.spmd.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLI = [sys.executable, "-m", "dask_datalog.cluster.cli"]
# One tuple per iteration for 10^8 iterations: runs far longer than any test, until it is stopped.
COUNT = ".decl n(x: number)\n.output n\nn(0).\nn(x + 1) :- n(x), x < 100000000.\n"
BAD = ".decl a(x: number)\n.output a\na(x) :- b(x).\n"
TOKENS = {"tokens": {"alice-token": "alice", "bob-token": "bob", "root-token": "root"}, "admins": ["root"]}
# A stop is seen by the coordinator at its next check (every 0.5 s, coordinator.WATCH_S), then one
# abort round trip to the workers and their release: about 0.3 s measured. 3 s leaves room for
# a loaded 2-core machine without hiding a stop that waits for the run's end (minutes here).
STOP_BOUND_S = 3.0


def until(ready: Any, what: str, limit_s: float = 60.0) -> None:
    """Poll ``ready()`` until true; a test that waits for what never comes fails saying what."""
    deadline = time.monotonic() + limit_s
    while not ready():
        assert time.monotonic() < deadline, f"waited {limit_s:g} s for {what}"
        time.sleep(0.02)


def one_shot(program: Path, facts: Path, out: Path, *extra: str) -> Path:
    """The outputs of ``dask-datalog run`` for the same program and facts."""
    assert main(["run", str(program), "-F", str(facts), "-D", str(out), "--no-cluster", "--quiet", *extra]) == 0
    return out


def uploads(folder: Path) -> dict[str, str]:
    return {f.name: base64.b64encode(f.read_bytes()).decode() for f in folder.iterdir()}


def test_the_run_apis_stop_ends_a_run_in_process_too() -> None:
    """``RunOptions.stop``, the service's stop, is the run API's: it also stops a run here."""
    stop = threading.Event()

    def on_iteration(stratum: int, iteration: int, delta: dict[str, int]) -> None:
        if iteration == 5:
            stop.set()

    with pytest.raises(Terminated, match="stopped on request"):
        Program(COUNT).run(on_iteration=on_iteration, options=RunOptions(stop=stop))


# -- the store and the queue, no HTTP, no cluster ------------------------------------------------------


def record(job: str, state: State = State.PENDING) -> JobRecord:
    return JobRecord(job, "alice", "p.dl", "digest", {"program": "", "fact_dir": "/f"}, state=state)


def test_the_store_keeps_records_and_logs_and_recovers_after_a_restart(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    for job, state in (("a", State.SUCCEEDED), ("b", State.RUNNING), ("c", State.PENDING), ("d", State.RUNNING)):
        store.insert(record(job, state))
    store.update("a", iterations=7, tuples=42, results={"path": {"path": "/o/path.csv", "format": "csv"}})
    for k in range(5):
        store.log("a", f"line {k}")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()

    again = JobStore(tmp_path / "jobs.sqlite")
    a = again.get("a")
    assert a is not None and (a.state, a.iterations, a.tuples) == (State.SUCCEEDED, 7, 42)
    assert a.results == {"path": {"path": "/o/path.csv", "format": "csv"}}
    assert again.logs("a", 1, 2) == ["line 1", "line 2"]
    failed, pending = again.recover(lambda r: "(stratum 1, after iteration 3)" if r.id == "d" else None)
    assert (failed, pending) == (["b"], ["c", "d"])  # d had checkpointed: it resumes
    b = again.get("b")
    assert b is not None and b.state is State.FAILED and "the service stopped while the job ran" in (b.error or "")
    assert again.logs("b")[-1].startswith("FAILED: the service stopped")
    d = again.get("d")
    assert d is not None and d.state is State.PENDING and d.arguments["resume"] is True
    assert again.logs("d")[-1].endswith("to resume from its checkpoint (stratum 1, after iteration 3)")
    assert [r.id for r in again.select(owner="alice")] == ["a", "b", "c", "d"]


LOST = ClusterError("the Dask cluster has no workers (yet): start some, or wait for them to join")


def run_on_a_lost_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, signalled: bool, stopped_after_s: float | None, grace_s: float
) -> JobRecord:
    """The job's record once ``run_job`` ended it, its run raising what a lost cluster raises
    (no cluster here), the cluster having had ``workers`` when the job went to it, the service
    ``signalled`` or not, and its stop requested ``stopped_after_s`` after the run ended
    (0: before it ended; None: never), with ``grace_s`` for ``SHUTDOWN_GRACE_S``."""
    stop = Stop()
    later = threading.Timer(stopped_after_s or 0.0, stop.request, ("stopped: the service shut down",))

    def lost_cluster(self: Program, **_: object) -> None:
        if stopped_after_s is not None:
            later.start()
            if not stopped_after_s:
                later.join()  # the stop came before the run's end
        raise LOST

    monkeypatch.setattr(Program, "run", lost_cluster)
    monkeypatch.setattr(runner.dask_adapter, "scheduler_workers", lambda client: {f"tcp://w{k}": {} for k in range(workers)})
    monkeypatch.setattr(runner, "SHUTDOWN_GRACE_S", grace_s)
    store = JobStore(tmp_path / "jobs.sqlite")
    job = JobRecord("j", "alice", "p.dl", "digest", {"program": COUNT, "fact_dir": str(tmp_path), "output_dir": str(tmp_path)})
    store.insert(job)
    shutdown = threading.Event()
    if signalled:
        shutdown.set()
    try:
        runner.run_job(job, None, store, tmp_path, stop, lambda *_: None, shutdown)
    finally:
        later.cancel()
    ended = store.get("j")
    assert ended is not None
    return ended


@pytest.mark.parametrize("stopped_after_s", [None, 0.0, 0.3])
def test_a_job_whose_cluster_went_with_the_shutdown_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_after_s: float | None
) -> None:
    """A signal to the service's process group reaches the embedded cluster's workers at once,
    and the service asks its jobs to stop only after its HTTP server shut down: a job whose
    run ends on the lost cluster is STOPPED if that stop comes (before or after), FAILED with the
    cluster's error if none does. Here the job went to the cluster once the signal had taken its
    workers (a small job moved from the service's process), as a loaded make test saw."""
    ended = run_on_a_lost_cluster(tmp_path, monkeypatch, 0, True, stopped_after_s, 2.0)
    if stopped_after_s is None:
        assert (ended.state, ended.error) == (State.FAILED, str(LOST))
    else:
        assert (ended.state, ended.error) == (State.STOPPED, "stopped: the service shut down")


@pytest.mark.parametrize("workers", [0, 1])
def test_without_a_signal_only_a_job_whose_cluster_had_workers_waits_for_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """The service had no signal. A job that went to a cluster with no workers is FAILED at once
    (no shutdown took them: a service whose workers never joined holds no job for the grace),
    before a stop that comes 10 s later, well within the 60 s grace; one whose cluster had
    workers to lose waits for the stop (the signal may be on its way) and is STOPPED."""
    ended = run_on_a_lost_cluster(tmp_path, monkeypatch, workers, False, 0.2 if workers else 10.0, 60.0)
    if workers:
        assert (ended.state, ended.error) == (State.STOPPED, "stopped: the service shut down")
    else:
        assert (ended.state, ended.error) == (State.FAILED, str(LOST))


def test_the_signal_that_stops_serves_server_marks_the_service_signalled() -> None:
    """serve's server sets the service's ``signalled`` in uvicorn's own handler of the SIGTERM
    that stops it, before it stops its jobs (what runner.SHUTDOWN_GRACE_S waits on)."""
    import uvicorn

    from dask_datalog.cluster.service.server import _signalled_server

    signalled = threading.Event()
    server = _signalled_server(uvicorn.Config(app=None), signalled)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # uvicorn raises it again once done, as serve has it
    try:
        with server.capture_signals():
            assert not signalled.is_set()
            signal.raise_signal(signal.SIGTERM)
            assert signalled.is_set() and server.should_exit
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_queue_runs_at_most_its_limit_in_fifo_order_and_stops_queued_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    lock = threading.Lock()
    started: list[str] = []
    running: set[str] = set()
    most = [0]
    release = {job: threading.Event() for job in "abcde"}

    def runner(job: JobRecord, stop: Stop) -> None:
        with lock:
            started.append(job.id)
            running.add(job.id)
            most[0] = max(most[0], len(running))
        store.update(job.id, state=State.RUNNING)
        while not (release[job.id].wait(0.01) or stop.is_set()):
            pass
        with lock:
            running.discard(job.id)
        store.update(job.id, state=State.STOPPED if stop.is_set() else State.SUCCEEDED)

    queue = JobQueue(store, runner, max_jobs=2)
    for job in "abcde":
        store.insert(record(job))
        queue.submit(job)
    assert started == ["a", "b"]
    assert queue.stop("c")  # queued: stopped at once, never started
    c = store.get("c")
    assert c is not None and c.state is State.STOPPED
    assert queue.stop("a")  # running: asked to stop
    for job in "bde":
        until(lambda job=job: job in started, f"job {job} to start")
        release[job].set()
    until(lambda: not queue.running, "the jobs to end")
    queue.close()
    assert started == ["a", "b", "d", "e"] and most[0] == 2
    assert [store.get(j).state for j in "abde"] == [State.STOPPED, State.SUCCEEDED, State.SUCCEEDED, State.SUCCEEDED]  # type: ignore[union-attr]
    assert not queue.stop("b")  # final: nothing to stop


# -- the REST app through the test client, jobs on an in-process cluster ---------------------------------


@pytest.fixture(scope="module")
def cluster_client() -> Iterator[Client]:
    """Worker processes, as ``serve`` starts them. Not threads: an in-process worker's profiler
    calls ``sys._current_frames``, which on CPython 3.11 deadlocked with distributed's gc
    callback and the threads the test client starts per request (seen once in a few runs)."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roots")


@pytest.fixture(scope="module")
def app(cluster_client: Client, roots: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, JobService]]:
    service = JobService(tmp_path_factory.mktemp("state"), cluster_client, max_jobs=2, roots=Roots([roots]))
    tokens = Tokens(TOKENS["tokens"], set(TOKENS["admins"]))  # type: ignore[arg-type]
    yield TestClient(create_app(service, tokens, max_request_bytes=2**20)), service
    service.close()


def call(http: TestClient, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.request(method, path, headers=headers, **kwargs)


def submit(http: TestClient, token: str, **body: Any) -> str:
    response = call(http, token, "POST", "/api/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait(http: TestClient, token: str, job: str, states: tuple[str, ...] = ("STOPPED", "SUCCEEDED", "FAILED")) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(call(http, token, "GET", f"/api/jobs/{job}").json())
        return found["state"] in states

    until(reached, f"job {job} to be {' or '.join(states)}")
    return found


def stop_all(http: TestClient, jobs: list[str]) -> None:
    for job in jobs:
        call(http, "root-token", "POST", f"/api/jobs/{job}/stop")
    for job in jobs:
        wait(http, "root-token", job)


def test_a_job_gives_the_one_shot_runs_outputs_with_its_log_paged_and_streamed(
    app: tuple[TestClient, JobService], tmp_path: Path
) -> None:
    http, _ = app
    facts = EXAMPLES / "facts" / "reach"
    job = submit(http, "alice-token", program=(EXAMPLES / "reach.dl").read_text(), program_name="reach.dl", facts=uploads(facts))
    done = wait(http, "alice-token", job)
    assert done["state"] == "SUCCEEDED" and done["error"] is None and done["owner"] == "alice"
    expected = one_shot(EXAMPLES / "reach.dl", facts, tmp_path / "cli") / "path.csv"
    got = call(http, "alice-token", "GET", f"/api/jobs/{job}/results/path")
    assert got.status_code == 200 and got.content == expected.read_bytes()
    assert done["tuples"] == len(expected.read_text().splitlines()) and done["iterations"] >= 1

    page = call(http, "alice-token", "GET", f"/api/jobs/{job}/logs").json()
    lines = page["lines"]
    assert lines[0] == "submitted by alice: reach.dl" and lines[-1].startswith("SUCCEEDED") and page["final"]
    assert any(re.match(r"stratum 1/1  iteration \d+", line) for line in lines)  # the run's per-iteration progress
    assert "path\t16" in lines  # .printsize goes to the log
    second = call(http, "alice-token", "GET", f"/api/jobs/{job}/logs", params={"offset": 1, "limit": 1}).json()
    assert second == {"lines": [lines[1]], "next": 2, "final": True}
    streamed = call(http, "alice-token", "GET", f"/api/jobs/{job}/logs/stream", params={"offset": 1})
    assert streamed.text.splitlines() == lines[1:]
    assert (
        call(http, "alice-token", "GET", f"/api/jobs/{job}/results/path", params={"format": "parquet"}).status_code == 200
    )  # converted
    assert call(http, "alice-token", "GET", f"/api/jobs/{job}/results/edge").status_code == 404


def test_paths_under_the_roots_and_parquet_results(app: tuple[TestClient, JobService], roots: Path) -> None:
    http, _ = app
    facts = roots / "sg-facts"
    shutil.copytree(EXAMPLES / "facts" / "sg", facts, dirs_exist_ok=True)
    program = (EXAMPLES / "sg.dl").read_text()
    job = submit(http, "bob-token", program=program, fact_dir=str(facts), output_dir=str(roots / "sg-out"), format="parquet")
    assert wait(http, "bob-token", job)["state"] == "SUCCEEDED"
    got = call(http, "bob-token", "GET", f"/api/jobs/{job}/results/sg", params={"format": "parquet"})
    assert got.status_code == 200
    (roots / "sg.parquet").write_bytes(got.content)
    expected = Program(program).run(fact_dir=facts).pandas("sg")
    table = pq.read_table(roots / "sg.parquet").to_pandas()
    assert table.sort_values(list(table.columns)).reset_index(drop=True).equals(expected.reset_index(drop=True))
    assert (roots / "sg-out" / "sg").is_dir()  # written where the request said
    shutil.rmtree(roots / "sg-out")
    gone = call(http, "bob-token", "GET", f"/api/jobs/{job}/results/sg")
    assert gone.status_code == 410 and "is no longer there" in gone.json()["detail"]


def test_tokens_and_owners(app: tuple[TestClient, JobService]) -> None:
    http, _ = app
    missing = call(http, None, "GET", "/api/jobs")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert call(http, "wrong", "GET", "/api/jobs").status_code == 401
    assert call(http, None, "POST", "/api/jobs", json={"program": COUNT}).status_code == 401
    job = submit(http, "alice-token", program=COUNT)
    for method, path in (("GET", ""), ("POST", "/stop"), ("GET", "/logs"), ("GET", "/logs/stream"), ("GET", "/results/n")):
        assert call(http, "bob-token", method, f"/api/jobs/{job}{path}").status_code == 404, path  # invisible to bob
    assert job not in [j["id"] for j in call(http, "bob-token", "GET", "/api/jobs").json()]
    assert job in [j["id"] for j in call(http, "root-token", "GET", "/api/jobs").json()]
    assert call(http, "alice-token", "GET", "/api/jobs/nosuchjob").status_code == 404
    assert call(http, "root-token", "POST", f"/api/jobs/{job}/stop").status_code == 200  # the admin can
    assert wait(http, "alice-token", job)["state"] == "STOPPED"


def test_paths_outside_the_roots_are_refused(app: tuple[TestClient, JobService], roots: Path, tmp_path: Path) -> None:
    http, service = app
    (roots / "escape").symlink_to(tmp_path)
    for body in (
        {"fact_dir": "/etc"},
        {"output_dir": str(tmp_path)},
        {"fact_dir": str(roots / "escape")},
        {"fact_dir": f"{roots}/../x"},
    ):
        refused = call(http, "alice-token", "POST", "/api/jobs", json={"program": COUNT, **body})
        assert refused.status_code == 403 and "outside the service's roots" in refused.json()["detail"], body
    # A program naming a file outside the roots fails its job with the reason.
    sneaky = '.decl e(x: symbol)\n.input e(filename="/etc/hostname")\n.output e\n'
    failed = wait(http, "alice-token", submit(http, "alice-token", program=sneaky))
    assert failed["state"] == "FAILED" and failed["error"].startswith("error: the fact file of e /etc/hostname is outside")
    # Nor may it read another job's folder (uploads, outputs): only its own is a root.
    other = submit(http, "bob-token", program=".decl e(x: number)\n.output e\ne(1).\n")
    wait(http, "bob-token", other)
    prying = f'.decl e(x: number)\n.input e(filename="{service.jobs_dir / other}/out/e.csv")\n.output e\n'
    failed = wait(http, "alice-token", submit(http, "alice-token", program=prying))
    assert failed["state"] == "FAILED" and "is outside the service's roots" in failed["error"]
    # And #include would read the service's files: refused at submission.
    included = call(http, "alice-token", "POST", "/api/jobs", json={"program": '#include "/etc/hostname"\n'})
    assert included.status_code == 400 and "#include" in included.json()["detail"]


def test_bad_requests_are_refused_with_their_status(app: tuple[TestClient, JobService]) -> None:
    http, service = app
    before = len(service.store.select())
    big = {"program": COUNT, "facts": {"edge.facts": base64.b64encode(b"1\t2\n" * 300_000).decode()}}
    too_large = call(http, "alice-token", "POST", "/api/jobs", json=big)
    assert too_large.status_code == 413 and "limit of 1048576 bytes" in too_large.json()["detail"]
    chunked = call(http, "alice-token", "POST", "/api/jobs", content=iter([b'{"program": "', b"x" * 2**20, b'"}']))
    assert chunked.status_code == 413  # no Content-Length: counted as the body arrives
    assert call(http, "alice-token", "POST", "/api/jobs", json={"program": COUNT, "facts": {"../e.facts": ""}}).status_code == 400
    assert (
        call(http, "alice-token", "POST", "/api/jobs", json={"program": COUNT, "facts": {"e": "not base64!"}}).status_code == 400
    )
    assert call(http, "alice-token", "POST", "/api/jobs", json={"program": COUNT, "retries": -1}).status_code == 422
    assert call(http, "alice-token", "POST", "/api/jobs", content=b"{not json").status_code == 422
    assert len(service.store.select()) == before  # nothing refused left a record


def test_a_bad_program_fails_its_job_with_the_one_line_error_and_the_service_goes_on(app: tuple[TestClient, JobService]) -> None:
    http, _ = app
    failed = wait(http, "alice-token", submit(http, "alice-token", program=BAD, program_name="bad.dl"))
    assert failed["state"] == "FAILED" and failed["error"] == "bad.dl:3:9: error: undeclared relation b"
    assert call(http, "alice-token", "GET", f"/api/jobs/{failed['id']}/logs").json()["lines"][-1] == f"FAILED: {failed['error']}"
    after = wait(http, "alice-token", submit(http, "alice-token", program=".decl a(x: number)\n.output a\na(1).\n"))
    assert after["state"] == "SUCCEEDED"


def test_stop_ends_a_running_job_within_a_second_and_frees_its_workers(
    app: tuple[TestClient, JobService], cluster_client: Client
) -> None:
    http, _ = app
    job = submit(http, "alice-token", program=COUNT)
    until(lambda: call(http, "alice-token", "GET", f"/api/jobs/{job}").json()["iterations"] >= 20, "20 iterations")
    start = time.monotonic()
    assert call(http, "alice-token", "POST", f"/api/jobs/{job}/stop").status_code == 200
    stopped = wait(http, "alice-token", job)
    took = time.monotonic() - start
    assert stopped["state"] == "STOPPED" and stopped["error"] == "stopped on request"
    assert took < STOP_BOUND_S, took  # about 0.3 s measured; the bound's slack is said at STOP_BOUND_S

    def held(dask_worker: Any) -> tuple[tuple[str, ...], int]:
        return tuple(dask_worker.plugins[PLUGIN_NAME].runs), len(dask_worker.data)

    assert set(cluster_client.run(held).values()) == {((), 0)}  # no run state, no shard left


def test_a_wait_for_a_jobs_end_is_answered_at_its_end(app: tuple[TestClient, JobService]) -> None:
    http, _ = app
    job = submit(http, "alice-token", program=COUNT)
    early = call(http, "alice-token", "GET", f"/api/jobs/{job}", params={"wait": 0.2})
    assert early.status_code == 200 and early.json()["state"] in ("PENDING", "RUNNING")  # the wait ran out first
    stopper = threading.Timer(0.5, lambda: call(http, "root-token", "POST", f"/api/jobs/{job}/stop"))
    stopper.start()
    start = time.monotonic()
    ended = call(http, "alice-token", "GET", f"/api/jobs/{job}", params={"wait": 60})
    took = time.monotonic() - start
    stopper.join()
    # One request, answered by the job's end, not by its wait running out: not a speed bound.
    assert ended.json()["state"] == "STOPPED" and took < 30, took
    assert call(http, "alice-token", "GET", f"/api/jobs/{job}", params={"wait": 61}).status_code == 422


def test_small_jobs_run_in_the_services_process_and_a_long_one_moves_to_the_cluster(
    cluster_client: Client, tmp_path: Path
) -> None:
    """``serve``'s embedded-cluster service (``local_below``): a tiny job runs in its process to
    the one-shot run's outputs; one still running past the budget goes on on the cluster."""
    service = JobService(tmp_path / "state", cluster_client, max_jobs=2, roots=Roots([]), local_below=2**20)
    http = TestClient(create_app(service, Tokens({"alice-token": "alice"}, set()), max_request_bytes=2**20))
    try:
        facts = EXAMPLES / "facts" / "reach"
        job = submit(http, "alice-token", program=(EXAMPLES / "reach.dl").read_text(), facts=uploads(facts))
        assert wait(http, "alice-token", job)["state"] == "SUCCEEDED"
        expected = one_shot(EXAMPLES / "reach.dl", facts, tmp_path / "cli") / "path.csv"
        assert call(http, "alice-token", "GET", f"/api/jobs/{job}/results/path").content == expected.read_bytes()
        lines = call(http, "alice-token", "GET", f"/api/jobs/{job}/logs").json()["lines"]
        assert lines[1] == "running in the service's process (a small job)"
        assert lines[-1].startswith("SUCCEEDED in ") and lines[-1].endswith(" s in the service's process")

        long = submit(http, "alice-token", program=COUNT)  # no facts, but 10^8 iterations

        def moved() -> bool:
            return any(re.fullmatch(r"running on \d+ workers", line) for line in service.store.logs(long))

        until(moved, "the long job to move to the cluster")
        lines = service.store.logs(long)
        assert lines[1] == "running in the service's process (a small job)"
        assert "still running after 0.5 s in the service's process: moved to the cluster" in lines
        call(http, "alice-token", "POST", f"/api/jobs/{long}/stop")
        assert wait(http, "alice-token", long)["state"] == "STOPPED"
    finally:
        service.close()


def test_jobs_beyond_the_limit_wait_their_turn(app: tuple[TestClient, JobService]) -> None:
    http, _ = app
    jobs = [submit(http, "alice-token", program=COUNT) for _ in range(3)]
    try:
        for job in jobs[:2]:
            wait(http, "alice-token", job, states=("RUNNING",))
        assert call(http, "alice-token", "GET", f"/api/jobs/{jobs[2]}").json()["state"] == "PENDING"  # the limit is 2
        call(http, "alice-token", "POST", f"/api/jobs/{jobs[0]}/stop")
        assert wait(http, "alice-token", jobs[2], states=("RUNNING",))["state"] == "RUNNING"  # next in the queue
    finally:
        stop_all(http, jobs)


def test_the_openapi_description_covers_the_api(app: tuple[TestClient, JobService]) -> None:
    http, _ = app
    schema = call(http, None, "GET", "/openapi.json").json()
    assert {
        "/api/jobs",
        "/api/jobs/{job}",
        "/api/jobs/{job}/stop",
        "/api/jobs/{job}/logs",
        "/api/jobs/{job}/logs/stream",
        "/api/jobs/{job}/results/{relation}",
    } <= set(schema["paths"])
    assert "SubmitRequest" in schema["components"]["schemas"]


def test_the_commands_say_what_is_wrong_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["job", "--address", "http://127.0.0.1:9", "--token", "t", "list"]) == 1
    assert re.fullmatch(r"error: cannot reach the job service at http://127.0.0.1:9: .*\n", capsys.readouterr().err)
    (tmp_path / "tokens.json").write_text("{}")
    assert main(["serve", "--token-file", str(tmp_path / "tokens.json"), "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: token file {tmp_path / 'tokens.json'}: ")
    for argv in (["job", "submit", "p.dl", "-D", "out"], ["serve", "--max-jobs", "0"], ["serve", "--max-request-size", "big"]):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2, argv


# -- end to end: `dask-datalog serve` and `dask-datalog job` as processes ----------------------------------


class Served:
    """A ``dask-datalog serve`` in its own process group (its embedded cluster's workers too)."""

    def __init__(self, state: Path, roots: Path, *extra: str):
        (state / "tokens.json").parent.mkdir(parents=True, exist_ok=True)
        (state / "tokens.json").write_text(json.dumps(TOKENS))
        command = [*CLI, "serve", "--port", "0", "--workers", "1", "--state-dir", str(state), "--root", str(roots), *extra]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"at (https?://\S+) on", line)
        assert match, (line, self.process.stderr.read() if self.process.poll() is not None else "")  # type: ignore[union-attr]
        self.address = match.group(1)
        self.scheduler = line.split(" workers (", 1)[1].split(")", 1)[0]  # the cluster's scheduler address

    def kill(self, sig: int = signal.SIGKILL) -> int:
        os.killpg(self.process.pid, sig)
        return self.process.wait(30)


def cli(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DASK_DATALOG_SERVICE": served.address, "DASK_DATALOG_TOKEN": "alice-token"}
    return subprocess.run([*CLI, "job", *args], capture_output=True, text=True, env=env, timeout=120)


def test_serve_and_the_job_commands_end_to_end_then_a_restart_keeps_every_record(tmp_path: Path) -> None:
    state, roots = tmp_path / "state", tmp_path / "roots"
    roots.mkdir()
    served = Served(state, roots)
    try:
        facts = ROOT / "tests" / "data" / "tiny"
        program = tmp_path / "tc.dl"
        program.write_text(
            '.decl edge(x: number, y: number)\n.input edge(filename="data_10.txt")\n.decl tc(x: number, y: number)\n.output tc\ntc(x, y) :- edge(x, y).\ntc(x, z) :- tc(x, y), edge(y, z).\n'
        )
        submitted = cli(served, "submit", str(program), "-F", str(facts), "--wait", "-D", str(tmp_path / "got"))
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        expected = one_shot(program, facts, tmp_path / "cli") / "tc.csv"
        assert (tmp_path / "got" / "tc.csv").read_bytes() == expected.read_bytes()
        assert cli(served, "result", job, "tc").stdout == expected.read_text()
        assert cli(served, "result", job).stdout == f"tc\tcsv\t{state / 'jobs' / job / 'out' / 'tc.csv'}\n"
        logs = cli(served, "logs", job, "--follow").stdout.splitlines()
        assert logs[0] == f"submitted by alice: {program}" and logs[-1].startswith("SUCCEEDED")
        bad = tmp_path / "bad.dl"
        bad.write_text(BAD)
        failed = cli(served, "submit", str(bad), "--wait")
        assert (
            failed.returncode == 1
            and failed.stderr == f"job {failed.stdout.strip()} FAILED: {bad}:3:9: error: undeclared relation b\n"
        )
        assert cli(served, "status", "nosuchjob").stderr == "error: the job service answered 404: no job nosuchjob\n"

        jobs = ServiceClient(served.address, "alice-token")
        running = jobs.submit(_write(tmp_path / "count.dl", COUNT))
        until(lambda: jobs.status(running)["state"] == "RUNNING", "the job to run")
        listed = cli(served, "list").stdout
        assert job in listed and running in listed
        stopped = jobs.submit(tmp_path / "count.dl")
        assert cli(served, "stop", stopped).stdout == "STOPPED\n"  # waits for the end
        # A job that checkpoints: killed with the service after its first checkpoint, it resumes.
        chain = _write(tmp_path / "chain.dl", ".decl n(x: number)\n.output n\nn(0).\nn(x + 1) :- n(x), x < 5000.\n")
        resumable = jobs.submit(chain, checkpoint=True, checkpoint_every=0.1)
        until(lambda: Checkpoints(state / "jobs" / resumable / "checkpoint").latest() is not None, "a checkpoint")
        assert jobs.status(resumable)["state"] == "RUNNING"
        before = {r["id"]: r for r in jobs.list()}
        jobs.close()
    finally:
        served.kill()  # kill -9: the running job's record stays RUNNING on disk

    # The restart serves HTTPS, so one restart checks both the records and TLS.
    cert, key = _self_signed(tmp_path)
    again = Served(state, roots, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    try:
        assert again.address.startswith("https://")
        jobs = ServiceClient(again.address, "alice-token", verify=str(cert))
        after = {r["id"]: r for r in jobs.list()}
        assert set(after) == set(before)
        for job_id, was in before.items():
            if job_id not in (running, resumable):
                assert after[job_id] == was
        assert after[running]["state"] == "FAILED" and "the service stopped while the job ran" in after[running]["error"]
        assert jobs.wait(resumable, timeout=60)["state"] == "SUCCEEDED"
        assert jobs.result(resumable, "n") == (one_shot(chain, tmp_path, tmp_path / "chain") / "n.csv").read_bytes()
        log = jobs.logs(resumable)["lines"]
        queued = next(k for k, line in enumerate(log) if "queued again, to resume from its checkpoint" in line)
        progress = next(line for line in log[queued:] if line.startswith("stratum"))
        assert int(progress.split()[3]) > 0, progress  # the resumed run's first iteration is the checkpoint's
        assert jobs.wait(jobs.submit(program, facts=facts), timeout=60)["state"] == "SUCCEEDED"  # and it serves new jobs
        with pytest.raises(ServiceError, match="cannot reach"):
            ServiceClient(again.address, "alice-token").list()  # an unknown CA is refused
        last = jobs.submit(tmp_path / "count.dl")
        until(lambda: jobs.status(last)["state"] == "RUNNING", "the job to run")
        jobs.close()
    finally:
        status = again.kill(signal.SIGTERM)
    # SIGTERM shuts down gracefully: the running job is stopped and said so, the cluster closed.
    assert status == 0, again.process.stderr.read()  # type: ignore[union-attr]
    stopped = JobStore(state / "jobs.sqlite").get(last)
    assert stopped is not None and (stopped.state, stopped.error) == (State.STOPPED, "stopped: the service shut down")
    # No worker of its embedded cluster is left (multiprocessing's resource tracker, the last of
    # its helpers, ends when it sees the service's end: given a few seconds).
    until(lambda: not _alive_in_group(again.process.pid), "the cluster's processes to end", 10)


def _alive_in_group(group: int) -> list[int]:
    """The processes of ``group`` still running (not zombies, which wait for init to reap them)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file
