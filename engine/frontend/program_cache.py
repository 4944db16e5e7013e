"""The front end's result kept on disk, as Python keeps bytecode: a program loaded before comes
back unpickled (DOOP: ~5 ms) instead of parsed and checked again (~90 ms, ~45 ms more to import
lark and the front end's modules, which a hit never imports).

An entry is named by a digest of everything the result depends on: the program text after the
preprocessor and includes (so an included file's contents are in it), the file name as given
(positions name it), the line map, the macros, the preprocessor flag, the Python version
(pickled dataclasses) and the code: the size and mtime of every .py and .lark file of the engine
package (the front end reaches beyond engine/frontend: functors.py imports engine/storage) and
of lark's, as Python stamps a .pyc with its source's. Only successful loads are kept: an error
is found again, and raised exactly as before, by loading afresh.

The folder (``compile_cache.directory``): ``$DASK_DATALOG_PROGRAM_CACHE``, else
``$XDG_CACHE_HOME/dask-datalog/programs`` (``~/.cache`` without it); set empty, no cache.
Entries are written whole to a temporary file and renamed, so concurrent runs read an entry
whole or not at all; each holds a digest of its payload, so a damaged one is a miss and is
written again. Past ``LIMIT_BYTES`` or ``LIMIT_ENTRIES`` the entries used least recently go. A
folder that cannot be made or written costs the run only its cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pickle
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from dask_datalog.engine import ir
from dask_datalog.engine.compile_cache import directory
from dask_datalog.engine.frontend.preprocess import LineMap

LIMIT_BYTES = 64 << 20  # DOOP's entry is ~110 KB: room for programs many times its size
LIMIT_ENTRIES = 256  # and on the folder a miss lists to prune (~1 ms at this size)
_MAGIC = b"dask-datalog program 1\n"  # the entry format; its version is in every key too
_DIGEST = 32  # bytes of the payload's blake2b after the magic
_ENGINE = Path(ir.__file__).parent


def load(
    text: str,
    filename: str,
    lines: LineMap | None,
    macros: Mapping[str, str],
    preprocessor: bool,
    build: Callable[[], ir.Program],
) -> ir.Program:
    """The cached result of ``build()`` for this program, else ``build()``'s, kept for next time."""
    folder = directory()
    if folder is None:
        return build()
    key = (filename, lines.origins if lines else None, lines.last if lines else None, sorted(macros.items()), preprocessor)
    digest = hashlib.blake2b(repr((_MAGIC, sys.version, code_stamp(), key)).encode(), digest_size=_DIGEST)
    digest.update(text.encode("utf-8", "surrogatepass"))  # a str from Python may hold lone surrogates
    path = folder / f"{digest.hexdigest()}.pickle"
    program = _read(path)
    if program is None:
        program = build()
        _write(path, program)
    return program


def code_stamp() -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file whose change may change a loaded program: the engine's
    sources (~50 files, ~0.1 ms to list) and lark's entry module, which an upgrade rewrites."""
    stamp = []
    folders = [_ENGINE]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        folders.append(Path(entry.path))
                elif entry.name.endswith((".py", ".lark")):
                    stat = entry.stat()
                    stamp.append((entry.path, stat.st_size, stat.st_mtime_ns))
    lark = importlib.util.find_spec("lark")
    assert lark is not None and lark.origin is not None, "lark is a dependency"
    stat = os.stat(lark.origin)
    stamp.append((lark.origin, stat.st_size, stat.st_mtime_ns))
    return sorted(stamp)


def _read(path: Path) -> ir.Program | None:
    try:
        data = path.read_bytes()
    except OSError:  # no entry yet, or one this user cannot read: a miss, never a failed run
        return None
    payload = data[len(_MAGIC) + _DIGEST :]
    if data[: len(_MAGIC)] != _MAGIC or data[len(_MAGIC) : len(_MAGIC) + _DIGEST] != _checksum(payload):
        return None  # damaged (a disk, a hand): a miss, and written again
    try:
        program = pickle.loads(payload)
    except (pickle.UnpicklingError, AttributeError, ImportError, EOFError):
        # Whole, but of classes that have since changed under an unchanged stamp (a source
        # edited within the clock's resolution): a miss, since a cache must never change an answer.
        return None
    if not isinstance(program, ir.Program):
        return None  # the same: an entry this code did not write
    with contextlib.suppress(OSError):  # in a folder this user may only read: the order of eviction only
        os.utime(path)
    return program


def _write(path: Path, program: ir.Program) -> None:
    payload = pickle.dumps(program, pickle.HIGHEST_PROTOCOL)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(_MAGIC + _checksum(payload) + payload)
        os.replace(temporary, path)  # whole or not at all, to a concurrent reader
        _prune(path.parent)
    except OSError:  # a read-only or full disk, a folder removed meanwhile: the run goes on uncached
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST).digest()


def _prune(folder: Path) -> None:
    """The entries used least recently removed until the rest fit in ``LIMIT_BYTES`` and
    ``LIMIT_ENTRIES``; the temporary files of writers that died count and go in the same order
    (no file of any other name: the folder may be one the user chose)."""
    entries = []
    with os.scandir(folder) as found:
        for entry in found:
            if entry.name.endswith(".pickle") or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                with contextlib.suppress(FileNotFoundError):  # a concurrent run pruned it first
                    stat = entry.stat()
                    entries.append((stat.st_mtime_ns, stat.st_size, entry.path))
    total, count = sum(size for _, size, _ in entries), len(entries)
    for _, size, entry_path in sorted(entries):
        if total <= LIMIT_BYTES and count <= LIMIT_ENTRIES:
            break
        with contextlib.suppress(FileNotFoundError):  # the same
            os.unlink(entry_path)
        total, count = total - size, count - 1
