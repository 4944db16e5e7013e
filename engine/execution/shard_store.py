"""This shard's relations for a run: the canonical store of each relation (all of it on one
shard, this shard's part or a replica on several) and the other partitioned copies the plan's
layouts ask for; where rows of a relation go, how inputs and checkpoints come in, and what the
shard accounts for when sizes and rows are added up over shards."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from dask_datalog.engine.backend import Backend
from dask_datalog.engine.execution.control import Position
from dask_datalog.engine.execution.exchange import Exchange, Target
from dask_datalog.engine.plan import Key, Plan
from dask_datalog.engine.storage import sets
from dask_datalog.engine.storage.hisa import RelationStore, pack, untimed, words_for


class ShardStore:
    def __init__(self, plan: Plan, backend: Backend, exchange: Exchange):
        if plan.shards != exchange.size:
            raise ValueError(f"plan placed for {plan.shards} shards, the exchange has {exchange.size}")
        self.plan = plan
        self.backend = backend
        self.xp = backend.xp
        self.exchange = exchange
        relations = plan.program.relations
        self.stores = {name: RelationStore(rel.arity, backend) for name, rel in relations.items()}
        self.copies: dict[Target, RelationStore] = {
            (name, key): RelationStore(relations[name].arity, backend)
            for name, layout in plan.layouts.items()
            for key in layout.copies[1:]
        }
        self.dropped: dict[str, int] = {}  # relations freed (``drop``) -> the tuples this shard accounted for

    def store(self, name: str, copy: Key | None = None) -> RelationStore:
        """The store of relation ``name`` keyed on ``copy`` (None or canonical: the main one)."""
        layout = self.plan.layout(name)
        if copy is None or layout is None or copy == layout.canonical:
            return self.stores[name]
        return self.copies[(name, copy)]

    def targets(self, name: str, keys: tuple[Key, ...] | None = None) -> list[Target]:
        """Where rows of ``name`` go: to its copies keyed on ``keys`` (default: the canonical
        and the maintained ones; a ``later`` copy is built from the complete relation, inputs
        included, when its stratum ends), or to the one whole store when it is replicated or
        the run has one shard."""
        layout = self.plan.layout(name)
        if layout is None or layout.replicated:
            return [(name, None)]
        return [(name, k) for k in (layout.keys if keys is None else keys)]

    def canonical_target(self, name: str) -> Target:
        layout = self.plan.layout(name)
        return (name, layout.canonical if layout is not None else None)

    def union(self, name: str, blocks: list[Any]) -> Any:
        """Sorted unique rows of ``name`` from blocks of packed rows."""
        return sets.union_all(blocks, words_for(self.stores[name].arity), self.backend)

    def receive(self, blocks: dict[Target, Any]) -> None:
        """Route blocks of packed rows to the stores that hold them (one collective for all) and
        add what arrives here: it becomes those stores' delta and joins their full."""
        arrived, _, _ = self.exchange.route(blocks, 0)
        for target, parts in arrived.items():
            self.store(*target).add(self.union(target[0], parts))

    def load(self, inputs: dict[str, np.ndarray]) -> None:
        """Encoded input rows (this shard's part, any order, duplicates allowed) to every store
        that holds them. Takes them: each relation's rows leave ``inputs`` as they are packed,
        so the encoded copies are not held to the end of the run (19-20 MB at crdt and dyck 10x)."""
        blocks: dict[Target, Any] = {}
        while inputs:
            name, rows = inputs.popitem()
            packed = pack([self.xp.asarray(rows[:, j]) for j in range(rows.shape[1])], rows.shape[0], self.xp)
            packed = sets.sort_unique(packed, self.backend)
            for target in self.targets(name):
                blocks[target] = packed
        self.receive(blocks)

    def restore(
        self, position: Position, rows: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], dropped: dict[str, int]
    ) -> None:
        """Take up a checkpoint written at ``position`` by any number of shards: ``rows`` are
        the (full, delta) blocks of packed rows this shard read (any share of the parts; the
        routes put every row where this plan keeps it). Relations of finished strata fill all
        their copies; those of the stratum in progress get their delta back. Every block must
        be sorted and unique, as shards write them: a reader that re-encodes rows sorts them.
        ``dropped``: the whole run's sizes of the relations freed before the checkpoint,
        accounted for by shard 0 (sizes add up over shards)."""
        self.dropped = {name: n if self.exchange.rank == 0 else 0 for name, n in dropped.items()}
        stratum_of = {r: i for i, st in enumerate(self.plan.strata) for r in st.relations}
        old: dict[Target, Any] = {}
        new: dict[Target, Any] = {}
        for name, (full_blocks, delta_blocks) in rows.items():
            if not all(sets.is_sorted_unique(b, np) for b in (*full_blocks, *delta_blocks)):
                raise AssertionError(f"checkpoint rows of {name} are not sorted and unique")
            full = self.union(name, [self.xp.asarray(b) for b in full_blocks])
            delta = self.union(name, [self.xp.asarray(b) for b in delta_blocks])
            stratum = stratum_of.get(name, -1)
            running = stratum == position.stratum and position.iteration > 0
            if running:
                full = sets.difference(full, delta, self.backend)
            layout = self.plan.layout(name)
            keys = None if layout is None or running or stratum >= position.stratum else layout.copies
            for target in self.targets(name, keys):
                old[target] = full
                if running:
                    new[target] = delta
        self.receive(old)  # full first, then the delta: add() makes its rows the delta
        self.receive(new)

    def fill_copies(
        self, relations: tuple[str, ...], later: bool, phase: Callable[[str], AbstractContextManager[None]] = untimed
    ) -> None:
        """Route rows to the other partitioned copies of ``relations``: each iteration's new
        delta to the maintained ones, the complete relation (compacted: it is final) to the
        ``later`` ones when its stratum ends. No round when the layouts name no such copy (the
        same on every shard)."""
        targets: list[Target] = []
        for rel in relations:
            layout = self.plan.layout(rel)
            if layout is not None and not layout.replicated:
                targets += self.targets(rel, layout.later if later else layout.keys[1:])
        if not targets:
            return
        rows = {t: self.stores[t[0]].compact() if later else self.stores[t[0]].delta for t in targets}
        arrived, _, _ = self.exchange.route(rows, 0)
        with phase("merge"):
            for target in targets:
                self.copies[target].add(self.union(target[0], arrived.get(target, [])))

    def prime(self, relations: tuple[str, ...]) -> None:
        """Every copy of each relation kept up here takes all its rows as its delta: the start
        of Soufflé's loop, which a stratum with subsumptive rules follows."""
        for name in relations:
            for target in self.targets(name):
                store = self.store(*target)
                store.stage(store.compact())

    def accounts_for(self, name: str) -> bool:
        """Whether this shard counts ``name``'s rows: its part, or all of a replicated relation
        on shard 0 only (so sizes and rows add up over shards)."""
        layout = self.plan.layout(name)
        return layout is None or not layout.replicated or self.exchange.rank == 0

    def local_size(self, name: str) -> int:
        """Tuples of ``name`` this shard accounts for (full's runs counted, not merged); for a
        dropped relation, what it held when it was dropped."""
        if name in self.dropped:
            return self.dropped[name]
        return len(self.stores[name]) if self.accounts_for(name) else 0

    def release(self, orders: dict[str, frozenset[tuple[int, ...]]]) -> None:
        """``RelationStore.release`` of each named relation's stores, keeping ``orders[name]``
        (plan.released_orders: what later strata read)."""
        for name, kept in orders.items():
            self.stores[name].release(kept)
        for (name, _), store in self.copies.items():
            if name in orders:
                store.release(orders[name])

    def drop(self, names: frozenset[str]) -> None:
        """Free ``names`` (every copy, index and bitmap): no later stratum reads them and the
        caller does not keep them (plan.expiring). Their sizes stay known."""
        for name in names:
            self.dropped[name] = self.local_size(name)
            self.stores[name] = RelationStore(self.stores[name].arity, self.backend)
            for target in [t for t in self.copies if t[0] == name]:
                self.copies[target] = RelationStore(self.copies[target].arity, self.backend)

    def final_rows(self, name: str) -> Any:
        """Packed rows of ``name`` this shard accounts for, sorted: full compacted, for the
        run's result."""
        full = self.stores[name].compact()
        return full if self.accounts_for(name) else full[:0]

    def checkpoint_rows(self) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
        """Per relation, the host copies of full's runs and of the delta this shard accounts
        for: written as they are, so a checkpoint merges nothing the run goes on with."""
        rows: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        for name, store in self.stores.items():
            if name in self.dropped:
                continue
            mine = self.accounts_for(name)
            runs = [self.backend.asnumpy(run) for run in store.runs] if mine else []
            rows[name] = (runs, self.backend.asnumpy(store.delta if mine else store.delta[:0]))
        return rows

    def held(self) -> dict[str, int]:
        """Bytes each relation takes on this shard, all its copies together."""
        out = {name: store.nbytes for name, store in self.stores.items()}
        for (name, _), store in self.copies.items():
            out[name] += store.nbytes
        return out
