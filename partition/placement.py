"""Placement: how every relation is laid out over ``n_shards`` shards and how every rule version's
binding table moves between its steps. A pure function of the ``Plan`` and the input sizes; the
result is the same plan with every step and head carrying its route (``engine.plan.Route``,
``HeadRoute``) and every relation its ``RelationLayout``, which the engine's one loop executes
through an ``Exchange`` without re-deriving anything.

Layout of a relation (``RelationLayout``)
- Partitioned: one copy per distinct partition key, each copy hash-partitioned (``hashing``)
  on its key columns. A join that probes an index with bound key columns needs the copy keyed
  on the first key column bound to a variable: the binding table is then partitioned by that
  variable and every match is local. One column rather than the whole key, so joins on
  ``(x)`` and on ``(x, y)`` share the copy on ``x`` (and its local indexes serve both).
- Canonical copy: the one new tuples are routed to and deduplicated at; every other copy
  maintained while the relation grows receives the deduplicated delta in one more exchange.
  It is the key the steps of the relation's own stratum want most (they run every iteration:
  probes of a copy, and scans whose next join wants the bindings partitioned on a column),
  then the key most probed anywhere. So REACH's ``path``, never probed, is keyed on column 1,
  where its delta meets ``edge(y, z)``: the scan's bindings already sit where the join needs
  them. Copies only later strata probe are built once, when the relation is complete
  (``RelationLayout.later``), instead of receiving every iteration's delta.
- Replicated: every shard holds all of it, so each join on it is local and the exchanges it
  would cause disappear. Chosen for:
  * small static relations (complete before any stratum that reads them: inputs and results
    of lower strata), below ``replicate_below`` bytes of packed rows (``sizes`` gives the
    counts that are known; a relation of unknown size is never replicated for its size);
  * nullary relations (at most one tuple, and no column to hash);
  * cross products: a join after the first with no variable in its key pairs every binding
    with every tuple, so each shard holding bindings needs the whole relation. Replicating it
    keeps the join parallel; gathering the bindings onto one shard instead would serialise
    all the work there;
  * negations with no variable in their key (``!r(_)``, ``!r(1)``): a global emptiness test;
  * aggregate bodies that cannot be co-partitioned. An aggregate whose body atoms (on
    non-replicated relations) all contain one grouping variable ``g`` is co-partitioned:
    every body relation gets a copy keyed on ``g``'s column and the binding is partitioned by
    ``g``, so each group's whole body is local and the engine's aggregate runs unchanged.
    Any other aggregate (global ones, bodies joining on other variables) gets its body
    relations replicated rather than gathered: they come from lower strata, so this is one
    broadcast per run (not per iteration), it is exact for every function (count over
    distinct bindings, min/max failing on empty groups), and the engine's aggregate still
    runs unchanged on every shard.
  Replication is decided first; every other choice is made given it.

Routing a rule version: the binding table starts as the unit binding, identical on every
shard ("everywhere"). Each step's ``Route.action`` says what the
executor does before running the step on local data:
- ``local``: nothing. Scanning a partitioned copy from everywhere turns the binding into a
  partitioned one (each shard reads its part); steps on replicated relations keep the state.
- ``exchange``: re-partition the binding table by the hash of ``key`` (variables, in order).
- ``own``: the binding is everywhere: each shard keeps the rows it owns by ``key``, with no
  communication.
- ``slice``: the binding is everywhere and the step scans a replicated relation with more
  local work behind it: shard k scans block k of n equal contiguous blocks of the relation's
  rows (of the version the step reads), so that work is split, not repeated. A scan whose
  bindings next meet an ``own`` step or the head stays everywhere instead, and ``own`` then
  partitions it without communication.
``HeadRoute`` does the same for the produced tuples: ``exchange`` to the owners by the head
relation's canonical key, ``local`` when the binding is already partitioned by those
variables (or, for a replicated head, already everywhere), ``own`` from everywhere, and
``broadcast`` to every shard for a replicated head.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from dask_datalog.engine.ir import Atom, Var, walk
from dask_datalog.engine.plan import (
    AggregateStep,
    HeadAction,
    HeadRoute,
    JoinStep,
    Key,
    NegationStep,
    Plan,
    RelationLayout,
    Route,
    RouteAction,
    RulePlan,
    Step,
)
from dask_datalog.engine.storage.hisa import words_for
from dask_datalog.partition import REPLICATE_BELOW


def place(
    plan: Plan,
    n_shards: int,
    sizes: Mapping[str, int] | None = None,
    replicate_below: int = REPLICATE_BELOW,
) -> Plan:
    """``plan`` laid out over ``n_shards``: every relation's layout, every step's ``Route`` and
    every version's ``HeadRoute``. ``sizes``: known tuple counts (inputs; lower-strata results
    when placing between strata). One shard holds everything: the plan stays all local."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if n_shards == 1:
        return plan
    program = plan.program
    versions = list(plan.versions())
    replicated: dict[str, str] = {}
    static = _static_relations(plan)
    for name, rel in program.relations.items():
        size = (sizes or {}).get(name)
        if rel.arity == 0:
            replicated[name] = "nullary: at most one tuple, nothing to hash"
        elif rel.choice:
            replicated[name] = "choice-domain: every shard sees every candidate and keeps the same ones"
        elif name in static and size is not None and size * words_for(rel.arity) * 8 < replicate_below:
            replicated[name] = f"small static relation: {size * words_for(rel.arity) * 8} bytes < {replicate_below}"
    while True:  # each forced replica can only remove needs for others: this ends
        survey = _Survey()
        for i, rp in versions:
            survey.version(rp, i, replicated)
        forced = {r: why for r, why in survey.replicate.items() if r not in replicated}
        if not forced:
            break
        replicated.update(forced)
    stratum_of = {r: i for i, s in enumerate(plan.strata) for r in s.relations}
    layouts = {name: _layout(name, stratum_of.get(name), replicated, survey) for name in sorted(program.relations)}
    strata = tuple(
        replace(
            s,
            initial=tuple(_route(rp, layouts, s.relations) for rp in s.initial),
            deltas=tuple(_route(rp, layouts, s.relations) for rp in s.deltas),
            subsumption=tuple(
                replace(
                    sp,
                    settle=tuple(_route(rp, layouts, s.relations) for rp in sp.settle),
                    reject=tuple(_route(rp, layouts, s.relations) for rp in sp.reject),
                    delete=tuple(tuple(_route(rp, layouts, s.relations) for rp in versions) for versions in sp.delete),
                )
                for sp in s.subsumption
            ),
        )
        for s in plan.strata
    )
    return replace(plan, strata=strata, shards=n_shards, layouts=layouts)


# -- what each step needs ----------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    """A step's demands given the replicated set: the variable the binding must be partitioned
    by (None: none), the (relation, key) copies it reads, relations it needs replicated, and
    whether it scans a partitioned relation (no variable in its key)."""

    var: str | None = None
    copies: tuple[tuple[str, Key], ...] = ()
    replicate: tuple[tuple[str, str], ...] = ()
    scan: bool = False


def _need(step: Step, replicated: Mapping[str, str], head: str) -> _Need:
    if isinstance(step, JoinStep | NegationStep):
        relation = step.atom.relation
        if relation in replicated:
            return _Need()
        column = _variable_key_column(step.atom, step.order[: step.key_len])
        if column is not None:
            key = step.atom.args[column]
            assert isinstance(key, Var)
            return _Need(key.name, ((relation, (column,)),))
        if isinstance(step, NegationStep):
            return _Need(replicate=((relation, "negation with no variable key: a global test"),))
        return _Need(scan=True)
    if isinstance(step, AggregateStep):
        atoms = [a for a in _atoms_in(step.steps) if a.relation not in replicated]
        if not atoms:
            return _Need()
        var = _co_partition_variable(step, atoms)
        if var is None:
            why = f"aggregate body not co-partitionable, in a rule for {head}"
            return _Need(replicate=tuple((a.relation, why) for a in atoms))
        return _Need(var, tuple((a.relation, (_column_of(a, var),)) for a in atoms))
    return _Need()


def _variable_key_column(atom: Atom, key: Iterable[int]) -> int | None:
    return next((c for c in key if isinstance(atom.args[c], Var)), None)


def _atoms_in(plan_part: object) -> list[Atom]:
    """The atoms every join and negation under ``plan_part`` (steps, rule versions) reads,
    aggregate bodies included."""
    return [s.atom for s in walk(plan_part) if isinstance(s, JoinStep | NegationStep)]


def _co_partition_variable(step: AggregateStep, atoms: list[Atom]) -> str | None:
    """A grouping variable every atom has as an argument: each group's body is then local."""
    return next((g for g in step.grouping if all(Var(g) in a.args for a in atoms)), None)


def _column_of(atom: Atom, var: str) -> int:
    return atom.args.index(Var(var))


def _vars_at(atom: Atom, key: Key) -> tuple[str, ...] | None:
    """The variables at ``key``'s columns of ``atom``: what the copy's partitioning means for
    a binding read through it (None when a column holds a constant or wildcard)."""
    args = [atom.args[c] for c in key]
    return tuple(a.name for a in args if isinstance(a, Var)) if all(isinstance(a, Var) for a in args) else None


def _next_need(steps: tuple[Step, ...], replicated: Mapping[str, str], head: str) -> str | None:
    """The partitioning variable the next partitioned step will ask for, if any."""
    for s in steps:
        need = _need(s, replicated, head)
        if need.var is not None:
            return need.var
    return None


def _static_relations(plan: Plan) -> set[str]:
    """Relations complete before any stratum reads them: not read by the stratum deriving them."""
    growing: set[str] = set()
    for s in plan.strata:
        read = {a.relation for a in _atoms_in(s.initial + s.deltas + s.subsumptive)}
        growing |= read & set(s.relations)
    return set(plan.program.relations) - growing


# -- pass 1: survey the demands ------------------------------------------------------------


class _Survey:
    """Demands of every rule version under a replicated set: forced replicas, and per
    (relation, key, stratum) how many steps probe that copy and how many scans would like
    their bindings partitioned that way for the join that follows."""

    def __init__(self) -> None:
        self.replicate: dict[str, str] = {}
        self.probes: Counter[tuple[str, Key, int]] = Counter()
        self.scans: Counter[tuple[str, Key, int]] = Counter()

    def version(self, rp: RulePlan, stratum: int, replicated: Mapping[str, str]) -> None:
        head = rp.rule.head.relation
        everywhere = True  # until the first join or the first step that partitions by a key
        for i, step in enumerate(rp.steps):
            need = _need(step, replicated, head)
            for relation, why in need.replicate:
                self.replicate.setdefault(relation, why)
            self.probes.update((r, k, stratum) for r, k in need.copies)
            if need.scan:
                assert isinstance(step, JoinStep)
                if not everywhere:
                    self.replicate.setdefault(step.atom.relation, f"cross product in a rule for {head}")
                else:
                    var = _next_need(rp.steps[i + 1 :], replicated, head)
                    if var is not None and Var(var) in step.atom.args:
                        self.scans[(step.atom.relation, (_column_of(step.atom, var),), stratum)] += 1
            if isinstance(step, JoinStep) or need.var is not None:
                everywhere = False


def _layout(name: str, stratum: int | None, replicated: Mapping[str, str], survey: _Survey) -> RelationLayout:
    """Canonical key: the one the steps of the relation's own stratum (run every iteration while
    it grows) want most, then the one most probed anywhere, then most scanned, then the
    smallest. Copies probed in its own stratum (all of them for an input) are maintained; the
    others are built later."""
    if name in replicated:
        return RelationLayout(True, (), (), replicated[name])
    probes = [(k, s, n) for (r, k, s), n in survey.probes.items() if r == name]
    scans = [(k, s, n) for (r, k, s), n in survey.scans.items() if r == name]

    def score(key: Key) -> tuple[int, int, int]:
        own = sum(n for k, s, n in probes + scans if k == key and s == stratum)
        return own, sum(n for k, _, n in probes if k == key), sum(n for k, _, n in scans if k == key)

    candidates = sorted({k for k, _, _ in probes + scans})
    canonical = max(candidates, key=score) if candidates else (0,)
    maintained = {k for k, s, _ in probes if stratum is None or s == stratum} - {canonical}
    later = {k for k, _, _ in probes} - maintained - {canonical}
    why = "; ".join(f"column {k[0]}: {score(k)[1]} probes, {score(k)[2]} scans" for k in candidates)
    return RelationLayout(False, (canonical, *sorted(maintained)), tuple(sorted(later)), why or "never joined")


# -- pass 2: route every rule version -----------------------------------------------------


def _route(rp: RulePlan, layouts: Mapping[str, RelationLayout], growing: tuple[str, ...]) -> RulePlan:
    """The version with its routes. ``growing``: the relations of its stratum, whose later
    copies do not exist yet."""
    replicated = {name: layout.reason for name, layout in layouts.items() if layout.replicated}
    head_atom = rp.rule.head
    head = layouts[head_atom.relation]
    head_vars = None if head.replicated else _vars_at(head_atom, head.canonical or ())
    everywhere = True
    dist: tuple[str, ...] | None = None  # the variables the binding is partitioned by, if known
    steps: list[Step] = []
    for i, step in enumerate(rp.steps):
        need = _need(step, replicated, head_atom.relation)
        rest = rp.steps[i + 1 :]
        if need.var is not None:
            key = (need.var,)
            action = RouteAction.OWN if everywhere else RouteAction.LOCAL if dist == key else RouteAction.EXCHANGE
            copy = need.copies[0][1] if isinstance(step, JoinStep | NegationStep) else None
            step = _with_body_routes(step, replicated, need)
            steps.append(replace(step, route=Route(action, key if action is not RouteAction.LOCAL else (), copy)))
            everywhere, dist = False, key
        elif need.scan:
            assert everywhere and isinstance(step, JoinStep), "the survey replicates scans after the first join"
            layout = layouts[step.atom.relation]
            available = layout.keys if step.atom.relation in growing else layout.copies
            copy = _scan_copy(step.atom, available, _next_need(rest, replicated, head_atom.relation), head_vars)
            steps.append(replace(step, route=Route(RouteAction.LOCAL, copy=copy)))
            everywhere, dist = False, _vars_at(step.atom, copy)
        elif (
            isinstance(step, JoinStep)
            and everywhere
            and step.key_len == 0
            and _more_local_work(rest, replicated, head_atom.relation)
        ):
            steps.append(replace(step, route=Route(RouteAction.SLICE)))
            everywhere, dist = False, None
        elif step.route.action is RouteAction.AGREE:
            steps.append(replace(step, route=replace(step.route, alike=everywhere)))
        else:
            steps.append(_with_body_routes(step, replicated, need))
    return replace(rp, steps=tuple(steps), head=_head_route(head, everywhere, dist, head_vars))


def _scan_copy(atom: Atom, available: tuple[Key, ...], next_var: str | None, head_vars: tuple[str, ...] | None) -> Key:
    """The copy a scan reads: the one already partitioned as the next step (or else the head)
    wants its bindings; the canonical copy otherwise."""
    wanted = (next_var,) if next_var is not None else head_vars
    return next((k for k in available if wanted is not None and _vars_at(atom, k) == wanted), available[0])


def _more_local_work(steps: tuple[Step, ...], replicated: Mapping[str, str], head: str) -> bool:
    """Whether the next relation step after a replicated scan runs locally (a replicated join,
    negation or aggregate): then the scan is sliced so that work is split across shards."""
    for s in steps:
        if isinstance(s, JoinStep | NegationStep | AggregateStep):
            return _need(s, replicated, head).var is None
    return False


def _with_body_routes(step: Step, replicated: Mapping[str, str], need: _Need) -> Step:
    """An aggregate's body steps all run locally: on replicas, or on the copies keyed on the
    co-partitioning variable (``need.var``)."""
    if not isinstance(step, AggregateStep):
        return step
    body: list[Step] = []
    for s in step.steps:
        if isinstance(s, JoinStep | NegationStep) and s.atom.relation not in replicated:
            assert need.var is not None
            s = replace(s, route=Route(RouteAction.LOCAL, copy=(_column_of(s.atom, need.var),)))
        body.append(_with_body_routes(s, replicated, need))
    return replace(step, steps=tuple(body))


def _head_route(
    head: RelationLayout, everywhere: bool, dist: tuple[str, ...] | None, head_vars: tuple[str, ...] | None
) -> HeadRoute:
    """Where the version's head tuples go (``HeadRoute``)."""
    if head.replicated:
        return HeadRoute(HeadAction.LOCAL if everywhere else HeadAction.BROADCAST)
    key = head.canonical or ()
    if everywhere:
        return HeadRoute(HeadAction.OWN, key)
    if dist is not None and dist == head_vars:
        return HeadRoute(HeadAction.LOCAL)
    return HeadRoute(HeadAction.EXCHANGE, key)
