"""User-defined functors: ``.functor`` declarations bound to a C library compiled here with gcc
(number, unsigned, float and symbol functors, mixed argument classes, a functor keeping its text
in a static buffer, recursion through made symbols) against Soufflé 2.5 running the same program
with the same ``-L``/``-l``, on 1-4 in-process shards and once through the CLI on two workers;
Python functors from the API against the C ones, on shards and on a cluster of process
workers; and the errors, each one line at its place."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_sharded import relation_tuples, run_sharded

from dask_datalog.cluster import Program
from dask_datalog.engine import ir, user_functors
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program

SOUFFLE = Path(__file__).resolve().parents[2] / "shared" / "peers" / "souffle-2.5" / "bin" / "souffle"
CLI = Path(sys.executable).parent / "dask-datalog"
GCC = shutil.which("gcc") or shutil.which("cc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="no C compiler (gcc or cc) to build the functor library")
needs_souffle = pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")

LIBRARY = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
int32_t add1(int32_t x) { return x + 1; }
float mix(int32_t a, float f, int32_t b) { return (float)a * f - (float)b; }
uint32_t umul(uint32_t a, uint32_t b) { return a * b; }
float fscale(float x, float y) { return x * y; }
/* The result lives in a static buffer, overwritten by the next call (as many C functors do). */
const char *tag(const char *s, int32_t n) { static char buf[64]; snprintf(buf, sizeof buf, "%s#%d", s, n); return buf; }
int32_t slen(const char *s) { return (int32_t)strlen(s); }
const char *first(const char *s, const char *t) { return strcmp(s, t) <= 0 ? s : t; }
int32_t seven(void) { return 7; }
"""

PROGRAM = """
.functor add1(x: number): number
.functor mix(a: number, f: float, b: number): float
.functor umul(unsigned, unsigned): unsigned
.functor fscale(x: float, y: float): float
.functor tag(s: symbol, n: number): symbol
.functor slen(symbol): number
.functor first(s: symbol, t: symbol): symbol
.functor seven(): number
.functor unused(x: number): number
.decl w(s: symbol, n: number)
.input w
.decl num(x: number, y: number)
num(n, @add1(n)) :- w(_, n).
.decl chain(x: number)
chain(0).
chain(@add1(x)) :- chain(x), x < 40.
.decl uns(u: unsigned, v: unsigned)
uns(u, @umul(u, 2654435761u)) :- w(_, n), u = to_unsigned(n).
.decl flt(x: float, y: float)
flt(f, @fscale(f, 0.5)) :- w(_, n), f = to_float(n).
flt(@mix(n, 1.5, n + 1), 0.25) :- w(_, n).
.decl tags(s: symbol)
tags(@tag(s, n)) :- w(s, n).
tags(@tag(t, 1)) :- tags(t), @slen(t) < 12.
.decl pairs(s: symbol, t: symbol, l: number)
pairs(s, t, @slen(@first(s, t))) :- w(s, _), w(t, _), s < t.
.decl kept(s: symbol)
kept(s) :- w(s, n), @add1(n) > 2, @first(s, "b") != s.
.decl k(x: number)
k(@seven()).
k(@seven() + x) :- w(_, x).
.decl total(c: number)
total(c) :- c = sum @add1(n) : { w(_, n) }.
.output num, chain, uns, flt, tags, pairs, kept, k, total
"""
OUTPUTS = ("num", "chain", "uns", "flt", "tags", "pairs", "kept", "k", "total")
FACTS = [("a", 1), ("b", -3), ("héllo", 2), ("", 0), ("zz", 2147483647), ("b", 5)]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding libtestfunctors.so, built from ``LIBRARY``."""
    if GCC is None:
        pytest.skip("no C compiler (gcc or cc) to build the functor library")
    where = tmp_path_factory.mktemp("functors")
    (where / "testfunctors.c").write_text(LIBRARY)
    subprocess.run(
        [GCC, "-O2", "-shared", "-fPIC", "-o", str(where / "libtestfunctors.so"), str(where / "testfunctors.c")],
        check=True,
        capture_output=True,
    )
    return where


def _facts_dir(tmp_path: Path) -> Path:
    facts = tmp_path / "facts"
    facts.mkdir(exist_ok=True)
    (facts / "w.facts").write_text("".join(f"{s}\t{n}\n" for s, n in FACTS), encoding="utf-8")
    return facts


def _typed(rows: set[tuple[str, ...]], relation: ir.Relation) -> set[tuple[Any, ...]]:
    """Soufflé's printed rows as values (floats as float32, as this engine keeps them)."""

    def value(text: str, t: str) -> Any:
        if t == "symbol":
            return text
        return float(np.float32(text)) if t == "float" else int(text)

    return {tuple(value(x, t) for x, t in zip(row, relation.types)) for row in rows}


def _read_csv(path: Path, relation: ir.Relation) -> set[tuple[Any, ...]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = {tuple(row) if row else ("",) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    return _typed(rows, relation)


def _floats(rows: set[tuple[Any, ...]], relation: ir.Relation) -> set[tuple[Any, ...]]:
    return {tuple(float(np.float32(x)) if t == "float" else x for x, t in zip(row, relation.types)) for row in rows}


@pytest.fixture(scope="module")
def souffle_answer(library: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[Any, ...]]]:
    """What Soufflé 2.5's interpreter derives, loading the same library with the same -L/-l."""
    if not SOUFFLE.exists():
        pytest.skip(f"Soufflé 2.5 is not at {SOUFFLE}")
    where = tmp_path_factory.mktemp("souffle")
    (where / "prog.dl").write_text(PROGRAM)
    facts = _facts_dir(where)
    (where / "out").mkdir()
    command = [str(SOUFFLE), "prog.dl", "-F", str(facts), "-D", "out", "-L", str(library), "-l", "testfunctors"]
    subprocess.run(command, cwd=where, check=True, capture_output=True)
    program = load_program(PROGRAM)
    return {name: _read_csv(where / "out" / f"{name}.csv", program.relations[name]) for name in OUTPUTS}


@needs_gcc
@needs_souffle
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_c_functors_match_souffle_on_shards(
    n: int, library: Path, souffle_answer: dict[str, set[tuple[Any, ...]]], backend: str, tmp_path: Path
) -> None:
    """On CuPy the argument columns go to the host for the call and back (``--backend``)."""
    program = user_functors.bind(load_program(PROGRAM), libraries=["testfunctors"], library_dirs=[str(library)])
    shards = run_sharded(program, n, backend, fact_dir=_facts_dir(tmp_path), chunk_rows=3 if n == 3 else None)
    assert all(s.symbols.strings == shards[0].symbols.strings for s in shards), "shards disagree on symbol ids"
    for name in OUTPUTS:
        got = _floats(relation_tuples(shards, name), program.relations[name])
        assert got == souffle_answer[name], f"{name} on {n} shards differs from Soufflé"


@needs_gcc
@needs_souffle
def test_c_functors_through_the_cli_on_two_workers(
    library: Path, souffle_answer: dict[str, set[tuple[Any, ...]]], tmp_path: Path
) -> None:
    """The command a user types, with -L/-l as Soufflé takes them: the workers load the library."""
    (tmp_path / "prog.dl").write_text(PROGRAM)
    facts = _facts_dir(tmp_path)
    command = [str(CLI), "run", "prog.dl", "-F", str(facts), "-D", "out", "-L", str(library), "-l", "testfunctors"]
    done = subprocess.run([*command, "--workers", "2", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    program = load_program(PROGRAM)
    for name in OUTPUTS:
        assert _read_csv(tmp_path / "out" / f"{name}.csv", program.relations[name]) == souffle_answer[name], name


def _add1(x: np.ndarray) -> np.ndarray:
    return x + np.int32(1)


def _mix(a: np.ndarray, f: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) * f - b.astype(np.float32)


def _umul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * b


def _fscale(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x * y


def _tag(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.strings.add(np.strings.add(s, "#"), n.astype(np.dtypes.StringDType()))


def _slen(s: np.ndarray) -> np.ndarray:
    return np.strings.str_len(np.strings.encode(s, "utf-8")).astype(np.int32)


def _first(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    # By UTF-8 bytes, as C's strcmp (and Python's order of code points, the same order).
    return np.where(s <= t, s, t)


def _seven() -> np.ndarray:
    return np.array([7], dtype=np.int32)


PYTHON = {
    "add1": _add1,
    "mix": _mix,
    "umul": _umul,
    "fscale": _fscale,
    "tag": _tag,
    "slen": _slen,
    "first": _first,
    "seven": _seven,
}


@needs_souffle
@pytest.mark.parametrize("n", [1, 2, 4])
def test_python_functors_match_the_c_ones(
    n: int, souffle_answer: dict[str, set[tuple[Any, ...]]], backend: str, tmp_path: Path
) -> None:
    """The same functors written over NumPy arrays give what Soufflé gives with the C library."""
    program = user_functors.bind(load_program(PROGRAM), PYTHON, libraries=[])
    assert all(f.function is not None for f in program.functors if f.name != "unused")
    shards = run_sharded(program, n, backend, fact_dir=_facts_dir(tmp_path))
    for name in OUTPUTS:
        assert _floats(relation_tuples(shards, name), program.relations[name]) == souffle_answer[name], name


@needs_souffle
def test_python_functors_on_a_cluster_of_process_workers(souffle_answer: dict[str, set[tuple[Any, ...]]], tmp_path: Path) -> None:
    """The API on a Dask cluster: the functions travel to the worker processes by cloudpickle."""
    import cloudpickle
    from distributed import Client, LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    program = Program(PROGRAM, functors=PYTHON, libraries=[])
    facts = _facts_dir(tmp_path)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        result = program.run(fact_dir=facts, client=client)
        for name in OUTPUTS:
            assert _floats(result.tuples(name), program.ir.relations[name]) == souffle_answer[name], name
        result.close()


def test_python_functor_results_are_checked() -> None:
    text = ".functor f(x: number): number\n.decl r(x: number)\nr(1). r(2).\n.decl s(x: number)\ns(@f(x)) :- r(x).\n"
    for function, message in (
        (lambda x: x + 1.5, "returned an array of float64; its number result needs a NumPy array of int32"),
        (lambda x: x[:1], "returned shape (1,) for 2 rows; it needs (2,)"),
        (lambda x: list(x), "returned list; its number result needs a NumPy array of int32"),
    ):
        with pytest.raises(DatalogError, match=re.escape(f"<string>:5:3: error: user-defined functor @f {message}")):
            Program(text, functors={"f": function}).run()
    with pytest.raises(DatalogError, match=r"no \.functor declares g"):
        Program(text, functors={"g": _add1})


# (program, extra CLI arguments, "line:col", message substring)
ERRORS = [
    (".decl r(x: number)\nr(@nope(1)).", [], "2:3", "undeclared user-defined functor @nope"),
    (".functor add1(x: number): number\n.decl r(x: number)\nr(@add1(1, 2)).", [], "3:3", "functor @add1 takes 1 argument, not 2"),
    ('.functor add1(x: number): number\n.decl r(x: number)\nr(@add1("a")).', [], "3:9", "but @add1 takes a number"),
    (
        ".functor add1(x: number): number\n.decl r(s: symbol)\nr(@add1(1)).",
        [],
        "3:3",
        "@add1(...) is a number, but argument 1 of r",
    ),
    (
        ".type Node <: number\n.functor add1(x: number): number\n.decl r(x: Node)\nr(@add1(1)).",
        [],
        "4:3",
        "@add1(...) is a number, but argument 1 of r is a Node, which a number is not",
    ),
    (".functor f(x: number): number stateful\n.decl r(x: number)\nr(1).", [], "1:1", "unsupported: stateful functor f"),
    (".functor f(x: int): number\n.decl r(x: number)\nr(1).", [], "1:15", "unknown type int"),
    (".type L = [h: number]\n.functor f(x: L): number", [], "2:15", "only stateful functors take"),
    (".functor f(number): number\n.functor f(symbol): number", [], "2:1", "duplicate declaration of functor f"),
    (
        ".functor add1(x: number): number\n.decl r(x: number)\nr(@add1(1)).",
        ["-l", "nosuchlibrary"],
        "1:1",
        "no libnosuchlibrary.so (looked for",
    ),
    (".functor nosuch(x: number): number\n.decl r(x: number)\nr(@nosuch(1)).", [], "1:1", "not in "),
]


@needs_gcc
@pytest.mark.parametrize(("text", "extra", "where", "message"), ERRORS, ids=[e[3][:40] for e in ERRORS])
def test_errors_are_one_line_at_their_place(
    text: str, extra: list[str], where: str, message: str, library: Path, tmp_path: Path
) -> None:
    (tmp_path / "prog.dl").write_text(text + "\n.output r\n" if ".decl r" in text else text)
    libs = extra or ["-l", "testfunctors"]
    command = [str(CLI), "run", "prog.dl", "-D", "out", "-L", str(library), *libs, "--no-cluster", "--quiet"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"prog.dl:{where}: error: "), lines[0]
    assert message in lines[0], lines[0]


def test_library_lookup_follows_souffle() -> None:
    """Soufflé's Engine::loadDLL: each -L directory in order, then the dynamic loader's own
    search; a name with a / only the latter."""
    assert user_functors.library_paths("functors", [".", "/opt/lib/"]) == [
        "./libfunctors.so",
        "/opt/lib/libfunctors.so",
        "libfunctors.so",
    ]
    assert user_functors.library_paths("sub/x", ["/opt"]) == ["libsub/x.so"]


def test_a_program_without_functor_calls_needs_no_library() -> None:
    """Soufflé's default -l functors is looked for only when a functor is called."""
    program = Program(".functor f(x: number): number\n.decl r(x: number)\nr(1).", libraries=["nosuchlibrary"])
    assert program.run().tuples("r") == {(1,)}
