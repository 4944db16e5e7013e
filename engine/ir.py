"""The checked program IR: what the front end produces and every later stage consumes.

Frozen dataclasses only, so a program (and the plan built from it) can be hashed, compared
and pickled to Dask workers. Positions never take part in equality: two rules that differ
only in where they were written are the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Literal as TypingLiteral

BaseType = TypingLiteral["number", "unsigned", "symbol"]
BASE_TYPES: tuple[BaseType, ...] = ("number", "unsigned", "symbol")
ARITHMETIC_OPS = ("+", "-", "*", "/", "%", "^", "min", "max")
SYMBOL_FUNCTORS = ("strlen", "to_number")  # symbol -> number
COMPARISON_OPS = ("=", "!=", "<", "<=", ">", ">=")
AGGREGATE_FUNCS = ("count", "sum", "min", "max")


@dataclass(frozen=True)
class Pos:
    """A source position, 1-based, printed the way compilers do: ``file:line:col``."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NOWHERE = Pos("<generated>", 0, 0)


@dataclass(frozen=True)
class Var:
    name: str
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Const:
    """A literal. ``value`` is an int for number/unsigned and the string itself for symbol."""

    value: int | str
    type: BaseType
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Wildcard:
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class BinOp:
    """Integer arithmetic with 32-bit wrap-around, C semantics for / and % (truncation), ^
    as Soufflé computes it (see values.power), min and max; operands and result of ``type``.
    For the SYMBOL_FUNCTORS ``left`` is the symbol argument, ``right`` the number 0 (unused)
    and ``type`` "number", the result's."""

    op: str
    left: Term
    right: Term
    type: BaseType = "number"
    pos: Pos = field(default=NOWHERE, compare=False)


Term = Var | Const | Wildcard | BinOp


@dataclass(frozen=True)
class Atom:
    relation: str
    args: tuple[Term, ...]
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Negation:
    atom: Atom
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Comparison:
    """``left op right``. With op ``=`` and one side an otherwise unbound variable this binds
    the variable (``y = x + 1``); the planner decides which, the checker proves it is safe."""

    op: str
    left: Term
    right: Term
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Aggregation:
    """``result = func target : { body }``, normalised out of wherever the aggregate was written.

    Variables of ``body`` that also occur in the enclosing rule outside the aggregate are the
    grouping variables; the others are local to the aggregate. ``target`` is None for count.
    count and sum give 0 for an empty group, min and max give no binding (the rule fails).
    """

    result: Var
    func: str
    target: Term | None
    body: tuple[BodyLiteral, ...]
    type: BaseType = "number"
    pos: Pos = field(default=NOWHERE, compare=False)


BodyLiteral = Atom | Negation | Comparison | Aggregation


@dataclass(frozen=True)
class Rule:
    """``head :- body``. A fact written in the program is a rule with an empty body."""

    head: Atom
    body: tuple[BodyLiteral, ...]
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Attribute:
    name: str
    type: BaseType
    type_name: str  # as written, e.g. an alias declared with `.type Node <: number`


@dataclass(frozen=True)
class Relation:
    name: str
    attributes: tuple[Attribute, ...]
    pos: Pos = field(default=NOWHERE, compare=False)

    @property
    def arity(self) -> int:
        return len(self.attributes)

    @property
    def types(self) -> tuple[BaseType, ...]:
        return tuple(a.type for a in self.attributes)


@dataclass(frozen=True)
class InputSpec:
    """``.input r`` reads ``<fact dir>/r.facts`` unless ``filename`` says otherwise."""

    relation: str
    filename: str | None = None
    delimiter: str = "\t"
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class OutputSpec:
    """``.output r`` writes ``<output dir>/r.csv`` unless ``filename`` says otherwise."""

    relation: str
    filename: str | None = None
    delimiter: str = "\t"
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Program:
    relations: dict[str, Relation]
    rules: tuple[Rule, ...]
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    printsizes: tuple[str, ...] = ()
    source: str = "<string>"

    def __hash__(self) -> int:  # dict field: hash what identifies the program
        return hash((tuple(self.relations), self.rules))


def walk(node: object) -> Iterator[object]:
    """``node`` and every node under it, depth first: dataclass fields and the tuples, lists,
    sets and dict values holding them (plan steps are dataclasses too)."""
    yield node
    if is_dataclass(node) and not isinstance(node, type):
        for f in fields(node):
            yield from walk(getattr(node, f.name))
    elif isinstance(node, (tuple, list, frozenset, set)):
        for item in node:
            yield from walk(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from walk(item)


def symbol_constants(node: object) -> set[str]:
    """Every symbol constant under ``node``: interned before evaluation on every shard, so the
    ids constants get are the same everywhere."""
    return {str(n.value) for n in walk(node) if isinstance(n, Const) and n.type == "symbol"}
