"""Soufflé's JSON relations (``IO=json``, ``IO=jsonfile``, ``format=object``): generated
relations of every value kind (symbols needing escapes, unsigned past 2^31, floats, nested
records and nil) written on 1-4 in-process shards, each element's text compared with Soufflé
2.5's own where its binary is present, and read back through the JSON reader. Soufflé writes
tuples in the order of its internal ids, which for symbols and records depend on its
evaluation order: the elements are compared as a set, the framing exactly."""

from __future__ import annotations

import io
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_symbol_functors import SOUFFLE

from dask_datalog.engine.backend import get_backend
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats import json_text
from dask_datalog.engine.frontend import load_program
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.shard import evaluate_shard
from dask_datalog.spmd.threads import run_in_threads
from dask_datalog.spmd.writer import print_outputs, write_outputs

WORDS = ("", "a", 'q"uote', "back\\slash", "tab\tline\nbreak", "\x01ctl", "é\u2028x", "\x7f")
DECLS = """
.type L = [head: number, tail: L]
.type P = [name: symbol, list: L, u: unsigned]
.decl r(n: number, u: unsigned, f: float, s: symbol, p: P)
.decl e()
.decl h()
h().
.output r(IO=jsonfile, filename="list.json")
.output r(IO=jsonfile, filename="objects.json", format=object)
.output r(IO=json, format=object)
.output e(IO=jsonfile)
.output h(IO=jsonfile)
"""


def literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t").replace("\n", "\\n") + '"'


def generated(seed: int) -> str:
    rng = random.Random(seed)
    facts = []
    for _ in range(rng.randint(0, 6)):
        items = [rng.randint(-3, 3) for _ in range(rng.randint(0, 3))]
        lst = "nil"
        for x in reversed(items):
            lst = f"[{x}, {lst}]"
        p = "nil" if rng.random() < 0.2 else f"[{literal(rng.choice(WORDS))}, {lst}, {rng.choice([0, 7, 4294967295])}]"
        f = rng.choice(["0.1", "-2.5", "123456789.0", "1.0", "0.0"])
        facts.append(
            f"r({rng.randint(-5, 5)}, {rng.choice([0, 2147483648, 4294967295])}, {f}, {literal(rng.choice(WORDS))}, {p})."
        )
    return DECLS + "\n".join(facts) + "\n"


def run_shards(text: str, n: int, out: Path, facts: Path | None = None) -> str:
    """Run ``text`` on ``n`` shards in threads, writing into ``out``; what it prints."""
    program = load_program(text)
    texts: list[dict[int, bytes]] = [{} for _ in range(n)]

    def shard(transport: Any) -> None:
        done = evaluate_shard(transport, program, get_backend("numpy"), Inputs(facts), replicate_below=0)
        texts[transport.rank] = write_outputs(transport, done, str(out), "csv")

    run_in_threads(n, shard)
    printed = io.StringIO()
    joined = {index: b"".join(t.get(index, b"") for t in texts) for index in texts[0]}
    print_outputs(printed, program, str(out), joined, lambda name: 0)
    return printed.getvalue()


def as_lists(value: Any) -> Any:
    """Objects (keys in written order) as the lists of their values, at every depth."""
    if isinstance(value, dict):
        value = list(value.values())
    return [as_lists(v) for v in value] if isinstance(value, list) else value


def elements(document: str) -> tuple[str, set[str]]:
    """A JSON document's framing (its first and last characters, its line count) and the set of
    its elements' texts."""
    assert document.startswith("[") and document.endswith("]\n"), document
    body = document[1:-2]
    parts = body.split(",\n") if body else []
    return f"{document[:1]}{document[-2:]}{len(parts)}", set(parts)


@pytest.mark.parametrize("seed", range(12))
def test_json_is_the_same_on_shards_and_reads_back(seed: int, tmp_path: Path) -> None:
    text = generated(seed)
    n = 1 + seed % 4
    printed = run_shards(text, n, tmp_path / "out")
    one = run_shards(text, 1, tmp_path / "one")
    assert printed == one
    for name in ("list.json", "objects.json", "e.json", "h.json"):
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert (tmp_path / "out" / "e.json").read_text() == "[]\n" and (tmp_path / "out" / "h.json").read_text() == "[null\n]\n"
    assert printed == (tmp_path / "out" / "objects.json").read_text()
    listed = json.loads((tmp_path / "out" / "list.json").read_text())
    assert listed == as_lists(json.loads(printed))
    # read back, as lists and as objects: the same relation (the float's integer part, read as
    # a number), written the same way
    back = DECLS.replace(".decl r(", ".decl q(").split(".output")[0].replace("h().", "")
    for source in ("list.json", "objects.json"):
        program = (
            back + f'.decl r(n: number, u: unsigned, f: number, s: symbol, p: P)\n.input r(IO=jsonfile, filename="{source}")\n'
        )
        program += '.output r(IO=jsonfile, filename="again.json")\n'
        run_shards(program, n, tmp_path / "again", tmp_path / "out")
        again = json.loads((tmp_path / "again" / "again.json").read_text())
        assert sorted(map(json.dumps, again)) == sorted(json.dumps([t[0], t[1], int(t[2]), t[3], t[4]]) for t in listed)


@pytest.mark.skipif(not SOUFFLE.exists(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
@pytest.mark.parametrize("seed", range(0, 12, 3))
def test_json_matches_souffle(seed: int, tmp_path: Path) -> None:
    text = generated(seed)
    printed = run_shards(text, 1 + seed % 4, tmp_path / "ours")
    (tmp_path / "prog.dl").write_text(text)
    (tmp_path / "theirs").mkdir()
    done = subprocess.run([str(SOUFFLE), "-D", "theirs", "prog.dl"], cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert elements(printed) == elements(done.stdout.decode("utf-8", "surrogateescape"))
    for name in ("list.json", "objects.json", "e.json", "h.json"):
        ours = (tmp_path / "ours" / name).read_text(errors="surrogateescape")
        assert elements(ours) == elements((tmp_path / "theirs" / name).read_text(errors="surrogateescape")), name


def test_floats_and_unsigned_as_souffle_prints_them() -> None:
    assert json_text.quote('a"\\\b\f\n\r\t\x01\x7fé\u2028\u2029') == '"a\\"\\\\\\b\\f\\n\\r\\t\\u0001\x7fé\\u2028\\u2029"'
    assert [json_text.format_float(b) for b in (0x3DCCCCCD, 0x4CEB79A3, 0x7FC00000, 0xFFC00000, 0x7F800000)] == [
        "0.1",
        "1.23457e+08",
        "nan",
        "-nan",
        "inf",
    ]


@pytest.mark.parametrize(
    ("program", "document", "message"),
    [
        (".decl r(x: float)\n.input r(IO=jsonfile)", "[[1.5]]", "unsupported: float x in JSON input"),
        (".decl r(x: number, y: number)\n.input r(IO=jsonfile)", '[{"x": 1}]', "lacks y"),
        (".decl r(x: number)\n.input r(IO=jsonfile)", '[{"x": 1, "z": 2}]', "invalid parameter: z"),
        (".decl r(x: number)\n.input r(IO=jsonfile)", '{"x": 1}', "must be one array of tuples"),
        (".decl r(x: number)\n.input r(IO=jsonfile)", "[1]", "neither list nor object"),
        (".decl r(x: number)\n.input r(IO=jsonfile)", "[[1]", "cannot read JSON"),
    ],
)
def test_json_input_errors(tmp_path: Path, program: str, document: str, message: str) -> None:
    (tmp_path / "r.json").write_text(document)
    with pytest.raises(DatalogError, match=message):
        run_shards(program, 1, tmp_path / "out", tmp_path)


def test_adts_are_refused_as_souffle_stops_at_them() -> None:
    with pytest.raises(DatalogError, match="unsupported: IO=json for r, which holds the ADT T"):
        load_program(".type T = A {} | B {x: number}\n.decl r(t: T)\n.output r(IO=json)")


def test_json_input_values_as_json11_gives_them(tmp_path: Path) -> None:
    """Missing list elements and mistyped values are Soufflé's defaults: 0, "", nil; a float's
    integer part; an unsigned takes a negative number's bits; past 32 bits the smallest number."""
    program = ".type L = [a: number, b: L]\n.decl r(x: number, u: unsigned, s: symbol, l: L)\n.input r(IO=jsonfile)\n.output r\n"
    (tmp_path / "r.json").write_text('[[-3.9, -1, 5, [1]], [2.7], [4294967296, 1, "s", null]]')
    run_shards(program, 2, tmp_path / "out", tmp_path)
    rows = set((tmp_path / "out" / "r.csv").read_text().splitlines())
    assert rows == {"-3\t4294967295\t\t[1, nil]", "2\t0\t\tnil", "-2147483648\t1\ts\tnil"}
