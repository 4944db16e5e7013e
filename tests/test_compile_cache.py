"""The dataclass-method cache (engine/compile_cache.py): a class made with it installed, from a
cold table or one read from disk, is the class Python makes; a damaged file is a miss that is
written again; the cache set off changes nothing; the command saves it once and then only
reads it. Each case runs in a fresh interpreter, as ``install`` changes its process's
dataclasses module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dask_datalog.engine import compile_cache

# Dataclasses of every kind a method is made for, and what their methods do, as JSON; with
# ``install`` first when the script's argument says so.
CLASSES = """
import dataclasses, inspect, json, sys
from dataclasses import InitVar, dataclass, field
from typing import ClassVar
if sys.argv[1] == "cached":
    from dask_datalog.engine import compile_cache
    compile_cache.install()

@dataclass(frozen=True, slots=True, order=True)
class Point:
    x: int
    y: float = 0.5
    tags: tuple[str, ...] = ()

@dataclass(kw_only=True)
class Options:
    name: str
    sizes: list[int] = field(default_factory=list)
    scale: InitVar[int] = 2
    seen: int = field(default=0, init=False, repr=False, compare=False)
    KIND: ClassVar[str] = "options"
    def __post_init__(self, scale):
        self.sizes = [s * scale for s in self.sizes]

@dataclass(unsafe_hash=True)
class Node:
    label: str
    children: tuple["Node", ...] = ()

facts = {}
try:
    Point(1).x = 2
except dataclasses.FrozenInstanceError as e:
    facts["frozen"] = type(e).__name__
a, b = Point(1, 2.0, ("t",)), Point(1, 2.5)
facts["point"] = [repr(a), a == Point(1, 2.0, ("t",)), a < b, hash(a) == hash(Point(1, 2.0, ("t",))), Point.__slots__]
o = Options(name="n", sizes=[1, 2], scale=3)
facts["options"] = [repr(o), o.sizes, o == Options(name="n", sizes=[1, 2], scale=3), Options.KIND]
n = Node("a", (Node("b"),))
facts["node"] = [repr(n), hash(n) == hash(Node("a", (Node("b"),)))]
for cls in (Point, Options, Node):
    facts[cls.__name__] = [str(inspect.signature(cls)), repr(inspect.get_annotations(cls.__init__))]
facts["installed"] = getattr(dataclasses, "exec", None) is not None
if sys.argv[1] == "cached":
    facts["compiled"] = len(compile_cache._compiled)
    compile_cache.save()
print(json.dumps(facts))
"""


def made(how: str, folder: Path | None) -> dict[str, object]:
    env = dict(os.environ)
    env[compile_cache.ENV] = "" if folder is None else str(folder)
    done = subprocess.run([sys.executable, "-c", CLASSES, how], env=env, capture_output=True, text=True, check=True)
    facts: dict[str, object] = json.loads(done.stdout)
    return facts


def cache_file(folder: Path) -> Path:
    (found,) = folder.glob("dataclass-methods.*.marshal")
    return found


def test_a_class_made_from_the_cache_is_the_class_python_makes(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    python = made("plain", folder)
    assert python["installed"] is False and python["frozen"] == "FrozenInstanceError"
    cold = made("cached", folder)
    assert cold.pop("installed") is True and cold.pop("compiled") >= 3  # at least one text per class
    stamp = cache_file(folder).stat().st_mtime_ns
    warm = made("cached", folder)
    assert warm.pop("installed") is True and warm.pop("compiled") == 0  # every one from the file
    assert cache_file(folder).stat().st_mtime_ns == stamp  # nothing compiled, nothing written
    del python["installed"]
    # The __init__ annotations are types, not strings: compiled without this module's __future__.
    assert cold == python and warm == python


def test_a_damaged_file_is_compiled_again_and_rewritten(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    python = made("plain", folder)
    made("cached", folder)
    path = cache_file(folder)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    again = made("cached", folder)
    assert again.pop("compiled") >= 3 and again.pop("installed") is True
    del python["installed"]
    assert again == python
    assert made("cached", folder)["compiled"] == 0  # the rewritten file is whole


def test_the_cache_set_off_leaves_dataclasses_alone(tmp_path: Path) -> None:
    off = made("cached", None)
    assert off["installed"] is False
    assert not list(tmp_path.iterdir())


def test_the_command_saves_once_then_only_reads(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    program = tmp_path / "p.dl"
    program.write_text(".decl e(x: number)\ne(1).\n.output e\n")
    env = {**os.environ, compile_cache.ENV: str(folder), "DASK_DATALOG_RESIDENT": "off"}
    command = [sys.executable, "-m", "dask_datalog.cluster.cli", "run", "--quiet", str(program), "-D", str(tmp_path / "out")]
    subprocess.run(command, env=env, check=True, capture_output=True)
    stamp = cache_file(folder).stat().st_mtime_ns
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert cache_file(folder).stat().st_mtime_ns == stamp
    assert (tmp_path / "out" / "e.csv").read_text() == "1\n"


def test_a_table_past_its_limit_keeps_only_what_the_process_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"def f{i}():\n return {i}\n" for i in range(3)]
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path))
    monkeypatch.setattr(compile_cache, "LIMIT_ENTRIES", 2)
    monkeypatch.setattr(compile_cache, "_table", {})
    monkeypatch.setattr(compile_cache, "_used", set())
    monkeypatch.setattr(compile_cache, "_compiled", set())
    for text in texts:
        compile_cache._cached_exec(text, {})
    compile_cache._used.discard(texts[0])  # as if read from the file and not used since
    compile_cache.save()
    kept = compile_cache._read(cache_file(tmp_path))
    assert sorted(kept) == texts[1:]
    space: dict[str, object] = {}
    exec(kept[texts[2]], space)
    assert space["f2"]() == 2  # type: ignore[operator]
