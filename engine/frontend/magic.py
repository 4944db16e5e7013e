"""The magic-set transformation (``.pragma "magic-transform"``), as Soufflé offers it: a
program rewritten so that a relation asked for with some arguments known computes only the
tuples those arguments reach, instead of all of it (same-generation from one node, not every
pair of nodes).

Classic magic sets over adorned relations, information passed left to right: a body atom on a
transformable relation whose arguments are partly known where it stands (constants, variables
of the rule's known head arguments or of earlier positive atoms) reads the adorned copy
``R@bf`` (b: known, f: free), whose rules compute R only for the known values that reach
``R@bf@magic``; each such atom adds the magic rule saying which values reach it (the earlier
atoms of its rule). A float argument is never bound: a float constant matches as a float
(``0.0`` finds -0.0), which a magic relation, joined on bits, would not. Everything the program outputs or prints, reads in a negation or an
aggregate, or loads from a file is computed whole, as before; so is every relation the pragma
leaves out (``magic-transform-exclude``). Magic relations only grow the demand that is
actually there, so the outputs are the same; a program whose rewriting would not stratify is
left as it was. Relations that are neither output nor printed may hold only the part of
them the outputs needed (as in Soufflé).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend.strata import stratify

Adornment = str  # one letter per argument: b (known) or f (free)


def requested(program: ir.Program) -> frozenset[str]:
    """The relations the pragmas ask to transform: ``magic-transform`` names them (comma
    separated, ``*`` for every one), ``magic-transform-exclude`` takes some back."""
    wanted = {n.strip() for n in (program.pragma("magic-transform") or "").split(",") if n.strip()}
    if "*" in wanted:
        wanted = set(program.relations)
    excluded = {n.strip() for n in (program.pragma("magic-transform-exclude") or "").split(",")}
    return frozenset(wanted - excluded)


def transform(program: ir.Program) -> ir.Program:
    """``program`` with magic sets for the relations ``requested`` names (the program itself
    when there are none, when it has subsumptive rules, or when the rewritten one would not
    stratify)."""
    candidates = _transformable(program, requested(program))
    if not candidates or program.subsumptions:  # deletions need every tuple that could dominate: kept whole
        return program
    rewritten = _Rewriter(program, candidates).run()
    try:
        stratify(rewritten)
    except DatalogError:
        return program
    return rewritten


def _transformable(program: ir.Program, wanted: frozenset[str]) -> frozenset[str]:
    """Relations whose adorned copies may stand in for them: defined by rules, not read from
    files, and not observed whole (output, printed)."""
    defined = {r.head.relation for r in program.rules if r.body}
    observed = {s.relation for s in program.inputs} | {s.relation for s in program.outputs} | set(program.printsizes)
    return frozenset((wanted & defined) - observed)


def adorned_name(relation: str, adornment: Adornment) -> str:
    return f"{relation}@{adornment}"


def magic_name(relation: str, adornment: Adornment) -> str:
    return f"{relation}@{adornment}@magic"


class _Rewriter:
    """Generates, from the relations needed whole, every adorned copy their rules reach."""

    def __init__(self, program: ir.Program, candidates: frozenset[str]):
        self.program = program
        self.candidates = candidates
        self.relations: dict[str, ir.Relation] = dict(program.relations)
        self.rules: list[ir.Rule] = []
        self.queue: deque[tuple[str, Adornment]] = deque()
        self.seen: set[tuple[str, Adornment]] = set()

    def run(self) -> ir.Program:
        for name in self.program.relations:
            if name not in self.candidates:
                self.demand(name, "f" * self.program.relations[name].arity)
        while self.queue:
            name, adornment = self.queue.popleft()
            for rule in self.program.rules:
                if rule.head.relation == name:
                    self.rules.append(self.rewrite(rule, adornment))
        return replace(self.program, relations=self.relations, rules=tuple(self.rules))

    def demand(self, name: str, adornment: Adornment) -> str:
        """The name that reads ``name`` under ``adornment`` (queued once for rewriting)."""
        if name not in self.candidates or "b" not in adornment:
            adornment = "f" * len(adornment)
        if (name, adornment) not in self.seen:
            self.seen.add((name, adornment))
            self.queue.append((name, adornment))
            if "b" in adornment:
                base = self.program.relations[name]
                known = tuple(a for a, mark in zip(base.attributes, adornment) if mark == "b")
                self.relations[adorned_name(name, adornment)] = replace(base, name=adorned_name(name, adornment))
                self.relations[magic_name(name, adornment)] = replace(base, name=magic_name(name, adornment), attributes=known)
        return adorned_name(name, adornment) if "b" in adornment else name

    def rewrite(self, rule: ir.Rule, adornment: Adornment) -> ir.Rule:
        """``rule`` for its head under ``adornment``: its head renamed and guarded by the magic
        relation, its body atoms reading adorned copies, one magic rule per adorned atom."""
        name = rule.head.relation
        head = rule.head
        prefix: list[ir.BodyLiteral] = []  # the positive atoms so far, what a magic rule reads
        known: set[str] = set()
        if "b" in adornment:
            head = replace(head, relation=adorned_name(name, adornment))
            guard = ir.Atom(magic_name(name, adornment), _known_args(rule.head, adornment), rule.head.pos)
            prefix.append(_loosened(guard))
            known |= _binds(guard)
        body: list[ir.BodyLiteral] = list(prefix)
        for lit in rule.body:
            if isinstance(lit, ir.Atom):
                types = self.program.relations[lit.relation].types
                marks = "".join("b" if _known(a, known) and t != "float" else "f" for a, t in zip(lit.args, types))
                target = self.demand(lit.relation, marks)
                if target != lit.relation:
                    used = target.removeprefix(lit.relation + "@")
                    self.rules.append(
                        ir.Rule(ir.Atom(magic_name(lit.relation, used), _known_args(lit, used), lit.pos), tuple(prefix), lit.pos)
                    )
                    lit = replace(lit, relation=target)
                prefix.append(_loosened(lit))
                known |= _binds(lit)
            else:
                for atom in ir.instances(lit, ir.Atom):
                    self.demand(atom.relation, "f" * len(atom.args))  # negated, aggregated: whole
            body.append(lit)
        return replace(rule, head=head, body=tuple(body))


def _loosened(atom: ir.Atom) -> ir.Atom:
    """The atom as a magic rule reads it: an expression argument (whose variables the magic
    rule may not know), a record holding one too, becomes ``_``; the magic relation grows, never
    shrinks, so outputs stay."""
    return replace(atom, args=tuple(ir.Wildcard(a.pos) if any(ir.instances(a, ir.Call)) else a for a in atom.args))


def _binds(atom: ir.Atom) -> set[str]:
    """The variables an atom binds: its plain variable arguments (one inside an expression
    binds nothing: it must be known from elsewhere)."""
    return {a.name for a in atom.args if isinstance(a, ir.Var)}


def _known(term: ir.Term, known: set[str]) -> bool:
    return isinstance(term, ir.Const) or (isinstance(term, ir.Var) and term.name in known)


def _known_args(atom: ir.Atom, adornment: Adornment) -> tuple[ir.Term, ...]:
    return tuple(a for a, mark in zip(atom.args, adornment) if mark == "b")
