"""Every functor a term may call, in one signature table (Soufflé's ``IntrinsicFunctor`` is the
model): its parameter and result types and how it evaluates. The checker types calls and folds
constant ones through it, the planner and the evaluator read it, so a functor is added here
once and means the same everywhere.

Types in a signature are base types or ``T``, the call's own numeric type (number or unsigned,
resolved by the checker): the arithmetic operators take and give ``T``. Evaluation works on
encoded columns (uint32, see values.py) of one array namespace, so constant folding (NumPy,
one row) and evaluation (NumPy or CuPy, many rows) run the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.values import SIGN, SymbolTable, encode_scalar, parse_number, power

POWER_UNDEFINED = (
    "unsigned power a ^ b: the result lies between 2^53 and 2^63 and within 0.05 of halfway "
    "between two doubles, where Soufflé's value (the low 32 bits of the C library's pow) depends "
    "on how that library rounds"
)
POLYMORPHIC = "T"
ANY = "any"  # a parameter of any type (ord's): the checker types the argument by itself


class SymbolValues:
    """Per-symbol-id values the symbol functors gather from, extended as the table grows: text
    length in UTF-8 bytes, the number ``to_number`` reads and whether it reads one (``current``,
    in the array namespace of the run), the texts (``texts``, on the host), the text order
    (``ranks``). The one cache of them; each part is computed only when a functor reads it."""

    def __init__(self, symbols: SymbolTable, xp: Any):
        self.symbols, self.xp = symbols, xp
        self.lengths = xp.zeros(0, dtype=xp.int64)
        self.numbers = xp.zeros(0, dtype=xp.int64)
        self.valid = xp.zeros(0, dtype=bool)
        self._texts: list[Any] = []  # every symbol's bytes (pyarrow), in id order, in chunks
        self._texts_held = 0  # how many symbols _texts covers
        self._ranks: tuple[int, Any] = (-1, None)  # (table size, rank per id) when last computed

    def current(self) -> SymbolValues:
        new = self.symbols.strings_from(int(self.lengths.shape[0]))
        if new:
            parsed = [parse_number(s) for s in new]
            xp = self.xp
            self.lengths = xp.concatenate(
                [
                    self.lengths,
                    xp.asarray(np.fromiter((len(s.encode("utf-8", "surrogateescape")) for s in new), np.int64, len(new))),
                ]
            )
            self.numbers = xp.concatenate([self.numbers, xp.asarray(np.array([p or 0 for p in parsed], np.int64))])
            self.valid = xp.concatenate([self.valid, xp.asarray(np.array([p is not None for p in parsed], bool))])
        return self

    def texts(self, ids: np.ndarray) -> Any:
        """The texts of host ``ids``, one per row (a pyarrow binary array)."""
        text = _text()
        if self._texts_held < len(self.symbols):
            self._texts.append(text.texts(self.symbols.strings_from(self._texts_held)))
            self._texts_held = len(self.symbols)
        return text.take(self._texts, ids)

    def ranks(self) -> Any:
        """rank[id]: the position of the symbol's text in text order (what ``<`` compares);
        the ids themselves until strings made while evaluating join the table."""
        if self._ranks[0] != len(self.symbols):
            self._ranks = (len(self.symbols), self.xp.asarray(self.symbols.text_rank()))
        return self._ranks[1]


@dataclass
class Context:
    """What a functor's evaluation may use: the array namespace, the run's symbols."""

    xp: Any
    symbols: SymbolTable
    values: SymbolValues | None = None

    def symbol_values(self) -> SymbolValues:
        """The per-symbol caches, each brought up to date when read."""
        if self.values is None:
            self.values = SymbolValues(self.symbols, self.xp)
        return self.values


Apply = Callable[[ir.Call, list[Any], Context], Any]
# A functor that makes symbols: its arguments' distinct rows (host arrays) -> the texts made.
Make = Callable[[ir.Call, list[np.ndarray], Context], list[str]]


@dataclass(frozen=True)
class Signature:
    """A functor: ``params`` (one type per argument; with ``variadic`` the last repeats, at
    least ``len(params)`` arguments), ``result`` and ``apply(call, encoded columns, context)``
    giving the encoded result column (raising ``DatalogError`` at ``call.pos`` where Soufflé
    stops the run). A functor that ``makes`` symbols has its texts computed by ``makes``; every
    shard must have agreed on their ids before ``apply`` looks them up (execution/terms.py,
    ``Terms.made``)."""

    name: str
    params: tuple[str, ...]
    result: str
    apply: Apply
    variadic: bool = False
    makes: Make | None = None  # set for the functors that make symbols (cat, substr, to_string)
    counter: bool = False  # autoinc(): a number no other call in the run gives

    @property
    def agreed(self) -> bool:
        """Whether every shard must agree on its values, at a cut of the pipeline (planned as
        an ``AGREE`` step: execution/terms.py, ``Terms.made``)."""
        return self.makes is not None or self.counter

    def param(self, i: int) -> str:
        return self.params[min(i, len(self.params) - 1)]

    @property
    def polymorphic(self) -> bool:
        return self.result == POLYMORPHIC

    def accepts(self, n: int) -> bool:
        return n >= len(self.params) if self.variadic else n == len(self.params)


def decode_int(encoded: Any, type: str, xp: Any) -> Any:
    """Encoded uint32 -> int64 value (number) or uint64 value (unsigned) for arithmetic."""
    if type == "number":
        return (encoded ^ SIGN).view(xp.int32).astype(xp.int64)
    return encoded.astype(xp.uint64)


def encode_int(values: Any, type: str, xp: Any) -> Any:
    """Wide integer results -> encoded uint32, wrapping at 32 bits (C semantics)."""
    low = (values & 0xFFFFFFFF).astype(xp.uint32)
    return low ^ SIGN if type == "number" else low


def _arithmetic(compute: Callable[[ir.Call, Any, Any, Any], Any]) -> Apply:
    """A ``T`` x ``T`` -> ``T`` operator folded left over its arguments, on decoded values."""

    def apply(call: ir.Call, args: list[Any], ctx: Context) -> Any:
        xp = ctx.xp
        values = [decode_int(a, call.type, xp) for a in args]
        result = values[0]
        for value in values[1:]:
            result = compute(call, result, value, xp)
        return encode_int(result, call.type, xp)

    return apply


def _min_max(compute: Callable[[ir.Call, Any, Any, Any], Any]) -> Apply:
    """min and max: on numbers arithmetic, on symbols by text order (Soufflé's SMIN, SMAX)."""
    numeric = _arithmetic(compute)

    def apply(call: ir.Call, args: list[Any], ctx: Context) -> Any:
        if call.type != "symbol":
            return numeric(call, args, ctx)
        ranks = ctx.symbol_values().ranks()
        result = args[0]
        for other in args[1:]:
            take = ranks[other] < ranks[result] if call.name == "min" else ranks[other] > ranks[result]
            result = ctx.xp.where(take, other, result)
        return result

    return apply


def _divide(call: ir.Call, a: Any, b: Any, xp: Any) -> Any:
    if bool((b == 0).any()):
        raise DatalogError(call.pos, f"division by zero in '{call.name}'")
    if call.type != "number":
        return a // b if call.name == "/" else a % b
    # C: the quotient truncates toward zero, the remainder has the dividend's sign.
    q = xp.abs(a) // xp.abs(b) * xp.where((a < 0) != (b < 0), -1, 1)
    return q if call.name == "/" else a - b * q


def _power(call: ir.Call, a: Any, b: Any, xp: Any) -> Any:
    values, undefined = power(a, b, call.type, xp)
    if bool(undefined.any()):
        raise DatalogError(call.pos, POWER_UNDEFINED)
    return values


def _shift(call: ir.Call, a: Any, b: Any, xp: Any) -> Any:
    """Soufflé's shifts on 32-bit values, the count taken mod 32 as the CPU does; ``bshr`` is
    arithmetic on numbers, ``bshru`` logical on the 32-bit pattern."""
    count = (b & 31).astype(a.dtype)
    if call.name == "bshl":
        return a << count
    if call.name == "bshru":
        return (a & 0xFFFFFFFF) >> count
    return a >> count


def _logical(test: Callable[[Any, Any], Any]) -> Callable[[ir.Call, Any, Any, Any], Any]:
    """land, lor, lxor: 1 or 0 from whether each side is non-zero."""
    return lambda call, a, b, xp: test(a != 0, b != 0).astype(a.dtype)


def _unary(compute: Callable[[Any], Any]) -> Apply:
    """A ``T`` -> ``T`` operator on the decoded value (bnot, lnot)."""

    def apply(call: ir.Call, args: list[Any], ctx: Context) -> Any:
        value = decode_int(args[0], call.type, ctx.xp)
        return encode_int(compute(value), call.type, ctx.xp)

    return apply


def _strlen(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    return encode_int(ctx.symbol_values().current().lengths[args[0]], "number", ctx.xp)


def _to_number(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    ids = args[0]
    values = ctx.symbol_values().current()
    bad = ~values.valid[ids]
    if bool(bad.any()):
        first = int(ctx.xp.nonzero(bad)[0][0])
        text = ctx.symbols.lookup(np.asarray([int(ids[first])]))[0]
        raise DatalogError(call.pos, f'to_number: "{text}" is not a number (Soufflé stops here too)')
    return encode_int(values.numbers[ids], "number", ctx.xp)


def _text() -> Any:
    """engine/text.py, imported on first use: it brings pyarrow (65 MB, 60 ms of start-up) that
    programs without text functors never need."""
    from dask_datalog.engine import text

    return text


def host(column: Any) -> np.ndarray:
    """A column on the host (CuPy arrays copy, NumPy ones do not): texts live there."""
    return column.get() if hasattr(column, "get") else np.asarray(column)


def _cat(call: ir.Call, args: list[np.ndarray], ctx: Context) -> list[str]:
    text = _text()
    values = ctx.symbol_values()
    return text.byte_strings(text.concatenate([values.texts(a) for a in args]))


def _substr(call: ir.Call, args: list[np.ndarray], ctx: Context) -> list[str]:
    text = _text()
    strings = ctx.symbol_values().texts(args[0])
    start, length = (decode_int(a, "number", np) for a in args[1:])
    result, bad = text.substring(strings, start, length)
    if bad.any():
        text.warn_substr(strings, start, length, bad)
    return text.byte_strings(result)


def _to_string(call: ir.Call, args: list[np.ndarray], ctx: Context) -> list[str]:
    return _text().to_string(decode_int(args[0], "number", np)).to_pylist()


def _made(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """The ids of the texts a symbol-making functor makes, which the run's table already holds
    (agreed by every shard before this step: ``Terms.made``)."""
    made = SIGNATURES[call.name].makes
    assert made is not None
    strings = made(call, [host(a) for a in args], ctx)
    return ctx.xp.asarray(ctx.symbols.ids_of(strings))


def _ord(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """Soufflé's ``ord``: a symbol's or a record's id as a number (ids: docs/architecture.md,
    "Symbols"; the checker leaves ord of a number as the number)."""
    return encode_int(args[0].astype(ctx.xp.int64), "number", ctx.xp)


def _text_rank(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """The position of a symbol's text in text order: ``<`` on symbols compares these."""
    return encode_int(ctx.symbol_values().ranks()[args[0]].astype(ctx.xp.int64), "number", ctx.xp)


# Soufflé's binary constraints on texts, written as functors, and their negations: comparison
# operators of ``ir.Comparison`` evaluated on texts (execution/terms.py).
TEXT_CONSTRAINTS = frozenset({"match", "contains", "not_match", "not_contains"})


def distinct_rows(columns: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """(the distinct rows of host uint32 ``columns``, column by column; each row's index among
    them): text functors work once per distinct argument row."""
    if len(columns) == 1:
        values, inverse = np.unique(columns[0], return_inverse=True)
        return [values], inverse.reshape(-1)
    rows, inverse = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    return [rows[:, j] for j in range(len(columns))], inverse.reshape(-1)


def text_holds(op: str, left: Any, right: Any, ctx: Context) -> Any:
    """The mask of a text constraint (``TEXT_CONSTRAINTS``) over two symbol id columns:
    ``contains(a, b)``, a occurs in b; ``match(p, s)``, all of s matches the pattern p (once per
    distinct pattern: patterns are nearly always constants)."""
    text = _text()
    (lefts, rights), inverse = distinct_rows([host(left), host(right)])
    values = ctx.symbol_values()
    negated = op.startswith("not_")
    if op.endswith("contains"):
        holds = text.contains(values.texts(lefts), values.texts(rights)) != negated
    else:
        holds = np.zeros(len(lefts), dtype=bool)  # a pattern std::regex refuses: neither holds
        patterns, which = np.unique(lefts, return_inverse=True)
        for k, pattern in enumerate(text.byte_strings(values.texts(patterns))):
            rows = np.nonzero(which.reshape(-1) == k)[0]
            matched = text.match(pattern, values.texts(rights[rows]))
            if matched is not None:
                holds[rows] = matched != negated
    return ctx.xp.asarray(holds[inverse])


TEXT_RANK = "$text_rank"  # not a name a program can write: the checker's rewrite of symbol order
T = POLYMORPHIC
SIGNATURES: dict[str, Signature] = {
    s.name: s
    for s in (
        Signature("+", (T, T), T, _arithmetic(lambda c, a, b, xp: a + b)),
        Signature("-", (T, T), T, _arithmetic(lambda c, a, b, xp: a - b)),
        Signature("*", (T, T), T, _arithmetic(lambda c, a, b, xp: a * b)),
        Signature("/", (T, T), T, _arithmetic(_divide)),
        Signature("%", (T, T), T, _arithmetic(_divide)),
        Signature("^", (T, T), T, _arithmetic(_power)),
        Signature("min", (T, T), T, _min_max(lambda c, a, b, xp: xp.minimum(a, b)), variadic=True),
        Signature("max", (T, T), T, _min_max(lambda c, a, b, xp: xp.maximum(a, b)), variadic=True),
        Signature("band", (T, T), T, _arithmetic(lambda c, a, b, xp: a & b)),
        Signature("bor", (T, T), T, _arithmetic(lambda c, a, b, xp: a | b)),
        Signature("bxor", (T, T), T, _arithmetic(lambda c, a, b, xp: a ^ b)),
        Signature("bshl", (T, T), T, _arithmetic(_shift)),
        Signature("bshr", (T, T), T, _arithmetic(_shift)),
        Signature("bshru", (T, T), T, _arithmetic(_shift)),
        Signature("land", (T, T), T, _arithmetic(_logical(lambda a, b: a & b))),
        Signature("lor", (T, T), T, _arithmetic(_logical(lambda a, b: a | b))),
        Signature("lxor", (T, T), T, _arithmetic(_logical(lambda a, b: a != b))),
        Signature("bnot", (T,), T, _unary(lambda a: ~a)),
        Signature("lnot", (T,), T, _unary(lambda a: (a == 0).astype(a.dtype))),
        Signature("strlen", ("symbol",), "number", _strlen),
        Signature("to_number", ("symbol",), "number", _to_number),
        Signature("ord", (ANY,), "number", _ord),
        Signature(TEXT_RANK, ("symbol",), "number", _text_rank),
        Signature("cat", ("symbol",), "symbol", _made, variadic=True, makes=_cat),
        Signature("substr", ("symbol", "number", "number"), "symbol", _made, makes=_substr),
        Signature("to_string", ("number",), "symbol", _made, makes=_to_string),
        Signature("autoinc", (), "number", _made, counter=True),
    )
}


def signature(name: str) -> Signature:
    return SIGNATURES[name]


def apply(call: ir.Call, args: Sequence[Any], ctx: Context) -> Any:
    """The encoded result column of ``call`` over its arguments' encoded columns."""
    return SIGNATURES[call.name].apply(call, list(args), ctx)


def fold(call: ir.Call) -> ir.Const:
    """A call whose arguments are all constants, evaluated once (the same code as a rule's
    evaluation, on one row): facts hold constants only."""
    symbols = SymbolTable()
    columns = []
    for arg in call.args:
        const = fold(arg) if isinstance(arg, ir.Call) else arg
        assert isinstance(const, ir.Const), f"fold: {arg!r} is not constant"
        value = symbols.intern(str(const.value)) if const.type == "symbol" else int(const.value)
        columns.append(np.array([encode_scalar(value, const.type)], dtype=np.uint32))
    made = SIGNATURES[call.name].makes
    if made is not None:
        return ir.Const(made(call, columns, Context(np, symbols))[0], "symbol", call.pos)
    result = apply(call, columns, Context(np, symbols))
    if call.type == "symbol":
        return ir.Const(symbols.strings_from(int(result[0]))[0], "symbol", call.pos)
    return ir.Const(decode_scalar(int(result[0]), call.type), call.type, call.pos)


def foldable(call: ir.Call) -> bool:
    """Whether ``fold`` gives the call's value in every run: not so for what depends on the
    run's symbol ids (``ord``, symbol order) or on its counter (``autoinc``), which a fact then
    computes when the run starts."""
    return not any(c.name in ("ord", TEXT_RANK, "autoinc") for c in ir.calls(call))


def decode_scalar(encoded: int, type: str) -> int:
    if type == "number":
        value = encoded ^ 0x80000000
        return value - (1 << 32) if value >= 1 << 31 else value
    return encoded
