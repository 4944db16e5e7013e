"""Syntax tree -> checked, normalised ir.Program (see docs/contracts.md, "Front end").

Declarations are global (a relation may be used above its .decl), so types and relations are
collected first; then directives and clauses are checked in source order, one rule at a time:
structure (declared, arity, where `_` may stand, aggregates pulled out), variable types,
safety, and last the resolved types of constants and arithmetic.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from dask_datalog.engine import functors, ir
from dask_datalog.engine.errors import DatalogError, Diagnostics
from dask_datalog.engine.frontend import inline
from dask_datalog.engine.frontend import parser as st
from dask_datalog.engine.frontend.lift import Lifter
from dask_datalog.engine.frontend.strata import Stratum
from dask_datalog.engine.ir import BaseType, Pos
from dask_datalog.engine.values import FLOAT_INF, INT32_MAX, INT32_MIN, format_float, round_float32

# The parameters Soufflé 2.5's CSV readers and writers honour (ReadStreamCSV.h, WriteStreamCSV.h);
# `compress` on an input changes nothing (a gzip fact file is recognised by its contents).
_INPUT_PARAMS = ("IO", "filename", "delimiter", "headers", "rfc4180", "columns", "name", "compress", "format")
_OUTPUT_PARAMS = ("IO", "filename", "delimiter", "headers", "rfc4180", "compress", "name", "attributeNames", "format")
_IO_KINDS = {"input": ("file", "stdin", "json", "jsonfile"), "output": ("file", "stdout", "stdoutprintsize", "json", "jsonfile")}


# Soufflé options a program may set that change how it is evaluated or reported, never its
# answer (magic sets, inlining choices, warnings, threads): accepted and ignored.
NEUTRAL_PRAGMAS = frozenset(
    {
        "magic-transform",
        "magic-transform-exclude",
        "inline-exclude",
        "inline-include",
        "suppress-warnings",
        "jobs",
        "no-warn",
        "disable-transformers",
    }
)


def check(statements: Sequence[st.Statement], filename: str = "<string>") -> ir.Program:
    """Check a parsed program and build its IR; raises DatalogError on the earliest problem
    (Diagnostics), declarations first: rules are checked only against sound declarations."""
    type_decls = [s for s in statements if isinstance(s, (st.TypeAlias, st.RecordDecl, st.AdtDecl))]
    found = Diagnostics()
    types = _type_table(type_decls, found)
    decls = [s for s in statements if isinstance(s, st.Decl)]
    decls.sort(key=lambda d: d.debug_of is not None)  # a debug_delta relation copies its relation's attributes
    relations = _relations(decls, types, type_decls, found)
    debug = {d.name: d for d in decls if d.debug_of is not None}
    with found.check():
        functors_ = _functors([s for s in statements if isinstance(s, st.FunctorDecl)], types)
    found.raise_first()
    lattice = _Lattice([s for s in type_decls if isinstance(s, st.TypeAlias)])
    excluded = {
        n.strip() for s in statements if isinstance(s, st.Pragma) and s.key == "inline-exclude" for n in s.value.split(",")
    }
    inlined = {d.name: d.pos for d in decls if d.inline and d.name not in excluded}
    rules: list[ir.Rule] = []
    for d in decls:
        if d.eqrel:
            for clause in _equivalence(d):
                with found.check():
                    rules.extend(_clause_rules(clause, relations, inlined, types, lattice, functors_))
    _check_subsumptive(decls, [s for s in statements if isinstance(s, st.Clause) and s.dominating is not None], inlined, found)
    subsumptions: list[ir.Rule] = []
    inputs: list[ir.InputSpec] = []
    outputs: list[ir.OutputSpec] = []
    printsizes: dict[str, ir.Pos] = {}  # relation -> its .printsize, which Soufflé allows once
    limits: dict[str, tuple[int, ir.Pos]] = {}  # relation -> its .limitsize, likewise
    eqrels = {s.name for s in statements if isinstance(s, st.Decl) and s.eqrel}
    pragmas: dict[str, str] = {}
    observed: dict[str, Pos] = {}  # relation -> its first I/O directive
    for s in statements:
        with found.check():
            if isinstance(s, st.Pragma):
                if s.key not in NEUTRAL_PRAGMAS and s.key not in ir.DIRECTORY_PRAGMAS:
                    raise DatalogError(s.pos, f'unsupported: .pragma "{s.key}"')
                pragmas[s.key] = s.value
            elif isinstance(s, st.Clause):
                for head in s.heads:
                    if head.relation in debug:
                        raise DatalogError(
                            debug[head.relation].pos, f"Unexpected rules/facts for delta_debug relation {head.relation}"
                        )
                (rules if s.dominating is None else subsumptions).extend(
                    _clause_rules(s, relations, inlined, types, lattice, functors_)
                )
            elif isinstance(s, st.Directive):
                relation = _relation(relations, s.relation, s.pos, f"in .{s.kind}")
                observed.setdefault(s.relation, s.pos)
                if s.kind in ("printsize", "limitsize"):
                    seen = printsizes if s.kind == "printsize" else {r: p for r, (_, p) in limits.items()}
                    if s.relation in seen:
                        raise DatalogError(
                            s.pos,
                            f"redefinition of the .{s.kind} directive for relation {s.relation} (first at line {seen[s.relation].line})",
                        )
                if s.kind == "printsize":
                    _output_spec(s, relation)  # Soufflé accepts an output's parameters here and ignores them
                    if any(p.key == "name" for p in s.params):
                        raise DatalogError(next(p.pos for p in s.params if p.key == "name"), "unsupported: name= on .printsize")
                    printsizes[s.relation] = s.pos
                elif s.kind == "limitsize":
                    if s.relation in eqrels:
                        raise DatalogError(s.pos, f"unsupported: .limitsize on the equivalence relation {s.relation}")
                    limits[s.relation] = (_limit(s), s.pos)
                elif s.kind == "input":
                    inputs.append(_input_spec(s, relation))
                else:
                    outputs.append(_output_spec(s, relation))
    lifter = Lifter(relations, lambda lits: _bound(lits, set(), lambda _: set()), lambda f: _CONVERSION_OF.get(f, f))
    with found.check():
        lifted = [lifter.rule(rule) for rule in rules]
        rules = lifter.rules + lifted  # the auxiliary rules first (made while lifting)
    if inlined:
        rules = _inline(rules, inlined, observed, relations, found)
    results = {s.name: s.result.type_name for s in statements if isinstance(s, st.FunctorDecl)}
    for rule in rules + subsumptions:
        with found.check():
            _check_subtypes(rule, relations, lattice, results)
    found.raise_first()
    directories = tuple((k, v) for k, v in pragmas.items() if k in ir.KEPT_PRAGMAS)
    return ir.Program(
        relations,
        tuple(rules),
        tuple(inputs),
        tuple(outputs),
        tuple(printsizes),
        filename,
        directories,
        tuple((name, n) for name, (n, _) in limits.items()),
        tuple(f for f in functors_.values() if not f.stateful),
        tuple((name, d.debug_of) for name, d in debug.items() if d.debug_of is not None),
        tuple(subsumptions),
    )


def _inline(
    rules: list[ir.Rule],
    inlined: dict[str, Pos],
    observed: dict[str, Pos],
    relations: dict[str, ir.Relation],
    found: Diagnostics,
) -> list[ir.Rule]:
    """The rules with the ``inline`` relations expanded (frontend/inline.py), each checked for
    safety where the expansion placed it; the inline relations are no longer declared."""
    with found.check():
        expanded = inline.expand(rules, inlined, observed, relations)
    found.raise_first()
    before = set(rules)
    for i, rule in enumerate(expanded):
        if rule not in before:
            with found.check():
                _Safety(rule.head, list(rule.body)).check()
            expanded[i] = replace(rule, body=tuple(_fold_records(rule.body)))  # a head's record met the use's
    for name in inlined:
        del relations[name]
    return expanded


class _Lattice:
    """Which declared types hold all the values of which: a subtype's base (``.type T <: S``)
    and the unions a type is a member of; ``.type T = S`` is another name for S."""

    def __init__(self, aliases: Sequence[st.TypeAlias]):
        self.same = {a.name: a.base for a in aliases if not a.subtype}
        self.parents: dict[str, list[str]] = {}  # a subtype's base; each union a member is in
        for a in aliases:
            if a.members:
                for m in a.members:
                    self.parents.setdefault(self.canonical(m), []).append(a.name)
            elif a.subtype:
                self.parents.setdefault(a.name, []).append(a.base)

    def canonical(self, t: str) -> str:
        while t in self.same:
            t = self.same[t]
        return t

    def ancestors(self, t: str) -> list[str]:
        """``t`` and every type holding all its values (its bases, the unions it is in)."""
        found = [self.canonical(t)]
        for u in found:
            found += [p for p in map(self.canonical, self.parents.get(u, ())) if p not in found]
        return found


def _check_subtypes(rule: ir.Rule, relations: dict[str, ir.Relation], lattice: _Lattice, results: Mapping[str, str]) -> None:
    """One rule against Soufflé's subtypes (``.type T <: S``): a variable bound by positive atoms to two types
    neither of which is a subtype of the other has no value, and a head argument bound to a
    variable, or a user functor's result (``results``: each functor's declared result type),
    takes only values of its column's type. (Constants and arithmetic fit any subtype of their
    base type, as in Soufflé; ``as(x, T)`` gives x the type T.)"""
    canonical, ancestors = lattice.canonical, lattice.ancestors
    if not lattice.parents:
        return
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
        if isinstance(lit, ir.Comparison) and lit.op == "=" and isinstance(lit.left, ir.Var) and isinstance(lit.right, ir.Var):
            left, right = bound.get(lit.left.name), bound.get(lit.right.name)
            if left and right and left[0] not in ancestors(right[0]) and right[0] not in ancestors(left[0]):
                raise DatalogError(
                    lit.pos,
                    f"type mismatch: {lit.left.name} is {_a(left[0])} ({left[1]}) and "
                    f"{lit.right.name} is {_a(right[0])} ({right[1]}): no value is both",
                )
    head = relations[rule.head.relation]
    for i, (arg, attr) in enumerate(zip(rule.head.args, head.attributes), 1):
        if isinstance(arg, ir.Call) and arg.name.startswith(functors.USER_PREFIX):
            made, want = canonical(results[arg.name.removeprefix(functors.USER_PREFIX)]), canonical(attr.type_name)
            if want not in ancestors(made):
                raise DatalogError(
                    arg.pos,
                    f"type mismatch: {arg.name}(...) is {_a(made)}, but argument {i} of {rule.head.relation} "
                    f"is {_a(want)}, which {_a(made)} is not",
                )
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


_BROKEN = "<broken>"  # the canonical type of a type whose definition is wrong


class _Types:
    """The program's types: ``canonical`` maps every type name a program may write to the type
    the checker works with (number, unsigned, symbol, or a record or ADT type's name, aliases
    followed); ``definitions`` holds the record and ADT types (anonymous records too, named by
    their structure: ``[number, symbol]``), ``branches`` every ADT branch by name with its type
    and its index (its id)."""

    def __init__(self, canonical: dict[str, str], enums: set[str]):
        self.canonical = canonical
        self.enums = enums  # the ADTs whose branches have no arguments
        self.definitions: dict[str, ir.TypeDefinition] = {}
        self.branches: dict[str, tuple[ir.AdtType, int]] = {}

    def base(self, t: str) -> BaseType:
        """How a value of type ``t`` is encoded: an enum ADT is its branch's number, other
        records and ADTs are record ids."""
        if t not in self.definitions:
            return _primitive(t)
        return "number" if t in self.enums else "record"

    def resolve(self, type_name: str, pos: Pos, where: str = "") -> str:
        if type_name in self.canonical:
            return self.canonical[type_name]
        raise DatalogError(pos, f"unknown type {type_name}{where}" + _suggest(type_name, self.canonical))

    def attribute(self, name: str, type_name: str, pos: Pos, where: str = "", found: Diagnostics | None = None) -> ir.Attribute:
        """A field or column of type ``type_name``; with ``found`` (declarations), an unknown
        type is a problem noted there and the attribute a number meanwhile."""
        if found is None:
            t = self.resolve(type_name, pos, where)
        else:
            t = _BROKEN
            with found.check():
                t = self.resolve(type_name, pos, where)
        if t == _BROKEN:
            return ir.Attribute(name, "number", type_name, None)
        return ir.Attribute(name, self.base(t), type_name, t if t in self.definitions else None)

    def record(self, t: str) -> ir.RecordType | None:
        d = self.definitions.get(t)
        return d if isinstance(d, ir.RecordType) else None

    def anonymous(self, elements: Sequence[str]) -> str:
        """The type of anonymous records of these element types (records compared with one
        another, or bound to variables no atom types)."""
        name = f"[{', '.join(elements)}]"
        if name not in self.definitions:
            fields = tuple(
                ir.Attribute(str(i), self.base(e), e, e if e in self.definitions else None) for i, e in enumerate(elements)
            )
            self.definitions[name] = ir.RecordType(name, fields)
        return name

    def reachable(self, names: Iterable[str]) -> tuple[ir.TypeDefinition, ...]:
        """The record and ADT types ``names`` reach, nested ones too, by name."""
        seen: dict[str, ir.TypeDefinition] = {}
        stack = [n for n in names if n in self.definitions]
        while stack:
            d = self.definitions[stack.pop()]
            if d.name not in seen:
                seen[d.name] = d
                fields = d.fields if isinstance(d, ir.RecordType) else [f for b in d.branches for f in b.fields]
                stack.extend(f.record for f in fields if f.record is not None)
        return tuple(seen[n] for n in sorted(seen))


def _type_table(decls: Sequence[st.TypeDecl], found: Diagnostics) -> _Types:
    """Every declared type: aliases followed to what they name (declared in any order), then
    the record types' fields and the ADTs' branches (which may name any type, themselves
    included). A type whose definition is wrong is ``_BROKEN`` (its problem is in ``found``),
    so that naming it is no second problem."""
    defined: dict[str, st.TypeDecl] = {}
    for a in decls:
        with found.check():
            if a.name in ir.BASE_TYPES:
                raise DatalogError(a.pos, f"cannot redefine the built-in type {a.name}")
            if a.name in defined:
                first = defined[a.name].pos
                raise DatalogError(a.pos, f"duplicate type {a.name} (first defined at {first.line}:{first.col})")
            defined[a.name] = a
    canonical: dict[str, str] = {b: b for b in ir.BASE_TYPES}
    canonical.update((d.name, d.name) for d in decls if not isinstance(d, st.TypeAlias))

    def resolve(a: st.TypeAlias, chain: list[str]) -> str:
        """What alias ``a`` names: a base type, or a record or ADT type; a union's members
        share one base type, as in Soufflé."""
        if a.name in canonical:
            return canonical[a.name]
        named: set[str] = set()
        for member in a.members or (a.base,):
            if member in canonical:
                named.add(canonical[member])
                continue
            if member not in defined:
                raise DatalogError(a.base_pos, f"unknown type {member}" + _suggest(member, [*ir.BASE_TYPES, *defined]))
            if member in chain:
                cycle = " -> ".join([*chain[chain.index(member) :], member])
                if any(getattr(defined[n], "members", ()) for n in chain):  # named where the cycle starts, as Soufflé does
                    raise DatalogError(defined[member].pos, f"Infinite descent in the definition of type {member} ({cycle})")
                raise DatalogError(defined[chain[0]].pos, f"cyclic type definition: {cycle}")
            following = defined[member]
            assert isinstance(following, st.TypeAlias)
            named.add(resolve(following, [*chain, member]))
        if _BROKEN in named:
            canonical[a.name] = _BROKEN
            return _BROKEN
        records = sorted(named - set(ir.BASE_TYPES))
        if records and a.members:
            raise DatalogError(a.pos, f"unsupported: union type {a.name} of record or ADT types ({', '.join(records)})")
        if records and a.subtype:
            raise DatalogError(a.pos, f"subtype {a.name} cannot be derived from record type {records[0]}")
        if len(named) > 1:
            listed = ", ".join(sorted(named))
            raise DatalogError(a.pos, f"Union type {a.name} is defined over {{{listed}}} (multiple primitive types in union)")
        canonical[a.name] = named.pop()
        return canonical[a.name]

    for a in decls:
        if isinstance(a, st.TypeAlias) and a.name not in canonical:
            with found.check():
                resolve(a, [a.name])
            canonical.setdefault(a.name, _BROKEN)
    types = _Types(canonical, {d.name for d in decls if isinstance(d, st.AdtDecl) and not any(b.attrs for b in d.branches)})
    for d in decls:  # first every name's place, then the fields, which may name any of them
        if isinstance(d, st.RecordDecl):
            types.definitions[d.name] = ir.RecordType(d.name, ())
        elif isinstance(d, st.AdtDecl):
            types.definitions[d.name] = ir.AdtType(d.name, ())
    for d in decls:
        if isinstance(d, st.RecordDecl):
            with found.check():
                _unique_names(d.attrs, f"record type {d.name}")
            fields = [types.attribute(f.name, f.type_name, f.pos, found=found) for f in d.attrs]
            types.definitions[d.name] = ir.RecordType(d.name, tuple(fields))
        elif isinstance(d, st.AdtDecl):
            branches: list[ir.AdtBranch] = []
            for b in sorted(d.branches, key=lambda b: b.name):
                with found.check(unplaced=True):  # Soufflé: "Branch X is defined multiple times", no place
                    if b.name in types.branches or any(b.name == other.name for other in branches):
                        raise DatalogError(b.pos, f"duplicate branch {b.name} (a branch name is one ADT's)")
                with found.check():
                    _unique_names(b.attrs, f"branch {b.name}")
                where = f" in branch {b.name}"
                fields = [types.attribute(f.name, f.type_name, f.pos, where, found) for f in b.attrs]
                branches.append(ir.AdtBranch(b.name, tuple(fields)))
            adt = ir.AdtType(d.name, tuple(branches))
            types.definitions[d.name] = adt
            types.branches.update((b.name, (adt, i)) for i, b in enumerate(adt.branches))
    return types


def _unique_names(attrs: Sequence[st.Attr], where: str) -> None:
    for i, attr in enumerate(attrs):
        if any(a.name == attr.name for a in attrs[:i]):
            raise DatalogError(attr.name_pos, f"duplicate field name {attr.name} in {where}")


def _relations(
    decls: Sequence[st.Decl], types: _Types, type_decls: Sequence[st.TypeDecl], found: Diagnostics
) -> dict[str, ir.Relation]:
    relations: dict[str, ir.Relation] = {}
    type_pos = {a.name: a.pos for a in type_decls}
    for d in decls:
        with found.check():
            relations[d.name] = _relation_decl(d, relations, types, type_pos, found)
    return relations


def _relation_decl(
    d: st.Decl, relations: dict[str, ir.Relation], types: _Types, type_pos: dict[str, Pos], found: Diagnostics
) -> ir.Relation:
    if d.name in relations:
        first = relations[d.name].pos
        raise DatalogError(d.pos, f"duplicate declaration of relation {d.name} (first declared at {first.line}:{first.col})")
    if d.name in type_pos:  # one namespace for both, as in Soufflé
        first = type_pos[d.name]
        raise DatalogError(d.pos, f"name clash: relation {d.name} has the name of the type at {first.line}:{first.col}")
    attrs: list[ir.Attribute] = []
    for attr in d.attrs:
        if any(a.name == attr.name for a in attrs):
            raise DatalogError(attr.name_pos, f"duplicate attribute name {attr.name} in .decl {d.name}")
        attrs.append(types.attribute(attr.name, attr.type_name, attr.pos, found=found))
    if d.eqrel and len(attrs) != 2:
        raise DatalogError(d.pos, f"equivalence relation {d.name} is not binary")
    if d.eqrel and attrs[0].type_name != attrs[1].type_name:
        raise DatalogError(d.pos, f"equivalence relation {d.name} has attributes of different types")
    if d.debug_of is not None:
        attrs = [*_relation(relations, d.debug_of, d.pos, f"in debug_delta({d.debug_of})").attributes]
        attrs.append(ir.Attribute("<iteration>", "unsigned", "unsigned"))
    reached = types.reachable(a.record for a in attrs if a.record is not None)
    return ir.Relation(d.name, tuple(attrs), d.pos, _choice_keys(d, attrs), reached)


def _functors(decls: Sequence[st.FunctorDecl], types: _Types) -> dict[str, ir.Functor]:
    """The ``.functor`` declarations by name: their types declared, and of a base type (Soufflé
    passes only numbers, unsigned, floats and symbols to a functor that is not stateful); a
    stateful functor, which calls back into Soufflé's own tables, is declared (a lattice's
    operators are) but a call of it is refused."""
    out: dict[str, ir.Functor] = {}
    for d in decls:
        if d.name in out:
            first = out[d.name].pos
            raise DatalogError(d.pos, f"duplicate declaration of functor {d.name} (first declared at {first.line}:{first.col})")
        if d.stateful:
            out[d.name] = ir.Functor(d.name, (), "number", d.pos, stateful=True)
            continue
        kinds: list[BaseType] = []
        for attr in (*d.params, d.result):
            what = "the result" if attr is d.result else f"parameter {attr.name}" if attr.name else "a parameter"
            t = types.resolve(attr.type_name, attr.pos, f" ({what} of functor {d.name})")
            if t in types.definitions and t not in types.enums:
                raise DatalogError(
                    attr.pos, f"functor {d.name}: {attr.type_name} is a record or ADT type, which only stateful functors take"
                )
            kinds.append(types.base(t))
        out[d.name] = ir.Functor(d.name, tuple(kinds[:-1]), kinds[-1], d.pos)
    return out


def _choice_keys(d: st.Decl, attrs: list[ir.Attribute]) -> tuple[tuple[int, ...], ...]:
    """``choice-domain`` keys as column numbers, each once (``(x, x)`` is ``x``), in order."""
    names = [a.name for a in attrs]
    keys: list[tuple[int, ...]] = []
    for item in d.choice:
        for name, pos in item:
            if name not in names:
                raise DatalogError(pos, f"Attribute {name} not found in relation definition.")
        key = tuple(sorted({names.index(name) for name, _ in item}))
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _equivalence(d: st.Decl) -> list[st.Clause]:
    """Soufflé's ``eqrel``: the relation holds the equivalence closure of what is put in it,
    written as the three rules that close it (reflexive, symmetric, transitive)."""

    def atom(a: str, b: str) -> st.Atom:
        return st.Atom(d.name, tuple(st.Wild(d.pos) if v == "_" else st.Var(v, d.pos) for v in (a, b)), d.pos)

    return [
        st.Clause((atom("x", "x"),), ((atom("x", "_"),),), d.pos),
        st.Clause((atom("x", "y"),), ((atom("y", "x"),),), d.pos),
        st.Clause((atom("x", "z"),), ((atom("x", "y"), atom("y", "z")),), d.pos),
    ]


def _relation(relations: dict[str, ir.Relation], name: str, pos: Pos, where: str) -> ir.Relation:
    if name not in relations:
        where = f" {where}" if where else ""
        raise DatalogError(pos, f"undeclared relation {name}{where}" + _suggest(name, relations))
    return relations[name]


def _params(d: st.Directive, known: Sequence[str]) -> dict[str, st.Param]:
    """A directive's parameters by key: each known and given once."""
    seen: dict[str, st.Param] = {}
    for p in d.params:
        if p.key not in known:
            raise DatalogError(p.pos, f"unknown parameter '{p.key}' for .{d.kind} (supported: {', '.join(known)})")
        if p.key in seen:
            raise DatalogError(p.pos, f"parameter '{p.key}' given twice")
        seen[p.key] = p
    return seen


def _flag(params: dict[str, st.Param], key: str) -> bool:
    """A true/false parameter (Soufflé takes any other value for false: a typo is an error here)."""
    p = params.get(key)
    if p is None:
        return False
    if p.value not in ("true", "false"):
        raise DatalogError(p.pos, f"{key} must be true or false, not '{p.value}'")
    return p.value == "true"


def _io_kind(params: dict[str, st.Param], kind: str) -> str:
    p = params.get("IO")
    if p is None:
        return "file"
    if p.value not in _IO_KINDS[kind]:
        raise DatalogError(p.pos, f"unsupported: IO={p.value} for .{kind} (supported: {', '.join(_IO_KINDS[kind])})")
    return p.value


def _delimiter(params: dict[str, st.Param], rfc4180: bool) -> str:
    """The field delimiter: a tab by default, a comma with rfc4180 (as in Soufflé)."""
    p = params.get("delimiter")
    if p is None:
        return "," if rfc4180 else "\t"
    if not p.value:
        raise DatalogError(p.pos, "the delimiter must not be empty")
    if rfc4180 and '"' in p.value:
        raise DatalogError(p.pos, "the delimiter cannot contain '\"' when rfc4180 is enabled")
    return p.value


def _filename(params: dict[str, st.Param], kind: str, extension: str) -> str | None:
    """``filename=``, else ``name=`` with the default extension (Soufflé's default file is named
    after the directive's name), else None (the relation's name)."""
    if "filename" in params:
        p = params["filename"]
        check_io_filename(p.value, kind, p.pos)
        return p.value
    if "name" in params:
        p = params["name"]
        check_io_filename(p.value + extension, kind, p.pos)
        return p.value + extension
    return None


def _json(params: dict[str, st.Param], kind: str, relation: ir.Relation) -> bool:
    """Whether the directive is Soufflé's JSON (``IO=json``/``jsonfile``), which cannot hold
    what Soufflé 2.5 stops at (``json_text.refusal``)."""
    io = _io_kind(params, kind)
    if io not in ("json", "jsonfile"):
        return False
    from dask_datalog.engine.formats import json_text  # only JSON directives need it (and json)

    why = json_text.refusal(relation)
    if why is not None:
        raise DatalogError(params["IO"].pos, f"unsupported: IO={io} for {relation.name}, which holds {why}")
    return True


def _input_spec(d: st.Directive, relation: ir.Relation) -> ir.InputSpec:
    params = _params(d, _INPUT_PARAMS)
    json = _json(params, "input", relation)
    rfc4180 = _flag(params, "rfc4180")
    columns = None
    if "columns" in params and params["columns"].value:
        p = params["columns"]
        parts = p.value.split(":")
        if not all(part.isascii() and part.isdigit() for part in parts) or len(set(map(int, parts))) != relation.arity:
            example = ":".join(str(i) for i in range(relation.arity))
            raise DatalogError(
                p.pos, f'columns must name a distinct file column for each of the {relation.arity} attributes, e.g. "{example}"'
            )
        columns = tuple(int(part) for part in parts)
    return ir.InputSpec(
        d.relation,
        _filename(params, "input", ".json" if json else ".facts"),
        _delimiter(params, rfc4180),
        d.pos,
        _io_kind(params, "input"),
        _flag(params, "headers"),
        rfc4180,
        columns,
    )


def _output_spec(d: st.Directive, relation: ir.Relation) -> ir.OutputSpec:
    params = _params(d, _OUTPUT_PARAMS)
    json = _json(params, "output", relation)
    rfc4180 = _flag(params, "rfc4180")
    compress = "compress" in params
    if compress and params["compress"].value != "true":
        raise DatalogError(params["compress"].pos, "compress must be true (Soufflé 2.5 compresses whatever its value)")
    names = [a.name for a in relation.attributes]
    joint = params["delimiter"].value if "delimiter" in params else "\t"  # Soufflé's header ignores rfc4180's comma
    header = params["attributeNames"].value if "attributeNames" in params else joint.join(names)
    return ir.OutputSpec(
        d.relation,
        _filename(params, "output", ".json" if json else ".csv.gz" if compress else ".csv"),
        _delimiter(params, rfc4180),
        d.pos,
        _io_kind(params, "output"),
        _flag(params, "headers"),
        rfc4180,
        compress,
        params["name"].value if "name" in params else "",
        None if header == "\t".join(names) else header,
        json and "format" in params and params["format"].value == "object",
    )


def _limit(d: st.Directive) -> int:
    """N of ``.limitsize r(n=N)``: a decimal count (Soufflé's stoi would read "0x3" as 0)."""
    params = _params(d, ("n",))
    if "n" not in params:
        raise DatalogError(d.pos, f".limitsize {d.relation} needs its size, e.g. .limitsize {d.relation}(n=100)")
    p = params["n"]
    if not (p.value.isascii() and p.value.isdigit()) or int(p.value) > INT32_MAX:
        raise DatalogError(p.pos, f"n must be a count from 0 to {INT32_MAX}, not '{p.value}'")
    return int(p.value)


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


def _check_subsumptive(
    decls: Sequence[st.Decl], clauses: Sequence[st.Clause], inlined: Container[str], found: Diagnostics
) -> None:
    """Soufflé's checks of subsumption: a subsumptive relation is declared ``btree_delete`` or
    with no representation, and not nullary; a rule compares tuples of one relation. Inline
    relations and choice-domains are refused here."""
    heads = {c.heads[0].relation for c in clauses}
    for d in decls:
        if d.storage == "btree_delete" and not d.attrs:
            found.note(DatalogError(d.pos, f'Subsumptive relation "{d.name}" must not be a nullary relation'))
        elif d.name in heads and d.storage not in (None, "btree_delete"):
            found.note(
                DatalogError(
                    d.pos,
                    f'Relation "{d.name}" has one or more subsumptive rules and relational representation '
                    '"btree_delete" is missing',
                )
            )
        elif d.name in heads and d.choice:
            found.note(DatalogError(d.pos, f"unsupported: choice-domain on {d.name}, which has subsumptive rules"))
    for c in clauses:
        assert c.dominating is not None
        if c.heads[0].relation != c.dominating.relation:
            found.note(DatalogError(c.pos, "Subsumption must compare tuples from the same relation"))
        for body in c.bodies or ():
            for lit in body:
                atom = lit.atom if isinstance(lit, st.Negation) else lit
                if isinstance(atom, st.Atom) and atom.relation in inlined:
                    found.note(DatalogError(atom.pos, f"unsupported: the inline relation {atom.relation} in a subsumptive rule"))


def _named_wildcards(atom: st.Atom, stem: str) -> st.Atom:
    """``atom`` with each ``_`` argument a variable of its own (Soufflé names them in both
    compared atoms of a subsumption: its check that they differ then reads every column)."""
    args = tuple(st.Var(f"{stem}{i}", e.pos) if isinstance(e, st.Wild) else e for i, e in enumerate(atom.args))
    return replace(atom, args=args)


def _clause_rules(
    c: st.Clause,
    relations: dict[str, ir.Relation],
    inlined: Container[str],
    types: _Types,
    lattice: _Lattice,
    functors_: dict[str, ir.Functor],
) -> Iterator[ir.Rule]:
    if c.dominating is not None:  # Soufflé's form: dominated :- dominated, dominating, body
        dominated = _named_wildcards(c.heads[0], "@dominated")
        dominating = _named_wildcards(c.dominating, "@dominating")
        for body in c.bodies or ():
            yield _RuleChecker(relations, types, lattice, functors_).rule(dominated, (dominated, dominating, *body), fact=False)
        return
    if c.bodies is None:
        for head in c.heads:
            _check_ground(head)
            yield _RuleChecker(relations, types, lattice, functors_).rule(head, (), fact=True)
        return
    plans = tuple((item.version, item.order) for item in c.plans)
    for body in c.bodies:
        for head in c.heads:
            checker = _RuleChecker(relations, types, lattice, functors_)
            rule = checker.rule(head, body, fact=False, grounded=head.relation not in inlined)
            yield replace(rule, plans=plans) if plans else rule


def _check_ground(head: st.Atom) -> None:
    def walk(e: st.Expr) -> None:
        if isinstance(e, st.Var):
            raise DatalogError(e.pos, f"a fact must be ground, but {e.name} is a variable")
        if isinstance(e, st.Wild):
            raise DatalogError(e.pos, "a fact must be ground, but it contains _")
        if isinstance(e, st.Binary):
            walk(e.left)
            walk(e.right)
        if isinstance(e, st.Call) and e.func in functors.SIGNATURES and functors.signature(e.func).counter:
            raise DatalogError(e.pos, f"Argument in fact is not constant: {e.func}() gives a new value each time")
        if isinstance(e, (st.Call, st.Record, st.Branch)):
            for arg in e.args:
                walk(arg)
        if isinstance(e, st.Cast):
            walk(e.expr)

    for arg in head.args:
        walk(arg)


def _overloaded(name: str) -> bool:
    """A conversion (to_float, to_number, to_unsigned, to_string) or a cast (as), before the checker
    picks the functor for its argument's type: the argument's type is its own."""
    return name in functors.CONVERSIONS or name == "as"


def _same_type_vars(t: ir.Term | None) -> Iterator[ir.Var]:
    """Variables whose type is the term's own: the term, or reached through arguments of
    polymorphic functors (arithmetic); a fixed-type argument (``strlen``'s symbol) is its own."""
    if isinstance(t, ir.Var):
        yield t
    elif isinstance(t, ir.Call) and not _overloaded(t.name):
        sig = functors.of(t)
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
        sig = functors.of(call)
        for i, arg in enumerate(call.args):
            if sig.param(i) not in (functors.POLYMORPHIC, functors.ANY):
                yield arg, sig.param(i)  # type: ignore[misc]


def _primitive(t: str) -> BaseType:
    """A type the checker works with that is a base type (records and ADTs were told apart
    before)."""
    assert t in ir.BASE_TYPES, t
    return t


def _canonical(attr: ir.Attribute) -> str:
    """The type the checker works with for a column or field: its record or ADT type, else its
    base type (subtypes are checked apart, ``_check_subtypes``)."""
    return attr.record or attr.type


def _is_nil(t: ir.Term | None) -> bool:
    return isinstance(t, ir.Const) and t.type == "record"


def _is_shaped(t: ir.Term | None) -> bool:
    """A record, a branch or nil: a term whose type its context says."""
    return isinstance(t, (ir.Record, ir.Branch)) or _is_nil(t)


def _components(groups: Sequence[tuple[ir.Term | None, ...]]) -> list[int]:
    """Per group of same-typed terms, a number the groups that share a variable share: all
    their terms have one type."""
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, terms in enumerate(groups):
        for term in terms:
            for v in _same_type_vars(term):
                parent[root(i)] = root(first.setdefault(v.name, i))
    return [root(i) for i in range(len(groups))]


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


def _grounded(lits: Sequence[ir.BodyLiteral], *roots: str) -> set[str]:
    """Variables the literals ground outside aggregates: plain arguments of positive atoms,
    aggregate results, ``roots``, and what equalities compute from those."""
    grounded = {a.name for lit in lits if isinstance(lit, ir.Atom) for a in lit.args if isinstance(a, ir.Var)}
    grounded |= {lit.result.name for lit in lits if isinstance(lit, ir.Aggregation)} | set(roots)
    changed = True
    while changed:
        changed = False
        for lit in lits:
            if isinstance(lit, ir.Comparison) and lit.op == "=":
                for var, expr in ((lit.left, lit.right), (lit.right, lit.left)):
                    if isinstance(var, ir.Var) and var.name not in grounded and ir.variable_names(expr) <= grounded:
                        grounded.add(var.name)
                        changed = True
    return grounded


def _rename_literal(lit: ir.BodyLiteral, names: dict[str, str]) -> ir.BodyLiteral:
    def rename(t: ir.Term) -> ir.Term:
        return ir.Var(names[t.name], t.pos) if isinstance(t, ir.Var) and t.name in names else t

    return ir.rewrite_terms(lit, rename)


def _pattern_vars(t: ir.Term | None) -> Iterator[ir.Var]:
    """The variables a term binds when it is matched against a value: itself, or a record's
    (an ADT branch's) elements, nested ones included, but not those inside arithmetic."""
    if isinstance(t, ir.Var):
        yield t
    elif isinstance(t, (ir.Record, ir.Branch)):
        for arg in t.args:
            yield from _pattern_vars(arg)


def _has_value(t: ir.Term, bound: set[str]) -> bool:
    """Whether ``t`` has a value once ``bound`` are: all its variables bound, no ``_``."""
    return all(v.name in bound for v in ir.variables(t)) and not any(ir.instances(t, ir.Wildcard))


def _equality_binds(left: ir.Term, right: ir.Term, bound: set[str]) -> set[str]:
    """The variables ``left = right`` binds given ``bound``: a side with a value gives it to
    the other (a variable, or a record pattern's variables); two records, element by element."""
    if isinstance(left, (ir.Record, ir.Branch)) and isinstance(right, (ir.Record, ir.Branch)):
        if type(left) is not type(right) or getattr(left, "name", None) != getattr(right, "name", None):
            return set()
        return set().union(*(_equality_binds(a, b, bound) for a, b in zip(left.args, right.args)))
    for side, other in ((left, right), (right, left)):
        if isinstance(side, (ir.Var, ir.Record, ir.Branch)) and _has_value(other, bound):
            return {v.name for v in _pattern_vars(side)} - bound
    return set()


def _arithmetic_in(t: ir.Term) -> Iterator[ir.Call]:
    """The arithmetic of an atom's argument: the argument itself, or inside records."""
    if isinstance(t, ir.Call):
        yield t
    elif isinstance(t, (ir.Record, ir.Branch)):
        for arg in t.args:
            yield from _arithmetic_in(arg)


def _fold_records(lits: Sequence[ir.BodyLiteral]) -> list[ir.BodyLiteral]:
    """``[a, b] = [c, d]`` is ``a = c, b = d`` (as Soufflé's FoldAnonymousRecords): the planner
    then only meets records matched against a value or made into one."""
    out: list[ir.BodyLiteral] = []
    for lit in lits:
        if (
            isinstance(lit, ir.Comparison)
            and lit.op == "="
            and isinstance(lit.left, ir.Record)
            and isinstance(lit.right, ir.Record)
        ):
            pairs = zip(lit.left.args, lit.right.args, lit.left.kinds, strict=True)
            out.extend(
                _fold_records(
                    [ir.Comparison("=", a, b, lit.pos, kind) for a, b, kind in pairs if ir.Wildcard not in (type(a), type(b))]
                )
            )
        elif isinstance(lit, ir.Aggregation):
            out.append(replace(lit, body=tuple(_fold_records(lit.body))))
        else:
            out.append(lit)
    return out


# How ``_`` inside a record is taken, by where the record is: kept (matches anything), given a
# fresh name (an aggregate counts matching tuples), or refused (with the reason).
_RECORD_WILDCARDS = {
    "head": "_ cannot appear in the head of a rule",
    "body": "keep",
    "aggregate": "fresh",
    "negated": "ungrounded record: _ inside a record in a negated atom (Soufflé refuses it too)",
    "aggregate-negated": "ungrounded record: _ inside a record in a negated atom (Soufflé refuses it too)",
    "comparison": "keep",
    "value": "_ can only be an argument of a body atom",
}


class _RuleChecker:
    """Checks and normalises one rule (one head, one conjunctive body)."""

    def __init__(self, relations: dict[str, ir.Relation], table: _Types, lattice: _Lattice, functors_: dict[str, ir.Functor]):
        self.relations = relations
        self.table = table
        self.lattice = lattice
        self.functors = functors_
        self.fresh_count = {"a": 0, "w": 0, "l": 0, "t": 0, "r": 0}
        self.pending: list[ir.Aggregation] = []  # aggregates pulled out of the literal at hand
        self.generators: list[ir.Comparison] = []  # `$r = range(...)` pulled out of it
        self.generated: set[str] = set()  # those `$r`
        self.types: dict[str, tuple[str, str]] = {}  # variable -> (type, where it got it)
        self.first_seen: dict[str, Pos] = {}  # variable -> its earliest occurrence in the rule
        self.term_types: dict[int, str] = {}  # id() of a record or nil term -> its type, once known

    def rule(self, head: st.Atom, body: Sequence[st.Literal], fact: bool, grounded: bool = True) -> ir.Rule:
        """The rule in IR; ``grounded``: check its safety here (an inline relation's rules are
        checked where they are expanded)."""
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
        lits = self.scope_aggregates(ir_head, lits)
        self.infer_types(ir_head, lits)
        if grounded:
            _Safety(ir_head, lits).check()
        checked = _fold_records([self.resolve(lit) for lit in lits])
        values = {n.result.name for n in ir.instances(lits, ir.Aggregation)} | self.generated
        resolved_head, checked = _unify_float_aliases(self.resolve_atom(ir_head), checked, values)
        rule = ir.Rule(resolved_head, tuple(checked), ir_head.pos)
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
                and e.type_name in self.table.canonical
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
            return self.term(e, in_aggregate=where in ("aggregate", "aggregate-negated"), wildcards=where)
        if where == "head":
            raise DatalogError(e.pos, "_ cannot appear in the head of a rule")
        if where == "aggregate":  # count counts matching tuples: give each _ its own name
            return self.fresh(ir.WILDCARD_KIND, e.pos)
        return ir.Wildcard(e.pos)

    def literal(self, lit: st.Literal, in_aggregate: bool) -> ir.BodyLiteral:
        if isinstance(lit, st.Atom):
            return self.atom(lit, "aggregate" if in_aggregate else "body")
        if isinstance(lit, st.Negation):
            where = "aggregate-negated" if in_aggregate else "negated"
            return ir.Negation(self.atom(lit.atom, where), lit.pos)
        if lit.op == "=" and _is_range(lit.left) and isinstance(lit.right, st.Var):
            lit = replace(lit, left=lit.right, right=lit.left)
        if lit.op == "=" and isinstance(lit.left, st.Var) and _is_range(lit.right):  # x = range(...): x takes each value
            return ir.Comparison("=", self.term(lit.left, in_aggregate), self.call(lit.right, in_aggregate), lit.pos)  # type: ignore[arg-type]
        left, right = (
            self.fresh(ir.WILDCARD_KIND, side.pos)
            if isinstance(side, st.Wild) and isinstance(other, st.Aggregate)
            else self.term(side, in_aggregate, wildcards="comparison")
            for side, other in ((lit.left, lit.right), (lit.right, lit.left))
        )  # `_ = min x : {...}`: the aggregate's value discarded, its witnesses kept (Soufflé)
        return ir.Comparison(lit.op, left, right, lit.pos)

    def call(self, e: st.Call, in_aggregate: bool) -> ir.Call:
        return ir.Call(e.func, tuple(self.term(a, in_aggregate) for a in e.args), "number", e.pos)

    def term(self, e: st.Expr, in_aggregate: bool, wildcards: str = "value") -> ir.Term:
        """``wildcards``: where the term is (a key of ``_RECORD_WILDCARDS``), which says what a
        ``_`` inside a record means there."""
        if isinstance(e, (st.Record, st.Branch)):
            args = tuple(self.element(a, in_aggregate, wildcards) for a in e.args)
            if isinstance(e, st.Record):
                return ir.Record(args, (), e.pos)
            return ir.Branch(self.branch(e).name, args, e.pos)
        if isinstance(e, st.Nil):
            return ir.Const(0, "record", e.pos)
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
        if isinstance(e, st.Call) and e.func.startswith(functors.USER_PREFIX):
            return self.user_call(e, in_aggregate)
        if isinstance(e, st.Call):
            return self.call(e, in_aggregate)
        if isinstance(e, st.Cast):
            t = self.table.canonical.get(e.type_name)
            if t is None:
                raise DatalogError(e.type_pos, f"unknown type {e.type_name}" + _suggest(e.type_name, self.table.canonical))
            if t in self.table.definitions:
                raise DatalogError(e.type_pos, f"unsupported: as(..., {e.type_name}) to a record or ADT type")
            return ir.Call("as", (self.term(e.expr, in_aggregate),), _primitive(t), e.pos)
        if isinstance(e, st.Wild):
            raise DatalogError(e.pos, "_ can only be an argument of a body atom")
        return self.aggregate(e)

    def user_call(self, e: st.Call, in_aggregate: bool) -> ir.Call:
        """``@f(args)``: declared by a ``.functor f``, with as many arguments; typed by it."""
        name = e.func.removeprefix(functors.USER_PREFIX)
        decl = self.functors.get(name)
        if decl is None:
            raise DatalogError(e.pos, f"undeclared user-defined functor {e.func}" + _suggest(name, self.functors))
        if decl.stateful:
            raise DatalogError(
                e.pos, f"unsupported: stateful functor {name} (it works on Soufflé's own symbol and record tables)"
            )
        if len(e.args) != len(decl.params):
            wanted = len(decl.params)
            raise DatalogError(
                e.pos, f"arity mismatch: functor {e.func} takes {wanted} argument{'s' * (wanted != 1)}, not {len(e.args)}"
            )
        args = tuple(self.term(a, in_aggregate) for a in e.args)
        return ir.Call(e.func, args, decl.result, e.pos, decl.params)

    def element(self, e: st.Expr, in_aggregate: bool, wildcards: str) -> ir.Term:
        if not isinstance(e, st.Wild):
            return self.term(e, in_aggregate, wildcards)
        meaning = _RECORD_WILDCARDS[wildcards]
        if meaning == "keep":
            return ir.Wildcard(e.pos)
        if meaning == "fresh":
            return self.fresh(ir.WILDCARD_KIND, e.pos)
        raise DatalogError(e.pos, meaning)

    def branch(self, e: st.Branch) -> ir.AdtBranch:
        """The branch ``$name(...)`` makes, checked: declared, and given its arguments."""
        if e.name not in self.table.branches:
            raise DatalogError(e.pos, f"unknown ADT branch ${e.name}" + _suggest(e.name, self.table.branches))
        adt, index = self.table.branches[e.name]
        branch = adt.branches[index]
        if len(e.args) != len(branch.fields):
            wanted = len(branch.fields)
            raise DatalogError(
                e.pos,
                f"arity mismatch: branch {e.name} of {adt.name} takes {wanted} argument{'s' * (wanted != 1)}, not {len(e.args)}",
            )
        return branch

    def aggregate(self, agg: st.Aggregate) -> ir.Var:
        if agg.func == "count" and agg.target is not None:
            raise DatalogError(agg.pos, "count takes no target: write count : { ... }")
        if agg.func != "count" and agg.target is None:
            raise DatalogError(agg.pos, f"{agg.func} needs a target: write {agg.func} x : {{ ... }}")
        outer = self.pending, self.generators  # an aggregate or range inside this one joins its body
        self.pending, self.generators = [], []
        target = None if agg.target is None else self.term(agg.target, in_aggregate=True)
        body: list[ir.BodyLiteral] = []
        for lit in agg.body:
            converted = self.literal(lit, in_aggregate=True)
            body += [*self.pending, *self.generators]
            self.pending, self.generators = [], []
            body.append(converted)
        body += [*self.pending, *self.generators]
        self.pending, self.generators = outer
        result = self.fresh("a", agg.pos)
        self.pending.append(ir.Aggregation(result, agg.func, target, tuple(body), "number", agg.pos, _materialised(body)))
        return result

    def scope_aggregates(self, head: ir.Atom, lits: list[ir.BodyLiteral]) -> list[ir.BodyLiteral]:
        """Soufflé's scoping of a variable used inside an aggregate and outside it, but not
        grounded outside: where only the aggregate's own result grounds it outside
        (``Y = min Z + Y : {...}``) the inner one is another variable; in min or max, it is a
        witness (Soufflé's GroundWitnesses): the rule also reads the aggregate's body with the
        target equal to the result, so it takes the values of every body tuple that attains
        it. Anything else stays an error of the safety check."""
        out: list[ir.BodyLiteral] = []
        extra: list[ir.BodyLiteral] = []
        for i, lit in enumerate(lits):
            if not isinstance(lit, ir.Aggregation):
                out.append(lit)
                continue
            others = lits[:i] + lits[i + 1 :]
            shared = {v.name for v in _literal_vars(lit)} & _outer_vars(head, others)
            without = _grounded(others)
            local = shared & (_grounded(others, lit.result.name) - without)
            lit = _rename_literal(lit, {v: self.fresh("l", lit.pos, v).name for v in sorted(local)})
            assert isinstance(lit, ir.Aggregation)
            witnesses = shared - local - without
            if witnesses and lit.func in ("min", "max") and lit.target is not None:
                target = lit.target
                if not isinstance(target, ir.Var):  # Soufflé's SimplifyAggregateTargetExpression
                    var = self.fresh("t", lit.pos)
                    lit = replace(lit, target=var, body=(*lit.body, ir.Comparison("=", var, target, lit.pos)))
                    target = var
                copies = [_rename_literal(b, {target.name: lit.result.name}) for b in lit.body]
                # An aggregate nested in the body is a value of its own in the copy (Soufflé's
                # nested aggregate is an expression): its result and locals get names of their own.
                inner = {b.result.name: self.fresh("a", b.pos).name for b in copies if isinstance(b, ir.Aggregation)}
                extra += [_rename_literal(b, inner) for b in copies]
                lit = _rename_literal(lit, {v: self.fresh("l", lit.pos, v).name for v in sorted(witnesses)})
            out.append(lit)
        return self.separate_aggregate_locals(head, out + extra)

    def separate_aggregate_locals(self, head: ir.Atom, lits: list[ir.BodyLiteral]) -> list[ir.BodyLiteral]:
        """Give a variable local to one aggregate its own name when another aggregate uses the
        same name, so that a variable shared between literals always means grouping."""
        if not any(isinstance(lit, ir.Aggregation) for lit in lits):
            return list(lits)
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
        arithmetic, aggregates and records (a record's elements take its type's fields); a
        variable tied only to number literals is a number (in ``as(x, T)``: of T's base type),
        records tied to no declared type get the anonymous type of their elements."""
        groups: list[list[Any]] = []  # [terms, fixed type]: terms of one type, per expression
        casts: list[ir.Call] = []
        for v in ir.variables((head, *lits)):
            seen = self.first_seen.get(v.name)
            if seen is None or (v.pos.line, v.pos.col) < (seen.line, seen.col):
                self.first_seen[v.name] = v.pos

        def group(terms: tuple[ir.Term | None, ...], fixed: str | None) -> None:
            """One group per expression, a symbol functor's argument being its own; records
            in one group are of one type, so their elements pair up."""
            groups.append([terms, fixed])
            casts.extend(c for c in ir.calls(terms) if c.name == "as")
            for t in terms:
                for arg, param in _fixed_type_args(t):
                    groups.append([(arg,), param])
            shaped = [t for t in terms if isinstance(t, (ir.Record, ir.Branch))]
            for a, b in itertools.combinations(shaped, 2):
                if isinstance(a, ir.Record) and isinstance(b, ir.Record) and len(a.args) != len(b.args):
                    raise DatalogError(
                        b.pos, f"type mismatch: a record of {len(b.args)} elements compared with one of {len(a.args)}"
                    )
                if type(a) is type(b) and getattr(a, "name", None) == getattr(b, "name", None):
                    for x, y in zip(a.args, b.args):
                        group((x, y), None)

        def visit_atom(a: ir.Atom) -> None:
            rel = self.relations[a.relation]
            for i, (arg, attr) in enumerate(zip(a.args, rel.attributes), 1):
                if isinstance(arg, ir.Var):
                    self.set_type(arg, _canonical(attr), f"argument {i} of {a.relation}")
                elif isinstance(arg, (ir.Call, ir.Record, ir.Branch)) or _is_nil(arg):
                    group((arg,), _canonical(attr))

        def visit(lit: ir.BodyLiteral) -> None:
            if isinstance(lit, ir.Atom):
                visit_atom(lit)
            elif isinstance(lit, ir.Negation):
                visit_atom(lit.atom)
            elif isinstance(lit, ir.Comparison):
                if lit.op in functors.TEXT_CONSTRAINTS:  # match, contains: two texts, not one type
                    group((lit.left,), "symbol")
                    group((lit.right,), "symbol")
                else:
                    group((lit.left, lit.right), None)
            else:
                for inner in lit.body:
                    visit(inner)
                group((lit.result, lit.target), {"count": "number", "mean": "float"}.get(lit.func))

        visit_atom(head)
        for lit in lits:
            visit(lit)
        opened: set[int] = set()  # records and branches whose elements have their groups
        while True:
            changed = False
            for terms, fixed in list(groups):
                t = fixed or next((k for k in map(self.known, terms) if k), None)
                if t is None:
                    continue
                for v in (v for term in terms for v in _same_type_vars(term)):
                    if v.name not in self.types:
                        self.types[v.name] = (t, "")
                        changed = True
                for term in terms:
                    if (isinstance(term, (ir.Record, ir.Branch)) or _is_nil(term)) and id(term) not in opened:
                        opened.add(id(term))
                        self.term_types[id(term)] = t
                        for element, field in self.fields(term, t):
                            group((element,), field)
                        changed = True
            if changed:
                continue
            cast = next((c for c in casts for v in _same_type_vars(c.args[0]) if v.name not in self.types), None)
            if cast is not None:
                untyped_cast = next(v for v in _same_type_vars(cast.args[0]) if v.name not in self.types)
                self.types[untyped_cast.name] = (cast.type, "")
                continue
            components = _components([terms for terms, _ in groups])
            shaped = {c for c, terms in zip(components, groups) if any(_is_shaped(t) for t in terms[0])}
            untyped = [
                v
                for c, (terms, _) in zip(components, groups)
                if c not in shaped
                for term in terms
                for v in _same_type_vars(term)
                if v.name not in self.types
            ]
            if untyped:
                self.types[untyped[0].name] = ("number", "")
                continue
            open_records = [
                g for c, g in zip(components, groups) if c in shaped and g[1] is None and not any(map(self.known, g[0]))
            ]
            if not open_records:
                return
            first = components[groups.index(open_records[0])]
            records = [t for c, (terms, _) in zip(components, groups) if c == first for t in terms if isinstance(t, ir.Record)]
            if not records:
                raise DatalogError(
                    next(t for t in open_records[0][0] if _is_nil(t)).pos, "cannot tell which record type this nil is"
                )
            open_records[0][1] = self.anonymous(records)

    def fields(self, term: ir.Term, t: str) -> list[tuple[ir.Term, str]]:
        """(element, its type) of a record or branch of type ``t``, checked against it."""
        if isinstance(term, ir.Branch):
            adt, index = self.table.branches[term.name]
            if adt.name != t:
                raise DatalogError(term.pos, f"type mismatch: ${term.name} is a branch of {adt.name}, not {_a(t)}")
            return [(a, _canonical(f)) for a, f in zip(term.args, adt.branches[index].fields)]
        record = self.table.record(t)
        if record is None:
            what = "nil" if _is_nil(term) else "a record"
            raise DatalogError(term.pos, f"type mismatch: {what} where {_a(t)} is expected")
        if isinstance(term, ir.Record) and len(term.args) != len(record.fields):
            raise DatalogError(
                term.pos, f"wrong number of elements: record type {t} has {len(record.fields)}, this record {len(term.args)}"
            )
        if not isinstance(term, ir.Record):  # nil
            return []
        return [(a, _canonical(f)) for a, f in zip(term.args, record.fields)]

    def anonymous(self, records: list[ir.Record]) -> str:
        """The type of records tied to no declared record type: element by element, the type
        one of them has there (a nested record's own anonymous type), else number."""
        width = len(records[0].args)
        for r in records:
            if len(r.args) != width:
                raise DatalogError(r.pos, f"type mismatch: a record of {len(r.args)} elements where one of {width} is expected")
        elements = []
        for column in zip(*(r.args for r in records)):
            t = next((k for k in map(self.known, column) if k), None)
            nested = [c for c in column if isinstance(c, ir.Record)]
            elements.append(t or (self.anonymous(nested) if nested else "number"))
        return self.table.anonymous(elements)

    def set_type(self, v: ir.Var, t: str, where: str) -> None:
        if v.name not in self.types:
            self.types[v.name] = (t, f"{where}, at {v.pos.line}:{v.pos.col}")
            return
        known, origin = self.types[v.name]
        if known != t:  # at the variable's earliest occurrence, as Soufflé ("Unable to deduce type")
            raise DatalogError(
                self.first_seen.get(v.name, v.pos),
                f"type mismatch: {v.name} is {_a(known)} ({origin}) but {where} (at {v.pos.line}:{v.pos.col}) is {_a(t)}",
            )

    def known(self, t: ir.Term | None) -> str | None:
        """The type a term certainly has, None while it depends on context."""
        if isinstance(t, ir.Var):
            return self.types[t.name][0] if t.name in self.types else None
        if isinstance(t, ir.Const):
            if t.type == "record":
                return self.term_types.get(id(t))
            return None if t.type == "number" else t.type  # a plain number is the context's
        if isinstance(t, ir.Branch):
            return self.table.branches[t.name][0].name
        if isinstance(t, ir.Record):
            return self.term_types.get(id(t))
        if isinstance(t, ir.Call) and _overloaded(t.name):
            return t.type if t.name == "as" else functors.CONVERSION_RESULTS[t.name]
        if isinstance(t, ir.Call):
            sig = functors.of(t)
            if not sig.polymorphic:
                return sig.result
            return next((k for k in map(self.known, t.args) if k), None)
        return None

    # ---- resolved types ----

    def resolve_atom(self, a: ir.Atom) -> ir.Atom:
        rel = self.relations[a.relation]
        args = tuple(
            self.typed(arg, _canonical(attr), f"argument {i} of {a.relation} is {_a(_canonical(attr))}")
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
            if lit.op in functors.TEXT_CONSTRAINTS:
                where = f"{lit.op.removeprefix('not_')} takes symbols"
                return replace(lit, left=self.typed(lit.left, "symbol", where), right=self.typed(lit.right, "symbol", where))
            t = left or right or "number"
            if t in self.table.definitions and lit.op not in ("=", "!="):
                raise DatalogError(lit.pos, f"records and ADTs are compared with = and != only, not {lit.op}")
            where = f"it is compared with {_a(t)}"
            left_term, right_term = self.typed(lit.left, t, where), self.typed(lit.right, t, where)
            resolved = replace(lit, left=left_term, right=right_term, type=self.table.base(t))
            if t == "symbol" and lit.op not in ("=", "!="):  # text order, as Soufflé's string comparison
                return replace(resolved, left=_text_rank(resolved.left), right=_text_rank(resolved.right), type="number")
            return resolved
        body = tuple(self.resolve(inner) for inner in lit.body)
        default = "float" if lit.func == "mean" else "number"
        t = "number" if lit.target is None else self.known(lit.target) or default
        if t == "symbol" or t in self.table.definitions:
            raise DatalogError(lit.pos, f"{lit.func} over {'symbols' if t == 'symbol' else 'records'} is not supported")
        if lit.func == "mean" and t != "float":
            raise DatalogError(lit.pos, f"mean is defined on floats, not on {_a(t)}: write mean to_float(x) : {{...}}")
        used = self.types[lit.result.name][0]
        if used != t:
            raise DatalogError(lit.pos, f"type mismatch: this {lit.func} is {_a(t)}, but it is used as {_a(used)}")
        target = None if lit.target is None else self.typed(lit.target, t, f"{lit.func} is over {_a(t)}")
        made = next((c for c in ir.calls((body, target)) if functors.of(c).counter), None)
        if made is not None:  # symbol-making calls are made by rules of their own (lift.py); autoinc() is not
            raise DatalogError(made.pos, "unsupported: autoinc(...) inside an aggregate (shards agree on its values)")
        return replace(lit, body=body, target=target, type=_primitive(t))

    def typed(self, term: ir.Term, want: str, where: str) -> ir.Term:
        """``term`` with its constants and arithmetic resolved to ``want``, its records and
        branches to their encoding; ``where`` ends the sentence "type mismatch: <term> is a
        <type>, but ..." when it does not fit."""
        if isinstance(term, ir.Wildcard):
            return term
        if isinstance(term, ir.Var):
            actual = self.types[term.name][0]
            if actual != want:
                raise DatalogError(term.pos, f"type mismatch: {term.name} is {_a(actual)}, but {where}")
            return term
        if isinstance(term, ir.Record):
            return self.typed_record(term, want, where)
        if isinstance(term, ir.Branch):
            return self.typed_branch(term, want, where)
        if isinstance(term, ir.Const):
            if term.type == "record":  # nil
                if self.table.record(want) is None:
                    raise DatalogError(term.pos, f"type mismatch: nil is a record, but {where}")
                return term
            if want in self.table.definitions:
                shown = f'"{term.value}" is a symbol' if term.type == "symbol" else f"{_shown_literal(term)} is {_a(term.type)}"
                raise DatalogError(term.pos, f"type mismatch: {shown}, but {where}")
            return _literal(term, _primitive(want), where)
        if term.name in functors.CONVERSIONS:
            return self.conversion(term, want, where)
        if term.name == "as":
            return self.cast(term, want, where)
        sig = functors.of(term)
        if term.name == "ord":
            return self.typed_ord(term, want, where)
        if not sig.polymorphic:
            if want != sig.result:
                raise DatalogError(term.pos, f"type mismatch: {term.name}(...) is {_a(sig.result)}, but {where}")
            args = tuple(self.typed(a, sig.param(i), f"{term.name} takes {_a(sig.param(i))}") for i, a in enumerate(term.args))
            return replace(term, args=args, type=_primitive(want))
        if want == "symbol" and term.name == "+":  # Soufflé's + on symbols joins them
            return self.typed(replace(term, name="cat"), want, where)
        if want == "symbol" and want not in sig.types:  # min and max order texts too
            raise DatalogError(term.pos, f"type mismatch: arithmetic ({_shown_op(term.name)}) on symbols")
        if want in self.table.definitions:
            raise DatalogError(term.pos, f"type mismatch: arithmetic ({_shown_op(term.name)}) gives a number, but {where}")
        if want not in sig.types:
            raise DatalogError(term.pos, f"type mismatch: {_shown_op(term.name)} is not defined on {want}s, but {where}")
        inner = f"{_shown_op(term.name)} is computed on {_a(want)} here"
        return replace(term, args=tuple(self.typed(a, want, inner) for a in term.args), type=_primitive(want))

    def typed_record(self, term: ir.Record, want: str, where: str) -> ir.Record:
        record = self.table.record(want)
        if record is None:
            raise DatalogError(term.pos, f"type mismatch: a record, but {where}")
        if len(term.args) != len(record.fields):
            raise DatalogError(
                term.pos, f"wrong number of elements: record type {want} has {len(record.fields)}, this record {len(term.args)}"
            )
        args = tuple(
            self.typed(a, _canonical(f), f"field {f.name} of {want} is {_a(_canonical(f))}")
            for a, f in zip(term.args, record.fields)
        )
        return ir.Record(args, tuple(f.type for f in record.fields), term.pos)

    def typed_branch(self, term: ir.Branch, want: str, where: str) -> ir.Term:
        """A branch in Soufflé's encoding (ir.AdtType says it)."""
        adt, index = self.table.branches[term.name]
        if adt.name != want:
            raise DatalogError(term.pos, f"type mismatch: ${term.name} is {_a(adt.name)}, but {where}")
        fields = adt.branches[index].fields
        args = tuple(
            self.typed(a, _canonical(f), f"argument {f.name} of ${term.name} is {_a(_canonical(f))}")
            for a, f in zip(term.args, fields)
        )
        tag = ir.Const(index, "number", term.pos)
        if adt.enum:
            return tag
        if len(args) == 1:
            return ir.Record((tag, args[0]), ("number", fields[0].type), term.pos)
        return ir.Record((tag, ir.Record(args, tuple(f.type for f in fields), term.pos)), ("number", "record"), term.pos)

    def typed_ord(self, term: ir.Call, want: str, where: str) -> ir.Term:
        """``ord(x)``: a symbol's or a record's id, a number's own value, as in Soufflé."""
        if want != "number":
            raise DatalogError(term.pos, f"type mismatch: ord(...) is a number, but {where}")
        (arg,) = term.args
        own = self.known(arg) or "number"
        typed = self.typed(arg, own, f"ord takes {_a(own)} here")
        base = self.table.base(own) if own in self.table.definitions else own
        if base == "number":
            return typed
        if base in ("unsigned", "float"):
            raise DatalogError(term.pos, f"unsupported: ord of {_a(base)}")
        return replace(term, args=(typed,), type="number")

    def conversion(self, call: ir.Call, want: str, where: str) -> ir.Term:
        """to_float / to_number / to_unsigned: the functor for its argument's type (a plain
        number literal being a number), or the argument itself where it has the type already."""
        result = functors.CONVERSION_RESULTS[call.name]
        if want != result:
            raise DatalogError(call.pos, f"type mismatch: {call.name}(...) is {_a(result)}, but {where}")
        source = self.known(call.args[0]) or "number"
        if source in self.table.definitions:
            raise DatalogError(
                call.pos, f"type mismatch: {call.name} converts a number, an unsigned, a float or a symbol, not {_a(source)}"
            )
        arg = self.typed(call.args[0], source, f"{call.name} converts {_a(source)} here")
        name = functors.CONVERSIONS[call.name][source]
        return arg if name is None else ir.Call(name, (arg,), _primitive(result), call.pos)

    def cast(self, call: ir.Call, want: str, where: str) -> ir.Term:
        """``as(x, T)``: x's bits read as T's base type (the identity within one base type); a
        literal is simply of type T."""
        if want != call.type:
            raise DatalogError(call.pos, f"type mismatch: as(..., {call.type}) is {_a(call.type)}, but {where}")
        arg = call.args[0]
        source = call.type if isinstance(arg, ir.Const) else self.known(arg) or call.type
        if source in self.table.definitions:
            raise DatalogError(call.pos, f"unsupported: as(...) of {_a(source)}")
        typed = self.typed(arg, source, f"as(..., {call.type}) makes it {_a(call.type)}")
        if isinstance(typed, ir.Const):
            return typed
        if source == want:  # kept, so that the subtype checks see T, not x's own type
            return replace(call, args=(typed,))
        if "symbol" in (source, want):
            raise DatalogError(
                call.pos, f"unsupported: as(...) from {_a(source)} to {_a(want)} (Soufflé reads a symbol's internal id)"
            )
        return ir.Call(functors.CASTS[(source, want)], (typed,), call.type, call.pos)


def _materialised(body: Sequence[ir.BodyLiteral]) -> bool:
    """Whether Soufflé 2.5 materialises an aggregate body as written (its
    MaterializeAggregationQueries::needsMaterializedRelation): several atoms, an inner
    aggregate, a multi-result functor (``range``), or a variable twice in its one atom."""
    atoms = [lit for lit in body if isinstance(lit, ir.Atom)]
    if len(atoms) > 1 or any(isinstance(lit, ir.Aggregation) for lit in body):
        return True
    if any(c.name == "range" for c in ir.calls(body)):
        return True
    names = [v.name for atom in atoms for v in ir.variables(atom.args)]
    return len(names) != len(set(names))


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


def _unify_float_aliases(head: ir.Atom, lits: list[ir.BodyLiteral], values: set[str]) -> tuple[ir.Atom, list[ir.BodyLiteral]]:
    """``x = y`` between two float variables makes them one variable, as Soufflé's alias
    resolution does (so their bits must be equal: 0.0 and -0.0 differ there, unlike in
    ``x = y + 0.0``), and ``x = x`` holds even for a NaN. ``values`` (aggregate results, the
    values of a range written inside a term) are values of their own, compared as floats."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while name in parent:
            name = parent[name]
        return name

    for n in ir.instances(lits, ir.Comparison):
        if (
            n.op == "="
            and n.type == "float"
            and isinstance(n.left, ir.Var)
            and isinstance(n.right, ir.Var)
            and not {n.left.name, n.right.name} & values
        ):
            a, b = find(n.left.name), find(n.right.name)
            if a != b:
                parent[a] = b
    if not parent:  # no alias: renaming would rebuild equal terms
        return head, _without_trivial_floats(lits)

    def rename(t: ir.Term) -> ir.Term:
        return ir.Var(find(t.name), t.pos) if isinstance(t, ir.Var) else t

    return ir.rewrite_terms(head, rename), _without_trivial_floats(ir.rewrite_terms(tuple(lits), rename))


def _without_trivial_floats(lits: Sequence[ir.BodyLiteral]) -> list[ir.BodyLiteral]:
    """``lits`` less every ``x = x`` on a float (aggregate bodies too)."""
    out: list[ir.BodyLiteral] = []
    for lit in lits:
        if (
            isinstance(lit, ir.Comparison)
            and lit.op == "="
            and lit.type == "float"
            and isinstance(lit.left, ir.Var)
            and lit.left == lit.right
        ):
            continue
        if isinstance(lit, ir.Aggregation):
            lit = replace(lit, body=tuple(_without_trivial_floats(lit.body)))
        out.append(lit)
    return out


# The conversion a user wrote, by the functor the checker made of it (ftos: to_string).
_CONVERSION_OF = {f: name for name, by_type in functors.CONVERSIONS.items() for f in by_type.values() if f is not None}


def _is_range(e: st.Expr) -> bool:
    return isinstance(e, st.Call) and e.func == "range"


def _shown_op(name: str) -> str:
    return "unary minus" if name == "neg" else name


def _shown_literal(const: ir.Const) -> str:
    """A numeric literal as an error message shows it."""
    shown = format_float(int(const.value)) if const.type == "float" else str(const.value)
    return shown if len(shown) <= 40 else f"{shown[:20]}...{shown[-10:]}"


def _literal(const: ir.Const, want: BaseType, where: str) -> ir.Const:
    """A literal typed as ``want``, read from its text as Soufflé reads it: a plain integer
    fits int32 as a number, is C's strtoull mod 2^32 as an unsigned (no sign, at most
    2^64 - 1), strtof as a float (rounded to nearest; -0 is -0.0; no binary); ``1u`` is an
    unsigned only and ``1.5`` a float only."""
    kind = const.type
    text = str(const.value)
    shown = f'"{text}"' if kind == "symbol" else _shown_literal(const)
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
        """Report the earliest unbound variable, as Soufflé reports each ("Ungrounded
        variable"), sorted by place. An aggregate's result counts as bound outside it, as in
        Soufflé: an unbound grouping variable is the problem reported, not what follows."""
        found = Diagnostics()
        bound = _bound(self.lits, set(), self.grouping)
        for lit in self.lits:
            if isinstance(lit, ir.Aggregation):
                with found.check():
                    self.check_aggregate(lit, bound)
        # Soufflé grounds a variable where any atom, one inside an aggregate too, holds it, and
        # reports the aggregate's "witness problem" (above) rather than its consequences
        witnessed = {v.name for lit in self.lits if isinstance(lit, ir.Aggregation) for v in _literal_vars(lit)} & self.outer
        grounded = _bound(self.lits, witnessed, lambda agg: set())
        for v in ir.variables(self.head.args):
            if v.name not in grounded:
                found.note(
                    DatalogError(
                        v.pos,
                        f"unsafe rule: variable {_shown(v)} in the head is not "
                        "bound by any positive body atom" + _arithmetic_hint(v.name, self.lits),
                    )
                )
        with found.check():
            _require_literals(self.lits, grounded, in_aggregate=False)
        found.raise_first()

    def check_aggregate(self, agg: ir.Aggregation, bound: set[str]) -> None:
        own = {v.name for lit in agg.body if not isinstance(lit, ir.Aggregation) for v in _literal_vars(lit)}
        witnessing = {
            v.name
            for lit in agg.body
            if isinstance(lit, ir.Aggregation) and lit.func in ("min", "max")
            for v in _literal_vars(lit)
        }
        for v in _literal_vars(agg):
            if v.name in self.outer and v.name not in bound and v.name in witnessing - own:
                raise DatalogError(
                    v.pos,
                    f"unsupported: {_shown(v)}, a witness of a min or max aggregate inside another aggregate, used "
                    "outside them (Soufflé grounds it through both)",
                )
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
        if isinstance(lit, ir.Atom):  # plain arguments (records' elements too): e(n - 1, x) does not bind n
            bound.update(v.name for a in lit.args for v in _pattern_vars(a))
    changed = True
    while changed:
        changed = False
        for lit in lits:
            if isinstance(lit, ir.Comparison) and lit.op == "=":
                new = _equality_binds(lit.left, lit.right, bound)
                if new:
                    bound |= new
                    changed = True
            elif isinstance(lit, ir.Aggregation) and lit.result.name not in bound and grouping(lit) <= bound:
                bound.add(lit.result.name)
                changed = True
    return bound


def _require_literals(lits: Sequence[ir.BodyLiteral], bound: set[str], in_aggregate: bool) -> None:
    """Every variable of the non-binding places of ``lits`` (one rule body or one aggregate
    body): arithmetic in positive atoms, negations, comparisons; the earliest unbound one is
    the error."""
    found = Diagnostics()
    for lit in lits:
        with found.check():
            _require_literal(lit, lits, bound, in_aggregate)
    found.raise_first()


def _require_literal(lit: ir.BodyLiteral, lits: Sequence[ir.BodyLiteral], bound: set[str], in_aggregate: bool) -> None:
    if isinstance(lit, ir.Atom):
        arithmetic = [c for a in lit.args for c in _arithmetic_in(a)]
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


def _text_rank(t: ir.Term) -> ir.Term:
    """A symbol term as the position of its text in text order, what ``<`` on symbols compares."""
    return ir.Call(functors.TEXT_RANK, (t,), "number", t.pos)


def _fold_fact(rule: ir.Rule) -> ir.Rule:
    """Facts hold constants only: evaluate the functors written in them, records' elements
    included (by the engine's own implementation, ``functors.fold``, so a fact and a rule
    agree)."""

    def fold(t: ir.Term) -> ir.Term:
        if isinstance(t, ir.Call) and t.name == functors.ITERATION:
            raise DatalogError(t.pos, "Argument in fact is not constant")
        return functors.fold(t) if isinstance(t, ir.Call) and functors.foldable(t) else t

    return replace(rule, head=ir.rewrite_terms(rule.head, fold))


def check_counters(strata: Sequence[Stratum]) -> None:
    """``autoinc()`` in a recursive rule would make a new number every iteration, without end:
    Soufflé refuses it. ``recursive_iteration_cnt()`` is taken in recursive rules only: in any
    other Soufflé gives it what the last loop before left in its counter, which depends on its
    own order of strata."""
    for stratum in strata:
        for rule in stratum.rules:
            recursive = any(isinstance(lit, ir.Atom) and lit.relation in stratum.relations for lit in rule.body)
            for call in ir.calls(rule):
                if stratum.recursive and functors.of(call).counter:
                    raise DatalogError(call.pos, "Auto-increment functor in a recursive rule")
                if call.name == functors.ITERATION and not recursive:
                    raise DatalogError(
                        call.pos,
                        "unsupported: recursive_iteration_cnt() outside a recursive rule (Soufflé gives it what its last loop left)",
                    )


def check_plans(statements: Sequence[st.Statement], strata: Sequence[Stratum]) -> None:
    """A ``.plan`` belongs to a recursive rule, each order a permutation of the rule's atoms,
    and its version one the rule has: one per atom of its own recursion, as Soufflé numbers
    them (Soufflé's ExecutionPlanChecker; its problems are reported together, the earliest
    first). A subsumptive rule is recursive (it reads its own relation) and its two compared
    atoms count among its atoms."""
    members = {name: s.relations for s in strata for name in s.relations}
    recursion = {name: s.relations for s in strata if s.recursive for name in s.relations}
    found = Diagnostics()
    for clause in statements:
        if not isinstance(clause, st.Clause) or not clause.plans or clause.bodies is None:
            continue
        head = clause.heads[0].relation
        compared = 0 if clause.dominating is None else 2
        scc = members.get(head, frozenset()) if compared else recursion.get(head, frozenset())
        recursive = compared + max(
            sum(isinstance(lit, st.Atom) and lit.relation in scc for lit in body) for body in clause.bodies
        )
        atoms = {compared + sum(isinstance(lit, st.Atom) for lit in body) for body in clause.bodies}
        if recursive == 0:
            found.note(DatalogError(clause.plans[0].pos, "execution plan for a rule that is not recursive"))
            continue
        for item in clause.plans:
            with found.check():
                if len(item.order) not in atoms:
                    expected = " or ".join(str(n) for n in sorted(atoms))
                    raise DatalogError(
                        item.pos, f"invalid execution order in .plan: expected {expected} atoms, not {len(item.order)}"
                    )
                if sorted(item.order) != list(range(1, len(item.order) + 1)):
                    raise DatalogError(
                        item.pos, "invalid execution order in .plan (incomplete): it must order every atom of the rule once"
                    )
            if item.version >= recursive:
                found.note(
                    DatalogError(
                        item.pos, f"execution plan for version {item.version}: only versions 0..{recursive - 1} permitted"
                    )
                )
    found.raise_first()
