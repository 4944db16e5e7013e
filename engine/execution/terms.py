"""Terms and comparisons evaluated over a binding table: encoded uint32 columns in, an encoded
column (or a boolean mask) out. Functor calls go through the signature table (functors.py),
the same code constant folding runs; records through the run's record table (values.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dask_datalog.engine import functors
from dask_datalog.engine.execution.bindings import Bindings
from dask_datalog.engine.ir import Call, Comparison, Const, Record, Term, Var, Wildcard
from dask_datalog.engine.values import Made, SymbolTable, encode_scalar

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class Terms:
    """One shard's term evaluator: its array namespace and symbol table (constants are interned
    in it; the symbol functors gather from per-id values cached once in ``functors.Context``)."""

    def __init__(self, xp: Any, symbols: SymbolTable, user: Mapping[str, functors.UserFunctor] | None = None):
        self.xp = xp
        self.symbols = symbols
        self.context = functors.Context(xp, symbols, user=user or {})
        self.counter = 0  # autoinc()'s next value, the same on every shard

    def column(self, t: Term, b: Bindings) -> Any:
        """The encoded uint32 column of ``t`` over the rows of ``b``."""
        if isinstance(t, Var):
            return b.col(t.name)
        if isinstance(t, Const):
            value = self.symbols.id_of(str(t.value)) if t.type == "symbol" else int(t.value)
            return self.xp.full(b.n, encode_scalar(value, t.type), dtype=self.xp.uint32)
        if isinstance(t, Call) and not t.args:  # one value (a user functor's), the same on every row
            return self.xp.repeat(functors.apply(t, [], self.context), b.n)
        if isinstance(t, Call):
            return functors.apply(t, [self.column(a, b) for a in t.args], self.context)
        if isinstance(t, Record):
            return self.xp.asarray(self.symbols.records.find(t.kinds, self._elements(t, b)))
        raise AssertionError(f"term {t!r} cannot be evaluated (wildcards are never read)")

    def _elements(self, record: Record, b: Bindings) -> np.ndarray:
        """The (rows, elements) host array of a record's element columns."""
        columns = [functors.host(self.column(a, b)) for a in record.args]
        return np.stack(columns, axis=1) if columns else np.zeros((b.n, 0), dtype=np.uint32)

    def holds(self, c: Comparison, b: Bindings) -> Any:
        """Boolean mask of the rows where the comparison holds (encoded order is value order;
        symbols are ordered by text through ``functors.TEXT_RANK`` calls the checker added;
        records are compared element by element, not looked up; floats compare as floats:
        0.0 = -0.0, a NaN is unordered and equals nothing)."""
        if c.op in functors.TEXT_CONSTRAINTS:
            return functors.text_holds(c.op, self.column(c.left, b), self.column(c.right, b), self.context)
        if isinstance(c.left, Record) or isinstance(c.right, Record):
            equal = self._equal(c.left, c.right, b)
            return equal if c.op == "=" else ~equal
        left, right = self.column(c.left, b), self.column(c.right, b)
        if c.type == "float":
            left, right = functors.decode_float(left, self.xp), functors.decode_float(right, self.xp)
        return _COMPARE[c.op](left, right)

    def _equal(self, left: Term, right: Term, b: Bindings) -> Any:
        """Where two terms of one type are equal, records structurally (``_`` matches anything):
        a record matched against a value unpacks the value."""
        if isinstance(left, Wildcard) or isinstance(right, Wildcard):
            return self.xp.ones(b.n, dtype=bool)
        if isinstance(left, Record) and isinstance(right, Record):
            equal = self.xp.ones(b.n, dtype=bool)
            for x, y in zip(left.args, right.args):
                equal &= self._equal(x, y, b)
            return equal
        if isinstance(left, Record):
            left, right = right, left
        if not isinstance(right, Record):
            return self.column(left, b) == self.column(right, b)
        found, elements = self.symbols.records.unpack(right.kinds, self.column(left, b), self.xp)
        equal = found.copy()
        rows = self.xp.nonzero(found)[0]
        names = tuple(f"$equal{b.table.shape[1] + j}" for j in range(len(right.args)))  # unique at any depth
        inner = Bindings(self.xp.concatenate([b.table[rows], elements], axis=1), b.names + names)
        for name, arg in zip(names, right.args):
            equal[rows] &= self._equal(Var(name), arg, inner)
        return equal

    def counted(self, b: Bindings | None, agree_count: Callable[[int], tuple[int, int]]) -> Any | None:
        """``autoinc()`` over the rows of ``b``: the run's next numbers, this shard's rows after
        those of the shards before it (``agree_count``, a collective: the count of rows before
        this shard's and of all shards' together)."""
        n = 0 if b is None else b.n
        before, total = agree_count(n)
        first = self.counter + before
        self.counter += total
        if b is None:
            return None
        return functors.encode_int(self.xp.arange(first, first + n, dtype=self.xp.int64), "number", self.xp)

    def made(
        self,
        term: Call | Record,
        b: Bindings | None,
        agree: Callable[[Made], Made],
        agree_count: Callable[[int], tuple[int, int]],
    ) -> Any | None:
        """The values of a ``term`` every shard agrees on over the rows of ``b`` (None: this
        shard has no rows): ``autoinc`` (``counted``), or the ids of what a symbol-making call
        or a record makes. What is made that the table lacks is agreed first (``agree``, a
        collective every shard calls, rows or not) and appended in the agreed order, so every
        shard gives a text or a record the same id; texts are made once per distinct row of
        arguments."""
        if isinstance(term, Record):
            return self._made_records(term, b, agree)
        if functors.of(term).counter:
            return self.counted(b, agree_count)
        made = functors.of(term).makes
        assert made is not None, f"{term.name} makes no symbols"
        strings: list[str] = []
        inverse = None
        if b is not None and b.n:
            columns = [functors.host(self.column(a, b)) for a in term.args]
            rows, inverse = functors.distinct_rows(columns) if columns else ([], np.zeros(b.n, dtype=np.intp))
            strings = made(term, rows, self.context)
        new = agree(self.symbols.missing(strings))
        assert isinstance(new, list)
        self.symbols.append(new)
        if inverse is None:
            return None
        return self.xp.asarray(self.symbols.ids_of(strings)[inverse])

    def _made_records(self, record: Record, b: Bindings | None, agree: Callable[[Made], Made]) -> Any | None:
        records = self.symbols.records
        elements = self._elements(record, b) if b is not None else np.zeros((0, len(record.kinds)), dtype=np.uint32)
        new = agree(records.missing(record.kinds, elements))
        assert isinstance(new, np.ndarray)
        records.append(record.kinds, new)
        if b is None or not b.n:
            return None
        return self.xp.asarray(records.find(record.kinds, elements))
