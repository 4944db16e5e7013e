"""Executing a plan on one shard: strata in order, semi-naive iterations to the fixpoint, each
rule version a pipeline of vectorised steps over a binding table.

A binding table is one uint32 column per bound variable (encoded values, see values.py).
Joins whose output would exceed ``chunk_rows`` run the rest of the pipeline chunk by chunk
over the outer side, so join outputs larger than memory never materialise; each chunk's head
tuples are deduplicated and subtracted from full before they are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import sets
from .backend import Backend
from .errors import DatalogError
from .hisa import RelationStore, expand_runs, pack, unpack, words_for
from .ir import Atom, BinOp, Comparison, Const, Term, Var
from .plan import (
    AggregateStep,
    AssignStep,
    FilterStep,
    JoinStep,
    NegationStep,
    Plan,
    RulePlan,
    Step,
    StratumPlan,
)
from .values import SIGN, SymbolTable, encode_scalar

PHASES = ("join", "dedup", "difference", "merge")


@dataclass
class Bindings:
    n: int
    cols: dict[str, Any]

    def take(self, rows: Any, keep: frozenset[str] | None) -> Bindings:
        names = self.cols if keep is None else [v for v in self.cols if v in keep]
        return Bindings(int(rows.shape[0]), {v: self.cols[v][rows] for v in names})


@dataclass
class PhaseClock:
    """Wall time per phase; on the GPU each phase ends with a device synchronisation."""

    backend: Backend
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.backend.synchronize()
            self.totals[name] += time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, dict.fromkeys(PHASES, 0.0)
        return {k: round(v, 6) for k, v in out.items()}


class Evaluator:
    """Owns one shard's relations for a run."""

    def __init__(
        self,
        plan: Plan,
        backend: Backend,
        symbols: SymbolTable,
        inputs: dict[str, np.ndarray],
        chunk_rows: int = 1 << 24,
    ):
        self.plan = plan
        self.backend = backend
        self.xp = backend.xp
        self.symbols = symbols
        self.chunk_rows = chunk_rows
        self.clock = PhaseClock(backend)
        relations = plan.program.relations
        self.stores = {name: RelationStore(rel.arity, self.xp) for name, rel in relations.items()}
        for name, rows in inputs.items():
            packed = pack([self.xp.asarray(rows[:, j]) for j in range(rows.shape[1])], rows.shape[0], self.xp)
            self.stores[name].add(sets.sort_unique(packed, self.xp))
        self.stats: dict[str, Any] = {"backend": backend.name, "strata": []}

    # -- driving -------------------------------------------------------------------------

    def run(self, on_iteration: Callable[[int, int, dict[str, int]], None] | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        for number, stratum in enumerate(self.plan.strata):
            self.stats["strata"].append(self._run_stratum(number, stratum, on_iteration))
        self.stats["total_s"] = round(time.perf_counter() - t0, 6)
        return self.stats

    def _run_stratum(self, number: int, stratum: StratumPlan, on_iteration: Callable | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        iterations = [self._iterate(stratum.initial, stratum.relations)]
        if on_iteration:
            on_iteration(number, 0, iterations[-1]["delta"])
        while stratum.recursive and any(iterations[-1]["delta"].values()):
            iterations.append(self._iterate(stratum.deltas, stratum.relations))
            if on_iteration:
                on_iteration(number, len(iterations) - 1, iterations[-1]["delta"])
        return {
            "relations": list(stratum.relations),
            "recursive": stratum.recursive,
            "iterations": iterations,
            "sizes": {r: len(self.stores[r]) for r in stratum.relations},
            "time_s": round(time.perf_counter() - t0, 6),
        }

    def _iterate(self, rules: tuple[RulePlan, ...], relations: tuple[str, ...]) -> dict[str, Any]:
        """One semi-naive step: every rule version reads the current deltas; then each
        relation's new tuples become its next delta and are merged into full."""
        t0 = time.perf_counter()
        produced: dict[str, list[Any]] = {r: [] for r in relations}
        for rp in rules:
            if rp.delta_relation is not None and self.stores[rp.delta_relation].delta.shape[0] == 0:
                continue
            produced[rp.rule.head.relation].extend(self._run_rule(rp))
        delta_sizes = {}
        for rel in relations:
            store = self.stores[rel]
            parts = produced[rel]
            with self.clock.phase("dedup"):
                if len(parts) == 1:
                    delta = parts[0]
                elif parts:
                    delta = sets.sort_unique(self.xp.concatenate(parts), self.xp)
                else:
                    delta = self.xp.zeros((0, words_for(store.arity)), self.xp.uint64)
            with self.clock.phase("merge"):
                store.add(delta)
            delta_sizes[rel] = int(delta.shape[0])
        return {"delta": delta_sizes, **self.clock.take(), "time_s": round(time.perf_counter() - t0, 6)}

    # -- one rule version ------------------------------------------------------------------

    def _run_rule(self, rp: RulePlan) -> list[Any]:
        """New tuples for the head (sorted, unique, not in full), as a list of row blocks."""
        head = rp.rule.head
        store = self.stores[head.relation]
        out: list[Any] = []
        pending: list[Any] = []

        def sink(b: Bindings) -> None:
            cols = [self._term(a, b) for a in head.args]
            rows = pack(cols, b.n, self.xp)
            with self.clock.phase("dedup"):
                rows = sets.sort_unique(rows, self.xp)
            with self.clock.phase("difference"):
                rows = sets.difference(rows, store.full, self.xp)
            if rows.shape[0]:
                pending.append(rows)
            if sum(p.shape[0] for p in pending) > self.chunk_rows:
                with self.clock.phase("dedup"):
                    out[:] = [sets.sort_unique(self.xp.concatenate(out + pending), self.xp)]
                pending.clear()

        with self.clock.phase("join"):
            self._steps(Bindings(1, {}), rp.steps, sink)
        if pending or len(out) > 1:
            with self.clock.phase("dedup"):
                blocks = out + pending
                out = [blocks[0] if len(blocks) == 1 else sets.sort_unique(self.xp.concatenate(blocks), self.xp)]
        return out

    def _steps(self, b: Bindings, steps: tuple[Step, ...], sink: Callable[[Bindings], None]) -> None:
        for i, step in enumerate(steps):
            if b.n == 0:
                return
            if isinstance(step, JoinStep):
                for part in self._join(b, step):
                    self._steps(part, steps[i + 1 :], sink)
                return
            if isinstance(step, FilterStep):
                b = b.take(self.xp.nonzero(self._compare(step.comparison, b))[0], None)
            elif isinstance(step, AssignStep):
                b.cols[step.var] = self._term(step.expr, b)
            elif isinstance(step, NegationStep):
                b = b.take(self.xp.nonzero(~self._exists(b, step))[0], None)
            else:
                b = self._aggregate(b, step)
        if b.n:
            sink(b)

    def _key_columns(self, atom: Atom, positions: tuple[int, ...], b: Bindings) -> list[Any]:
        return [self._term(atom.args[j], b) for j in positions]

    def _join(self, b: Bindings, step: JoinStep) -> Iterator[Bindings]:
        """Probe the index once for all outer rows, then materialise chunk by chunk."""
        atom = step.atom
        index = self.stores[atom.relation].index(step.order, step.version)
        keys = self._key_columns(atom, step.order[: step.key_len], b)
        starts, counts = index.ranges(keys[:2], b.n, self.xp)
        for lo, hi in self._chunks(counts):
            outer, inner = expand_runs(starts[lo:hi], counts[lo:hi], self.xp)
            outer += lo
            rows = index.rows[inner]
            for k in range(2, step.key_len):
                match = unpack(rows, k, self.xp) == keys[k][outer]
                outer, rows = outer[match], rows[match]
            yield self._bind(b, outer, rows, step)

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

    def _bind(self, b: Bindings, outer: Any, rows: Any, step: JoinStep) -> Bindings:
        """New binding table from matched pairs: old columns gathered, free positions of the
        atom unpacked (repeated free variables become equality filters)."""
        cols = {v: c[outer] for v, c in b.cols.items()}
        keep = self.xp.ones(outer.shape[0], dtype=bool)
        filtered = False
        for k in range(step.key_len, len(step.order)):
            arg = step.atom.args[step.order[k]]
            if not isinstance(arg, Var):
                continue
            col = unpack(rows, k, self.xp)
            if arg.name in cols:
                keep &= cols[arg.name] == col
                filtered = True
            else:
                cols[arg.name] = col
        if step.keep is not None:
            cols = {v: c for v, c in cols.items() if v in step.keep}
        out = Bindings(int(outer.shape[0]), cols)
        if filtered:
            out = out.take(self.xp.nonzero(keep)[0], None)
        return out

    def _exists(self, b: Bindings, step: NegationStep) -> Any:
        index = self.stores[step.atom.relation].index(step.order, "full")
        keys = self._key_columns(step.atom, step.order[: step.key_len], b)
        starts, counts = index.ranges(keys[:2], b.n, self.xp)
        if step.key_len <= 2:
            return counts > 0
        outer, inner = expand_runs(starts, counts, self.xp)
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
        gid, group_cols, n_groups = self._group(b, step.grouping)
        start = Bindings(n_groups, {**group_cols, "$gid": xp.arange(n_groups, dtype=xp.uint32)})
        gids: list[Any] = []
        values: list[Any] = []

        def collect(inner: Bindings) -> None:
            gids.append(inner.cols["$gid"])
            values.append(self._term(agg.target, inner) if agg.target is not None else inner.cols["$gid"])

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
        out = Bindings(b.n, {**b.cols, agg.result.name: result[gid]})
        if agg.func in ("min", "max"):
            out = out.take(xp.nonzero(present[gid])[0], None)
        return out

    def _group(self, b: Bindings, grouping: tuple[str, ...]) -> tuple[Any, dict[str, Any], int]:
        """(group id per outer row, grouping columns per group, number of groups)."""
        xp = self.xp
        if not grouping:
            return xp.zeros(b.n, dtype=xp.int64), {}, 1
        cols = [b.cols[v] for v in grouping]
        order = xp.lexsort(xp.stack(cols[::-1]))
        sorted_cols = [c[order] for c in cols]
        first = xp.zeros(b.n, dtype=bool)
        first[0] = True
        for c in sorted_cols:
            first[1:] |= c[1:] != c[:-1]
        gid_sorted = xp.cumsum(first) - 1
        gid = xp.empty(b.n, dtype=xp.int64)
        gid[order] = gid_sorted
        starts = xp.nonzero(first)[0]
        return gid, {v: c[starts] for v, c in zip(grouping, sorted_cols)}, int(starts.shape[0])

    # -- terms -----------------------------------------------------------------------------

    def _term(self, t: Term, b: Bindings) -> Any:
        """Encoded uint32 column of a term over the binding table."""
        xp = self.xp
        if isinstance(t, Var):
            return b.cols[t.name]
        if isinstance(t, Const):
            value = self.symbols.intern(t.value) if t.type == "symbol" else t.value
            return xp.full(b.n, encode_scalar(int(value), t.type), dtype=xp.uint32)
        if isinstance(t, BinOp):
            left = decode_int(self._term(t.left, b), t.type, xp)
            right = decode_int(self._term(t.right, b), t.type, xp)
            return encode_int(arithmetic(t, left, right, xp), t.type, xp)
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


def decode_int(encoded: Any, type: str, xp: Any) -> Any:
    """Encoded uint32 -> int64 value (number) or uint64 value (unsigned) for arithmetic."""
    if type == "number":
        return (encoded ^ SIGN).view(xp.int32).astype(xp.int64)
    return encoded.astype(xp.uint64)


def encode_int(values: Any, type: str, xp: Any) -> Any:
    """Wide integer results -> encoded uint32, wrapping at 32 bits."""
    low = (values & 0xFFFFFFFF).astype(xp.uint32)
    return low ^ SIGN if type == "number" else low


def arithmetic(t: BinOp, a: Any, b: Any, xp: Any) -> Any:
    if t.op == "+":
        return a + b
    if t.op == "-":
        return a - b
    if t.op == "*":
        return a * b
    if bool((b == 0).any()):
        raise DatalogError(t.pos, f"division by zero in '{t.op}'")
    if t.type != "number":
        return a // b if t.op == "/" else a % b
    # C semantics: the quotient truncates toward zero, the remainder has the dividend's sign.
    q = xp.abs(a) // xp.abs(b) * xp.where((a < 0) != (b < 0), -1, 1)
    return q if t.op == "/" else a - b * q
