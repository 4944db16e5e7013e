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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

from .ir import (
    Aggregation,
    Atom,
    BinOp,
    BodyLiteral,
    Comparison,
    Const,
    Negation,
    Program,
    Rule,
    Term,
    Var,
)
from .strata import stratify

Version = Literal["full", "delta"]


@dataclass(frozen=True)
class JoinStep:
    """Join the binding table with ``atom``'s relation through the index ``order``, whose first
    ``key_len`` columns are bound (constants or bound variables) when the step runs."""

    atom: Atom
    version: Version
    order: tuple[int, ...]
    key_len: int
    keep: frozenset[str] | None  # variables still needed after it; None keeps every one


@dataclass(frozen=True)
class FilterStep:
    comparison: Comparison


@dataclass(frozen=True)
class AssignStep:
    var: str
    expr: Term


@dataclass(frozen=True)
class NegationStep:
    atom: Atom
    order: tuple[int, ...]
    key_len: int


@dataclass(frozen=True)
class AggregateStep:
    """Correlated aggregate: the body's steps run from the distinct groups of ``grouping``."""

    aggregation: Aggregation
    grouping: tuple[str, ...]
    steps: tuple[Step, ...]


Step = JoinStep | FilterStep | AssignStep | NegationStep | AggregateStep


@dataclass(frozen=True)
class RulePlan:
    rule: Rule
    steps: tuple[Step, ...]
    delta_relation: str | None  # the relation read as delta, None for an all-full version


@dataclass(frozen=True)
class StratumPlan:
    relations: tuple[str, ...]
    recursive: bool
    initial: tuple[RulePlan, ...]  # every rule, all atoms full: run once
    deltas: tuple[RulePlan, ...]  # semi-naive versions, run each iteration until no delta


@dataclass(frozen=True)
class Plan:
    program: Program
    strata: tuple[StratumPlan, ...]

    def indexes(self) -> frozenset[tuple[str, tuple[int, ...]]]:
        """Every (relation, column order) a full relation is read through."""
        found: set[tuple[str, tuple[int, ...]]] = set()

        def walk(steps: tuple[Step, ...]) -> None:
            for s in steps:
                if isinstance(s, JoinStep) and s.version == "full":
                    found.add((s.atom.relation, s.order))
                elif isinstance(s, NegationStep):
                    found.add((s.atom.relation, s.order))
                elif isinstance(s, AggregateStep):
                    walk(s.steps)

        for stratum in self.strata:
            for rp in stratum.initial + stratum.deltas:
                walk(rp.steps)
        return frozenset(found)


def plan_program(program: Program) -> Plan:
    strata = []
    for stratum in stratify(program):
        rules = tuple(_lift_atom_expressions(r) for r in stratum.rules)
        initial = tuple(plan_rule(r, None) for r in rules)
        deltas = []
        if stratum.recursive:
            for r in rules:
                for i, lit in enumerate(r.body):
                    if isinstance(lit, Atom) and lit.relation in stratum.relations:
                        deltas.append(plan_rule(r, i))
        strata.append(
            StratumPlan(
                relations=tuple(sorted(stratum.relations)),
                recursive=stratum.recursive,
                initial=initial,
                deltas=tuple(deltas),
            )
        )
    return Plan(program, tuple(strata))


def term_vars(t: Term | None) -> set[str]:
    if isinstance(t, Var):
        return {t.name}
    if isinstance(t, BinOp):
        return term_vars(t.left) | term_vars(t.right)
    return set()


def literal_vars(lit: BodyLiteral) -> set[str]:
    if isinstance(lit, Atom):
        return set().union(*(term_vars(a) for a in lit.args)) if lit.args else set()
    if isinstance(lit, Negation):
        return literal_vars(lit.atom)
    if isinstance(lit, Comparison):
        return term_vars(lit.left) | term_vars(lit.right)
    return {lit.result.name} | _aggregation_free_vars(lit)


def _aggregation_free_vars(agg: Aggregation) -> set[str]:
    inner = term_vars(agg.target)
    for lit in agg.body:
        inner |= literal_vars(lit)
    return inner


def _lift_atom_expressions(rule: Rule, counter: Iterator[int] | None = None) -> Rule:
    """``r(x + 1, y)`` in a body becomes ``r($lift0, y), $lift0 = x + 1`` so joins only see
    variables and constants; the assignment or filter is placed by the ordinary planning.
    One counter per rule, aggregate bodies included, keeps the fresh names distinct."""
    counter = counter if counter is not None else itertools.count()
    body: list[BodyLiteral] = []
    extra: list[BodyLiteral] = []

    def lift(atom: Atom) -> Atom:
        args: list[Term] = []
        for a in atom.args:
            if isinstance(a, BinOp):
                v = Var(f"$lift{next(counter)}", a.pos)
                extra.append(Comparison("=", v, a, a.pos))
                args.append(v)
            else:
                args.append(a)
        return replace(atom, args=tuple(args))

    for lit in rule.body:
        if isinstance(lit, Atom):
            body.append(lift(lit))
        elif isinstance(lit, Negation):
            body.append(replace(lit, atom=lift(lit.atom)))
        elif isinstance(lit, Aggregation):
            inner = _lift_atom_expressions(Rule(rule.head, lit.body, lit.pos), counter)
            body.append(replace(lit, body=inner.body))
        else:
            body.append(lit)
    return replace(rule, body=tuple(body + extra))


def plan_rule(rule: Rule, delta_index: int | None) -> RulePlan:
    head_vars = set().union(*(term_vars(a) for a in rule.head.args)) if rule.head.args else set()
    delta_relation = None
    if delta_index is not None:
        atom = rule.body[delta_index]
        assert isinstance(atom, Atom)
        delta_relation = atom.relation
    steps = _order_body(rule.body, set(), delta_index, head_vars, keep_all=False)
    return RulePlan(rule, steps, delta_relation)


def _order_body(
    body: tuple[BodyLiteral, ...],
    bound: set[str],
    delta_index: int | None,
    needed_after: set[str],
    keep_all: bool,
) -> tuple[Step, ...]:
    """Greedy order: the delta atom first, then ready filters/assignments/negations/aggregates,
    then the atom with the most bound positions (written order breaks ties)."""
    pending = list(range(len(body)))
    bound = set(bound)
    raw: list[tuple[int, Step]] = []
    # An aggregate's result is bound by the aggregate alone: `x = n, n = count : {...}` must
    # compare x with the count, not assign n from x before the aggregate runs.
    aggregate_results = {lit.result.name for lit in body if isinstance(lit, Aggregation)}

    def take(i: int) -> None:
        pending.remove(i)
        lit = body[i]
        if isinstance(lit, Atom):
            raw.append((i, _join_step(lit, bound, "delta" if i == delta_index else "full")))
            bound.update(literal_vars(lit))
        elif isinstance(lit, Negation):
            order, key_len = _index_for(lit.atom, bound | literal_vars(lit.atom))
            raw.append((i, NegationStep(lit.atom, order, key_len)))
        elif isinstance(lit, Comparison):
            target = _assignment_target(lit, bound, aggregate_results)
            if target is None:
                raw.append((i, FilterStep(lit)))
            else:
                var, expr = target
                raw.append((i, AssignStep(var, expr)))
                bound.add(var)
        else:
            inner_vars = _aggregation_free_vars(lit)
            grouping = tuple(sorted(inner_vars & bound))
            steps = _order_body(lit.body, set(grouping), None, set(), keep_all=True)
            raw.append((i, AggregateStep(lit, grouping, steps)))
            bound.add(lit.result.name)

    def ready(i: int) -> bool:
        lit = body[i]
        if isinstance(lit, Atom):
            return False
        if isinstance(lit, Negation):
            return literal_vars(lit) <= bound
        if isinstance(lit, Comparison):
            return literal_vars(lit) <= bound or _assignment_target(lit, bound, aggregate_results) is not None
        return _grouping_ready(lit, bound, body, i)

    if delta_index is not None:
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
        take(max(atoms, key=lambda i: (_bound_positions(body[i], bound), -i)))
    if pending:
        raise AssertionError(f"planner could not place {[body[i] for i in pending]}: unsafe rule passed the checker")
    return _with_liveness([s for _, s in raw], needed_after, keep_all)


def _grouping_ready(agg: Aggregation, bound: set[str], body: tuple[BodyLiteral, ...], i: int) -> bool:
    """An aggregate runs once every variable it shares with the rest of the rule is bound."""
    outside: set[str] = set()
    for j, lit in enumerate(body):
        if j != i:
            outside |= literal_vars(lit)
    return (_aggregation_free_vars(agg) & outside) <= bound


def _bound_positions(atom: BodyLiteral, bound: set[str]) -> int:
    assert isinstance(atom, Atom)
    return sum(isinstance(a, Const) or (isinstance(a, Var) and a.name in bound) for a in atom.args)


def _assignment_target(c: Comparison, bound: set[str], not_assignable: set[str]) -> tuple[str, Term] | None:
    if c.op != "=":
        return None
    for var, expr in ((c.left, c.right), (c.right, c.left)):
        if isinstance(var, Var) and var.name not in bound | not_assignable and term_vars(expr) <= bound:
            return var.name, expr
    return None


def _index_for(atom: Atom, bound: set[str]) -> tuple[tuple[int, ...], int]:
    keys = [
        j
        for j, a in enumerate(atom.args)
        if isinstance(a, Const) or (isinstance(a, Var) and a.name in bound)
    ]
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
            live |= {v for a in s.atom.args if isinstance(a, Var) for v in term_vars(a)}
        elif isinstance(s, FilterStep):
            live |= literal_vars(s.comparison)
        elif isinstance(s, AssignStep):
            live.discard(s.var)
            live |= term_vars(s.expr)
        elif isinstance(s, NegationStep):
            live |= literal_vars(s.atom)
        else:
            live.discard(s.aggregation.result.name)
            live |= set(s.grouping)
        out.append(s)
    out.reverse()
    return tuple(out)
