"""Every functor a term may call, in one signature table (Soufflé's ``IntrinsicFunctor`` is the
model): its parameter and result types and how it evaluates. The checker types calls and folds
constant ones through it, the planner and the evaluator read it, so a functor is added here
once and means the same everywhere.

Types in a signature are base types or ``T``, the call's own numeric type (one of the
signature's ``types``, resolved by the checker): the arithmetic operators take and give ``T``.
The conversions ``to_float``, ``to_number``, ``to_unsigned`` and ``to_string`` and the cast
``as`` take any type: the checker picks the functor that computes them by the argument's type (``CONVERSIONS``,
``CASTS``), as Soufflé picks its I2F, F2I, ... overloads. ``range`` is a generator (one result
per value). Evaluation works on encoded columns (uint32, see values.py) of one array
namespace, so constant folding (NumPy, one row) and evaluation (NumPy or CuPy, many rows) run
the same code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dask_datalog.engine import ir, text
from dask_datalog.engine import texts as tx
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.storage.hisa import expand_runs_xp
from dask_datalog.engine.values import (
    FLOAT_NAN,
    INT32_MIN,
    SIGN,
    SymbolTable,
    decode_scalar,
    encode_scalar,
    float_bits,
    float_key,
    parse_float,
    parse_number,
    parse_unsigned,
    power,
)

POWER_UNDEFINED = (
    "unsigned power a ^ b: the result lies between 2^53 and 2^63 and within 0.05 of halfway "
    "between two doubles, where Soufflé's value (the low 32 bits of the C library's pow) depends "
    "on how that library rounds"
)
POLYMORPHIC = "T"
INTEGRAL = ("number", "unsigned")
NUMERIC = ("number", "unsigned", "float")
ANY = "any"  # a parameter of any type (ord's): the checker types the argument by itself


class SymbolValues:
    """Per-symbol-id values the symbol functors gather from, extended as the table grows: text
    length in UTF-8 bytes, the number ``to_number`` reads and whether it reads one (``current``,
    in the array namespace of the run), the texts (``texts``, on the host: the table's own), the text order
    (``ranks``), what to_float and to_unsigned read (``read``). The one cache of them; each part is computed only when a functor reads it."""

    def __init__(self, symbols: SymbolTable, xp: Any):
        self.symbols, self.xp = symbols, xp
        self.lengths = xp.zeros(0, dtype=xp.int64)
        self.numbers = xp.zeros(0, dtype=xp.int64)
        self.valid = xp.zeros(0, dtype=bool)
        self._ranks: tuple[int, Any] = (-1, None)  # (table size, rank per id) when last computed
        self._readings: dict[Callable[[str], int | None], tuple[Any, Any]] = {}

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

    def texts(self, ids: np.ndarray) -> tx.Texts:
        """The texts of host ``ids``, one per row."""
        return self.symbols.texts_of(ids)

    def ranks(self) -> Any:
        """rank[id]: the position of the symbol's text in text order (what ``<`` compares);
        the ids themselves until strings made while evaluating join the table."""
        if self._ranks[0] != len(self.symbols):
            self._ranks = (len(self.symbols), self.xp.asarray(self.symbols.text_rank()))
        return self._ranks[1]

    def read(self, parse: Callable[[str], int | None]) -> tuple[Any, Any]:
        """(value, valid) per symbol id of what ``parse`` reads in each string (to_float's and
        to_unsigned's readers), extended as the table grows: one parse per string, not per row."""
        xp = self.xp
        values, valid = self._readings.get(parse, (xp.zeros(0, dtype=xp.uint32), xp.zeros(0, dtype=bool)))
        new = self.symbols.strings_from(int(values.shape[0]))
        if new:
            parsed = [parse(text) for text in new]
            values = xp.concatenate([values, xp.asarray(np.array([p or 0 for p in parsed], np.uint32))])
            valid = xp.concatenate([valid, xp.asarray(np.array([p is not None for p in parsed], bool))])
            self._readings[parse] = (values, valid)
        return values, valid


class UserFunctor(Protocol):
    """A bound user-defined functor (engine/user_functors.py): its values over the distinct
    argument rows ``args`` (host uint32 columns, encoded; ``n`` rows, which a functor without
    arguments needs), encoded uint32, or the texts it makes for a symbol result."""

    def __call__(self, call: ir.Call, args: list[np.ndarray], n: int, ctx: Context) -> np.ndarray | list[str]: ...


@dataclass
class Context:
    """What a functor's evaluation may use: the array namespace, the run's symbols, the
    program's user-defined functors bound to their implementations (by name)."""

    xp: Any
    symbols: SymbolTable
    values: SymbolValues | None = None
    user: Mapping[str, UserFunctor] = field(default_factory=dict)

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
    least ``len(params)`` arguments; the last ``optional`` may be left out), ``result``, the
    types ``T`` may take, and ``apply(call, encoded columns, context)`` giving the encoded
    result column (raising ``DatalogError`` at ``call.pos`` where Soufflé stops the run). The
    generator ``range`` gives (for each result, the row it comes from; the encoded results). A
    functor that ``makes`` symbols has its texts computed by ``makes``; every shard must have
    agreed on their ids before ``apply`` looks them up (execution/terms.py, ``Terms.made``)."""

    name: str
    params: tuple[str, ...]
    result: str
    apply: Apply
    variadic: bool = False
    types: tuple[str, ...] = INTEGRAL
    optional: int = 0
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
        if self.variadic:
            return n >= len(self.params)
        return len(self.params) - self.optional <= n <= len(self.params)


def decode_int(encoded: Any, type: str, xp: Any) -> Any:
    """Encoded uint32 -> int64 value (number) or uint64 value (unsigned) for arithmetic."""
    if type == "number":
        return (encoded ^ SIGN).view(xp.int32).astype(xp.int64)
    return encoded.astype(xp.uint64)


def encode_int(values: Any, type: str, xp: Any) -> Any:
    """Wide integer results -> encoded uint32, wrapping at 32 bits (C semantics)."""
    low = (values & 0xFFFFFFFF).astype(xp.uint32)
    return low ^ SIGN if type == "number" else low


def decode_float(encoded: Any, xp: Any) -> Any:
    """Encoded uint32 -> float32 values."""
    return float_bits(encoded, xp).view(xp.float32)


def encode_float(values: Any, xp: Any) -> Any:
    """float32 values -> encoded uint32."""
    return float_key(values.astype(xp.float32).view(xp.uint32), xp)


_QUIET = np.uint32(0x00400000)
_X86_NAN = np.uint32(FLOAT_NAN) | SIGN  # what SSE makes of 0/0, inf - inf, ...


def _x86_nan(result: Any, a: Any, b: Any, xp: Any) -> Any:
    """C's ``a op b`` on floats as x86 (SSE) computes it, where the result is a NaN: ``a`` if
    it is a NaN, else ``b`` if it is one, quieted; else x86's default NaN (printed ``-nan``).
    NumPy or the GPU may pick another NaN; Soufflé prints the sign."""
    bits = result.view(xp.uint32)
    made = xp.isnan(result)
    if not bool(made.any()):
        return bits
    a_bits, b_bits = a.view(xp.uint32), b.view(xp.uint32)
    nan = xp.where(xp.isnan(a), a_bits | _QUIET, xp.where(xp.isnan(b), b_bits | _QUIET, _X86_NAN))
    return xp.where(made, nan, bits)


def _float_power(a: Any, b: Any, xp: Any) -> Any:
    """C's powf: computed in double and rounded once, as glibc's powf does (it is within half
    an ulp but for results this close to halfway between two floats)."""
    return (a.astype(xp.float64) ** b.astype(xp.float64)).astype(xp.float32)


_FLOAT_OPS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "+": lambda a, b, xp: a + b,
    "-": lambda a, b, xp: a - b,
    "*": lambda a, b, xp: a * b,
    "/": lambda a, b, xp: a / b,  # by zero: an infinity or NaN, no error (IEEE)
    "^": _float_power,
    # std::min and std::max: the first argument unless the second is strictly beyond it, so a
    # NaN is kept first and skipped second, and -0.0 and 0.0 keep their order.
    "min": lambda a, b, xp: xp.where(b < a, b, a),
    "max": lambda a, b, xp: xp.where(a < b, b, a),
}


def _float_fold(call: ir.Call, args: list[Any], xp: Any) -> Any:
    """A float operator folded left over its arguments' encoded columns."""
    result = decode_float(args[0], xp)
    with np.errstate(all="ignore"):  # overflow, 0/0: IEEE's infinities and NaNs, as in C
        for arg in args[1:]:
            value = decode_float(arg, xp)
            result = _x86_nan(_FLOAT_OPS[call.name](result, value, xp), result, value, xp).view(xp.float32)
    return float_key(result.view(xp.uint32), xp)


def _arithmetic(compute: Callable[[ir.Call, Any, Any, Any], Any]) -> Apply:
    """A ``T`` x ``T`` -> ``T`` operator folded left over its arguments, on decoded values."""

    def apply(call: ir.Call, args: list[Any], ctx: Context) -> Any:
        xp = ctx.xp
        if call.type == "float":
            return _float_fold(call, args, xp)
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


def _negate(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """Unary minus: two's complement on numbers (wrapping at -2^31), the sign bit on floats
    (so -0.0 and the NaNs' signs too, as C's -x)."""
    if call.type == "float":
        return float_key(float_bits(args[0], ctx.xp) ^ SIGN, ctx.xp)
    return encode_int(-decode_int(args[0], call.type, ctx.xp), call.type, ctx.xp)


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
        raise _not_a_number("to_number", call, ids, bad, ctx)
    return encode_int(values.numbers[ids], "number", ctx.xp)


def _not_a_number(name: str, call: ir.Call, ids: Any, bad: Any, ctx: Context) -> DatalogError:
    """The error for the first row whose symbol a conversion cannot read (Soufflé stops too)."""
    first = int(ctx.xp.nonzero(bad)[0][0])
    text = ctx.symbols.lookup(np.asarray([int(ids[first])]))[0]
    return DatalogError(call.pos, f'{name}: "{text}" is not a number (Soufflé stops here too)')


def _read_symbol(name: str, parse: Callable[[str], int | None], encode: Callable[[Any, Any], Any]) -> Apply:
    """to_float and to_unsigned (``name``) of a symbol: what ``parse`` reads in its text (an
    IEEE bit pattern, an unsigned), encoded by ``encode``."""

    def apply(call: ir.Call, args: list[Any], ctx: Context) -> Any:
        values, valid = ctx.symbol_values().read(parse)
        bad = ~valid[args[0]]
        if bool(bad.any()):
            raise _not_a_number(name, call, args[0], bad, ctx)
        return encode(values[args[0]], ctx.xp)

    return apply


def _prefix_float(text: str) -> int | None:
    return parse_float(text, whole=False)


def _float_to_int(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """C's (int32_t) of a float: truncated; x86 gives INT32_MIN for NaN and out of range."""
    xp = ctx.xp
    value = xp.trunc(decode_float(args[0], xp).astype(xp.float64))
    fits = (value >= -(2.0**31)) & (value < 2.0**31)
    return encode_int(xp.where(fits, xp.where(fits, value, 0.0).astype(xp.int64), INT32_MIN), "number", xp)


def _float_to_unsigned(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """C's (uint32_t) of a float as gcc compiles it on x86-64: through int64 (so -1.5 is
    2^32 - 1), whose NaN and out-of-range value, -2^63, leaves 0 in the low 32 bits."""
    xp = ctx.xp
    value = xp.trunc(decode_float(args[0], xp).astype(xp.float64))
    fits = (value >= -(2.0**63)) & (value < 2.0**63)
    return encode_int(xp.where(fits, value, 0.0).astype(xp.int64), "unsigned", xp)


def _int_to_float(source: str) -> Apply:
    """C's (float) of an int32 or uint32: rounded to nearest, ties to even."""
    return lambda call, args, ctx: encode_float(decode_int(args[0], source, ctx.xp).astype(ctx.xp.float32), ctx.xp)


def _same_bits(source: str, target: str) -> Apply:
    """A value's 32 bits read as another type: ``as`` between numeric types, and C's casts
    between int32 and uint32."""

    def apply(call: ir.Call, args: list[Any], ctx: Context) -> Any:
        xp = ctx.xp
        encoded = args[0]
        bits = encoded ^ SIGN if source == "number" else float_bits(encoded, xp) if source == "float" else encoded
        return bits ^ SIGN if target == "number" else float_key(bits, xp) if target == "float" else bits

    return apply


def _range(call: ir.Call, args: list[Any], ctx: Context) -> tuple[Any, Any]:
    """Soufflé's ``range(a, b[, step])``: a, a + step, ... while short of b (step 1 or -1 towards
    b when left out; a step of 0 gives a alone unless a = b). Returns the row each value comes
    from and the encoded values, computed for all rows at once."""
    xp = ctx.xp
    if call.type == "float":
        a, b = decode_float(args[0], xp), decode_float(args[1], xp)
        step = decode_float(args[2], xp) if len(args) == 3 else xp.where(a <= b, 1.0, -1.0).astype(xp.float32)
        rows, values = _float_range(call, a, b, step, xp)
        return rows, encode_float(values, xp)
    a, b = decode_int(args[0], call.type, xp).astype(xp.int64), decode_int(args[1], call.type, xp).astype(xp.int64)
    step = decode_int(args[2], call.type, xp).astype(xp.int64) if len(args) == 3 else xp.where(a <= b, 1, -1)
    up, down = step > 0, step < 0
    span = xp.where(up, b - a, xp.where(down, a - b, 0))
    size = xp.maximum(xp.abs(step), 1)
    counts = xp.where(up | down, xp.where(span > 0, (span + size - 1) // size, 0), (a != b).astype(xp.int64))
    rows, k = _expand(counts, xp)
    return rows, encode_int(a[rows] + k * step[rows], call.type, xp)


def _expand(counts: Any, xp: Any) -> tuple[Any, Any]:
    """For counts per row: each output's row, and its place among its row's outputs."""
    total = int(counts.sum()) if counts.shape[0] else 0
    return expand_runs_xp(xp.zeros_like(counts), counts, total, xp)


_NEVER_ENDS = "range(...) never reaches its end: adding the step leaves the value as it is (Soufflé loops for ever)"


def _float_range(call: ir.Call, a: Any, b: Any, step: Any, xp: Any) -> tuple[Any, Any]:
    """A float range as Soufflé's loop makes it: ``for (x = a; x < b; x += step)`` in float
    arithmetic (its mirror image for a negative step), so the values are float sums, not
    a + k * step. Where the floats around x are u apart (one binade), x + step rounds to
    x + d for the multiple d of u nearest the step, so the loop's values up to the binade's
    edge are x, x + d, x + 2d, ... at once; one float addition then crosses the edge. Each
    round does that for all rows: the rounds number the binades crossed, not the values."""
    with np.errstate(all="ignore"):
        still = ~(step > 0) & ~(step < 0)  # 0 or NaN: a once, unless a = b
        flip = xp.where(step < 0, -1.0, 1.0).astype(xp.float32)
        a, b, step = a * flip, b * flip, step * flip
        once = xp.nonzero(still & (a != b))[0]
        sources, values, firsts = [once], [a[once]], [xp.ones(once.shape[0], dtype=bool)]
        pending = xp.nonzero(~still)[0]
        x = a[pending]
        # Where the step is under half the gap to the next float up, adding it changes nothing:
        # the widest gaps on the way are at a (below 0) and just under b (above 0); say so
        # before making the values that come first.
        start, end = a[pending], b[pending]
        below_b = xp.nextafter(end, xp.float32(-xp.inf))
        # (the gap above the largest float is 2^104: past it a sum rounds to infinity)
        above_b = xp.where(
            below_b == xp.float32(3.4028234663852886e38), 2.0**104, xp.nextafter(below_b, xp.float32(xp.inf)) - below_b
        )
        gap_at_a = xp.where(start < 0, xp.nextafter(start, xp.float32(xp.inf)) - start, 0.0)
        gap = xp.maximum(gap_at_a, xp.where(end > 0, above_b, 0.0)).astype(xp.float64)
        if bool(((start < end) & (step[pending].astype(xp.float64) < gap / 2)).any()):
            raise DatalogError(call.pos, _NEVER_ENDS)
        for turn in itertools.count():
            live = x < b[pending]
            pending, x = pending[live], x[live]
            if not pending.shape[0]:
                break
            s, wide = step[pending].astype(xp.float64), x.astype(xp.float64)
            # u: the spacing of the floats around x (2^-149 below the smallest normal float).
            _, exponent = xp.frexp(xp.abs(wide))
            normal = xp.abs(wide) >= 2.0**-126
            e = xp.where(normal, exponent - 1, -127)
            u = xp.ldexp(xp.ones_like(wide), xp.maximum(e, -126) - 23)
            q = s / u
            d = xp.floor(q + 0.5)
            regular = (q - xp.floor(q) != 0.5) & (d > 0) & xp.isfinite(wide)  # not a tie, not stuck
            at, by = wide / u, xp.minimum(d, 2.0**40)
            # The run stays where the spacing is u: below the binade's top (x >= 0), at least
            # one u inside its bottom (x < 0: the floats below it are finer), up to 0 (subnormal).
            positive = ~(x < 0)
            top = xp.where(positive, 2.0**24, xp.where(normal, -(2.0**23) - 1, 0.0))  # in u, as ``at`` is
            inside = xp.where(positive, xp.ceil((top - at) / by), xp.floor((top - at) / by) + 1)
            short = xp.ceil(xp.clip(b[pending].astype(xp.float64) / u, -(2.0**62), 2.0**62)) - 1  # x + jd < b
            before_b = xp.floor((short - at) / by) + 1
            n = xp.where(regular, xp.maximum(xp.minimum(inside, before_b), 1), 1).astype(xp.int64)
            rows, k = _expand(n, xp)
            sources.append(pending[rows])
            values.append(xp.where(k == 0, x[rows], (wide[rows] + k * (by * u)[rows]).astype(xp.float32)))
            firsts.append((k == 0) & (turn == 0))  # a itself: its zero keeps its sign
            last = (wide + (n - 1) * by * u).astype(xp.float32)
            x = last + step[pending]
            if bool((x == last).any()):
                raise DatalogError(call.pos, _NEVER_ENDS)
        rows = xp.concatenate(sources)
        out = xp.concatenate(values) * flip[rows]
        # A sum that is zero is +0.0, which the mirror image would have turned to -0.0.
        return rows, xp.where((out == 0) & ~xp.concatenate(firsts), xp.float32(0.0), out)


def host(column: Any) -> np.ndarray:
    """A column on the host (CuPy arrays copy, NumPy ones do not): texts live there."""
    return column.get() if hasattr(column, "get") else np.asarray(column)


def _cat(call: ir.Call, args: list[np.ndarray], ctx: Context) -> list[str]:
    values = ctx.symbol_values()
    return tx.strings(text.concatenate([values.texts(a) for a in args]))


def _substr(call: ir.Call, args: list[np.ndarray], ctx: Context) -> list[str]:
    strings = ctx.symbol_values().texts(args[0])
    start, length = (decode_int(a, "number", np) for a in args[1:])
    result, bad = text.substring(strings, start, length)
    if bad.any():
        text.warn_substr(strings, start, length, bad)
    return tx.strings(result)


def _to_string(source: str) -> Make:
    """C++'s ``std::to_string`` of a number or an unsigned (decimal) or a float (``%f``; a NaN
    ``nan`` or ``-nan`` by its sign, as glibc prints it)."""

    def make(call: ir.Call, args: list[np.ndarray], ctx: Context) -> list[str]:
        if source != "float":
            return list(decode_int(args[0], source, np).astype(str).tolist())  # NumPy's decimal text, as std::to_string's
        bits = float_bits(args[0], np)
        values = bits.view(np.float32).astype(np.float64).tolist()
        return [("-nan" if b >> 31 else "nan") if v != v else f"{v:f}" for v, b in zip(values, bits.tolist())]

    return make


def _made(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """The ids of the texts a symbol-making functor makes, which the run's table already holds
    (agreed by every shard before this step: ``Terms.made``)."""
    made = of(call).makes
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
    """(the distinct rows of host uint32 ``columns``, column by column, in sorted order; each
    row's index among them): text and user functors work once per distinct argument row.
    Columns after the first are folded in one at a time, each as the low half of a uint64 whose
    high half is the row's index so far: NumPy's unique over rows (``axis=0``) took seven times
    as long (2.2 s against 0.3 s for 10^6 rows of two columns)."""
    assert columns[0].shape[0] <= 2**32, "distinct_rows: an index of the rows must fit in 32 bits"
    _, inverse = np.unique(columns[0], return_inverse=True)
    for column in columns[1:]:
        _, inverse = np.unique((inverse.astype(np.uint64) << np.uint64(32)) | column, return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.empty(int(inverse.max(initial=-1)) + 1, dtype=np.intp)
    first[inverse[::-1]] = np.arange(inverse.shape[0] - 1, -1, -1)  # the first row of each
    return [column[first] for column in columns], inverse


def text_holds(op: str, left: Any, right: Any, ctx: Context) -> Any:
    """The mask of a text constraint (``TEXT_CONSTRAINTS``) over two symbol id columns:
    ``contains(a, b)``, a occurs in b; ``match(p, s)``, all of s matches the pattern p (once per
    distinct pattern: patterns are nearly always constants)."""
    (lefts, rights), inverse = distinct_rows([host(left), host(right)])
    values = ctx.symbol_values()
    negated = op.startswith("not_")
    if op.endswith("contains"):
        holds = text.contains(values.texts(lefts), values.texts(rights)) != negated
    else:
        holds = np.zeros(len(lefts), dtype=bool)  # a pattern std::regex refuses: neither holds
        patterns, which = np.unique(lefts, return_inverse=True)
        for k, pattern in enumerate(tx.strings(values.texts(patterns))):
            rows = np.nonzero(which.reshape(-1) == k)[0]
            matched = text.match(pattern, values.texts(rights[rows]))
            if matched is not None:
                holds[rows] = matched != negated
    return ctx.xp.asarray(holds[inverse])


TEXT_RANK = "$text_rank"  # not a name a program can write: the checker's rewrite of symbol order
# Soufflé's loop counter: the iteration of its recursive stratum's loop (execution/terms.py
# reads it from the fixpoint; 0 outside the loop).
ITERATION = "recursive_iteration_cnt"


def _iteration(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    raise AssertionError("recursive_iteration_cnt() is the fixpoint's iteration, read by Terms.column")


T = POLYMORPHIC
SIGNATURES: dict[str, Signature] = {
    s.name: s
    for s in (
        Signature("+", (T, T), T, _arithmetic(lambda c, a, b, xp: a + b), types=NUMERIC),
        Signature("-", (T, T), T, _arithmetic(lambda c, a, b, xp: a - b), types=NUMERIC),
        Signature("*", (T, T), T, _arithmetic(lambda c, a, b, xp: a * b), types=NUMERIC),
        Signature("/", (T, T), T, _arithmetic(_divide), types=NUMERIC),
        Signature("%", (T, T), T, _arithmetic(_divide)),
        Signature("^", (T, T), T, _arithmetic(_power), types=NUMERIC),
        Signature("min", (T, T), T, _min_max(lambda c, a, b, xp: xp.minimum(a, b)), variadic=True, types=(*NUMERIC, "symbol")),
        Signature("max", (T, T), T, _min_max(lambda c, a, b, xp: xp.maximum(a, b)), variadic=True, types=(*NUMERIC, "symbol")),
        Signature("neg", (T,), T, _negate, types=("number", "float")),
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
        Signature("stof", ("symbol",), "float", _read_symbol("to_float", _prefix_float, float_key)),
        Signature("stou", ("symbol",), "unsigned", _read_symbol("to_unsigned", parse_unsigned, lambda v, xp: v)),
        Signature("itof", ("number",), "float", _int_to_float("number")),
        Signature("utof", ("unsigned",), "float", _int_to_float("unsigned")),
        Signature("ftoi", ("float",), "number", _float_to_int),
        Signature("ftou", ("float",), "unsigned", _float_to_unsigned),
        Signature("itou", ("number",), "unsigned", _same_bits("number", "unsigned")),
        Signature("utoi", ("unsigned",), "number", _same_bits("unsigned", "number")),
        Signature("bits_itof", ("number",), "float", _same_bits("number", "float")),
        Signature("bits_utof", ("unsigned",), "float", _same_bits("unsigned", "float")),
        Signature("bits_ftoi", ("float",), "number", _same_bits("float", "number")),
        Signature("bits_ftou", ("float",), "unsigned", _same_bits("float", "unsigned")),
        Signature("range", (T, T, T), T, _range, types=NUMERIC, optional=1),
        Signature("as", (T,), T, lambda call, args, ctx: args[0], types=(*NUMERIC, "symbol")),  # within one base type
        Signature("ord", (ANY,), "number", _ord),
        Signature(TEXT_RANK, ("symbol",), "number", _text_rank),
        Signature("cat", ("symbol",), "symbol", _made, variadic=True, makes=_cat),
        Signature("substr", ("symbol", "number", "number"), "symbol", _made, makes=_substr),
        Signature("to_string", ("number",), "symbol", _made, makes=_to_string("number")),
        Signature("utos", ("unsigned",), "symbol", _made, makes=_to_string("unsigned")),
        Signature("ftos", ("float",), "symbol", _made, makes=_to_string("float")),
        Signature("autoinc", (), "number", _made, counter=True),
        Signature(ITERATION, (), "unsigned", _iteration),
    )
}
# The functor computing to_float(x), to_number(x), to_unsigned(x), to_string(x) by x's type
# (None: x itself).
CONVERSIONS: dict[str, dict[str, str | None]] = {
    "to_float": {"number": "itof", "unsigned": "utof", "float": None, "symbol": "stof"},
    "to_number": {"number": None, "unsigned": "utoi", "float": "ftoi", "symbol": "to_number"},
    "to_unsigned": {"number": "itou", "unsigned": None, "float": "ftou", "symbol": "stou"},
    "to_string": {"number": "to_string", "unsigned": "utos", "float": "ftos", "symbol": None},
}
CONVERSION_RESULTS = {"to_float": "float", "to_number": "number", "to_unsigned": "unsigned", "to_string": "symbol"}
# as(x, T) between numeric types: x's bits read as T's base type (Soufflé's cast changes only
# the type: as(1, float) of a number 1 is the float 1.4e-45).
CASTS: dict[tuple[str, str], str] = {
    ("number", "unsigned"): "itou",
    ("unsigned", "number"): "utoi",
    ("number", "float"): "bits_itof",
    ("unsigned", "float"): "bits_utof",
    ("float", "number"): "bits_ftoi",
    ("float", "unsigned"): "bits_ftou",
}


def _user_values(call: ir.Call, args: list[Any], ctx: Context) -> Any:
    """A user-defined functor's encoded values per row, computed once per distinct row of
    arguments (on the host: the implementation is C or Python over NumPy arrays); a functor
    without arguments once."""
    if not args:
        return ctx.xp.full(1, ctx.user[call.name](call, [], 1, ctx)[0], dtype=ctx.xp.uint32)
    if not args[0].shape[0]:
        return ctx.xp.zeros(0, dtype=ctx.xp.uint32)
    rows, inverse = distinct_rows([host(a) for a in args])
    values = ctx.user[call.name](call, rows, int(rows[0].shape[0]), ctx)
    assert isinstance(values, np.ndarray)
    return ctx.xp.asarray(values[inverse])


def _user_texts(call: ir.Call, args: list[np.ndarray], ctx: Context) -> list[str]:
    """The texts a user-defined functor with a symbol result makes for its distinct argument
    rows (a functor without arguments: one)."""
    texts = ctx.user[call.name](call, args, int(args[0].shape[0]) if args else 1, ctx)
    assert isinstance(texts, list)
    return texts


USER_PREFIX = "@"  # what a user-defined functor's name starts with (ir.Call), as it is written
# Where user functors' C functions are looked for by default (engine/user_functors.py), as
# Soufflé's Engine::loadDLL does: libfunctors.so, in the current directory.
DEFAULT_LIBRARIES = ("functors",)
DEFAULT_LIBRARY_DIRS = (".",)


def of(call: ir.Call) -> Signature:
    """The signature of ``call``: a user-defined functor's from its declared types (one making
    symbols goes through the agreement as ``cat`` does), any other from ``SIGNATURES``."""
    if not call.name.startswith(USER_PREFIX):
        return SIGNATURES[call.name]
    if call.type == "symbol":
        return Signature(call.name, call.params, call.type, _made, makes=_user_texts)
    return Signature(call.name, call.params, call.type, _user_values)


def signature(name: str) -> Signature:
    return SIGNATURES[name]


def apply(call: ir.Call, args: Sequence[Any], ctx: Context) -> Any:
    """The encoded result column of ``call`` over its arguments' encoded columns."""
    return of(call).apply(call, list(args), ctx)


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
    made = of(call).makes
    if made is not None:
        return ir.Const(made(call, columns, Context(np, symbols))[0], "symbol", call.pos)
    result = apply(call, columns, Context(np, symbols))
    if call.type == "symbol":
        return ir.Const(symbols.strings_from(int(result[0]))[0], "symbol", call.pos)
    return ir.Const(decode_scalar(int(result[0]), call.type), call.type, call.pos)


def foldable(call: ir.Call) -> bool:
    """Whether ``fold`` gives the call's value in every run: not so for what depends on the
    run's symbol ids (``ord``, symbol order), its counter (``autoinc``) or its iteration
    (``recursive_iteration_cnt``), nor for user functors (bound when the program runs), which a
    fact then computes when the run starts."""
    return not any(c.name in ("ord", TEXT_RANK, "autoinc", ITERATION) or c.name.startswith(USER_PREFIX) for c in ir.calls(call))
