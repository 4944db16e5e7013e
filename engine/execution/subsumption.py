"""Subsumption: the tuples a relation's subsumptive rules find dominated leave it, in the order
of Soufflé 2.5's steps (plan.SubsumptionPlan says what each version reads).

A version's head rows are dominated tuples, found wherever its pipeline ends; they are routed
like any other rows (``Exchange.route``) to the shards holding the relation's canonical copy
(rejections: the candidates live there) or every copy it keeps up (deletions), and removed
there as one sorted set difference per copy (``RelationStore.remove``). The fixpoint calls
``settle`` once a stratum's first rules are in, and ``accept`` each iteration between the
arrival of the new tuples and their merge into full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dask_datalog.engine.execution.exchange import Target
from dask_datalog.engine.execution.head_rows import HeadRows
from dask_datalog.engine.execution.operators import Operators
from dask_datalog.engine.execution.phases import PhaseClock
from dask_datalog.engine.execution.rule_versions import run_version
from dask_datalog.engine.plan import RulePlan, SubsumptionPlan
from dask_datalog.engine.storage import sets
from dask_datalog.engine.storage.hisa import words_for


class Subsumption:
    def __init__(self, ops: Operators, clock: PhaseClock, check: Callable[[], None]):
        self.ops = ops
        self.shard = ops.shard
        self.exchange = ops.shard.exchange
        self.clock = clock
        self.check = check

    def settle(self, plans: tuple[SubsumptionPlan, ...]) -> None:
        """Soufflé's non-recursive delete: per relation, the tuples of full dominated by others
        of full leave it (and the delta, which the stratum's loop starts from)."""
        for sp in plans:
            self._remove(sp.relation, self._found(sp.relation, sp.settle, self.shard.targets(sp.relation)))

    def accept(self, sp: SubsumptionPlan, candidates: Any) -> Any:
        """An iteration's new tuples of ``sp.relation`` (this shard's part, sorted and unique,
        none in full) less those dominated by another candidate or by full; then the tuples of
        full that the accepted ones (or, in turn, each other atom's delta) dominate leave full,
        rule by rule. Returns the accepted tuples, which stay the relation's delta (staged on
        every copy: later subsumptions of the stratum read it) until the loop merges them."""
        relation = sp.relation
        canonical = [self.shard.canonical_target(relation)]
        self._stage(relation, candidates)
        rejected = self._found(relation, sp.reject, canonical)
        with self.clock.phase("difference"):
            accepted = sets.difference(candidates, rejected, self.ops.backend)
        self._stage(relation, accepted)
        for versions in sp.delete:
            self._remove(relation, self._found(relation, versions, self.shard.targets(relation)))
        return accepted

    def _found(self, relation: str, versions: tuple[RulePlan, ...], targets: list[Target]) -> Any:
        """The tuples ``versions`` find on any shard that ``targets`` hold here, sorted and
        unique (one round: every shard routes, with or without rows)."""
        width = words_for(self.shard.stores[relation].arity)
        found = HeadRows(width, self.ops.chunk_rows, self.ops.backend, self.clock)
        unused = HeadRows(width, self.ops.chunk_rows, self.ops.backend, self.clock)
        for rp in versions:
            self.check()
            run_version(self.ops, self.clock, rp, unused, found, self.check, found=True)
        rows = found.rows()
        arrived, _, _ = self.exchange.route(dict.fromkeys(targets, rows) if rows.shape[0] else {}, 0)
        return self.shard.union(relation, [part for target in targets for part in arrived.get(target, [])])

    def _stage(self, relation: str, rows: Any) -> None:
        """``rows`` (on the canonical copy) become the delta of every copy kept up, unmerged."""
        self.shard.stores[relation].stage(rows)
        copies = self.shard.targets(relation)[1:]
        if not copies:
            return
        arrived, _, _ = self.exchange.route(dict.fromkeys(copies, rows), 0)
        for target in copies:
            self.shard.store(*target).stage(self.shard.union(relation, arrived.get(target, [])))

    def _remove(self, relation: str, rows: Any) -> None:
        """``rows``, routed here to every copy this shard holds, leave them."""
        with self.clock.phase("difference"):
            for target in self.shard.targets(relation):
                self.shard.store(*target).remove(rows)
