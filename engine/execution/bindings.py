"""The binding table a rule version's steps pass along: one uint32 column per bound variable
(encoded values, see values.py), as one (n, k) array so a join writes it in one gather."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Bindings:
    table: Any  # (n, k) uint32
    names: tuple[str | None, ...]  # None: a zero pad column (a join writing packed head rows)

    @classmethod
    def unit(cls, xp: Any) -> Bindings:
        """The one empty binding every version starts from."""
        return cls(xp.zeros((1, 0), dtype=xp.uint32), ())

    @property
    def n(self) -> int:
        return int(self.table.shape[0])

    def col(self, name: str) -> Any:
        return self.table[:, self.names.index(name)]

    def take(self, rows: Any) -> Bindings:
        return Bindings(self.table[rows], self.names)

    def with_column(self, name: str, values: Any, xp: Any) -> Bindings:
        return Bindings(xp.concatenate([self.table, values[:, None]], axis=1), self.names + (name,))
