"""The operators of a rule version's pipeline: one executor per plan step type (``EXECUTORS``)
and ``Operators.run``, which applies a pipeline of steps to a binding table.

An executor takes the binding table and its step and yields the tables the rest of the
pipeline runs on: one, none (no row survives), or, for a join whose output would pass
``chunk_rows``, one per chunk of the outer side, so join outputs larger than memory never
materialise. ``layout``, given to the last step of a version, is the column order the head can
take as packed rows without a copy; a join writes its output in it when it can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_datalog.engine import functors, memory
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.execution.bindings import Bindings
from dask_datalog.engine.execution.routing import Router
from dask_datalog.engine.execution.shard_store import ShardStore
from dask_datalog.engine.execution.terms import Terms
from dask_datalog.engine.functors import decode_float, decode_int, encode_float, encode_int
from dask_datalog.engine.ir import Atom, Call, Record, Var, is_named_wildcard
from dask_datalog.engine.plan import (
    AggregateStep,
    AssignStep,
    FilterStep,
    GenerateStep,
    JoinStep,
    NegationStep,
    RulePlan,
    Step,
    UnpackStep,
)
from dask_datalog.engine.storage import sets
from dask_datalog.engine.storage.hisa import (
    SortedIndex,
    expand_runs,
    gather_join,
    gather_pairs,
    half_of,
    narrow,
    packed_layout,
    probe_query,
    unpack,
)
from dask_datalog.engine.values import FLOAT_MAX, SIGN, float_bits, float_key

Layout = tuple[str | None, ...]
Sink = Callable[[Bindings], None]


class Operators:
    """What the executors of one shard share: its backend, term evaluator, relations, router
    and join chunk size."""

    def __init__(
        self,
        backend: Backend,
        terms: Terms,
        shard: ShardStore,
        router: Router,
        chunk_rows: int,
        step_rows: dict[int, int] | None = None,
    ):
        self.backend = backend
        self.xp = backend.xp
        self.terms = terms
        self.shard = shard
        self.router = router
        self.chunk_rows = chunk_rows
        self.probe_rows = max(1, chunk_rows // memory.PROBE_SHARE)
        self.step_rows = step_rows  # profiling only (profile.py): binding rows entering each step, by id
        self._shapes: dict[tuple[int, Layout, Layout | None], JoinShape] = {}
        self._pipelines: dict[int, Pipeline] = {}

    def run(self, b: Bindings, steps: tuple[Step, ...], sink: Sink, layout: Layout | None = None) -> None:
        """Run ``steps`` over ``b`` and hand every non-empty table that comes out to ``sink``."""
        if not steps:
            if b.n:
                sink(b)
            return
        step, rest = steps[0], steps[1:]
        b = self.router.before(step, b)
        if self.step_rows is not None:
            self.step_rows[id(step)] = self.step_rows.get(id(step), 0) + b.n
        if b.n == 0:
            return
        for out in EXECUTORS[type(step)](self, b, step, None if rest else layout):
            self.run(out, rest, sink, layout)

    def assign_made(self, tables: list[Bindings], step: Step) -> list[Bindings]:
        """An ``AGREE`` step over every binding table its segment collected: the symbols its
        call makes, or the records, agreed with the other shards (``Terms.made``), as a new
        column."""
        assert isinstance(step, AssignStep) and isinstance(step.expr, (Call, Record))
        b = None
        if tables:
            b = tables[0] if len(tables) == 1 else Bindings(self.xp.concatenate([t.table for t in tables]), tables[0].names)
        count = (lambda n: (0, n)) if step.route.alike else self.router.agree_count  # alike: no shard comes first
        column = self.terms.made(step.expr, b, self.router.agree, count)
        return [] if b is None or column is None else [b.with_column(step.var, column, self.xp)]

    def join_shape(self, step: JoinStep, outer: Layout, layout: Layout | None) -> JoinShape:
        """``JoinShape.of``, kept per (step, outer columns, layout): the step is looked up by
        identity (hashing a step hashes its atom) and checked against the one kept."""
        key = (id(step), outer, layout)
        shape = self._shapes.get(key)
        if shape is None or shape.step is not step:
            shape = self._shapes[key] = JoinShape.of(step, outer, layout)
        return shape

    def pipeline(self, rp: RulePlan) -> Pipeline:
        """``Pipeline.of`` the version, kept per version as ``join_shape`` keeps shapes (a
        fixpoint runs each version every iteration; most runs are over in microseconds)."""
        pipeline = self._pipelines.get(id(rp))
        if pipeline is None or pipeline.rp is not rp:
            pipeline = self._pipelines[id(rp)] = Pipeline(rp, packed_layout(rp.rule.head), self.router.segments(rp.steps))
        return pipeline

    def key_columns(self, atom: Atom, positions: tuple[int, ...], b: Bindings) -> list[Any]:
        return [self.terms.column(atom.args[j], b) for j in positions]

    def pieces(self, b: Bindings) -> Iterator[Bindings]:
        """``b`` as views of at most ``probe_rows`` rows each, probed one after the other: a
        probe holds some 32 bytes per outer row (its query, run start and count, their
        running sum) beside the output chunk it materialises."""
        if b.n <= self.probe_rows:
            yield b
            return
        for lo in range(0, b.n, self.probe_rows):
            yield Bindings(b.table[lo : lo + self.probe_rows], b.names)

    def chunks(self, counts: Any, total: int | None) -> Iterator[tuple[int, int, int]]:
        """Outer row ranges ``[lo, hi)`` whose join output (``rows``) stays within
        ``chunk_rows`` (one outer row at least), as (lo, hi, rows); none when nothing matched,
        so an empty join costs no gather. ``total``: the sum of ``counts`` if known."""
        if total is None:
            total = int(counts.sum()) if counts.shape[0] else 0
        n = int(counts.shape[0])
        if total <= self.chunk_rows:
            if total:
                yield 0, n, total
            return
        ends = self.backend.asnumpy(self.xp.cumsum(counts))
        lo = 0
        while lo < n:
            base = int(ends[lo - 1]) if lo else 0
            hi = max(int(np.searchsorted(ends, base + self.chunk_rows, side="right")), lo + 1)
            if ends[hi - 1] > base:
                yield lo, hi, int(ends[hi - 1]) - base
            lo = hi


@dataclass(frozen=True)
class Pipeline:
    """What running a version needs beyond its steps: the binding-table columns whose rows
    are its packed head tuples (``packed_layout``) and its segments (``Router.segments``)."""

    rp: RulePlan
    layout: Layout | None
    segments: list[tuple[int, int]]


def join(ops: Operators, b: Bindings, step: JoinStep, layout: Layout | None) -> Iterator[Bindings]:
    """Join with each HISA the atom's version is kept in (full's runs one after the other, or
    the delta): probe each once for all outer rows (count pass), then materialise the output
    chunk by chunk in one gather (outer and inner columns side by side)."""
    store = ops.shard.store(step.atom.relation, step.route.copy)
    sliced = ops.router.slices(step)
    parts = [store.index(step.order, step.version)] if sliced else store.parts(step.order, step.version, b.n)
    shape = ops.join_shape(step, b.names, layout)
    for piece in ops.pieces(b):
        keys = ops.key_columns(step.atom, step.order[: step.key_len], piece)
        query = probe_query(keys[:2], piece.n, ops.xp)
        if shape.semi and not sliced:
            yield from _semi_join(ops, piece, shape, parts, keys, query)
            continue
        for index in parts:
            yield from _join_index(ops, piece, shape, index, keys, query, sliced)


@dataclass(frozen=True)
class JoinShape:
    """What a join step's output looks like for one outer column order and head layout:
    computed once per run, not per join (a long fixpoint joins the same step every iteration).
    ``checks``: index columns the probe cannot check, the repeats of a free variable within the
    atom, (k, the first one); ``names`` and ``source``: the output's columns and where each comes
    from (``gather_join``)."""

    step: JoinStep
    checks: tuple[tuple[int, int], ...]
    names: Layout
    source: tuple[tuple[int, int], ...]
    # Whether the output keeps no column of the atom: an existence check (Soufflé's
    # ``IndexedExistenceCheck``), each outer row once however many rows match it.
    semi: bool

    @classmethod
    def of(cls, step: JoinStep, outer: Layout, layout: Layout | None) -> JoinShape:
        atom = step.atom
        free: dict[str, int] = {}
        checks: list[tuple[int, int]] = []
        for k in range(step.key_len, len(step.order)):
            arg = atom.args[step.order[k]]
            if isinstance(arg, Var):
                if arg.name in free:
                    checks.append((k, free[arg.name]))
                else:
                    free[arg.name] = k
        available = list(outer) + list(free)
        if layout is not None and {v for v in layout if v is not None} <= set(available):
            names: Layout = layout
        else:
            names = tuple(v for v in available if step.keep is None or v in step.keep)
        source = tuple((2, 0) if v is None else (0, outer.index(v)) if v in outer else (1, half_of(free[v])) for v in names)
        return cls(step, tuple(checks), names, source, all(side != 1 for side, _ in source))


def _join_index(
    ops: Operators,
    b: Bindings,
    shape: JoinShape,
    index: SortedIndex,
    keys: list[Any],
    query: Any,
    sliced: bool,
) -> Iterator[Bindings]:
    xp = ops.xp
    total: int | None
    if sliced:  # a scan of this shard's block of a replicated relation (no key: placement's SLICE)
        lo, hi = ops.router.share(int(index.rows.shape[0]))
        starts, counts, total = xp.full(b.n, lo, dtype=xp.int64), xp.full(b.n, hi - lo, dtype=xp.int64), b.n * (hi - lo)
    else:
        starts, counts, total = _probe(ops, index, keys, query, b.n)
    for lo, hi, rows in ops.chunks(counts, total):
        if not shape.checks:
            table = gather_join(b.table[lo:hi], starts[lo:hi], counts[lo:hi], rows, index.rows, shape.source, ops.backend)
            yield Bindings(table, shape.names)
            continue
        outer, inner = _checked_pairs(ops, shape, index, keys, starts, counts, lo, hi)
        yield Bindings(gather_pairs(b.table, outer, index.rows, inner, shape.source, xp), shape.names)


def _probe(ops: Operators, index: SortedIndex, keys: list[Any], query: Any, n: int) -> tuple[Any, Any, int | None]:
    """Each outer row's run of matches in ``index``: the hash probe on the first two key
    columns, then narrowed by each later one, by binary search (``narrow``): starts, counts,
    their sum if known."""
    starts, counts, total = index.ranges(query, len(keys[:2]), n, ops.backend)
    for k in range(2, len(keys)):
        starts, counts, total = narrow(starts, counts, index.rows, k, keys[k], ops.backend)
    return starts, counts, total


def _checked_pairs(
    ops: Operators, shape: JoinShape, index: SortedIndex, keys: list[Any], starts: Any, counts: Any, lo: int, hi: int
) -> tuple[Any, Any]:
    """The (outer, inner) row pairs of outer rows ``lo:hi`` whose match passes the checks the
    probe cannot make (``JoinShape.checks``: repeated variables)."""
    xp = ops.xp
    outer, inner = expand_runs(starts[lo:hi], counts[lo:hi], ops.backend)
    outer += lo
    rows = index.rows[inner]
    keep = xp.ones(outer.shape[0], dtype=bool)
    for k, other in shape.checks:
        keep &= unpack(rows, k, xp) == unpack(rows, other, xp)
    return outer[keep], inner[keep]


def _semi_join(
    ops: Operators, b: Bindings, shape: JoinShape, parts: list[SortedIndex], keys: list[Any], query: Any
) -> Iterator[Bindings]:
    """The outer rows with a match in any of ``parts``, each once: no row of the relation is
    gathered, and a key matched by many rows costs what one match does."""
    xp = ops.xp
    found = xp.zeros(b.n, dtype=bool)
    for index in parts:
        starts, counts, total = _probe(ops, index, keys, query, b.n)
        if not shape.checks:
            found |= counts > 0
            continue
        for lo, hi, _ in ops.chunks(counts, total):
            found[_checked_pairs(ops, shape, index, keys, starts, counts, lo, hi)[0]] = True
    rows = xp.nonzero(found)[0]
    if rows.shape[0]:
        yield Bindings(gather_pairs(b.table, rows, parts[0].rows, rows, shape.source, xp), shape.names)


def filter_rows(ops: Operators, b: Bindings, step: FilterStep, layout: Layout | None) -> Iterator[Bindings]:
    yield b.take(ops.xp.nonzero(ops.terms.holds(step.comparison, b))[0])


def assign(ops: Operators, b: Bindings, step: AssignStep, layout: Layout | None) -> Iterator[Bindings]:
    yield b.with_column(step.var, ops.terms.column(step.expr, b), ops.xp)


def generate(ops: Operators, b: Bindings, step: GenerateStep, layout: Layout | None) -> Iterator[Bindings]:
    """Each row once per value of the generator, the values as a new column; at most
    ``chunk_rows`` rows at a time (a long range need not be held beside its bindings)."""
    args = [ops.terms.column(a, b) for a in step.call.args]
    rows, values = functors.apply(step.call, args, ops.terms.context)
    for lo in range(0, int(rows.shape[0]), max(ops.chunk_rows, 1)):
        hi = lo + max(ops.chunk_rows, 1)
        yield b.take(rows[lo:hi]).with_column(step.var, values[lo:hi], ops.xp)


def unpack_record(ops: Operators, b: Bindings, step: UnpackStep, layout: Layout | None) -> Iterator[Bindings]:
    """The rows whose value is a record of the step's kinds, with its elements as new columns."""
    found, elements = ops.terms.symbols.records.unpack(step.kinds, ops.terms.column(step.source, b), ops.xp)
    kept = [j for j, name in enumerate(step.targets) if name is not None]
    table = ops.xp.concatenate([b.table[found], elements[:, kept]], axis=1)
    yield Bindings(table, b.names + tuple(step.targets[j] for j in kept))


def anti_join(ops: Operators, b: Bindings, step: NegationStep, layout: Layout | None) -> Iterator[Bindings]:
    """The rows with no match in the negated atom's full relation."""
    xp = ops.xp
    index = ops.shard.store(step.atom.relation, step.route.copy).index(step.order, "full")
    for piece in ops.pieces(b):
        keys = ops.key_columns(step.atom, step.order[: step.key_len], piece)
        _, counts, _ = _probe(ops, index, keys, probe_query(keys[:2], piece.n, xp), piece.n)
        yield piece.take(xp.nonzero(counts == 0)[0])


def aggregate(ops: Operators, b: Bindings, step: AggregateStep, layout: Layout | None) -> Iterator[Bindings]:
    """Group the outer rows by the grouping variables, run the aggregate body once per
    distinct group, reduce per group, and hand each outer row its group's value (min and max
    of an empty group, mean of an empty group and a float NaN give no binding: the row fails)."""
    xp = ops.xp
    agg = step.aggregation
    gid, groups, n_groups = _group(b, step.grouping, xp)
    start = groups.with_column("$gid", xp.arange(n_groups, dtype=xp.uint32), xp)
    gids: list[Any] = []
    values: list[Any] = []
    scans: list[list[Any]] = []

    def collect(inner: Bindings) -> None:
        gids.append(inner.col("$gid"))
        values.append(ops.terms.column(agg.target, inner) if agg.target is not None else inner.col("$gid"))
        scans.append([inner.col(name) for name, _ in step.scan])

    if agg.distinct:
        batches: list[Bindings] = []
        ops.run(start, step.steps, batches.append)
        if batches:
            collect(_distinct_bindings(batches, ops.backend))
    else:
        ops.run(start, step.steps, collect)
    g = xp.concatenate(gids) if gids else xp.zeros(0, dtype=xp.uint32)
    v = xp.concatenate(values) if values else xp.zeros(0, dtype=xp.uint32)
    present = xp.zeros(n_groups, dtype=bool)
    present[g] = True
    if agg.func == "count":
        result = encode_int(xp.bincount(g, minlength=n_groups).astype(xp.int64), "number", xp)
    elif agg.type == "float" and agg.func in ("sum", "mean"):
        keys = [_scan_key(xp.concatenate([s[j] for s in scans]), t, xp) for j, (_, t) in enumerate(step.scan)] if scans else []
        result = _float_sum(g, v, keys, n_groups, agg.func == "mean", xp, ops.backend.name == "numpy")
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
        if agg.type == "float":
            v = _float_extreme_keys(v, agg.func, xp)
        packed = xp.sort((g.astype(xp.uint64) << xp.uint64(32)) | v.astype(xp.uint64))
        group_of = (packed >> xp.uint64(32)).astype(xp.int64)
        pick = xp.searchsorted(group_of, xp.arange(n_groups), side="left" if agg.func == "min" else "right")
        if agg.func == "max":
            pick -= 1
        pick = xp.clip(pick, 0, max(0, packed.shape[0] - 1))
        result = xp.zeros(n_groups, dtype=xp.uint32)
        if packed.shape[0]:
            result = (packed[pick] & xp.uint64(0xFFFFFFFF)).astype(xp.uint32)
        if agg.type == "float":
            result = _float_extreme_keys(result, agg.func, xp)
    keep = present if agg.func in ("min", "max", "mean") else xp.ones(n_groups, dtype=bool)
    if agg.type == "float":  # Soufflé binds an aggregate's value with `=`, which a NaN fails
        keep &= ~xp.isnan(decode_float(result, xp))
    out = b.with_column(agg.result.name, result[gid], xp)
    if not bool(keep.all()):
        out = out.take(xp.nonzero(keep[gid])[0])
    yield out


def _distinct_bindings(batches: list[Bindings], backend: Backend) -> Bindings:
    """An aggregate body's bindings as a set of rows of its named variables, the group's id
    among them (what Soufflé's materialised body relation holds: ``Aggregation.distinct``)."""
    xp = backend.xp
    names = tuple(sorted(n for n in batches[0].names if n is not None and not is_named_wildcard(n)))
    rows = xp.concatenate([xp.stack([b.col(n) for n in names], axis=1) for b in batches])
    return Bindings(sets.sort_unique(rows, backend), names)


_ZERO, _NEGATIVE_ZERO = SIGN, SIGN - np.uint32(1)  # encoded +0.0 and -0.0
_KEY_MAX, _KEY_LOWEST = np.uint32(float_key(np.uint32(FLOAT_MAX))), np.uint32(float_key(np.uint32(FLOAT_MAX | SIGN)))


def _float_extreme_keys(v: Any, func: str, xp: Any) -> Any:
    """Encoded floats -> keys whose smallest (min) or largest (max) is Soufflé's min or max
    aggregate, and back (the map is its own inverse on what it gives). Soufflé folds std::min
    or std::max from the largest float (min) or its negative (max), so NaNs never win and
    infinities stop at that start (min of {inf} is 3.40282347e+38); between 0.0 and -0.0 the
    first met wins, and -0.0 comes first in Soufflé's order: max ranks it above 0.0."""
    nan = (v < _KEY_LOWEST - np.uint32(1)) | (v > _KEY_MAX + np.uint32(1))
    start = _KEY_MAX if func == "min" else _KEY_LOWEST
    beyond = v > _KEY_MAX if func == "min" else v < _KEY_LOWEST
    v = xp.where(nan | beyond, start, v)
    if func == "max":
        v = xp.where(v == _ZERO, _NEGATIVE_ZERO, xp.where(v == _NEGATIVE_ZERO, _ZERO, v))
    return v


def _scan_key(column: Any, type: str, xp: Any) -> Any:
    """Encoded values -> keys in Soufflé's index order, which compares every value as a signed
    int: unsigned from 2^31 first, floats as their bits (-0.0 first, then the negatives by
    growing magnitude)."""
    if type == "float":
        return float_bits(column, xp) ^ SIGN
    return column ^ SIGN if type == "unsigned" else column


def _float_sum(g: Any, v: Any, keys: list[Any], n_groups: int, mean: bool, xp: Any, compiled: bool) -> Any:
    """Per group, Soufflé's float sum or mean: ``res = 0.0f; res += x`` over the group's
    bindings in the order of ``keys`` (Soufflé's scan order, ``AggregateStep.scan``), then the
    target's; in another order a long sum can differ in its last digits, as Soufflé's own does
    between two index orders. The mean divides that by the count as a float, which stops
    growing at 2^24 as Soufflé's does. Each group is added as C does it, one value after the
    other in float: groups of about one size side by side, one step of all of them at a time
    (``compiled``: NumPy's own loop takes the steps)."""
    raw = float_bits(v, xp)
    order = xp.lexsort(xp.stack([raw ^ SIGN, *keys[::-1], g.astype(xp.uint32)]))
    values, groups = raw[order].view(xp.float32), g[order].astype(xp.int64)
    sizes = xp.bincount(groups, minlength=n_groups)
    rank = xp.arange(groups.shape[0]) - (xp.cumsum(sizes) - sizes)[groups]
    size_class = xp.floor(xp.log2(xp.maximum(sizes, 1))).astype(xp.int64)
    sums = xp.zeros(n_groups, dtype=xp.float32)
    with np.errstate(all="ignore"):  # overflow to an infinity, inf - inf: as C's float adds
        for c in range(int(size_class.max()) + 1 if n_groups else 0):
            members = xp.nonzero((size_class == c) & (sizes > 0))[0]
            if not members.shape[0]:
                continue
            column = xp.full(n_groups, -1, dtype=xp.int64)
            column[members] = xp.arange(members.shape[0])
            mine = column[groups] >= 0
            # Row 0 is Soufflé's starting 0.0; -0.0 pads (x + -0.0 is x, -0.0 included).
            steps = xp.full((2 ** (c + 1), members.shape[0]), -0.0, dtype=xp.float32)
            steps[0] = 0.0
            steps[rank[mine] + 1, column[groups[mine]]] = values[mine]
            if compiled:
                sums[members] = np.add.accumulate(steps, axis=0)[-1]
            else:
                total = steps[0]
                for row in steps[1:]:
                    total = total + row
                sums[members] = total
        if mean:
            sums = sums / xp.maximum(xp.minimum(sizes, 2**24), 1).astype(xp.float32)
    return encode_float(sums, xp)


def _group(b: Bindings, grouping: tuple[str, ...], xp: Any) -> tuple[Any, Bindings, int]:
    """(group id per outer row, one row of grouping columns per group, number of groups)."""
    if not grouping:
        return xp.zeros(b.n, dtype=xp.int64), Bindings.unit(xp), 1
    table = xp.stack([b.col(v) for v in grouping], axis=1)
    order = xp.lexsort(table.T[::-1])
    table = table[order]
    first = xp.ones(b.n, dtype=bool)
    first[1:] = xp.any(table[1:] != table[:-1], axis=1)
    gid = xp.empty(b.n, dtype=xp.int64)
    gid[order] = xp.cumsum(first) - 1
    starts = xp.nonzero(first)[0]
    return gid, Bindings(table[starts], grouping), int(starts.shape[0])


Executor = Callable[[Operators, Bindings, Any, "Layout | None"], Iterator[Bindings]]
EXECUTORS: dict[type, Executor] = {
    JoinStep: join,
    FilterStep: filter_rows,
    AssignStep: assign,
    GenerateStep: generate,
    UnpackStep: unpack_record,
    NegationStep: anti_join,
    AggregateStep: aggregate,
}
