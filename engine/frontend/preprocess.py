"""The C preprocessor as Soufflé runs it on a program (``#include``, ``#define``, ``#if``...,
``-I DIR``, ``-M NAME=VALUE``; ``RAM_DOMAIN_SIZE`` is 32, as in a 32-bit Soufflé), through
pcpp, a C99 preprocessor in pure Python: no compiler needs to be installed where programs run.

Comments pass through untouched (the parser drops them), so every line keeps its number; the
``#line`` markers pcpp writes where files and lines change become a ``LineMap`` from the
preprocessed text's lines to the user's file and line, which every position the parser makes
goes through. A program with no directive and no macro given is not preprocessed at all.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError

PREDEFINED = {"RAM_DOMAIN_SIZE": "32"}  # what Soufflé defines for its programs
_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_HIDE = {ord(c): 0xF8F0 + i for i, c in enumerate(_BREAKS)}
_SHOW = {v: k for k, v in _HIDE.items()}
_DIRECTIVE = re.compile(r"^[ \t]*(#|\.include\b|\.once\b)", re.M)
# Soufflé's own .include "file" and .once, given to the preprocessor as #include and #pragma once.
_SOUFFLE_INCLUDE = re.compile(r'^([ \t]*)\.include(?=[ \t]*")', re.M)
_SOUFFLE_ONCE = re.compile(r"^([ \t]*)\.once\b", re.M)


def _as_cpp(text: str) -> str:
    """Soufflé's include directives as the preprocessor's, line for line."""
    return _SOUFFLE_ONCE.sub(r"\1#pragma once", _SOUFFLE_INCLUDE.sub(r"\1#include", text))


_MARKER = re.compile(r'^#line (\d+) "((?:[^"\\]|\\.)*)"$')


@dataclass
class LineMap:
    """Line i of the preprocessed text (1-based) came from ``origins[i - 1]`` (file, line)."""

    origins: list[tuple[str, int]] = field(default_factory=list)
    last: int = 0  # the program's own last line: pcpp may end its text with a line more

    def pos(self, line: int, col: int, default: str) -> ir.Pos:
        if 1 <= line <= len(self.origins):
            file, original = self.origins[line - 1]
            if file == default and self.last:
                original = min(original, self.last)
            return ir.Pos(file, original, col)
        return ir.Pos(default, line, col)


def needed(text: str, macros: Mapping[str, str]) -> bool:
    return bool(macros) or _DIRECTIVE.search(text) is not None


def preprocess(
    text: str, filename: str, include_dirs: Sequence[str | Path] = (), macros: Mapping[str, str] | None = None
) -> tuple[str, LineMap]:
    """The program text after the preprocessor, and where each of its lines came from."""
    from pcpp import Preprocessor

    class _Preprocessor(Preprocessor):
        def on_comment(self, tok: Any) -> bool:
            return True  # kept: lines stay where they were, the parser drops comments

        def on_error(self, file: str, line: int, msg: str) -> None:
            raise DatalogError(ir.Pos(named(file), line, 1), f"preprocessor: {msg}")

        def on_directive_unknown(self, directive: Any, toks: Any, ifpassthru: bool, precedingtoks: Any) -> bool | None:
            """``#error`` stops the run at its line, as cpp does; ``#warning`` is printed
            (pcpp's own); ``#pragma`` is left out; any other directive is an error (cpp's)."""
            here = ir.Pos(named(directive.source), directive.lineno, 1)
            text = "".join(tok.value for tok in toks).strip()
            if directive.value == "error":
                raise DatalogError(here, f"#error {text}")
            if directive.value == "pragma":
                return True
            if directive.value == "warning":
                return bool(super().on_directive_unknown(directive, toks, ifpassthru, precedingtoks))
            raise DatalogError(here, f"invalid preprocessing directive #{directive.value}")

        def on_file_open(self, is_system_include: bool, includepath: str) -> Any:
            with open(includepath, encoding="utf-8") as f:  # an included file's .include too
                return io.StringIO(_as_cpp(f.read().removeprefix("\ufeff")))

        def on_include_not_found(self, is_malformed: bool, is_system_include: bool, curdir: str, includepath: str) -> None:
            raise DatalogError(_include_line(text, filename, includepath), f"cannot find include file {includepath}")

    def named(source: str) -> str:
        """pcpp's name of a file, as the user gave it where it is the program itself."""
        return filename if os.path.abspath(source) == os.path.abspath(filename) else source

    processor = _Preprocessor()
    processor.line_directive = "#line"
    for directory in [Path(filename).parent, *map(Path, include_dirs)]:
        processor.add_path(str(directory))
    processor.rewrite_paths = []  # pcpp would rewrite file names relative to its own idea of the cwd
    for name, value in {**PREDEFINED, **(macros or {})}.items():
        processor.define(f"{name} {value}")
    # pcpp breaks lines at more characters than LF (CR, form feed, Unicode's line separators...),
    # the parser at LF alone: those travel as private-use stand-ins, so both count the same lines.
    processor.parse(_as_cpp(text.replace("\r\n", "\n")).translate(_HIDE), filename)
    out = io.StringIO()
    processor.write(out)
    lines = out.getvalue().split("\n")
    origins: list[tuple[str, int]] = []
    file, line = filename, 1
    for i, content in enumerate(lines):
        marker = _MARKER.match(content)
        if marker:
            file, line = named(marker.group(2).replace('\\"', '"').replace("\\\\", "\\")), int(marker.group(1))
            lines[i] = ""
            origins.append((file, line - 1))  # the marker's own line: the one before
            continue
        origins.append((file, line))
        line += 1
    return "\n".join(lines).translate(_SHOW), LineMap(origins, text.count("\n") + 1)


def has_includes(text: str) -> bool:
    """Whether the program uses Soufflé's ``.include`` or ``.once``."""
    return _SOUFFLE_INCLUDE.search(text) is not None or _SOUFFLE_ONCE.search(text) is not None


MAX_INCLUDE_DEPTH = 64  # includes within includes, as a bound on a file that includes itself


def expand_includes(text: str, filename: str, include_dirs: Sequence[str | Path] = ()) -> tuple[str, LineMap]:
    """Soufflé's ``.include "file"`` (looked for beside the including file, then in the -I
    directories) and ``.once`` (a file included again adds nothing), without the C
    preprocessor (``--no-preprocessor``): the program text with each included file in place of
    its directive, and where each line came from."""
    lines: list[str] = []
    origins: list[tuple[str, int]] = []
    done: set[str] = set()

    def visit(content: str, name: str, depth: int) -> None:
        if _SOUFFLE_ONCE.search(content):
            if os.path.abspath(name) in done:
                return
            done.add(os.path.abspath(name))
        for number, line in enumerate(content.split("\n"), start=1):
            include = re.match(r'[ \t]*\.include[ \t]*"([^"]*)"', line)
            lines.append("" if include or _SOUFFLE_ONCE.match(line) else line)
            origins.append((name, number))
            if include is None:
                continue
            here = ir.Pos(name, number, 1)
            if depth >= MAX_INCLUDE_DEPTH:
                raise DatalogError(here, f"includes nested more than {MAX_INCLUDE_DEPTH} deep")
            places = [Path(name).parent, *map(Path, include_dirs)]
            found = next((p / include.group(1) for p in places if (p / include.group(1)).is_file()), None)
            if found is None:
                raise DatalogError(here, f"cannot find include file {include.group(1)}")
            visit(found.read_text(encoding="utf-8").removeprefix("\ufeff"), str(found), depth + 1)

    visit(text, filename, 0)
    return "\n".join(lines), LineMap(origins, text.count("\n") + 1)


def _include_line(text: str, filename: str, included: str) -> ir.Pos:
    """Where the program includes ``included``: the line that names it, else (a nested or
    malformed include) its first ``#include``, else its start."""
    lines = text.split("\n")
    for pattern in (rf"[ \t]*#[ \t]*include[ \t]*[<\"]{re.escape(included)}[>\"]", r"[ \t]*#[ \t]*include"):
        for number, line in enumerate(lines, start=1):
            if re.match(pattern, line):
                return ir.Pos(filename, number, 1)
    return ir.Pos(filename, 1, 1)
