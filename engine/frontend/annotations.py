"""Soufflé's annotations ``@[key ...]`` and ``@![key ...]``, blanked before the grammar sees them.

An annotation holds any tokens in balanced brackets, which no regular terminal can match; so
each one is checked here against Soufflé 2.5's shape (a key, then nothing, ``= tokens`` or one
bracketed group) and its inside replaced by spaces (newlines kept, so every position stays
put). The grammar then takes ``@[ ]`` and ``@![ ]`` only where Soufflé's parser.yy does.
Soufflé 2.5 keeps annotations in its syntax tree and no pass reads them, so they are dropped.
"""

from __future__ import annotations

import re

from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.frontend.preprocess import LineMap

# What the program text outside annotations may hold that could look like one.
_OUTSIDE = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*[\s\S]*?\*/|@!?\[')
# The pieces of an annotation's inside: skipped text, a string, a bracket, any other token.
_INSIDE = re.compile(
    r'(?P<skip>\s+|//[^\n]*|/\*[\s\S]*?\*/)|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<open>[(\[{])|(?P<close>[)\]}])|(?P<tok>[A-Za-z0-9_?.]+|[^\sA-Za-z0-9_?.()\[\]{}"])'
)
_KEY = re.compile(r"[A-Za-z_?][A-Za-z0-9_?]*(-[A-Za-z_?][A-Za-z0-9_?]*)?")  # choice-domain is one too
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def blank(text: str, filename: str, where: LineMap) -> str:
    """``text`` with every annotation's inside turned to spaces; a malformed or unterminated
    annotation is an error at its ``@``."""
    out: list[str] = []
    done = 0
    for m in _OUTSIDE.finditer(text):
        if m.start() < done or not m.group().startswith("@"):
            continue
        end = _annotation_end(text, m.end(), filename, where, m.start())
        inside = text[m.end() : end - 1]
        out += [text[done : m.end()], re.sub(r"[^\n]", " ", inside), "]"]
        done = end
    out.append(text[done:])
    return "".join(out)


def _annotation_end(text: str, start: int, filename: str, where: LineMap, at: int) -> int:
    """Just past the ``]`` that closes the annotation whose inside begins at ``start``."""
    i = start
    while (skip := _INSIDE.match(text, i)) and skip.lastgroup == "skip":
        i = skip.end()
    key = _KEY.match(text, i)
    if key is None:
        raise _error(text, i, filename, where, "syntax error: an annotation starts with its key, a name")
    i = key.end()
    stack = ["["]
    top: list[tuple[str, int]] = []  # the top level's pieces after the key ("=", "tok" or "group") and where each starts
    while stack:
        m = _INSIDE.match(text, i)
        if m is None:
            raise _error(text, at, filename, where, "unterminated annotation @[...]")
        i = m.end()
        kind = m.lastgroup
        if kind == "skip":
            continue
        if kind == "open":
            if len(stack) == 1:
                top.append(("group", m.start()))
            stack.append(m.group())
            continue
        if kind == "close":
            if _CLOSING[stack.pop()] != m.group():
                raise _error(text, m.start(), filename, where, f"syntax error: unexpected '{m.group()}' in annotation")
            continue
        if len(stack) == 1:
            top.append(("=" if m.group() == "=" else "tok", m.start()))
    top.append(("]", i - 1))
    if (bad := _misplaced([kind for kind, _ in top])) is not None:
        message = (
            f"syntax error: unexpected '{text[top[bad][1]]}' in annotation (it is @[key], @[key = tokens] or @[key (tokens)])"
        )
        raise _error(text, top[bad][1], filename, where, message)
    return i


def _misplaced(kinds: list[str]) -> int | None:
    """Which of the top level's pieces (ending in its "]") Soufflé's grammar stops at, if any:
    after the key comes nothing, one group, or "=" and then one group or a token and anything."""
    if kinds[0] == "group":
        return None if kinds[1] == "]" else 1
    if kinds[0] != "=":
        return None if kinds[0] == "]" else 0
    if kinds[1] == "group":
        return None if kinds[2] == "]" else 2
    return None if kinds[1] == "tok" else 1


def _error(text: str, offset: int, filename: str, where: LineMap, message: str) -> DatalogError:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return DatalogError(where.pos(line, column, filename), message)
