"""An independent, deliberately naive evaluator of the checked IR: the oracle for the tests.

It shares nothing with the engine but the IR dataclasses (and DatalogError, so division by
zero is reported the way the contract says). Relations are Python sets of decoded tuples
(int for number/unsigned, float for float, str for symbol, a Python tuple of its elements for
a record, None for nil; an ADT value is a record as the checker encodes it, ``(branch,
argument)``, or the branch number for an enum); every stratum is re-evaluated naively (not
semi-naively) until nothing changes; a rule body is solved by nested loops, literal by
literal, deferring a literal until the variables it needs are bound. It is meant to be
obviously correct on a few hundred tuples, not fast. Floats are Python floats holding float32
values, computed one operation at a time in NumPy's float32 (so -0.0 and 0.0 are one value
here, and programs for it hold no NaN).

Semantics (docs/contracts.md): number = int32 and unsigned = uint32 with wrap-around,
C division/modulo (truncate toward zero, remainder takes the dividend's sign), ``^`` as
Soufflé's cast of the C ``pow`` (see ``power``), ``min``/``max``, ``strlen`` (UTF-8 bytes) and
``to_number`` (C's strtol; a non-number raises), the text functors ``cat``, ``substr``, ``to_string``,
``contains``, ``match`` (Python's ``re``, full match; all on UTF-8 bytes, as C++ strings are) and
``<`` on symbols by their bytes (``ord`` is left out: its value is an id), division by
zero raises, ``v = expr`` binds an unbound variable, a record matched against a value binds
the variables inside it (``_`` matches anything), records are equal when their elements are,
negation of lower strata, and
aggregates: count/sum over the distinct bindings of the aggregate body per group (0 for an
empty group; where Soufflé materialises the body: several atoms, an inner aggregate, range, or
a variable twice in its one atom, the bindings of its named variables, ``_`` not counted), min/max of the target (no result for an empty group), mean of a float target
(sum / count in float; none for an empty group); grouping variables are the aggregate's
variables that also occur in the rule outside the aggregate. Floats: C's float arithmetic,
Soufflé's conversions (C casts; float -> unsigned through int64), ``as`` reading the bits,
and ``range`` (Soufflé's loop ``for (x = a; x < b; x += step)``, in the type's arithmetic).
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError

Value = int | float | str | tuple["Value", ...] | None
Tuple = tuple[Value, ...]
Binding = dict[str, Value]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1
FLOAT_MAX = float(np.finfo(np.float32).max)


class BudgetExceeded(Exception):
    """Raised when an evaluation explores more bindings or derives more tuples than allowed
    (the program generator uses it to throw away programs too big for a quick test)."""


# --------------------------------------------------------------------------- arithmetic


def wrap(value: int, type: ir.BaseType) -> int:
    """Reduce an integer to the 32-bit range of ``type`` (two's complement for number)."""
    if type == "unsigned":
        return value & UINT32_MAX
    if type == "number":
        return ((value + 2**31) & UINT32_MAX) - 2**31
    raise TypeError(f"arithmetic on {type}")


def c_div(a: int, b: int) -> int:
    """C division: the quotient truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def c_mod(a: int, b: int) -> int:
    """C remainder: a - b * trunc(a / b), so it has the dividend's sign."""
    return a - b * c_div(a, b)


def f32(value: float) -> float:
    """A double rounded to float32, as a Python float."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def float_arith(op: str, a: float, b: float) -> float:
    """C's float ``a op b`` (std::min/std::max for min/max; ^ is powf)."""
    x, y = np.float32(a), np.float32(b)
    with np.errstate(all="ignore"):
        if op == "min":
            return float(y if y < x else x)
        if op == "max":
            return float(y if x < y else x)
        if op == "^":
            return f32(float(np.power(np.float64(x), np.float64(y))))  # powf: pow in double, rounded once
        result = {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op]
    return float(result)


def arith(op: str, a: Value, b: Value, type: ir.BaseType, pos: ir.Pos) -> Value:
    """One arithmetic operation in ``type``: operands and result wrapped to 32 bits; min and
    max of symbols by their UTF-8 bytes."""
    if type == "float":
        assert isinstance(a, float) and isinstance(b, float)
        return float_arith(op, a, b)
    if isinstance(a, str) and isinstance(b, str) and op in ("min", "max"):
        pick = min if op == "min" else max
        return pick(a, b, key=lambda s: s.encode("utf-8", "surrogateescape"))
    if not isinstance(a, int) or not isinstance(b, int):
        raise TypeError(f"arithmetic on non-integers {a!r} {op} {b!r}")
    a, b = wrap(a, type), wrap(b, type)
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    elif op in ("/", "%"):
        if b == 0:
            raise DatalogError(pos, "division by zero" if op == "/" else "modulo by zero")
        r = c_div(a, b) if op == "/" else c_mod(a, b)
    elif op in ("min", "max"):
        r = min(a, b) if op == "min" else max(a, b)
    elif op == "^":
        r = power(a, b, type, pos)
    elif op in BITWISE:
        r = BITWISE[op](a, b)
    else:
        raise ValueError(f"unknown arithmetic operator {op!r}")
    return wrap(r, type)


# Soufflé's bitwise and logical operators on Python ints already wrapped to the type (so a
# number is signed: >> is arithmetic); shift counts mod 32, as x86 takes them.
BITWISE = {
    "band": lambda a, b: a & b,
    "bor": lambda a, b: a | b,
    "bxor": lambda a, b: a ^ b,
    "bshl": lambda a, b: a << (b % 32),
    "bshr": lambda a, b: a >> (b % 32),
    "bshru": lambda a, b: (a % 2**32) >> (b % 32),
    "land": lambda a, b: int(bool(a) and bool(b)),
    "lor": lambda a, b: int(bool(a) or bool(b)),
    "lxor": lambda a, b: int(bool(a) != bool(b)),
}
UNARY = {"bnot": lambda a: ~a, "lnot": lambda a: int(a == 0), "neg": lambda a: -a}


def float_of_bits(bits: int) -> float:
    value: float = struct.unpack("<f", struct.pack("<I", bits & UINT32_MAX))[0]
    return value


def bits_of_float(value: float) -> int:
    bits: int = struct.unpack("<I", struct.pack("<f", value))[0]
    return bits


def trunc_int(value: float, low: int, high: int, out_of_range: int) -> int:
    """C's truncating float -> integer cast as x86 does it: out of range (or NaN) gives
    ``out_of_range``."""
    if math.isnan(value) or not low <= math.trunc(value) <= high:
        return out_of_range
    return math.trunc(value)


# Soufflé's conversions by their functor's name (the checker picks it by the argument's type).
CONVERSIONS = {
    "itof": lambda v: f32(v),
    "utof": lambda v: f32(v),
    "ftoi": lambda v: trunc_int(v, INT32_MIN, INT32_MAX, INT32_MIN),
    "ftou": lambda v: trunc_int(v, -(2**63), 2**63 - 1, 0) & UINT32_MAX,  # through int64
    "itou": lambda v: v & UINT32_MAX,
    "utoi": lambda v: wrap(v, "number"),
    "bits_itof": lambda v: float_of_bits(v),
    "bits_utof": lambda v: float_of_bits(v),
    "bits_ftoi": lambda v: wrap(bits_of_float(v), "number"),
    "bits_ftou": lambda v: bits_of_float(v),
    "as": lambda v: v,  # within one base type
}


def to_float(text: str, pos: ir.Pos) -> float:
    """Soufflé's to_float of a symbol (C's strtof of a prefix): a decimal float here."""
    m = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text)
    if m is None:
        raise DatalogError(pos, f"to_float: {text!r} is not a number")
    return f32(float(m[0]))


def to_unsigned(text: str, pos: ir.Pos) -> int:
    """Soufflé's to_unsigned of a symbol: a decimal prefix (after white space), mod 2^32."""
    m = re.match(r"\s*\+?(\d+)", text)
    if m is None or text.startswith("-"):
        raise DatalogError(pos, f"to_unsigned: {text!r} is not a number")
    return int(m[1]) & UINT32_MAX


def range_values(a: Value, b: Value, step: Value | None, type: ir.BaseType) -> list[Value]:
    """Soufflé's range: its C loop, run in the type's own arithmetic."""
    assert not isinstance(a, str) and not isinstance(b, str) and not isinstance(step, str)
    if step is None:
        step = (1.0 if type == "float" else 1) if a <= b else (-1.0 if type == "float" else -1)
    out: list[Value] = []
    x = a
    if step > 0:
        while x < b:
            out.append(x)
            x = float_arith("+", x, step) if type == "float" else x + step  # type: ignore[arg-type]
    elif step < 0:
        while b < x:
            out.append(x)
            x = float_arith("+", x, step) if type == "float" else x + step  # type: ignore[arg-type]
    elif a != b:
        out.append(a)
    return out


def power(a: int, b: int, type: ir.BaseType, pos: ir.Pos) -> int:
    """Soufflé computes ``(type) pow((double) a, (double) b)`` on x86: a number outside int32
    (or infinite: 0 ^ -1) becomes INT32_MIN; an unsigned goes through int64, so it is the low
    32 bits of the double, and 0 from 2^63 up. The double is the power rounded to 53 bits;
    where glibc's pow may round the other way (within 0.05 ulp of halfway) it is an error."""
    if type == "number":
        if b < 0:  # |a ^ b| < 1 truncates to 0, but for 1, -1 and 0
            return {1: 1, -1: -1 if b % 2 else 1, 0: INT32_MIN}.get(a, 0)
        if abs(a) >= 2 and b >= 32:
            return INT32_MIN
        r = a**b
        return r if INT32_MIN <= r <= INT32_MAX else INT32_MIN
    if a >= 2 and b >= 64:
        return 0
    r = a**b
    if r >= 2**63:
        return 0
    excess = r.bit_length() - 53
    if excess > 0:
        ulp = 1 << excess
        low = r % ulp
        if low and abs(2 * low - ulp) * 10 <= ulp:
            raise DatalogError(pos, "unsigned power a ^ b: the C library's rounding decides")
        r = int(float(r))
    return 0 if r >= 2**63 else r & UINT32_MAX


def to_number(text: str, pos: ir.Pos) -> int:
    """Soufflé's to_number: ``0b``/``-0b`` is binary (the ``0b`` removed), ``0x``/``-0x`` hex,
    anything else decimal; then C's strtol: white space, a sign, (for hex an ``0x`` before a
    digit) and at least one digit; what follows is ignored. Not a number, or outside int32:
    an error, where Soufflé stops the run."""
    base, rest = 10, text
    if text.startswith(("0b", "-0b")):
        base, rest = 2, text.replace("0b", "", 1)
    elif text.startswith(("0x", "-0x")):
        base = 16
    digits = "0123456789abcdef"[:base]
    i = 0
    while i < len(rest) and rest[i] in " \t\n\v\f\r":
        i += 1
    sign = 1
    if i < len(rest) and rest[i] in "+-":
        sign = -1 if rest[i] == "-" else 1
        i += 1
    if base == 16 and rest[i : i + 2] in ("0x", "0X") and rest[i + 2 : i + 3].lower() in tuple(digits):
        i += 2
    j = i
    while j < len(rest) and rest[j] in digits + digits.upper():
        j += 1
    number = rest[i:j].lstrip("0") or "0"
    value = sign * int(number, base) if j > i and len(number) <= 40 else None
    if value is None or not INT32_MIN <= value <= INT32_MAX:
        raise DatalogError(pos, f"to_number: {text!r} is not a number")
    return value


def substr(text: Value, start: Value, length: Value) -> str:
    """C++'s ``std::string::substr(start, length)`` on the UTF-8 bytes, the 32-bit arguments
    read as ``size_t``: out of range (negative or past the end) gives ""."""
    assert isinstance(text, str) and isinstance(start, int) and isinstance(length, int)
    data = text.encode("utf-8", "surrogateescape")
    if start < 0 or start > len(data):
        return ""
    end = len(data) if length < 0 else start + length
    return data[start:end].decode("utf-8", "surrogateescape")


# Functors that make texts, and ``$text_rank``, which the checker wraps around each side of
# ``<`` on symbols: here the text itself, which ``compare`` orders by its UTF-8 bytes.
TEXT_FUNCTORS: dict[str, Callable[..., Value]] = {
    "cat": lambda *parts: "".join(str(p) for p in parts),
    "substr": substr,
    "to_string": lambda n: str(n),
    "utos": lambda n: str(n),
    "ftos": lambda x: f"{x:f}",  # std::to_string: %f (programs for the reference hold no NaN)
    "$text_rank": lambda text: text,
}


def text_constraint(op: str, a: Value, b: Value) -> bool:
    """contains(a, b): a occurs in b; match(a, b): all of b matches the ECMAScript pattern a.
    A pattern Python cannot compile, or one with a brace that is no quantifier (which
    ECMAScript refuses), makes both the constraint and its negation false."""
    assert isinstance(a, str) and isinstance(b, str)
    needle, text = a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")  # C++ strings: bytes
    if op.endswith("contains"):
        return (needle in text) != op.startswith("not_")
    if re.search(r"\{(?!\d+(,\d*)?\})", a.replace("\\{", "")):
        return False
    try:
        pattern = re.compile(needle)
    except re.error:
        return False
    return (pattern.fullmatch(text) is not None) != op.startswith("not_")


def compare(op: str, a: Value, b: Value) -> bool:
    if op in ("match", "contains", "not_match", "not_contains"):
        return text_constraint(op, a, b)
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    if isinstance(a, str) and isinstance(b, str):  # symbols: by their UTF-8 bytes, as C++ strings
        a, b = a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")  # type: ignore[assignment]
    elif isinstance(a, str) or isinstance(b, str):
        raise TypeError(f"ordered comparison {op!r} between a symbol and a number")
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    raise ValueError(f"unknown comparison operator {op!r}")


# --------------------------------------------------------------------------- variables


def term_vars(term: ir.Term | None) -> set[str]:
    return ir.variable_names(term)


def literal_vars(lit: ir.BodyLiteral) -> set[str]:
    """Every variable written in the literal, inside nested aggregates too."""
    return ir.variable_names(lit)


def scope_vars(lit: ir.BodyLiteral) -> set[str]:
    """The variables a literal contributes to its own scope: an aggregate only its result
    (its body variables are its own, unless they also occur outside it)."""
    if isinstance(lit, ir.Aggregation):
        return {lit.result.name}
    return literal_vars(lit)


# --------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class PreparedAgg:
    """An aggregation with its grouping variables worked out once, from its scope."""

    agg: ir.Aggregation
    grouping: frozenset[str]
    body: tuple[PreparedLiteral, ...]


PreparedLiteral = ir.Atom | ir.Negation | ir.Comparison | PreparedAgg


@dataclass(frozen=True)
class PreparedRule:
    rule: ir.Rule
    body: tuple[PreparedLiteral, ...]


def _rename_wildcards(lit: ir.BodyLiteral, counter: Iterator[int]) -> ir.BodyLiteral:
    """Inside an aggregate ``_`` is a distinct fresh variable (count counts matching tuples);
    the front end already does this, doing it again here is harmless."""

    def term(t: ir.Term) -> ir.Term:
        if isinstance(t, ir.Wildcard):
            return ir.Var(f"$ref_w{next(counter)}")
        return t

    if isinstance(lit, ir.Atom):
        return ir.Atom(lit.relation, tuple(term(a) for a in lit.args), lit.pos)
    if isinstance(lit, ir.Negation):
        # A wildcard under a negation stays a wildcard ("no tuple with any value here").
        return lit
    if isinstance(lit, ir.Aggregation):
        body = tuple(_rename_wildcards(b, counter) for b in lit.body)
        return ir.Aggregation(lit.result, lit.func, lit.target, body, lit.type, lit.pos)
    return lit


def _prepare_body(body: tuple[ir.BodyLiteral, ...], outside: frozenset[str]) -> tuple[PreparedLiteral, ...]:
    """``outside`` = variables of the enclosing scopes (the head, for a rule body)."""
    out: list[PreparedLiteral] = []
    for i, lit in enumerate(body):
        if not isinstance(lit, ir.Aggregation):
            out.append(lit)
            continue
        others = set().union(*(scope_vars(b) for j, b in enumerate(body) if j != i))
        around = outside | others
        inner = literal_vars(lit) - {lit.result.name}
        grouping = frozenset(inner & around)
        # For an aggregate nested in this one, everything around this one and the target
        # are outside (its siblings inside this body are added by the recursive call).
        inner_outside = frozenset(around | term_vars(lit.target))
        out.append(PreparedAgg(lit, grouping, _prepare_body(lit.body, inner_outside)))
    return tuple(out)


def prepare_rule(rule: ir.Rule) -> PreparedRule:
    counter = itertools.count()
    body = tuple(_rename_wildcards(lit, counter) for lit in rule.body)
    return PreparedRule(rule, _prepare_body(body, frozenset(term_vars_all(rule.head.args))))


def term_vars_all(terms: Iterable[ir.Term]) -> set[str]:
    return set().union(*(term_vars(t) for t in terms))


# --------------------------------------------------------------------------- strata


def relations_read(lit: ir.BodyLiteral) -> Iterator[tuple[str, bool]]:
    """(relation, through negation or aggregation) for every relation a literal reads."""
    if isinstance(lit, ir.Atom):
        yield lit.relation, False
    elif isinstance(lit, ir.Negation):
        yield lit.atom.relation, True
    elif isinstance(lit, ir.Aggregation):
        for b in lit.body:
            for rel, _ in relations_read(b):
                yield rel, True


def strata(program: ir.Program) -> list[list[ir.Rule]]:
    """Rules grouped by the stratum of their head, lowest first. The stratum of a relation
    is the longest path to it counting only negated/aggregated edges, so everything a rule
    negates or aggregates is complete before the rule runs."""
    level = {name: 0 for name in program.relations}
    limit = len(level) + 1
    changed = True
    while changed:
        changed = False
        for rule in program.rules:
            head = rule.head.relation
            for lit in rule.body:
                for rel, strict in relations_read(lit):
                    need = level[rel] + (1 if strict else 0)
                    if need > level[head]:
                        if need > limit:
                            raise ValueError(f"not stratifiable: {head} through {rel}")
                        level[head] = need
                        changed = True
    by_level: dict[int, list[ir.Rule]] = {}
    for rule in program.rules:
        by_level.setdefault(level[rule.head.relation], []).append(rule)
    return [by_level[k] for k in sorted(by_level)]


# --------------------------------------------------------------------------- solving


class Snapshot:
    """The database as it stood at the start of a naive round, with lazily built hash
    indexes: (relation, bound column positions) -> {key values: [tuples]}."""

    def __init__(self, db: Mapping[str, set[Tuple]], budget: _Budget):
        self.db = db
        self.budget = budget
        self._indexes: dict[tuple[str, tuple[int, ...]], dict[Tuple, list[Tuple]]] = {}

    def lookup(self, relation: str, positions: tuple[int, ...], key: Tuple) -> list[Tuple]:
        index = self._indexes.get((relation, positions))
        if index is None:
            index = {}
            for t in self.db[relation]:
                index.setdefault(tuple(t[p] for p in positions), []).append(t)
            self._indexes[(relation, positions)] = index
        return index.get(key, [])


class _Budget:
    def __init__(self, max_steps: int | None):
        self.max_steps = max_steps
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.max_steps is not None and self.steps > self.max_steps:
            raise BudgetExceeded(f"more than {self.max_steps} bindings explored")


def eval_term(term: ir.Term, binding: Binding, pos: ir.Pos) -> Value:
    if isinstance(term, ir.Const):
        return None if term.type == "record" else float_of_bits(int(term.value)) if term.type == "float" else term.value
    if isinstance(term, ir.Record):
        return tuple(eval_term(a, binding, pos) for a in term.args)
    if isinstance(term, ir.Var):
        return binding[term.name]
    if isinstance(term, ir.Call) and term.name in TEXT_FUNCTORS:
        return TEXT_FUNCTORS[term.name](*(eval_term(a, binding, pos) for a in term.args))
    if isinstance(term, ir.Call) and term.name in ("strlen", "to_number", "stof", "stou"):
        text = eval_term(term.args[0], binding, pos)
        assert isinstance(text, str)
        if term.name == "strlen":
            return len(text.encode("utf-8", "surrogateescape"))
        return {"to_number": to_number, "stof": to_float, "stou": to_unsigned}[term.name](text, pos)
    if isinstance(term, ir.Call) and term.name in CONVERSIONS:
        return CONVERSIONS[term.name](eval_term(term.args[0], binding, pos))  # type: ignore[no-untyped-call]
    if isinstance(term, ir.Call) and term.name == "neg" and term.type == "float":
        value = eval_term(term.args[0], binding, pos)
        assert isinstance(value, float)
        return -value
    if isinstance(term, ir.Call) and term.name in UNARY:
        value = eval_term(term.args[0], binding, pos)
        assert isinstance(value, int)
        return wrap(UNARY[term.name](wrap(value, term.type)), term.type)
    if isinstance(term, ir.Call):
        values = [eval_term(a, binding, pos) for a in term.args]
        result = values[0]
        for value in values[1:]:
            result = arith(term.name, result, value, term.type, pos)
        return result
    raise TypeError(f"cannot evaluate {term!r}")


def pattern_vars(term: ir.Term) -> set[str]:
    """The variables matching ``term`` against a value binds: itself, a record's elements."""
    if isinstance(term, ir.Var):
        return {term.name}
    if isinstance(term, ir.Record):
        return set().union(*(pattern_vars(a) for a in term.args))
    return set()


def arithmetic_vars(term: ir.Term) -> set[str]:
    """The variables of the arithmetic in a pattern: they must be bound before it matches."""
    if isinstance(term, ir.Call):
        return term_vars(term)
    if isinstance(term, ir.Record):
        return set().union(*(arithmetic_vars(a) for a in term.args))
    return set()


def has_value(term: ir.Term, bound: set[str]) -> bool:
    return term_vars(term) <= bound and not any(isinstance(n, ir.Wildcard) for n in ir.walk(term))


def match(term: ir.Term, value: Value, binding: Binding, pos: ir.Pos) -> Binding | None:
    """``binding`` extended so that ``term`` equals ``value``, None when it cannot."""
    if isinstance(term, ir.Wildcard):
        return binding
    if isinstance(term, ir.Var):
        if term.name in binding:
            return binding if binding[term.name] == value else None
        return {**binding, term.name: value}
    if isinstance(term, ir.Record):
        if not isinstance(value, tuple) or len(value) != len(term.args):
            return None
        for arg, element in zip(term.args, value):
            matched = match(arg, element, binding, pos)
            if matched is None:
                return None
            binding = matched
        return binding
    return binding if eval_term(term, binding, pos) == value else None


def _ready(lit: PreparedLiteral, bound: set[str]) -> bool:
    """Whether the literal can be evaluated now, given the bound variables."""
    if isinstance(lit, ir.Atom):
        plain = set().union(*(pattern_vars(a) for a in lit.args))
        needed = set().union(*(arithmetic_vars(a) for a in lit.args))
        return needed <= bound | plain
    if isinstance(lit, ir.Negation):
        return literal_vars(lit) <= bound
    if isinstance(lit, ir.Comparison):
        if isinstance(lit.right, ir.Call) and lit.right.name == "range":
            return term_vars(lit.right) <= bound
        if (term_vars(lit.left) | term_vars(lit.right)) <= bound:
            return True
        if lit.op != "=":
            return False
        for var, other in ((lit.left, lit.right), (lit.right, lit.left)):
            if isinstance(var, (ir.Var, ir.Record)) and has_value(other, bound) and arithmetic_vars(var) <= bound:
                return True
        return False
    return lit.grouping <= bound


def _pick(literals: tuple[PreparedLiteral, ...], bound: set[str]) -> int:
    """The next literal: the first ready filter/binding/negation/aggregate (cheap, prunes
    early), otherwise the first ready atom. Any order gives the same answer."""
    first_atom = None
    for i, lit in enumerate(literals):
        if _ready(lit, bound):
            if not isinstance(lit, ir.Atom):
                return i
            if first_atom is None:
                first_atom = i
    if first_atom is None:
        raise ValueError(f"unsafe body: nothing can be evaluated with {sorted(bound)} bound")
    return first_atom


def solve(literals: tuple[PreparedLiteral, ...], binding: Binding, snap: Snapshot, pos: ir.Pos) -> Iterator[Binding]:
    """Every binding that satisfies all the literals, extending ``binding``."""
    if not literals:
        yield binding
        return
    i = _pick(literals, set(binding))
    rest = literals[:i] + literals[i + 1 :]
    for extended in _eval_literal(literals[i], binding, snap, pos):
        snap.budget.step()
        yield from solve(rest, extended, snap, pos)


def _match_atom(atom: ir.Atom, binding: Binding, snap: Snapshot, pos: ir.Pos) -> Iterator[Binding]:
    """Bindings for the atom's unbound variables from the tuples of its relation."""
    positions: list[int] = []
    key: list[Value] = []
    for i, arg in enumerate(atom.args):
        if isinstance(arg, (ir.Const, ir.Record, ir.Call)) and has_value(arg, set(binding)):
            positions.append(i)
            key.append(eval_term(arg, binding, pos))
        elif isinstance(arg, ir.Var) and arg.name in binding:
            positions.append(i)
            key.append(binding[arg.name])
    keyed = set(positions)
    for t in snap.lookup(atom.relation, tuple(positions), tuple(key)):
        b: Binding | None = dict(binding)
        for i, arg in enumerate(atom.args):  # variables, repeated ones, records' elements
            if b is not None and i not in keyed and isinstance(arg, (ir.Var, ir.Record)):
                b = match(arg, t[i], b, pos)
        if b is None:
            continue
        ok = True
        for i, arg in enumerate(atom.args):  # expressions over variables bound just now
            if i not in keyed and isinstance(arg, ir.Call) and eval_term(arg, b, pos) != t[i]:
                ok = False
                break
        if ok:
            yield b


def _eval_literal(lit: PreparedLiteral, binding: Binding, snap: Snapshot, pos: ir.Pos) -> Iterator[Binding]:
    if isinstance(lit, ir.Atom):
        yield from _match_atom(lit, binding, snap, pos)
    elif isinstance(lit, ir.Negation):
        if next(_match_atom(lit.atom, binding, snap, pos), None) is None:
            yield binding
    elif isinstance(lit, ir.Comparison):
        yield from _eval_comparison(lit, binding, pos)
    else:
        yield from _eval_aggregate(lit, binding, snap, pos)


def _eval_comparison(lit: ir.Comparison, binding: Binding, pos: ir.Pos) -> Iterator[Binding]:
    bound = set(binding)
    if isinstance(lit.right, ir.Call) and lit.right.name == "range":  # v = range(...): each value
        assert isinstance(lit.left, ir.Var)
        args = [eval_term(a, binding, pos) for a in lit.right.args]
        for value in range_values(args[0], args[1], args[2] if len(args) == 3 else None, lit.right.type):
            if lit.left.name not in bound:
                yield {**binding, lit.left.name: value}
            elif binding[lit.left.name] == value:
                yield binding
        return
    if lit.op in ("=", "!="):  # a side with a value matched against the other, records included
        for pattern, other in ((lit.left, lit.right), (lit.right, lit.left)):
            if has_value(other, bound):
                matched = match(pattern, eval_term(other, binding, pos), binding, pos)
                if (matched is not None) == (lit.op == "="):
                    yield matched if matched is not None else binding
                return
    if compare(lit.op, eval_term(lit.left, binding, pos), eval_term(lit.right, binding, pos)):
        yield binding


def aggregate_value(agg: ir.Aggregation, matches: list[Binding], pos: ir.Pos) -> Value | None:
    """The aggregate's value over the distinct bindings of its body (None: no binding)."""
    targets = [eval_term(agg.target, b, pos) for b in matches] if agg.target is not None else []
    if agg.func == "count":
        return wrap(len(matches), agg.type)
    if agg.type == "float":
        floats = [float(v) for v in targets]
        if agg.func in ("min", "max", "mean") and not floats:
            return None
        if agg.func in ("min", "max"):
            # Soufflé folds std::min from the largest float (std::max from its negative): NaNs
            # never win, infinities stop at that start.
            return min([FLOAT_MAX, *floats]) if agg.func == "min" else max([-FLOAT_MAX, *floats])
        total = f32(math.fsum(floats))  # Soufflé adds in float: the same on values this exact
        return total if agg.func == "sum" else float(np.float32(total) / np.float32(len(floats)))
    if agg.func == "sum":
        return wrap(sum(int(v) for v in targets), agg.type)
    if agg.func in ("min", "max"):
        return (min(targets) if agg.func == "min" else max(targets)) if targets else None  # type: ignore[type-var]
    raise ValueError(f"unknown aggregate {agg.func!r}")


def _materialised(agg: ir.Aggregation) -> bool:
    """Soufflé's MaterializeAggregationQueries::needsMaterializedRelation on the body as
    written: the atoms the front end adds to read symbols made inside it (``$lifted``) are not."""
    atoms = [lit for lit in agg.body if isinstance(lit, ir.Atom) and not lit.relation.startswith("$lifted")]
    if len(atoms) > 1 or any(isinstance(lit, ir.Aggregation) for lit in agg.body):
        return True
    if any(isinstance(n, ir.Call) and n.name == "range" for n in ir.walk(agg.body)):
        return True
    names = [v.name for atom in atoms for v in ir.variables(atom.args)]
    return len(names) != len(set(names))


def _unnamed(name: str) -> bool:
    """A ``_`` of the program, named by the front end (``$w<n>``) or by ``_rename_wildcards``."""
    return name.startswith("$ref_w") or (name.startswith("$w") and name[2:].isdigit())


def _eval_aggregate(lit: PreparedAgg, binding: Binding, snap: Snapshot, pos: ir.Pos) -> Iterator[Binding]:
    agg = lit.agg
    group = {v: binding[v] for v in lit.grouping}
    named = _materialised(agg)
    distinct = {
        tuple(sorted((k, v) for k, v in b.items() if not (named and _unnamed(k)))): b for b in solve(lit.body, group, snap, pos)
    }
    value = aggregate_value(agg, list(distinct.values()), pos)
    if value is None:
        return
    name = agg.result.name
    if name in binding:
        if binding[name] == value:
            yield binding
    else:
        yield {**binding, name: value}


def _fire(rule: PreparedRule, snap: Snapshot) -> Iterator[Tuple]:
    pos = rule.rule.pos
    for b in solve(rule.body, {}, snap, pos):
        yield tuple(eval_term(a, b, pos) for a in rule.rule.head.args)


# --------------------------------------------------------------------------- entry point


def _check_tuple(relation: ir.Relation, t: Tuple) -> None:
    if len(t) != relation.arity:
        raise ValueError(f"{relation.name}: {t!r} has arity {len(t)}, not {relation.arity}")
    for v, type in zip(t, relation.types):
        if type == "symbol":
            ok = isinstance(v, str)
        elif type == "float":
            ok = isinstance(v, float) and f32(v) == v
        elif type == "record":
            ok = v is None or isinstance(v, tuple)
        elif type == "number":
            ok = isinstance(v, int) and INT32_MIN <= v <= INT32_MAX
        else:
            ok = isinstance(v, int) and 0 <= v <= UINT32_MAX
        if not ok or isinstance(v, bool):
            raise ValueError(f"{relation.name}: {v!r} in {t!r} is not a {type}")


def evaluate(
    program: ir.Program,
    facts: Mapping[str, Iterable[Tuple]],
    *,
    max_steps: int | None = None,
    max_tuples: int | None = None,
) -> dict[str, set[Tuple]]:
    """The model of ``program`` over the given input ``facts``: every relation's tuples.

    ``max_steps`` / ``max_tuples`` bound the work and the output size (BudgetExceeded);
    the default is unbounded.
    """
    if program.subsumptions:  # Soufflé defines it by the steps of its loop: tests/test_subsumption.py
        raise NotImplementedError("the reference evaluator does not model subsumption")
    db: dict[str, set[Tuple]] = {name: set() for name in program.relations}
    for name, tuples in facts.items():
        if name not in program.relations:
            raise ValueError(f"facts for undeclared relation {name!r}")
        for t in tuples:
            t = tuple(t)
            _check_tuple(program.relations[name], t)
            db[name].add(t)
    budget = _Budget(max_steps)
    for stratum in strata(program):
        prepared = [prepare_rule(r) for r in stratum]
        while True:  # naive: every rule over everything, until nothing new
            snap = Snapshot(db, budget)
            derived: dict[str, set[Tuple]] = {}
            for rule in prepared:
                head = rule.rule.head.relation
                derived.setdefault(head, set()).update(_fire(rule, snap))
            new = {h: ts - db[h] for h, ts in derived.items()}
            if not any(new.values()):
                break
            for h, ts in new.items():
                for t in ts:
                    _check_tuple(program.relations[h], t)
                db[h] |= ts
            if max_tuples is not None and sum(len(ts) for ts in db.values()) > max_tuples:
                raise BudgetExceeded(f"more than {max_tuples} tuples")
    return db
