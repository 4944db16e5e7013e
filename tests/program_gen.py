"""Random valid Soufflé programs plus random facts, for differential testing.

Each case is built as checked IR first (in the front end's normalised form: resolved
constant/Call types, aggregates as ``Aggregation`` literals, ``_`` inside aggregates as
fresh ``$w`` variables) and printed to Soufflé text from it. So the same case gives:

- ``text``: what the front end parses and the engine runs;
- ``program``: the IR the text is meant to mean, which the reference evaluates without any
  front end (``expected``); the parsed IR must mean the same thing.

Floats are drawn from a few dyadic values (and arithmetic by powers of two), so every float
computed is exact, whatever order a sum adds in, and none is -0.0 or NaN (the reference's
floats are Python floats). Programs are safe and stratifiable by construction: IDB relations are split into ordered
groups; a rule reads its own group only through positive atoms (recursion, mutual
recursion, non-linear rules) and reads lower groups / EDB relations through atoms,
negations and aggregates. Value-creating arithmetic (in heads and ``y = expr`` bindings)
appears in non-recursive rules freely and in recursive rules only with every variable of
the expression guarded by ``0 <= v < 10``, so every closure is finite. As a last safety
net a case whose reference evaluation exceeds a small budget is regenerated.

Run ``python tests/program_gen.py SEED`` to print a case.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from reference import INT32_MAX, BudgetExceeded, bits_of_float, evaluate, float_of_bits, term_vars

from dask_datalog.engine import ir

T = TypeVar("T")
Value = int | float | str
Tuple = tuple[Value, ...]

SYMBOLS = ("a", "b", "c", "d", "a b")
NUMBER_CONSTS = tuple(range(10))  # constants in program text
FACT_VALUES = tuple(range(6))  # facts: a small domain so joins match
NEGATIVE_CONSTS = (-1, -2, -3)
BIG_CONSTS = (INT32_MAX, 2**30, 65536)  # arithmetic with these wraps; never -2**31 in text
NONZERO_DIVISORS = {"number": (2, 3, 4, -2, -3, 7), "unsigned": (2, 3, 4, 7)}
ARITH_OPS = ("+", "-", "*", "/", "%", "min", "max", "^")
POWER_EXPONENTS = (0, 1, 2, 3)  # ^ by a small constant: no unsigned power reaches 2^53
ORDER_OPS = ("=", "!=", "<", "<=", ">", ">=")
GUARD_LIMIT = 10
FLOAT_VALUES = (-2.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 3.25)
FLOAT_SCALES = (0.5, 2.0, 4.0)  # * and / by these keep floats exact and never make -0.0
FLOAT_OPS = ("+", "-", "*", "/", "min", "max")
# (type, bounds and step) of the ranges a rule may generate: each value exact, each range short.
RANGES = (
    ("number", (0, 5)),
    ("number", (7, 2, -2)),
    ("number", (3, 3, 0)),
    ("unsigned", (4, 1)),
    ("unsigned", (0, 9, 4)),
    ("float", (0.5, 3.0, 0.5)),
    ("float", (2.0, -1.0, -0.75)),
    ("float", (1.0, 2.5)),
)
# The functor the checker makes of to_float(x), to_number(x), to_unsigned(x), by x's type.
CONVERSIONS = {
    ("float", "number"): "itof",
    ("float", "unsigned"): "utof",
    ("number", "float"): "ftoi",
    ("number", "unsigned"): "utoi",
    ("unsigned", "number"): "itou",
}
CONVERSION_NAMES = {name: f"to_{target}" if target != "number" else "to_number" for (target, _), name in CONVERSIONS.items()}

MAX_STEPS = 40_000
MAX_TUPLES = 3_000


@dataclass(frozen=True)
class GeneratedCase:
    """One random program with its facts and the reference's answer for it."""

    label: str
    text: str
    program: ir.Program
    facts: dict[str, tuple[Tuple, ...]]  # passed to the API's facts= (may hold duplicates)
    expected: dict[str, frozenset[Tuple]]
    features: frozenset[str]

    def reference_facts(self) -> dict[str, set[Tuple]]:
        return {name: set(rows) for name, rows in self.facts.items()}

    def api_facts(self) -> dict[str, Any]:
        """Lists of tuples; an empty relation as a (0, arity) array so its arity is clear."""
        out: dict[str, Any] = {}
        for name, rows in self.facts.items():
            if rows:
                out[name] = [tuple(r) for r in rows]
            else:
                out[name] = np.empty((0, self.program.relations[name].arity), dtype=object)
        return out

    def describe(self) -> str:
        """Everything needed to reproduce a failure by hand."""
        facts = "\n".join(f"    {name!r}: {list(rows)!r}," for name, rows in sorted(self.facts.items()))
        how = (
            f"; reproduce with `python tests/program_gen.py {self.label.removeprefix('seed ')}`"
            if self.label.startswith("seed ")
            else ""
        )
        return (
            f"--- generated case ({self.label}){how} ---\n"
            f"{self.text}\n--- facts= ---\n{{\n{facts}\n}}\n"
            f"--- features: {', '.join(sorted(self.features))} ---"
        )


# --------------------------------------------------------------------------- printing


def format_term(term: ir.Term, inline: dict[str, ir.Aggregation], nested: bool = False) -> str:
    if isinstance(term, ir.Wildcard):
        return "_"
    if isinstance(term, ir.Var):
        if term.name.startswith("$w"):
            return "_"
        if term.name in inline:
            return format_aggregate(inline[term.name], inline)
        return term.name
    if isinstance(term, ir.Const):
        if term.type == "symbol":
            return f'"{term.value}"'
        if term.type == "float":
            value = float_of_bits(int(term.value))
            return f"({value!r})" if nested and value < 0 else repr(value)
        text = str(term.value) + ("u" if term.type == "unsigned" and int(term.value) % 2 else "")  # both spellings
        return f"({text})" if nested and isinstance(term.value, int) and term.value < 0 else text
    args = [format_term(a, inline, nested=True) for a in term.args]
    if term.name in CONVERSION_NAMES:
        return f"{CONVERSION_NAMES[term.name]}({args[0]})"
    if term.name.isalpha():  # min, max, strlen, to_number, range: functional syntax
        return f"{term.name}({', '.join(args)})"
    left, right = args
    return f"({left} {term.name} {right})"


def format_aggregate(agg: ir.Aggregation, inline: dict[str, ir.Aggregation]) -> str:
    body = ", ".join(format_literal(b, inline) for b in agg.body)
    target = "" if agg.target is None else " " + format_term(agg.target, inline)
    return f"{agg.func}{target} : {{ {body} }}"


def format_literal(lit: ir.BodyLiteral, inline: dict[str, ir.Aggregation]) -> str:
    if isinstance(lit, ir.Atom):
        return f"{lit.relation}({', '.join(format_term(a, inline) for a in lit.args)})"
    if isinstance(lit, ir.Negation):
        return "!" + format_literal(lit.atom, inline)
    if isinstance(lit, ir.Comparison):
        return f"{format_term(lit.left, inline)} {lit.op} {format_term(lit.right, inline)}"
    return f"{lit.result.name} = {format_aggregate(lit, inline)}"


def format_rule(rule: ir.Rule, inline_names: frozenset[str]) -> str:
    inline = {lit.result.name: lit for lit in rule.body if isinstance(lit, ir.Aggregation) and lit.result.name in inline_names}
    head = format_literal(rule.head, inline)
    body = [format_literal(b, inline) for b in rule.body if not (isinstance(b, ir.Aggregation) and b.result.name in inline)]
    if not rule.body:
        return f"{head}."
    if not body:  # only inlined aggregates: keep one in place so the rule has a body
        raise AssertionError("a rule whose whole body is inlined")
    return f"{head} :- {', '.join(body)}."


def format_program(program: ir.Program, aliases: dict[str, ir.BaseType], inline: frozenset[str]) -> str:
    lines = [f".type {name} <: {base}" for name, base in aliases.items()]
    inputs = {i.relation for i in program.inputs}
    outputs = {o.relation for o in program.outputs}
    for rel in program.relations.values():
        attrs = ", ".join(f"{a.name}: {a.type_name}" for a in rel.attributes)
        lines.append(f".decl {rel.name}({attrs})")
        if rel.name in inputs:
            lines.append(f".input {rel.name}")
        if rel.name in outputs:
            lines.append(f".output {rel.name}")
    lines.extend(format_rule(r, inline) for r in program.rules)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- generation


class _Rng:
    """random.Random (or Hypothesis' random) with helpers whose draws shrink toward the
    simpler choice: ``chance`` is False when random() shrinks to 0."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def chance(self, p: float) -> bool:
        return self.r.random() > 1.0 - p

    def randint(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def choice(self, seq: Sequence[T]) -> T:
        return self.r.choice(seq)

    def shuffle(self, items: list[Any]) -> None:
        self.r.shuffle(items)


@dataclass
class _RuleState:
    """Variables of the rule being built: type of each, which are bound (usable in
    filters, negations, heads, and as grouping variables)."""

    types: dict[str, ir.BaseType] = field(default_factory=dict)
    bound: list[str] = field(default_factory=list)
    from_lower: set[str] = field(default_factory=set)  # bound by a non-recursive atom
    from_atoms: set[str] = field(default_factory=set)  # bound by a positive atom
    counter: int = 0  # continues across rules, so every name is unique in the program

    def fresh(self, prefix: str, type: ir.BaseType) -> ir.Var:
        name = f"{prefix}{self.counter}"
        self.counter += 1
        self.types[name] = type
        return ir.Var(name)

    def bound_of(self, type: ir.BaseType) -> list[str]:
        return [v for v in self.bound if self.types[v] == type]

    def bind(self, name: str) -> None:
        if name not in self.bound:
            self.bound.append(name)


class _Generator:
    def __init__(self, rng: random.Random):
        self.rng = _Rng(rng)
        self.features: set[str] = set()
        self.inline: set[str] = set()  # aggregate results printed in place (unique names)
        self.var_counter = 0

    # ----------------------------------------------------------------- values

    def value(self, type: ir.BaseType, extreme: bool = True) -> Value:
        rng = self.rng
        if type == "symbol":
            return rng.choice(SYMBOLS)
        if type == "float":
            return rng.choice(FLOAT_VALUES)
        if type == "number":
            if extreme and rng.chance(0.03):
                self.features.add("extreme_value")
                return rng.choice((INT32_MAX, -(2**31), INT32_MAX - 1))
            if rng.chance(0.06):
                self.features.add("negative_value")
                return rng.choice(NEGATIVE_CONSTS)
            return rng.choice(FACT_VALUES)
        if extreme and rng.chance(0.03):
            self.features.add("extreme_value")
            return 2**32 - 1
        return rng.choice(FACT_VALUES)

    def const(self, type: ir.BaseType) -> ir.Const:
        """A constant for program text: never -2**31 (its text is not an int32 literal)."""
        value = self.value(type, extreme=False)
        return ir.Const(bits_of_float(value) if isinstance(value, float) else value, type)

    # ----------------------------------------------------------------- schema

    def column_type(self) -> ir.BaseType:
        if self.rng.chance(0.12):
            self.features.add("symbol")
            return "symbol"
        if self.rng.chance(0.08):
            self.features.add("unsigned")
            return "unsigned"
        if self.rng.chance(0.08):
            self.features.add("float")
            return "float"
        return "number"

    def relation(self, name: str, arity: int, alias: str | None) -> ir.Relation:
        attrs = []
        for i in range(arity):
            t = self.column_type()
            type_name: str = t
            if alias is not None and t == "number" and self.rng.chance(0.5):
                type_name = alias
                self.features.add("alias_type")
            attrs.append(ir.Attribute(f"c{i}", t, type_name))
        return ir.Relation(name, tuple(attrs))

    # ----------------------------------------------------------------- terms

    def expression(self, type: ir.BaseType, vars: list[str], depth: int, big: bool) -> ir.Term:
        """Arithmetic over bound variables of ``type`` (number/unsigned); / and % only by
        nonzero constants. On floats, the operators that keep them exact."""
        rng = self.rng
        if type == "float":
            return self.float_expression(vars, depth)
        op = rng.choice(ARITH_OPS)
        if depth > 1 and rng.chance(0.3):
            left: ir.Term = self.expression(type, vars, depth - 1, big)
        else:
            left = ir.Var(rng.choice(vars))
        if op in ("/", "%"):
            right: ir.Term = ir.Const(rng.choice(NONZERO_DIVISORS[type]), type)
            self.features.add("division")
        elif op == "^":
            right = ir.Const(rng.choice(POWER_EXPONENTS), type)
            self.features.add("power")
        elif rng.chance(0.4):
            right = ir.Var(rng.choice(vars))
        elif big and rng.chance(0.15):
            right = ir.Const(rng.choice(BIG_CONSTS), type)
            self.features.add("big_constant")
        else:
            right = ir.Const(rng.choice(NUMBER_CONSTS[1:]), type)
        if op not in ("/", "%", "^") and not isinstance(left, ir.Call) and rng.chance(0.2):
            left, right = right, left  # constant on the left sometimes
        return ir.Call(op, (left, right), type)

    def float_expression(self, vars: list[str], depth: int) -> ir.Term:
        rng = self.rng
        op = rng.choice(FLOAT_OPS)
        left: ir.Term = self.float_expression(vars, depth - 1) if depth > 1 and rng.chance(0.3) else ir.Var(rng.choice(vars))
        right: ir.Term
        if op in ("*", "/"):
            right = ir.Const(bits_of_float(rng.choice(FLOAT_SCALES)), "float")
        elif rng.chance(0.4):
            right = ir.Var(rng.choice(vars))
        else:
            right = self.const("float")
        self.features.add("float_arith")
        return ir.Call(op, (left, right), "float")

    def guard(self, expr: ir.Term, st: _RuleState, body: list[ir.BodyLiteral]) -> None:
        """Keep every variable of a value-creating expression in a recursive rule within
        [0, GUARD_LIMIT), so the recursion can only create finitely many values."""
        for name in sorted(term_vars(expr)):
            type = st.types[name]
            if type == "number":
                body.append(ir.Comparison(">=", ir.Var(name), ir.Const(0, type), type=type))
            body.append(ir.Comparison("<", ir.Var(name), ir.Const(GUARD_LIMIT, type), type=type))
        self.features.add("guarded_recursive_arith")

    # ----------------------------------------------------------------- literals

    def positive_atom(self, rel: ir.Relation, st: _RuleState, first: bool) -> ir.Atom:
        rng = self.rng
        args: list[ir.Term] = []
        local: list[str] = []  # variables introduced by this atom
        for t in rel.types:
            same = [v for v in local if st.types[v] == t]
            if st.bound_of(t) and rng.chance(0.35):
                args.append(ir.Var(rng.choice(st.bound_of(t))))
            elif same and rng.chance(0.1):
                args.append(ir.Var(rng.choice(same)))
                self.features.add("repeated_var")
            elif rng.chance(0.06):
                args.append(self.const(t))
                self.features.add("body_const")
            elif rng.chance(0.12):
                args.append(ir.Wildcard())
                self.features.add("wildcard")
            elif not first and t != "symbol" and st.bound_of(t) and rng.chance(0.06):
                args.append(self.expression(t, st.bound_of(t), 1, big=False))
                self.features.add("body_expr")
            else:
                v = st.fresh("x", t)
                local.append(v.name)
                args.append(v)
        if not first and not (term_vars_all(args) & set(st.bound)) and not rng.chance(0.1):
            # Join with what is bound already, where a column type allows, so bodies stay
            # connected and the cross products small.
            joinable = [i for i, t in enumerate(rel.types) if st.bound_of(t)]
            if joinable:
                i = rng.choice(joinable)
                old = args[i]
                args[i] = ir.Var(rng.choice(st.bound_of(rel.types[i])))
                if (
                    isinstance(old, ir.Var)
                    and old.name in local
                    and old.name not in {a.name for a in args if isinstance(a, ir.Var)}
                ):
                    local.remove(old.name)
        for name in local:
            if any(isinstance(a, ir.Var) and a.name == name for a in args):
                st.bind(name)
                st.from_atoms.add(name)
        return ir.Atom(rel.name, tuple(args))

    def negation(self, rel: ir.Relation, st: _RuleState) -> ir.Negation:
        rng = self.rng
        args: list[ir.Term] = []
        for t in rel.types:
            if st.bound_of(t) and rng.chance(0.5):
                args.append(ir.Var(rng.choice(st.bound_of(t))))
            elif rng.chance(0.2):
                args.append(self.const(t))
            else:
                args.append(ir.Wildcard())
        self.features.add("negation")
        return ir.Negation(ir.Atom(rel.name, tuple(args)))

    def comparison(self, st: _RuleState) -> ir.Comparison | None:
        rng = self.rng
        if not st.bound:
            return None
        name = rng.choice(st.bound)
        t = st.types[name]
        op = rng.choice(("=", "!=")) if t == "symbol" else rng.choice(ORDER_OPS)
        others = [v for v in st.bound_of(t) if v != name]
        if others and rng.chance(0.4):
            right: ir.Term = ir.Var(rng.choice(others))
        elif t != "symbol" and rng.chance(0.15):
            right = self.expression(t, st.bound_of(t), 2, big=True)
            self.features.add("arith_filter")
        else:
            right = self.const(t)
        left: ir.Term = ir.Var(name)
        if rng.chance(0.2):
            left, right = right, left
        self.features.add(f"cmp{op}")
        return ir.Comparison(op, left, right, type=t)

    def binding(self, st: _RuleState, recursive: bool, body: list[ir.BodyLiteral]) -> None:
        """``y = expr`` (or ``expr = y``) binding a new variable."""
        rng = self.rng
        # Float arithmetic only outside recursion: the guards bound integers.
        types = [t for t in ("number", "unsigned", "float") if st.bound_of(t) and not (recursive and t == "float")]  # type: ignore[misc]
        if not types or (recursive and not rng.chance(0.5)):
            return
        t: ir.BaseType = rng.choice(types)
        expr: ir.Term
        sources = [(target, source) for (target, source) in CONVERSIONS if target == t and st.bound_of(source) and not recursive]
        if sources and rng.chance(0.25):
            target, source = rng.choice(sources)
            expr = ir.Call(CONVERSIONS[(target, source)], (ir.Var(rng.choice(st.bound_of(source))),), t)
            self.features.add("conversion")
        elif rng.chance(0.15):
            expr = self.const(t)
        else:
            expr = self.expression(t, st.bound_of(t), 2, big=not recursive)
            if recursive:
                self.guard(expr, st, body)
        new = st.fresh("y", t)
        body.append(ir.Comparison("=", new, expr, type=t) if not rng.chance(0.2) else ir.Comparison("=", expr, new, type=t))
        st.bind(new.name)
        self.features.add("binding_eq")

    def generator(self, st: _RuleState, body: list[ir.BodyLiteral]) -> None:
        """``y = range(...)``: a few values of a type, each exact."""
        t, bounds = self.rng.choice(RANGES)
        args = tuple(ir.Const(bits_of_float(v), "float") if t == "float" else ir.Const(v, t) for v in bounds)  # type: ignore[arg-type]
        new = st.fresh("g", t)  # type: ignore[arg-type]
        body.append(ir.Comparison("=", new, ir.Call("range", args, t), type=t))  # type: ignore[arg-type]
        st.bind(new.name)
        self.features.add("range")

    def aggregate(self, st: _RuleState, lower: list[ir.Relation]) -> ir.Aggregation:
        rng = self.rng
        rel = rng.choice(lower)
        args: list[ir.Term] = []
        locals_: list[str] = []
        for t in rel.types:
            # Grouping variables only from positive atoms: the contract requires that
            # (a variable bound by `y = expr` might not count).
            outer = [v for v in st.bound_of(t) if v in st.from_atoms]
            if outer and rng.chance(0.35):
                args.append(ir.Var(rng.choice(outer)))
                self.features.add("agg_grouped")
            elif rng.chance(0.1):
                args.append(self.const(t))
            elif rng.chance(0.2):
                args.append(st.fresh("$w", t))  # printed `_`, as the front end renames it
            else:
                v = st.fresh("l", t)
                locals_.append(v.name)
                args.append(v)
        body: list[ir.BodyLiteral] = [ir.Atom(rel.name, tuple(args))]
        if rng.chance(0.3):  # a second atom: Soufflé then aggregates the named variables' distinct rows
            other = rng.choice(lower)
            second: list[ir.Term] = []
            for t in other.types:
                shared = [v for v in locals_ if st.types[v] == t]
                if shared and rng.chance(0.5):
                    second.append(ir.Var(rng.choice(shared)))
                elif rng.chance(0.3):
                    second.append(st.fresh("$w", t))
                else:
                    fresh = st.fresh("l", t)
                    locals_.append(fresh.name)
                    second.append(fresh)
            body.append(ir.Atom(other.name, tuple(second)))
            self.features.add("agg_two_atoms")
        numeric = [v for v in locals_ if st.types[v] == "number"]
        floats = [v for v in locals_ if st.types[v] == "float"]
        if numeric and rng.chance(0.25):
            body.append(ir.Comparison(rng.choice(ORDER_OPS), ir.Var(rng.choice(numeric)), self.const("number")))
            self.features.add("agg_filter")
        if rng.chance(0.1):
            other = rng.choice(lower)
            neg_args: list[ir.Term] = []
            for t in other.types:
                usable = [v for v in locals_ if st.types[v] == t] + [v for v in st.bound_of(t) if v in st.from_atoms]
                # No `_` under a negation inside an aggregate: the contract renames every
                # `_` inside an aggregate, which would make such a negation unsafe.
                neg_args.append(ir.Var(rng.choice(usable)) if usable else self.const(t))
            body.append(ir.Negation(ir.Atom(other.name, tuple(neg_args))))
            self.features.add("agg_negation")
        type: ir.BaseType = "float" if floats and (not numeric or rng.chance(0.5)) else "number"
        func = rng.choice(("count", "sum", "min", "max")) if numeric else "count"
        target: ir.Term | None = None
        if type == "float":
            func = rng.choice(("sum", "min", "max", "mean"))
            target = ir.Var(rng.choice(floats))
        elif func != "count":
            target = ir.Var(rng.choice(numeric))
            if rng.chance(0.15):
                target = ir.Call(rng.choice(("+", "*")), (target, ir.Const(2, "number")))
                self.features.add("agg_target_expr")
        if not (term_vars_all(args) & set(st.bound)):
            self.features.add("agg_ungrouped")
        self.features.add(f"agg_{func}")
        result = st.fresh("n", type)
        return ir.Aggregation(result, func, target, tuple(body), type)

    # ----------------------------------------------------------------- rules

    def lower_source(self, lower: list[ir.Relation]) -> ir.Relation:
        """A positive atom's relation from a lower stratum: EDB (dense, never empty by
        accident) half the time, so derived relations do not all thin out to nothing."""
        edb = [r for r in lower if r.name.startswith("e")]
        return self.rng.choice(edb if self.rng.chance(0.5) else lower)

    def rule(
        self,
        head: ir.Relation,
        group: list[ir.Relation],
        lower: list[ir.Relation],
        recursive: bool,
    ) -> ir.Rule:
        rng = self.rng
        st = _RuleState(counter=self.var_counter)
        n_atoms = rng.randint(1, 4)
        if recursive and n_atoms == 1 and not rng.chance(0.15):
            n_atoms = 2  # a lone recursive atom only copies; joining something grows it
        sources: list[ir.Relation] = []
        if recursive:
            n_rec = 2 if n_atoms >= 2 and rng.chance(0.3) else 1
            sources = [rng.choice(group) for _ in range(n_rec)]
            if n_rec == 2:
                self.features.add("nonlinear")
            if any(r.name != head.name for r in sources):
                self.features.add("cross_group_atom")
            self.features.add("recursion")
        sources += [self.lower_source(lower) for _ in range(n_atoms - len(sources))]
        rng.shuffle(sources)
        group_names = {r.name for r in group}
        body: list[ir.BodyLiteral] = []
        for i, rel in enumerate(sources):
            before = set(st.bound)
            body.append(self.positive_atom(rel, st, first=(i == 0)))
            if rel.name not in group_names:
                st.from_lower.update(set(st.bound) - before)
        if rng.chance(0.25):
            self.binding(st, recursive, body)
        if rng.chance(0.1):
            self.generator(st, body)
        aggregate = None
        if rng.chance(0.25):
            aggregate = self.aggregate(st, lower)
            body.append(aggregate)
            st.bind(aggregate.result.name)
        if rng.chance(0.3):
            body.append(self.negation(rng.choice(lower), st))
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            cmp = self.comparison(st)
            if cmp is not None:
                body.append(cmp)
        head_args = self.head_args(head, st, recursive, body)
        if len(body) > 1 and rng.chance(0.3):
            rng.shuffle(body)  # the meaning is order-independent; evaluators must defer
            self.features.add("shuffled_body")
        rule = ir.Rule(ir.Atom(head.name, tuple(head_args)), tuple(body))
        self.var_counter = st.counter
        if aggregate is not None:
            self.maybe_inline(rule, aggregate)
        return rule

    def head_args(
        self,
        head: ir.Relation,
        st: _RuleState,
        recursive: bool,
        body: list[ir.BodyLiteral],
    ) -> list[ir.Term]:
        rng = self.rng
        args: list[ir.Term] = []
        used: set[str] = set()
        for t in head.types:
            cands = st.bound_of(t)
            if not cands or rng.chance(0.1):
                args.append(self.const(t))
                self.features.add("head_const")
                continue
            fresh = [v for v in cands if v not in used] or cands
            if t != "symbol" and rng.chance(0.2) and (not recursive or (t != "float" and rng.chance(0.5))):
                expr = self.expression(t, cands, 2, big=not recursive)
                if recursive:
                    self.guard(expr, st, body)
                args.append(expr)
                self.features.add("arith_head")
                continue
            # In a recursive rule, values joined in from lower relations make the recursion
            # grow (path(x, z) :- path(x, y), edge(y, z)) rather than copy itself.
            new = [v for v in fresh if v in st.from_lower and v not in used]
            name = rng.choice(new if recursive and new and rng.chance(0.6) else fresh)
            used.add(name)
            args.append(ir.Var(name))
        return args

    def maybe_inline(self, rule: ir.Rule, agg: ir.Aggregation) -> None:
        """Print the aggregate where its result is used (``r(x, count : {...})`` or
        ``count : {...} > 2``) when that is its only use and a plain argument/side."""
        name = agg.result.name
        uses = [a for a in rule.head.args if name in term_vars(a)]
        direct = [a for a in rule.head.args if isinstance(a, ir.Var) and a.name == name]
        for lit in rule.body:
            if isinstance(lit, ir.Aggregation):
                continue
            if isinstance(lit, ir.Comparison):
                for side in (lit.left, lit.right):
                    if name in term_vars(side):
                        uses.append(side)
                        if isinstance(side, ir.Var):
                            direct.append(side)
            elif name in literal_var_names(lit):
                uses.append(ir.Var(name))
        others = [b for b in rule.body if b is not agg]
        if len(uses) == 1 and len(direct) == 1 and others and self.rng.chance(0.5):
            self.inline.add(name)
            self.features.add("inline_agg")

    # ----------------------------------------------------------------- program

    def program(self) -> tuple[ir.Program, dict[str, tuple[Tuple, ...]], str]:
        rng = self.rng
        alias = "Num" if rng.chance(0.25) else None
        edb = [self.relation(f"e{i}", rng.randint(1, 3), alias) for i in range(rng.randint(2, 5))]
        idb = [self.relation(f"r{i}", rng.randint(1, 4), None) for i in range(rng.randint(2, 5))]
        groups: list[list[ir.Relation]] = []
        for rel in idb:
            if groups and len(groups[-1]) < 3 and rng.chance(0.55):
                groups[-1].append(rel)
            else:
                groups.append([rel])
        rules: list[ir.Rule] = []
        lower: list[ir.Relation] = list(edb)
        for group in groups:
            for head in group:
                n_rules = rng.randint(1, 3)
                # Sometimes no base rule: only recursive rules, so the relation stays empty
                # unless another relation of its group feeds it.
                no_base = rng.chance(0.1)
                if no_base:
                    self.features.add("no_base_rule")
                for k in range(n_rules):
                    recursive = no_base or (k > 0 and rng.chance(0.7))
                    rules.append(self.rule(head, group, lower, recursive))
            lower = lower + group
        # In-program facts, for EDB relations (unioned with the input) and sometimes IDB.
        for rel in edb + idb:
            if rng.chance(0.3 if rel in edb else 0.15):
                for _ in range(rng.randint(1, 2)):
                    head = ir.Atom(rel.name, tuple(self.const(t) for t in rel.types))
                    rules.append(ir.Rule(head, ()))
                self.features.add("program_facts")
        facts: dict[str, tuple[Tuple, ...]] = {}
        for rel in edb:
            n_rows = 0 if rng.chance(0.06) else rng.randint(3, 16)
            rows = [tuple(self.value(t) for t in rel.types) for _ in range(n_rows)]
            if rows and rng.chance(0.1):
                rows.append(rows[0])
                self.features.add("duplicate_facts")
            if not rows:
                self.features.add("empty_edb")
            facts[rel.name] = tuple(rows)
        rng.shuffle(rules)  # rule order must not matter either
        program = ir.Program(
            relations={r.name: r for r in edb + idb},
            rules=tuple(rules),
            inputs=tuple(ir.InputSpec(r.name) for r in edb),
            outputs=tuple(ir.OutputSpec(r.name) for r in idb),
        )
        self.features.update(recursion_shape(program, groups))
        text = format_program(program, {alias: "number"} if alias else {}, frozenset(self.inline))
        return program, facts, text


def term_vars_all(terms: Sequence[ir.Term]) -> set[str]:
    return set().union(*(term_vars(t) for t in terms))


def literal_var_names(lit: ir.BodyLiteral) -> set[str]:
    if isinstance(lit, ir.Atom):
        return term_vars_all(lit.args)
    if isinstance(lit, ir.Negation):
        return term_vars_all(lit.atom.args)
    return set()


def recursion_shape(program: ir.Program, groups: list[list[ir.Relation]]) -> set[str]:
    """'mutual_recursion' when two relations of a group reach each other positively."""
    edges: dict[str, set[str]] = {}
    for rule in program.rules:
        for lit in rule.body:
            if isinstance(lit, ir.Atom):
                edges.setdefault(lit.relation, set()).add(rule.head.relation)

    def reach(src: str) -> set[str]:
        seen: set[str] = set()
        todo = [src]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for group in groups:
        names = [r.name for r in group]
        for a in names:
            for b in names:
                if a != b and b in reach(a) and a in reach(b):
                    return {"mutual_recursion"}
    return set()


def productive(program: ir.Program, model: dict[str, set[Tuple]]) -> bool:
    """At least half of the derived relations are non-empty: a program whose rules never
    fire tests little, so such draws are retried for a while."""
    idb = {r.head.relation for r in program.rules if r.body}
    return 2 * sum(1 for name in idb if model[name]) >= len(idb)


def generate_from_rng(rng: random.Random, label: str, attempts: int = 25) -> GeneratedCase:
    """A case from any random source (a seeded Random, or Hypothesis' ``st.randoms()``);
    programs whose model is too big for a quick test are drawn again, and so (for the
    first attempts) are programs where most rules derive nothing."""
    last: Exception | None = None
    for attempt in range(attempts):
        gen = _Generator(rng)
        program, facts, text = gen.program()
        try:
            model = evaluate(
                program,
                {n: set(rows) for n, rows in facts.items()},
                max_steps=MAX_STEPS,
                max_tuples=MAX_TUPLES,
            )
        except BudgetExceeded as exc:
            last = exc
            continue
        if attempt < attempts - 10 and not productive(program, model):
            continue
        expected = {name: frozenset(ts) for name, ts in model.items()}
        if any(not expected[spec.relation] for spec in program.outputs):
            gen.features.add("empty_output")
        return GeneratedCase(label, text, program, facts, expected, frozenset(gen.features))
    raise RuntimeError(f"{label}: no small enough program in {attempts} attempts ({last})")


def generate_case(seed: int) -> GeneratedCase:
    return generate_from_rng(random.Random(seed), f"seed {seed}")


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["0"]:
        case = generate_case(int(arg))
        print(case.describe())
        for name, tuples in sorted(case.expected.items()):
            print(f"{name}: {sorted(tuples, key=repr)}")
