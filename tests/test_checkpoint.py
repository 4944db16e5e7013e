"""Checkpoints in one process: a run stopped at an iteration boundary (what SIGTERM does) and
resumed, on the same or another number of shards (threads running the workers' code), or in
process, gives exactly the undisturbed answer; generated programs are stopped at random
boundaries; a checkpoint of another program or of changed inputs is refused; stale or partial
checkpoints are never taken up.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from program_gen import GeneratedCase, generate_case, generate_from_rng
from test_sharded import _deal, relation_tuples

from dask_datalog.cluster import Result
from dask_datalog.engine import ir
from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.checkpoint import CheckpointOptions, Checkpoints, array_digest, program_digest
from dask_datalog.engine.errors import DatalogError, Suspended
from dask_datalog.engine.execution.control import Position
from dask_datalog.engine.frontend import load_program, load_program_file
from dask_datalog.engine.plan import plan_program
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.run import run_in_process
from dask_datalog.spmd.shard import Shard, Steering, evaluate_shard
from dask_datalog.spmd.threads import run_in_threads

ROOT = Path(__file__).resolve().parent.parent
REACH = ROOT / "examples" / "reach.dl"

# Recursion, negation of a lower stratum and aggregates over a recursive relation: the shapes
# a restored run must take up in the middle of a stratum and between strata.
MIXED = """
.decl edge(x:number, y:number)
.input edge
.decl path(x:number, y:number)
path(x, y) :- edge(x, y).
path(x, z) :- path(x, y), edge(y, z).
.decl node(x:number)
node(x) :- edge(x, _).
node(y) :- edge(_, y).
.decl loose(x:number)
loose(x) :- node(x), !path(x, x).
.decl reach_count(x:number, n:number)
reach_count(x, n) :- node(x), n = count : { path(x, _) }.
.decl far(x:number, m:number)
far(x, m) :- node(x), m = max y : { path(x, y) }.
.decl total(s:number)
total(s) :- s = sum n : { reach_count(_, n) }.
.output loose
.output reach_count
.output far
.output total
"""


def graph(n: int = 60, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chain = np.stack([np.arange(n), np.arange(1, n + 1)], axis=1)
    extra = rng.integers(0, n, size=(n // 3, 2))
    return np.concatenate([chain, extra]).astype(np.int64)


class StopAfter:
    """``stop_requested`` that turns true after ``k`` boundaries were asked about."""

    def __init__(self, k: int):
        self.k = k
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > self.k


def on_shards(
    program: ir.Program,
    n: int,
    facts: dict[str, Any],
    options: CheckpointOptions | None,
    stop: Callable[[], Callable[[], bool]] | None = None,
) -> list[Shard]:
    digests = {name: array_digest(rows) for name, rows in facts.items()}  # of the whole arrays, as the client does

    def shard(transport: Any) -> Shard:
        mine = {name: _deal(rows, transport.rank, n) for name, rows in facts.items()}
        steering = Steering(options, stop_requested=stop() if stop else (lambda: False))
        return evaluate_shard(
            transport, program, get_backend("numpy"), Inputs(facts=mine, array_digests=digests), steering, replicate_below=0
        )

    return run_in_threads(n, shard)


def answers(shards: list[Shard], program: ir.Program) -> dict[str, set[tuple]]:
    return {name: relation_tuples(shards, name) for name in program.relations}


def in_process(
    program: ir.Program, facts: dict[str, Any], options: CheckpointOptions | None = None, stop: Callable[[], bool] | None = None
) -> dict[str, set[tuple]]:
    steering = Steering(options, stop_requested=stop or (lambda: False))
    digests = {name: array_digest(rows) for name, rows in facts.items()}
    result = Result(run_in_process(program, get_backend("numpy"), Inputs(facts=facts, array_digests=digests), steering))
    return {name: result.tuples(name) for name in program.relations}


def suspend(program: ir.Program, n: int, facts: dict[str, Any], directory: Path, k: int) -> Position:
    """Run on ``n`` shards (0: in process) checkpointing every boundary, stopped after ``k``."""
    options = CheckpointOptions(str(directory), every=0.0, attempt="first")
    with pytest.raises(Suspended) as stopped:
        if n == 0:
            in_process(program, facts, options, StopAfter(k))
        else:
            on_shards(program, n, facts, options, lambda: StopAfter(k))
    manifest = Checkpoints(directory).latest()
    assert manifest is not None and manifest.position == stopped.value.position
    return stopped.value.position


@pytest.mark.parametrize("source", ["reach", "mixed"])
@pytest.mark.parametrize(("before", "after"), [(1, 1), (3, 3), (3, 2), (2, 4), (0, 3), (3, 0)])
@pytest.mark.parametrize("k", [0, 4, -1])
def test_resume_on_another_number_of_shards_gives_the_same_answer(
    source: str, before: int, after: int, k: int, tmp_path: Path
) -> None:
    """0 shards: in process. k=0 stops after the first iteration, -1 at the last boundary (the
    evaluation is complete: the resumed run only writes)."""
    program = load_program_file(REACH) if source == "reach" else load_program(MIXED)
    facts = {"edge": graph()}
    want = in_process(program, facts)
    last = k < 0
    if last:  # count the boundaries of this run (several shards may need one more iteration)
        counter = StopAfter(10**9)
        count = CheckpointOptions(str(tmp_path / "count"), every=1e9)
        in_process(program, facts, count, counter) if before == 0 else on_shards(program, before, facts, count, lambda: counter)
        k = counter.asked // max(1, before) - 1
    position = suspend(program, before, facts, tmp_path, k)
    if last:
        assert position == Position(len(plan_program(program).strata), 0)
    resume = CheckpointOptions(str(tmp_path), resume="", verify=True, attempt="second")
    got = in_process(program, facts, resume) if after == 0 else answers(on_shards(program, after, facts, resume), program)
    assert got == want, f"stopped {position}"


def test_a_resumed_run_can_be_stopped_and_resumed_again(tmp_path: Path) -> None:
    program = load_program(MIXED)
    facts = {"edge": graph(80)}
    want = in_process(program, facts)
    first = suspend(program, 2, facts, tmp_path, 5)
    options = CheckpointOptions(str(tmp_path), every=0.0, resume="", verify=True, attempt="second")
    with pytest.raises(Suspended) as stopped:
        on_shards(program, 3, facts, options, lambda: StopAfter(7))
    assert stopped.value.position > first
    third = CheckpointOptions(str(tmp_path), resume="", verify=True, attempt="third")
    assert answers(on_shards(program, 2, facts, third), program) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", Checkpoints(tmp_path).latest().name]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(rng=st.randoms(use_true_random=False), before=st.integers(0, 3), after=st.integers(0, 3), k=st.integers(0, 12))
def test_generated_programs_stopped_anywhere_resume_to_the_reference(
    rng: random.Random, before: int, after: int, k: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    case = generate_from_rng(rng, "hypothesis")
    check_stop_and_resume(case, before, after, k, tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("seed", range(0, 150, 7))
def test_generated_seeds_stopped_and_resumed(seed: int, tmp_path: Path) -> None:
    check_stop_and_resume(generate_case(seed), 1 + seed % 3, 3 - seed % 3, seed % 5, tmp_path)


def check_stop_and_resume(case: GeneratedCase, before: int, after: int, k: int, directory: Path) -> None:
    program = load_program(case.text, f"<{case.label}>")
    facts = case.api_facts()
    options = CheckpointOptions(str(directory), every=0.0, attempt="first")
    try:
        if before == 0:
            in_process(program, facts, options, StopAfter(k))
        else:
            on_shards(program, before, facts, options, lambda: StopAfter(k))
        stopped = None
    except Suspended as s:
        stopped = s.position
    if stopped is None:  # fewer boundaries than k: the run finished; nothing to resume
        return
    resume = CheckpointOptions(str(directory), resume="", verify=True, attempt="second")
    got = in_process(program, facts, resume) if after == 0 else answers(on_shards(program, after, facts, resume), program)
    for name, want in case.expected.items():
        assert got[name] == set(want), f"{name}: stopped {stopped} on {before} shards, resumed on {after}\n{case.describe()}"


def test_resume_refuses_another_program_or_changed_inputs(tmp_path: Path) -> None:
    facts_dir = tmp_path / "facts"
    facts_dir.mkdir()
    np.savetxt(facts_dir / "edge.facts", graph(), fmt="%d", delimiter="\t")
    program = load_program_file(REACH)
    options = CheckpointOptions(str(tmp_path / "ckpt"), every=0.0, attempt="first")
    with pytest.raises(Suspended):
        run_in_process(program, get_backend("numpy"), Inputs(facts_dir), Steering(options, stop_requested=StopAfter(2)))
    resume = CheckpointOptions(str(tmp_path / "ckpt"), resume="", verify=True, attempt="second")
    other = load_program(
        REACH.read_text().replace("path(x, z) :- path(x, y), edge(y, z).", "path(x, z) :- edge(x, y), path(y, z).")
    )
    with pytest.raises(DatalogError, match="the program is not the one that was checkpointed"):
        run_in_process(other, get_backend("numpy"), Inputs(facts_dir), Steering(resume))
    # The same program reformatted and from another file is the same program.
    moved = tmp_path / "moved.dl"
    moved.write_text("// moved\n" + REACH.read_text().replace(":-", " :- "))
    assert program_digest(load_program_file(moved)) == program_digest(program)
    with open(facts_dir / "edge.facts", "a") as f:
        f.write("1000\t1001\n")
    with pytest.raises(DatalogError, match=r"the input of edge \(.*edge.facts\) changed since the checkpoint was written"):
        run_in_process(program, get_backend("numpy"), Inputs(facts_dir), Steering(resume))
    with pytest.raises(DatalogError, match="no complete checkpoint"):
        run_in_process(
            program,
            get_backend("numpy"),
            Inputs(facts_dir),
            Steering(CheckpointOptions(str(tmp_path / "empty"), resume="", verify=True)),
        )


def test_a_retry_takes_up_only_its_own_jobs_checkpoints(tmp_path: Path) -> None:
    """A checkpoint left by an older run in the same directory is never taken for this job's:
    a retry whose job wrote none starts from the inputs."""
    program = load_program(MIXED)
    facts = {"edge": graph()}
    suspend(program, 2, facts, tmp_path, 3)
    stale = Checkpoints(tmp_path).latest()
    assert stale is not None and stale.name.startswith("first")
    other = {"edge": graph(seed=7)}
    retry = CheckpointOptions(str(tmp_path), resume="job2-", attempt="job2-1")
    assert answers(on_shards(program, 2, other, retry), program) == in_process(program, other)


def test_partial_checkpoints_are_ignored_and_cleared(tmp_path: Path) -> None:
    """A checkpoint whose writing was interrupted (no manifest, ``latest`` not moved) is not
    taken up; the next run removes it."""
    program = load_program_file(REACH)
    facts = {"edge": graph()}
    want = in_process(program, facts)
    suspend(program, 2, facts, tmp_path, 3)
    partial = tmp_path / "first-00099.tmp" / "part-00000"
    partial.mkdir(parents=True)
    (partial / "path.npz").write_bytes(b"torn")
    resume = CheckpointOptions(str(tmp_path), resume="", verify=True, attempt="second")
    assert answers(on_shards(program, 2, facts, resume), program) == want
    assert not (tmp_path / "first-00099.tmp").exists()
    manifest = json.loads((tmp_path / Checkpoints(tmp_path).latest().name / "manifest.json").read_text())
    assert manifest["shards"] == 2 and manifest["relations"]["edge"] == len({tuple(r) for r in graph().tolist()})


def test_checkpoint_directory_not_visible_to_a_worker_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 1 cannot see rank 0's directory (a node-local path on a multi-node cluster)."""
    import dask_datalog.engine.checkpoint as checkpoint

    real_exists = Path.exists

    def exists(self: Path) -> bool:
        import threading

        if threading.current_thread().name == "shard-1" and self.name.startswith(".probe"):
            return False
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists)
    options = CheckpointOptions(str(tmp_path), attempt="x")
    with pytest.raises(DatalogError, match="not visible from worker 1"):
        on_shards(load_program_file(REACH), 2, {"edge": graph()}, options)
    assert checkpoint.Checkpoints(tmp_path).latest() is None


SYMBOLS = """
.decl link(a:symbol, b:symbol)
.input link
.decl reach(a:symbol, b:symbol)
reach(a, b) :- link(a, b).
reach(a, c) :- reach(a, b), link(b, c).
.decl tagged(t:symbol, a:symbol)
tagged("zeta", a) :- reach(a, a).
tagged("alpha", a) :- link(a, _), !reach(a, a).
.decl late(a:symbol)
.input late
.decl seen(a:symbol)
seen(a) :- late(a).
seen(a) :- link(a, _).
.output reach
.output tagged
.output seen
"""


@pytest.mark.parametrize("k", [0, 3])
def test_shards_write_text_order_after_resuming_an_in_process_checkpoint(k: int, tmp_path: Path) -> None:
    """In process, symbol ids are in reading order; shards need them in text order (their
    output sorts packed rows). A checkpoint written in process and taken up by shards is
    re-encoded, the program's constants (some not yet interned) included: the files are byte
    for byte the single-process ones."""
    from dask_datalog.spmd.writer import write_outputs

    program = load_program(SYMBOLS)
    names = ["m", "b", "x", "a", "q", "c", "k"]
    facts = {
        "link": [(names[i], names[(i * 3 + 1) % 7]) for i in range(7)] + [("q", "q2"), ("q2", "b")],
        "late": [("aa",), ("zz",)],
    }
    Result(run_in_process(program, get_backend("numpy"), Inputs(facts=facts))).write(tmp_path / "one")
    options = CheckpointOptions(str(tmp_path / "ckpt"), every=0.0, attempt="first")
    with pytest.raises(Suspended):
        in_process(program, facts, options, StopAfter(k))
    resume = CheckpointOptions(str(tmp_path / "ckpt"), resume="", verify=True, attempt="second")
    digests = {name: array_digest(rows) for name, rows in facts.items()}

    def shard(transport: Any) -> None:
        mine = {name: _deal(rows, transport.rank, 3) for name, rows in facts.items()}
        steering = Steering(resume)
        done = evaluate_shard(transport, program, get_backend("numpy"), Inputs(facts=mine, array_digests=digests), steering)
        write_outputs(transport, done, str(tmp_path / "many"), "csv")

    run_in_threads(3, shard)
    for name in ("reach.csv", "tagged.csv", "seen.csv"):
        assert (tmp_path / "many" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
