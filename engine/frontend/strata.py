"""Dependency graph, strongly connected components and stratification.

A stratum is one SCC of the "head depends on body relation" graph, restricted to relations
that have rules (pure inputs need no evaluation). Strata come dependencies first; among those
ready at the same time, the one declared first goes first, so the order is deterministic.
SCCs are found with an iterative Tarjan, so thousands of relations cannot hit the recursion
limit.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError


@dataclass(frozen=True)
class Stratum:
    """``subsumptions``: the subsumptive rules of its relations (``ir.Program.subsumptions``)."""

    relations: frozenset[str]
    rules: tuple[ir.Rule, ...]
    recursive: bool
    subsumptions: tuple[ir.Rule, ...] = ()


@dataclass(frozen=True)
class _Dependency:
    relation: str
    kind: str  # "positive", "negation" or "aggregation"
    pos: ir.Pos


def _dependencies(rule: ir.Rule) -> Iterator[_Dependency]:
    for lit in rule.body:
        if isinstance(lit, ir.Atom):
            yield _Dependency(lit.relation, "positive", lit.pos)
        elif isinstance(lit, ir.Negation):
            yield _Dependency(lit.atom.relation, "negation", lit.pos)
        elif isinstance(lit, ir.Aggregation):
            for inner in lit.body:
                if isinstance(inner, ir.Atom):
                    yield _Dependency(inner.relation, "aggregation", lit.pos)
                elif isinstance(inner, ir.Negation):
                    yield _Dependency(inner.atom.relation, "negation", inner.pos)


def stratify(program: ir.Program) -> tuple[Stratum, ...]:
    """Strata in evaluation order; DatalogError if negation or aggregation goes through
    recursion (the program then has no stratified meaning)."""
    order = {name: i for i, name in enumerate(program.relations)}
    debug_of = dict(program.debug_deltas)  # filled with the stratum of its relation: read as if it were that relation
    rules_of: dict[str, list[tuple[int, ir.Rule]]] = {}  # numbered to keep program order
    # A subsumptive rule depends on what its body reads, not on its two compared atoms (as
    # Soufflé's precedence graph has it): numbered after the rules, it only adds those edges.
    dependent = [*program.rules, *(_beyond_compared(s) for s in program.subsumptions)]
    for numbered in enumerate(dependent):
        rules_of.setdefault(numbered[1].head.relation, []).append(numbered)
    nodes = sorted(rules_of, key=order.__getitem__)
    graph = {
        head: sorted(
            {debug_of.get(d.relation, d.relation) for _, r in rules_of[head] for d in _dependencies(r)} & set(rules_of),
            key=order.__getitem__,
        )
        for head in nodes
    }
    components = _sccs(nodes, graph)
    component_of = {name: i for i, comp in enumerate(components) for name in comp}
    for rule in dependent:
        for dep in _dependencies(rule):
            head = rule.head.relation
            if component_of.get(debug_of.get(dep.relation, "")) == component_of[head]:
                raise DatalogError(
                    dep.pos, f"unsupported: {dep.relation}, the debug_delta of {debug_of[dep.relation]}, read in its own stratum"
                )
            if dep.kind != "positive" and component_of.get(dep.relation) == component_of[head]:
                raise _cycle_error(dep, head, graph)
    strata = []
    for i in _topological(components, component_of, graph, order):
        members = frozenset(components[i]) | {d for d, r in debug_of.items() if r in components[i]}
        ordered = sorted(n for m in members for n in rules_of.get(m, []))
        rules = tuple(r for k, r in ordered if k < len(program.rules))
        recursive = any(isinstance(lit, ir.Atom) and lit.relation in members for _, r in ordered for lit in r.body)
        subsumptions = tuple(s for s in program.subsumptions if s.head.relation in members)
        strata.append(Stratum(members, rules, recursive, subsumptions))
    return tuple(strata)


def _beyond_compared(subsumption: ir.Rule) -> ir.Rule:
    """A subsumptive rule without its dominated and dominating atoms."""
    return ir.Rule(subsumption.head, subsumption.body[2:], subsumption.pos)


def _cycle_error(dep: _Dependency, head: str, graph: dict[str, list[str]]) -> DatalogError:
    what = "negation of" if dep.kind == "negation" else "aggregation over"
    if dep.relation == head:
        own = "negation" if dep.kind == "negation" else "aggregate"
        return DatalogError(dep.pos, f"{what} {head} in a rule for {head} itself: a relation cannot depend on its own {own}")
    path = " -> ".join(_path(dep.relation, head, graph))
    return DatalogError(
        dep.pos, f"{what} {dep.relation} in a rule for {head}, but {dep.relation} depends on {head} through {path}"
    )


def _path(start: str, goal: str, graph: dict[str, list[str]]) -> list[str]:
    """Shortest dependency chain start -> ... -> goal (breadth first)."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for nxt in graph[node]:
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    path: list[str] = []
    step: str | None = goal
    while step is not None:
        path.append(step)
        step = parent[step]
    return path[::-1]


def _sccs(nodes: list[str], graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm with an explicit stack."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    result.append(component)
    return result


def _topological(
    components: list[list[str]], component_of: dict[str, int], graph: dict[str, list[str]], order: dict[str, int]
) -> list[int]:
    """Kahn's algorithm over the condensation, earliest-declared component first."""
    needs: list[set[int]] = [set() for _ in components]
    users: list[set[int]] = [set() for _ in components]
    for node, deps in graph.items():
        for dep in deps:
            a, b = component_of[node], component_of[dep]
            if a != b:
                needs[a].add(b)
                users[b].add(a)
    first = [min(order[n] for n in comp) for comp in components]
    ready = [(first[i], i) for i in range(len(components)) if not needs[i]]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(i)
        for user in users[i]:
            needs[user].discard(i)
            if not needs[user]:
                heapq.heappush(ready, (first[user], user))
    return out
