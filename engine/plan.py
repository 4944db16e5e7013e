"""Relational plans: pure functions from the checked program to what a shard executes.

A rule version is a pipeline over a binding table (one column per bound variable): each
positive atom is a join against an index of its relation whose leading columns are the
atom's already-bound positions; comparisons, assignments, negations and aggregates run as
soon as their variables are bound. The plan is plain frozen data: a shard (or a later
partitioning layer) executes it and never re-derives it.

Semi-naive: a recursive rule with k body atoms on relations of its own stratum gets k delta
versions, version i reading the delta of atom i and full for the others (full already holds
the delta, so some delta x delta combinations are produced twice and removed by dedup; full
x full is never recomputed). Each version's join order starts from its delta atom.

Routes: every step that reads a relation carries a ``Route`` and every rule version a
``HeadRoute``: what happens to the binding table before the step, and where the produced tuples
go. ``plan_program`` makes every route local (one shard holds everything);
``partition.placement.place`` returns the same plan with the routes and relation layouts of a
run over several shards. The engine's loop executes either the same way, through its
``Exchange`` (engine/exchange.py).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

from dask_datalog.engine import functors
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend.strata import stratify
from dask_datalog.engine.ir import (
    Aggregation,
    Atom,
    BaseType,
    BodyLiteral,
    Call,
    Comparison,
    Const,
    Negation,
    Program,
    Record,
    Rule,
    Term,
    Var,
    Wildcard,
    calls,
    ground,
    instances,
    is_named_wildcard,
    variable_names,
    walk,
)

Version = Literal["full", "delta"]
# Estimated rows of ``atom``'s full relation that one binding meets when the given columns of
# the atom are bound: the planner's cost of taking that join next (engine/execution/join_order.py).
JoinCost = Callable[[Atom, tuple[int, ...]], float]
Key = tuple[int, ...]  # columns of a relation whose hash decides a tuple's shard


class RouteAction(enum.StrEnum):
    """What the binding table goes through before a step runs on this shard's data.

    - ``LOCAL``: nothing.
    - ``EXCHANGE``: re-partition it among the shards by the hash of the route's ``key``
      variables (a collective: the version's pipeline is cut there).
    - ``OWN``: it is the same on every shard; each keeps the rows it owns by ``key``.
    - ``SLICE``: it is the same on every shard and the step scans a replicated relation;
      shard k scans block k of the relation's rows, so the work is split, not repeated.
    - ``AGREE``: the step (an assignment from a functor that makes symbols, or a record made)
      first has every shard agree on the ids of the texts or records it makes (a collective:
      the pipeline is cut there).

    Applied in one place, ``execution.routing.Router``."""

    LOCAL = "local"
    EXCHANGE = "exchange"
    OWN = "own"
    SLICE = "slice"
    AGREE = "agree"


class HeadAction(enum.StrEnum):
    """Where a version's head tuples go: ``LOCAL`` (deduplicated here: this shard owns them),
    ``OWN`` (the binding is the same everywhere: keep the ones owned by the key),
    ``EXCHANGE`` (to their owners by the head relation's canonical key) or ``BROADCAST`` (to
    every shard: a replicated relation)."""

    LOCAL = "local"
    OWN = "own"
    EXCHANGE = "exchange"
    BROADCAST = "broadcast"


@dataclass(frozen=True)
class Route:
    """A step's ``RouteAction`` with its ``key`` (variables) and ``copy``: the key of the
    partitioned copy of the relation the step reads (None: the relation's only store: one
    shard, or a replicated relation); ``alike``: an ``AGREE`` step whose rows every shard has
    alike (a counter then numbers them once, not once per shard)."""

    action: RouteAction = RouteAction.LOCAL
    key: tuple[str, ...] = ()
    copy: Key | None = None
    alike: bool = False  # AGREE on a binding table that is the same on every shard


LOCAL = Route()
COLLECTIVE = frozenset({RouteAction.EXCHANGE, RouteAction.AGREE})  # the actions that cut a pipeline


@dataclass(frozen=True)
class HeadRoute:
    """A version's ``HeadAction`` with the head relation's ``key`` columns."""

    action: HeadAction = HeadAction.LOCAL
    key: Key = ()


@dataclass(frozen=True)
class RelationLayout:
    """How a relation is spread over the shards. Replicated: every shard holds all of it.
    Partitioned: one copy per key in ``keys`` (the canonical copy first: new tuples are
    deduplicated there, and each later key's copy receives the deduplicated delta every
    iteration) and in ``later`` (copies first read after the relation's stratum, built once
    from the complete relation). ``reason`` says why, for the statistics."""

    replicated: bool
    keys: tuple[Key, ...]
    later: tuple[Key, ...]
    reason: str

    @property
    def canonical(self) -> Key | None:
        return self.keys[0] if self.keys else None

    @property
    def copies(self) -> tuple[Key, ...]:
        return self.keys + self.later


@dataclass(frozen=True)
class JoinStep:
    """Join the binding table with ``atom``'s relation through the index ``order``, whose first
    ``key_len`` columns are bound (constants or bound variables) when the step runs."""

    atom: Atom
    version: Version
    order: tuple[int, ...]
    key_len: int
    keep: frozenset[str] | None  # variables still needed after it; None keeps every one
    route: Route = LOCAL


@dataclass(frozen=True)
class FilterStep:
    comparison: Comparison
    route: Route = LOCAL  # always local: it reads no relation


@dataclass(frozen=True)
class AssignStep:
    var: str
    expr: Term
    route: Route = LOCAL  # always local: it reads no relation


@dataclass(frozen=True)
class GenerateStep:
    """``var = range(...)``: each binding row becomes one row per value the generator gives."""

    var: str
    call: Call
    route: Route = LOCAL  # always local: it reads no relation


@dataclass(frozen=True)
class UnpackStep:
    """Match the value of ``source`` against a record of ``kinds``: the rows where it is nil or a
    record of other kinds (another ADT branch) fail; the others get its elements as the columns
    ``targets`` names (None: an element nothing reads)."""

    source: Term
    kinds: tuple[BaseType, ...]
    targets: tuple[str | None, ...]
    route: Route = LOCAL  # always local: it reads the record table, the same on every shard


@dataclass(frozen=True)
class NegationStep:
    atom: Atom
    order: tuple[int, ...]
    key_len: int
    route: Route = LOCAL


@dataclass(frozen=True)
class AggregateStep:
    """Correlated aggregate: the body's steps run from the distinct groups of ``grouping``.
    ``scan``, for a float sum or mean: the body's variables with their types in the order
    Soufflé's scan meets them (its atoms as written, their columns in order), which decides
    how its float additions round."""

    aggregation: Aggregation
    grouping: tuple[str, ...]
    steps: tuple[Step, ...]
    route: Route = LOCAL
    scan: tuple[tuple[str, BaseType], ...] = ()


Step = JoinStep | FilterStep | AssignStep | GenerateStep | UnpackStep | NegationStep | AggregateStep


@dataclass(frozen=True)
class RulePlan:
    rule: Rule
    steps: tuple[Step, ...]
    delta_relation: str | None  # the relation read as delta, None for an all-full version
    head: HeadRoute = HeadRoute()

    @cached_property  # asked every iteration; the plan never changes
    def delta_step(self) -> JoinStep | None:
        """The join that reads a delta (the version's first step), None for an all-full one."""
        return next((s for s in self.steps if isinstance(s, JoinStep) and s.version == "delta"), None)

    @cached_property
    def exchanges(self) -> int:
        """Collectives per run of the version (binding-table exchanges, agreements on new
        symbols): every shard takes part in them, even with nothing to send."""
        return sum(s.route.action in COLLECTIVE for s in self.steps)


@dataclass(frozen=True)
class SubsumptionPlan:
    """A relation's subsumptive rules as Soufflé 2.5 runs them (ast2ram's UnitTranslator): rule
    versions whose head rows are tuples of ``relation`` found dominated, which the loop takes
    out (execution/subsumption.py) instead of adding. The compared atoms read:

    - ``settle``: full and full, the tuples differing (Soufflé's non-recursive delete), once
      the stratum's first rules are in; what they find leaves full and the delta;
    - ``reject``: per rule, an iteration's candidates (its new tuples, staged as the delta)
      against the candidates, differing, then against full (RejectNewNew, RejectNewCurrent);
      what they find is not taken in;
    - ``delete``: per rule, its versions: full against the accepted delta (staged, not yet in
      full), then full against full, differing, with each other atom of the stratum read as
      delta in turn (DeleteCurrentDelta, DeleteCurrentCurrent); each rule's finds leave full
      before the next rule runs.

    Every other atom reads full."""

    relation: str
    settle: tuple[RulePlan, ...]
    reject: tuple[RulePlan, ...]
    delete: tuple[tuple[RulePlan, ...], ...]


@dataclass(frozen=True)
class StratumPlan:
    relations: tuple[str, ...]
    recursive: bool
    initial: tuple[RulePlan, ...]  # every rule, all atoms full: run once
    deltas: tuple[RulePlan, ...]  # semi-naive versions, run each iteration until no delta
    subsumption: tuple[SubsumptionPlan, ...] = ()  # by relation name, Soufflé's order

    @property
    def subsumptive(self) -> tuple[RulePlan, ...]:
        """Every version of the stratum's subsumptive rules."""
        return tuple(rp for sp in self.subsumption for rp in (*sp.settle, *sp.reject, *itertools.chain(*sp.delete)))


@dataclass(frozen=True)
class Plan:
    program: Program
    strata: tuple[StratumPlan, ...]
    shards: int = 1
    layouts: Mapping[str, RelationLayout] = field(default_factory=dict)  # empty on one shard

    def layout(self, name: str) -> RelationLayout | None:
        return self.layouts.get(name)

    def indexes(self) -> frozenset[tuple[str, tuple[int, ...]]]:
        """Every (relation, column order) a full relation is read through."""
        return frozenset(
            (s.atom.relation, s.order)
            for s in walk(self.strata)
            if isinstance(s, NegationStep) or (isinstance(s, JoinStep) and s.version == "full")
        )

    def versions(self) -> Iterator[tuple[int, RulePlan]]:
        """(stratum number, rule version) for every version of every stratum."""
        for i, stratum in enumerate(self.strata):
            for rp in stratum.initial + stratum.deltas + stratum.subsumptive:
                yield i, rp


def plan_program(program: Program) -> Plan:
    strata = []
    for stratum in stratify(program):
        rules = tuple(_lift_made_values(_lift_atom_expressions(r)) for r in stratum.rules)
        initial = tuple(plan_rule(r, None, program) for r in rules)
        deltas = []
        if stratum.recursive:
            for r in rules:
                for i, lit in enumerate(r.body):
                    if isinstance(lit, Atom) and lit.relation in stratum.relations:
                        deltas.append(plan_rule(r, i, program, order=written_plan(r, i, stratum.relations)))
        strata.append(
            StratumPlan(
                relations=tuple(sorted(stratum.relations)),
                recursive=stratum.recursive,
                initial=initial,
                deltas=tuple(deltas),
                subsumption=_plan_subsumption(stratum.subsumptions, stratum.relations, stratum.recursive, program),
            )
        )
    return Plan(program, tuple(strata))


def expiring(plan: Plan, keep: Collection[str]) -> tuple[frozenset[str], ...]:
    """Per stratum, the relations to free once it ends: those not in ``keep`` (what the caller
    reads after the run) that no later stratum reads or makes, as Soufflé clears expired
    relations (its RAM ``Clear``). A relation nothing reads or makes (an input no rule uses)
    goes after the first stratum; a ``debug_delta`` pair is kept, since its relation is
    written from another relation's stratum."""
    last: dict[str, int] = dict.fromkeys(plan.program.relations, 0)
    for i, stratum in enumerate(plan.strata):
        for name in stratum.relations:
            last[name] = i
        for rp in stratum.initial + stratum.subsumptive:
            for atom in instances(rp.rule.body, Atom):
                last[atom.relation] = i
    kept = set(keep) | {name for pair in plan.program.debug_deltas for name in pair}
    return tuple(frozenset(name for name, at in last.items() if at == i and name not in kept) for i in range(len(plan.strata)))


def released_orders(plan: Plan) -> tuple[dict[str, frozenset[tuple[int, ...]]], ...]:
    """Per stratum, relation -> the column orders later strata read it through (their static
    plans), for the relations whose store can free something when the stratum ends: the other
    orders (and the canonical order's hash tables, unless it is one of them) once their last
    static reader is done, and the stratum's own relations' dedup and delta structures. A
    join the size planner orders otherwise rebuilds what it reads."""
    read = [
        {
            (s.atom.relation, s.order)
            for s in walk(stratum)
            if isinstance(s, NegationStep) or (isinstance(s, JoinStep) and s.version == "full")
        }
        for stratum in plan.strata
    ]
    out: list[dict[str, frozenset[tuple[int, ...]]]] = []
    later: set[tuple[str, tuple[int, ...]]] = set()
    for i in range(len(plan.strata) - 1, -1, -1):  # later = what strata after i read
        changed = {name for name, _ in read[i] - later} | set(plan.strata[i].relations)
        out.append({name: frozenset(o for r, o in later if r == name) for name in sorted(changed)})
        later |= read[i]
    return tuple(reversed(out))


def _plan_subsumption(
    rules: tuple[Rule, ...], members: frozenset[str], recursive: bool, program: Program
) -> tuple[SubsumptionPlan, ...]:
    """``SubsumptionPlan``s of a stratum's subsumptive rules (``ir.Program.subsumptions``);
    "differing" is ``[dominated] != [dominating]``, compared element by element."""
    out = []
    for relation in sorted({r.head.relation for r in rules}):
        settle, reject, delete = [], [], []
        for written in rules:
            if written.head.relation != relation:
                continue
            lifted = _lift_atom_expressions(written)
            dominated, dominating = lifted.body[0], lifted.body[1]
            assert isinstance(dominated, Atom) and isinstance(dominating, Atom), "a subsumption compares two atoms"
            rule = _lift_made_values(replace(lifted, head=dominated))  # the head is the dominated atom, as lifted
            distinct = Comparison("!=", Record(dominated.args), Record(dominating.args), rule.pos)
            differing = replace(rule, body=(dominated, dominating, distinct, *rule.body[2:]))
            settle.append(plan_rule(differing, None, program))
            if not recursive:
                continue
            reject.append(plan_rule(differing, 0, program, also_delta=frozenset({1})))
            reject.append(plan_rule(rule, 0, program))
            others = [i for i, lit in enumerate(differing.body) if i > 2 and isinstance(lit, Atom) and lit.relation in members]
            delete.append((plan_rule(rule, 1, program), *(plan_rule(differing, i, program) for i in others)))
        out.append(SubsumptionPlan(relation, tuple(settle), tuple(reject), tuple(delete)))
    return tuple(out)


def literal_vars(lit: BodyLiteral) -> set[str]:
    """The variables a literal binds or reads; an aggregation's are its result and the free
    variables of its body and target."""
    if isinstance(lit, Aggregation):
        return {lit.result.name} | _aggregation_free_vars(lit)
    return variable_names(lit)


def _aggregation_free_vars(agg: Aggregation) -> set[str]:
    return variable_names((agg.target, agg.body))


def _lift_atom_expressions(rule: Rule, counter: Iterator[int] | None = None) -> Rule:
    """``r(x + 1, y)`` in a body becomes ``r($lift0, y), $lift0 = x + 1`` so joins only see
    variables and constants; the assignment or filter is placed by the ordinary planning. A
    record too: ``r([x, y])`` is ``r($lift0), $lift0 = [x, y]``, the record looked up before
    the join when x and y are bound, else matched after it. A float constant in a positive
    atom too: Soufflé compares it as a float (``e(0.0)`` holds for -0.0), where a join or a
    negation compares bits. One counter per rule, aggregate bodies included, keeps the fresh
    names distinct."""
    counter = counter if counter is not None else itertools.count()
    body: list[BodyLiteral] = []
    extra: list[BodyLiteral] = []

    def lift(atom: Atom, positive: bool) -> Atom:
        args: list[Term] = []
        for a in atom.args:
            if isinstance(a, (Call, Record)) or (positive and isinstance(a, Const) and a.type == "float"):
                v = Var(f"$lift{next(counter)}", a.pos)
                extra.append(Comparison("=", v, a, a.pos, _type_of(a)))
                args.append(v)
            else:
                args.append(a)
        return replace(atom, args=tuple(args))

    for lit in rule.body:
        if isinstance(lit, Atom):
            body.append(lift(lit, True))
        elif isinstance(lit, Negation):
            body.append(replace(lit, atom=lift(lit.atom, False)))
        elif isinstance(lit, Aggregation):
            inner = _lift_atom_expressions(Rule(rule.head, lit.body, lit.pos), counter)
            body.append(replace(lit, body=inner.body))
        else:
            body.append(lit)
    return replace(rule, body=tuple(body + extra))


def _lift_made_values(rule: Rule) -> Rule:
    """Every call of a functor that makes symbols (``cat``, ``substr``, ``to_string``) or counts
    (``autoinc``), and every record the head makes (but records of constants, known before
    evaluation), innermost first, becomes an assignment to a fresh variable,
    ``$made0 = cat(x, y)``, which the planner places as an ``AGREE`` step: the one place where a
    rule's new texts and records get their ids.
    (Aggregate bodies make none: the checker refuses it.)"""
    counter = itertools.count()
    extra: list[BodyLiteral] = []

    def lift(t: Term, records: bool) -> Term:
        if isinstance(t, Record):
            t = replace(t, args=tuple(lift(a, records) for a in t.args))
            if not records or ground(t):
                return t
        elif isinstance(t, Call):
            t = replace(t, args=tuple(lift(a, records) for a in t.args))
            if not functors.of(t).agreed:
                return t
        else:
            return t
        v = Var(f"$made{next(counter)}", t.pos)
        extra.append(Comparison("=", v, t, t.pos, _type_of(t)))
        return v

    head = replace(rule.head, args=tuple(lift(a, True) for a in rule.head.args))
    body = [
        replace(lit, left=lift(lit.left, False), right=lift(lit.right, False)) if isinstance(lit, Comparison) else lit
        for lit in rule.body
    ]
    if not extra:
        return rule
    return replace(rule, head=head, body=tuple(body + extra))


def _type_of(t: Call | Record | Const) -> BaseType:
    """The type of a value lifted out of where it was written (a record is a record id)."""
    return "record" if isinstance(t, Record) else t.type


def plan_rule(
    rule: Rule,
    delta_index: int | None,
    program: Program,
    also_delta: frozenset[int] = frozenset(),
    cost: JoinCost | None = None,
    order: tuple[int, ...] | None = None,
) -> RulePlan:
    """The version of ``rule`` reading body literal ``delta_index`` as delta (first), and
    those ``also_delta`` lists (a subsumption's candidates against candidates); ``cost``: the
    joins ordered by estimated fan-out (``_order_body``); ``order``: the body indexes of its
    atoms in the order its ``.plan`` gives (``written_plan``), which wins over both."""
    head_vars = variable_names(rule.head)
    delta_relation = None
    if delta_index is not None:
        atom = rule.body[delta_index]
        assert isinstance(atom, Atom)
        delta_relation = atom.relation
    steps = _order_body(
        rule.body, set(), delta_index, head_vars, keep_all=False, program=program, also_delta=also_delta, cost=cost, order=order
    )
    return RulePlan(rule, steps, delta_relation)


def written_plan(rule: Rule, delta_index: int, recursive: Collection[str]) -> tuple[int, ...] | None:
    """The body indexes of ``rule``'s atoms in the order its ``.plan`` gives the version whose
    delta is body literal ``delta_index``: Soufflé numbers a rule's versions by its atoms on
    relations of its recursion (``recursive``), as written, from 0. None without one, or where
    the rule no longer has the atoms the plan counted (an inlined or magic-set rewrite)."""
    if not rule.plans:
        return None
    recursion = [i for i, lit in enumerate(rule.body) if isinstance(lit, Atom) and lit.relation in recursive]
    given = dict(rule.plans).get(recursion.index(delta_index))
    atoms = [i for i, lit in enumerate(rule.body) if isinstance(lit, Atom)]
    if given is None or sorted(given) != list(range(1, len(atoms) + 1)):
        return None
    return tuple(atoms[k - 1] for k in given)


def replannable(rp: RulePlan, recursive: Collection[str]) -> bool:
    """Whether ``replan_version`` may order ``rp`` (a version of the stratum of ``recursive``)
    otherwise: not where only one order exists, where the rule numbers its bindings
    (``autoinc()``: its numbers must not depend on relation sizes) or where its ``.plan``
    orders the version."""
    index = _delta_index(rp)
    choices = sum(isinstance(lit, Atom) for lit in rp.rule.body) - (index is not None)
    return not (
        choices < 2
        or any(_counts(lit) for lit in rp.rule.body)
        or (index is not None and written_plan(rp.rule, index, recursive))
    )


def replan_version(rp: RulePlan, recursive: Collection[str], program: Program, cost: JoinCost) -> RulePlan:
    """``rp`` (a version of a one-shard plan, of the stratum of ``recursive``) with its joins
    ordered by ``cost``, reading the same delta; ``rp`` itself where it is not
    ``replannable``."""
    if not replannable(rp, recursive):
        return rp
    return plan_rule(rp.rule, _delta_index(rp), program, cost=cost)


def _delta_index(rp: RulePlan) -> int | None:
    delta = rp.delta_step
    return None if delta is None else rp.rule.body.index(delta.atom)


def _order_body(
    written: tuple[BodyLiteral, ...],
    bound: set[str],
    delta_index: int | None,
    needed_after: set[str],
    keep_all: bool,
    program: Program,
    names: Iterator[int] | None = None,
    also_delta: frozenset[int] = frozenset(),
    cost: JoinCost | None = None,
    order: tuple[int, ...] | None = None,
) -> tuple[Step, ...]:
    """Greedy order: the delta atom first, then ready filters/assignments/unpackings/negations/
    aggregates, then the atom with the most bound positions (written order breaks ties); with
    ``cost``, among the atoms that share a variable or constant with what is bound (a cross
    product only when none does), the one with the smallest estimated fan-out. An aggregate's
    body keeps the static order (its float sums add in Soufflé's scan order). ``order``: the
    atoms are taken in that order instead, the delta wherever it stands (a ``.plan``).
    Unpacking a record adds the comparisons of its elements that bind nothing (``names``: the
    fresh names of the elements, one counter per rule version). ``keep_all``: an aggregate
    body's, which makes no records."""
    body = list(written)
    names = names if names is not None else itertools.count()
    pending = list(range(len(body)))
    bound = set(bound)
    raw: list[tuple[int, Step]] = []
    # An aggregate's result is bound by the aggregate alone: `x = n, n = count : {...}` must
    # compare x with the count, not assign n from x before the aggregate runs.
    aggregate_results = {lit.result.name for lit in body if isinstance(lit, Aggregation)}
    # A value every shard agrees on is bound by its own assignment only, never from elsewhere.
    agreed = {lit.left.name for lit in body if _agrees(lit) and isinstance(lit, Comparison) and isinstance(lit.left, Var)}

    # A float variable a positive atom binds is compared with `v = expr`, never assigned by it
    # and then joined on its bits: as in Soufflé, 0.0 = -0.0 holds there and NaN = NaN fails.
    grounded = {a.name for lit in body if isinstance(lit, Atom) for a in lit.args if isinstance(a, Var)}

    def assignable(lit: Comparison) -> set[str]:
        """The variables ``lit`` may not assign (it compares with them)."""
        return aggregate_results | (set() if _agrees(lit) else agreed) | (grounded if lit.type == "float" else set())

    def take(i: int) -> None:
        pending.remove(i)
        lit = body[i]
        if isinstance(lit, Atom):
            raw.append((i, _join_step(lit, bound, "delta" if i == delta_index or i in also_delta else "full")))
            bound.update(literal_vars(lit))
        elif isinstance(lit, Negation):
            order, key_len = _index_for(lit.atom, bound | literal_vars(lit.atom))
            raw.append((i, NegationStep(lit.atom, order, key_len)))
        elif isinstance(lit, Comparison):
            target = _assignment_target(lit, bound, assignable(lit))
            generated = _generated(lit)
            unpack = (
                None if target is not None or generated is not None or literal_vars(lit) <= bound else _unpack_target(lit, bound)
            )
            if generated is not None and target is None:  # its left side has a value: generate, then compare
                left, call = generated
                fresh = Var(f"$gen{next(names)}", call.pos)
                raw.append((i, GenerateStep(fresh.name, call)))
                raw.append((i, FilterStep(replace(lit, left=left, right=fresh))))
            elif unpack is not None:
                source, record = unpack
                targets: list[str | None] = []
                for arg, kind in zip(record.args, record.kinds, strict=True):
                    if isinstance(arg, Var) and arg.name not in bound and arg.name not in targets:
                        targets.append(arg.name)
                    elif isinstance(arg, Wildcard):
                        targets.append(None)
                    else:  # a constant, a bound variable, a nested record: compared once bound
                        element = Var(f"$element{next(names)}", arg.pos)
                        targets.append(element.name)
                        pending.append(len(body))
                        body.append(Comparison("=", element, arg, lit.pos, kind))
                raw.append((i, UnpackStep(source, record.kinds, tuple(targets))))
                bound.update(t for t in targets if t is not None)
            elif target is None:
                raw.append((i, FilterStep(lit)))
            else:
                var, expr = target
                if generated is not None:
                    raw.append((i, GenerateStep(var, generated[1])))
                else:
                    raw.append((i, AssignStep(var, expr, _assignment_route(var, expr, lit, body, needed_after, keep_all))))
                bound.add(var)
        else:
            inner_vars = _aggregation_free_vars(lit)
            grouping = tuple(sorted(inner_vars & bound))
            steps = _order_body(lit.body, set(grouping), None, set(), keep_all=True, program=program, names=names)
            scan = _scan_order(lit, program) if lit.type == "float" and lit.func in ("sum", "mean") else ()
            raw.append((i, AggregateStep(lit, grouping, steps, scan=scan)))
            bound.add(lit.result.name)

    def ready(i: int) -> bool:
        lit = body[i]
        if isinstance(lit, Atom):
            return False
        if _counts(lit):  # autoinc() numbers the rule's bindings: after every join
            return not any(isinstance(body[j], Atom) for j in pending)
        if isinstance(lit, Negation):
            return literal_vars(lit) <= bound
        if isinstance(lit, Comparison):
            generated = _generated(lit)
            if generated is not None:  # its variable assigned by it, or its left side known first (then compared)
                left, call = generated
                assigned = _has_value(left, bound) or _assignment_target(lit, bound, assignable(lit)) is not None
                return variable_names(call) <= bound and assigned
            return (
                literal_vars(lit) <= bound
                or _assignment_target(lit, bound, assignable(lit)) is not None
                or _unpack_target(lit, bound) is not None
            )
        return _grouping_ready(lit, bound, tuple(body), i)

    if delta_index is not None and order is None:
        take(delta_index)
    while pending:
        progressed = True
        while progressed:
            progressed = False
            for i in list(pending):
                if ready(i):
                    take(i)
                    progressed = True
        atoms = [i for i in pending if isinstance(body[i], Atom)]
        if not atoms:
            break
        if order is not None:
            take(next(i for i in order if i in atoms))
        else:
            take(max(atoms, key=lambda i: _priority(body[i], i, bound, cost)))
    if pending:
        raise AssertionError(f"planner could not place {[body[i] for i in pending]}: unsafe rule passed the checker")
    return _with_liveness([s for _, s in raw], needed_after, keep_all)


def _scan_order(agg: Aggregation, program: Program) -> tuple[tuple[str, BaseType], ...]:
    """The variables of ``agg``'s positive atoms, as written, with their columns' types; for a
    materialised body, its named variables by name (the columns of Soufflé's body relation)."""
    seen: dict[str, BaseType] = {}
    for lit in agg.body:
        if isinstance(lit, Atom):
            for arg, attr in zip(lit.args, program.relations[lit.relation].attributes):
                if isinstance(arg, Var):
                    seen.setdefault(arg.name, attr.type)
    if agg.distinct:
        return tuple(sorted((name, t) for name, t in seen.items() if not is_named_wildcard(name)))
    return tuple(seen.items())


def _generated(c: Comparison) -> tuple[Term, Call] | None:
    """``v = range(...)``, the one place the checker leaves a generator (a term for v where an
    inline relation's head variable became its use's argument)."""
    if isinstance(c.right, Call) and c.right.name == "range":
        return c.left, c.right
    return None


def _agrees(lit: BodyLiteral) -> bool:
    """``$madeN = f(...)`` of ``_lift_made_values``: f's values agreed by every shard."""
    return isinstance(lit, Comparison) and isinstance(lit.right, Call) and functors.of(lit.right).agreed


def _counts(lit: BodyLiteral) -> bool:
    return isinstance(lit, Comparison) and any(functors.of(c).counter for c in calls(lit))


def _grouping_ready(agg: Aggregation, bound: set[str], body: tuple[BodyLiteral, ...], i: int) -> bool:
    """An aggregate runs once every variable it shares with the rest of the rule is bound."""
    outside: set[str] = set()
    for j, lit in enumerate(body):
        if j != i:
            outside |= literal_vars(lit)
    return (_aggregation_free_vars(agg) & outside) <= bound


def _bound_positions(atom: BodyLiteral, bound: set[str]) -> int:
    return len(_bound_columns(atom, bound))


def _bound_columns(atom: BodyLiteral, bound: set[str]) -> tuple[int, ...]:
    assert isinstance(atom, Atom)
    return tuple(j for j, a in enumerate(atom.args) if isinstance(a, Const) or (isinstance(a, Var) and a.name in bound))


def _priority(atom: BodyLiteral, i: int, bound: set[str], cost: JoinCost | None) -> tuple[float, ...]:
    """The greedy planner takes the atom with the largest priority next."""
    columns = _bound_columns(atom, bound)
    if cost is None:
        return (len(columns), -i)
    assert isinstance(atom, Atom)
    return (bool(columns), -cost(atom, columns), len(columns), -i)


def _has_value(t: Term, bound: set[str]) -> bool:
    """Whether ``t`` has a value once ``bound`` are: all its variables bound, no ``_`` inside."""
    return variable_names(t) <= bound and not any(instances(t, Wildcard))


def _assignment_target(c: Comparison, bound: set[str], not_assignable: set[str]) -> tuple[str, Term] | None:
    if c.op != "=":
        return None
    for var, expr in ((c.left, c.right), (c.right, c.left)):
        if isinstance(var, Var) and var.name not in bound | not_assignable and _has_value(expr, bound):
            return var.name, expr
    return None


def _unpack_target(c: Comparison, bound: set[str]) -> tuple[Term, Record] | None:
    """(source, record) when ``c`` matches a record with variables still unbound against a
    value (``v = [x, y]`` with v bound): the record is unpacked, not made."""
    if c.op != "=":
        return None
    for source, record in ((c.left, c.right), (c.right, c.left)):
        if isinstance(record, Record) and not isinstance(source, Record) and _has_value(source, bound):
            return source, record
    return None


def _assignment_route(
    var: str, expr: Term, c: Comparison, body: list[BodyLiteral], needed_after: set[str], in_aggregate: bool
) -> Route:
    """``AGREE`` where the assignment makes symbols, counts or makes a record, else local. A record whose
    variable only atoms read is looked up, not made (``Terms.column``: no relation holds a
    record the table lacks, so no match is lost and no collective is needed)."""
    if isinstance(expr, Call) and functors.of(expr).agreed:
        return Route(RouteAction.AGREE)
    if not isinstance(expr, Record) or ground(expr):
        return LOCAL
    read_elsewhere = var in needed_after or any(
        var in literal_vars(lit) for lit in body if lit is not c and not isinstance(lit, (Atom, Negation))
    )
    if not read_elsewhere:
        return LOCAL
    if in_aggregate:
        raise DatalogError(c.pos, "unsupported: a record made inside an aggregate (match it in an atom instead)")
    return Route(RouteAction.AGREE)


def _index_for(atom: Atom, bound: set[str]) -> tuple[tuple[int, ...], int]:
    keys = [j for j, a in enumerate(atom.args) if isinstance(a, Const) or (isinstance(a, Var) and a.name in bound)]
    rest = [j for j in range(len(atom.args)) if j not in keys]
    return tuple(keys + rest), len(keys)


def _join_step(atom: Atom, bound: set[str], version: Version) -> JoinStep:
    order, key_len = _index_for(atom, bound)
    return JoinStep(atom, version, order, key_len, None)


def _with_liveness(steps: list[Step], needed_after: set[str], keep_all: bool) -> tuple[Step, ...]:
    """Attach to each join the variables later steps (or the head) still read, so the binding
    table drops dead columns early. Aggregate bodies keep everything: their count is over
    distinct bindings of all body variables."""
    live = set(needed_after)
    out: list[Step] = []
    for s in reversed(steps):
        if isinstance(s, JoinStep):
            s = replace(s, keep=None if keep_all else frozenset(live))
            live |= variable_names(s.atom)
        elif isinstance(s, FilterStep):
            live |= literal_vars(s.comparison)
        elif isinstance(s, AssignStep):
            live.discard(s.var)
            live |= variable_names(s.expr)
        elif isinstance(s, GenerateStep):
            live.discard(s.var)
            live |= variable_names(s.call)
        elif isinstance(s, UnpackStep):
            live -= set(s.targets)
            live |= variable_names(s.source)
        elif isinstance(s, NegationStep):
            live |= literal_vars(s.atom)
        else:
            live.discard(s.aggregation.result.name)
            live |= set(s.grouping)
        out.append(s)
    out.reverse()
    return tuple(out)
