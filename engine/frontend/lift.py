"""Symbols made inside an aggregate body, made by a rule of their own instead.

An aggregate's steps run inside one shard's aggregation, where no collective can sit, so the
agreement on new symbol ids (docs/architecture.md, "Symbols made while evaluating") cannot
happen there. Each call that makes symbols (``cat``, ``substr``, ``to_string``...) inside an
aggregate, innermost first, is therefore computed by an auxiliary relation
``$lifted<k>(arguments..., result)`` whose one rule has the call in its head (where the planner
cuts the pipeline for the agreement as in any rule) and, as its body, what binds the call's
arguments in the aggregate body; the aggregate then joins that relation on the arguments. The
rule's body keeps only literals of the aggregate body, so it may hold more argument rows than
the aggregate meets, never fewer: the aggregate's answer is unchanged. A call whose arguments
need a variable from outside the aggregate stays refused by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

from dask_datalog.engine import functors, ir
from dask_datalog.engine.errors import DatalogError

Bound = Callable[[Sequence[ir.BodyLiteral]], set[str]]


class Lifter:
    """Rewrites a program's rules; ``relations`` gains the auxiliary relations, ``rules`` (the
    result of ``rule``) their rules before the rule that uses them."""

    def __init__(self, relations: dict[str, ir.Relation], bound: Bound, shown: Callable[[str], str]):
        self.relations, self.bound, self.shown = relations, bound, shown
        self.rules: list[ir.Rule] = []

    def rule(self, rule: ir.Rule) -> ir.Rule:
        return replace(rule, body=tuple(self.literal(lit) for lit in rule.body))

    def literal(self, lit: ir.BodyLiteral) -> ir.BodyLiteral:
        if not isinstance(lit, ir.Aggregation):
            return lit
        lit = replace(lit, body=tuple(self.literal(inner) for inner in lit.body))  # nested ones first
        while (call := _innermost_made(lit)) is not None:
            lit = self.lift(lit, call)
        return lit

    def lift(self, agg: ir.Aggregation, call: ir.Call) -> ir.Aggregation:
        """``agg`` with ``call`` read from a new auxiliary relation made by a new rule."""
        name = f"$lifted{len(self.rules)}"
        keep = [lit for lit in agg.body if call not in ir.walk(lit) and not isinstance(lit, ir.Aggregation)]
        bound = self.bound(keep)
        keep = [lit for lit in keep if isinstance(lit, ir.Atom) or {v.name for v in ir.variables(lit)} <= bound]
        if not {v.name for v in ir.variables(call.args)} <= self.bound(keep):
            shown = self.shown(call.name)
            raise DatalogError(call.pos, f"unsupported: {shown}(...) inside an aggregate on a variable from outside it")
        signature = functors.of(call)
        types = [*map(signature.param, range(len(call.args))), "symbol"]
        assert all(t in ("number", "unsigned", "float", "symbol") for t in types), f"{call.name} takes {types}"
        attrs = tuple(ir.Attribute(f"a{i}", cast(ir.BaseType, t), t) for i, t in enumerate(types))
        self.relations[name] = ir.Relation(name, attrs, call.pos)
        self.rules.append(ir.Rule(ir.Atom(name, (*call.args, call), call.pos), tuple(keep), call.pos))
        made = ir.Var(f"{name}.value", call.pos)

        def swap(t: ir.Term) -> ir.Term:
            return made if t == call else t

        body = tuple(ir.rewrite_terms(lit, swap) if not isinstance(lit, ir.Aggregation) else lit for lit in agg.body)
        target = None if agg.target is None else ir.rewrite_terms(agg.target, swap)
        return replace(agg, body=(ir.Atom(name, (*call.args, made), call.pos), *body), target=target)


def _innermost_made(agg: ir.Aggregation) -> ir.Call | None:
    """A symbol-making call of the aggregate's own literals and target (not of aggregates
    nested in it) whose arguments make none."""
    own = [lit for lit in agg.body if not isinstance(lit, ir.Aggregation)]
    made = [c for c in ir.calls((own, agg.target)) if functors.of(c).makes is not None]
    return next((c for c in made if not any(functors.of(d).makes for d in ir.calls(c.args))), None)
