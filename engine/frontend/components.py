"""Soufflé's components, expanded into plain statements before the checker sees the program.

A port of Soufflé 2.5's ``ComponentChecker`` and ``ComponentInstantiation`` passes, so that a
program means here what it means there. ``.init inst = C<args>`` copies what ``C`` declares
(relations, types, rules, directives), what its bases declare (their type arguments bound) and
what its own instances hold; every relation and type declared in the copy is then renamed
``inst.name``, and so is every use of it in the copy. A name the copy does not declare is left
as it is, to be resolved by the enclosing instance or the program: that is how a component's
rule reaches an outer relation. A rule whose head the copy does not declare (an "orphan") goes
up with it until an enclosing instance declares that head; orphans that reach the program are
its rules. ``.override rel`` drops the bases' rules for ``rel``, which they must declare
``overridable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import parser as st
from dask_datalog.engine.ir import Pos

MAX_DEPTH = 100  # Soufflé's limit on nested instantiation (here inheritance counts too)
_TOO_DEEP = f"component instantiation limit reached ({MAX_DEPTH} levels of .init and inheritance)"
MAX_INSTANCES = 10_000  # instances of one program, nested ones included (hostile input)
_UNBOUND = "<type parameter>"  # a parameter's value while a declaration is checked, uninstantiated

Binding = Mapping[str, str]  # type parameter -> the type or component it stands for


def expand(items: Sequence[st.Item]) -> tuple[st.Statement, ...]:
    """The program with its components instantiated: each ``.init`` at the top level is
    replaced by its instance's statements. Raises the first error (by position) that Soufflé
    reports for the program's components."""
    top = [_Comp(item, None) for item in items if isinstance(item, st.Component)]
    scope = _Lookup(top)
    _raise_first(_check(items, top, scope))
    instantiator = _Instantiator(scope)
    out: list[st.Statement] = []
    for item in items:
        if isinstance(item, st.Init):
            orphans: list[st.Clause] = []
            content = instantiator.instance(item, None, orphans, frozenset(), {}, MAX_DEPTH)
            out += [*content.types, *content.decls, *content.clauses, *orphans, *content.directives]
        elif not isinstance(item, st.Component | st.Override):
            out.append(item)
    _raise_first(instantiator.errors)
    return tuple(out)


def _raise_first(errors: Sequence[DatalogError]) -> None:
    """Soufflé sorts its errors by position: the first of them is the one the user reads."""
    if errors:
        raise min(errors, key=lambda e: (e.pos.line, e.pos.col) if e.pos else (0, 0))


# ---- the components of a program, in their scopes ------------------------------------------


@dataclass(eq=False)
class _Comp:
    """A ``.comp`` in its place: ``parent`` is the component it is declared in (None: the
    program). Compared by identity, as two declarations are two components."""

    decl: st.Component
    parent: _Comp | None
    children: list[_Comp] = field(init=False)
    named: dict[str, _Comp] = field(init=False)  # the children by name, the first of a name

    def __post_init__(self) -> None:
        self.children = [_Comp(item, self) for item in self.decl.body if isinstance(item, st.Component)]
        self.named = _by_name(self.children)

    @property
    def name(self) -> str:
        return self.decl.type.name

    @property
    def params(self) -> tuple[str, ...]:
        return self.decl.type.params

    @cached_property
    def inits(self) -> list[st.Init]:
        return [item for item in self.decl.body if isinstance(item, st.Init)]

    @cached_property
    def decls(self) -> list[st.Decl]:
        return [item for item in self.decl.body if isinstance(item, st.Decl)]

    @cached_property
    def overrides(self) -> frozenset[str]:
        return frozenset(item.relation for item in self.decl.body if isinstance(item, st.Override))


class _Lookup:
    """Soufflé's component lookup: a name used in a component is searched in the components
    declared in it, then in those its bases declare, then outwards, the program last. A type
    parameter is replaced by its argument first (once: the argument is not looked up again)."""

    def __init__(self, top: list[_Comp]):
        self.top = _by_name(top)

    def find(self, scope: _Comp | None, name: str, binding: Binding, visiting: frozenset[_Comp] = frozenset()) -> _Comp | None:
        """``visiting``: scopes whose bases are being searched already, where Soufflé would
        recurse without end (components that inherit from each other)."""
        target = binding.get(name, name)
        search = scope
        while search is not None:
            if target in search.named:
                return search.named[target]
            if search not in visiting:
                inner = visiting | {search}
                if len(inner) > MAX_DEPTH:  # each level is a Python call: stop short of its limit
                    raise DatalogError(search.decl.pos, f"component lookup through more than {MAX_DEPTH} levels of inheritance")
                for base_type in search.decl.bases:
                    base = self.find(search.parent, base_type.name, binding, inner)
                    if base is search:
                        return None
                    found = None if base is None else self.find(base, name, binding, inner)
                    if found is not None:
                        return found
            search = search.parent
        return self.top.get(target)


def _by_name(comps: Iterable[_Comp]) -> dict[str, _Comp]:
    out: dict[str, _Comp] = {}
    for comp in comps:
        out.setdefault(comp.name, comp)
    return out


def _extend(binding: Binding, formal: Sequence[str], actual: Sequence[str]) -> Binding:
    """The binding inside a component: its parameters bound to the arguments given, each
    argument first replaced by what it stands for outside. Only the parameters: an outer
    parameter is not visible inside. With the wrong number of arguments (an error reported
    by the checks), the binding outside."""
    if len(formal) != len(actual):
        return binding
    return {f: binding.get(a, a) for f, a in zip(formal, actual)}


# ---- checks, on every component whether instantiated or not --------------------------------


def _check(items: Sequence[st.Item], top: list[_Comp], scope: _Lookup) -> list[DatalogError]:
    """Soufflé's ComponentChecker: the components used exist and get as many type arguments
    as they have parameters, overrides name inherited overridable relations, inheritance has
    no cycle, and component and instance names are not those of types or relations."""
    errors: list[DatalogError] = []

    def reference(enclosing: _Comp | None, used: st.ComponentType, pos: Pos, binding: Binding) -> None:
        if used.name in binding:
            return  # a type parameter: what it stands for is known once instantiated
        comp = scope.find(enclosing, used.name, binding)
        if comp is None:
            errors.append(DatalogError(pos, f"undefined component {used.name}"))
        elif len(comp.params) != len(used.params):
            errors.append(
                DatalogError(
                    pos,
                    f"invalid number of type parameters for component {used.name}: "
                    f"it has {len(comp.params)}, not {len(used.params)}",
                )
            )

    def component(enclosing: _Comp | None, comp: _Comp, binding: Binding) -> None:
        active = _extend(binding, comp.params, [_UNBOUND] * len(comp.params))
        for base in comp.decl.bases:
            reference(enclosing, base, comp.decl.pos, active)
        parents: dict[_Comp, None] = {}  # every ancestor, once
        todo = [comp]
        while todo:
            for base in todo.pop().decl.bases:
                found = scope.find(enclosing, base.name, binding)
                if found is not None and found not in parents:
                    parents[found] = None
                    todo.append(found)
        name = comp.name
        for decl in comp.decls:
            if decl.name in comp.overrides:
                errors.append(DatalogError(comp.decl.pos, f"override of non-inherited relation {decl.name} in component {name}"))
        for parent in parents:
            for decl in parent.decls:
                if decl.name in comp.overrides and not decl.overridable:
                    where = f"{decl.pos.line}:{decl.pos.col}"
                    errors.append(
                        DatalogError(
                            comp.decl.pos,
                            f"override of non-overridable relation {decl.name} in component {name} "
                            f"(declared without overridable in {parent.name} at {where})",
                        )
                    )
        if comp in parents:
            errors.append(DatalogError(comp.decl.pos, f"invalid cycle in inheritance for component {name}"))
        for child in comp.children:
            component(comp, child, active)
        for init in comp.inits:
            reference(comp, init.type, init.pos, active)

    for comp in top:
        component(None, comp, {})
    for item in items:
        if isinstance(item, st.Init):
            reference(None, item.type, item.pos, {})
    taken: dict[str, str] = {}  # name -> what has it, as the user reads it
    for item in items:
        if isinstance(item, st.TypeAlias | st.RecordDecl | st.AdtDecl | st.Decl):
            what = "relation" if isinstance(item, st.Decl) else "type"
            taken.setdefault(item.name, f"the {what} at {item.pos.line}:{item.pos.col}")
    named = [(c.decl.type.name, "component", c.decl.pos) for c in top]  # components first, as in Soufflé
    named += [(item.name, "instantiation", item.pos) for item in items if isinstance(item, st.Init)]
    for name, what, pos in named:
        if name in taken:
            errors.append(DatalogError(pos, f"name clash on {what} {name}: {taken[name]} has this name"))
        else:
            taken[name] = f"the {what} at {pos.line}:{pos.col}"
    return errors


# ---- instantiation ---------------------------------------------------------------------------


@dataclass
class _Content:
    """What an instance declares, its names not yet prefixed with the instance's; ``io``: the
    first ``.input`` and ``.printsize`` of each relation, which Soufflé allows once."""

    types: list[st.TypeDecl] = field(default_factory=list)
    decls: list[st.Decl] = field(default_factory=list)
    directives: list[st.Directive] = field(default_factory=list)
    clauses: list[st.Clause] = field(default_factory=list)
    io: dict[tuple[str, str], st.Directive] = field(default_factory=dict)

    def add(self, other: _Content, errors: list[DatalogError]) -> None:
        self.types += other.types
        self.decls += other.decls
        self.clauses += other.clauses
        self.add_directives(other.directives, errors)

    def add_directives(self, directives: Iterable[st.Directive], errors: list[DatalogError]) -> None:
        for d in directives:
            first = self.io.setdefault((d.relation, d.kind), d) if d.kind != "output" else d
            if first is not d:
                where = f"{first.pos.line}:{first.pos.col}"
                message = f"redefinition of the .{d.kind} directive for relation {d.relation} (first at {where})"
                errors.append(DatalogError(d.pos, message))
            self.directives.append(d)

    def renamed(self, prefix: str) -> _Content:
        """The content as its instance ``prefix`` names it: what it declares gets the prefix,
        and so does every use of it."""
        types = {t.name: prefix + t.name for t in self.types}
        relations = self.relation_names(prefix)
        branches = self.branch_names(prefix)
        out = _Content(
            [_bind_type(replace(t, name=types[t.name]), types, branches) for t in self.types],
            [
                _bind_decl(
                    replace(d, name=relations[d.name], debug_of=d.debug_of and relations.get(d.debug_of, d.debug_of)), types
                )
                for d in self.decls
            ],
            clauses=[_rename_clause(c, relations, branches) for c in self.clauses],
        )
        renamed = (replace(d, relation=relations.get(d.relation, d.relation)) for d in self.directives)
        out.add_directives(renamed, [])  # checked before renaming already
        return out

    def relation_names(self, prefix: str) -> dict[str, str]:
        return {d.name: prefix + d.name for d in self.decls}

    def branch_names(self, prefix: str) -> dict[str, str]:
        """The branches of the ADTs declared here, as the instance names them (``$inst.A``)."""
        return {b.name: prefix + b.name for t in self.types if isinstance(t, st.AdtDecl) for b in t.branches}


class _Instantiator:
    """Soufflé's instantiation of the program's ``.init``s, one at a time; ``errors``: what
    it found wrong, as Soufflé goes on after an error."""

    def __init__(self, scope: _Lookup):
        self.scope = scope
        self.errors: list[DatalogError] = []
        self.instances = 0

    def instance(
        self,
        init: st.Init,
        enclosing: _Comp | None,
        orphans: list[st.Clause],
        overridden: frozenset[str],
        binding: Binding,
        depth: int,
    ) -> _Content:
        """Soufflé's getInstantiatedContent: the content of ``init``'s instance, renamed; the
        orphan rules met on the way are renamed too and left in ``orphans``."""
        if depth == 0:
            self.errors.append(DatalogError(init.pos, _TOO_DEEP))
            return _Content()
        self.instances += 1
        if self.instances > MAX_INSTANCES:  # nested instances multiply: 2 per level make 2^100
            raise DatalogError(init.pos, f"too many component instances: more than {MAX_INSTANCES}")
        comp = self.scope.find(enclosing, init.type.name, binding)
        if comp is None:
            self.errors.append(DatalogError(init.type.pos, f"component {init.type.name} not found"))
            return _Content()
        active = _extend(binding, comp.params, init.type.params)
        content = _Content()
        for nested in comp.inits:
            content.add(self.instance(nested, comp, orphans, overridden, active, depth - 1), self.errors)
        self.collect(comp, active, comp.parent, content, orphans, overridden, depth)
        prefix = init.name + "."
        relations = content.relation_names(prefix)
        branches = content.branch_names(prefix)
        orphans[:] = [_rename_clause(c, relations, branches) for c in orphans]
        return content.renamed(prefix)

    def collect(
        self,
        comp: _Comp,
        binding: Binding,
        enclosing: _Comp | None,
        content: _Content,
        orphans: list[st.Clause],
        overridden: frozenset[str],
        depth: int,
    ) -> None:
        """Soufflé's collectContent: add to ``content`` what ``comp`` declares, its bases'
        content first, their type arguments bound; then take the orphans whose head it
        declares. The rules of a relation ``overridden`` below are left out."""
        inherited_overrides = overridden | comp.overrides
        for base in comp.decl.bases:
            base_comp = self.scope.find(enclosing, base.name, binding)
            if base_comp is None:
                continue  # reported by the checks
            if depth == 0:
                self.errors.append(DatalogError(comp.decl.pos, _TOO_DEEP))
                return
            active = _extend(binding, base_comp.params, base.params)
            for nested in base_comp.inits:
                content.add(self.instance(nested, base_comp, orphans, frozenset(), active, depth - 1), self.errors)
            self.collect(base_comp, active, base_comp.parent, content, orphans, inherited_overrides, depth - 1)
        for item in comp.decl.body:
            if isinstance(item, st.TypeAlias | st.RecordDecl | st.AdtDecl):
                content.types.append(_bind_type(replace(item, name=binding.get(item.name, item.name)), binding, {}))
            elif isinstance(item, st.Decl):
                content.decls.append(_bind_decl(item, binding))
        content.add_directives((item for item in comp.decl.body if isinstance(item, st.Directive)), self.errors)
        declared = {d.name for d in content.decls}
        for item in comp.decl.body:
            if isinstance(item, st.Clause):
                for clause in _single_headed(item):
                    if clause.heads[0].relation.split(".")[0] not in overridden:
                        (content.clauses if clause.heads[0].relation in declared else orphans).append(clause)
        content.clauses += [c for c in orphans if c.heads[0].relation in declared]
        orphans[:] = [c for c in orphans if c.heads[0].relation not in declared]


def _single_headed(clause: st.Clause) -> list[st.Clause]:
    """``a(x), b(x) :- body.`` is a rule for each head, as Soufflé's parser makes it, so each
    can be overridden or adopted on its own."""
    return [replace(clause, heads=(head,)) for head in clause.heads]


def _bind_decl(decl: st.Decl, types: Binding) -> st.Decl:
    return replace(decl, attrs=_bind_attrs(decl.attrs, types))


def _bind_attrs(attrs: tuple[st.Attr, ...], types: Binding) -> tuple[st.Attr, ...]:
    return tuple(replace(a, type_name=types.get(a.type_name, a.type_name)) for a in attrs)


def _bind_type(t: st.TypeDecl, types: Binding, branches: Binding) -> st.TypeDecl:
    """A type declaration with the types it names bound (and its ADT branches named as the
    instance names them)."""
    if isinstance(t, st.TypeAlias):
        return replace(t, base=types.get(t.base, t.base), members=tuple(types.get(m, m) for m in t.members))
    if isinstance(t, st.RecordDecl):
        return replace(t, attrs=_bind_attrs(t.attrs, types))
    return replace(
        t, branches=tuple(replace(b, name=branches.get(b.name, b.name), attrs=_bind_attrs(b.attrs, types)) for b in t.branches)
    )


# ---- renaming the relations (and ADT branches) a rule uses ---------------------------------


def _rename_clause(clause: st.Clause, names: Mapping[str, str], branches: Mapping[str, str]) -> st.Clause:
    heads = tuple(_rename_atom(a, names, branches) for a in clause.heads)
    bodies = (
        None
        if clause.bodies is None
        else tuple(tuple(_rename_literal(lit, names, branches) for lit in body) for body in clause.bodies)
    )
    dominating = None if clause.dominating is None else _rename_atom(clause.dominating, names, branches)
    return replace(clause, heads=heads, bodies=bodies, dominating=dominating)


def _rename_atom(atom: st.Atom, names: Mapping[str, str], branches: Mapping[str, str]) -> st.Atom:
    args = tuple(_rename_expr(e, names, branches) for e in atom.args)
    return replace(atom, relation=names.get(atom.relation, atom.relation), args=args)


def _rename_literal(lit: st.Literal, names: Mapping[str, str], branches: Mapping[str, str]) -> st.Literal:
    if isinstance(lit, st.Atom):
        return _rename_atom(lit, names, branches)
    if isinstance(lit, st.Negation):
        return replace(lit, atom=_rename_atom(lit.atom, names, branches))
    return replace(lit, left=_rename_expr(lit.left, names, branches), right=_rename_expr(lit.right, names, branches))


def _rename_expr(e: st.Expr, names: Mapping[str, str], branches: Mapping[str, str]) -> st.Expr:
    """Atoms sit in expressions inside aggregates; branches in records too."""
    if isinstance(e, st.Binary):
        return replace(e, left=_rename_expr(e.left, names, branches), right=_rename_expr(e.right, names, branches))
    if isinstance(e, st.Call | st.Record):
        return replace(e, args=tuple(_rename_expr(a, names, branches) for a in e.args))
    if isinstance(e, st.Branch):
        return replace(e, name=branches.get(e.name, e.name), args=tuple(_rename_expr(a, names, branches) for a in e.args))
    if isinstance(e, st.Aggregate):
        target = None if e.target is None else _rename_expr(e.target, names, branches)
        return replace(e, target=target, body=tuple(_rename_literal(lit, names, branches) for lit in e.body))
    return e
