"""Synthetic inputs: fact files for scaling experiments and benchmarks (``dask-datalog gen``,
``dask-datalog scale --gen``).

Every generator is a pure function of its parameters and a seed, vectorised in NumPy (Python
loops run over chunks, bit levels or relations, never over tuples). The graphs and points-to
inputs are distinct (src, dst) pairs without self-loops, sorted; the inputs of the flowlog-bench
programs (``program_inputs``) rows of any arity, symbols as strings. ``write_facts`` writes them
through the engine's writer (the C kernel of ``relation_output`` for numbers, its SymbolTable
for symbols), duplicates dropped, to ``<relation>.facts`` or, for ``--for PROGRAM``, to the files
its ``.input`` directives declare (``targets_for``). Same kind, parameters, seed and NumPy: same
bytes.

It lives in ``cluster/`` beside the CLI and the scaling driver that use it: it is a client-side
tool, not something a shard needs (``engine/`` is what runs on every worker), and it depends
on the engine only through its writer.

- ``rmat``: R-MAT with the Graph500 parameters, the vertex ids randomly permuted (as Graph500
  does, so that degree does not follow the id).
- ``chain``: 0 -> 1 -> ... -> length: ``length`` edges, ``length`` iterations of REACH.
- ``grid``: width x height vertices, id ``y * width + x``, edges right and down.
- ``andersen``, ``cspa``: the points-to inputs of examples/andersen.dl and examples/cspa.dl.
  Real programs keep most flows inside a function, where a few variables (parameters, ``this``)
  take most of them, and cross functions rarely (calls, globals). So each fact goes from a
  uniform variable to a Zipf-picked variable of the same function, or, with probability
  ``cross``, to any variable. Raising ``cross`` joins functions into larger strongly connected
  flows and makes the derived relations grow faster than linearly (examples/README.md).
- ``csda``, ``dyck``, ``crdt``, ``galen``, ``polonius``, ``z3``, ``doop``: inputs shaped like
  those of the flowlog-bench programs of those names, ``size`` scaling them about linearly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dask_datalog.cluster.experiments import program_inputs
from dask_datalog.cluster.experiments.program_inputs import Relations, Table

if TYPE_CHECKING:  # the engine is imported where gen writes: every command builds gen's parser
    from dask_datalog.engine import ir

Value = int | float
Params = dict[str, Value]

# Graph500's R-MAT quadrant probabilities (d = 1 - a - b - c = 0.05).
RMAT_A, RMAT_B, RMAT_C = 0.57, 0.19, 0.19
RMAT_CHUNK = 1 << 22  # edges drawn at once: bounds the temporaries (about 30 MB), not the graph
MAX_ID = 2**31 - 1  # the programs declare number (int32) columns

# Facts per variable, for each relation of the points-to inputs (size = number of variables).
ANDERSEN = {"AddressOf": 0.5, "Assign": 1.0, "Load": 0.2, "Store": 0.2}
CSPA = {"assign": 1.0, "dereference": 0.5}
# Peak bytes while one relation is made, per fact drawn (the draws, the packed sort, the output
# pairs: 35-43 measured with every kind at 3 M facts, tests/test_generate.py; 52 leaves room for
# other NumPy versions), and per fact held once made.
BYTES_PER_DRAWN, BYTES_PER_HELD = 52, 8


class BadParameter(ValueError):
    """A generator parameter out of range, unknown or malformed: the message says which."""


@dataclass(frozen=True)
class Param:
    """One parameter of a generator: ``name`` as a Python identifier (``--edge-factor`` and
    ``edge-factor=`` on the command line)."""

    name: str
    type: type[int] | type[float]
    default: Value
    help: str
    valid: Callable[[Value], bool]
    rule: str  # what ``valid`` asks, for the message

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")


@dataclass(frozen=True)
class Generator:
    """A kind of input: its parameters, the relations it makes, and how it grows with the
    workers in a weak-scaling experiment (``grow(params, workers)``)."""

    kind: str
    summary: str
    params: tuple[Param, ...]
    make: Callable[[np.random.Generator, Params], Relations]
    grow: Callable[[Params, int], Params]
    growth: str  # ``grow`` in words, for --help
    drawn: Callable[[Params], tuple[int, int]]  # facts drawn: (for the largest relation, in all)
    limits: Callable[[Params], None] = lambda p: None  # raises BadParameter for parameters that do not go together


def distinct_pairs(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(n, 2) int32 pairs, sorted, duplicates and self-loops dropped (sort of packed uint64 and
    an adjacent difference: never ``np.unique``'s hash path, slow on uint64 in NumPy >= 2.3)."""
    keep = src != dst
    packed = (src[keep].astype(np.uint64) << np.uint64(32)) | dst[keep].astype(np.uint64)
    packed.sort()
    first = np.ones(len(packed), dtype=bool)
    np.not_equal(packed[1:], packed[:-1], out=first[1:])
    packed = packed[first]
    return np.stack([(packed >> np.uint64(32)).astype(np.int32), (packed & np.uint64(0xFFFFFFFF)).astype(np.int32)], axis=1)


def rmat(rng: np.random.Generator, p: Params) -> Relations:
    """``edge_factor * 2**scale`` edges, each placed by ``scale`` quadrant choices made at once
    for a chunk of edges, over permuted vertex ids."""
    scale, m = int(p["scale"]), int(p["edge_factor"]) << int(p["scale"])
    src, dst = np.empty(m, dtype=np.uint32), np.empty(m, dtype=np.uint32)
    a, ab, abc = (np.float32(x) for x in (RMAT_A, RMAT_A + RMAT_B, RMAT_A + RMAT_B + RMAT_C))
    for start in range(0, m, RMAT_CHUNK):
        s, d = src[start : start + RMAT_CHUNK], dst[start : start + RMAT_CHUNK]
        s[:], d[:] = 0, 0
        for _ in range(scale):
            u = rng.random(len(s), dtype=np.float32)
            lower = u >= ab  # quadrants c and d: the source's bit is 1
            s <<= 1
            s |= lower
            d <<= 1
            d |= (u >= a) ^ lower ^ (u >= abc)  # quadrants b and d: the destination's bit is 1
    label = rng.permutation(1 << scale).astype(np.uint32)
    return {"edge": distinct_pairs(label[src], label[dst])}


def chain(rng: np.random.Generator, p: Params) -> Relations:
    i = np.arange(int(p["length"]), dtype=np.int64)
    return {"edge": distinct_pairs(i, i + 1)}


def grid(rng: np.random.Generator, p: Params) -> Relations:
    width, height = int(p["width"]), int(p["height"])
    ids = np.arange(width * height, dtype=np.int64).reshape(height, width)
    src = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
    dst = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
    return {"edge": distinct_pairs(src, dst)}


def flows(rng: np.random.Generator, n: int, per_var: float, skew: float, cross: float, function: int) -> np.ndarray:
    """One points-to relation over ``n`` variables: src uniform; dst, with probability ``cross``,
    any variable (a call or a global), else a variable of src's function (the block of
    ``function`` consecutive ids) picked by a Zipf law over its position, so the first
    variables of a function (parameters, ``this``) are the popular ones."""
    m = max(1, int(n * per_var))
    src = rng.integers(0, n, m)
    local = np.minimum(src - src % function + (rng.zipf(skew, m) - 1) % function, n - 1)
    return distinct_pairs(src, np.where(rng.random(m) < cross, rng.integers(0, n, m), local))


def points_to(per_var: Mapping[str, float]) -> Callable[[np.random.Generator, Params], Relations]:
    def make(rng: np.random.Generator, p: Params) -> Relations:
        return {
            name: flows(rng, int(p["size"]), share, float(p["skew"]), float(p["cross"]), int(p["function"]))
            for name, share in per_var.items()
        }

    return make


def program_input(make: Callable[[np.random.Generator, int], Relations]) -> Callable[[np.random.Generator, Params], Relations]:
    return lambda rng, p: make(rng, int(p["size"]))


def _grid_limits(p: Params) -> None:
    if int(p["width"]) * int(p["height"]) > MAX_ID:
        raise BadParameter(
            f"grid: width x height is {int(p['width']) * int(p['height']):,} vertices; at most {MAX_ID:,} fit a number column"
        )


def _per_size(per: int) -> Callable[[Params], tuple[int, int]]:
    """Values drawn: ``per`` for each unit of size, the largest relation counted as all of them."""
    return lambda p: (int(p["size"]) * per,) * 2


def _points_to_drawn(per_var: Mapping[str, float]) -> Callable[[Params], tuple[int, int]]:
    return lambda p: (int(p["size"] * max(per_var.values())), int(p["size"] * sum(per_var.values())))


def _positive(v: Value) -> bool:
    return v >= 1


def _scaled(name: str) -> Callable[[Params, int], Params]:
    """Weak scaling by ``name`` times the workers."""
    return lambda p, workers: {**p, name: p[name] * max(1, workers)}


def _rmat_grow(p: Params, workers: int) -> Params:
    n = max(1, workers)
    if n & (n - 1):
        raise BadParameter(f"rmat grows by one scale per doubling of the workers: {n} workers is not a power of two")
    return {**p, "scale": int(p["scale"]) + n.bit_length() - 1}


_SEEDLESS = "(the seed changes nothing)"
_POINTS_TO_PARAMS = (
    Param("size", int, 10_000, "number of variables", lambda v: 2 <= v <= MAX_ID, f"from 2 to {MAX_ID}"),
    Param("skew", float, 1.5, "Zipf exponent of the popular variables; lower is flatter", lambda v: v > 1, "more than 1"),
    Param("cross", float, 0.005, "fraction of facts that cross functions", lambda v: 0 <= v <= 1, "from 0 to 1"),
    Param("function", int, 32, "variables per function", _positive, "at least 1"),
)

# The flowlog-bench programs' inputs: (kind, what ``size`` counts, its default, values drawn per
# unit of size over all relations (for the memory estimate), what the kind makes).
PROGRAM_INPUTS = (
    ("csda", "program points", 100_000, 8, "NullEdge and Edge: null-flow over a program's dataflow edges (csda.dl)"),
    ("dyck", "nodes", 100_000, 8, "Arc (x, y, label 0 or 1): a labelled graph of matching parentheses (dyck.dl)"),
    ("crdt", "insert operations", 100_000, 8, "Insert_input and Remove_input: a sequence CRDT's edit trace (crdt.dl)"),
    ("galen", "concepts", 100_000, 8, "P, Q, R, C, U, S: an EL ontology in GALEN's normal form (galen.dl)"),
    ("polonius", "CFG points", 20_000, 16, "the 17 Polonius borrow-check inputs of polonius_int.dl"),
    ("z3", "instructions", 20_000, 48, "the 26 ddisasm def-use inputs of z3.dl (register and stack variables over basic blocks)"),
    ("doop", "methods", 2_000, 160, "the 32 DOOP inputs of doop.dl (Java points-to facts, symbol columns)"),
)

GENERATORS: dict[str, Generator] = {
    g.kind: g
    for g in (
        Generator(
            "rmat",
            "R-MAT graph, Graph500 parameters a=0.57, b=0.19, c=0.19 (d=0.05), vertex ids randomly permuted: "
            "edge-factor x 2^scale edges drawn over 2^scale vertices; duplicates and self-loops are dropped, "
            "so edge.facts has somewhat fewer lines",
            (
                Param("scale", int, 16, "log2 of the number of vertices", lambda v: 1 <= v <= 31, "from 1 to 31"),
                Param("edge_factor", int, 16, "edges drawn per vertex", _positive, "at least 1"),
            ),
            rmat,
            _rmat_grow,
            "scale + log2(workers) (power-of-two worker counts)",
            lambda p: (int(p["edge_factor"]) << int(p["scale"]),) * 2,
        ),
        Generator(
            "chain",
            f"the path 0 -> 1 -> ... -> length: length edges in edge.facts {_SEEDLESS}",
            (Param("length", int, 1000, "number of edges", lambda v: 1 <= v < MAX_ID, f"from 1 to {MAX_ID - 1}"),),
            chain,
            _scaled("length"),
            "length x workers",
            lambda p: (int(p["length"]),) * 2,
        ),
        Generator(
            "grid",
            "a width x height grid, vertex y*width+x, edges to the right and down neighbours: "
            f"2*width*height - width - height edges in edge.facts {_SEEDLESS}",
            (
                Param("width", int, 100, "vertices per row", _positive, "at least 1"),
                Param("height", int, 100, "rows", _positive, "at least 1"),
            ),
            grid,
            _scaled("height"),
            "height x workers",
            lambda p: (2 * int(p["width"]) * int(p["height"]),) * 2,
            _grid_limits,
        ),
        Generator(
            "andersen",
            "synthetic points-to input of examples/andersen.dl: AddressOf, Assign, Load and Store .facts",
            _POINTS_TO_PARAMS,
            points_to(ANDERSEN),
            _scaled("size"),
            "size x workers",
            _points_to_drawn(ANDERSEN),
        ),
        Generator(
            "cspa",
            "synthetic points-to input of examples/cspa.dl: assign and dereference .facts",
            _POINTS_TO_PARAMS,
            points_to(CSPA),
            _scaled("size"),
            "size x workers",
            _points_to_drawn(CSPA),
        ),
    )
} | {
    kind: Generator(
        kind,
        f"synthetic input of flowlog-bench's {summary}",
        (
            Param(
                "size",
                int,
                default,
                f"number of {unit}; the input grows about linearly with it",
                lambda v: 2 <= v <= MAX_ID // 64,
                f"from 2 to {MAX_ID // 64}",
            ),
        ),
        program_input(getattr(program_inputs, kind)),
        _scaled("size"),
        "size x workers",
        _per_size(per),
    )
    for kind, unit, default, per, summary in PROGRAM_INPUTS
}


def parameters(kind: str, given: Mapping[str, Value | str]) -> Params:
    """``given`` (values or their text) over the kind's defaults, converted and checked."""
    generator = GENERATORS[kind]
    known = {p.name: p for p in generator.params}
    out: Params = {p.name: p.default for p in generator.params}
    for key, value in given.items():
        param = known.get(key.replace("-", "_"))
        if param is None:
            names = ", ".join(p.flag for p in generator.params)
            raise BadParameter(f"{kind} has no parameter {key!r} (it has: {names})")
        try:
            out[param.name] = param.type(value)
        except ValueError:
            raise BadParameter(
                f"{kind} {param.flag}: {value!r} is not {'an integer' if param.type is int else 'a number'}"
            ) from None
        if not param.valid(out[param.name]):
            raise BadParameter(f"{kind} {param.flag} must be {param.rule}, not {value}")
    generator.limits(out)
    return out


def parse_args_text(kind: str, text: str) -> Params:
    """``scale=16,edge-factor=8`` (``--gen-args``) as checked parameters of ``kind``."""
    given: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadParameter(f"--gen-args: {item!r} is not NAME=VALUE")
        given[key.strip()] = value.strip()
    return parameters(kind, given)


def generate(kind: str, params: Mapping[str, Value | str], seed: int) -> Relations:
    """The relations of ``kind`` by name: the graphs and points-to inputs (n, 2) int32 pairs,
    sorted and distinct; the program inputs as ``program_inputs`` makes them."""
    if seed < 0:
        raise BadParameter(f"the seed must be 0 or more, not {seed}")
    import psutil  # here, as the writer: every command builds `gen`'s parser from GENERATORS

    checked = parameters(kind, params)
    check_memory(kind, checked, psutil.virtual_memory().available)
    return GENERATORS[kind].make(np.random.default_rng(seed), checked)


def weak(kind: str, params: Mapping[str, Value | str], workers: int) -> Params:
    """The parameters of a weak-scaling input for ``workers`` (0, in process, counts as 1),
    checked as given ones are (an R-MAT scale grown past 31, a grid past the id range)."""
    grown = GENERATORS[kind].grow(parameters(kind, params), workers)
    try:
        return parameters(kind, grown)
    except BadParameter as error:
        raise BadParameter(f"{error} (grown for {max(1, workers)} workers)") from None


def check_memory(kind: str, params: Params, available: int) -> None:
    """Refuses an input whose making would not fit in ``available`` bytes (else the OOM killer
    ends the process without a word, or NumPy with a traceback)."""
    largest, total = GENERATORS[kind].drawn(params)
    need = BYTES_PER_DRAWN * largest + BYTES_PER_HELD * total
    if need > available:
        raise BadParameter(
            f"{describe(kind, params, 0).removesuffix(' seed=0')} draws {total:,} facts and needs about "
            f"{need / 2**30:,.1f} GiB of memory to make them; {available / 2**30:,.1f} GiB is available"
        )


def describe(kind: str, params: Mapping[str, Value], seed: int) -> str:
    """``rmat scale=17 edge-factor=8 seed=0``: the input column of a scaling run."""
    shown = " ".join(f"{p.flag}={params[p.name]}" for p in GENERATORS[kind].params)
    return f"{kind} {shown} seed={seed}"


@dataclass(frozen=True)
class Target:
    """Where one relation goes: its file, the delimiter, and its declaration (column types)."""

    path: Path
    delimiter: str
    relation: ir.Relation
    rfc4180: bool = False  # symbols quoted, as the .input's rfc4180=true reads them


def columns(table: Table) -> tuple[np.ndarray, ...]:
    return tuple(table.T) if isinstance(table, np.ndarray) else table


def _is_symbol(column: np.ndarray) -> bool:
    return column.dtype.kind == "U"


def _column_type(column: np.ndarray) -> ir.BaseType:
    return "symbol" if _is_symbol(column) else "number"


def default_targets(out_dir: Path, relations: Mapping[str, Table]) -> dict[str, Target]:
    """``out_dir/<relation>.facts``, tab-separated, a column of strings a symbol, else a number."""
    from dask_datalog.engine import ir

    return {
        name: Target(
            out_dir / f"{name}.facts",
            "\t",
            ir.Relation(
                name,
                tuple(ir.Attribute(f"c{j}", _column_type(c), _column_type(c)) for j, c in enumerate(columns(table))),
            ),
        )
        for name, table in relations.items()
    }


def targets_for(program: ir.Program, out_dir: Path, relations: Mapping[str, Table]) -> dict[str, Target]:
    """Each relation to the file and delimiter that ``program``'s ``.input`` for it declares.
    Names match exactly, or else ignoring case where that is unambiguous (examples/cspa.dl reads
    ``assign``, flowlog-bench's cspa.dl ``Assign``). BadParameter (naming both sides) for a
    program input the kind does not make, a relation it makes that the program does not read,
    or one whose columns do not fit the declaration."""
    inputs = {spec.relation: spec for spec in program.inputs if spec.io == "file"}
    folded: dict[str, list[str]] = {}
    for name in inputs:
        folded.setdefault(name.lower(), []).append(name)
    matched: dict[str, str] = {}
    for name in relations:
        candidates = [name] if name in inputs else folded.get(name.lower(), [])
        if len(candidates) != 1:
            raise BadParameter(
                f"{program.source} reads no relation {name} (it reads {_listed(inputs)}; this kind makes {_listed(relations)})"
            )
        matched[name] = candidates[0]
    unread = sorted(set(inputs) - set(matched.values()))
    if unread:
        raise BadParameter(
            f"{program.source} reads {', '.join(unread)}, which this kind does not make (it makes {_listed(relations)})"
        )
    targets = {}
    for name, table in relations.items():
        spec, declared = inputs[matched[name]], program.relations[matched[name]]
        made = [_column_type(c) for c in columns(table)]
        wanted = [
            "symbol" if a.type == "symbol" else "number" if a.type in ("number", "unsigned") else a.type
            for a in declared.attributes
        ]
        if made != wanted:
            raise BadParameter(
                f"{program.source} declares {declared.name}({', '.join(wanted)}); this kind makes {name}({', '.join(made)})"
            )
        if spec.headers or spec.columns is not None:
            raise BadParameter(
                f"{program.source}: gen writes no header line and every column: .input {declared.name} asks for headers or columns"
            )
        targets[name] = Target(out_dir / (spec.filename or f"{declared.name}.facts"), spec.delimiter, declared, spec.rfc4180)
    return targets


def distinct(rows: np.ndarray) -> np.ndarray:
    """Encoded (n, k) uint32 rows without duplicates, in any order (the writer sorts them). Pairs
    are sorted in place as one uint64 each and copied only when some repeat: the large graphs
    are written with a few bytes per edge beside them; wider rows go through ``np.unique``."""
    if rows.shape[1] != 2:
        from dask_datalog.engine.values import distinct_rows

        return distinct_rows(rows)
    packed = rows.view(np.uint64).ravel()
    packed.sort()
    first = np.ones(len(packed), dtype=bool)
    np.not_equal(packed[1:], packed[:-1], out=first[1:])
    return rows if first.all() else rows[first]


def _listed(names: Mapping[str, object]) -> str:
    return ", ".join(sorted(names)) or "nothing"


def write_facts(out_dir: Path, relations: Mapping[str, Table], targets: Mapping[str, Target] | None = None) -> dict[str, int]:
    """Each relation to its target (default: ``out_dir/<relation>.facts``, tab-separated), one
    row per line, sorted, duplicates dropped, formatted by the engine's writer (the C kernel for
    numbers, its SymbolTable for symbols); returns the lines written per relation."""
    # The engine's writer, imported here: every command builds `gen`'s parser from GENERATORS.
    from dask_datalog.engine.formats.relation_output import write_relation
    from dask_datalog.engine.values import SymbolTable, encode

    out_dir.mkdir(parents=True, exist_ok=True)
    targets = targets if targets is not None else default_targets(out_dir, relations)
    # One table for every string, ids in text order (what the writer sorts symbols by).
    strings = [c for t in relations.values() for c in columns(t) if _is_symbol(c)]
    text = np.unique(np.concatenate(strings)) if strings else np.empty(0, dtype=str)
    symbols = SymbolTable.sorted_union([text.tolist()])
    counts = {}
    for name, table in relations.items():
        target = targets[name]
        cols = columns(table)
        rows = np.empty((len(cols[0]), len(cols)), dtype=np.uint32)
        for j, c in enumerate(cols):
            rows[:, j] = np.searchsorted(text, c) if _is_symbol(c) else encode(c, "number")
        rows = distinct(rows)
        write_relation(target.path, rows, target.relation, symbols, target.delimiter, rfc4180=target.rfc4180)
        counts[name] = len(rows)
    return counts
