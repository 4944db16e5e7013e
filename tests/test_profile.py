"""The per rule version profile (engine/execution/profile.py): its tuple and evaluation counts
against counts worked out here independently (a chain's reachability, two rules into one
relation, a non-linear transitive closure simulated semi-naively in Python), in process on one
and three shards and on an embedded cluster of two workers; and the command's --profile."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dask_datalog.cluster.api import Program
from dask_datalog.cluster.cli.main import main
from dask_datalog.engine.backend import get_backend
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.options import RunOptions
from dask_datalog.spmd.run import combine_stats
from dask_datalog.spmd.shard import Steering, evaluate_shard
from dask_datalog.spmd.threads import run_in_threads

REACH = """
.decl edge(x: number, y: number)
.decl source(x: number)
.decl reach(x: number)
reach(x) :- source(x).
reach(y) :- reach(x), edge(x, y).
.output reach
"""

TWO_RULES = """
.decl a(x: number)
.decl b(x: number)
.decl r(x: number)
r(x) :- a(x).
r(x) :- b(x).
.output r
"""

NONLINEAR = """
.decl edge(x: number, y: number)
.decl path(x: number, y: number)
path(x, y) :- edge(x, y).
path(x, z) :- path(x, y), path(y, z).
.output path
"""

CHAIN = 12


def profiled(text: str, facts: dict[str, Any], shards: int) -> dict[str, Any]:
    """The program's profile: in process on one shard, or on ``shards`` thread shards (facts
    dealt out row by row), added up as a cluster's coordinator adds them up."""
    program = Program(text, "<profile>")
    if shards == 1:
        profile = program.run(facts=facts, backend="numpy", options=RunOptions(profile=True)).profile
        assert profile is not None
        return profile

    def shard(transport: Any) -> Any:
        mine = {name: np.asarray(rows)[transport.rank :: shards] for name, rows in facts.items()}
        return evaluate_shard(
            transport, program.ir, get_backend("numpy"), Inputs(None, mine), Steering(profile=True), replicate_below=0
        )

    stats = combine_stats([s.stats for s in run_in_threads(shards, shard)])
    assert "profile" not in stats["per_worker"][0], "each worker's profile is added up, not copied"
    profile: dict[str, Any] = stats["profile"]
    assert len(profile["per_worker"]) == shards
    return profile


def version(profile: dict[str, Any], rule_prefix: str, kind: str, delta_atom: str | None = None) -> dict[str, Any]:
    found = [
        v
        for v in profile["versions"]
        if v["rule"].startswith(rule_prefix) and v["kind"] == kind and (delta_atom is None or v["delta_atom"] == delta_atom)
    ]
    assert len(found) == 1, [v["rule"] for v in profile["versions"]]
    return found[0]


def chain_facts(n: int) -> dict[str, Any]:
    return {"edge": np.array([(i, i + 1) for i in range(n - 1)]), "source": np.array([[0]])}


@pytest.mark.parametrize("shards", [1, 3])
def test_reach_on_a_chain(shards: int) -> None:
    """Reachability from 0 along a chain of CHAIN nodes: iteration i (1..CHAIN-1) reads the
    one node found in the one before and finds the next; iteration CHAIN reads the last node
    and finds nothing, which ends the stratum."""
    profile = profiled(REACH, chain_facts(CHAIN), shards)
    base = version(profile, "reach(x) :- source(x)", "initial")
    assert (base["runs"], base["out"], base["by_iteration"]["iteration"]) == (shards, 1, [0])
    step = version(profile, "reach(y) :- reach(x), edge(x, y)", "delta")
    assert step["delta_atom"] == "reach(x)" and step["delta_at"] == "<profile>:6:13"
    assert step["at"] == "<profile>:6:1"
    assert step["by_iteration"]["iteration"] == list(range(1, CHAIN + 1))
    assert step["by_iteration"]["delta"] == [1] * CHAIN
    assert step["by_iteration"]["out"] == [1] * (CHAIN - 1) + [0]
    assert step["delta"] == CHAIN and step["out"] == CHAIN - 1
    assert step["runs"] + step["skipped"] == shards * CHAIN  # every shard meets every iteration
    [plan] = step["plans"]  # one join order is possible
    assert plan["runs"] == step["runs"]
    assert plan["reads"][0] == CHAIN and plan["rows"][1] == CHAIN  # the delta's bindings reach the join with edge
    if shards == 1:
        assert (step["runs"], step["new"], step["sent"]) == (CHAIN, CHAIN - 1, 0)
        assert plan["reads"][1] == (CHAIN - 1) * CHAIN  # all of edge, at each run
    else:
        assert step["new"] + step["sent"] == step["out"]
    rule = next(r for r in profile["rules"] if r["rule"].startswith("reach(y)"))
    assert (rule["versions"], rule["out"]) == (2, CHAIN - 1)
    assert abs(sum(r["share"] for r in profile["rules"]) - 1) < 1e-3


@pytest.mark.parametrize("shards", [1, 3])
def test_two_rules_into_one_relation_and_a_stratum_that_is_not_recursive(shards: int) -> None:
    a, b = [1, 2, 3, 5], [3, 4, 5]
    profile = profiled(TWO_RULES, {"a": np.array(a)[:, None], "b": np.array(b)[:, None]}, shards)
    from_a = version(profile, "r(x) :- a(x)", "initial")
    from_b = version(profile, "r(x) :- b(x)", "initial")
    assert [v["kind"] for v in profile["versions"]] == ["initial", "initial"]  # no delta versions
    assert (from_a["out"], from_b["out"]) == (len(a), len(b))
    assert (from_a["runs"], from_b["runs"]) == (shards, shards)
    assert from_a["by_iteration"]["iteration"] == [0]
    if shards == 1:  # both ran before either joined full: each finds its own tuples new
        assert (from_a["new"], from_b["new"]) == (len(a), len(b))
    assert {r["rule"] for r in profile["rules"]} == {"r(x) :- a(x).", "r(x) :- b(x)."}


def semi_naive_nonlinear(edges: set[tuple[int, int]]) -> tuple[list[int], list[int], list[int]]:
    """The two delta versions of ``path(x, z) :- path(x, y), path(y, z)`` evaluated as the
    engine's plan says (each reads its atom's delta and full, which holds the delta): per
    iteration, the bindings each produces, and the delta."""
    full = set(edges)
    delta = set(edges)
    first, second, deltas = [], [], []
    while delta:
        deltas.append(len(delta))
        by_start: dict[int, list[int]] = {}
        for x, y in full:
            by_start.setdefault(x, []).append(y)
        made_first = [(x, z) for x, y in delta for z in by_start.get(y, [])]
        made_second = [(x, z) for x, y in full for z in [w for (v, w) in delta if v == y]]
        first.append(len(made_first))
        second.append(len(made_second))
        delta = set(made_first + made_second) - full
        full |= delta
    return first, second, deltas


@pytest.mark.parametrize("shards", [1, 3])
def test_two_delta_versions_of_a_non_linear_rule(shards: int) -> None:
    rng = random.Random(7)
    edges = {(rng.randrange(14), rng.randrange(14)) for _ in range(24)}
    first, second, deltas = semi_naive_nonlinear(edges)
    profile = profiled(NONLINEAR, {"edge": np.array(sorted(edges))}, shards)
    one = version(profile, "path(x, z)", "delta", "path(x, y)")
    two = version(profile, "path(x, z)", "delta", "path(y, z)")
    iterations = list(range(1, len(deltas) + 1))
    for v, made in ((one, first), (two, second)):
        assert v["by_iteration"]["iteration"] == iterations
        assert v["by_iteration"]["delta"] == deltas
        assert v["by_iteration"]["out"] == made
        assert v["out"] == sum(made)
    assert version(profile, "path(x, y) :- edge(x, y)", "initial")["out"] == len(edges)


GALEN_Q = """
.decl Q(x: number, y: number, z: number)
.decl R(x: number, y: number, z: number)
Q(x, e, o) :- Q(x, y, z), R(y, u, e), Q(z, u, o).
.output Q
"""


def test_versions_re_planned_on_sizes_keep_their_numbers() -> None:
    """On one shard the stratum is re-planned on the sizes it sees (join_order.py), on three
    it keeps the static plan: each version's tuples, deltas and evaluations are the same, and
    the one shard's counts are filed under the version they re-plan, per join order."""
    rng = np.random.default_rng(3)
    facts = {"Q": rng.integers(0, 30, (400, 3)), "R": rng.integers(0, 30, (40, 3))}
    one, three = profiled(GALEN_Q, facts, 1), profiled(GALEN_Q, facts, 3)
    assert any(plan["steps"] != v["steps"] for v in one["versions"] for plan in v["plans"])  # it was re-planned
    for a, b in zip(one["versions"], three["versions"]):
        assert (a["rule"], a["delta_atom"]) == (b["rule"], b["delta_atom"])
        assert (a["out"], a["delta"], _made(a)) == (b["out"], b["delta"], _made(b))
        assert sum(plan["runs"] for plan in a["plans"]) == a["runs"]


def _made(version: dict[str, Any]) -> dict[int, int]:
    """Tuples made per iteration, where some were (on several shards a version whose pipeline
    exchanges runs with no delta too, as every shard must take part)."""
    by = version["by_iteration"]
    return {i: n for i, n in zip(by["iteration"], by["out"]) if n}


def test_on_an_embedded_cluster_through_the_command(tmp_path: Path) -> None:
    program = tmp_path / "reach.dl"
    program.write_text(REACH.replace(".output reach", ".input edge\n.input source\n.output reach"))
    (tmp_path / "edge.facts").write_text("".join(f"{i}\t{i + 1}\n" for i in range(CHAIN - 1)))
    (tmp_path / "source.facts").write_text("0\n")
    out = tmp_path / "profile.json"
    stats = tmp_path / "stats.json"
    argv = ["run", str(program), "-F", str(tmp_path), "-D", str(tmp_path), "--workers", "2", "--replicate-below", "0"]
    assert main([*argv, "--profile", str(out), "--stats", str(stats), "--quiet"]) == 0
    profile = json.loads(out.read_text())
    assert profile["schema"] == 1 and profile["workers"] == 2 and len(profile["per_worker"]) == 2
    step = version(profile, "reach(y)", "delta")
    assert (step["delta"], step["out"], step["runs"] + step["skipped"]) == (CHAIN, CHAIN - 1, 2 * CHAIN)
    assert step["by_iteration"]["out"] == [1] * (CHAIN - 1) + [0]
    table = json.loads(stats.read_text())
    assert "profile" not in table
    assert [r["rule"] for r in table["rules"]] == [r["rule"] for r in profile["rules"]]


@pytest.mark.parametrize("where", ["missing/profile.json", "."])
def test_an_unwritable_profile_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    program = tmp_path / "two.dl"
    program.write_text(TWO_RULES.replace(".output r", ".input a\n.input b\n.output r"))
    (tmp_path / "a.facts").write_text("1\n")
    (tmp_path / "b.facts").write_text("2\n")
    target = tmp_path / where
    code = main(["run", str(program), "-F", str(tmp_path), "-D", str(tmp_path), "--no-cluster", "--profile", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: cannot write the profile to {target}")
    assert not (tmp_path / "r.csv").exists()  # found before the run


def test_no_profile_unless_asked() -> None:
    result = Program(REACH).run(facts=chain_facts(4), backend="numpy")
    assert result.profile is None and "profile" not in result.stats
