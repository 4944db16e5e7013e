"""The front end in one call: program text -> checked, stratifiable ir.Program."""

from __future__ import annotations

import codecs
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend import preprocess, program_cache


def load_program(
    text: str,
    filename: str = "<string>",
    include_dirs: Sequence[str | os.PathLike[str]] = (),
    macros: Mapping[str, str] | None = None,
    preprocessor: bool = True,
) -> ir.Program:
    """Parse a program, expand its components and check it; DatalogError (with its position)
    on any problem. As Soufflé does, the C preprocessor runs first (``include_dirs``: -I,
    ``macros``: -M), unless ``preprocessor`` is False; a program with no directive and no
    macro skips it. The result of the rest is cached (program_cache.py), keyed by the text
    preprocessed."""
    lines = None
    if preprocessor and preprocess.needed(text, macros or {}):
        text, lines = preprocess.preprocess(text.removeprefix("\ufeff"), filename, [str(d) for d in include_dirs], macros)
    elif preprocess.has_includes(text):
        text, lines = preprocess.expand_includes(text.removeprefix("\ufeff"), filename, [str(d) for d in include_dirs])
    return program_cache.load(text, filename, lines, macros or {}, preprocessor, lambda: _front_end(text, filename, lines))


def _front_end(text: str, filename: str, lines: preprocess.LineMap | None) -> ir.Program:
    """Parse, expand, check, stratify, transform. Imported here, so a program found in the
    cache costs no import of lark (~20 ms to build its parser) nor of these modules."""
    from dask_datalog.engine.frontend import components, magic
    from dask_datalog.engine.frontend.checker import check, check_counters, check_plans
    from dask_datalog.engine.frontend.parser import parse
    from dask_datalog.engine.frontend.strata import stratify

    statements = components.expand(parse(text, filename, lines))
    program = check(statements, filename)
    strata = stratify(program)  # negation or aggregation through recursion is rejected at load time
    check_plans(statements, strata)
    check_counters(strata)
    return magic.transform(program)


def load_program_file(
    path: str | os.PathLike[str],
    include_dirs: Sequence[str | os.PathLike[str]] = (),
    macros: Mapping[str, str] | None = None,
    preprocessor: bool = True,
) -> ir.Program:
    """``load_program`` on a file; positions name the file as given. A byte-order mark is
    skipped; bytes that are not UTF-8 are an error at the first of them."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DatalogError(None, f"cannot read program {p}: {e.strerror}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(data, e.start, e.reason, str(p)) from None
    return load_program(text, str(p), include_dirs, macros, preprocessor)


def _not_utf8(data: bytes, bad: int, reason: str, filename: str) -> DatalogError:
    """The error for undecodable program bytes, at the line and column (in characters, as the
    parser counts them) of the first bad byte, ``data[bad]``."""
    before = data[:bad].decode("utf-8")  # valid: decoding failed only at ``bad``
    line_start = before.rfind("\n") + 1
    pos = ir.Pos(filename, before.count("\n") + 1, len(before) - line_start + 1)
    return DatalogError(pos, f"not UTF-8 text: byte 0x{data[bad]:02x} ({reason}); save the program as UTF-8")
