"""The front end's cache (engine/frontend/program_cache.py): a hit is the program loaded
afresh, got without lark; whatever the result depends on changes the key; a damaged entry,
a folder that cannot be written, concurrent writers never change an answer."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dask_datalog.engine import compile_cache
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import load_program, load_program_file, program_cache

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(str(p) for p in (ROOT / "examples").glob("*.dl"))
INCLUDING = '#include "lib.dl"\n.decl r(x: number)\nr(x) :- e(x, _).\n.output r\n'


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(compile_cache.ENV, str(folder))
    return folder


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pickle")) if folder.exists() else []


def fresh(path: Path | str, monkeypatch: pytest.MonkeyPatch, **options: object) -> str:
    """The program loaded with the cache off, as its repr (positions included, which == skips)."""
    with monkeypatch.context() as off:
        off.setenv(compile_cache.ENV, "")
        return repr(load_program_file(path, **options))  # type: ignore[arg-type]


# A process that loads the programs named on its command line and prints their reprs, and
# which of the front end's parsing modules it imported.
LOADER = """
import json, sys
from dask_datalog.engine.frontend import load_program_file
programs = [repr(load_program_file(p)) for p in sys.argv[1:]]
parsing = ("lark", "dask_datalog.engine.frontend.parser", "dask_datalog.engine.frontend.components", "dask_datalog.engine.frontend.checker")
print(json.dumps({"programs": programs, "imported": sorted(m for m in parsing if m in sys.modules)}))
"""


def load_in_a_process(paths: list[str], folder: Path) -> dict[str, list[str]]:
    env = {**os.environ, compile_cache.ENV: str(folder)}
    done = subprocess.run([sys.executable, "-c", LOADER, *paths], env=env, capture_output=True, text=True, check=True)
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_a_hit_is_the_program_loaded_afresh_without_lark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lib.dl").write_text(".decl e(x: number, y: number)\ne(1, 2).\n")
    (tmp_path / "prog.dl").write_text(INCLUDING)
    paths = [*EXAMPLES, str(tmp_path / "prog.dl")]
    expected = [fresh(p, monkeypatch) for p in paths]
    folder = tmp_path / "cache"
    missed = load_in_a_process(paths, folder)
    assert missed["programs"] == expected and "lark" in missed["imported"]
    assert len(entries(folder)) == len(paths)
    hit = load_in_a_process(paths, folder)
    assert hit["programs"] == expected
    assert hit["imported"] == []  # neither lark nor the parser, components, checker modules
    assert len(entries(folder)) == len(paths)


@pytest.mark.parametrize("preprocessor", [True, False])
def test_an_included_file_changed_is_a_miss(tmp_path: Path, cache: Path, preprocessor: bool) -> None:
    (tmp_path / "lib.dl").write_text(".decl e(x: number, y: number)\ne(1, 2).\n")
    (tmp_path / "prog.dl").write_text(INCLUDING.replace("#include", ".include"))
    first = load_program_file(tmp_path / "prog.dl", preprocessor=preprocessor)
    (tmp_path / "lib.dl").write_text(".decl e(x: number, y: number)\ne(1, 2).\ne(3, 4).\n")
    second = load_program_file(tmp_path / "prog.dl", preprocessor=preprocessor)
    assert len(first.rules) + 1 == len(second.rules)
    assert len(entries(cache)) == 2


def test_macros_are_in_the_key(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "prog.dl"
    path.write_text(".decl r(x: number)\nr(1).\n#ifdef WIDE\nr(WIDE).\n#endif\n")
    assert len(load_program_file(path).rules) == 1
    assert [r.head.args[0].value for r in load_program_file(path, macros={"WIDE": "7"}).rules] == [1, 7]  # type: ignore[attr-defined]
    assert [r.head.args[0].value for r in load_program_file(path, macros={"WIDE": "8"}).rules] == [1, 8]  # type: ignore[attr-defined]
    load_program_file(path, macros={"UNUSED": "1"})  # the same text preprocessed, another key
    assert len(entries(cache)) == 4


def damage_truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def damage_flipped(data: bytes) -> bytes:
    return data[:-40] + bytes([data[-40] ^ 1]) + data[-39:]


def damage_not_a_program(data: bytes) -> bytes:
    payload = pickle.dumps(["not", "a", "program"])
    return program_cache._MAGIC + program_cache._checksum(payload) + payload


def damage_missing_class(data: bytes) -> bytes:
    # A whole entry of a class this code no longer has (pickle names it by module and name).
    payload = data[len(program_cache._MAGIC) + program_cache._DIGEST :].replace(b"Program", b"Progrum")
    return program_cache._MAGIC + program_cache._checksum(payload) + payload


@pytest.mark.parametrize("damage", [damage_truncated, damage_flipped, damage_not_a_program, damage_missing_class])
def test_a_damaged_entry_is_a_miss_written_again(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, damage) -> None:  # type: ignore[no-untyped-def]
    expected = fresh(EXAMPLES[0], monkeypatch)
    load_program_file(EXAMPLES[0])
    [entry] = entries(cache)
    whole = entry.read_bytes()
    entry.write_bytes(damage(whole))
    assert repr(load_program_file(EXAMPLES[0])) == expected
    assert entry.read_bytes() == whole


def test_a_folder_that_cannot_be_made_costs_only_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "file" / "programs"))
    assert repr(load_program_file(EXAMPLES[0])) == fresh(EXAMPLES[0], monkeypatch)


def test_a_read_only_folder_costs_only_the_cache(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_program_file(EXAMPLES[0])  # an entry to hit
    cache.chmod(0o500)
    if os.geteuid() == 0:  # root writes anyway: writes fail here as a read-only folder's do

        def refused(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(Path, "write_bytes", refused)
        monkeypatch.setattr(os, "utime", refused)
    try:
        assert repr(load_program_file(EXAMPLES[0])) == fresh(EXAMPLES[0], monkeypatch)  # a hit, its use not noted
        assert repr(load_program_file(EXAMPLES[1])) == fresh(EXAMPLES[1], monkeypatch)  # a miss, not kept
        assert len(entries(cache)) == 1
    finally:
        cache.chmod(0o700)


def test_the_switch_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compile_cache.ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    load_program_file(EXAMPLES[0])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.delenv(compile_cache.ENV)
    load_program_file(EXAMPLES[0])
    assert len(entries(tmp_path / "dask-datalog" / "programs")) == 1
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # as where no home is known: "~/.cache"
    load_program_file(EXAMPLES[1])
    assert not (tmp_path / "relative").exists() and len(entries(tmp_path / "dask-datalog" / "programs")) == 1


ERRORS = [
    ".decl r(x: number)\nr(x) :- q(x).\n",  # the checker's
    ".decl r(x: number)\nr(1) :- .\n",  # the parser's
    '.decl r(x: number)\n#include "missing.dl"\n',  # the preprocessor's
]


@pytest.mark.parametrize("text", ERRORS)
def test_errors_are_never_kept(tmp_path: Path, cache: Path, text: str) -> None:
    path = tmp_path / "bad.dl"
    path.write_text(text)
    raised = []
    for _ in range(2):
        with pytest.raises(DatalogError) as info:
            load_program_file(path)
        raised.append((type(info.value), info.value.pos, str(info.value)))
    assert raised[0] == raised[1] and raised[0][1] is not None
    assert entries(cache) == []


def test_past_the_limit_the_least_recently_used_go(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    (cache / "mine.txt").write_text("a file of the user's, in a folder they chose")
    monkeypatch.setattr(program_cache, "LIMIT_BYTES", 0)
    load_program_file(EXAMPLES[0])
    load_program_file(EXAMPLES[1])
    assert len(entries(cache)) == 0  # each entry over a limit of 0 goes when written
    assert (cache / "mine.txt").exists()
    monkeypatch.setattr(program_cache, "LIMIT_BYTES", 1 << 20)
    for path in EXAMPLES[:3]:
        load_program_file(path)
    for age, entry in enumerate(entries(cache)):
        os.utime(entry, ns=(age, age))  # used long ago, in a known order
    load_program_file(EXAMPLES[0])  # a hit: its entry is used now
    [used] = [p for p in entries(cache) if p.stat().st_mtime_ns > 2]
    with monkeypatch.context() as off:
        off.setenv(compile_cache.ENV, "")
        new = (
            len(program_cache._MAGIC)
            + program_cache._DIGEST
            + len(pickle.dumps(load_program_file(EXAMPLES[3]), pickle.HIGHEST_PROTOCOL))
        )
    monkeypatch.setattr(program_cache, "LIMIT_BYTES", used.stat().st_size + new)
    load_program_file(EXAMPLES[3])  # a miss: over the limit, the two used long ago go
    assert used.exists() and len(entries(cache)) == 2
    monkeypatch.setattr(program_cache, "LIMIT_BYTES", 1 << 20)
    monkeypatch.setattr(program_cache, "LIMIT_ENTRIES", 2)
    load_program_file(EXAMPLES[4])  # a miss: three entries, one too many
    assert not used.exists() and len(entries(cache)) == 2  # used before EXAMPLES[3]'s was written


def test_concurrent_writers(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = Path(EXAMPLES[0]).read_text()
    with monkeypatch.context() as off:
        off.setenv(compile_cache.ENV, "")
        expected = repr(load_program(text, "x.dl"))
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(repr(load_program(text, "x.dl")))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8
    assert [p.name for p in cache.iterdir()] == [entries(cache)[0].name]  # no temporary file left
