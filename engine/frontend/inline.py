"""Relations declared ``inline``, expanded into the rules that use them, as Soufflé does: no
relation is built for them, and their rules need only be grounded where they are used
(``lt(x, y) :- x < y.`` is a fine inline relation).

A positive use ``r(a, b)`` becomes, once per rule of r, that rule's body with its head
variables replaced by ``a`` and ``b`` (the other variables renamed apart, a head constant or
repeated variable an equality); a use under ``!`` becomes the negation of each rule's body,
one negated literal per alternative (so a rule body of k literals splits the using rule in
k), which Soufflé allows only where the body brings no variable of its own. Inline relations
may use inline relations, not in a cycle, and may not be read or written by ``.input`` /
``.output`` / ``.printsize``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError

MAX_ALTERNATIVES = 1024  # rules one rule may expand to, as for disjunctions (parser.py)
_INVERSE = {"=": "!=", "!=": "=", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}

Alternative = tuple[ir.BodyLiteral, ...]


def expand(
    rules: Sequence[ir.Rule], inline: Mapping[str, ir.Pos], observed: Mapping[str, ir.Pos], relations: Mapping[str, ir.Relation]
) -> list[ir.Rule]:
    """The rules of the relations not inlined, with every use of an ``inline`` relation
    (name -> its declaration) expanded; ``observed``: the relations with an I/O directive."""
    for name, pos in inline.items():
        if name in observed:  # at the declaration, as Soufflé reports it
            raise DatalogError(pos, f"IO relation {name} cannot be inlined")
    definitions = {name: [r for r in rules if r.head.relation == name] for name in inline}
    _refuse_cycles(definitions, inline)
    expander = _Expander(definitions, relations)
    out: list[ir.Rule] = []
    for rule in rules:
        if rule.head.relation not in inline:
            out.extend(replace(rule, body=body) for body in expander.body(rule.body, rule.pos))
    return out


def _refuse_cycles(definitions: Mapping[str, list[ir.Rule]], inline: Mapping[str, ir.Pos]) -> None:
    """An inline relation that reaches itself through inline relations cannot be expanded."""
    uses = {
        name: {n.relation for n in ir.instances([r.body for r in rules], ir.Atom) if n.relation in inline}
        for name, rules in definitions.items()
    }

    def reach(name: str) -> set[str]:
        seen: set[str] = set()
        frontier = uses[name]
        while frontier:
            seen |= frontier
            frontier = set().union(*(uses[n] for n in frontier)) - seen
        return seen

    for name in sorted(inline):
        around = reach(name)
        if name in around:
            cycle = sorted(n for n in around if name in reach(n))
            raise DatalogError(inline[name], f"Cannot inline cyclically dependent relations {{{', '.join(cycle)}}}")


class _Expander:
    def __init__(self, definitions: Mapping[str, list[ir.Rule]], relations: Mapping[str, ir.Relation]):
        self.definitions = definitions
        self.relations = relations
        self.fresh = itertools.count()

    def body(self, body: Sequence[ir.BodyLiteral], pos: ir.Pos) -> list[Alternative]:
        """Every alternative ``body`` expands to (no inline atom left in any)."""
        alternatives: list[Alternative] = [()]
        for lit in body:
            choices = self.literal(lit)
            if len(alternatives) * len(choices) > MAX_ALTERNATIVES:
                raise DatalogError(pos, f"inlining makes this rule more than {MAX_ALTERNATIVES} rules")
            alternatives = [a + c for a in alternatives for c in choices]
        return alternatives

    def literal(self, lit: ir.BodyLiteral) -> list[Alternative]:
        if isinstance(lit, ir.Atom) and lit.relation in self.definitions:
            return [alt for rule in self.definitions[lit.relation] for alt in self.body(self.unfold(rule, lit), lit.pos)]
        if isinstance(lit, ir.Negation) and lit.atom.relation in self.definitions:
            return self.negated(lit.atom, lit.pos)
        if isinstance(lit, ir.Aggregation) and any(n.relation in self.definitions for n in ir.instances(lit.body, ir.Atom)):
            inner = self.body(lit.body, lit.pos)
            if len(inner) > 1:
                raise DatalogError(lit.pos, "unsupported: an inline relation of several rules inside an aggregate")
            return [(replace(lit, body=inner[0]),)]
        return [(lit,)]

    def unfold(self, rule: ir.Rule, use: ir.Atom) -> list[ir.BodyLiteral]:
        """``rule``'s body where ``use`` reads its head: head variables become the use's
        arguments, the rule's other variables fresh names; a head constant, expression or
        repeated variable becomes an equality with the argument there."""
        n = next(self.fresh)
        names: dict[str, ir.Term] = {}
        pending: list[tuple[ir.Term, ir.Term, ir.BaseType]] = []  # (head argument, the use's argument, type) to equate
        wildcards = itertools.count()

        def named(t: ir.Term) -> ir.Term:  # each _ (one inside a record too) a variable of its own
            return ir.Var(f"$inline{n}_{next(wildcards)}", use.pos) if isinstance(t, ir.Wildcard) else t

        for head_arg, arg, t in zip(rule.head.args, use.args, self.relations[use.relation].types):
            arg = ir.rewrite_terms(arg, named)
            if isinstance(head_arg, ir.Var) and head_arg.name not in names:
                names[head_arg.name] = arg
            else:
                pending.append((head_arg, arg, t))

        def rename(t: ir.Term) -> ir.Term:
            return _renamed(t, names, n)

        body = [ir.rewrite_terms(lit, rename) for lit in rule.body]
        return body + [ir.Comparison("=", ir.rewrite_terms(h, rename), arg, use.pos, t) for h, arg, t in pending]

    def negated(self, use: ir.Atom, pos: ir.Pos) -> list[Alternative]:
        """``!use``: no rule of its relation holds, i.e. for every rule one literal of its body
        (equalities included) fails; one alternative per choice of those literals."""
        per_rule: list[list[ir.BodyLiteral]] = []
        for rule in self.definitions[use.relation]:
            bound = {a.name for a in rule.head.args if isinstance(a, ir.Var)}
            if any(isinstance(a, ir.Wildcard) for a in use.args) or not ir.variable_names(rule.body) <= bound:
                raise DatalogError(pos, "Cannot inline negated relation which may introduce new variables")
            failing: list[ir.BodyLiteral] = []
            for alternative in self.body(self.unfold(rule, use), pos):
                failing.extend(_negate(lit, pos) for lit in alternative)
            if not failing:  # a fact with nothing to compare: it always holds, so !use never does
                failing.append(ir.Comparison("!=", ir.Const(0, "number", pos), ir.Const(0, "number", pos), pos))
            per_rule.append(failing)
        choices = list(itertools.product(*per_rule))
        if len(choices) > MAX_ALTERNATIVES:
            raise DatalogError(pos, f"inlining makes this rule more than {MAX_ALTERNATIVES} rules")
        return [tuple(c) for c in choices]


def _renamed(t: ir.Term, names: Mapping[str, ir.Term], n: int) -> ir.Term:
    """A variable of the inline rule renamed; it keeps its place in that rule, where Soufflé
    reports a problem of the expansion ("Ungrounded variable <inlined_x_1>")."""
    if isinstance(t, ir.Var):
        named = names.get(t.name, ir.Var(f"$inline{n}.{t.name}", t.pos))
        return replace(named, pos=t.pos) if isinstance(named, ir.Var) else named
    return t


def _negate(lit: ir.BodyLiteral, pos: ir.Pos) -> ir.BodyLiteral:
    if isinstance(lit, ir.Atom):
        return ir.Negation(lit, pos)
    if isinstance(lit, ir.Negation):
        return lit.atom
    if isinstance(lit, ir.Comparison) and isinstance(lit.right, ir.Call) and lit.right.name == "range":
        raise DatalogError(pos, "unsupported: a negated inline relation whose rule has range(...)")
    if isinstance(lit, ir.Comparison) and lit.op in _INVERSE:
        return replace(lit, op=_INVERSE[lit.op])
    if isinstance(lit, ir.Comparison):  # match, contains and their negations
        return replace(lit, op=lit.op.removeprefix("not_") if lit.op.startswith("not_") else f"not_{lit.op}")
    raise DatalogError(pos, "unsupported: a negated inline relation whose rule has an aggregate")
