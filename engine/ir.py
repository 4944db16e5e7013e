"""The checked program IR: what the front end produces and every later stage consumes.

Frozen dataclasses only, so a program (and the plan built from it) can be hashed, compared
and pickled to Dask workers. Positions never take part in equality: two rules that differ
only in where they were written are the same rule.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar
from typing import Literal as TypingLiteral

# "record": a record or an algebraic data type's value, as the id of its elements in the run's
# record table (values.RecordTable); nil is 0. Not a type a program names: its record types are.
BaseType = TypingLiteral["number", "unsigned", "float", "symbol", "record"]
BASE_TYPES: tuple[BaseType, ...] = ("number", "unsigned", "float", "symbol")
T = TypeVar("T")


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
    """A literal. ``value`` is an int for number/unsigned, the IEEE bit pattern (an int) for
    float (so -0.0 and 0.0 stay two constants, and NaN equals itself), and the string itself
    for symbol. In the checker, before types are resolved, a ``number`` literal is one whose
    type its context decides (Soufflé's untyped numeric constant); ``1u`` and ``1.5`` are
    unsigned and float from the start."""

    value: int | str
    type: BaseType
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Wildcard:
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Call:
    """A functor applied to terms: arithmetic (``+ - * / % ^ min max``, whose operands and
    result are of ``type``) and the functors of ``functors.SIGNATURES`` (``strlen``,
    ``to_number``...), each typed and evaluated by its signature there. A ``range`` call (a
    generator: one result per value) only ever stands alone on the right of ``$r = range(...)``,
    where the checker moved it from wherever it was written. A user-defined functor's call is
    named ``@name`` and carries its declared parameter types in ``params`` (its result type is
    ``type``), so it is typed and evaluated like the others (``functors.of``)."""

    name: str
    args: tuple[Term, ...]
    type: BaseType = "number"
    pos: Pos = field(default=NOWHERE, compare=False)
    params: tuple[BaseType, ...] = ()


@dataclass(frozen=True)
class Record:
    """A record ``[a, b]``: made where its value is needed (a head, an assignment), matched
    against a value where one is bound (unpacking it into its elements). ``kinds``: the base
    types of its elements, which say where the record table keeps it (set by the checker).
    Algebraic data types are records too (``Branch``); ``nil`` is ``Const(0, "record")``."""

    args: tuple[Term, ...]
    kinds: tuple[BaseType, ...] = ()
    pos: Pos = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Branch:
    """An ADT constructor ``$A(x, y)`` as written; the checker turns it into Soufflé's encoding
    (``Record``s and a ``Const``), so no later stage sees one."""

    name: str
    args: tuple[Term, ...]
    pos: Pos = field(default=NOWHERE, compare=False)


Term = Var | Const | Wildcard | Call | Record | Branch


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
    the variable (``y = x + 1``); the planner decides which, the checker proves it is safe.
    ``type``: the operands' type, which decides how they compare (floats as floats: 0.0 =
    -0.0, a NaN equals nothing)."""

    op: str
    left: Term
    right: Term
    pos: Pos = field(default=NOWHERE, compare=False)
    type: BaseType = "number"


@dataclass(frozen=True)
class Aggregation:
    """``result = func target : { body }``, normalised out of wherever the aggregate was written.

    Variables of ``body`` that also occur in the enclosing rule outside the aggregate are the
    grouping variables; the others are local to the aggregate. ``target`` is None for count.
    count and sum give 0 for an empty group, min and max give no binding (the rule fails).
    ``distinct``: Soufflé materialises this body into a relation of its named variables
    (MaterializeAggregationQueries: several atoms, an inner aggregate, ``range``, or a variable
    twice in its one atom), so the aggregate runs over the distinct rows of its variables, not
    over every binding (``_`` positions and inner aggregates' locals are not counted).
    """

    result: Var
    func: str
    target: Term | None
    body: tuple[BodyLiteral, ...]
    type: BaseType = "number"
    pos: Pos = field(default=NOWHERE, compare=False)
    distinct: bool = False


BodyLiteral = Atom | Negation | Comparison | Aggregation

# A ``_`` in an aggregate body's atom is a variable of its own, ``$w<n>`` (the checker's fresh
# names of kind "w"), so that count counts the matching tuples; a materialised body
# (``Aggregation.distinct``) does not count it among its named variables.
WILDCARD_KIND = "w"


def is_named_wildcard(name: str) -> bool:
    return name.startswith("$" + WILDCARD_KIND) and name[1 + len(WILDCARD_KIND) :].isdigit()


@dataclass(frozen=True)
class Rule:
    """``head :- body``. A fact written in the program is a rule with an empty body."""

    head: Atom
    body: tuple[BodyLiteral, ...]
    pos: Pos = field(default=NOWHERE, compare=False)
    # Its ``.plan``: (version, the positive atoms' order in it, 1-based as written); it changes
    # how the rule is evaluated, never what it derives.
    plans: tuple[tuple[int, tuple[int, ...]], ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Attribute:
    """A relation's column (or a record's field, a branch's argument)."""

    name: str
    type: BaseType
    type_name: str  # as written, e.g. an alias declared with `.type Node <: number`
    record: str | None = None  # the record or ADT type (its canonical name) it holds


@dataclass(frozen=True)
class RecordType:
    """``.type R = [a: number, b: R]``; anonymous records (``[1, x] = y``) get a type named by
    their structure."""

    name: str
    fields: tuple[Attribute, ...]


@dataclass(frozen=True)
class AdtBranch:
    name: str
    fields: tuple[Attribute, ...]


@dataclass(frozen=True)
class AdtType:
    """``.type T = A {x: number} | B {}``, branches in Soufflé's order (by name): a branch's
    index is its id. Soufflé's encoding: an enum (no branch has arguments) is the branch id, a
    number; otherwise a record ``[id, argument]`` for one argument, ``[id, [arguments]]`` for
    none or several."""

    name: str
    branches: tuple[AdtBranch, ...]

    @property
    def enum(self) -> bool:
        return not any(b.fields for b in self.branches)


TypeDefinition = RecordType | AdtType


@dataclass(frozen=True)
class Relation:
    """A declared relation; ``choice``: its ``choice-domain`` keys (column numbers), each of
    which determines the whole tuple: one tuple per key value is kept (execution/choice.py)."""

    name: str
    attributes: tuple[Attribute, ...]
    pos: Pos = field(default=NOWHERE, compare=False)
    choice: tuple[tuple[int, ...], ...] = ()
    # The record and ADT types its columns reach (nested ones too): what reading and writing
    # its rows needs.
    record_types: tuple[TypeDefinition, ...] = ()

    def record_type(self, name: str) -> TypeDefinition:
        return next(t for t in self.record_types if t.name == name)

    @property
    def arity(self) -> int:
        return len(self.attributes)

    @property
    def types(self) -> tuple[BaseType, ...]:
        return tuple(a.type for a in self.attributes)


@dataclass(frozen=True)
class Functor:
    """A user-defined functor, ``.functor name(params): result`` (base types: Soufflé's C types
    follow from them), and once bound (engine/user_functors.py) its implementation: ``library``,
    the shared library (as dlopen found it) whose C function ``name`` computes it, or
    ``function``, a Python function over arrays. Where it is bound never changes what the
    program means, so neither takes part in equality."""

    name: str
    params: tuple[BaseType, ...]
    result: BaseType
    pos: Pos = field(default=NOWHERE, compare=False)
    library: str | None = field(default=None, compare=False)
    function: Callable[..., Any] | None = field(default=None, compare=False)
    stateful: bool = False  # declared ``stateful``: accepted, a call of it refused (it needs Soufflé's own tables)


@dataclass(frozen=True)
class InputSpec:
    """``.input r`` reads ``<fact dir>/r.facts`` unless ``filename`` says otherwise, or standard
    input (``io`` "stdin"); Soufflé's JSON from ``r.json`` (``io`` "jsonfile") or standard
    input ("json"). The rest is how Soufflé 2.5's CSV reader takes the text:
    ``headers`` skips the first line, ``rfc4180`` reads quoted fields, ``columns`` names the
    file column of each attribute (Soufflé's ``columns="2:0"``; None: the first ones)."""

    relation: str
    filename: str | None = None
    delimiter: str = "\t"
    pos: Pos = field(default=NOWHERE, compare=False)
    io: str = "file"
    headers: bool = False
    rfc4180: bool = False
    columns: tuple[int, ...] | None = None


@dataclass(frozen=True)
class OutputSpec:
    """``.output r`` writes ``<output dir>/r.csv`` unless ``filename`` says otherwise; ``io``
    "stdout" prints it framed under ``name`` instead, "stdoutprintsize" prints its size (as
    ``.printsize``), "json" prints it as Soufflé's JSON, "jsonfile" writes ``r.json``
    (``formats.json_text``). ``headers`` writes ``header_line`` first, ``rfc4180`` quotes symbols as
    Soufflé 2.5 does, ``compress`` gzips the file."""

    relation: str
    filename: str | None = None
    delimiter: str = "\t"
    pos: Pos = field(default=NOWHERE, compare=False)
    io: str = "file"
    headers: bool = False
    rfc4180: bool = False
    compress: bool = False
    name: str = ""
    header: str | None = None  # None: the attribute names, joined by a tab
    objects: bool = False  # IO=json/jsonfile with format=object: tuples as objects keyed by attribute names

    @property
    def title(self) -> str:
        """The name Soufflé prints it under (its ``name=`` parameter, else the relation's)."""
        return self.name or self.relation

    def header_line(self, relation: Relation) -> str:
        """The header Soufflé writes: ``attributeNames``, else the names joined by the
        delimiter given (a tab without one, even under rfc4180's comma)."""
        return "\t".join(a.name for a in relation.attributes) if self.header is None else self.header


@dataclass(frozen=True)
class Program:
    relations: dict[str, Relation]
    rules: tuple[Rule, ...]
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    printsizes: tuple[str, ...] = ()
    source: str = "<string>"
    # ``.pragma "fact-dir"``/``"output-dir"``: the directories a command uses when it is given
    # none (as in Soufflé, its -F and -D win); ``"magic-transform"``: done at load. Not part of
    # the program's meaning.
    pragmas: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # ``.limitsize r(n=N)``: a recursive stratum stops after the iteration that brings r to N
    # tuples or more (Soufflé 2.5's loop exit); relation -> N.
    limits: tuple[tuple[str, int], ...] = ()
    # ``.functor`` declarations, in the order written.
    functors: tuple[Functor, ...] = ()
    # ``.decl D = debug_delta(r)``: D holds each delta of r's recursive stratum, with the
    # iteration that made it (0: what r held when the loop began); (D, r) pairs.
    debug_deltas: tuple[tuple[str, str], ...] = ()
    # Subsumptive rules ``a <= b :- body.`` in Soufflé's form ``a :- a, b, body``: the head is the
    # dominated atom, the body's first two literals the dominated and the dominating atoms;
    # each deletes from its head relation the tuples its body finds dominated (plan.py).
    subsumptions: tuple[Rule, ...] = ()

    def pragma(self, key: str) -> str | None:
        return dict(self.pragmas).get(key)

    @property
    def shown(self) -> frozenset[str]:
        """The relations a run writes or prints the size of (``.output``, ``.printsize``)."""
        return frozenset(spec.relation for spec in self.outputs) | frozenset(self.printsizes)

    def __hash__(self) -> int:  # dict field: hash what identifies the program
        return hash((tuple(self.relations), self.rules, self.subsumptions))


DIRECTORY_PRAGMAS = frozenset({"fact-dir", "output-dir"})
# What ``Program.pragmas`` keeps: the directories and what asks for magic sets (frontend/magic.py).
KEPT_PRAGMAS = DIRECTORY_PRAGMAS | {"magic-transform", "magic-transform-exclude"}

_CONTAINERS = (tuple, list, frozenset, set)
# What a class is to ``walk``, found once per class: a dict, a container, a leaf, or a
# dataclass, by the names of its fields that may hold nodes, last first.
_DICT = "dict"
_CONTAINER = "container"
_LEAF = "leaf"
_SHAPES: dict[type, str | tuple[str, ...]] = {}
# Field types made only of these hold no node (``pos`` only says where).
_LEAF_WORDS = frozenset({"str", "int", "bool", "float", "None", "tuple", "frozenset", "BaseType"})


def _shape(cls: type) -> str | tuple[str, ...]:
    """Asked per node, ``dataclasses.fields`` and ``is_dataclass`` cost the front end most of
    its time on large programs: they are asked here once per class."""
    shape = _SHAPES.get(cls)
    if shape is None:
        if issubclass(cls, dict):
            shape = _DICT
        elif issubclass(cls, _CONTAINERS):
            shape = _CONTAINER
        elif is_dataclass(cls) and not issubclass(cls, type):
            holding = [f.name for f in fields(cls) if f.name != "pos" and not set(re.findall(r"\w+", str(f.type))) <= _LEAF_WORDS]
            shape = tuple(reversed(holding))
        else:
            shape = _LEAF
        _SHAPES[cls] = shape
    return shape


def walk(node: object) -> Iterator[Any]:
    """Every dataclass node from ``node`` down (itself included), depth first, in written
    order, through tuples, lists, sets and dict values: the one traversal of the IR (and of
    plans, whose steps are dataclasses too) that the checker, the planner and the tests use."""
    return instances(node, object)


def instances(node: object, cls: type[T]) -> Iterator[T]:
    """The nodes of ``walk(node)`` that are ``cls``, found without handing the others out."""
    stack: list[Any] = [node]
    pop, push = stack.pop, stack.extend
    shapes = _SHAPES
    while stack:
        current = pop()
        kind = type(current)
        shape = shapes.get(kind)
        if shape is None:
            shape = _shape(kind)
        if type(shape) is tuple:
            if isinstance(current, cls):
                yield current
            if shape:
                push([getattr(current, name) for name in shape])
        elif shape is _CONTAINER:
            push(current[::-1] if kind is tuple or kind is list else list(current)[::-1])
        elif shape is _DICT:
            push(list(current.values())[::-1])


def variables(node: object) -> Iterator[Var]:
    """Every variable occurrence under ``node``, in written order."""
    if isinstance(node, Var):
        return iter((node,))
    return instances(node, Var)


def variable_names(node: object) -> set[str]:
    return {v.name for v in variables(node)}


def calls(node: object) -> Iterator[Call]:
    """Every functor call under ``node``, outermost first."""
    return instances(node, Call)


def rewrite_terms(node: T, fn: Callable[[Term], Term]) -> T:
    """``node`` with every term rebuilt bottom-up through ``fn`` (arguments of a call first,
    then the call): renaming variables, replacing subterms."""
    if isinstance(node, (Var, Const, Wildcard)):
        return fn(node)  # type: ignore[return-value]
    if isinstance(node, (Call, Record, Branch)):
        return fn(replace(node, args=tuple(rewrite_terms(a, fn) for a in node.args)))  # type: ignore[return-value]
    if isinstance(node, tuple):
        return tuple(rewrite_terms(item, fn) for item in node)  # type: ignore[return-value]
    if isinstance(node, (Atom, Negation, Comparison, Aggregation, Rule)):
        shape = _shape(type(node))
        assert isinstance(shape, tuple)
        changes = {name: rewrite_terms(getattr(node, name), fn) for name in reversed(shape)}  # in written order
        return replace(node, **changes)
    return node


def canonical(node: object) -> object:
    """What identifies ``node``: nested tuples of its type names and compared fields
    (positions, which never take part in equality, left out). Hashable and stable across
    processes, for digests."""
    if is_dataclass(node) and not isinstance(node, type):
        return (type(node).__name__, *((f.name, canonical(getattr(node, f.name))) for f in fields(node) if f.compare))
    if isinstance(node, (tuple, list)):
        return ("[", *(canonical(item) for item in node))
    if isinstance(node, (frozenset, set)):
        return ("{", *sorted((canonical(item) for item in node), key=repr))
    if isinstance(node, dict):
        return ("{:", *((canonical(k), canonical(v)) for k, v in node.items()))
    return node


def ground(t: Term) -> bool:
    """Whether a term is a constant or a record of constants (whose id is known before
    evaluation: ``record_constants``)."""
    return isinstance(t, Const) or (isinstance(t, Record) and all(ground(a) for a in t.args))


def record_constants(node: object) -> set[Record]:
    """Every record of constants under ``node``, nested ones included: put in the record table
    before evaluation on every shard, so their ids are known and the same everywhere."""
    return {n for n in instances(node, Record) if ground(n)}


def symbol_constants(node: object) -> set[str]:
    """Every symbol constant under ``node``: interned before evaluation on every shard, so the
    ids constants get are the same everywhere."""
    return {str(n.value) for n in instances(node, Const) if n.type == "symbol"}


INFIX = frozenset({"+", "-", "*", "/", "%", "^"})


def show(node: object) -> str:
    """``node`` (a rule, a literal, a term) as Soufflé text, as the checker left it (aggregates
    and lifted expressions as their ``$`` variables and assignments): what a profile names a
    rule by, beside its position."""
    if isinstance(node, Rule):
        return f"{show(node.head)}." if not node.body else f"{show(node.head)} :- {', '.join(show(lit) for lit in node.body)}."
    if isinstance(node, Atom):
        return f"{node.relation}({', '.join(show(a) for a in node.args)})"
    if isinstance(node, Negation):
        return f"!{show(node.atom)}"
    if isinstance(node, Comparison):
        return f"{show(node.left)} {node.op} {show(node.right)}"
    if isinstance(node, Aggregation):
        target = f" {show(node.target)}" if node.target is not None else ""
        return f"{show(node.result)} = {node.func}{target} : {{ {', '.join(show(lit) for lit in node.body)} }}"
    if isinstance(node, Var):
        return node.name
    if isinstance(node, Wildcard):
        return "_"
    if isinstance(node, Const):
        return _show_const(node)
    if isinstance(node, Call):
        if node.name in INFIX and len(node.args) == 2:
            return f"({show(node.args[0])} {node.name} {show(node.args[1])})"
        return f"{node.name}({', '.join(show(a) for a in node.args)})"
    if isinstance(node, (Record, Branch)):
        name = f"${node.name}" if isinstance(node, Branch) else ""
        return f"{name}[{', '.join(show(a) for a in node.args)}]"
    raise TypeError(f"no text for {type(node).__name__}")


def _show_const(c: Const) -> str:
    if c.type == "symbol":
        return '"' + str(c.value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if c.type == "record":
        return "nil" if c.value == 0 else f"record#{c.value}"
    if c.type == "float":
        return repr(struct.unpack("<f", struct.pack("<I", int(c.value)))[0])
    return f"{c.value}u" if c.type == "unsigned" else str(c.value)
