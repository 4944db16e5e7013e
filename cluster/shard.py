"""One worker's shard of a distributed run: the engine's evaluator, executing the plan as the
``Placement`` routes it, with the job's collectives between the steps that need them.

Every worker runs the same plan and placement, so they all reach the same collectives in the
same order (``exchange.Collective`` numbers them). Per semi-naive iteration:

1. every rule version runs on local data. A step routed ``exchange`` cuts the version's
   pipeline: the binding tables produced so far are re-partitioned by the step's key among the
   workers, then the pipeline goes on (``own`` and ``slice`` need no communication: they keep
   this worker's part of a binding table every worker holds whole);
2. head tuples whose owner is this worker (head routed ``local`` or ``own``) are deduplicated
   against full here at once; the others are sorted, deduplicated locally and sent to their
   owners (``exchange``) or to every worker (``broadcast``, replicated relations) in ONE
   all-to-all per iteration, whatever the number of rules and head relations. Each message
   carries the sender's count of new or sent tuples, so after that round every worker knows
   whether anything moved anywhere, and the stratum ends when nothing did: termination costs no
   extra round;
3. the owners deduplicate what arrived against full; relations with more than one partitioned
   copy send the new delta to the other copies' owners (one more round, only then).

Copies of a relation that only later strata read are built when its stratum ends. With one
worker every collective is a local no-op: the whole fixpoint runs inside the task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from dask_datalog.engine import sets
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.evaluate import Bindings, Evaluator
from dask_datalog.engine.hisa import RelationStore, pack, packed_layout, untimed, words_for
from dask_datalog.engine.plan import AggregateStep, JoinStep, NegationStep, Plan, RulePlan, Step
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition.buckets import bucket, split
from dask_datalog.partition.hashing import shard_of, shard_of_rows
from dask_datalog.partition.placement import HeadRoute, Key, Placement, RuleRoute, StepRoute

from .exchange import Collective


class ShardEvaluator(Evaluator):
    """Owns this worker's part of every relation: the canonical copy (or the whole relation
    when it is replicated) in ``stores``, further partitioned copies in ``copies``."""

    def __init__(
        self,
        plan: Plan,
        placement: Placement,
        backend: Backend,
        symbols: SymbolTable,
        comm: Collective,
        chunk_rows: int | None = None,
    ):
        super().__init__(plan, backend, symbols, {}, chunk_rows)
        if placement.n_shards != comm.size:
            raise ValueError(f"placement for {placement.n_shards} shards, job has {comm.size} workers")
        self.placement = placement
        self.layouts = placement.relations
        self.comm = comm
        self.copies: dict[tuple[str, Key], RelationStore] = {
            (name, key): RelationStore(plan.program.relations[name].arity, self.xp)
            for name, layout in self.layouts.items()
            for key in layout.copies[1:]
        }
        self.rule_routes: dict[int, RuleRoute] = {}
        self.step_routes: dict[int, StepRoute] = {}
        for stratum, routes in zip(plan.strata, placement.strata):
            for rp, route in zip(stratum.initial + stratum.deltas, routes.initial + routes.deltas):
                self.rule_routes[id(rp)] = route
                self._map_routes(rp.steps, route.steps)
        self.stats["exchange"] = comm.stats

    def _map_routes(self, steps: tuple[Step, ...], routes: tuple[StepRoute, ...]) -> None:
        for step, route in zip(steps, routes, strict=True):
            assert id(step) not in self.step_routes, "plan steps are distinct objects"
            self.step_routes[id(step)] = route
            if isinstance(step, AggregateStep):
                self._map_routes(step.steps, route.body)

    # -- loading -------------------------------------------------------------------------

    def load(self, inputs: dict[str, np.ndarray]) -> None:
        """Distribute this worker's slice of every input relation (encoded rows, any order,
        duplicates allowed) to where each copy lives: one all-to-all for all of them."""
        parts: list[dict[tuple[str, Key | None], Any]] = [{} for _ in range(self.comm.size)]
        for name, rows in inputs.items():
            arity = rows.shape[1]
            packed = sets.sort_unique(pack([self.xp.asarray(rows[:, j]) for j in range(arity)], rows.shape[0], self.xp), self.xp)
            self._route_rows(parts, name, packed, self.layouts[name].copies or (None,))
        received = self.comm.alltoall(parts)
        for target in {t for part in received for t in part}:
            self._target_store(*target).add(self._union(received, target))

    def _route_rows(self, parts: list[dict], name: str, rows: Any, keys: tuple[Key | None, ...]) -> None:
        """File ``rows`` of relation ``name`` into the per-worker messages: to every worker for
        a replicated relation, else by owner for each partitioned copy in ``keys``."""
        for key in keys:
            if key is None:
                for part in parts:
                    part[(name, None)] = rows
                continue
            owners = shard_of_rows(rows, key, self.comm.size, self.xp)
            for part, block in zip(parts, split(*bucket(rows, owners, self.comm.size, self.xp))):
                part[(name, key)] = block

    def _target_store(self, name: str, key: Key | None) -> RelationStore:
        layout = self.layouts[name]
        return self.stores[name] if key is None or key == layout.canonical else self.copies[(name, key)]

    def _union(self, received: list[dict], target: tuple[str, Key | None]) -> Any:
        """What every worker sent for one (relation, copy), as one sorted unique block."""
        arity = self.plan.program.relations[target[0]].arity
        return sets.union_all([part[target] for part in received if target in part], words_for(arity), self.xp)

    # -- strata and iterations -------------------------------------------------------------

    def _run_stratum(self, number: int, stratum: Any, on_iteration: Callable | None) -> dict[str, Any]:
        record = super()._run_stratum(number, stratum, on_iteration)
        self._build_later_copies(stratum.relations)
        record["sizes"] = {r: self.local_size(r) for r in stratum.relations}
        return record

    def _more(self, iteration: dict[str, Any]) -> bool:
        return iteration["active"] > 0

    def _iterate(self, rules: tuple[RulePlan, ...], relations: tuple[str, ...]) -> dict[str, Any]:
        t0 = time.perf_counter()
        kept: dict[str, list[Any]] = {r: [] for r in relations}
        outgoing: dict[str, list[Any]] = {r: [] for r in relations}
        for rp in rules:
            route = self.rule_routes[id(rp)]
            idle = rp.delta_relation is not None and self.stores[rp.delta_relation].delta.shape[0] == 0
            if idle and route.exchanges == 0:  # nothing to do and no collective to take part in
                continue
            self._run_version(rp, route, kept, outgoing)
        comm_before = self.comm.stats.snapshot()
        parts: list[dict[tuple[str, None], Any]] = [{} for _ in range(self.comm.size)]
        moving = 0
        for rel, blocks in outgoing.items():
            if blocks:
                with self.clock.phase("dedup"):
                    rows = sets.sort_unique(self.xp.concatenate(blocks), self.xp)
                moving += int(rows.shape[0])
                layout = self.layouts[rel]
                self._route_rows(parts, rel, rows, (None,) if layout.replicated else (layout.canonical,))
        found = sum(int(b.shape[0]) for blocks in kept.values() for b in blocks)
        received = self.comm.alltoall([(found + moving, part) for part in parts])
        active = sum(count for count, _ in received)
        delta_sizes = {}
        for rel in relations:
            store = self.stores[rel]
            arrivals = [part[key] for _, part in received for key in part if key[0] == rel and part[key].shape[0]]
            if arrivals:
                kept[rel].append(store.novel(self.xp.concatenate(arrivals), self.clock.phase))
            with self.clock.phase("dedup"):
                delta = sets.union_all(kept[rel], words_for(store.arity), self.xp)
            with self.clock.phase("merge"):
                store.add(delta)
            delta_sizes[rel] = int(delta.shape[0])
        self._maintain_copies(relations)
        comm_after = self.comm.stats.snapshot()
        record = {"delta": delta_sizes, "active": active, **self.clock.take()}
        record["exchange"] = {k: round(comm_after[k] - comm_before[k], 6) for k in comm_after}
        record["time_s"] = round(time.perf_counter() - t0, 6)
        return record

    def _maintain_copies(self, relations: tuple[str, ...]) -> None:
        """Send each relation's new delta (deduplicated at the canonical owners) to the owners
        of its other maintained copies: one round, and only for relations that have them."""
        targets = [(rel, key) for rel in relations for key in self.layouts[rel].keys[1:]]
        self._fill_copies(targets, lambda rel: self.stores[rel].delta, self.clock.phase)

    def _build_later_copies(self, relations: tuple[str, ...]) -> None:
        """Copies first read by later strata, built once from the complete relation."""
        targets = [(rel, key) for rel in relations for key in self.layouts[rel].later]
        self._fill_copies(targets, lambda rel: self.stores[rel].full)

    def _fill_copies(
        self,
        targets: list[tuple[str, Key]],
        rows_of: Callable[[str], Any],
        phase: Callable[[str], AbstractContextManager[None]] = untimed,
    ) -> None:
        """Route ``rows_of(relation)`` to the owners of each (relation, copy) target and add
        what arrives to the copies here (timed as ``phase("merge")``); no round when there are
        no targets."""
        if not targets:
            return
        parts: list[dict] = [{} for _ in range(self.comm.size)]
        for rel, key in targets:
            self._route_rows(parts, rel, rows_of(rel), (key,))
        received = self.comm.alltoall(parts)
        with phase("merge"):
            for target in targets:
                self.copies[target].add(self._union(received, target))

    # -- one rule version --------------------------------------------------------------------

    def _run_version(
        self, rp: RulePlan, route: RuleRoute, kept: dict[str, list[Any]], outgoing: dict[str, list[Any]]
    ) -> None:
        """Run the version's pipeline segment by segment (a segment ends before each step
        routed ``exchange``); the last segment's head tuples are kept or queued for sending."""
        head = rp.rule.head
        store = self.stores[head.relation]
        layout = packed_layout(head)
        # One worker owns everything: its head tuples are deduplicated where they are made, as
        # in the single-shard engine, instead of being sorted once more to be "sent" to itself.
        head_route = route.head if self.comm.size > 1 else HeadRoute("local")
        cuts = [i for i, r in enumerate(route.steps) if r.action == "exchange"]
        bounds = [0, *cuts, len(rp.steps)]
        tables: list[Bindings] = [Bindings(self.xp.zeros((1, 0), dtype=self.xp.uint32), ())]

        def head_sink(b: Bindings) -> None:
            rows = self._head_rows(b, head, layout)
            if head_route.action in ("exchange", "broadcast"):
                outgoing[head.relation].append(rows)
                return
            if head_route.action == "own":
                owners = shard_of_rows(rows, head_route.key, self.comm.size, self.xp)
                rows = rows[owners == self.comm.rank]
            rows = store.novel(rows, self.clock.phase)
            if rows.shape[0]:
                kept[head.relation].append(rows)

        with self.clock.phase("join"):
            for s, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
                if lo > 0:
                    tables = self._exchange_bindings(tables, route.steps[lo].key)
                last = hi == len(rp.steps)
                collected: list[Bindings] = []
                for b in tables:
                    self._steps(b, rp.steps[lo:hi], head_sink if last else collected.append, layout if last else None)
                tables = collected

    def _exchange_bindings(self, tables: list[Bindings], key: tuple[str, ...]) -> list[Bindings]:
        """Re-partition binding tables by the hash of the ``key`` variables. A worker with no
        rows still takes part (with nothing to send)."""
        names = tables[0].names if tables else None
        table = self.xp.concatenate([b.table for b in tables]) if len(tables) > 1 else tables[0].table if tables else None
        parts: list[Any] = [None] * self.comm.size
        if table is not None and table.shape[0]:
            b = Bindings(table, names)
            owners = shard_of([b.col(v) for v in key], self.comm.size, self.xp)
            for p, block in enumerate(split(*bucket(table, owners, self.comm.size, self.xp))):
                parts[p] = (names, block) if block.shape[0] else None
        received = [r for r in self.comm.alltoall(parts) if r is not None]
        if not received:
            return []
        names = received[0][0]
        return [Bindings(self.xp.concatenate([t for _, t in received]) if len(received) > 1 else received[0][1], names)]

    # -- hooks into the engine's pipeline ------------------------------------------------------

    def _enter(self, step: Step, b: Bindings) -> Bindings:
        route = self.step_routes[id(step)]
        if route.action != "own":
            return b
        owners = shard_of([b.col(v) for v in route.key], self.comm.size, self.xp)
        return b.take(self.xp.nonzero(owners == self.comm.rank)[0])

    def _joined(self, step: JoinStep, part: Bindings) -> Bindings:
        """``slice``: every worker computed the same chunk; keep block ``rank`` of it."""
        if self.step_routes[id(step)].action != "slice":
            return part
        n, size, rank = part.n, self.comm.size, self.comm.rank
        return Bindings(part.table[n * rank // size : n * (rank + 1) // size], part.names)

    def _store_for(self, step: JoinStep | NegationStep) -> RelationStore:
        return self._target_store(step.atom.relation, self.step_routes[id(step)].copy)

    # -- results -----------------------------------------------------------------------------

    def local_size(self, name: str) -> int:
        """Tuples of ``name`` this worker accounts for: its shard, or the whole of a replicated
        relation on rank 0 only (so sizes add up over workers)."""
        if self.layouts[name].replicated and self.comm.rank != 0:
            return 0
        return len(self.stores[name])

    def local_rows(self, name: str) -> Any:
        """Packed rows this worker accounts for (see ``local_size``), sorted."""
        full = self.stores[name].full
        return full[:0] if self.layouts[name].replicated and self.comm.rank != 0 else full

