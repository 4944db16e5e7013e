"""Terms and comparisons evaluated over a binding table: encoded uint32 columns in, an encoded
column (or a boolean mask) out. Functor calls go through the signature table (functors.py),
the same code constant folding runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dask_datalog.engine import functors
from dask_datalog.engine.execution.bindings import Bindings
from dask_datalog.engine.ir import Call, Comparison, Const, Term, Var
from dask_datalog.engine.values import SymbolTable, encode_scalar

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

    def __init__(self, xp: Any, symbols: SymbolTable):
        self.xp = xp
        self.symbols = symbols
        self.context = functors.Context(xp, symbols)
        self.counter = 0  # autoinc()'s next value, the same on every shard

    def column(self, t: Term, b: Bindings) -> Any:
        """The encoded uint32 column of ``t`` over the rows of ``b``."""
        if isinstance(t, Var):
            return b.col(t.name)
        if isinstance(t, Const):
            value = self.symbols.id_of(str(t.value)) if t.type == "symbol" else int(t.value)
            return self.xp.full(b.n, encode_scalar(value, t.type), dtype=self.xp.uint32)
        if isinstance(t, Call):
            return functors.apply(t, [self.column(a, b) for a in t.args], self.context)
        raise AssertionError(f"term {t!r} cannot be evaluated (wildcards are never read)")

    def holds(self, c: Comparison, b: Bindings) -> Any:
        """Boolean mask of the rows where the comparison holds (encoded order is value order;
        symbols are ordered by text through ``functors.TEXT_RANK`` calls the checker added)."""
        if c.op in functors.TEXT_CONSTRAINTS:
            return functors.text_holds(c.op, self.column(c.left, b), self.column(c.right, b), self.context)
        return _COMPARE[c.op](self.column(c.left, b), self.column(c.right, b))

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
        call: Call,
        b: Bindings | None,
        agree: Callable[[list[str]], list[str]],
        agree_count: Callable[[int], tuple[int, int]],
    ) -> Any | None:
        """The values of a ``call`` every shard agrees on over the rows of ``b`` (None: this
        shard has no rows): ``autoinc`` (``counted``), or the symbol ids of what a symbol-making
        call makes. The texts made that the table lacks are agreed first (``agree``, a collective
        every shard calls, rows or not) and appended in the agreed order, so every shard gives
        a text the same id; texts are made once per distinct row of arguments."""
        if functors.signature(call.name).counter:
            return self.counted(b, agree_count)
        made = functors.signature(call.name).makes
        assert made is not None, f"{call.name} makes no symbols"
        strings: list[str] = []
        inverse = None
        if b is not None and b.n:
            rows, inverse = functors.distinct_rows([functors.host(self.column(a, b)) for a in call.args])
            strings = made(call, rows, self.context)
        self.symbols.append(agree(self.symbols.missing(strings)))
        if inverse is None:
            return None
        return self.xp.asarray(self.symbols.ids_of(strings)[inverse])
