"""What a command compiled, kept on disk for the next one: the folder (``directory``, where
frontend/program_cache.py keeps loaded programs) and the code of dataclass methods.

CPython makes a dataclass's methods (``__init__``, ``__eq__``, ``__repr__``...) by compiling
their source text each time the class is created: the 65 dataclasses a ``run`` imports cost it
some 25 ms of a one-fact program's 150 ms on the 2-core machine, every run. dataclasses.py
compiles at one place, ``exec(txt, globals, ns)`` (3.11 to 3.13), and a module-level name
``exec`` there is found before the builtin: ``install`` puts ``_cached_exec`` in that place, so
each text is compiled once and its code object kept, keyed by the text itself (a text compiles
to the same code every time, as a .pyc's source does). ``save`` adds to the file the texts the
process compiled that it lacks. The file is one per interpreter (its bytecode tag and magic
number in the name and the header); a damaged or foreign one is a miss, written again; a folder
that cannot be written costs the command only the cache.

Only the command's process installs it (cluster/cli/__init__.py, before its imports) and the
resident process (resident_server.py, whose children inherit the table), so a library user's
dataclasses are made as Python makes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import marshal
import os
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

ENV = "DASK_DATALOG_PROGRAM_CACHE"
_MAGIC = b"dask-datalog methods 1\n" + importlib.util.MAGIC_NUMBER  # the entry format, and the bytecode's
# Texts past this many (dataclasses edited over many versions of the code): a save keeps only
# those this process used. A run uses some 500 (650 on a cluster), ~0.6 MB, read in ~2.5 ms.
LIMIT_ENTRIES = 2048

_table: dict[str, Any] = {}  # source text -> its code object
_used: set[str] = set()
_compiled: set[str] = set()  # texts this process compiled that the file may lack


def directory() -> Path | None:
    """Where entries go; None when the cache is off."""
    chosen = os.environ.get(ENV)
    if chosen is not None:
        return Path(chosen) if chosen else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    # No home known (a container's user may have none: "~" comes back), or a relative
    # XDG_CACHE_HOME, which the XDG spec says to ignore: no cache rather than one in the cwd.
    if not os.path.isabs(base):
        return None
    return Path(base) / "dask-datalog" / "programs"


def install() -> None:
    """Dataclasses made from now on take their methods' code from the table, read from disk
    (once per process); nothing where the cache is off."""
    path = _path()
    if path is None or getattr(dataclasses, "exec", None) is _cached_exec:
        return
    _table.update(_read(path))
    # dataclasses.py's one compile, ``exec(txt, globals, ns)``, finds this module-level name
    # before the builtin: a private detail of CPython 3.11-3.13's dataclasses, used only here.
    dataclasses.exec = _cached_exec  # type: ignore[attr-defined]


def save() -> None:
    """Add to the file the texts this process compiled, if it lacks any. The file is read
    again first and kept: another process (the command that started the resident process, a
    run beside this one) may have written texts this one never read."""
    path = _path()
    if path is None or not _compiled:
        return
    table = _read(path)
    if _compiled.issubset(table):  # a resident process's child compiles what its siblings did
        _compiled.clear()
        return
    table.update(_table)
    if len(table) > LIMIT_ENTRIES:
        table = {text: _table[text] for text in _used}
    payload = marshal.dumps(table)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(_MAGIC + zlib.crc32(payload).to_bytes(4, "little") + payload)
        os.replace(temporary, path)  # whole or not at all, to a concurrent reader
        _compiled.clear()
    except OSError:  # a read-only or full disk, a folder removed meanwhile: the next run compiles again
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def _cached_exec(source: Any, globals: dict[str, Any] | None = None, locals: dict[str, Any] | None = None) -> None:
    """``exec`` as dataclasses.py calls it, with a text's code compiled once. ``dont_inherit``:
    the text is compiled with no ``__future__`` flag, as dataclasses.py (which imports none)
    compiles it, not with this module's ``annotations``."""
    if isinstance(source, str):
        code = _table.get(source)
        if code is None:
            code = _table[source] = compile(source, "<string>", "exec", dont_inherit=True)
            _compiled.add(source)
        _used.add(source)
        source = code
    exec(source, globals, locals)


def _path() -> Path | None:
    folder = directory()
    if folder is None:
        return None
    return folder / f"dataclass-methods.{sys.implementation.cache_tag}.{importlib.util.MAGIC_NUMBER.hex()}.marshal"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError:  # none yet, or one this user cannot read: every text is compiled
        return {}
    checksum, payload = data[len(_MAGIC) : len(_MAGIC) + 4], data[len(_MAGIC) + 4 :]
    if data[: len(_MAGIC)] != _MAGIC or checksum != zlib.crc32(payload).to_bytes(4, "little"):
        return {}  # damaged or foreign: written again by the next save
    table = marshal.loads(payload)
    if not isinstance(table, dict):
        return {}
    return table
