"""User-facing errors. Every mistake in a program or a fact file becomes one DatalogError
carrying where it is; the CLI prints ``file:line:col: error: message`` and exits 1.
Anything else that escapes the engine is a bug and is allowed to crash loudly."""

from __future__ import annotations

from dask_datalog.engine.ir import Pos


class DatalogError(Exception):
    def __init__(self, pos: Pos | None, message: str):
        super().__init__(message)
        self.pos = pos
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[Pos | None, str]]:
        """Picklable, so an error raised on a Dask worker reaches the client intact."""
        return (DatalogError, (self.pos, self.message))

    def __str__(self) -> str:
        where = f"{self.pos}: " if self.pos is not None else ""
        return f"{where}error: {self.message}"
