"""Syntax tree -> checked, normalised ir.Program (see docs/contracts.md, "Front end").

Declarations are global (a relation may be used above its .decl), so types and relations are
collected first; then directives and clauses are checked in source order, one rule at a time:
structure (declared, arity, where `_` may stand, aggregates pulled out), variable types,
safety, and last the resolved types of constants and arithmetic.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace

from dask_datalog.engine import functors, ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import parser as st
from dask_datalog.engine.frontend.strata import Stratum
from dask_datalog.engine.ir import BaseType, Pos
from dask_datalog.engine.values import FLOAT_INF, INT32_MAX, INT32_MIN, format_float, round_float32

_IO_PARAMS = ("IO", "filename", "delimiter")


# Soufflé options a program may set that change how it is evaluated or reported, never its
# answer (magic sets, inlining choices, warnings, threads): accepted and ignored.
NEUTRAL_PRAGMAS = frozenset(
    {"magic-transform", "magic-transform-exclude", "inline-exclude", "inline-include", "suppress-warnings", "jobs", "no-warn"}
)


def check(statements: Sequence[st.Statement], filename: str = "<string>") -> ir.Program:
    """Check a parsed program and build its IR; raises DatalogError on the first problem."""
    aliases = [s for s in statements if isinstance(s, st.TypeAlias)]
    types = _type_table(aliases)
    lattice = _Lattice(aliases, types)
    relations = _relations([s for s in statements if isinstance(s, st.Decl)], types)
    rules: list[ir.Rule] = []
    inputs: list[ir.InputSpec] = []
    outputs: list[ir.OutputSpec] = []
    printsizes: dict[str, ir.Pos] = {}  # relation -> its .printsize, which Soufflé allows once
    pragmas: dict[str, str] = {}
    for s in statements:
        if isinstance(s, st.Pragma):
            if s.key not in NEUTRAL_PRAGMAS and s.key not in ir.DIRECTORY_PRAGMAS:
                raise DatalogError(s.pos, f'unsupported: .pragma "{s.key}"')
            pragmas[s.key] = s.value
        elif isinstance(s, st.Clause):
            rules.extend(_clause_rules(s, relations, lattice))
        elif isinstance(s, st.Directive):
            _relation(relations, s.relation, s.pos, f"in .{s.kind}")
            if s.kind == "printsize":
                if s.params:
                    p = s.params[0]
                    raise DatalogError(p.pos, f"unknown parameter '{p.key}' for .printsize")
                if s.relation in printsizes:
                    first = printsizes[s.relation]
                    raise DatalogError(
                        s.pos, f"redefinition of the .printsize directive for relation {s.relation} (first at line {first.line})"
                    )
                printsizes[s.relation] = s.pos
            elif s.kind == "input":
                inputs.append(ir.InputSpec(s.relation, *_io_params(s), pos=s.pos))
            else:
                outputs.append(ir.OutputSpec(s.relation, *_io_params(s), pos=s.pos))
    _check_subtypes(rules, relations, lattice)
    directories = tuple((k, v) for k, v in pragmas.items() if k in ir.DIRECTORY_PRAGMAS)
    return ir.Program(relations, tuple(rules), tuple(inputs), tuple(outputs), tuple(printsizes), filename, directories)


class _Lattice:
    """The declared types: each name's base type, and which are subtypes of which
    (``.type T <: S``; ``.type T = S`` is another name for S)."""

    def __init__(self, aliases: Sequence[st.TypeAlias], types: dict[str, BaseType]):
        self.same = {a.name: a.base for a in aliases if not a.subtype}
        self.parent = {a.name: a.base for a in aliases if a.subtype}
        self.types = types

    def base(self, name: str) -> BaseType | None:
        return next((t for t in ir.BASE_TYPES if t == name), None) or self.types.get(name)

    def canonical(self, t: str) -> str:
        while t in self.same:
            t = self.same[t]
        return t

    def ancestors(self, t: str) -> list[str]:
        chain = [self.canonical(t)]
        while chain[-1] in self.parent:
            chain.append(self.canonical(self.parent[chain[-1]]))
        return chain


def _check_subtypes(rules: Sequence[ir.Rule], relations: dict[str, ir.Relation], lattice: _Lattice) -> None:
    """Soufflé's subtypes (``.type T <: S``): a variable bound by positive atoms to two types
    neither of which is a subtype of the other has no value, and a head argument bound to a
    variable takes only values of its column's type. (Constants and arithmetic fit any
    subtype of their base type, as in Soufflé; ``as(x, T)`` gives x the type T.)"""
    canonical, ancestors = lattice.canonical, lattice.ancestors
    if not lattice.parent:
        return
    for rule in rules:
        bound: dict[str, tuple[str, str]] = {}  # variable -> (most specific type, where)
        for lit in rule.body:
            if not isinstance(lit, ir.Atom):
                continue
            for i, (arg, attr) in enumerate(zip(lit.args, relations[lit.relation].attributes), 1):
                if not isinstance(arg, ir.Var):
                    continue
                t, where = canonical(attr.type_name), f"argument {i} of {lit.relation}"
                known, origin = bound.get(arg.name, (t, where))
                if t in ancestors(known):  # as specific as before, or less: the variable keeps its type
                    bound.setdefault(arg.name, (t, where))
                elif known in ancestors(t):  # more specific
                    bound[arg.name] = (t, where)
                else:
                    raise DatalogError(
                        arg.pos,
                        f"type mismatch: {arg.name} is {_a(known)} ({origin}) and {_a(t)} ({where}), and no value is both",
                    )
        for lit in rule.body:
            if (
                isinstance(lit, ir.Comparison)
                and lit.op == "="
                and isinstance(lit.left, ir.Var)
                and isinstance(lit.right, ir.Var)
            ):
                left, right = bound.get(lit.left.name), bound.get(lit.right.name)
                if left and right and left[0] not in ancestors(right[0]) and right[0] not in ancestors(left[0]):
                    raise DatalogError(
                        lit.pos,
                        f"type mismatch: {lit.left.name} is {_a(left[0])} ({left[1]}) and "
                        f"{lit.right.name} is {_a(right[0])} ({right[1]}): no value is both",
                    )
        head = relations[rule.head.relation]
        for i, (arg, attr) in enumerate(zip(rule.head.args, head.attributes), 1):
            if isinstance(arg, ir.Var) and arg.name in bound:
                known, origin = bound[arg.name]
                want = canonical(attr.type_name)
                if want not in ancestors(known):
                    raise DatalogError(
                        arg.pos,
                        f"type mismatch: {arg.name} is {_a(known)} ({origin}), but "
                        f"argument {i} of {rule.head.relation} is {_a(want)}, "
                        f"which {_a(known)} is not",
                    )


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _a(t: str) -> str:
    return f"an {t}" if t == "unsigned" else f"a {t}"


# ---- declarations ------------------------------------------------------------------------


def _type_table(aliases: Sequence[st.TypeAlias]) -> dict[str, BaseType]:
    """Alias name -> base type, following chains of aliases (declared in any order)."""
    defined: dict[str, st.TypeAlias] = {}
    for a in aliases:
        if a.name in ir.BASE_TYPES:
            raise DatalogError(a.pos, f"cannot redefine the built-in type {a.name}")
        if a.name in defined:
            first = defined[a.name].pos
            raise DatalogError(a.pos, f"duplicate type {a.name} (first defined at {first.line}:{first.col})")
        defined[a.name] = a
    table: dict[str, BaseType] = {}
    for a in aliases:
        chain = [a.name]
        current = a
        while current.base not in ir.BASE_TYPES:
            if current.base not in defined:
                raise DatalogError(
                    current.base_pos, f"unknown type {current.base}" + _suggest(current.base, [*ir.BASE_TYPES, *defined])
                )
            if current.base in chain:
                cycle = " -> ".join([*chain[chain.index(current.base) :], current.base])
                raise DatalogError(a.pos, f"cyclic type definition: {cycle}")
            chain.append(current.base)
            current = defined[current.base]
        table[a.name] = current.base
    return table


def _relations(decls: Sequence[st.Decl], types: dict[str, BaseType]) -> dict[str, ir.Relation]:
    relations: dict[str, ir.Relation] = {}
    for d in decls:
        if d.name in relations:
            first = relations[d.name].pos
            raise DatalogError(d.pos, f"duplicate declaration of relation {d.name} (first declared at {first.line}:{first.col})")
        attrs: list[ir.Attribute] = []
        for attr in d.attrs:
            if any(a.name == attr.name for a in attrs):
                raise DatalogError(attr.name_pos, f"duplicate attribute name {attr.name} in .decl {d.name}")
            attrs.append(ir.Attribute(attr.name, _base_type(attr, types), attr.type_name))
        relations[d.name] = ir.Relation(d.name, tuple(attrs), d.pos)
    return relations


def _base_type(attr: st.Attr, types: dict[str, BaseType]) -> BaseType:
    if attr.type_name in ir.BASE_TYPES:
        return attr.type_name
    if attr.type_name in types:
        return types[attr.type_name]
    raise DatalogError(attr.pos, f"unknown type {attr.type_name}" + _suggest(attr.type_name, [*ir.BASE_TYPES, *types]))


def _relation(relations: dict[str, ir.Relation], name: str, pos: Pos, where: str) -> ir.Relation:
    if name not in relations:
        where = f" {where}" if where else ""
        raise DatalogError(pos, f"undeclared relation {name}{where}" + _suggest(name, relations))
    return relations[name]


def _io_params(d: st.Directive) -> tuple[str | None, str]:
    """(filename, delimiter) of an .input/.output directive."""
    seen: dict[str, st.Param] = {}
    for p in d.params:
        if p.key not in _IO_PARAMS:
            raise DatalogError(p.pos, f"unknown parameter '{p.key}' for .{d.kind} (supported: {', '.join(_IO_PARAMS)})")
        if p.key in seen:
            raise DatalogError(p.pos, f"parameter '{p.key}' given twice")
        seen[p.key] = p
        if p.key == "IO" and p.value != "file":
            hint = "; to print outputs run with -D -" if d.kind == "output" else ""
            raise DatalogError(p.pos, f"unsupported: IO={p.value} (only IO=file{hint})")
        if p.key in ("filename", "delimiter") and not p.quoted:
            raise DatalogError(p.pos, f'{p.key} must be a string, e.g. {p.key}="{p.value}"')
        if p.key == "delimiter" and not p.value:
            raise DatalogError(p.pos, "the delimiter must not be empty")
    name = seen["filename"].value if "filename" in seen else None
    if name is not None:
        check_io_filename(name, d.kind, seen["filename"].pos)
    return name, seen["delimiter"].value if "delimiter" in seen else "\t"


def check_io_filename(name: str, kind: str, pos: Pos | None) -> None:
    """An ``.input``/``.output`` ``filename=`` stays inside the fact/output directory unless it
    is absolute: the one check of this, done when a program is loaded, so every reader and
    writer (in-process and on workers) only ever sees names that passed it. Judged on the
    path's components alone (no file system access): ``a/../b.facts`` stays inside,
    ``../b.facts`` and ``a/../../b.facts`` leave."""
    where = "fact" if kind == "input" else "output"
    if not name:
        raise DatalogError(pos, "the filename must not be empty")
    if "\0" in name:
        raise DatalogError(pos, "the filename must not contain a NUL character")
    if name.startswith("/"):
        return
    depth = 0
    for part in name.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise DatalogError(
                    pos, f'filename "{name}" leaves the {where} directory (write an absolute path to read or write outside it)'
                )
        elif part not in ("", "."):
            depth += 1
    if depth == 0 or name.endswith("/"):
        raise DatalogError(pos, f'filename "{name}" names a directory, not a file')


# ---- clauses -----------------------------------------------------------------------------


def _clause_rules(c: st.Clause, relations: dict[str, ir.Relation], lattice: _Lattice) -> Iterator[ir.Rule]:
    if c.bodies is None:
        for head in c.heads:
            _check_ground(head)
            yield _RuleChecker(relations, lattice).rule(head, (), fact=True)
        return
    for body in c.bodies:
        for head in c.heads:
            yield _RuleChecker(relations, lattice).rule(head, body, fact=False)


def _check_ground(head: st.Atom) -> None:
    def walk(e: st.Expr) -> None:
        if isinstance(e, st.Var):
            raise DatalogError(e.pos, f"a fact must be ground, but {e.name} is a variable")
        if isinstance(e, st.Wild):
            raise DatalogError(e.pos, "a fact must be ground, but it contains _")
        if isinstance(e, st.Binary):
            walk(e.left)
            walk(e.right)
        if isinstance(e, st.Call):
            for arg in e.args:
                walk(arg)
        if isinstance(e, st.Cast):
            walk(e.expr)

    for arg in head.args:
        walk(arg)


def _overloaded(name: str) -> bool:
    """A conversion (to_float, to_number, to_unsigned) or a cast (as), before the checker
    picks the functor for its argument's type: the argument's type is its own."""
    return name in functors.CONVERSIONS or name == "as"


def _same_type_vars(t: ir.Term | None) -> Iterator[ir.Var]:
    """Variables whose type is the term's own: the term, or reached through arguments of
    polymorphic functors (arithmetic); a fixed-type argument (``strlen``'s symbol) is its own."""
    if isinstance(t, ir.Var):
        yield t
    elif isinstance(t, ir.Call) and not _overloaded(t.name):
        sig = functors.signature(t.name)
        for i, arg in enumerate(t.args):
            if sig.polymorphic and sig.param(i) == functors.POLYMORPHIC:
                yield from _same_type_vars(arg)


def _fixed_type_args(t: ir.Term | None) -> Iterator[tuple[ir.Term, BaseType | None]]:
    """(argument, its parameter's type) for every call argument in ``t`` whose type is not
    the call's own: fixed by the signature, or (None) the argument's own business."""
    for call in ir.calls(t):
        if _overloaded(call.name):
            yield call.args[0], None
            continue
        sig = functors.signature(call.name)
        for i, arg in enumerate(call.args):
            if sig.param(i) != functors.POLYMORPHIC:
                yield arg, sig.param(i)  # type: ignore[misc]


def _literal_vars(lit: ir.BodyLiteral) -> Iterator[ir.Var]:
    """Every variable occurrence of a literal; for an aggregation, those of body and target
    (not its result, which belongs to the enclosing rule)."""
    if isinstance(lit, ir.Aggregation):
        return ir.variables((lit.body, lit.target))
    return ir.variables(lit)


def _outer_vars(head: ir.Atom, lits: Sequence[ir.BodyLiteral]) -> set[str]:
    """Variables of the rule outside its aggregates: an aggregate groups by those it uses."""
    outer = ir.variable_names(head)
    for lit in lits:
        if not isinstance(lit, ir.Aggregation):
            outer.update(v.name for v in _literal_vars(lit))
    return outer


def _rename_literal(lit: ir.BodyLiteral, names: dict[str, str]) -> ir.BodyLiteral:
    def rename(t: ir.Term) -> ir.Term:
        return ir.Var(names[t.name], t.pos) if isinstance(t, ir.Var) and t.name in names else t

    return ir.rewrite_terms(lit, rename)


class _RuleChecker:
    """Checks and normalises one rule (one head, one conjunctive body)."""

    def __init__(self, relations: dict[str, ir.Relation], lattice: _Lattice):
        self.relations = relations
        self.lattice = lattice
        self.fresh_count = {"a": 0, "w": 0, "l": 0, "r": 0}
        self.pending: list[ir.Aggregation] = []  # aggregates pulled out of the literal at hand
        self.generators: list[ir.Comparison] = []  # `$r = range(...)` pulled out of it
        self.generated: set[str] = set()  # those `$r`
        self.types: dict[str, tuple[BaseType, str]] = {}  # variable -> (type, where it got it)

    def rule(self, head: st.Atom, body: Sequence[st.Literal], fact: bool) -> ir.Rule:
        ir_head = self.atom(head, "head")
        head_literals: list[ir.BodyLiteral] = [*self.pending, *self.generators]
        self.pending, self.generators = [], []
        lits: list[ir.BodyLiteral] = []
        for lit in body:
            converted = self.literal(lit, in_aggregate=False)
            lits.extend(self.pending)
            lits.extend(self.generators)
            self.pending, self.generators = [], []
            lits.append(converted)
        lits.extend(head_literals)
        _check_aggregate_dependence(lits)
        lits = self.separate_aggregate_locals(ir_head, lits)
        self.infer_types(ir_head, lits)
        _Safety(ir_head, lits).check()
        ir_head, lits = self.unify_float_aliases(ir_head, lits)
        rule = ir.Rule(self.resolve_atom(ir_head), tuple(self.resolve(lit) for lit in lits), ir_head.pos)
        return _fold_fact(rule) if fact and not lits else rule

    def fresh(self, kind: str, pos: Pos, stem: str = "") -> ir.Var:
        n = self.fresh_count[kind]
        self.fresh_count[kind] += 1
        return ir.Var(f"${stem}_{n}" if stem else f"${kind}{n}", pos)

    # ---- structure: syntax tree -> IR with provisional types ----

    def atom(self, a: st.Atom, where: str) -> ir.Atom:
        """``where``: head, body, negated, aggregate (a positive atom of an aggregate body)."""
        rel = _relation(self.relations, a.relation, a.pos, "")
        if len(a.args) != rel.arity:
            raise DatalogError(
                a.pos,
                f"arity mismatch: {a.relation} is declared with "
                f"{rel.arity} attribute{'s' * (rel.arity != 1)} but used "
                f"with {len(a.args)} argument{'s' * (len(a.args) != 1)}",
            )
        for e, attr in zip(a.args, rel.attributes):
            if (
                isinstance(e, st.Cast)
                and self.lattice.base(e.type_name) is not None
                and self.lattice.canonical(attr.type_name) not in self.lattice.ancestors(e.type_name)
            ):
                raise DatalogError(
                    e.pos,
                    f"type mismatch: as(..., {e.type_name}) is {_a(e.type_name)}, but the column of {a.relation} "
                    f"is {_a(attr.type_name)}, which {_a(e.type_name)} is not",
                )
        return ir.Atom(a.relation, tuple(self.arg(e, where) for e in a.args), a.pos)

    def arg(self, e: st.Expr, where: str) -> ir.Term:
        if not isinstance(e, st.Wild):
            return self.term(e, in_aggregate=where in ("aggregate", "aggregate-negated"))
        if where == "head":
            raise DatalogError(e.pos, "_ cannot appear in the head of a rule")
        if where == "aggregate":  # count counts matching tuples: give each _ its own name
            return self.fresh("w", e.pos)
        return ir.Wildcard(e.pos)

    def literal(self, lit: st.Literal, in_aggregate: bool) -> ir.BodyLiteral:
        if isinstance(lit, st.Atom):
            return self.atom(lit, "aggregate" if in_aggregate else "body")
        if isinstance(lit, st.Negation):
            where = "aggregate-negated" if in_aggregate else "negated"
            return ir.Negation(self.atom(lit.atom, where), lit.pos)
        left, right = lit.left, lit.right
        if lit.op == "=" and _is_range(left) and isinstance(right, st.Var):
            left, right = right, left
        if lit.op == "=" and isinstance(left, st.Var) and _is_range(right):  # x = range(...): x takes each value
            return ir.Comparison("=", self.term(left, in_aggregate), self.call(right, in_aggregate), lit.pos)  # type: ignore[arg-type]
        return ir.Comparison(lit.op, self.term(left, in_aggregate), self.term(right, in_aggregate), lit.pos)

    def call(self, e: st.Call, in_aggregate: bool) -> ir.Call:
        return ir.Call(e.func, tuple(self.term(a, in_aggregate) for a in e.args), "number", e.pos)

    def term(self, e: st.Expr, in_aggregate: bool) -> ir.Term:
        if isinstance(e, st.Var):
            return ir.Var(e.name, e.pos)
        if isinstance(e, st.Num):  # an integer literal's text, read once its type is known
            return ir.Const(e.value if e.type == "float" else e.text, e.type, e.pos)  # type: ignore[arg-type]
        if isinstance(e, st.Str):
            return ir.Const(e.value, "symbol", e.pos)
        if isinstance(e, st.Binary):
            left, right = self.term(e.left, in_aggregate), self.term(e.right, in_aggregate)
            return ir.Call(e.op, (left, right), "number", e.pos)
        if isinstance(e, st.Call) and e.func == "range":  # a generator: its own literal, a variable here
            var = self.fresh("r", e.pos)
            self.generated.add(var.name)
            self.generators.append(ir.Comparison("=", var, self.call(e, in_aggregate), e.pos))
            return var
        if isinstance(e, st.Call):
            return self.call(e, in_aggregate)
        if isinstance(e, st.Cast):
            base = self.lattice.base(e.type_name)
            if base is None:
                known = [*ir.BASE_TYPES, *self.lattice.types]
                raise DatalogError(e.type_pos, f"unknown type {e.type_name}" + _suggest(e.type_name, known))
            return ir.Call("as", (self.term(e.expr, in_aggregate),), base, e.pos)
        if isinstance(e, st.Wild):
            raise DatalogError(e.pos, "_ can only be an argument of a body atom")
        if in_aggregate:
            raise DatalogError(e.pos, "unsupported: nested aggregates")
        return self.aggregate(e)

    def aggregate(self, agg: st.Aggregate) -> ir.Var:
        if agg.func == "count" and agg.target is not None:
            raise DatalogError(agg.pos, "count takes no target: write count : { ... }")
        if agg.func != "count" and agg.target is None:
            raise DatalogError(agg.pos, f"{agg.func} needs a target: write {agg.func} x : {{ ... }}")
        outer, self.generators = self.generators, []
        target = None if agg.target is None else self.term(agg.target, in_aggregate=True)
        body = tuple(self.literal(lit, in_aggregate=True) for lit in agg.body) + tuple(self.generators)
        self.generators = outer
        result = self.fresh("a", agg.pos)
        self.pending.append(ir.Aggregation(result, agg.func, target, body, "number", agg.pos))
        return result

    def separate_aggregate_locals(self, head: ir.Atom, lits: list[ir.BodyLiteral]) -> list[ir.BodyLiteral]:
        """Give a variable local to one aggregate its own name when another aggregate uses the
        same name, so that a variable shared between literals always means grouping."""
        outer = _outer_vars(head, lits)
        seen: set[str] = set()
        out: list[ir.BodyLiteral] = []
        for lit in lits:
            if isinstance(lit, ir.Aggregation):
                local = {v.name for v in _literal_vars(lit)} - outer
                clash = sorted(local & seen)
                seen |= local
                if clash:
                    lit = _rename_literal(lit, {n: self.fresh("l", lit.pos, n).name for n in clash})
            out.append(lit)
        return out

    # ---- variable types ----

    def infer_types(self, head: ir.Atom, lits: list[ir.BodyLiteral]) -> None:
        """Types of variables: from the atoms they occur in, then through comparisons,
        arithmetic and aggregates; a variable tied only to number literals is a number (in
        ``as(x, T)``: of T's base type)."""
        groups: list[tuple[tuple[ir.Term | None, ...], BaseType | None]] = []
        casts: list[ir.Call] = []

        def group(terms: tuple[ir.Term | None, ...], fixed: BaseType | None) -> None:
            """One group per expression, a symbol functor's argument being its own."""
            groups.append((terms, fixed))
            casts.extend(c for c in ir.calls(terms) if c.name == "as")
            for t in terms:
                for arg, param in _fixed_type_args(t):
                    groups.append(((arg,), param))

        def visit_atom(a: ir.Atom) -> None:
            rel = self.relations[a.relation]
            for i, (arg, attr) in enumerate(zip(a.args, rel.attributes), 1):
                if isinstance(arg, ir.Var):
                    self.set_type(arg, attr.type, f"argument {i} of {a.relation}")
                elif isinstance(arg, ir.Call):
                    group((arg,), attr.type)

        def visit(lit: ir.BodyLiteral) -> None:
            if isinstance(lit, ir.Atom):
                visit_atom(lit)
            elif isinstance(lit, ir.Negation):
                visit_atom(lit.atom)
            elif isinstance(lit, ir.Comparison):
                group((lit.left, lit.right), None)
            else:
                for inner in lit.body:
                    visit(inner)
                fixed: BaseType | None = {"count": "number", "mean": "float"}.get(lit.func)  # type: ignore[assignment]
                group((lit.result, lit.target), fixed)

        visit_atom(head)
        for lit in lits:
            visit(lit)
        while True:
            changed = False
            for terms, fixed in groups:
                t = fixed or next((k for k in map(self.known, terms) if k), None)
                for v in (v for term in terms for v in _same_type_vars(term)):
                    if t is not None and v.name not in self.types:
                        self.types[v.name] = (t, "")
                        changed = True
            if changed:
                continue
            cast = next((c for c in casts for v in _same_type_vars(c.args[0]) if v.name not in self.types), None)
            untyped = [v for terms, _ in groups for term in terms for v in _same_type_vars(term) if v.name not in self.types]
            if cast is not None:
                untyped = [v for v in _same_type_vars(cast.args[0]) if v.name not in self.types]
            if not untyped:
                return
            self.types[untyped[0].name] = ("number" if cast is None else cast.type, "")

    def set_type(self, v: ir.Var, t: BaseType, where: str) -> None:
        if v.name not in self.types:
            self.types[v.name] = (t, f"{where}, at {v.pos.line}:{v.pos.col}")
            return
        known, origin = self.types[v.name]
        if known != t:
            raise DatalogError(v.pos, f"type mismatch: {v.name} is {_a(known)} ({origin}) but {where} is {_a(t)}")

    def known(self, t: ir.Term | None) -> BaseType | None:
        """The type a term certainly has, None while it depends on context."""
        if isinstance(t, ir.Var):
            return self.types[t.name][0] if t.name in self.types else None
        if isinstance(t, ir.Const):
            return None if t.type == "number" else t.type  # a plain number is the context's
        if isinstance(t, ir.Call) and _overloaded(t.name):
            return t.type if t.name == "as" else functors.CONVERSION_RESULTS[t.name]  # type: ignore[return-value]
        if isinstance(t, ir.Call):
            sig = functors.signature(t.name)
            if not sig.polymorphic:
                return sig.result  # type: ignore[return-value]
            return next((k for k in map(self.known, t.args) if k), None)
        return None

    # ---- resolved types ----

    def resolve_atom(self, a: ir.Atom) -> ir.Atom:
        rel = self.relations[a.relation]
        args = tuple(
            self.typed(arg, attr.type, f"argument {i} of {a.relation} is {_a(attr.type)}")
            for i, (arg, attr) in enumerate(zip(a.args, rel.attributes), 1)
        )
        return replace(a, args=args)

    def resolve(self, lit: ir.BodyLiteral) -> ir.BodyLiteral:
        if isinstance(lit, ir.Atom):
            return self.resolve_atom(lit)
        if isinstance(lit, ir.Negation):
            return replace(lit, atom=self.resolve_atom(lit.atom))
        if isinstance(lit, ir.Comparison):
            left, right = self.known(lit.left), self.known(lit.right)
            if left and right and left != right:
                raise DatalogError(lit.pos, f"type mismatch: cannot compare {_a(left)} with {_a(right)}")
            t = left or right or "number"
            if t == "symbol" and lit.op not in ("=", "!="):
                raise DatalogError(lit.pos, f"{lit.op} is not defined on symbols (only = and != are)")
            where = f"it is compared with {_a(t)}"
            return replace(lit, left=self.typed(lit.left, t, where), right=self.typed(lit.right, t, where), type=t)
        body = tuple(self.resolve(inner) for inner in lit.body)
        default: BaseType = "float" if lit.func == "mean" else "number"
        t = "number" if lit.target is None else self.known(lit.target) or default
        if t == "symbol":
            raise DatalogError(lit.pos, f"{lit.func} over symbols is not supported")
        if lit.func == "mean" and t != "float":
            raise DatalogError(lit.pos, f"mean is defined on floats, not on {_a(t)}: write mean to_float(x) : {{...}}")
        used = self.types[lit.result.name][0]
        if used != t:
            raise DatalogError(lit.pos, f"type mismatch: this {lit.func} is {_a(t)}, but it is used as {_a(used)}")
        target = None if lit.target is None else self.typed(lit.target, t, f"{lit.func} is over {_a(t)}")
        return replace(lit, body=body, target=target, type=t)

    def typed(self, term: ir.Term, want: BaseType, where: str) -> ir.Term:
        """``term`` with its constants and arithmetic resolved to ``want``; ``where`` ends the
        sentence "type mismatch: <term> is a <type>, but ..." when it does not fit."""
        if isinstance(term, ir.Wildcard):
            return term
        if isinstance(term, ir.Var):
            actual = self.types[term.name][0]
            if actual != want:
                raise DatalogError(term.pos, f"type mismatch: {term.name} is {_a(actual)}, but {where}")
            return term
        if isinstance(term, ir.Const):
            return _literal(term, want, where)
        if term.name in functors.CONVERSIONS:
            return self.conversion(term, want, where)
        if term.name == "as":
            return self.cast(term, want, where)
        sig = functors.signature(term.name)
        if not sig.polymorphic:
            if want != sig.result:
                raise DatalogError(term.pos, f"type mismatch: {term.name}(...) is {_a(sig.result)}, but {where}")
            args = tuple(
                self.typed(a, sig.param(i), f"{term.name} takes {_a(sig.param(i))}")  # type: ignore[arg-type]
                for i, a in enumerate(term.args)
            )
            return replace(term, args=args, type=want)
        if want == "symbol" and want not in sig.types:
            raise DatalogError(term.pos, f"type mismatch: arithmetic ({_shown_op(term.name)}) on symbols")
        if want not in sig.types:
            raise DatalogError(term.pos, f"type mismatch: {_shown_op(term.name)} is not defined on {want}s, but {where}")
        inner = f"{_shown_op(term.name)} is computed on {_a(want)} here"
        return replace(term, args=tuple(self.typed(a, want, inner) for a in term.args), type=want)

    def conversion(self, call: ir.Call, want: BaseType, where: str) -> ir.Term:
        """to_float / to_number / to_unsigned: the functor for its argument's type (a plain
        number literal being a number), or the argument itself where it has the type already."""
        result = functors.CONVERSION_RESULTS[call.name]
        if want != result:
            raise DatalogError(call.pos, f"type mismatch: {call.name}(...) is {_a(result)}, but {where}")
        source = self.known(call.args[0]) or "number"
        arg = self.typed(call.args[0], source, f"{call.name} converts {_a(source)} here")
        name = functors.CONVERSIONS[call.name][source]
        return arg if name is None else ir.Call(name, (arg,), want, call.pos)

    def cast(self, call: ir.Call, want: BaseType, where: str) -> ir.Term:
        """``as(x, T)``: x's bits read as T's base type (nothing to do within one base type);
        a literal, or a term of literals, is simply of type T."""
        if want != call.type:
            raise DatalogError(call.pos, f"type mismatch: as(..., {call.type}) is {_a(call.type)}, but {where}")
        arg = call.args[0]
        source = call.type if isinstance(arg, ir.Const) else self.known(arg) or call.type
        typed = self.typed(arg, source, f"as(..., {call.type}) makes it {_a(call.type)}")
        if source == want:
            return typed
        if "symbol" in (source, want):
            raise DatalogError(
                call.pos, f"unsupported: as(...) from {_a(source)} to {_a(want)} (Soufflé reads a symbol's internal id)"
            )
        return ir.Call(functors.CASTS[(source, want)], (typed,), want, call.pos)

    def unify_float_aliases(self, head: ir.Atom, lits: list[ir.BodyLiteral]) -> tuple[ir.Atom, list[ir.BodyLiteral]]:
        """``x = y`` between two float variables makes them one variable, as Soufflé's alias
        resolution does (so their bits must be equal: 0.0 and -0.0 differ there, unlike in
        ``x = y + 0.0``), and ``x = x`` holds even for a NaN. Aggregate results and the values
        of a range written inside a term are values of their own, compared as floats."""
        results = {n.result.name for n in ir.walk(lits) if isinstance(n, ir.Aggregation)} | self.generated
        parent: dict[str, str] = {}

        def find(name: str) -> str:
            while name in parent:
                name = parent[name]
            return name

        for n in ir.walk(lits):
            if (
                isinstance(n, ir.Comparison)
                and n.op == "="
                and isinstance(n.left, ir.Var)
                and isinstance(n.right, ir.Var)
                and not {n.left.name, n.right.name} & results
                and self.types[n.left.name][0] == "float"
            ):
                a, b = find(n.left.name), find(n.right.name)
                if a != b:
                    parent[a] = b

        def rename(t: ir.Term) -> ir.Term:
            return ir.Var(find(t.name), t.pos) if isinstance(t, ir.Var) else t

        return ir.rewrite_terms(head, rename), _without_trivial_floats(ir.rewrite_terms(tuple(lits), rename), self.types)


def _check_aggregate_dependence(lits: Sequence[ir.BodyLiteral]) -> None:
    """Soufflé's "Mutually dependent aggregate": two aggregates of one body, each using a
    variable that it does not ground but the other does (grounding counted within each
    aggregate and the literal holding it only, whatever the rest of the body grounds)."""
    aggregates = [lit for lit in lits if isinstance(lit, ir.Aggregation)]
    if len(aggregates) < 2:
        return

    def grounded(agg: ir.Aggregation) -> set[str]:
        names = {agg.result.name}
        for lit in lits:  # the literal holding it: x = count : {...}
            if isinstance(lit, ir.Comparison) and lit.op == "=" and agg.result in (lit.left, lit.right):
                names |= ir.variable_names((lit.left, lit.right))
        names |= {a.name for lit in agg.body if isinstance(lit, ir.Atom) for a in lit.args if isinstance(a, ir.Var)}
        return _bound(agg.body, names, lambda inner: set())

    seen = [(agg, ir.variable_names((agg.body, agg.target)), grounded(agg)) for agg in aggregates]

    def depends(a: tuple[ir.Aggregation, set[str], set[str]], b: tuple[ir.Aggregation, set[str], set[str]]) -> bool:
        return any(v not in a[2] and v in b[2] for v in a[1] & b[1])

    for i, first in enumerate(seen):
        for second in seen[i + 1 :]:
            if depends(first, second) and depends(second, first):
                raise DatalogError(
                    first[0].pos,
                    "mutually dependent aggregates: each uses a variable that only the other grounds (as Soufflé, an error)",
                )


def _without_trivial_floats(lits: Sequence[ir.BodyLiteral], types: dict[str, tuple[BaseType, str]]) -> list[ir.BodyLiteral]:
    """``lits`` less every ``x = x`` on a float (aggregate bodies too)."""
    out: list[ir.BodyLiteral] = []
    for lit in lits:
        trivial = isinstance(lit, ir.Comparison) and lit.op == "=" and isinstance(lit.left, ir.Var) and lit.left == lit.right
        if trivial and types[lit.left.name][0] == "float":  # type: ignore[union-attr]
            continue
        if isinstance(lit, ir.Aggregation):
            lit = replace(lit, body=tuple(_without_trivial_floats(lit.body, types)))
        out.append(lit)
    return out


def _is_range(e: st.Expr) -> bool:
    return isinstance(e, st.Call) and e.func == "range"


def _shown_op(name: str) -> str:
    return "unary minus" if name == "neg" else name


def _literal(const: ir.Const, want: BaseType, where: str) -> ir.Const:
    """A literal typed as ``want``, read from its text as Soufflé reads it: a plain integer
    fits int32 as a number, is C's strtoull mod 2^32 as an unsigned (no sign, at most
    2^64 - 1), strtof as a float (rounded to nearest; -0 is -0.0; no binary); ``1u`` is an
    unsigned only and ``1.5`` a float only."""
    kind = const.type
    text = str(const.value)
    shown = format_float(int(const.value)) if kind == "float" else f'"{text}"' if kind == "symbol" else text
    if len(shown) > 40:
        shown = f"{shown[:20]}...{shown[-10:]}"
    if kind not in ("number", want):
        raise DatalogError(const.pos, f"type mismatch: {shown}{'u' * (kind == 'unsigned')} is {_a(kind)}, but {where}")
    if kind == "number" and want == "symbol":
        raise DatalogError(const.pos, f"type mismatch: {shown} is a number, but {where}")
    if want in ("symbol", "float") and kind == want:
        return const
    digits = text.lstrip("-")
    base = {"0x": 16, "0b": 2}.get(digits[:2], 10)
    magnitude = int((digits[2:] if base != 10 else digits).lstrip("0") or "0", base)  # the parser bounds its length
    value = -magnitude if text.startswith("-") else magnitude
    if want == "number" and not INT32_MIN <= value <= INT32_MAX:
        raise DatalogError(const.pos, f"{shown} does not fit in 32 bits as a number ({INT32_MIN}..{INT32_MAX})")
    if want == "unsigned":
        if text.startswith("-") or magnitude >= 1 << 64:
            raise DatalogError(const.pos, f"{shown} does not fit an unsigned (Soufflé reads 0..2^64 - 1, then keeps 32 bits)")
        value &= 0xFFFFFFFF
    if want == "float":
        bits, _ = round_float32(magnitude, 1)
        if base == 2 or bits == FLOAT_INF:
            reason = "a binary literal is no float (strtof reads 0b1 as 0)" if base == 2 else "it does not fit in a 32-bit float"
            raise DatalogError(const.pos, f"{shown} cannot be a float here: {reason}")
        value = bits | (0x80000000 if text.startswith("-") else 0)
    return replace(const, value=value, type=want)


class _Safety:
    """Every variable must be bound (grounded): as a plain argument of a positive atom, by
    ``x = <expr of bound vars>`` (chained), or as an aggregate result once the aggregate's
    grouping variables are. A variable inside arithmetic, ``e(n - 1, x)`` included, binds
    nothing: it must be bound elsewhere, as in Soufflé ("Ungrounded variable n")."""

    def __init__(self, head: ir.Atom, lits: list[ir.BodyLiteral]):
        self.head = head
        self.lits = lits
        self.outer = _outer_vars(head, lits)

    def grouping(self, agg: ir.Aggregation) -> set[str]:
        return {v.name for v in _literal_vars(agg)} & self.outer

    def check(self) -> None:
        """Report the first unbound variable; aggregates first, as an unbound grouping
        variable leaves the aggregate's result (and all that uses it) unbound too."""
        bound = _bound(self.lits, set(), self.grouping)
        for lit in self.lits:
            if isinstance(lit, ir.Aggregation):
                self.check_aggregate(lit, bound)
        for v in ir.variables(self.head.args):
            if v.name not in bound:
                raise DatalogError(
                    v.pos,
                    f"unsafe rule: variable {_shown(v)} in the head is not "
                    "bound by any positive body atom" + _arithmetic_hint(v.name, self.lits),
                )
        _require_literals(self.lits, bound, in_aggregate=False)

    def check_aggregate(self, agg: ir.Aggregation, bound: set[str]) -> None:
        for v in _literal_vars(agg):
            if v.name in self.outer and v.name not in bound:
                raise DatalogError(
                    v.pos,
                    f"unsafe rule: variable {_shown(v)} is used inside and "
                    "outside the aggregate but not bound by any positive "
                    "atom outside it" + _arithmetic_hint(v.name, self.lits),
                )
        inner = _bound(agg.body, self.grouping(agg), self.grouping)
        _require_literals(agg.body, inner, in_aggregate=True)
        _require(ir.variables((agg.target,)), inner, "in the aggregate target", agg.body, in_aggregate=True)


def _bound(lits: Sequence[ir.BodyLiteral], bound: set[str], grouping: Callable[[ir.Aggregation], set[str]]) -> set[str]:
    """Variables bound by ``lits`` given ``bound``: positive atoms, then equalities and
    aggregate results to a fixpoint. ``grouping(agg)`` gives an aggregate's grouping vars."""
    bound = set(bound)
    for lit in lits:
        if isinstance(lit, ir.Atom):  # plain arguments only: e(n - 1, x) does not bind n
            bound.update(a.name for a in lit.args if isinstance(a, ir.Var))
    changed = True
    while changed:
        changed = False
        for lit in lits:
            if isinstance(lit, ir.Comparison) and lit.op == "=":
                for side, other in ((lit.left, lit.right), (lit.right, lit.left)):
                    if (
                        isinstance(side, ir.Var)
                        and side.name not in bound
                        and all(v.name in bound for v in ir.variables((other,)))
                    ):
                        bound.add(side.name)
                        changed = True
            elif isinstance(lit, ir.Aggregation) and lit.result.name not in bound and grouping(lit) <= bound:
                bound.add(lit.result.name)
                changed = True
    return bound


def _require_literals(lits: Sequence[ir.BodyLiteral], bound: set[str], in_aggregate: bool) -> None:
    """Every variable of the non-binding places of ``lits`` (one rule body or one aggregate
    body), in source order: arithmetic in positive atoms, negations, comparisons."""
    for lit in lits:
        if isinstance(lit, ir.Atom):
            arithmetic = [a for a in lit.args if isinstance(a, ir.Call)]
            _require(
                ir.variables(arithmetic),
                bound,
                f"in arithmetic in an argument of {lit.relation}",
                (),
                in_aggregate,
                hint=" (a variable inside arithmetic does not bind it)",
            )
        elif isinstance(lit, ir.Negation):
            _require(ir.variables(lit.atom.args), bound, f"in the negation of {lit.atom.relation}", lits, in_aggregate)
        elif isinstance(lit, ir.Comparison):
            _require(ir.variables((lit.left, lit.right)), bound, "in this comparison", lits, in_aggregate)


def _require(
    vs: Iterable[ir.Var], bound: set[str], where: str, lits: Sequence[ir.BodyLiteral], in_aggregate: bool, hint: str = ""
) -> None:
    """The first variable of ``vs`` not in ``bound`` is an error; ``lits`` are searched for
    an occurrence inside arithmetic to explain why it is not bound."""
    for v in vs:
        if v.name not in bound:
            what = "unsafe aggregate" if in_aggregate else "unsafe rule"
            by = "positive atom of the aggregate body" if in_aggregate else "positive body atom"
            raise DatalogError(
                v.pos, f"{what}: variable {_shown(v)} {where} is not bound by any {by}" + (hint or _arithmetic_hint(v.name, lits))
            )


def _shown(v: ir.Var) -> str:
    """A variable's name as written: an aggregate-local variable renamed apart by
    ``separate_aggregate_locals`` (``$x_0``) is reported as ``x``."""
    if v.name.startswith("$") and "_" in v.name:
        return v.name[1 : v.name.rindex("_")]
    return v.name


def _arithmetic_hint(name: str, lits: Sequence[ir.BodyLiteral]) -> str:
    """Why a variable written in a positive atom is still unbound: only inside arithmetic."""
    for lit in lits:
        if isinstance(lit, ir.Atom):
            for arg in lit.args:
                if isinstance(arg, ir.Call):
                    for v in ir.variables(arg):
                        if v.name == name:
                            return (
                                f" (at {v.pos.line}:{v.pos.col} it is inside arithmetic in "
                                f"{lit.relation}, which does not bind it)"
                            )
    return ""


# ---- facts -------------------------------------------------------------------------------


def _fold_fact(rule: ir.Rule) -> ir.Rule:
    """Facts hold constants only: evaluate the functors written in them (by the engine's own
    implementation, ``functors.fold``, so a fact and a rule agree)."""
    args = tuple(functors.fold(a) if isinstance(a, ir.Call) else a for a in rule.head.args)
    return replace(rule, head=replace(rule.head, args=args))


def check_plans(statements: Sequence[st.Statement], strata: Sequence[Stratum]) -> None:
    """A ``.plan`` belongs to a recursive rule, and its version must be one the rule has: one
    per atom of its own recursion, as Soufflé numbers them (a plan on a rule outside any
    recursion is Soufflé's error too)."""
    recursion = {name: s.relations for s in strata if s.recursive for name in s.relations}
    for clause in statements:
        if not isinstance(clause, st.Clause) or not clause.plans or clause.bodies is None:
            continue
        scc = recursion.get(clause.heads[0].relation, frozenset())
        recursive = max(sum(isinstance(lit, st.Atom) and lit.relation in scc for lit in body) for body in clause.bodies)
        for item in clause.plans:
            if recursive == 0:
                raise DatalogError(item.pos, "execution plan for a rule that is not recursive")
            if item.version >= recursive:
                raise DatalogError(
                    item.pos, f"execution plan for version {item.version}: only versions 0..{recursive - 1} permitted"
                )
