"""Which rule costs: a per rule version profile of one shard (``--profile``), the way Soufflé's
``-p`` and ``souffleprof`` tell it, then added up over shards and per rule.

For each rule version (a rule's initial version, or its delta version reading one body atom as
delta) the fixpoint reports every iteration it ran in: its wall time, the delta tuples it read,
the tuples of the relation each step reads, the binding rows that entered each step (so a join
that blows up shows as the step after it), the head tuples it produced before deduplication and,
of those this shard owns, the new ones. A version re-planned on the sizes the run sees
(join_order.py) keeps its number; its steps' counts are kept per join order it ran with
(``plans``). Collected only when asked: without a ``Profile`` the
loop does none of it (no clock, no count, no synchronisation). The document's keys are stable
and described in docs/architecture.md ("Profiles").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_datalog.engine.execution.shard_store import ShardStore
from dask_datalog.engine.ir import show
from dask_datalog.engine.plan import (
    AggregateStep,
    AssignStep,
    FilterStep,
    GenerateStep,
    JoinStep,
    NegationStep,
    Plan,
    RulePlan,
    Step,
    UnpackStep,
)

SCHEMA = 1
COUNTS = ("runs", "skipped", "delta", "out", "new", "sent")  # added over shards
BY_ITERATION = ("iteration", "time_s", "delta", "out", "new")


@dataclass
class HeadCounts:
    """What one run of a version gave its head: tuples produced (before any deduplication; on
    a head routed to its owners by a key every shard computes alike, only the rows this shard
    owns, so that shards add up to the tuples of one), the new ones among those this shard keeps (not in full when made; two versions of an
    iteration can both find one), those sent to their owners (deduplicated there together with
    every version's, so not attributed)."""

    out: int = 0
    new: int = 0
    sent: int = 0


@dataclass
class PlanTally:
    """One join order of a version: its steps, its evaluations with it, and per step the tuples
    of the relation read and the binding rows that entered, summed over those evaluations."""

    steps: list[str]
    runs: int = 0
    reads: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reads = [0] * len(self.steps)
        self.rows = [0] * len(self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "runs": self.runs, "reads": self.reads, "rows": self.rows}


@dataclass
class Tally:
    """One version's numbers on one shard, summed over the iterations it ran in (``runs``;
    ``skipped``: iterations it had no delta to read here), and the same per iteration."""

    runs: int = 0
    skipped: int = 0
    time_s: float = 0.0
    delta: int = 0
    out: int = 0
    new: int = 0
    sent: int = 0
    plans: dict[tuple[str, ...], PlanTally] = field(default_factory=dict)  # by steps, in the order first run
    by_iteration: dict[str, list[float]] = field(default_factory=lambda: {key: [] for key in BY_ITERATION})

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "skipped": self.skipped,
            "time_s": round(self.time_s, 6),
            "delta": self.delta,
            "out": self.out,
            "new": self.new,
            "sent": self.sent,
            "plans": [p.to_json() for p in self.plans.values()],
            "by_iteration": self.by_iteration,
        }


class Profile:
    """The tallies of one shard's versions, numbered as ``Plan.versions`` lists them (the same
    numbers on every shard: placement keeps the versions and their order). ``step_rows`` is
    filled by ``Operators.run`` (binding rows entering each step, by the step's id) while a
    profiled version runs."""

    def __init__(self, plan: Plan):
        # id of a RulePlan -> (it, its version's number, its steps' texts); holding it keeps
        # its id from reuse
        self.number: dict[int, tuple[RulePlan, int, tuple[str, ...]]] = {}
        self.versions: list[dict[str, Any]] = []
        self.tallies: list[Tally] = []
        for stratum, rp in plan.versions():
            self.number[id(rp)] = (rp, len(self.versions), _steps_text(rp))
            self.versions.append(describe(len(self.versions), stratum, rp, plan))
            self.tallies.append(Tally())
        self.step_rows: dict[int, int] = {}
        self.iteration = 0

    def follow(self, static: tuple[RulePlan, ...], ordered: tuple[RulePlan, ...]) -> None:
        """The versions ``ordered``, ``static`` re-planned (the same versions in the same
        order), count as those of ``static``."""
        if ordered is static:
            return
        for planned, again in zip(static, ordered):
            if id(again) not in self.number:
                self.number[id(again)] = (again, self.number[id(planned)][1], _steps_text(again))

    def skip(self, rp: RulePlan) -> None:
        self.tallies[self.number[id(rp)][1]].skipped += 1

    def run(self, rp: RulePlan, shard: ShardStore, evaluate: Callable[..., None]) -> None:
        """``evaluate(counts=...)`` runs the version; its time and counts are added to its tally.
        The time is honest on a GPU without a synchronisation of its own: the version's join
        phase (rule_versions.run_version) ends with one (phases.PhaseClock)."""
        _, number, steps = self.number[id(rp)]
        tally = self.tallies[number]
        plan = tally.plans.get(steps)
        if plan is None:
            plan = tally.plans[steps] = PlanTally(list(steps))
        reads = [_read_size(step, shard) for step in rp.steps]
        delta_rows = next((n for step, n in zip(rp.steps, reads) if step is rp.delta_step), 0)
        counts = HeadCounts()
        self.step_rows.clear()
        t0 = time.perf_counter()
        evaluate(counts=counts)
        elapsed = time.perf_counter() - t0
        tally.runs += 1
        tally.time_s += elapsed
        tally.delta += delta_rows
        tally.out += counts.out
        tally.new += counts.new
        tally.sent += counts.sent
        plan.runs += 1
        for k, step in enumerate(rp.steps):
            plan.reads[k] += reads[k]
            plan.rows[k] += self.step_rows.get(id(step), 0)
        for key, value in zip(BY_ITERATION, (self.iteration, round(elapsed, 6), delta_rows, counts.out, counts.new)):
            tally.by_iteration[key].append(value)

    def to_json(self) -> dict[str, Any]:
        return {"versions": [{**v, **t.to_json()} for v, t in zip(self.versions, self.tallies)]}


def describe(number: int, stratum: int, rp: RulePlan, plan: Plan) -> dict[str, Any]:
    """What names a version: its rule's text and position, which atom it reads as delta, its
    steps in the order the planner chose."""
    strat = plan.strata[stratum]
    kind = "initial" if any(rp is p for p in strat.initial) else "delta" if any(rp is p for p in strat.deltas) else "subsumption"
    delta = rp.delta_step
    return {
        "version": number,
        "stratum": stratum,
        "kind": kind,
        "rule": show(rp.rule),
        "at": str(rp.rule.pos),
        "delta_atom": show(delta.atom) if delta is not None else None,
        "delta_at": str(delta.atom.pos) if delta is not None else None,
        "steps": [_step_text(step) for step in rp.steps],
    }


def _steps_text(rp: RulePlan) -> tuple[str, ...]:
    return tuple(_step_text(step) for step in rp.steps)


def _step_text(step: Step) -> str:
    if isinstance(step, JoinStep):
        return f"join {show(step.atom)} {step.version} on {list(step.order[: step.key_len])}"
    if isinstance(step, NegationStep):
        return f"anti-join !{show(step.atom)}"
    if isinstance(step, FilterStep):
        return f"filter {show(step.comparison)}"
    if isinstance(step, (AssignStep, GenerateStep)):
        return f"assign {step.var} = {show(step.expr if isinstance(step, AssignStep) else step.call)}"
    if isinstance(step, UnpackStep):
        return f"unpack {show(step.source)}"
    assert isinstance(step, AggregateStep)
    return f"aggregate {show(step.aggregation)}"


def _read_size(step: Step, shard: ShardStore) -> int:
    """The tuples of the relation a step reads on this shard (its delta or full), 0 for a step
    that reads none."""
    if isinstance(step, JoinStep):
        store = shard.store(step.atom.relation, step.route.copy)
        return int(store.delta.shape[0]) if step.version == "delta" else len(store)
    if isinstance(step, NegationStep):
        return len(shard.store(step.atom.relation, step.route.copy))
    return 0


def combine(per_shard: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's profile from its shards': per version, counts added up, time added up
    (``time_s``, work) and the slowest shard's (``time_max_s``); per iteration likewise; then
    per rule (``rules``, costliest first); each shard's own tallies under ``per_worker`` when
    there are several."""
    versions = []
    for parts in zip(*(p["versions"] for p in per_shard)):
        first = parts[0]
        merged: dict[str, Any] = {
            key: first[key] for key in ("version", "stratum", "kind", "rule", "at", "delta_atom", "delta_at", "steps")
        }
        merged.update({key: sum(p[key] for p in parts) for key in COUNTS})
        merged["runs_max"] = max(p["runs"] for p in parts)
        merged["time_s"] = round(sum(p["time_s"] for p in parts), 6)
        merged["time_max_s"] = max(p["time_s"] for p in parts)
        merged["plans"] = first["plans"] if len(parts) == 1 else _merge_plans([p["plans"] for p in parts])
        merged["by_iteration"] = (
            first["by_iteration"] if len(parts) == 1 else _merge_iterations([p["by_iteration"] for p in parts])
        )
        versions.append(merged)
    out: dict[str, Any] = {"schema": SCHEMA, "workers": len(per_shard), "versions": versions, "rules": rules(versions)}
    if len(per_shard) > 1:
        out["per_worker"] = [[{key: v[key] for key in (*COUNTS, "time_s", "plans")} for v in p["versions"]] for p in per_shard]
    return out


def _merge_plans(parts: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """A version's join orders over shards, by their steps (several shards keep the static
    plan, so each has one; a shard where the version never ran has none)."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for plans in parts:
        for plan in plans:
            entry = merged.setdefault(tuple(plan["steps"]), {"steps": plan["steps"], "runs": 0, "reads": None, "rows": None})
            entry["runs"] += plan["runs"]
            for key in ("reads", "rows"):
                entry[key] = list(plan[key]) if entry[key] is None else [a + b for a, b in zip(entry[key], plan[key])]
    return list(merged.values())


def _merge_iterations(parts: Sequence[Mapping[str, list[float]]]) -> dict[str, list[float]]:
    """Per iteration over shards: counts added up, the slowest shard's time (shards run the
    same iterations; a version idle on a shard has no entry there)."""
    by: dict[int, list[float]] = {}
    for part in parts:
        for i, t, d, o, n in zip(*(part[key] for key in BY_ITERATION)):
            acc = by.setdefault(int(i), [0.0, 0, 0, 0])
            acc[0] = max(acc[0], t)
            acc[1] += d
            acc[2] += o
            acc[3] += n
    order = sorted(by)
    return {
        "iteration": list(order),
        "time_s": [by[i][0] for i in order],
        "delta": [by[i][1] for i in order],
        "out": [by[i][2] for i in order],
        "new": [by[i][3] for i in order],
    }


def rules(versions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per rule (its versions added up), costliest first: ``share`` is its part of the time
    every version took (the join phase, with the deduplication against full done in it)."""
    total = sum(v["time_s"] for v in versions) or 1.0
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for v in versions:
        entry = grouped.setdefault(
            (v["rule"], v["at"]),
            {
                "rule": v["rule"],
                "at": v["at"],
                "stratum": v["stratum"],
                "time_s": 0.0,
                "out": 0,
                "new": 0,
                "runs": 0,
                "versions": 0,
            },
        )
        entry["time_s"] += v["time_s"]
        entry["out"] += v["out"]
        entry["new"] += v["new"]
        entry["runs"] += v["runs"]
        entry["versions"] += 1
    table = sorted(grouped.values(), key=lambda e: (-e["time_s"], e["at"]))
    for entry in table:
        entry["time_s"] = round(entry["time_s"], 6)
        entry["share"] = round(entry["time_s"] / total, 4)
    return table


def table(profile: Mapping[str, Any], top: int = 10, width: int = 60) -> str:
    """The ``top`` costliest rules as a text table (the command prints it with ``--profile``)."""
    lines = [f"{'time s':>9} {'share':>6} {'tuples out':>12} {'new':>10} {'evals':>6}  rule (where)"]
    for e in profile["rules"][:top]:
        text = e["rule"] if len(e["rule"]) <= width else e["rule"][: width - 3] + "..."
        where = e["at"].rsplit(":", 1)[0]  # file:line
        lines.append(f"{e['time_s']:9.3f} {e['share']:6.1%} {e['out']:12,} {e['new']:10,} {e['runs']:6}  {text} ({where})")
    return "\n".join(lines)
