"""`dask-datalog gen`: every kind is deterministic by seed, has the shape it promises, and writes
files the example programs read; the inputs of the flowlog-bench programs keep their structural
invariants, go where ``--for PROGRAM`` says, and give the same outputs on Soufflé and on us."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dask_datalog.cluster import Program
from dask_datalog.cluster.cli.main import main
from dask_datalog.cluster.experiments.generate import (
    BYTES_PER_DRAWN,
    BYTES_PER_HELD,
    GENERATORS,
    BadParameter,
    check_memory,
    generate,
    parameters,
    parse_args_text,
    weak,
)
from dask_datalog.engine.frontend.load import load_program_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SOUFFLE = Path(__file__).resolve().parents[2] / "shared" / "peers" / "souffle-2.5" / "bin" / "souffle"
FLOWLOG = (
    Path(os.environ.get("FLOWLOG_BENCH", Path(__file__).resolve().parents[2] / "flowlog-bench"))
    / "programs"
    / "oracle"
    / "souffle"
)

# Small instances of every kind: (kind, options).
GRAPH_KINDS = [
    ("rmat", ["--scale", "10", "--edge-factor", "8"]),
    ("chain", ["--length", "50"]),
    ("grid", ["--width", "7", "--height", "5"]),
    ("andersen", ["--size", "2000"]),
    ("cspa", ["--size", "2000"]),
]
# The flowlog-bench programs' inputs: (kind, size, the program that reads them).
PROGRAM_KINDS = [
    ("csda", 2000, "csda"),
    ("dyck", 2000, "dyck"),
    ("crdt", 2000, "crdt"),
    ("galen", 2000, "galen"),
    ("polonius", 2000, "polonius_int"),
    ("z3", 2000, "z3"),
    ("doop", 400, "doop"),
]
KINDS = GRAPH_KINDS + [(kind, ["--size", str(size)]) for kind, size, _ in PROGRAM_KINDS]


def gen(out: Path, kind: str, options: list[str], seed: int = 0) -> dict[str, bytes]:
    assert main(["gen", kind, str(out), "--seed", str(seed), *options]) == 0
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.facts"))}


def pairs(data: bytes) -> np.ndarray:
    return np.array(data.split(), dtype=np.int64).reshape(-1, 2)


@pytest.mark.parametrize("kind, options", KINDS)
def test_same_seed_same_bytes(tmp_path: Path, kind: str, options: list[str]) -> None:
    first = gen(tmp_path / "a", kind, options, seed=3)
    assert first and all(first.values())
    assert gen(tmp_path / "b", kind, options, seed=3) == first
    if kind not in ("chain", "grid"):  # those two are the same for every seed
        assert gen(tmp_path / "c", kind, options, seed=4) != first


@pytest.mark.parametrize("kind, options", GRAPH_KINDS)
def test_sorted_distinct_no_self_loops(tmp_path: Path, kind: str, options: list[str]) -> None:
    for data in gen(tmp_path, kind, options).values():
        rows = pairs(data)
        assert data.endswith(b"\n") and b"\t" in data
        assert np.all(rows[:, 0] != rows[:, 1])
        packed = rows[:, 0] << 32 | rows[:, 1]
        assert np.all(packed[1:] > packed[:-1]), "sorted and distinct"


def test_chain(tmp_path: Path) -> None:
    rows = pairs(gen(tmp_path, "chain", ["--length", "50"])["edge.facts"])
    assert rows.tolist() == [[i, i + 1] for i in range(50)]


def test_grid(tmp_path: Path) -> None:
    width, height = 7, 5
    rows = pairs(gen(tmp_path, "grid", ["--width", str(width), "--height", str(height)])["edge.facts"])
    assert len(rows) == 2 * width * height - width - height
    step = rows[:, 1] - rows[:, 0]
    right = (step == 1) & (rows[:, 0] % width < width - 1)
    down = step == width
    assert np.all(right | down)
    assert right.sum() == (width - 1) * height and down.sum() == width * (height - 1)
    assert rows.max() == width * height - 1


def test_rmat(tmp_path: Path) -> None:
    scale, edge_factor = 10, 8
    rows = pairs(gen(tmp_path, "rmat", ["--scale", str(scale), "--edge-factor", str(edge_factor)])["edge.facts"])
    assert 0 < len(rows) <= edge_factor * 2**scale
    assert len(rows) > edge_factor * 2**scale // 2, "duplicates are a minority at this density"
    assert rows.min() >= 0 and rows.max() < 2**scale
    degree = np.bincount(rows[:, 0], minlength=2**scale)
    assert degree.max() > 10 * degree.mean(), "R-MAT's skew: a few hubs"


@pytest.mark.parametrize(
    "kind, relations, options",
    [
        ("andersen", ("AddressOf", "Assign", "Load", "Store"), ["--size", "2000"]),
        ("cspa", ("assign", "dereference"), ["--size", "2000"]),
    ],
)
def test_points_to_inputs_run(
    tmp_path: Path, kind: str, relations: tuple[str, ...], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    written = gen(tmp_path, kind, options)
    assert sorted(written) == sorted(f"{r}.facts" for r in relations)
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    result = Program.from_file(EXAMPLES / f"{kind}.dl").run(fact_dir=tmp_path, backend="numpy")
    for relation in relations:
        lines = written[f"{relation}.facts"].count(b"\n")
        assert result.sizes[relation] == lines == int(printed[str(tmp_path / f"{relation}.facts")])


def test_weak_growth() -> None:
    assert weak("rmat", {"scale": 10}, 4)["scale"] == 12
    assert weak("rmat", {"scale": 10}, 0)["scale"] == 10  # in process: the one-worker input
    assert weak("chain", {"length": 10}, 3)["length"] == 30
    assert weak("grid", {"width": 4, "height": 5}, 2) == {"width": 4, "height": 10}
    assert weak("cspa", {"size": 100}, 2)["size"] == 200
    with pytest.raises(BadParameter, match="power of two"):
        weak("rmat", {}, 3)


def test_args_text() -> None:
    assert parse_args_text("rmat", "scale=12, edge-factor=4") == {"scale": 12, "edge_factor": 4}
    assert parse_args_text("rmat", "edge_factor=2") == {"scale": 16, "edge_factor": 2}
    for text, message in (("scale", "NAME=VALUE"), ("size=3", "no parameter 'size'"), ("scale=1.5", "not an integer")):
        with pytest.raises(BadParameter, match=message):
            parse_args_text("rmat", text)
    with pytest.raises(BadParameter, match="at most"):
        generate("grid", {"width": 2**16, "height": 2**16}, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["rmat", "OUT", "--scale", "0"], "rmat scale must be from 1 to 31"),
        (["rmat", "OUT", "--edge-factor", "x"], "invalid int value"),
        (["cspa", "OUT", "--skew", "1"], "skew must be more than 1"),
        (["chain", "OUT", "--seed", "-1"], "seed must be 0 or more"),
        (["mesh", "OUT"], "invalid choice"),
        (["rmat", "OUT", "--scale", "31", "--edge-factor", "100000"], "GiB of memory to make them; "),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["gen", *[str(tmp_path / a) if a == "OUT" else a for a in args]])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err
    assert not list(tmp_path.iterdir()), "nothing written"


def test_unwritable_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["gen", "chain", str(tmp_path / "file" / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


# About 3 M facts drawn for each kind: the estimate is measured at this size and above.
LARGE = [
    ("rmat", {"scale": 18, "edge_factor": 12}),
    ("chain", {"length": 3_000_000}),
    ("grid", {"width": 1500, "height": 1000}),
    ("andersen", {"size": 3_000_000}),
    ("cspa", {"size": 3_000_000}),
]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
@pytest.mark.parametrize("kind, params", LARGE)
def test_the_memory_estimate_bounds_the_real_peak(tmp_path: Path, kind: str, params: dict[str, int]) -> None:
    """What ``check_memory`` refuses on must be what the generator would need: the peak
    resident memory that making and writing the input adds, measured in a fresh process, stays
    under the estimate (and not several times under it, or it refuses inputs that fit)."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries the latter over exec from the parent
    # (this test process, hundreds of MB after other tests).
    script = f"""
import re, sys
from pathlib import Path
from dask_datalog.cluster.experiments import generate
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
before = peak()
generate.write_facts(Path(sys.argv[1]), generate.generate({kind!r}, {params!r}, 0))
print(peak() - before)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    added = int(done.stdout)
    largest, total = GENERATORS[kind].drawn(parameters(kind, params))
    estimate = BYTES_PER_DRAWN * largest + BYTES_PER_HELD * total
    assert 0.3 * estimate < added <= estimate, (added, estimate)  # chain: 0.46-0.72 by the allocator's reuse
    with pytest.raises(BadParameter, match="needs about"):
        check_memory(kind, parameters(kind, params), estimate - 1)
    check_memory(kind, parameters(kind, params), estimate)


def made(kind: str, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A kind's relations as (n, k) arrays (symbols as str), duplicates kept."""
    relations = generate(kind, {"size": size}, seed)
    return {name: t if isinstance(t, np.ndarray) else np.stack(t, axis=1) for name, t in relations.items()}


def member(keys: np.ndarray, of: np.ndarray) -> bool:
    return bool(np.isin(keys, of).all())


def test_csda_null_flows_over_function_cfgs() -> None:
    size = 5000
    r = made("csda", size)
    edge, null = r["Edge"], r["NullEdge"]
    assert edge.min() >= 0 and edge.max() < size and null.max() < size
    assert np.all(null[:, 1] == null[:, 0] + 1), "a null enters at a node and flows to its successor"
    calls = edge[edge[:, 0] // 48 != edge[:, 1] // 48]
    assert len(calls) and np.all(calls[:, 1] % 48 == 0), "edges leave a function only to a function entry"
    assert np.all(calls[:, 1] > calls[:, 0]), "calls go forward: no cycle through calls"


def test_dyck_labels_and_range() -> None:
    arc = made("dyck", 5000)["Arc"]
    assert arc.shape[1] == 3 and set(np.unique(arc[:, 2])) == {0, 1}
    assert arc[:, :2].min() >= 0 and arc[:, :2].max() < 5000 and np.all(arc[:, 0] != arc[:, 1])


def test_crdt_ids_and_parents() -> None:
    size = 5000
    r = made("crdt", size)
    insert, remove = r["Insert_input"], r["Remove_input"]
    counter, node, parent, parent_node = insert.T
    assert np.array_equal(counter, np.arange(1, size + 1)), "a Lamport clock: one op per counter"
    assert node.max() < 10, "the program orders ids by counter * 10 + node"
    assert np.all(parent < counter), "an element goes after an earlier one (or the root, 0)"
    known = parent > 0
    assert np.array_equal(parent_node[known], node[parent[known] - 1]) and np.all(parent_node[~known] == 0)
    assert member(remove[:, 0] * 10 + remove[:, 1], counter * 10 + node) and len(remove) == size // 5


def test_galen_hierarchy_and_roles() -> None:
    size = 5000
    r = made("galen", size)
    told = r["P"][: np.count_nonzero(np.arange(1, size) % 64)]  # each concept's first parent
    assert np.all(told[:, 1] < told[:, 0]) and np.all(told[:, 1] // 64 == told[:, 0] // 64), "a tree in each module"
    roles = 16 + size // 500
    for name, column in (("Q", 1), ("U", 1), ("S", 0), ("S", 1)):
        assert r[name][:, column].max() < roles
    assert np.all(r["S"][:, 1] < r["S"][:, 0]), "role hierarchy without cycles"
    for name in ("P", "Q", "C", "U"):
        assert r[name][:, [0, -1]].max() < size


def test_polonius_facts_stay_in_their_function() -> None:
    size = 4800
    r = made("polonius", size)
    cfg = r["cfg_edge"]
    assert np.all(cfg[:, 0] // 48 == cfg[:, 1] // 48), "no CFG edge between functions"
    assert len(np.unique(cfg)) == size, "every point is a CFG node"
    issued = r["loan_issued_at"]
    assert np.array_equal(issued[:, 0], np.arange(len(issued)))
    killed = r["loan_killed_at"]
    at = issued[killed[:, 0], 2]
    assert np.all(killed[:, 1] >= at) and np.all(killed[:, 1] // 48 == at // 48), "a loan dies after it is issued"
    subset = r["subset_base"]
    local = (subset[:, 0] >= 2) & (subset[:, 1] >= 2)
    assert np.all((subset[local, 0] - 2) // 12 == subset[local, 2] // 48), "origins of the point's function"
    assert np.array_equal(np.unique(r["universal_region"]), [0, 1])
    path_var = r["path_is_var"]
    assert np.array_equal(path_var[:, 0], 2 * path_var[:, 1]) and np.array_equal(r["child_path"][:, 1] + 1, r["child_path"][:, 0])


def test_z3_blocks_and_definitions() -> None:
    r = made("z3", 3000)
    code = r["Code_in_block"]
    ea, block = code.T
    assert len(np.unique(ea)) == len(ea) == 3000, "each instruction in one block"
    last = r["Block_last_instruction"]
    assert np.array_equal(np.unique(block), last[:, 0])
    nxt = r["Block_next"]
    assert member(nxt[:, 0], last[:, 0]) and member(nxt[:, 2], last[:, 0])
    assert np.array_equal(nxt[:, 1], last[np.searchsorted(last[:, 0], nxt[:, 0]), 1]), "BlockEnd is the block's last EA"
    in_block = dict(zip(ea.tolist(), block.tolist()))
    last_def = r["Reg_def_use_block_last_def"]
    assert np.all(last_def[:, 1] < last_def[:, 0])
    assert all(in_block[u] == in_block[d] for u, d in last_def[:50, :2].tolist()), "a block's own definitions"
    assert 5 not in r["Reg_def_use_defined_in_block"][:, 1], "the frame base is never redefined"
    stack = r["Arch_memory_access"]
    assert set(np.unique(stack[:, 0])) == {0, 2309374} and np.all(stack[:, 3:5] == [5, 4])
    calls = r["Direct_call"]
    assert member(calls[:, 1], r["Reg_def_use_return_block_end"][:, 0]), "calls go to function entries"


def test_doop_facts_refer_to_declared_things() -> None:
    r = made("doop", 400)
    methods = r["_Method"][:, 0]
    assert "<p0.C1: void main(java.lang.String[])>" in methods and r["MainClass"].tolist() == [["p0.C1"]]
    for name in ("_StaticMethodInvocation", "_SpecialMethodInvocation", "_VirtualMethodInvocation"):
        assert member(r[name][:, 2], methods) and member(r[name][:, -1], methods)
    variables = r["_Var_DeclaringMethod"][:, 0]
    for name, column in (("_AssignLocal", 2), ("_AssignLocal", 3), ("_ThisVar", 1), ("ActualParam", 2), ("_Return", 2)):
        assert member(r[name][:, column], variables)
    classes = r["_ClassType"][:, 0]
    assert member(r["DirectSuperclass"], classes) and member(r["_Method"][:, 3], classes)
    assert member(r["_AssignHeapAllocation"][:, 2], r["_NormalHeap"][:, 0])


DECLARING = """
.decl Arc(x: number, y: number, l: number)
.input Arc(IO="file", filename="arcs.txt", delimiter=",")
.decl D(x: number, y: number)
D(x, y) :- Arc(x, y, _).
"""


@pytest.mark.parametrize(
    "program, message",
    [
        (DECLARING + ".decl Extra(x: number)\n.input Extra\n", "reads Extra, which this kind does not make (it makes Arc)"),
        (DECLARING.replace(".input Arc(", ".output D\n.input D("), "reads no relation Arc (it reads D; this kind makes Arc)"),
        (
            DECLARING.replace("l: number", "l: symbol"),
            "declares Arc(number, number, symbol); this kind makes Arc(number, number, number)",
        ),
    ],
)
def test_for_mismatch_is_one_line(tmp_path: Path, program: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.dl").write_text(program)
    with pytest.raises(SystemExit) as exit:
        main(["gen", "dyck", "--for", str(tmp_path / "p.dl"), "-o", str(tmp_path / "out"), "--size", "50"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert message in err and str(tmp_path / "p.dl") in err
    assert not (tmp_path / "out").exists(), "nothing written"


def test_for_writes_the_declared_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.dl").write_text(DECLARING + ".output D\n")
    assert main(["gen", "dyck", "--for", str(tmp_path / "p.dl"), "-o", str(tmp_path / "out"), "--size", "50"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["arcs.txt"]
    lines = (tmp_path / "out" / "arcs.txt").read_text().splitlines()
    assert capsys.readouterr().out == f"{tmp_path / 'out' / 'arcs.txt'}\t{len(lines)}\n"
    assert all(len(line.split(",")) == 3 for line in lines)
    assert main(["run", str(tmp_path / "p.dl"), "-F", str(tmp_path / "out"), "-D", str(tmp_path / "d"), "--no-cluster"]) == 0
    assert len((tmp_path / "d" / "D.csv").read_text().splitlines()) == len({tuple(line.split(",")[:2]) for line in lines})


def test_for_matches_names_ignoring_case(tmp_path: Path) -> None:
    """The cspa kind makes examples/cspa.dl's assign and dereference; a program that reads
    Assign and Dereference gets them too."""
    program = "".join(
        f'.decl {r}(x: number, y: number)\n.input {r}(filename="{r}.csv", delimiter=",")\n' for r in ("Assign", "Dereference")
    )
    (tmp_path / "p.dl").write_text(program)
    assert main(["gen", "cspa", str(tmp_path / "out"), "--for", str(tmp_path / "p.dl"), "--size", "100"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Assign.csv", "Dereference.csv"]


def test_output_directory_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], [str(tmp_path / "a"), "-o", str(tmp_path / "b")]):
        with pytest.raises(SystemExit):
            main(["gen", "chain", *args])
        assert "OUT_DIR or -o DIR" in capsys.readouterr().err.splitlines()[-1]


def test_symbols_are_written_as_text(tmp_path: Path) -> None:
    gen(tmp_path, "doop", ["--size", "40"])
    method = (tmp_path / "_Method.facts").read_text().splitlines()
    assert "<p0.C1: void main(java.lang.String[])>\tmain\tjava.lang.String[]\tp0.C1\tvoid\t(java.lang.String[])void\t1" in method
    assert method == sorted(method)


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
@pytest.mark.skipif(not FLOWLOG.is_dir(), reason=f"flowlog-bench is not at {FLOWLOG} (set FLOWLOG_BENCH)")
@pytest.mark.parametrize("kind, size, program", PROGRAM_KINDS + [("andersen", 2000, "andersen"), ("cspa", 2000, "cspa")])
def test_program_outputs_match_souffle(tmp_path: Path, kind: str, size: int, program: str) -> None:
    """The flowlog-bench program on a generated input (written with --for): every relation it
    prints the size of, as a set, from Soufflé's interpreter and from us; and it derives some."""
    source = (FLOWLOG / f"{program}.dl").read_text()
    shown = load_program_file(FLOWLOG / f"{program}.dl").printsizes
    copy = tmp_path / f"{program}.dl"  # the program with an .output for what it prints the size of
    copy.write_text(source + "".join(f"\n.output {r}" for r in shown) + "\n")
    facts = tmp_path / "facts"
    (tmp_path / "souffle").mkdir()
    assert main(["gen", kind, "--for", str(FLOWLOG / f"{program}.dl"), "-o", str(facts), "--size", str(size)]) == 0
    done = subprocess.run(
        [str(SOUFFLE), "-w", "-F", str(facts), "-D", str(tmp_path / "souffle"), str(copy)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["run", str(copy), "-F", str(facts), "-D", str(tmp_path / "ours"), "--no-cluster"]) == 0
    derived = 0
    for relation in shown:
        theirs = set((tmp_path / "souffle" / f"{relation}.csv").read_text().splitlines())
        ours = (tmp_path / "ours" / f"{relation}.csv").read_text().splitlines()
        assert len(ours) == len(set(ours)) and set(ours) == theirs, relation
        derived += len(ours)
    assert derived > size, "the program derives something on it"
