"""The only semi-naive loop: strata in order, each to its fixpoint.

A stratum runs its ``initial`` versions once (every rule, all atoms full), then its delta
versions until no shard derived anything (the exit, tested at one place below). Each iteration:
every version reads the current deltas; head tuples this shard owns are deduplicated against
full as they are made, the others go to their owners in one ``Exchange.route``, which also sums
every shard's count of tuples found or moved (so all shards see the same exit without another
round) and ORs their checkpoint requests; what arrives is deduplicated too, becomes the next
delta and joins full; then the other copies of each relation receive that delta.

A stratum with subsumptive rules runs as Soufflé's does (subsumption.py, at two declared
points): its non-recursive rules first, relation by relation, each followed by
``Subsumption.settle``, which removes what they dominate; then, if it is recursive, every
relation's delta is all of it, and each iteration hands its new tuples to
``Subsumption.accept`` before they join full.

The loop meets other shards only through its ``Exchange`` (exchange.py) and the world outside
only through its ``Control`` (control.py), at the points those modules declare. A run over one
shard is the same loop with ``LocalExchange``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dask_datalog.engine import memory
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.errors import Suspended
from dask_datalog.engine.execution.choice import Choice
from dask_datalog.engine.execution.control import NO_CONTROL, STOP, Control, Position
from dask_datalog.engine.execution.exchange import Exchange, Target
from dask_datalog.engine.execution.head_rows import HeadRows
from dask_datalog.engine.execution.join_order import JoinOrder
from dask_datalog.engine.execution.operators import Operators
from dask_datalog.engine.execution.phases import PhaseClock
from dask_datalog.engine.execution.routing import Router
from dask_datalog.engine.execution.rule_versions import run_version
from dask_datalog.engine.execution.shard_store import ShardStore
from dask_datalog.engine.execution.subsumption import Subsumption
from dask_datalog.engine.execution.terms import Terms
from dask_datalog.engine.functors import ITERATION, UserFunctor
from dask_datalog.engine.ir import Atom, Functor, calls, symbol_constants
from dask_datalog.engine.plan import Plan, RulePlan, StratumPlan, SubsumptionPlan, released_orders
from dask_datalog.engine.storage.hisa import pack, unpack, words_for
from dask_datalog.engine.values import SymbolTable, encode_scalar

if TYPE_CHECKING:  # only a run with --profile or --stats imports profile.py
    from dask_datalog.engine.execution.profile import Profile

OnIteration = Callable[[int, int, dict[str, int]], None]  # (stratum, iteration, delta sizes)


@dataclass(slots=True)
class Iteration:
    """One iteration on one shard: the new tuples per relation, how many tuples any shard
    found or moved (``active``: 0 ends the stratum), the phases' times, the most raw head rows
    held at once, what the exchange cost."""

    delta: dict[str, int]
    active: int
    phases: dict[str, float]
    buffered_rows: int
    exchange: dict[str, Any]
    time_s: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"delta": self.delta, "active": self.active, **self.phases, "buffered_rows": self.buffered_rows}
        if self.exchange:
            out["exchange"] = self.exchange
        out["time_s"] = self.time_s
        return out


@dataclass
class Stratum:
    """A stratum's run on one shard; its iterations kept as their statistics (``to_json``):
    a long fixpoint has many, and a second copy of them would cost memory at the end."""

    relations: tuple[str, ...]
    recursive: bool
    iterations: list[dict[str, Any]]
    sizes: dict[str, int]
    time_s: float
    join_orders: int  # times it was re-planned on sizes (join_order.py): 0, its static plan throughout

    def to_json(self) -> dict[str, Any]:
        return {
            "relations": list(self.relations),
            "recursive": self.recursive,
            "iterations": self.iterations,
            "sizes": self.sizes,
            "time_s": self.time_s,
            "join_orders": self.join_orders,
        }


@dataclass
class Evaluation:
    """A shard's evaluation: the strata it ran (from ``resumed_from`` when it took up a
    checkpoint) and its time."""

    backend: str
    strata: list[Stratum] = field(default_factory=list)
    resumed_from: Position | None = None
    total_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "strata": [s.to_json() for s in self.strata]}
        if self.resumed_from is not None:
            out["resumed_from"] = [self.resumed_from.stratum, self.resumed_from.iteration]
        out["total_s"] = self.total_s
        return out


class Fixpoint:
    def __init__(
        self,
        plan: Plan,
        backend: Backend,
        symbols: SymbolTable,
        shard: ShardStore,
        chunk_rows: int,
        control: Control = NO_CONTROL,
        profile: Profile | None = None,
        drop_after: tuple[frozenset[str], ...] = (),
    ):
        self.plan = plan
        self.drop_after = drop_after  # per stratum, the relations freed when it ends (plan.expiring); () keeps all
        self.released = released_orders(plan)  # per stratum, the indexes its end frees
        self.backend = backend
        self.xp = backend.xp
        self.shard = shard
        self.exchange: Exchange = shard.exchange
        self.control = control
        self.chunk_rows = chunk_rows
        self.clock = PhaseClock(backend)
        self.width = {name: words_for(store.arity) for name, store in shard.stores.items()}  # packed words per row
        self.terms = Terms(self.xp, symbols, _user_functors(plan.program.functors))
        self.profile = profile  # None: nothing is timed or counted per version
        step_rows = profile.step_rows if profile is not None else None
        join_rows = max(1, chunk_rows // memory.JOIN_SHARE)
        self.operators = Operators(backend, self.terms, shard, Router(self.exchange, self.xp), join_rows, step_rows)
        self.debug = {of: name for name, of in plan.program.debug_deltas}  # relation -> its debug_delta relation
        self.subsumption = Subsumption(self.operators, self.clock, self._check)
        # On one shard, joins are ordered by the sizes the run sees (join_order.py).
        self.join_order = JoinOrder(plan.program, shard) if plan.shards == 1 else None
        # The choice-domain relations' kept keys, from what they hold when the run (re)starts.
        constants = np.array(sorted(symbols.id_of(c) for c in symbol_constants(plan.program)), dtype=np.uint32)
        self.choices = {
            name: Choice(rel, backend, shard.stores[name].compact(), constants)
            for name, rel in plan.program.relations.items()
            if rel.choice
        }

    def run(self, start: Position = Position(0, 0), on_iteration: OnIteration | None = None) -> Evaluation:
        """Evaluate every stratum from ``start`` (a checkpoint's position, or the beginning)."""
        t0 = time.perf_counter()
        result = Evaluation(self.backend.name, resumed_from=start if start != Position(0, 0) else None)
        evaluated = {r for s in self.plan.strata for r in s.relations}
        inputs = {r: d for r, d in self.debug.items() if r not in evaluated}
        if inputs and start == Position(0, 0):  # a relation no rule makes is all there at iteration 0
            self._record_deltas(inputs, 0)
        for number in range(start.stratum, len(self.plan.strata)):
            done = start.iteration if number == start.stratum else 0
            stratum, requests = self._stratum(number, self.plan.strata[number], done, on_iteration)
            result.strata.append(stratum)
            if requests:  # asked for in the stratum's last iteration: its end is the boundary
                self._checkpoint(Position(number + 1, 0), requests)
        result.total_s = round(time.perf_counter() - t0, 6)
        return result

    def _stratum(self, number: int, stratum: StratumPlan, done: int, on_iteration: OnIteration | None) -> tuple[Stratum, int]:
        """The initial iteration (unless ``done`` iterations ran before a checkpoint), then
        semi-naive iterations until no shard derived anything; then the copies only later
        strata read are built from the complete relations. Checkpoints requested within the
        stratum are written at once; a request in its last iteration is returned."""
        t0 = time.perf_counter()
        iterations: list[dict[str, Any]] = []
        limits = {r: n for r, n in self.plan.program.limits if r in stratum.relations} if stratum.recursive else {}
        debugged = {r: self.debug[r] for r in stratum.relations if r in self.debug}
        souffles_loop = stratum.recursive and (bool(limits or debugged) or _counts_iterations(stratum))
        primed = bool(stratum.subsumption) and stratum.recursive  # Soufflé's loop, from delta = everything
        while True:
            self.terms.iteration = done  # read by recursive rules only (checker.check_counters): Soufflé's count there
            planned = self._versions(stratum, done, souffles_loop, primed)
            versions = planned if self.join_order is None else self.join_order.versions(number, stratum.relations, planned)
            if self.profile is not None:
                self.profile.iteration = done
                self.profile.follow(planned, versions)
            if done == 0 and stratum.subsumption:
                iteration, requests = self._preamble(versions, stratum)
            else:
                iteration, requests = self._iterate(versions, stratum.relations, stratum.subsumption if primed else ())
            if debugged:
                self._record_deltas(debugged, done)
            iterations.append(iteration.to_json())
            if on_iteration is not None:
                on_iteration(number, done, iteration.delta)
            done += 1
            preamble = (souffles_loop or primed) and done == 1  # only the non-recursive rules ran: the loop starts now
            if not (preamble or (stratum.recursive and iteration.active)):  # the exit: nothing found or moved anywhere
                break
            if limits and self._reached(limits):  # Soufflé's other exit
                break
            if requests:
                self._checkpoint(Position(number, done), requests)
        self.shard.fill_copies(stratum.relations, later=True, phase=self.clock.phase)
        sizes = {r: self.shard.local_size(r) for r in stratum.relations}
        self.shard.release(self.released[number])
        if self.drop_after:
            self.shard.drop(self.drop_after[number])
        orders = 0 if self.join_order is None else self.join_order.plans(number)
        return Stratum(
            stratum.relations, stratum.recursive, iterations, sizes, round(time.perf_counter() - t0, 6), orders
        ), requests

    def _record_deltas(self, debugged: dict[str, str], done: int) -> None:
        """Each ``debug_delta`` relation in ``debugged`` gets its relation's delta of iteration
        ``done`` with that number; at iteration 0 (Soufflé's preamble, or a stratum that is not
        recursive, or a relation no rule makes) everything the relation holds, as Soufflé's
        delta is the whole relation then. Sent to the owners of the rows (a collective, every
        iteration, rows or not)."""
        xp = self.xp
        blocks: dict[Target, Any] = {}
        for of, name in debugged.items():
            store = self.shard.stores[of]
            rows = store.compact() if done == 0 else store.delta
            if not self.shard.accounts_for(of):  # a replicated relation's rows are recorded by shard 0
                rows = rows[:0]
            columns = [unpack(rows, j, xp) for j in range(store.arity)]
            columns.append(xp.full(int(rows.shape[0]), encode_scalar(done, "unsigned"), dtype=xp.uint32))
            blocks[self.shard.canonical_target(name)] = pack(columns, int(rows.shape[0]), xp)
        arrived, _, _ = self.exchange.route(blocks, 0)
        for (name, _), parts in arrived.items():
            with self.clock.phase("merge"):
                self.shard.stores[name].add(self.shard.stores[name].novel(xp.concatenate(parts), self.clock.phase))

    @staticmethod
    def _versions(stratum: StratumPlan, done: int, limited: bool, primed: bool) -> tuple[RulePlan, ...]:
        """The versions iteration ``done`` runs: the initial ones first, then the deltas. A
        stratum with a ``.limitsize`` relation (or a ``debug_delta`` relation, or a rule that
        reads ``recursive_iteration_cnt()``) counts its iterations as Soufflé's loop does:
        the non-recursive rules first, alone (Soufflé's preamble), then the recursive ones over
        everything so far (its first iteration, whose delta is the whole relation), then the
        deltas; so it stops after the same iteration, with the same tuples. A ``primed`` one
        (subsumption) runs its non-recursive rules, then the deltas from deltas that are every
        relation's whole (``ShardStore.prime``)."""
        if primed and done > 0:
            return stratum.deltas
        if not (limited or primed):
            return stratum.initial if done == 0 else stratum.deltas
        if done > 1:
            return stratum.deltas
        return tuple(
            rp
            for rp in stratum.initial
            if any(isinstance(lit, Atom) and lit.relation in stratum.relations for lit in rp.rule.body) == (done == 1)
        )

    def _reached(self, limits: dict[str, int]) -> bool:
        """Whether a ``.limitsize`` relation holds its limit or more, over all shards (a round
        per relation: every shard gets the same sums, so all stop at the same iteration)."""
        sizes = [self.exchange.route({}, self.shard.local_size(name))[1] for name in limits]
        return any(size >= limits[name] for size, name in zip(sizes, limits))

    def _checkpoint(self, position: Position, requests: int) -> None:
        """Every shard saves the rows it accounts for, then stops on ``STOP``."""
        self.control.save(position, self.shard.checkpoint_rows(), self.shard.dropped)
        if requests & STOP:
            raise Suspended(position)

    def _check(self) -> None:
        self.control.check(self.shard.held)

    def _preamble(self, versions: tuple[RulePlan, ...], stratum: StratumPlan) -> tuple[Iteration, int]:
        """The first iteration of a stratum with subsumptive rules, as Soufflé's preamble:
        relation by relation in name order, its non-recursive rules, then what they dominate
        leaves it (``Subsumption.settle``: a later relation of the stratum is read before its
        own rules ran); then, if the stratum is recursive, every delta is all of its relation.
        One ``Iteration`` for the steps together."""
        steps = []
        for rel in stratum.relations:
            steps.append(self._iterate(tuple(rp for rp in versions if rp.rule.head.relation == rel), (rel,), ()))
            self.subsumption.settle(tuple(sp for sp in stratum.subsumption if sp.relation == rel))
        if stratum.recursive:
            self.shard.prime(stratum.relations)
        parts = [iteration for iteration, _ in steps]
        exchange: dict[str, Any] = {}
        for part in parts:
            for key, value in part.exchange.items():
                exchange[key] = round(exchange.get(key, 0) + value, 6)
        iteration = Iteration(
            delta={rel: n for part in parts for rel, n in part.delta.items()},
            active=sum(part.active for part in parts),
            phases={name: round(sum(part.phases[name] for part in parts), 6) for name in parts[0].phases},
            buffered_rows=max(part.buffered_rows for part in parts),
            exchange=exchange,
            time_s=round(sum(part.time_s for part in parts), 6),
        )
        requests = 0
        for _, asked in steps:
            requests |= asked
        return iteration, requests

    def _iterate(
        self, versions: tuple[RulePlan, ...], relations: tuple[str, ...], subsumption: tuple[SubsumptionPlan, ...]
    ) -> tuple[Iteration, int]:
        """One semi-naive step (see the module docstring); returns it and the checkpoint
        requests every shard agreed on at its end. ``subsumption``: the relations whose new
        tuples ``Subsumption.accept`` sifts first, in order."""
        t0 = time.perf_counter()
        xp = self.xp
        width = self.width
        kept = {r: HeadRows(width[r], self.chunk_rows, self.backend, self.clock) for r in relations}
        outgoing = {r: HeadRows(width[r], self.chunk_rows, self.backend, self.clock) for r in relations}
        profile = self.profile
        for rp in versions:
            if self._idle(rp):  # before the check: a version with nothing to read costs one test
                if profile is not None:
                    profile.skip(rp)
                continue
            self._check()
            into, out = kept[rp.rule.head.relation], outgoing[rp.rule.head.relation]
            if profile is None:
                run_version(self.operators, self.clock, rp, into, out, self._check)
            else:
                profile.run(
                    rp, self.shard, functools.partial(run_version, self.operators, self.clock, rp, into, out, self._check)
                )
        blocks: dict[Target, Any] = {self.shard.canonical_target(r): outgoing[r].rows() for r in relations if len(outgoing[r])}
        found = sum(len(kept[r]) for r in relations) + sum(int(b.shape[0]) for b in blocks.values())
        arrived, active, requests = self.exchange.route(blocks, found, self.control.requests())
        for (name, _), parts in arrived.items():
            kept[name].add(self.shard.stores[name].novel(xp.concatenate(parts), self.clock.phase), unique=True)
        deltas = {rel: kept[rel].rows() for rel in relations}
        for sp in subsumption:  # each relation's sifting reads the relations sifted before it, as in Soufflé
            deltas[sp.relation] = self.subsumption.accept(sp, deltas[sp.relation])
        delta_sizes = {}
        for rel in relations:
            delta = deltas[rel]
            if rel in self.choices:
                delta = self.choices[rel].choose(delta)
            with self.clock.phase("merge"):
                self.shard.stores[rel].add(delta)
            delta_sizes[rel] = int(delta.shape[0])
        self.shard.fill_copies(relations, later=False, phase=self.clock.phase)
        iteration = Iteration(
            delta=delta_sizes,
            active=active,
            phases=self.clock.take(),
            buffered_rows=max((h.peak for h in (*kept.values(), *outgoing.values())), default=0),
            exchange=self.exchange.take_stats(),
            time_s=round(time.perf_counter() - t0, 6),
        )
        return iteration, requests

    def _idle(self, rp: RulePlan) -> bool:
        """Whether the version can be skipped here: no delta in the store it reads (on this
        shard), and no collective inside it that the other shards would wait for."""
        delta = rp.delta_step
        if delta is None or (rp.exchanges and self.exchange.size > 1):
            return False
        return self.shard.store(delta.atom.relation, delta.route.copy).delta.shape[0] == 0


def _counts_iterations(stratum: StratumPlan) -> bool:
    """Whether a rule of the stratum reads ``recursive_iteration_cnt()``."""
    return any(c.name == ITERATION for rp in stratum.initial for c in calls(rp.rule))


def _user_functors(declared: tuple[Functor, ...]) -> dict[str, UserFunctor]:
    """The implementations of the program's user functors; a program that declares none does
    not import engine/user_functors.py (start-up is most of a small run)."""
    if not declared:
        return {}
    from dask_datalog.engine import user_functors

    return user_functors.implementations(declared)
