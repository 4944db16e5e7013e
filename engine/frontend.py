"""The front end in one call: program text -> checked, stratifiable ir.Program."""

from __future__ import annotations

import os
from pathlib import Path

from . import ir
from .checker import check
from .errors import DatalogError
from .parser import parse
from .strata import stratify


def load_program(text: str, filename: str = "<string>") -> ir.Program:
    """Parse and check a program; DatalogError (with its position) on any problem."""
    program = check(parse(text, filename), filename)
    stratify(program)  # negation or aggregation through recursion is rejected at load time
    return program


def load_program_file(path: str | os.PathLike[str]) -> ir.Program:
    """``load_program`` on a file; positions name the file as given."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except OSError as e:
        raise DatalogError(None, f"cannot read program {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise DatalogError(ir.Pos(str(p), 1, 1), f"not UTF-8 text ({e.reason})") from None
    return load_program(text, str(p))
