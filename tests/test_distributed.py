"""The distributed runtime against the single-shard engine and the reference evaluator.

In-process Dask workers (threads of this process, real TCP-free comms but the same handlers,
collectives and code paths) for the bulk of the cases; a cluster of worker processes for a
few, to prove the messages pickle and travel between processes, and for the test that no tuple
passes through the client. The workers use the suite's ``--backend``: with ``cupy`` they share
the GPU (``test_distributed_gpu.py`` adds a ``LocalCUDACluster``).
"""

from __future__ import annotations

import faulthandler
import functools
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client, LocalCluster
from program_gen import GeneratedCase, generate_case
from test_differential import diff_message

from dask_datalog.cluster import Program
from dask_datalog.cluster.runtime import plugin
from dask_datalog.cluster.runtime.coordinator import PROGRESS_TOPIC
from dask_datalog.cluster.runtime.plugin import PLUGIN_NAME
from dask_datalog.engine.errors import DatalogError, RunTimeout
from dask_datalog.spmd.options import RunOptions

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.dl"))
SHARED = ROOT.parent / "shared" / "data"
WORKER_COUNTS = (1, 2, 3, 4)
RUN_LIMIT_S = 120.0
REACHED_FROM_0 = ".decl e(x:number, y:number)\n.decl r(x:number)\nr(0).\nr(y) :- r(x), e(x, y).\n"  # r: the nodes reached from 0 along e (a chain: one iteration per edge)


@pytest.fixture(scope="module")
def clients() -> dict[int, Client]:
    """One in-process cluster per worker count, shared by the module's tests."""
    made: dict[int, tuple[LocalCluster, Client]] = {}
    for n in WORKER_COUNTS:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=False, dashboard_address=":0")
        made[n] = (cluster, Client(cluster, set_as_default=False))
    yield {n: client for n, (_, client) in made.items()}
    for cluster, client in made.values():
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def process_client() -> Client:
    """Two worker processes (the scheduler and this client stay in the test process)."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@functools.cache
def example(name: str) -> Program:
    return Program.from_file(EXAMPLES / f"{name}.dl")


@functools.cache
def single_shard(name: str) -> dict[str, set[tuple]]:
    result = example(name).run(fact_dir=EXAMPLES / "facts" / name, backend="numpy")
    return {rel: result.tuples(rel) for rel in result.sizes}


def _assert_no_job_state(client: Client) -> None:
    left = client.run(lambda dask_worker: len(getattr(dask_worker.plugins.get(PLUGIN_NAME), "runs", ())))
    assert not any(left.values()), f"runs left on workers: {left}"
    # The scheduler's event broker (private, read here only) holds no topic of a run: every run
    # shares coordinator.PROGRESS_TOPIC, since the broker drops none (a resident service runs thousands).
    topics = client.run_on_scheduler(lambda dask_scheduler: [t for t in dask_scheduler._broker._topics if "progress" in t])
    assert set(topics) <= {PROGRESS_TOPIC}, f"event topics left on the scheduler: {topics}"


# ------------------------------------------------------------------------- examples


@pytest.mark.parametrize("n", WORKER_COUNTS)
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_examples_match_single_shard(clients: dict[int, Client], name: str, n: int, backend: str) -> None:
    result = example(name).run(fact_dir=EXAMPLES / "facts" / name, backend=backend, client=clients[n])
    try:
        want = single_shard(name)
        for rel, tuples in want.items():
            assert result.sizes[rel] == len(tuples), rel
            assert result.tuples(rel) == tuples, rel
    finally:
        result.close()
    _assert_no_job_state(clients[n])


@pytest.mark.parametrize("n", (1, 3))
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_outputs_are_byte_identical(clients: dict[int, Client], name: str, n: int, tmp_path: Path, backend: str) -> None:
    """CSV written by the workers, each at its offset of one file, equals the engine's."""
    facts = EXAMPLES / "facts" / name
    printed_one, printed_many = io.StringIO(), io.StringIO()
    example(name).run(fact_dir=facts, backend="numpy").write(tmp_path / "one", stream=printed_one)
    result = example(name).run(fact_dir=facts, backend=backend, client=clients[n])
    result.write(tmp_path / "many", stream=printed_many)
    result.close()
    assert printed_many.getvalue() == printed_one.getvalue()
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "many").iterdir())
    assert files, "every example has an output"
    for f in files:
        assert (tmp_path / "many" / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f


EMPTY_OUTPUTS = """.decl edge(x:number, y:number)
.input edge
.decl none(x:number, y:number)
.output none
none(x, y) :- edge(x, y), x > 100.
.decl stuck(x:number, y:number)
.output stuck
stuck(x, z) :- stuck(x, y), edge(y, z).
"""


@pytest.mark.parametrize("n", (1, 2, 3))
def test_empty_outputs_write_empty_files(clients: dict[int, Client], n: int, tmp_path: Path, backend: str) -> None:
    """An output no rule derives anything for (and a recursive one with no base rule) crashed
    the writer on 2+ workers; it must write an empty file, as one process does."""
    program = Program(EMPTY_OUTPUTS)
    facts = {"edge": [(1, 2), (2, 3)]}
    result = program.run(facts=facts, backend=backend, client=clients[n])
    result.write(tmp_path)
    result.close()
    assert (tmp_path / "none.csv").read_bytes() == b"" and (tmp_path / "stuck.csv").read_bytes() == b""
    _assert_no_job_state(clients[n])


def test_parquet_dataset_holds_the_relation(clients: dict[int, Client], tmp_path: Path, backend: str) -> None:
    import pyarrow.parquet as pq

    result = example("reach").run(fact_dir=EXAMPLES / "facts" / "reach", backend=backend, client=clients[3])
    result.write(tmp_path, "parquet", io.StringIO())
    result.close()
    parts = sorted((tmp_path / "path").glob("part-*.parquet"))
    assert len(parts) == 3
    table = pq.read_table(tmp_path / "path")
    got = set(zip(table.column("x").to_pylist(), table.column("y").to_pylist()))
    assert got == single_shard("reach")["path"]
    firsts = [pq.read_table(p).column("x").to_pylist() for p in parts]
    flat = [v for part in firsts for v in part]
    assert flat == sorted(flat), "parts are ranges of the sorted relation, in part order"


def test_dask_dataframe_result(clients: dict[int, Client], backend: str) -> None:
    result = example("sg").run(fact_dir=EXAMPLES / "facts" / "sg", backend=backend, client=clients[2])
    frame = result.dataframe("sg")
    assert frame.npartitions == 2
    computed = clients[2].compute(frame).result()
    assert set(map(tuple, computed.itertuples(index=False))) == single_shard("sg")["sg"]
    result.close()


# ------------------------------------------------------------------------- random programs


@functools.cache
def case_for(seed: int) -> GeneratedCase:
    return generate_case(seed)


def check_distributed(case: GeneratedCase, client: Client, backend: str, chunk_rows: int | None = None) -> None:
    """``case`` on ``client``'s cluster against the reference. A run past RUN_LIMIT_S (each
    takes a second or two) fails with every thread's stack on stderr: the workers are threads
    of this process, so it says where they waited (a clean clone's make test hung here twice)."""
    try:
        result = Program(case.text, filename=f"<{case.label}>").run(
            facts=case.api_facts(),
            backend=backend,
            client=client,
            chunk_rows=chunk_rows,
            replicate_below=0,
            options=RunOptions(timeout=RUN_LIMIT_S),
        )
    except RunTimeout:
        faulthandler.dump_traceback(all_threads=True)
        raise
    try:
        for name, want in case.expected.items():
            got = result.tuples(name)
            assert got == want, diff_message(f"{len(client.scheduler_info()['workers'])} workers", name, got, want, case)
            assert result.sizes[name] == len(want), name
    finally:
        result.close()


@pytest.mark.parametrize("n", WORKER_COUNTS)
@pytest.mark.parametrize("seed", range(0, 150, 3))
def test_random_programs_match_reference(clients: dict[int, Client], seed: int, n: int, backend: str) -> None:
    """Nothing replicated for its size: every relation partitioned, so joins on other keys,
    negations and aggregates take the exchange and co-partitioning paths."""
    check_distributed(case_for(seed), clients[n], backend)


@pytest.mark.parametrize("seed", range(1, 150, 10))
def test_random_programs_chunked(clients: dict[int, Client], seed: int, backend: str) -> None:
    """Join output a few rows at a time, so own/slice/exchange see many chunks."""
    check_distributed(case_for(seed), clients[3], backend, chunk_rows=3)


@pytest.mark.parametrize("seed", range(2, 150, 25))
def test_random_programs_on_process_workers(process_client: Client, seed: int, backend: str) -> None:
    check_distributed(case_for(seed), process_client, backend)


@pytest.mark.parametrize("name", ["reach", "andersen", "aggregate"])
def test_examples_on_process_workers(process_client: Client, name: str, backend: str) -> None:
    result = example(name).run(fact_dir=EXAMPLES / "facts" / name, backend=backend, client=process_client)
    for rel, tuples in single_shard(name).items():
        assert result.tuples(rel) == tuples, rel
    result.close()


# ------------------------------------------------------------------------- ground truth


GRAPHS = [  # (program, relation, graph, published size)
    ("reach", "path", "wing/data_121544.txt", 329_438),
    ("reach", "path", "ego-Facebook/data_88234.txt", 2_508_102),
    ("reach", "path", "luxembourg_osm/data_119666.txt", 5_022_084),
    ("reach", "path", "cal.cedge/data_21693.txt", 501_755),
    ("reach", "path", "TG.cedge/data_23874.txt", 481_121),
    ("sg", "sg", "wing/data_121544.txt", 647_999),
    ("sg", "sg", "luxembourg_osm/data_119666.txt", 245_221),
    ("sg", "sg", "cal.cedge/data_21693.txt", 23_519),
    ("sg", "sg", "OL.cedge/data_7035.txt", 285_431),
    ("sg", "sg", "TG.cedge/data_23874.txt", 608_090),
]


@pytest.mark.parametrize("name, relation, graph, size", GRAPHS)
def test_shared_graphs_with_three_workers(
    clients: dict[int, Client], name: str, relation: str, graph: str, size: int, backend: str
) -> None:
    path = SHARED / graph
    if not path.exists():
        pytest.skip(f"reference data {path} not present")
    result = example(name).run(facts={"edge": path}, backend=backend, client=clients[3])
    assert result.sizes[relation] == size
    per_worker = [w["local_sizes"][relation] for w in result.stats["per_worker"]]
    assert all(0 < s < size for s in per_worker), f"every worker holds a real part: {per_worker}"
    result.close()


# ------------------------------------------------------------------------- the client stays out


def test_no_tuple_passes_through_the_client(process_client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Count every byte this process (the client and the scheduler) reads from a socket while
    a job exchanges megabytes between the two worker processes."""
    from distributed.comm import tcp

    received = [0]
    original = tcp.TCP.read

    async def counting_read(self, deserializers=None):
        msg = await original(self, deserializers)
        received[0] += _size_of(msg)
        return msg

    monkeypatch.setattr(tcp.TCP, "read", counting_read)
    rng = np.random.default_rng(7)
    edges = rng.integers(0, 200_000, size=(400_000, 2))
    path = tmp_path / "e.facts"
    np.savetxt(path, edges, fmt="%d", delimiter="\t")
    program = Program(
        ".decl e(x:number, y:number)\n.decl q(x:number, z:number)\n.output q\n.input e\nq(x, z) :- e(x, y), e(y, z).\n"
    )
    want = program.run(facts={"e": path}, backend="numpy").sizes["q"]
    before = received[0]
    result = program.run(facts={"e": path}, backend="numpy", client=process_client, replicate_below=0)
    through_client = received[0] - before
    exchanged = result.stats["bytes_exchanged"]
    assert result.sizes["q"] == want
    assert exchanged > 5_000_000, f"the job should move megabytes between workers, moved {exchanged}"
    assert through_client < 200_000, f"{through_client} bytes reached the client/scheduler while workers exchanged {exchanged}"
    result.close()


def _size_of(msg: object) -> int:
    if isinstance(msg, (bytes, bytearray, memoryview)):
        return len(msg)
    if hasattr(msg, "nbytes"):
        return int(msg.nbytes)
    if isinstance(msg, dict):
        return sum(_size_of(v) for v in msg.values())
    if isinstance(msg, (list, tuple)):
        return sum(_size_of(v) for v in msg)
    return 8


# ------------------------------------------------------------------------- isolation and failure


def test_bad_fact_file_fails_cleanly_and_the_cluster_stays_usable(clients: dict[int, Client], tmp_path: Path) -> None:
    """An error in the third worker's byte range: every worker stops, the client gets the same
    message as a single-shard run, and the next job runs."""
    lines = [f"{i}\t{i + 1}" for i in range(3000)]
    lines[2500] = "12\tnot-a-number"
    path = tmp_path / "edge.facts"
    path.write_text("\n".join(lines) + "\n")
    reach = example("reach")
    with pytest.raises(DatalogError) as single:
        reach.run(facts={"edge": path}, backend="numpy")
    with pytest.raises(DatalogError) as distributed:
        reach.run(facts={"edge": path}, backend="numpy", client=clients[3])
    assert str(distributed.value) == str(single.value)
    assert ":2501:" in str(distributed.value)
    _assert_no_job_state(clients[3])
    result = reach.run(fact_dir=EXAMPLES / "facts" / "reach", backend="numpy", client=clients[3])
    assert result.tuples("path") == single_shard("reach")["path"]
    result.close()


def test_a_scatter_longer_than_the_registrations_grace_keeps_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Array facts reach the workers after the attempt was registered there, and a worker forgets
    a registered run with no task after GRACE_S (a client that went away): a slow scatter (large
    arrays, a slow network) must not make the workers refuse the run's tasks when they come."""
    monkeypatch.setattr(plugin, "SWEEP_S", 0.1)  # read when the plugin starts on this new cluster
    monkeypatch.setattr(plugin, "GRACE_S", 0.3)
    program = Program(REACHED_FROM_0)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        program.run(facts={"e": np.array([[0, 1]])}, backend="numpy", client=client).close()  # the plugin starts
        scatter = client.scatter

        def slow_scatter(*args: Any, **kwargs: Any) -> Any:
            time.sleep(1.0)
            return scatter(*args, **kwargs)

        monkeypatch.setattr(client, "scatter", slow_scatter)
        chain = np.stack([np.arange(100), np.arange(1, 101)], axis=1)
        result = program.run(facts={"e": chain}, backend="numpy", client=client)
        assert result.sizes["r"] == 101
        result.close()


def test_concurrent_jobs_do_not_see_each_other(clients: dict[int, Client]) -> None:
    outcomes: dict[str, object] = {}

    def job(name: str) -> None:
        result = example(name).run(fact_dir=EXAMPLES / "facts" / name, backend="numpy", client=clients[2])
        outcomes[name] = {rel: result.tuples(rel) for rel in result.sizes}
        result.close()

    threads = [threading.Thread(target=job, args=(name,)) for name in ("reach", "sg", "cspa", "andersen")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for name in ("reach", "sg", "cspa", "andersen"):
        assert outcomes.get(name) == single_shard(name), name
    _assert_no_job_state(clients[2])


def test_closing_the_client_stops_the_job_and_frees_its_state(clients: dict[int, Client]) -> None:
    """A long fixpoint (a 20,000-edge chain: one iteration per edge) whose client goes away:
    the workers notice within a poll interval, stop, and forget the run."""
    import time

    scheduler = clients[2].scheduler.address
    owner = Client(scheduler, set_as_default=False)
    chain = np.stack([np.arange(20_000), np.arange(1, 20_001)], axis=1)
    program = Program(REACHED_FROM_0)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            program.run(facts={"e": chain}, backend="numpy", client=owner)
        except BaseException as error:  # the client closing under it is the point
            failures.append(error)

    def open_runs(dask_worker: Any) -> list[str]:
        """The runs with a phase open on this worker."""
        plugin = dask_worker.plugins.get(PLUGIN_NAME)  # none before the first run on this cluster
        return [run for run, state in plugin.runs.items() if state.addresses] if plugin else []

    def runs(dask_worker: Any) -> list[str]:
        plugin = dask_worker.plugins.get(PLUGIN_NAME)
        return list(plugin.runs) if plugin else []

    before = set().union(*clients[2].run(runs).values())  # results of earlier tests, not yet freed
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not (mine := set.intersection(*map(set, clients[2].run(open_runs).values())) - before):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    owner.close()
    thread.join(timeout=30)
    assert failures, "the run should not have finished"
    while mine & set().union(*clients[2].run(runs).values()):
        assert time.monotonic() < deadline + 10, "the run kept running after its client closed"
        time.sleep(0.1)
    check = Program(REACHED_FROM_0)
    result = check.run(facts={"e": chain[:50]}, backend="numpy", client=clients[2])
    assert result.sizes["r"] == 51
    result.close()


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_examples_on_the_array_api_path(clients: dict[int, Client], name: str) -> None:
    """The CuPy code path (array API on NumPy) through the distributed runtime."""
    result = example(name).run(fact_dir=EXAMPLES / "facts" / name, backend="numpy-xp", client=clients[3])
    for rel, tuples in single_shard(name).items():
        assert result.tuples(rel) == tuples, rel
    result.close()


def test_progress_events_reach_the_client(clients: dict[int, Client]) -> None:
    from dask_datalog.cluster.cli.progress import ProgressState

    events: list[dict] = []
    program = Program(REACHED_FROM_0)
    chain = np.stack([np.arange(400), np.arange(1, 401)], axis=1)
    result = program.run(facts={"e": chain}, backend="numpy", client=clients[2], progress=events.append)
    result.close()
    import time

    deadline = time.monotonic() + 5
    while {e["rank"] for e in events} != {0, 1} and time.monotonic() < deadline:
        time.sleep(0.05)  # events travel worker -> scheduler -> client asynchronously
    assert {e["rank"] for e in events} == {0, 1}
    state = ProgressState(strata=2)
    for e in events:
        state.update(e)
    assert state.line().startswith("stratum ")
    assert all({"rank", "stratum", "iteration", "delta", "found"} <= set(e) for e in events), events[:3]


def test_failure_on_process_workers_stops_the_mesh(process_client: Client, tmp_path: Path) -> None:
    """Worker 1 fails while reading; worker 0, waiting on its direct sockets, stops too, and
    the client gets the reading error."""
    lines = [f"{i}\t{i + 1}" for i in range(4000)]
    lines[3500] = "7\t-"
    path = tmp_path / "edge.facts"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatalogError, match=":3501:"):
        example("reach").run(facts={"edge": path}, backend="numpy", client=process_client)
    _assert_no_job_state(process_client)
    result = example("reach").run(fact_dir=EXAMPLES / "facts" / "reach", backend="numpy", client=process_client)
    assert result.tuples("path") == single_shard("reach")["path"]
    result.close()


def test_a_closing_worker_waits_for_its_heartbeat_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    """distributed's ``Worker.close`` closes its connections under a heartbeat in flight, which
    logs an ERROR with a traceback after a clean shutdown (seen at the end of a SLURM job under
    load); the plugin's teardown lets the heartbeat finish first. The scheduler here answers
    heartbeats slowly, so the worker closes while one is in flight."""
    import asyncio
    import logging

    from distributed import Scheduler, Worker

    from dask_datalog.cluster.runtime.plugin import DatalogPlugin

    async def close_during_a_heartbeat() -> None:
        async with Scheduler(port=0, dashboard_address=":0") as scheduler:
            answer = scheduler.handlers["heartbeat_worker"]
            asked = asyncio.Event()

            async def slowly(**message: Any) -> Any:
                asked.set()
                await asyncio.sleep(0.5)
                return answer(**message)

            scheduler.handlers["heartbeat_worker"] = slowly
            worker = await Worker(scheduler.address, nthreads=1, plugins={DatalogPlugin()})
            await asyncio.wait_for(asked.wait(), 10)
            await worker.close()

    with caplog.at_level(logging.WARNING, logger="distributed.worker"):
        asyncio.run(close_during_a_heartbeat())
    assert not [r for r in caplog.records if r.name == "distributed.worker" and r.levelno >= logging.WARNING], caplog.text
