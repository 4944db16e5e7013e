"""The example programs against results that do not come from this engine.

- Real graphs: REACH (examples/reach.dl) and SG (examples/sg.dl) sizes and semi-naive iteration
  counts published for the GPUJoin/GPULog/MNMGDatalog graphs (tests/data/SOURCES.md,
  ../shared/data/SOURCES.md), all independently recomputed upstream.
- Tiny graphs and every example's own fact dir: exact tuple sets from plain Python fixpoints
  written here, plus the two expected-TC files that ship with the tiny graphs.
- Generated points-to inputs: the same Python fixpoints, and the sizes examples/README.md quotes.

Timings with the NumPy backend on a 2-core machine: every unmarked case is under 3 s
(delaunay_n16 REACH, 6.1 M tuples, is the largest). p2p-Gnutella09 (REACH 21 M tuples, ~4 s;
SG 62 M tuples, ~40 s and 2.3 GB) is marked slow and runs only with ``-m slow``.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pytest

from dask_datalog.cluster import Program
from dask_datalog.cluster.experiments.generate import generate, write_facts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
TINY = DATA / "tiny"
SHARED = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"

Pair = tuple[int, int]


def program(name: str) -> Program:
    return Program.from_file(EXAMPLES / f"{name}.dl")


def read_pairs(path: Path) -> list[Pair]:
    return [(int(a), int(b)) for a, b in (line.split("\t") for line in path.read_text().splitlines() if line)]


def productive_iterations(stats: dict, relation: str) -> int:
    """Iterations of the relation's stratum that added tuples to it: the published iteration count."""
    stratum = next(s for s in stats["strata"] if relation in s["relations"])
    return sum(1 for it in stratum["iterations"] if it["delta"].get(relation, 0) > 0)


# ----------------------------------------------------------------------------- Python fixpoints


def index(pairs: Iterable[Pair]) -> defaultdict[int, set[int]]:
    out: defaultdict[int, set[int]] = defaultdict(set)
    for a, b in pairs:
        out[a].add(b)
    return out


def transitive_closure(edges: Iterable[Pair]) -> set[Pair]:
    succ = index(edges)
    closure: set[Pair] = set()
    for source in list(succ):
        seen: set[int] = set()
        stack = list(succ[source])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(succ[node])
        closure |= {(source, node) for node in seen}
    return closure


def same_generation(edges: Iterable[Pair]) -> set[Pair]:
    children = index(edges)
    sg = {(x, y) for kids in children.values() for x in kids for y in kids if x != y}
    delta = set(sg)
    while delta:
        delta = {(x, y) for a, b in delta for x in children[a] for y in children[b]} - sg
        sg |= delta
    return sg


def andersen(address_of: set[Pair], assign: set[Pair], load: set[Pair], store: set[Pair]) -> set[Pair]:
    points_to = set(address_of)
    while True:
        pts = index(points_to)
        new = {(y, x) for y, z in assign for x in pts[z]}
        new |= {(y, w) for y, x in load for z in pts[x] for w in pts[z]}
        new |= {(z, w) for y, x in store for z in pts[y] for w in pts[x]}
        if new <= points_to:
            return points_to
        points_to |= new


def cspa(assign: set[Pair], dereference: set[Pair]) -> tuple[set[Pair], set[Pair], set[Pair]]:
    nodes = {v for pair in assign for v in pair}
    value_flow = set(assign) | {(x, x) for x in nodes}
    memory_alias = {(x, x) for x in nodes}
    value_alias: set[Pair] = set()
    deref = index(dereference)
    while True:
        vf, ma, va = index(value_flow), index(memory_alias), index(value_alias)
        new_vf = {(x, y) for x, z in assign for y in ma[z]} | {(x, y) for x, z in value_flow for y in vf[z]}
        new_ma = {(x, w) for y, x in dereference for z in va[y] for w in deref[z]}
        new_va = {(x, y) for targets in vf.values() for x in targets for y in targets}
        new_va |= {(x, y) for z, x in value_flow for w in ma[z] for y in vf[w]}
        if new_vf <= value_flow and new_ma <= memory_alias and new_va <= value_alias:
            return value_flow, memory_alias, value_alias
        value_flow |= new_vf
        memory_alias |= new_ma
        value_alias |= new_va


# ----------------------------------------------------------------------------- tiny graphs


@pytest.mark.parametrize("graph, expected", [("data_5.txt", "data_5_TC.txt"), ("dummy.facts", "dummy_TC.txt")])
def test_tc_matches_shipped_expected_tc(graph: str, expected: str, backend: str) -> None:
    result = program("reach").run(facts={"edge": TINY / graph}, backend=backend)
    assert result.tuples("path") == set(read_pairs(TINY / expected))


@pytest.mark.parametrize(
    "graph, tc_size, tc_iters, sg_size, sg_iters",
    [
        ("data_5.txt", 9, 3, 4, 3),
        ("data_10.txt", 18, 3, 11, 2),
        ("dummy.facts", 13, None, None, None),
        ("data_22.txt", 253, 22, 0, 0),
        ("tc_paper.txt", None, None, None, None),
        ("paper.txt", None, None, None, None),  # ends with a blank line
    ],
)
def test_tiny_graphs_exact(graph: str, tc_size, tc_iters, sg_size, sg_iters, backend: str) -> None:
    edges = read_pairs(TINY / graph)
    reach = program("reach").run(facts={"edge": TINY / graph}, backend=backend)
    sg = program("sg").run(facts={"edge": TINY / graph}, backend=backend)
    assert reach.tuples("path") == transitive_closure(edges)
    assert sg.tuples("sg") == same_generation(edges)
    for result, name, size, iters in ((reach, "path", tc_size, tc_iters), (sg, "sg", sg_size, sg_iters)):
        if size is not None:
            assert result.sizes[name] == size
        if iters is not None:
            assert productive_iterations(result.stats, name) == iters


def test_reach_output_file_is_the_sorted_tc(tmp_path: Path, backend: str) -> None:
    result = program("reach").run(facts={"edge": TINY / "data_5.txt"}, backend=backend)
    stdout = io.StringIO()
    result.write(tmp_path, stream=stdout)
    expected = sorted(read_pairs(TINY / "data_5_TC.txt"))
    assert (tmp_path / "path.csv").read_text() == "".join(f"{a}\t{b}\n" for a, b in expected)
    assert stdout.getvalue() == "path\t9\n"


# ----------------------------------------------------------------------------- real graphs

# (program, relation, graph file, published size, published iterations)
IN_REPO = [
    ("reach", "path", "OL.cedge/data_7035.txt", 146_120, 64),
    ("reach", "path", "cal.cedge/edge.facts", 501_755, 195),
    ("reach", "path", "TG.cedge/data_23874.txt", 481_121, 58),
    pytest.param("reach", "path", "p2p-Gnutella09/data_26013.txt", 21_402_960, 20, marks=pytest.mark.slow),
    ("sg", "sg", "OL.cedge/data_7035.txt", 285_431, 56),
    ("sg", "sg", "cal.cedge/edge.facts", 23_519, 58),
    ("sg", "sg", "TG.cedge/data_23874.txt", 608_090, 54),
    pytest.param("sg", "sg", "p2p-Gnutella09/data_26013.txt", 62_056_583, 14, marks=pytest.mark.slow),
]

SHARED_GRAPHS = [
    ("reach", "path", "ego-Facebook/data_88234.txt", 2_508_102, 17),
    ("reach", "path", "cti/data_48232.txt", 6_859_653, 53),
    ("reach", "path", "wing/data_121544.txt", 329_438, 11),
    ("reach", "path", "luxembourg_osm/data_119666.txt", 5_022_084, 426),
    ("reach", "path", "delaunay_n16/data_196575.txt", 6_137_959, 101),
    ("sg", "sg", "wing/data_121544.txt", 647_999, 8),
    ("sg", "sg", "luxembourg_osm/data_119666.txt", 245_221, 326),
    ("sg", "sg", "cal.cedge/data_21693.txt", 23_519, 58),
    ("sg", "sg", "OL.cedge/data_7035.txt", 285_431, 56),
    ("sg", "sg", "TG.cedge/data_23874.txt", 608_090, 54),
]


def check_graph(name: str, relation: str, path: Path, size: int, iters: int, backend: str) -> None:
    result = program(name).run(facts={"edge": path}, backend=backend)
    assert result.sizes[relation] == size
    assert productive_iterations(result.stats, relation) == iters


@pytest.mark.parametrize("name, relation, graph, size, iters", IN_REPO)
def test_in_repo_graph(name: str, relation: str, graph: str, size: int, iters: int, backend: str) -> None:
    check_graph(name, relation, DATA / graph, size, iters, backend)


@pytest.mark.parametrize("name, relation, graph, size, iters", SHARED_GRAPHS)
def test_shared_graph(name: str, relation: str, graph: str, size: int, iters: int, backend: str) -> None:
    path = SHARED / graph
    if not path.exists():
        pytest.skip(f"{path} is absent: the reference graphs live in ../shared/data beside the repo")
    check_graph(name, relation, path, size, iters, backend)


# ----------------------------------------------------------------------------- the other examples


def fact_pairs(example: str, relation: str) -> set[Pair]:
    return set(read_pairs(EXAMPLES / "facts" / example / f"{relation}.facts"))


def test_andersen_example(backend: str) -> None:
    facts = [fact_pairs("andersen", r) for r in ("AddressOf", "Assign", "Load", "Store")]
    result = program("andersen").run(fact_dir=EXAMPLES / "facts" / "andersen", backend=backend)
    assert result.tuples("PointsTo") == andersen(*facts)


def test_cspa_example(backend: str) -> None:
    expected = cspa(fact_pairs("cspa", "assign"), fact_pairs("cspa", "dereference"))
    result = program("cspa").run(fact_dir=EXAMPLES / "facts" / "cspa", backend=backend)
    assert (result.tuples("ValueFlow"), result.tuples("MemoryAlias"), result.tuples("ValueAlias")) == expected


def test_negation_example(backend: str) -> None:
    edges = fact_pairs("negation", "edge")
    sources = {int(line) for line in (EXAMPLES / "facts/negation/source.facts").read_text().split()}
    closure = transitive_closure(edges)
    nodes = {v for pair in edges for v in pair}
    reached = sources | {y for x, y in closure if x in sources}
    result = program("negation").run(fact_dir=EXAMPLES / "facts" / "negation", backend=backend)
    assert result.tuples("unreachable") == {(x,) for x in nodes - reached} == {(5,), (6,)}
    assert result.tuples("acyclic_edge") == {(x, y) for x, y in edges if (y, x) not in closure} == {(3, 4)}


def test_aggregate_example(backend: str) -> None:
    edges = fact_pairs("aggregate", "edge")
    succ = index(edges)
    nodes = {v for pair in edges for v in pair}
    degree = {x: len(succ[x]) for x in nodes}
    top = max(degree.values())
    result = program("aggregate").run(fact_dir=EXAMPLES / "facts" / "aggregate", backend=backend)
    assert result.tuples("out_degree") == set(degree.items())
    assert result.tuples("max_out_degree") == {(top,)}
    assert result.tuples("hub") == {(x,) for x, d in degree.items() if d == top}
    assert result.tuples("smallest_successor") == {(x, min(ys)) for x, ys in succ.items() if ys}
    assert result.tuples("degree_sum") == result.tuples("edge_count") == {(len(edges),)}


def test_reach_and_sg_examples_run_on_their_fact_dirs(backend: str) -> None:
    for name, relation, expected in (("reach", "path", transitive_closure), ("sg", "sg", same_generation)):
        fact_dir = EXAMPLES / "facts" / name
        result = program(name).run(fact_dir=fact_dir, backend=backend)
        assert result.tuples(relation) == expected(fact_pairs(name, "edge"))


def test_generated_andersen(tmp_path: Path, backend: str) -> None:
    counts = write_facts(tmp_path, generate("andersen", {"size": 1000}, seed=0))
    facts = [set(read_pairs(tmp_path / f"{r}.facts")) for r in ("AddressOf", "Assign", "Load", "Store")]
    assert sum(counts.values()) == 1733  # examples/README.md
    result = program("andersen").run(fact_dir=tmp_path, backend=backend)
    assert result.tuples("PointsTo") == andersen(*facts)
    assert result.sizes["PointsTo"] == 3278


def test_generated_cspa(tmp_path: Path, backend: str) -> None:
    counts = write_facts(tmp_path, generate("cspa", {"size": 1000}, seed=0))
    assign, dereference = (set(read_pairs(tmp_path / f"{r}.facts")) for r in ("assign", "dereference"))
    assert sum(counts.values()) == 1349  # examples/README.md
    result = program("cspa").run(fact_dir=tmp_path, backend=backend)
    value_flow, memory_alias, value_alias = cspa(assign, dereference)
    assert result.tuples("ValueFlow") == value_flow
    assert result.tuples("MemoryAlias") == memory_alias
    assert result.tuples("ValueAlias") == value_alias
    assert [len(value_flow), len(memory_alias), len(value_alias)] == [5100, 1545, 10579]
