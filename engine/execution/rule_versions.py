"""One rule version per call: its pipeline run segment by segment (cut where the binding table
moves between shards), its head tuples packed and kept (owned here: only the new ones) or
buffered to be sent to their owners; or, for a subsumption's versions, all buffered (tuples
found dominated, which the caller routes to every copy of the relation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dask_datalog.engine.execution.bindings import Bindings
from dask_datalog.engine.execution.head_rows import HeadRows
from dask_datalog.engine.execution.operators import Operators
from dask_datalog.engine.execution.phases import PhaseClock
from dask_datalog.engine.ir import Atom
from dask_datalog.engine.plan import RulePlan
from dask_datalog.engine.storage.hisa import pack

if TYPE_CHECKING:  # only a run with --profile or --stats imports profile.py
    from dask_datalog.engine.execution.profile import HeadCounts


def run_version(
    ops: Operators,
    clock: PhaseClock,
    rp: RulePlan,
    kept: HeadRows,
    outgoing: HeadRows,
    check: Callable[[], None],
    found: bool = False,
    counts: HeadCounts | None = None,
) -> None:
    """Run ``rp``; its head tuples go to ``kept`` (owned here, deduplicated against full as
    they are made) or ``outgoing``; with ``found`` all of them go to ``outgoing``, whatever
    the head route. ``check()`` runs before each table reaches the head (a stop or a memory
    budget can end the run inside a long join). ``counts``, when profiling, hears how many
    head tuples were made, kept new and sent."""
    head = rp.rule.head
    store = ops.shard.stores[head.relation]
    pipeline = ops.pipeline(rp)
    layout = pipeline.layout

    def sink(b: Bindings) -> None:
        check()
        if found:
            outgoing.add(_head_rows(ops, b, head, layout), unique=False)
            return
        mine, send = ops.router.head(rp.head, _head_rows(ops, b, head, layout))
        if send is not None:
            outgoing.add(send, unique=False)
        new = store.novel(mine, clock.phase) if mine is not None else None
        if new is not None:
            kept.add(new, unique=True)
        if counts is not None:
            counts.out += (int(mine.shape[0]) if mine is not None else 0) + (int(send.shape[0]) if send is not None else 0)
            counts.sent += int(send.shape[0]) if send is not None else 0
            counts.new += int(new.shape[0]) if new is not None else 0

    tables = [Bindings.unit(ops.xp)]
    with clock.phase("join"):
        for k, (lo, hi) in enumerate(pipeline.segments):
            if k > 0 and ops.router.agrees(rp.steps[lo]):
                tables = ops.assign_made(tables, rp.steps[lo])
                lo += 1
            elif k > 0:
                tables = ops.router.regroup(tables, rp.steps[lo])
            last = hi == len(rp.steps)
            collected: list[Bindings] = []
            for b in tables:
                ops.run(b, rp.steps[lo:hi], sink if last else collected.append, layout if last else None)
            tables = collected


def _head_rows(ops: Operators, b: Bindings, head: Atom, layout: tuple[str | None, ...] | None) -> Any:
    """The head tuples of a binding table, packed (``layout``: the column order in which the
    last join wrote the packed head rows, viewed without a copy)."""
    if layout is not None and b.names == layout:
        return b.table.view(ops.xp.uint64)
    return pack([ops.terms.column(a, b) for a in head.args], b.n, ops.xp)
