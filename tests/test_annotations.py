"""Soufflé's annotations ``@[...]``, ``@![...]``, its ``.lattice`` and ``.functor``
declarations: accepted where Soufflé 2.5's grammar takes them, and dropped as Soufflé drops
them (the program means what it means without them); malformed or misplaced ones fail where
Soufflé's parser stops, and Soufflé itself is asked the same where its binary is present."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_symbol_functors import SOUFFLE

from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program

ANNOTATED = """
@[a] @[b = x y (z)] @[c {nested @[d] "]"}]
.type R = [@[f] a: number, @[g = [=]] b: number]
.type T = @[x(One)] One {@![inner] } | @[y] Two {@[z] v: symbol}
.type N <: number
.lattice N<> { Bottom -> 0, Lub -> @lub(_, _) }
.functor lub(@[p] a: N, b: N): N stateful
@[decl] .decl e(@[attr] x: number, y: number)
.comp C { @![first] @[second] .decl q(x: number) q(1). }
.init c = C
@[fact] e(1, 2). e(2, 3).
@[rule] .decl p(x: number, y: number)
@[head] p(x, y), @[second_head] p(y, x) :- @![body] @![more] e(x, y).
.output p @[useless = at the end]
"""
PLAIN = """
.type R = [a: number, b: number]
.type T = One {} | Two {v: symbol}
.type N <: number
.decl e(x: number, y: number)
.comp C { .decl q(x: number) q(1). }
.init c = C
e(1, 2). e(2, 3).
.decl p(x: number, y: number)
p(x, y), p(y, x) :- e(x, y).
.output p
"""


def test_annotations_change_nothing() -> None:
    assert load_program(ANNOTATED, "prog.dl") == load_program(PLAIN, "prog.dl")


BAD = [
    ("@[] .decl r(x: number)", "1:3", "an annotation starts with its key"),
    ("@[a b] .decl r(x: number)", "1:5", "unexpected 'b' in annotation"),
    ("@[a = ] .decl r(x: number)", "1:7", "unexpected ']' in annotation"),
    ("@[a (b) (c)] .decl r(x: number)", "1:9", "unexpected '(' in annotation"),
    ("@[a = (b) c] .decl r(x: number)", "1:11", "unexpected 'c' in annotation"),
    ("@[a (b] .decl r(x: number)", "1:7", "unexpected ']' in annotation"),
    ("@[a (b) .decl r(x: number)", "1:1", "unterminated annotation"),
    (".decl r(x: number) r(1) :- @[a] 1 = 1.", "1:28", "an annotation @[...] cannot stand here"),
    (".decl r(x: number) r(@[a] 1).", "1:22", "an annotation @[...] cannot stand here"),
    (".lattice T<> { Lub -> @f(_, _) }", "1:1", "Undefined type T"),
    (".type T <: number .lattice T<> { Bottom -> 0 }", "1:19", "Lattice T<> does not define Lub"),
    (".type T <: number .lattice T<> { Lub -> 1 }", "1:19", "Lattice operator Lub must be a user-defined functor"),
    (".type T <: number .lattice T<> { Lub -> @f(_, _), Foo -> 1 }", "1:51", "Lattice operator not recognized"),
    (".type T <: number .lattice T<> { Lub -> @f(_, _) } .decl r(x: T<>)", "1:63", "unsupported: lattice attributes (T<>)"),
]


@pytest.mark.parametrize(("text", "where", "message"), BAD)
def test_bad_annotations_and_lattices(text: str, where: str, message: str) -> None:
    with pytest.raises(DatalogError) as info:
        load_program(text, "prog.dl")
    assert str(info.value).startswith(f"prog.dl:{where}: error: ") and message in str(info.value), str(info.value)


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
@pytest.mark.parametrize(
    "text",
    [ANNOTATED]
    + [text for text, _, message in BAD if "user-defined functor" not in message and "lattice attributes" not in message],
)
def test_souffle_agrees_on_what_it_accepts(text: str, tmp_path: Path) -> None:
    """Soufflé accepts the annotated program (with the same answer) and rejects each bad one."""
    (tmp_path / "prog.dl").write_text(text)
    done = subprocess.run(
        [str(SOUFFLE), "--no-preprocessor", "-D", "-", "prog.dl"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    if text is ANNOTATED:
        assert done.returncode == 0, done.stderr
        assert sorted(line for line in done.stdout.splitlines() if line[:1].isdigit()) == ["1\t2", "2\t1", "2\t3", "3\t2"]
    else:
        assert "Error" in done.stderr or done.returncode != 0, done.stderr
