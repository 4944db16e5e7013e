"""Executing a plan on one shard: strata in order, semi-naive iterations to the fixpoint, each
rule version a pipeline of vectorised steps over a binding table. This is the only semi-naive
loop; a run over several shards is the same loop with a routed plan and an ``Exchange``
(exchange.py), called at the points that module declares.

A binding table is one uint32 column per bound variable (encoded values, see values.py).
Joins whose output would exceed ``chunk_rows`` run the rest of the pipeline chunk by chunk
over the outer side, so join outputs larger than memory never materialise; each chunk's head
tuples are deduplicated (and, when this shard owns them, subtracted from full) before they
are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dask_datalog.engine.storage import sets
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.execution.control import NO_CONTROL, STOP, Control, Position, Suspended
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.memory import default_chunk_rows
from dask_datalog.engine.execution.exchange import Exchange, LocalExchange, Target
from dask_datalog.engine.storage.hisa import (
    RelationStore,
    SortedIndex,
    expand_runs,
    gather_join,
    gather_pairs,
    half_of,
    pack,
    packed_layout,
    probe_query,
    unpack,
    words_for,
)
from dask_datalog.engine import functors
from dask_datalog.engine.functors import decode_int, encode_int
from dask_datalog.engine.ir import Atom, Call, Comparison, Const, Term, Var
from dask_datalog.engine.plan import (
    AggregateStep,
    AssignStep,
    FilterStep,
    JoinStep,
    Key,
    NegationStep,
    Plan,
    RulePlan,
    Step,
    StratumPlan,
)
from dask_datalog.engine.values import SymbolTable, encode_scalar

PHASES = ("join", "dedup", "difference", "merge")


@dataclass
class Bindings:
    """The binding table: an (n, k) uint32 array, one column per bound variable."""

    table: Any
    names: tuple[str, ...]

    @property
    def n(self) -> int:
        return int(self.table.shape[0])

    def col(self, name: str) -> Any:
        return self.table[:, self.names.index(name)]

    def take(self, rows: Any) -> Bindings:
        return Bindings(self.table[rows], self.names)

    def with_column(self, name: str, values: Any, xp: Any) -> Bindings:
        return Bindings(xp.concatenate([self.table, values[:, None]], axis=1), self.names + (name,))


@dataclass
class PhaseClock:
    """Wall time per phase; on the GPU each phase ends with a device synchronisation."""

    backend: Backend
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    _inner: list[float] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Exclusive time: a phase nested in another (dedup inside the join pipeline) is
        charged to itself only."""
        t0 = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            self.backend.synchronize()
            elapsed = time.perf_counter() - t0
            nested = self._inner.pop()
            self.totals[name] += elapsed - nested
            if self._inner:
                self._inner[-1] += elapsed

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, dict.fromkeys(PHASES, 0.0)
        return {k: round(v, 6) for k, v in out.items()}


class HeadRows:
    """One relation's head tuples within an iteration. Blocks wait uncombined until they pass
    ``chunk_rows`` rows; then everything held is compacted into one sorted, duplicate-free
    block. So besides the distinct tuples an iteration holds about ``chunk_rows`` rows, whether
    this shard owns them (kept: new against full already) or sends them on (raw, from the
    join). ``peak``: the most raw rows it held at once."""

    def __init__(self, width: int, chunk_rows: int, xp: Any, clock: PhaseClock):
        self.width, self.chunk_rows, self.xp, self.clock = width, chunk_rows, xp, clock
        self.compacted: list[Any] = []  # at most one sorted, unique block
        self.pending: list[tuple[Any, bool]] = []  # (rows, sorted and unique)
        self.pending_rows = 0
        self.raw_rows = 0
        self.peak = 0

    def add(self, rows: Any, unique: bool) -> None:
        if rows.shape[0] == 0:
            return
        self.pending.append((rows, unique))
        self.pending_rows += int(rows.shape[0])
        if not unique:
            self.raw_rows += int(rows.shape[0])
            self.peak = max(self.peak, self.raw_rows)
        if self.pending_rows > self.chunk_rows:
            self.compacted = [self.rows()]
            self.pending, self.pending_rows, self.raw_rows = [], 0, 0

    def rows(self) -> Any:
        """Everything held, sorted and unique."""
        blocks = self.compacted + [rows for rows, _ in self.pending]
        if not blocks:
            return self.xp.zeros((0, self.width), self.xp.uint64)
        if len(blocks) == 1 and (self.compacted or self.pending[0][1]):
            return blocks[0]
        with self.clock.phase("dedup"):
            return sets.sort_unique(self.xp.concatenate(blocks), self.xp)

    def __len__(self) -> int:
        return sum(int(b.shape[0]) for b in self.compacted) + self.pending_rows


class Evaluator:
    """Owns one shard's relations for a run and drives the only semi-naive loop.

    On one shard (``plan_program``'s plan, ``LocalExchange``) this shard is the whole run. On
    several, the plan carries routes and layouts (``partition.placement.place``) and
    ``exchange`` does the communication at the points ``engine/exchange.py`` declares; the
    loop is the same. ``control`` checkpoints and stops it at the points ``control.py``
    declares. ``inputs``: encoded rows of this shard's part of the inputs; a run resumed from
    a checkpoint passes none and calls ``restore`` instead."""

    def __init__(
        self,
        plan: Plan,
        backend: Backend,
        symbols: SymbolTable,
        inputs: dict[str, np.ndarray],
        chunk_rows: int | None = None,
        exchange: Exchange | None = None,
        control: Control = NO_CONTROL,
    ):
        self.plan = plan
        self.control = control
        self.backend = backend
        self.xp = backend.xp
        self.symbols = symbols
        self.exchange: Exchange = exchange if exchange is not None else LocalExchange()
        if plan.shards != self.exchange.size:
            raise ValueError(f"plan placed for {plan.shards} shards, the exchange has {self.exchange.size}")
        self.chunk_rows = chunk_rows or default_chunk_rows(backend)
        self.clock = PhaseClock(backend)
        relations = plan.program.relations
        # The canonical copy of each relation (all of it on one shard, or a replica), and the
        # other partitioned copies the layouts ask for.
        self.stores = {name: RelationStore(rel.arity, self.backend) for name, rel in relations.items()}
        self.copies: dict[Target, RelationStore] = {
            (name, key): RelationStore(relations[name].arity, self.backend)
            for name, layout in plan.layouts.items()
            for key in layout.copies[1:]
        }
        self.stats: dict[str, Any] = {"backend": backend.name, "strata": []}
        self.resumed: Position | None = None
        self.functor_context = functors.Context(self.xp, symbols)
        self._load(inputs)

    def store(self, name: str, copy: Key | None) -> RelationStore:
        """The store of relation ``name`` keyed on ``copy`` (None or canonical: the main one)."""
        layout = self.plan.layout(name)
        if copy is None or layout is None or copy == layout.canonical:
            return self.stores[name]
        return self.copies[(name, copy)]

    def _targets(self, name: str, keys: tuple[Key, ...] | None = None) -> list[Target]:
        """Where rows of ``name`` go: to its copies keyed on ``keys`` (default: the canonical
        and the maintained ones; a ``later`` copy is built from the complete relation, inputs
        included, when its stratum ends), or to the one whole store when it is replicated or
        the run has one shard."""
        layout = self.plan.layout(name)
        if layout is None or layout.replicated:
            return [(name, None)]
        return [(name, k) for k in (layout.keys if keys is None else keys)]

    def _load(self, inputs: dict[str, np.ndarray]) -> None:
        """Encoded input rows (this shard's part, any order, duplicates allowed) to every
        store that holds them: one route for all relations."""
        blocks: dict[Target, Any] = {}
        for name, rows in inputs.items():
            packed = pack([self.xp.asarray(rows[:, j]) for j in range(rows.shape[1])], rows.shape[0], self.xp)
            packed = sets.sort_unique(packed, self.xp)
            for target in self._targets(name):
                blocks[target] = packed
        arrived, _, _ = self.exchange.route(blocks, 0)
        for target, parts in arrived.items():
            self.store(*target).add(self._union(target[0], parts))

    def restore(self, position: Position, rows: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]) -> None:
        """Take up a checkpoint written at ``position`` by any number of shards: ``rows`` are
        the (full, delta) blocks of packed rows this shard read (any share of the parts; the
        routes put every row where this plan keeps it). Relations of finished strata fill all
        their copies; those of the stratum in progress get their delta back. Every block must
        be sorted and unique, as shards write them: a reader that re-encodes rows sorts them."""
        stratum_of = {r: i for i, st in enumerate(self.plan.strata) for r in st.relations}
        old: dict[Target, Any] = {}
        new: dict[Target, Any] = {}
        for name, (full_blocks, delta_blocks) in rows.items():
            unsorted = [b for b in (*full_blocks, *delta_blocks) if not sets.is_sorted_unique(b, np)]
            if unsorted:
                raise AssertionError(f"checkpoint rows of {name} are not sorted and unique")
            full = self._union(name, [self.xp.asarray(b) for b in full_blocks])
            delta = self._union(name, [self.xp.asarray(b) for b in delta_blocks])
            stratum = stratum_of.get(name, -1)
            running = stratum == position.stratum and position.iteration > 0
            if running:
                full = sets.difference(full, delta, self.backend)
            layout = self.plan.layout(name)
            keys = None if layout is None or running or stratum >= position.stratum else layout.copies
            for target in self._targets(name, keys):
                old[target] = full
                if running:
                    new[target] = delta
        for blocks in (old, new):  # full first, then the delta: add() makes its rows the delta
            arrived, _, _ = self.exchange.route(blocks, 0)
            for target, parts in arrived.items():
                self.store(*target).add(self._union(target[0], parts))
        self.resumed = position

    def _union(self, name: str, blocks: list[Any]) -> Any:
        return sets.union_all(blocks, words_for(self.stores[name].arity), self.xp)

    # -- driving -------------------------------------------------------------------------

    def run(self, on_iteration: Callable[[int, int, dict[str, int]], None] | None = None) -> dict[str, Any]:
        """Evaluate every stratum (from where ``restore`` left off, if it was called)."""
        t0 = time.perf_counter()
        start = self.resumed or Position(0, 0)
        if self.resumed is not None:
            self.stats["resumed_from"] = [start.stratum, start.iteration]
        for number in range(start.stratum, len(self.plan.strata)):
            done = start.iteration if number == start.stratum else 0
            record, requests = self._run_stratum(number, self.plan.strata[number], done, on_iteration)
            self.stats["strata"].append(record)
            if requests:  # asked for in the stratum's last iteration: its end is the boundary
                self._checkpoint(Position(number + 1, 0), requests)
        self.stats["total_s"] = round(time.perf_counter() - t0, 6)
        return self.stats

    def _run_stratum(
        self, number: int, stratum: StratumPlan, done: int, on_iteration: Callable | None
    ) -> tuple[dict[str, Any], int]:
        """The initial iteration (unless ``done`` iterations ran before a checkpoint), then
        semi-naive iterations until no shard derived anything; then the copies that only later
        strata read are built from the complete relations. Checkpoints requested within the
        stratum are written at once; a request in its last iteration is returned."""
        t0 = time.perf_counter()
        iterations: list[dict[str, Any]] = []
        while True:
            record = self._iterate(stratum.initial if done == 0 else stratum.deltas, stratum.relations)
            iterations.append(record)
            if on_iteration:
                on_iteration(number, done, record["delta"])
            done += 1
            requests = record.pop("requests")
            if not (stratum.recursive and record["active"]):
                break
            if requests:
                self._checkpoint(Position(number, done), requests)
        self._fill_copies(stratum.relations, "later")
        record = {
            "relations": list(stratum.relations),
            "recursive": stratum.recursive,
            "iterations": iterations,
            "sizes": {r: self.local_size(r) for r in stratum.relations},
            "time_s": round(time.perf_counter() - t0, 6),
        }
        return record, requests

    def _checkpoint(self, position: Position, requests: int) -> None:
        """Every shard saves the rows it accounts for (host arrays), then stops on ``STOP``."""
        rows = {}
        for name in self.plan.program.relations:
            delta = self.stores[name].delta if self._accounts_for(name) else self.stores[name].delta[:0]
            rows[name] = (self.backend.asnumpy(self.local_rows(name)), self.backend.asnumpy(delta))
        self.control.save(position, rows)
        if requests & STOP:
            raise Suspended(position)

    def held(self) -> dict[str, int]:
        """Bytes each relation takes on this shard, all its copies together."""
        out = {name: store.nbytes for name, store in self.stores.items()}
        for (name, _), store in self.copies.items():
            out[name] += store.nbytes
        return out

    def _iterate(self, rules: tuple[RulePlan, ...], relations: tuple[str, ...]) -> dict[str, Any]:
        """One semi-naive step: every rule version reads the current deltas; head tuples this
        shard owns are deduplicated against full as they are made, the others go to their
        owners in one route (which also tells every shard whether any shard found or moved
        anything); what arrives is deduplicated too, becomes the next delta and is merged into
        full; then the other copies of each relation receive that delta."""
        t0 = time.perf_counter()
        width = {r: words_for(self.stores[r].arity) for r in relations}
        kept = {r: HeadRows(width[r], self.chunk_rows, self.xp, self.clock) for r in relations}
        outgoing = {r: HeadRows(width[r], self.chunk_rows, self.xp, self.clock) for r in relations}
        for rp in rules:
            self.control.check(self.held)
            delta = rp.delta_step
            # Idle: no delta in the store that version reads (on this shard), and no collective
            # inside it that the other shards would wait for.
            if delta is not None and not rp.exchanges and self._store_for(delta).delta.shape[0] == 0:
                continue
            self._run_version(rp, kept[rp.rule.head.relation], outgoing[rp.rule.head.relation])
        blocks: dict[Target, Any] = {}
        for rel in relations:
            if len(outgoing[rel]):
                layout = self.plan.layout(rel)
                blocks[(rel, layout.canonical if layout is not None else None)] = outgoing[rel].rows()
        found = sum(len(kept[r]) for r in relations) + sum(int(b.shape[0]) for b in blocks.values())
        arrived, active, requests = self.exchange.route(blocks, found, self.control.requests())
        for target, parts in arrived.items():
            kept[target[0]].add(self.stores[target[0]].novel(self.xp.concatenate(parts), self.clock.phase), unique=True)
        delta_sizes = {}
        for rel in relations:
            delta = kept[rel].rows()
            with self.clock.phase("merge"):
                self.stores[rel].add(delta)
            delta_sizes[rel] = int(delta.shape[0])
        self._fill_copies(relations, "maintained")
        record: dict[str, Any] = {"delta": delta_sizes, "active": active, "requests": requests, **self.clock.take()}
        record["buffered_rows"] = max((h.peak for h in (*kept.values(), *outgoing.values())), default=0)
        exchanged = self.exchange.take_stats()
        if exchanged:
            record["exchange"] = exchanged
        record["time_s"] = round(time.perf_counter() - t0, 6)
        return record

    def _fill_copies(self, relations: tuple[str, ...], which: str) -> None:
        """Route rows to the other partitioned copies of ``relations``: each iteration's new
        delta to the ``maintained`` ones, the complete relation to the ``later`` ones when its
        stratum ends. No round when the layouts name no such copy (the same on every shard)."""
        targets: list[Target] = []
        for rel in relations:
            layout = self.plan.layout(rel)
            if layout is not None and not layout.replicated:
                targets += self._targets(rel, layout.keys[1:] if which == "maintained" else layout.later)
        if not targets:
            return
        store_rows = (lambda rel: self.stores[rel].delta) if which == "maintained" else (lambda rel: self.stores[rel].full)
        arrived, _, _ = self.exchange.route({t: store_rows(t[0]) for t in targets}, 0)
        with self.clock.phase("merge"):
            for target in targets:
                self.copies[target].add(self._union(target[0], arrived.get(target, [])))

    def _accounts_for(self, name: str) -> bool:
        """Whether this shard counts ``name``'s rows: its part, or all of a replicated relation
        on shard 0 only (so sizes and rows add up over shards)."""
        layout = self.plan.layout(name)
        return layout is None or not layout.replicated or self.exchange.rank == 0

    def local_size(self, name: str) -> int:
        """Tuples of ``name`` this shard accounts for (without compacting full's runs)."""
        return len(self.stores[name]) if self._accounts_for(name) else 0

    def local_rows(self, name: str) -> Any:
        """Packed rows this shard accounts for, sorted."""
        full = self.stores[name].full
        return full if self._accounts_for(name) else full[:0]

    # -- one rule version ------------------------------------------------------------------

    def _run_version(self, rp: RulePlan, kept: HeadRows, outgoing: HeadRows) -> None:
        """Run the version's pipeline segment by segment (a segment ends before each step
        routed ``exchange``, where the binding tables are re-partitioned); the head tuples of
        the last go to ``kept`` (owned here: only the new ones) or ``outgoing``."""
        head = rp.rule.head
        store = self.stores[head.relation]
        layout = packed_layout(head)
        route = rp.head

        def sink(b: Bindings) -> None:
            self.control.check(self.held)
            rows = self._head_rows(b, head, layout)
            if route.action in ("exchange", "broadcast"):
                outgoing.add(rows, unique=False)
                return
            if route.action == "own":
                mine = self.exchange.owned([unpack(rows, j, self.xp) for j in route.key])
                rows = rows if mine is None else rows[mine]
            kept.add(store.novel(rows, self.clock.phase), unique=True)

        cuts = [i for i, step in enumerate(rp.steps) if step.route.action == "exchange"]
        bounds = [0, *cuts, len(rp.steps)]
        tables: list[Bindings] = [Bindings(self.xp.zeros((1, 0), dtype=self.xp.uint32), ())]
        with self.clock.phase("join"):
            for lo, hi in zip(bounds, bounds[1:]):
                if lo > 0:
                    tables = self._repartition(tables, rp.steps[lo].route.key)
                last = hi == len(rp.steps)
                collected: list[Bindings] = []
                for b in tables:
                    self._steps(b, rp.steps[lo:hi], sink if last else collected.append, layout if last else None)
                tables = collected

    def _repartition(self, tables: list[Bindings], key: tuple[str, ...]) -> list[Bindings]:
        """The segment's binding tables, re-partitioned by ``key`` (a shard with none still
        takes part in the round)."""
        if len(tables) > 1:
            tables = [Bindings(self.xp.concatenate([b.table for b in tables]), tables[0].names)]
        moved = self.exchange.repartition(tables[0] if tables else None, key)
        return [] if moved is None else [moved]

    def _head_rows(self, b: Bindings, head: Atom, layout: tuple[str | None, ...] | None) -> Any:
        """The head tuples of a binding table, packed (``layout``: see ``_steps``)."""
        if layout is not None and b.names == layout:
            return b.table.view(self.xp.uint64)  # the join wrote the packed head rows
        return pack([self._term(a, b) for a in head.args], b.n, self.xp)

    def _steps(
        self,
        b: Bindings,
        steps: tuple[Step, ...],
        sink: Callable[[Bindings], None],
        layout: tuple[str | None, ...] | None = None,
    ) -> None:
        """Run ``steps`` over ``b``; ``layout`` is the column order the sink can take as packed
        rows without a copy, asked of the last join."""
        xp = self.xp
        for i, step in enumerate(steps):
            if step.route.action == "own":
                mine = self.exchange.owned([b.col(v) for v in step.route.key])
                b = b if mine is None else b.take(xp.nonzero(mine)[0])
            if b.n == 0:
                return
            if isinstance(step, JoinStep):
                last = i == len(steps) - 1
                for part in self._join(b, step, layout if last else None):
                    self._steps(part, steps[i + 1 :], sink, layout)
                return
            if isinstance(step, FilterStep):
                b = b.take(xp.nonzero(self._compare(step.comparison, b))[0])
            elif isinstance(step, AssignStep):
                b = b.with_column(step.var, self._term(step.expr, b), xp)
            elif isinstance(step, NegationStep):
                b = b.take(xp.nonzero(~self._exists(b, step))[0])
            else:
                b = self._aggregate(b, step)
        if b.n:
            sink(b)

    def _store_for(self, step: JoinStep | NegationStep) -> RelationStore:
        """The store whose indexes a join or negation probes: the copy its route names."""
        return self.store(step.atom.relation, step.route.copy)

    def _key_columns(self, atom: Atom, positions: tuple[int, ...], b: Bindings) -> list[Any]:
        return [self._term(atom.args[j], b) for j in positions]

    def _join(self, b: Bindings, step: JoinStep, layout: tuple[str | None, ...] | None) -> Iterator[Bindings]:
        """The join with each HISA the atom's version is kept in (full's runs, or one)."""
        store = self._store_for(step)
        if step.route.action == "slice":  # a scan (no key): this shard's block of all the rows
            parts = [store.index(step.order, step.version)]
        else:
            parts = store.parts(step.order, step.version, b.n)
        keys = self._key_columns(step.atom, step.order[: step.key_len], b)
        query = probe_query(keys[:2], b.n, self.xp)
        for index in parts:
            yield from self._join_index(b, step, layout, index, keys, query)

    def _join_index(
        self, b: Bindings, step: JoinStep, layout: tuple[str | None, ...] | None, index: SortedIndex, keys: list[Any], query: Any
    ) -> Iterator[Bindings]:
        """Probe the index once for all outer rows (count pass), then materialise the output
        table chunk by chunk in one gather (outer columns and inner columns side by side)."""
        xp = self.xp
        atom = step.atom
        starts, counts = index.ranges(query, len(keys[:2]), b.n, self.backend)
        if step.route.action == "slice":
            lo, hi = self.exchange.share(int(index.rows.shape[0]))
            starts, counts = xp.full(b.n, lo, dtype=xp.int64), xp.full(b.n, hi - lo, dtype=xp.int64)
        # Index columns the probe could not check: key columns past the two hashed ones, and
        # repeats of a free variable within the atom.
        free: dict[str, int] = {}
        checks: list[tuple[int, int | None]] = [(k, None) for k in range(2, step.key_len)]
        for k in range(step.key_len, len(step.order)):
            arg = atom.args[step.order[k]]
            if isinstance(arg, Var):
                if arg.name in free:
                    checks.append((k, free[arg.name]))
                else:
                    free[arg.name] = k
        available = list(b.names) + list(free)
        if layout is not None and {v for v in layout if v is not None} <= set(available):
            names: tuple[str | None, ...] = layout
        else:
            names = tuple(v for v in available if step.keep is None or v in step.keep)
        source = [
            (2, 0) if v is None else (0, b.names.index(v)) if v in b.names else (1, half_of(free[v]))
            for v in names
        ]
        for lo, hi in self._chunks(counts):
            if not checks:
                yield Bindings(gather_join(b.table[lo:hi], starts[lo:hi], counts[lo:hi], index.rows, source, self.backend), names)
                continue
            outer, inner = expand_runs(starts[lo:hi], counts[lo:hi], self.backend)
            outer += lo
            rows = index.rows[inner]
            keep = xp.ones(outer.shape[0], dtype=bool)
            for k, other in checks:
                keep &= unpack(rows, k, xp) == (keys[k][outer] if other is None else unpack(rows, other, xp))
            outer, inner = outer[keep], inner[keep]
            yield Bindings(gather_pairs(b.table, outer, index.rows, inner, source, xp), names)

    def _chunks(self, counts: Any) -> Iterator[tuple[int, int]]:
        """Outer row ranges whose join output stays within ``chunk_rows`` (one row at least)."""
        total = int(counts.sum()) if counts.shape[0] else 0
        n = int(counts.shape[0])
        if total <= self.chunk_rows:
            yield 0, n
            return
        ends = self.backend.asnumpy(self.xp.cumsum(counts))
        lo = 0
        while lo < n:
            base = int(ends[lo - 1]) if lo else 0
            hi = int(np.searchsorted(ends, base + self.chunk_rows, side="right"))
            hi = max(hi, lo + 1)
            yield lo, hi
            lo = hi

    def _exists(self, b: Bindings, step: NegationStep) -> Any:
        index = self._store_for(step).index(step.order, "full")
        keys = self._key_columns(step.atom, step.order[: step.key_len], b)
        starts, counts = index.ranges(probe_query(keys[:2], b.n, self.xp), len(keys[:2]), b.n, self.backend)
        if step.key_len <= 2:
            return counts > 0
        outer, inner = expand_runs(starts, counts, self.backend)
        rows = index.rows[inner]
        match = self.xp.ones(outer.shape[0], dtype=bool)
        for k in range(2, step.key_len):
            match &= unpack(rows, k, self.xp) == keys[k][outer]
        found = self.xp.zeros(b.n, dtype=bool)
        found[outer[match]] = True
        return found

    def _aggregate(self, b: Bindings, step: AggregateStep) -> Bindings:
        """Group the outer rows by the grouping variables, run the aggregate body once per
        distinct group, reduce per group, and hand each outer row its group's value."""
        xp = self.xp
        agg = step.aggregation
        gid, groups, n_groups = self._group(b, step.grouping)
        start = groups.with_column("$gid", xp.arange(n_groups, dtype=xp.uint32), xp)
        gids: list[Any] = []
        values: list[Any] = []

        def collect(inner: Bindings) -> None:
            gids.append(inner.col("$gid"))
            values.append(self._term(agg.target, inner) if agg.target is not None else inner.col("$gid"))

        self._steps(start, step.steps, collect)
        g = xp.concatenate(gids) if gids else xp.zeros(0, dtype=xp.uint32)
        v = xp.concatenate(values) if values else xp.zeros(0, dtype=xp.uint32)
        present = xp.zeros(n_groups, dtype=bool)
        present[g] = True
        if agg.func == "count":
            result = encode_int(xp.bincount(g, minlength=n_groups).astype(xp.int64), "number", xp)
        elif agg.func == "sum":
            order = xp.argsort(g, kind="stable")
            sums = xp.zeros(n_groups, dtype=xp.int64)
            if order.shape[0]:
                cs = xp.cumsum(decode_int(v[order], agg.type, xp))
                last = xp.searchsorted(g[order], xp.arange(n_groups, dtype=xp.uint32), side="right") - 1
                first = xp.searchsorted(g[order], xp.arange(n_groups, dtype=xp.uint32), side="left") - 1
                sums = xp.where(last >= 0, cs[xp.maximum(last, 0)], 0) - xp.where(first >= 0, cs[xp.maximum(first, 0)], 0)
            result = encode_int(sums, agg.type, xp)
        else:
            packed = xp.sort((g.astype(xp.uint64) << xp.uint64(32)) | v.astype(xp.uint64))
            group_of = (packed >> xp.uint64(32)).astype(xp.int64)
            pick = xp.searchsorted(group_of, xp.arange(n_groups), side="left" if agg.func == "min" else "right")
            if agg.func == "max":
                pick -= 1
            pick = xp.clip(pick, 0, max(0, packed.shape[0] - 1))
            result = xp.zeros(n_groups, dtype=xp.uint32)
            if packed.shape[0]:
                result = (packed[pick] & xp.uint64(0xFFFFFFFF)).astype(xp.uint32)
        out = b.with_column(agg.result.name, result[gid], xp)
        if agg.func in ("min", "max"):
            out = out.take(xp.nonzero(present[gid])[0])
        return out

    def _group(self, b: Bindings, grouping: tuple[str, ...]) -> tuple[Any, Bindings, int]:
        """(group id per outer row, one row of grouping columns per group, number of groups)."""
        xp = self.xp
        if not grouping:
            return xp.zeros(b.n, dtype=xp.int64), Bindings(xp.zeros((1, 0), xp.uint32), ()), 1
        table = xp.stack([b.col(v) for v in grouping], axis=1)
        order = xp.lexsort(table.T[::-1])
        table = table[order]
        first = xp.ones(b.n, dtype=bool)
        first[1:] = xp.any(table[1:] != table[:-1], axis=1)
        gid = xp.empty(b.n, dtype=xp.int64)
        gid[order] = xp.cumsum(first) - 1
        starts = xp.nonzero(first)[0]
        return gid, Bindings(table[starts], grouping), int(starts.shape[0])

    # -- terms -----------------------------------------------------------------------------

    def _term(self, t: Term, b: Bindings) -> Any:
        """Encoded uint32 column of a term over the binding table."""
        xp = self.xp
        if isinstance(t, Var):
            return b.col(t.name)
        if isinstance(t, Const):
            value = self.symbols.intern(t.value) if t.type == "symbol" else t.value
            return xp.full(b.n, encode_scalar(int(value), t.type), dtype=xp.uint32)
        if isinstance(t, Call):
            return functors.apply(t, [self._term(a, b) for a in t.args], self.functor_context)
        raise AssertionError(f"term {t!r} cannot be evaluated (wildcards are never read)")

    def _compare(self, c: Comparison, b: Bindings) -> Any:
        left, right = self._term(c.left, b), self._term(c.right, b)
        return _COMPARE[c.op](left, right)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
