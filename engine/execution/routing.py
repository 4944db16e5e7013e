"""Where the plan's routes take effect: the one place that reads a step's ``RouteAction`` or a
version's ``HeadAction`` (plan.py says what each means; partition/placement.py chooses them).
Everything here is the identity on one shard, whose plan is all ``LOCAL``."""

from __future__ import annotations

import itertools
from typing import Any

from dask_datalog.engine.execution.bindings import Bindings
from dask_datalog.engine.execution.exchange import Exchange
from dask_datalog.engine.plan import COLLECTIVE, HeadAction, HeadRoute, RouteAction, Step
from dask_datalog.engine.storage.hisa import unpack
from dask_datalog.engine.values import Made


class Router:
    def __init__(self, exchange: Exchange, xp: Any):
        self.exchange = exchange
        self.xp = xp

    @staticmethod
    def segments(steps: tuple[Step, ...]) -> list[tuple[int, int]]:
        """The pipeline's segments ``[lo, hi)``: it is cut before every ``EXCHANGE`` step,
        where the binding tables move between shards, and every ``AGREE`` step, where shards
        agree on new symbols or records (collectives every shard takes part in, with or
        without rows)."""
        cuts = [i for i, step in enumerate(steps) if step.route.action in COLLECTIVE]
        return list(itertools.pairwise([0, *cuts, len(steps)]))

    @staticmethod
    def agrees(step: Step) -> bool:
        """Whether the segment ``step`` begins starts with the agreement on what it makes."""
        return step.route.action is RouteAction.AGREE

    def agree(self, made: Made) -> Made:
        return self.exchange.agree(made)

    def agree_count(self, count: int) -> tuple[int, int]:
        return self.exchange.agree_count(count)

    def regroup(self, tables: list[Bindings], step: Step) -> list[Bindings]:
        """The binding tables of the segment that ended, re-partitioned by ``step``'s route key
        for the segment it begins."""
        if len(tables) > 1:
            tables = [Bindings(self.xp.concatenate([b.table for b in tables]), tables[0].names)]
        moved = self.exchange.repartition(tables[0] if tables else None, step.route.key)
        return [] if moved is None else [moved]

    def before(self, step: Step, b: Bindings) -> Bindings:
        """The rows ``step`` runs on here: with ``OWN``, the rows of an everywhere-identical
        table that this shard owns."""
        if step.route.action is not RouteAction.OWN:
            return b
        mine = self.exchange.owned([b.col(v) for v in step.route.key])
        return b if mine is None else b.take(self.xp.nonzero(mine)[0])

    @staticmethod
    def slices(step: Step) -> bool:
        """Whether ``step`` (a scan of a replicated relation, ``SLICE``) reads only this shard's
        block of the relation's rows (``share``) rather than every match."""
        return step.route.action is RouteAction.SLICE

    def share(self, rows: int) -> tuple[int, int]:
        """The block ``[lo, hi)`` of ``rows`` rows a ``SLICE`` step scans on this shard."""
        return self.exchange.share(rows)

    def head(self, route: HeadRoute, rows: Any) -> tuple[Any | None, Any | None]:
        """Packed head rows -> (the ones this shard keeps and deduplicates, the ones it sends
        to their owners)."""
        if route.action in (HeadAction.EXCHANGE, HeadAction.BROADCAST):
            return None, rows
        if route.action is HeadAction.OWN:
            mine = self.exchange.owned([unpack(rows, j, self.xp) for j in route.key])
            return (rows if mine is None else rows[mine]), None
        return rows, None
