"""Join orders from the sizes the run has seen, on one shard.

The static plan orders a version's joins by the positions already bound, the written order
breaking ties; it cannot tell a 300-row relation from a 6-million-row one, and a wrong guess
there costs millions of intermediate rows per iteration (GALEN's
``Q(x, e, o) :- Q(x, y, z), R(y, u, e), Q(z, u, o)``, delta on the last atom: joining Q on z
before R on u made 2.9 million rows for 78 results). Before each iteration
``JoinOrder.versions`` hands the loop the versions it runs re-planned
(``plan.replan_version``) on every join's estimated fan-out: the rows of the relation per
distinct value of the columns bound when it runs, the distinct values counted on full
(estimated by a HyperLogLog sketch where the CPU kernels run: a pass, not a sort). A
version is planned again only when a relation its rule reads changed size by an order of
magnitude since its last plan, so a long fixpoint pays for a handful of plans; one that reads
only relations of under a thousand rows keeps its static plan.

Only one shard re-plans: on several, every shard would have to agree on sizes, and the
relations' partitioned copies follow the static plan's join keys (partition/placement.py).
"""

from __future__ import annotations

import math
from typing import Any

from dask_datalog.engine.execution.shard_store import ShardStore
from dask_datalog.engine.ir import Atom, Program
from dask_datalog.engine.plan import RulePlan, replan_version, replannable
from dask_datalog.engine.storage.hisa import half_of, unpack

# Relations under 10^SMALL rows are one size class: a join over them costs little in any order,
# and a version that reads only such relations keeps its static plan.
SMALL = 3
# A column set's distinct count is recounted once its relation's size left [counted / 2,
# counted * 2]: the fan-out estimate moves with the data without a sort per plan.
RECOUNT = 2

Decades = tuple[int, ...]


class JoinOrder:
    """One shard's re-planned versions and the distinct counts behind them."""

    def __init__(self, program: Program, shard: ShardStore):
        self.program = program
        self.shard = shard
        self.xp = shard.backend.xp
        # id of a static version -> (it, the size decades of the relations its atoms read when
        # it was last planned, that plan); holding it keeps its id from reuse
        self._plans: dict[int, tuple[RulePlan, Decades, RulePlan]] = {}
        self._distinct: dict[tuple[str, tuple[int, ...]], tuple[int, int]] = {}  # -> (size counted at, distinct)
        self._made: dict[int, int] = {}  # stratum -> iterations that ran a plan changed on sizes
        # id -> (a static version, replannable, the relations its atoms read): asked once
        self._open: dict[int, tuple[RulePlan, bool, tuple[str, ...]]] = {}

    def versions(self, number: int, recursive: tuple[str, ...], versions: tuple[RulePlan, ...]) -> tuple[RulePlan, ...]:
        """``versions`` (of stratum ``number``, whose relations are ``recursive``), the ones
        the coming iteration runs, ordered for the relations' current sizes: only what runs is
        planned (a stratum's initial versions once, its delta versions as sizes move)."""
        for rp in versions:
            if id(rp) not in self._open:
                reads = tuple(lit.relation for lit in rp.rule.body if isinstance(lit, Atom))
                self._open[id(rp)] = (rp, replannable(rp, recursive), reads)
        opened = [self._open[id(rp)] for rp in versions]
        if not any(movable for _, movable, _ in opened):  # one order each: no bookkeeping per iteration
            return versions
        read = {name for _, _, reads in opened for name in reads}  # each relation's size once: a sum over its runs
        decade = {name: _decade(len(self.shard.stores[name])) for name in read}
        out = []
        changed = False
        for rp, movable, reads in opened:
            if not movable:
                out.append(rp)
                continue
            decades = tuple(decade[name] for name in reads)
            kept = self._plans.get(id(rp))
            if kept is None or kept[1] != decades:
                again = rp if max(decades, default=0) < SMALL else replan_version(rp, recursive, self.program, self.fanout)
                changed |= again is not (rp if kept is None else kept[2])
                kept = self._plans[id(rp)] = (rp, decades, again)
            out.append(kept[2])
        if changed:
            self._made[number] = self._made.get(number, 0) + 1
        return tuple(out)

    def plans(self, number: int) -> int:
        """How many times stratum ``number`` ran a plan changed on sizes (0: its static plan)."""
        return self._made.get(number, 0)

    def fanout(self, atom: Atom, columns: tuple[int, ...]) -> float:
        """Rows of ``atom``'s full relation per distinct value of ``columns`` (all of them
        with no column bound). Beyond two columns the first two are counted: an estimate too
        high, never one that hides a large join."""
        store = self.shard.stores[atom.relation]
        size = len(store)
        if not size or not columns:
            return float(size)
        return size / self._count(atom.relation, columns[:2], size)

    def _count(self, name: str, columns: tuple[int, ...], size: int) -> int:
        counted = self._distinct.get((name, columns))
        if counted is not None and counted[0] // RECOUNT <= size <= counted[0] * RECOUNT:
            return counted[1]
        runs = self.shard.stores[name].runs
        kernels = self.shard.backend.kernels
        if kernels is not None:  # estimated in a pass: the fan-out's order of magnitude is what a plan needs
            distinct = kernels.distinct_estimate(runs, tuple(half_of(c) for c in columns))
        else:
            distinct = _exact_count(runs, columns, self.xp)
        self._distinct[(name, columns)] = (size, distinct)
        return distinct


def _exact_count(runs: list[Any], columns: tuple[int, ...], xp: Any) -> int:
    """The distinct values of one or two columns of a relation's runs, by a sort (the GPU's way)."""
    rows = runs[0] if len(runs) == 1 else xp.concatenate(runs)
    key: Any = unpack(rows, columns[0], xp).astype(xp.uint64)
    if len(columns) == 2:
        key = (key << xp.uint64(32)) | unpack(rows, columns[1], xp).astype(xp.uint64)
    key = xp.sort(key)
    return 1 + int(xp.count_nonzero(key[1:] != key[:-1]))


def _decade(size: int) -> int:
    return SMALL - 1 if size < 10**SMALL else int(math.log10(size))
