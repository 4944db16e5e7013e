"""Source text -> syntax tree with positions: the first stage of the front end.

The lark grammar accepts more of Soufflé than we support; everything outside the subset is
rejected here, by name, so the checker only ever sees supported constructs. Disjunctions in
rule bodies are expanded here too (a clause keeps one conjunction per alternative).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from dask_datalog.engine import functors
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend.annotations import blank as blank_annotations
from dask_datalog.engine.frontend.preprocess import LineMap
from dask_datalog.engine.ir import Pos
from dask_datalog.engine.values import parse_float

# ---- syntax tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    name: str
    pos: Pos


@dataclass(frozen=True)
class Wild:
    pos: Pos


@dataclass(frozen=True)
class Num:
    """A numeric literal; a leading unary minus is already folded into ``value`` and ``text``
    (as written, sign included: what the literal means depends on it, as in Soufflé, where
    -0 is a float -0.0 but no unsigned). ``type``: ``number`` for a plain integer (whose type
    its context decides), ``unsigned`` for ``1u``, ``float`` for ``1.5`` (``value`` is then its
    IEEE bit pattern)."""

    value: int
    pos: Pos
    type: str = "number"
    text: str = ""


@dataclass(frozen=True)
class Str:
    value: str
    pos: Pos


@dataclass(frozen=True)
class Binary:
    op: str
    left: Expr
    right: Expr
    pos: Pos  # of the operator


@dataclass(frozen=True)
class Call:
    """A functor written ``name(args)`` (``strlen``, ``cat``, ...) or a prefix operator
    (``neg`` is unary minus)."""

    func: str
    args: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Cast:
    """``as(expr, Type)``: expr taken as of type ``type_name``."""

    expr: Expr
    type_name: str
    pos: Pos
    type_pos: Pos


@dataclass(frozen=True)
class Aggregate:
    func: str
    target: Expr | None
    body: tuple[Literal, ...]
    pos: Pos


@dataclass(frozen=True)
class Record:
    """``[a, b]``: a record made or matched."""

    args: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Nil:
    pos: Pos


@dataclass(frozen=True)
class Branch:
    """``$A(a, b)``: an ADT's branch made or matched."""

    name: str
    args: tuple[Expr, ...]
    pos: Pos


Expr = Var | Wild | Num | Str | Binary | Call | Cast | Aggregate | Record | Nil | Branch


@dataclass(frozen=True)
class Atom:
    relation: str
    args: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Negation:
    atom: Atom
    pos: Pos


@dataclass(frozen=True)
class Comparison:
    """``left op right``; also ``match(left, right)`` and ``contains(left, right)`` (op
    ``match``/``contains``, ``not_match``/``not_contains`` under ``!``), Soufflé's binary
    constraints written as functors."""

    op: str
    left: Expr
    right: Expr
    pos: Pos  # of the operator


Literal = Atom | Negation | Comparison


@dataclass(frozen=True)
class PlanItem:
    """``version:(i, j, ...)`` of a ``.plan``: the order of the rule's atoms in that version."""

    version: int
    order: tuple[int, ...]
    pos: Pos


@dataclass(frozen=True)
class Clause:
    """``heads :- body.``; ``bodies`` holds the disjunctive normal form, None for a fact;
    ``plans``: its ``.plan`` (checked, then followed by the planner: plan.plan_rule). A subsumptive
    rule ``dominated <= dominating :- body.`` has its one head dominated and ``dominating`` set."""

    heads: tuple[Atom, ...]
    bodies: tuple[tuple[Literal, ...], ...] | None
    pos: Pos
    plans: tuple[PlanItem, ...] = ()
    dominating: Atom | None = None


@dataclass(frozen=True)
class Attr:
    name: str
    type_name: str
    pos: Pos  # of the type name, where an unknown type is reported
    name_pos: Pos


@dataclass(frozen=True)
class Decl:
    """``.decl name(attrs)``; ``eqrel``: Soufflé's equivalence relation (the checker adds the
    rules that close it); ``overridable``: a derived component may replace its rules."""

    name: str
    attrs: tuple[Attr, ...]
    pos: Pos
    eqrel: bool = False
    overridable: bool = False
    inline: bool = False  # expanded where it is used (frontend/inline.py)
    choice: tuple[tuple[tuple[str, Pos], ...], ...] = ()  # choice-domain keys: attribute names
    debug_of: str | None = None  # ``.decl name = debug_delta(R)``: R's deltas, each with its iteration
    storage: str | None = None  # btree, brie, btree_delete or eqrel, where one is written


@dataclass(frozen=True)
class TypeAlias:
    """``.type name <: base`` (``subtype``: a new type inside base; Soufflé 1's
    ``.number_type name`` and ``.symbol_type name`` too), ``.type name = base`` (another
    name for base) or ``.type name = A | B | ...`` (``members``: a union, holding the values of
    each member; ``base`` is the first)."""

    name: str
    base: str
    pos: Pos
    base_pos: Pos
    subtype: bool = True
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordDecl:
    """``.type name = [a: T, ...]``."""

    name: str
    attrs: tuple[Attr, ...]
    pos: Pos


@dataclass(frozen=True)
class BranchDecl:
    name: str
    attrs: tuple[Attr, ...]
    pos: Pos


@dataclass(frozen=True)
class AdtDecl:
    """``.type name = A {a: T} | B {} | ...``, branches as written."""

    name: str
    branches: tuple[BranchDecl, ...]
    pos: Pos


@dataclass(frozen=True)
class Param:
    key: str
    value: str
    quoted: bool
    pos: Pos


@dataclass(frozen=True)
class Directive:
    """One of ``.input`` / ``.output`` / ``.printsize`` / ``.limitsize`` for one relation."""

    kind: str
    relation: str
    params: tuple[Param, ...]
    pos: Pos


@dataclass(frozen=True)
class FunctorDecl:
    """``.functor name(a: T, U): R [stateful]``: a user-defined functor (parameters need no
    name: theirs is then "")."""

    name: str
    params: tuple[Attr, ...]
    result: Attr  # named "return type"
    stateful: bool
    pos: Pos


@dataclass(frozen=True)
class Pragma:
    """``.pragma "key" "value"``: a Soufflé option set from the program."""

    key: str
    value: str
    pos: Pos


TypeDecl = TypeAlias | RecordDecl | AdtDecl
Statement = Decl | TypeDecl | Directive | Clause | Pragma | FunctorDecl


@dataclass(frozen=True)
class ComponentType:
    """``Name<T1, T2>``: a component and its type arguments (or, declaring it, its parameters)."""

    name: str
    params: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True)
class Init:
    """``.init name = Type<args>``: an instance, whose relations and types are ``name.x``."""

    name: str
    type: ComponentType
    pos: Pos


@dataclass(frozen=True)
class Override:
    """``.override rel`` in a component: the base components' rules for ``rel`` are dropped."""

    relation: str
    pos: Pos


@dataclass(frozen=True)
class Component:
    """``.comp Type<params> : Base<args>, ... { body }``; components.py expands them away."""

    type: ComponentType
    bases: tuple[ComponentType, ...]
    body: tuple[Item, ...]
    pos: Pos


Item = Statement | Component | Init | Override  # what parse() returns, components not yet expanded

# ---- parsing -----------------------------------------------------------------------------


@functools.cache
def _lark() -> Lark:
    grammar = resources.files(__package__).joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=True)


def parse(text: str, filename: str = "<string>", lines: LineMap | None = None) -> tuple[Item, ...]:
    """Parse a whole program; raises DatalogError on syntax errors and unsupported constructs.
    Components are left for ``components.expand``.
    A leading byte-order mark (U+FEFF) is not part of the program; columns count after it.
    ``lines``: for preprocessed text, where each of its lines came from (preprocess.py)."""
    text = text.removeprefix("\ufeff")
    where = lines or LineMap()
    text = blank_annotations(text, filename, where)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, filename, where) from None
    return _Builder(filename, where).statements(tree)


# Words the grammar knows only to reject; listing them as "expected" would mislead.
_HIDDEN_WORDS = frozenset(
    [
        "input",
        "output",
        "printsize",
        "overridable",
        "inline",
        "no_inline",
        "magic",
        "no_magic",
        "brie",
        "btree",
        "btree_delete",
        "eqrel",
        "choice-domain",
        ".pragma",
        ".plan",
        "stateful",
        "match",
        "contains",
        "mean",
        "nil",
        "$",
        "[",
        "**",
        "band",
        "bor",
        "bxor",
        "bshl",
        "bshr",
        "bshru",
        "land",
        "lor",
        "lxor",
        "bnot",
        "lnot",
        "cat",
        "substr",
        "ord",
        "to_string",
        "to_unsigned",
        "to_float",
        "autoinc",
        "recursive_iteration_cnt",
        "debug_delta",
        "range",
        "as",
    ]
)
_TOKEN_WORDS = {
    "NAME": "a name",
    "QNAME": "a name",
    "NUMBER": "a number",
    "UNSIGNED": "a number",
    "FLOAT": "a number",
    "IPV4": "a number",
    "STRING": "a string",
    "$END": "end of input",
}
# Conversions some Datalogs write as functors; Soufflé 2.5 has none of them (its lexer reads
# itof as a name, so itof(x) is a syntax error there too).
_NOT_FUNCTORS = {
    "itou": "to_unsigned",
    "itof": "to_float",
    "utoi": "to_number",
    "utof": "to_float",
    "ftoi": "to_number",
    "ftou": "to_unsigned",
}
_CALLED_NAME = re.compile(r"\b(" + "|".join(_NOT_FUNCTORS) + r")\s*$")


def _syntax_error(e: UnexpectedInput, text: str, filename: str, where: LineMap) -> DatalogError:
    if isinstance(e, UnexpectedToken) and e.token.type == "$END":
        # the parser's stack still holds the tokens of what is open: the innermost .comp is named
        opened = [t for t in e.interactive_parser.parser_state.value_stack if isinstance(t, Token) and t.value == ".comp"]
        if opened:
            line, column = opened[-1].line, opened[-1].column
            assert line is not None and column is not None, "lark places every token it lexes"
            return DatalogError(where.pos(line, column, filename), "unterminated component, missing '}'")
        lines = text.rstrip("\n").split("\n")  # the end of the last line that holds anything, as Soufflé says
        pos = where.pos(len(lines), len(lines[-1]) + 1, filename)
        return DatalogError(pos, "syntax error: unexpected end of input" + _expected(e))
    pos = where.pos(e.line, e.column, filename)
    if text.startswith("/*", e.pos_in_stream):
        return DatalogError(pos, "syntax error: unterminated /* comment")
    if text.startswith('"', e.pos_in_stream):
        return DatalogError(pos, "syntax error: unterminated string (it must end on its line)")
    at = e.pos_in_stream or 0
    called = _CALLED_NAME.search(text, 0, at) if text.startswith("(", at) else None
    if called:
        name = called[1]
        return DatalogError(pos, f"syntax error: {name} is not a functor in Soufflé 2.5; write {_NOT_FUNCTORS[name]}(...)")
    if re.match(r"@!?\[", text[at:]):
        return DatalogError(pos, "syntax error: an annotation @[...] cannot stand here")
    if isinstance(e, UnexpectedCharacters):
        found = f"unexpected character {e.char!r}"
    else:
        assert isinstance(e, UnexpectedToken)
        tok = e.token
        word = {"NAME": "name ", "QNAME": "name ", "NUMBER": "number ", "STRING": "string "}.get(tok.type)
        found = f"unexpected {word}{tok}" if word else f"unexpected '{tok}'"
    return DatalogError(pos, f"syntax error: {found}" + _expected(e))


def _expected(e: UnexpectedInput) -> str:
    """What the parser would have accepted, asked of the parser itself: LALR's own lookahead
    sets are merged across contexts and would list tokens that cannot follow here."""
    parser = getattr(e, "interactive_parser", None)
    names = parser.accepts() if parser is not None else getattr(e, "expected", set())
    words = _expected_words(names)
    return f"; expected {words}" if words else ""


def _expected_words(names: set[str]) -> str:
    words: set[str] = set()
    for name in names - {"LATTICE_MARK"}:
        if name == "MIN_MAX":
            words.update(("'max'", "'min'"))
            continue
        if name in _TOKEN_WORDS:
            words.add(_TOKEN_WORDS[name])
            continue
        pattern = _lark().get_terminal(name).pattern
        if isinstance(pattern, PatternStr) and pattern.value not in _HIDDEN_WORDS:
            words.add(f"'{pattern.value}'")
    if "':-'" in words:  # in a clause head '<=' only starts a subsumption
        words.discard("'<='")
    ordered = sorted(words, key=lambda w: (w.startswith("'"), w))
    if len(ordered) <= 1:
        return "".join(ordered)
    return ", ".join(ordered[:-1]) + " or " + ordered[-1]


# ---- lark tree -> syntax tree ------------------------------------------------------------

# Qualifiers that choose Soufflé's storage or its optimisations, never an answer: accepted and
# ignored (relations here are always HISA).
STORAGE_QUALIFIERS = frozenset({"btree", "brie", "no_inline", "magic", "no_magic"})
_ESCAPES = {'"': '"', "\\": "\\", "t": "\t", "n": "\n", "r": "\r"}

Body = tuple[tuple[Literal, ...], ...]
LarkTree = Tree[Any]  # children: Token or Tree, told apart by the grammar

# Limits on hostile input (docs/contracts.md, "Rejected input"). Every later stage (checker,
# planner, pickling to workers) walks terms recursively, so nesting is capped here, well below
# Python's recursion limit; disjunctions expand to their DNF, capped so it cannot explode.
MAX_NESTING = 128  # parentheses, operators, unary minus, aggregates and ( body ) groups; components
MAX_ALTERNATIVES = 1024  # alternatives of one rule body once its disjunctions are expanded
MAX_LITERAL_DIGITS = 64  # significant digits of an integer literal (a 64-bit value in binary; the checker bounds its type)


# How tightly each binary operator of ``operators`` binds (Soufflé's precedence, ^ aside).
_PRECEDENCE = {
    "lor": 0,
    "lxor": 1,
    "land": 2,
    "bor": 3,
    "bxor": 4,
    "band": 5,
    "bshl": 6,
    "bshr": 6,
    "bshru": 6,
    "+": 7,
    "-": 7,
    "*": 8,
    "/": 8,
    "%": 8,
}

# The comparison that holds exactly where one fails (Soufflé's negatedConstraintOp).
_NEGATED_OP = {
    "=": "!=",
    "!=": "=",
    "<": ">=",
    ">=": "<",
    ">": "<=",
    "<=": ">",
    "match": "not_match",
    "not_match": "match",
    "contains": "not_contains",
    "not_contains": "contains",
}


def _negated_literal(lit: Literal) -> Literal:
    if isinstance(lit, Atom):
        return Negation(lit, lit.pos)
    if isinstance(lit, Negation):
        return lit.atom
    return replace(lit, op=_NEGATED_OP[lit.op])


class _Builder:
    """Walks the lark tree top-down, so errors come out in source order."""

    def __init__(self, filename: str, where: LineMap):
        self.filename, self.where = filename, where
        self.depth = 0  # nesting of the expression or body being built
        self.components = 0  # nesting of the component being built

    def nested(self, node: LarkTree, container: bool = False) -> None:
        """Enter one level of nesting (the caller leaves it by ``self.depth -= 1``) at
        ``node``, or with ``container`` at the parenthesis that opens it, where lark would
        have started a node holding ``node`` first."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            meta = node.meta
            line, column = (
                (meta.line, meta.column)
                if not container
                else (getattr(meta, "container_line", meta.line), getattr(meta, "container_column", meta.column))
            )
            pos = self.where.pos(line, column, self.filename)
            raise DatalogError(pos, f"nesting too deep: more than {MAX_NESTING} levels of parentheses, operators or aggregates")

    def pos(self, node: LarkTree | Token) -> Pos:
        if isinstance(node, Token):
            return self.where.pos(node.line or 0, node.column or 0, self.filename)
        return self.where.pos(node.meta.line, node.meta.column, self.filename)

    def fail(self, node: LarkTree | Token, message: str) -> DatalogError:
        return DatalogError(self.pos(node), message)

    # statements

    def statements(self, tree: LarkTree) -> tuple[Item, ...]:
        items = self.items(tree.children)
        types = {item.name for item in items if isinstance(item, TypeAlias | RecordDecl | AdtDecl)}
        for node in tree.children:  # a lattice of the program itself names one of its types (those of components are not checked)
            if node.data == "lattice" and str(node.children[0]) not in types:
                raise self.fail(node, f"Undefined type {node.children[0]}")
        return items

    def items(self, nodes: list[Any]) -> tuple[Item, ...]:
        """The statements of the program or of a component's body, in order."""
        out: list[Item] = []
        for node in nodes:
            assert isinstance(node, Tree)
            if node.data == "plan":
                out[-1] = self.plan(node, out[-1] if out else None)
                continue
            out.extend(self.statement(node))
        return tuple(out)

    def plan(self, node: LarkTree, rule: Item | None) -> Clause:
        """``.plan`` after a rule (in Soufflé's grammar it is part of the rule); its orders and
        versions are checked once the program's recursion is known (``checker.check_plans``).
        The planner orders joins itself: a plan never changes an answer."""
        if not isinstance(rule, Clause) or rule.bodies is None:
            raise self.fail(node, ".plan must follow the rule it orders")
        items = []
        for item in node.children:
            assert isinstance(item, Tree)
            version, *order = (int(str(n)) for n in item.children if n is not None)
            items.append(PlanItem(version, tuple(order), self.pos(item)))
        return replace(rule, plans=rule.plans + tuple(items))

    def statement(self, node: LarkTree) -> list[Item]:
        kind = node.data
        if kind == "preprocessor":
            line = str(node.children[0]).strip()
            raise self.fail(node, f"unsupported: C preprocessor line '{line}' (run cpp first)")
        if kind == "decl":
            return self.decls(node)
        if kind == "debug_decl":
            name, of = node.children
            return [Decl(str(name), (), self.pos(name), debug_of=str(of))]
        if kind == "lattice":
            self.lattice(node)
            return []
        if kind in ("subtype", "type_union"):
            return [self.type_alias(node)]
        if kind == "record_type":
            name, *attrs = node.children
            return [RecordDecl(str(name), self.attrs(attrs), self.pos(name))]
        if kind == "adt_type":
            name, *branches = node.children
            decls = tuple(BranchDecl(str(b.children[0]), self.attrs(b.children[1:]), self.pos(b)) for b in branches)
            return [AdtDecl(str(name), decls, self.pos(name))]
        if kind in ("number_type", "symbol_type"):  # Soufflé 1: .number_type T, .symbol_type T, .type T
            name = node.children[0]
            return [TypeAlias(str(name), kind.removesuffix("_type"), self.pos(name), self.pos(name))]
        if kind == "io_directive":
            return self.directives(node)
        if kind == "functor_decl":
            return [self.functor_decl(node)]
        if kind == "component":
            return [self.component(node)]
        if kind == "init":
            name, comp_type = node.children
            return [Init(str(name), self.comp_type(comp_type), self.pos(node))]
        if kind == "override":
            return [Override(str(node.children[0]), self.pos(node.children[0]))]
        if kind == "pragma":
            key, *value = node.children
            assert isinstance(key, Token)
            text = self.unquote(value[0]) if value and isinstance(value[0], Token) else ""
            return [Pragma(self.unquote(key), text, self.pos(key))]
        if kind == "subsumption":
            return [self.subsumption(node)]
        assert kind == "clause", kind
        return [self.clause(node)]

    def functor_decl(self, node: LarkTree) -> FunctorDecl:
        name, *rest = node.children
        (result,) = (c for c in rest if isinstance(c, Token))
        attrs = []
        for param in (c for c in rest if isinstance(c, Tree) and c.data == "functor_param"):
            first, *typed = (c for c in param.children if c is not None)
            label, type_name = (str(first), typed[0]) if typed else ("", first)
            attrs.append(Attr(label, str(type_name), self.pos(type_name), self.pos(first)))
        stateful = any(isinstance(c, Tree) and c.data == "stateful" for c in rest)
        returned = Attr("return type", str(result), self.pos(result), self.pos(result))
        return FunctorDecl(str(name), tuple(attrs), returned, stateful, self.pos(node))

    def lattice(self, node: LarkTree) -> None:
        """A ``.lattice`` is checked as Soufflé's parser and semantic checker do and then
        dropped: only an attribute of its type (rejected there) would use it."""
        name, *ops = node.children
        found = {}
        for op in ops:
            op_name, value = op.children
            if str(op_name) not in ("Bottom", "Top", "Lub", "Glb", "Leq"):
                raise self.fail(op, "Lattice operator not recognized")
            found[str(op_name)] = value
        if "Lub" not in found:
            raise self.fail(node, f"Lattice {name}<> does not define Lub")
        for op_name in ("Lub", "Glb"):
            if op_name in found and not (isinstance(found[op_name], Tree) and found[op_name].data == "user_functor"):
                raise self.fail(node, f"Lattice operator {op_name} must be a user-defined functor")

    def component(self, node: LarkTree) -> Component:
        self.components += 1
        if self.components > MAX_NESTING:
            raise self.fail(node, f"components nested too deep: more than {MAX_NESTING} levels")
        head, *rest = (c for c in node.children if isinstance(c, Tree))
        bases = tuple(self.comp_type(c) for c in rest if c.data == "comp_type")
        body = self.items([c for c in rest if c.data != "comp_type"])
        self.components -= 1
        return Component(self.comp_type(head), bases, body, self.pos(node))

    def comp_type(self, node: LarkTree) -> ComponentType:
        name, *params = (c for c in node.children if c is not None)
        return ComponentType(str(name), tuple(map(str, params)), self.pos(name))

    def decls(self, node: LarkTree) -> list[Item]:
        """``.decl a, b(x: T) quals``: one declaration per name, the same attributes; the
        qualifiers ``input``/``output``/``printsize`` are directives, the storage choices
        (``eqrel`` aside) are ignored."""
        names = [child for child in node.children if isinstance(child, Token)]
        attrs = []
        directives: list[str] = []
        storage: str | None = None
        overridable = False
        inline = no_inline = False  # no_inline wins, as in Soufflé
        choice: tuple[tuple[tuple[str, Pos], ...], ...] = ()
        for child in node.children:
            if isinstance(child, Tree) and child.data == "choice_domain":
                items = [c for c in child.children if isinstance(c, Tree)]
                choice = tuple(tuple((str(t), self.pos(t)) for t in item.children) for item in items)
            elif isinstance(child, Tree) and child.data == "qualifier":
                word = str(child.children[0])
                if word in ("btree", "brie", "btree_delete", "eqrel"):
                    if storage is not None:
                        raise self.fail(child, "btree/brie/eqrel qualifier already set")
                    storage = word
                if word in ("input", "output", "printsize"):
                    if word in directives:
                        raise self.fail(child, f"{word} qualifier already set")
                    directives.append(word)
                elif word == "overridable":
                    overridable = True
                elif word == "inline":
                    inline = True
                elif word == "no_inline":
                    no_inline = True
                elif word not in STORAGE_QUALIFIERS and word not in ("eqrel", "btree_delete"):
                    raise self.fail(child, f"unsupported: .decl qualifier '{word}'")
            elif isinstance(child, Tree):
                attrs.append(self.attr(child))
        out: list[Item] = []
        for name in names:
            pos = self.pos(name)
            out.append(
                Decl(
                    str(name),
                    tuple(attrs),
                    pos,
                    storage == "eqrel",
                    overridable,
                    inline and not no_inline,
                    choice,
                    storage=storage,
                )
            )
            out += [Directive(kind, str(name), (), pos) for kind in directives]
        return out

    def attrs(self, nodes: list[Any]) -> tuple[Attr, ...]:
        """The ``name: type`` attributes of a record type or an ADT branch."""
        return tuple(self.attr(node) for node in nodes if node is not None)

    def attr(self, node: LarkTree) -> Attr:
        attr_name, type_name, lattice = node.children
        if lattice is not None:
            raise self.fail(type_name, f"unsupported: lattice attributes ({type_name}<>)")
        return Attr(str(attr_name), str(type_name), self.pos(type_name), self.pos(attr_name))

    def type_alias(self, node: LarkTree) -> TypeAlias:
        name, *bases = node.children
        members = tuple(map(str, bases)) if len(bases) > 1 else ()
        subtype = node.data == "subtype" or bool(members)
        return TypeAlias(str(name), str(bases[0]), self.pos(name), self.pos(bases[0]), subtype, members)

    def directives(self, node: LarkTree) -> list[Item]:
        kind_tree, *rest = node.children
        kind = str(kind_tree.children[0])[1:]
        names = [c for c in rest if isinstance(c, Token)]
        params = tuple(self.param(c) for c in rest if isinstance(c, Tree))
        return [Directive(kind, str(n), params, self.pos(n)) for n in names]

    def param(self, node: LarkTree) -> Param:
        key, value = node.children
        assert isinstance(value, Token)
        quoted = value.type == "STRING"
        text = self.unquote(value) if quoted else str(value)
        return Param(str(key), text, quoted, self.pos(key))

    def subsumption(self, node: LarkTree) -> Clause:
        """``dominated <= dominating :- body.``: one clause per alternative of the body, as
        Soufflé's parser makes them."""
        dominated, dominating, body = node.children
        return Clause((self.atom(dominated),), self.body(body), self.pos(node), dominating=self.atom(dominating))

    def clause(self, node: LarkTree) -> Clause:
        heads_tree, body = node.children
        heads = tuple(self.atom(a) for a in heads_tree.children)
        bodies = None if body is None else self.body(body)
        return Clause(heads, bodies, self.pos(node))

    # bodies and literals

    def body(self, node: LarkTree) -> Body:
        """A body as its disjunctive normal form: one tuple of literals per alternative."""
        alternatives: list[tuple[Literal, ...]] = []
        for conjunction in node.children:
            parts = [self.literal(lit) for lit in conjunction.children]
            if len(alternatives) + math.prod(len(p) for p in parts) > MAX_ALTERNATIVES:
                raise self.fail(node, f"disjunction too large: this body expands to more than {MAX_ALTERNATIVES} alternatives")
            for combo in itertools.product(*parts):
                alternatives.append(tuple(itertools.chain.from_iterable(combo)))
        return tuple(alternatives)

    def literal(self, node: LarkTree) -> Body:
        kind = node.data
        if kind == "body":
            self.nested(node)
            body = self.body(node)
            self.depth -= 1
            return body
        if kind == "atom":
            return ((self.atom(node),),)
        if kind == "negation":
            return ((Negation(self.atom(node.children[0]), self.pos(node)),),)
        if kind == "negated_body":
            self.nested(node)
            body = self.body(node.children[0])
            self.depth -= 1
            return self.negated(body, node)
        if kind == "comparison":
            left, op, right = node.children
            lit = Comparison(str(op.children[0]), self.expr(left), self.expr(right), self.pos(op))
            sides = {type(lit.left), type(lit.right)}
            if lit.op == "=" and sides == {
                Wild,
                Record,
            }:  # true, as Soufflé's ResolveAnonymousRecordAliases makes it before any check
                return ((),)
            return ((lit,),)
        if kind == "truth":  # true adds nothing; false leaves no alternative, the rule never fires
            return ((),) if str(node.children[0]) == "true" else ()
        assert kind in ("functor_constraint", "negated_functor_constraint"), kind
        name_tree, *args = node.children
        name = str(name_tree.children[0])
        present = [a for a in args if a is not None]
        if len(present) != 2:
            raise self.fail(node, f"{name} takes 2 arguments, not {len(present)}")
        op = name if kind == "functor_constraint" else f"not_{name}"
        return ((Comparison(op, self.expr(present[0]), self.expr(present[1]), self.pos(node)),),)

    def negated(self, body: Body, node: LarkTree) -> Body:
        """``!(body)`` in disjunctive normal form, as Soufflé's RuleBody::negate makes it: no
        alternative of ``body`` holds, so one literal of each fails (De Morgan); an alternative
        with no literal (true) makes the negation false."""
        choices = [[_negated_literal(lit) for lit in alternative] for alternative in body]
        if math.prod(len(c) for c in choices) > MAX_ALTERNATIVES:
            raise self.fail(node, f"disjunction too large: this body expands to more than {MAX_ALTERNATIVES} alternatives")
        return tuple(itertools.product(*choices))

    def atom(self, node: LarkTree) -> Atom:
        name, *args = node.children
        exprs = tuple(self.expr(a) for a in args if a is not None)
        return Atom(str(name), exprs, self.pos(name))

    # expressions

    def expr(self, node: LarkTree) -> Expr:
        kind = node.data
        method = getattr(self, f"expr_{kind}", None)
        if method is None:
            assert kind == "counter", kind
            raise self.fail(node, "unsupported: $ counters")
        self.nested(node)
        result: Expr = method(node)
        self.depth -= 1
        return result

    def expr_var(self, node: LarkTree) -> Expr:
        """A variable, ``_``, or Soufflé's scanner constants ``__LINE__`` and ``__FILE__``
        (where the C preprocessor did not already replace them)."""
        tok = node.children[0]
        if tok == "__LINE__":
            return Num(self.pos(tok).line, self.pos(tok), "number", str(self.pos(tok).line))
        if tok == "__FILE__":
            return Str(self.pos(tok).file, self.pos(tok))
        return Wild(self.pos(tok)) if tok == "_" else Var(str(tok), self.pos(tok))

    def expr_number(self, node: LarkTree) -> Expr:
        text = str(node.children[0])
        base = {"0x": 16, "0b": 2}.get(text[:2], 10)
        digits = (text[2:] if base != 10 else text).lstrip("0")
        if len(digits) > MAX_LITERAL_DIGITS:  # int() of >4300 digits fails; none fits anyway
            shown = text if len(text) <= 30 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"
            raise self.fail(node, f"integer literal {shown} is out of range (Soufflé reads at most 64 bits)")
        return Num(int(digits or "0", base), self.pos(node), "number", text)

    def expr_unsigned(self, node: LarkTree) -> Expr:
        text = str(node.children[0])
        number = self.expr_number(Tree("number", [Token("NUMBER", text[:-1])], node.meta))
        assert isinstance(number, Num)
        return Num(number.value, number.pos, "unsigned", number.text)

    def expr_float(self, node: LarkTree) -> Expr:
        text = str(node.children[0])
        bits = parse_float(text)
        if bits is None:
            shown = text if len(text) <= 30 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"
            raise self.fail(node, f"float literal {shown} is out of the range of a 32-bit float")
        return Num(bits, self.pos(node), "float", text)

    def expr_ipv4(self, node: LarkTree) -> Expr:
        """Soufflé's a.b.c.d: the number (a << 24) + (b << 16) + (c << 8) + d, wrapped to 32 bits."""
        octets = [int(part) if len(part) <= 4 else 256 for part in str(node.children[0]).split(".")]
        if max(octets) > 255:
            raise self.fail(node, "IP out of range: each of its four numbers is at most 255")
        value = (octets[0] << 24) + (octets[1] << 16) + (octets[2] << 8) + octets[3]
        value = value - (1 << 32) if value >= 1 << 31 else value
        return Num(value, self.pos(node), "number", str(value))

    def expr_record(self, node: LarkTree) -> Expr:
        return Record(tuple(self.expr(a) for a in node.children if a is not None), self.pos(node))

    def expr_nil(self, node: LarkTree) -> Expr:
        return Nil(self.pos(node))

    def expr_adt(self, node: LarkTree) -> Expr:
        name, *args = node.children
        return Branch(str(name)[1:], tuple(self.expr(a) for a in args if a is not None), self.pos(node))

    def expr_string(self, node: LarkTree) -> Expr:
        tok = node.children[0]
        assert isinstance(tok, Token)
        return Str(self.unquote(tok), self.pos(node))

    def expr_neg(self, node: LarkTree) -> Expr:
        operand = self.expr(node.children[0])
        pos = self.pos(node)
        if isinstance(operand, Num) and not operand.text.startswith("-"):  # as Soufflé: the literal's own sign
            value = operand.value ^ 0x80000000 if operand.type == "float" else -operand.value
            return Num(value, pos, operand.type, "-" + operand.text)
        return Call("neg", (operand,), pos)

    def expr_binary(self, node: LarkTree) -> Expr:
        """``a ^ b`` (the one binary operator the grammar nests itself)."""
        left, op, right = node.children
        if op.children[0] == "**":
            raise self.fail(op, "unsupported: ** (Soufflé's power operator is ^)")
        return Binary(str(op.children[0]), self.expr(left), self.expr(right), self.pos(op))

    def expr_operators(self, node: LarkTree) -> Expr:
        """``a op b op c ...`` as the grammar leaves it, flat: nested here by precedence
        (left-associative), each operator a node visited and counted in the nesting as if the
        grammar had nested it (band bor bxor bshl bshr bshru land lor lxor: functors.py).
        ``expr`` entered the root's level already."""
        operands, ops = node.children[0::2], node.children[1::2]
        words = [str(op.children[0]) for op in ops]

        def nest(lo: int, hi: int, entered: bool) -> Expr:  # operands lo..hi
            if lo == hi:
                return self.expr(operands[lo])
            if not entered:
                self.nested(operands[lo], container=True)
            loosest = min(range(lo, hi), key=lambda i: (_PRECEDENCE[words[i]], -i))
            left, right = nest(lo, loosest, False), nest(loosest + 1, hi, False)
            if not entered:
                self.depth -= 1
            return Binary(words[loosest], left, right, self.pos(ops[loosest]))

        return nest(0, len(operands) - 1, True)

    def expr_bitwise_not(self, node: LarkTree) -> Expr:
        op, operand = node.children
        return Call(str(op.children[0]), (self.expr(operand),), self.pos(node))

    def expr_min_max_call(self, node: LarkTree) -> Expr:
        """``min(a, b, c)`` is ``min(min(a, b), c)``: Soufflé's min and max take two or more."""
        func, first, *rest = node.children
        expr = self.expr(first)
        for arg in rest:
            expr = Binary(str(func), expr, self.expr(arg), self.pos(func))
        return expr

    def expr_functor_call(self, node: LarkTree) -> Expr:
        """The grammar admits only the names Soufflé has, all implemented: those of the
        signature table, the conversions and ``as``, which the checker resolves by their
        argument's type."""
        name_tree, *args = node.children
        name = str(name_tree.children[0])
        present = [a for a in args if a is not None]
        if name == "as":
            return self.cast(node, present)
        if name in functors.CONVERSIONS:
            accepted, wanted = len(present) == 1, "one argument"
        else:
            sig = functors.signature(name)
            accepted, n = sig.accepts(len(present)), len(sig.params)
            count = "one argument" if n == 1 else f"{n - sig.optional} or {n} arguments" if sig.optional else f"{n} arguments"
            wanted = f"at least {count}" if sig.variadic else count
        if not accepted:
            raise self.fail(node, f"{name} takes {wanted}, not {len(present)}")
        return Call(name, tuple(self.expr(a) for a in present), self.pos(node))

    def expr_user_functor(self, node: LarkTree) -> Expr:
        """``@name(args)``: a user-defined functor, checked against its ``.functor``."""
        name, *args = node.children
        return Call(str(name), tuple(self.expr(a) for a in args if a is not None), self.pos(node))

    def cast(self, node: LarkTree, args: list[LarkTree]) -> Expr:
        """``as(expr, Type)``: the type is a name, written where an expression would be."""
        if len(args) != 2:
            raise self.fail(node, f"as takes an expression and a type, not {len(args)} arguments")
        kind = args[1]
        if kind.data != "var" or str(kind.children[0]) == "_":
            raise self.fail(kind, "as(x, T): T must be the name of a type")
        return Cast(self.expr(args[0]), str(kind.children[0]), self.pos(node), self.pos(kind))

    def expr_aggregate(self, node: LarkTree) -> Expr:
        func_tree, target, body = node.children
        func = str(func_tree.children[0]) if isinstance(func_tree, Tree) else str(func_tree)
        expr = None if target is None else self.expr(target)
        if body.data == "atom":
            literals: tuple[Literal, ...] = (self.atom(body),)
        else:
            alternatives = self.body(body)
            if len(alternatives) > 1:
                raise self.fail(node, "unsupported: disjunction (;) inside an aggregate body")
            pos = self.pos(node)  # a body that is false matches nothing: 0 != 0 says so to the checker
            literals = (
                alternatives[0]
                if alternatives
                else (Comparison("!=", Num(0, pos, "number", "0"), Num(0, pos, "number", "0"), pos),)
            )
        return Aggregate(func, expr, literals, self.pos(node))

    def unquote(self, tok: Token) -> str:
        """Decode a string literal; only the escapes \\" \\\\ \\t \\n \\r are known."""

        def escape(m: re.Match[str]) -> str:
            if m.group(1) not in _ESCAPES:
                pos = self.where.pos(tok.line or 0, (tok.column or 0) + 1 + m.start(), self.filename)
                raise DatalogError(pos, f"unknown escape sequence \\{m.group(1)} in string")
            return _ESCAPES[m.group(1)]

        return re.sub(r"\\(.)", escape, str(tok)[1:-1])
