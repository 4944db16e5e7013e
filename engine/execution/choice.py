"""``choice-domain``: a relation keeps at most one tuple per value of each of its keys; a new
tuple whose key value any kept tuple has is dropped.

Soufflé keeps the first tuple its evaluation inserts (which one is, by the language, any).
Here the choice is deterministic and the same on every shard: among an iteration's new tuples,
taken in value order, a tuple is kept when no tuple kept before (in earlier iterations or
earlier in that order) shares a key value with it: the greedy choice over the ordered tuples,
what Soufflé's B-tree order gives where one rule inserts them. Value order puts the program's
symbol constants before other symbols, as Soufflé numbers them first; among input symbols
Soufflé's order is the order it read them, ours their text, so a pick between two input
symbols may differ from Soufflé's while both are valid choices. It is computed in rounds, vectorised: a round keeps every
candidate that comes first in its group for every key (no two of those share a key), then drops
the candidates that share a key with one kept; a round keeps the least candidate left, so the
rounds end. The placement replicates choice relations, so every shard sees every candidate
and makes the same choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.storage.hisa import unpack


class Choice:
    """The keys one choice relation has kept so far (sorted, on the host: choice relations are
    the small, decided part of a program)."""

    def __init__(self, relation: ir.Relation, backend: Backend, full: Any, constants: np.ndarray):
        """``constants``: the ids of the program's symbol constants, which come first in the
        order candidates are taken in (Soufflé numbers them before any input symbol)."""
        self.relation, self.arity, self.keys, self.backend = relation, relation.arity, relation.choice, backend
        self.constants = constants
        columns = self._columns(full)
        self.taken = [np.unique(_key([columns[j] for j in key])) for key in self.keys]

    def _columns(self, rows: Any) -> list[np.ndarray]:
        host = self.backend.asnumpy(rows)
        return [unpack(host, j, np) for j in range(self.arity)]

    def choose(self, rows: Any) -> Any:
        """The new tuples (sorted, unique, packed) the relation keeps."""
        n = int(rows.shape[0])
        if n == 0:
            return rows
        columns = self._columns(rows)
        order = np.lexsort([self._rank(c, t) for c, t in zip(columns, self.relation.types)][::-1])
        columns = [c[order] for c in columns]
        keys = [_key([columns[j] for j in key]) for key in self.keys]
        alive = np.ones(n, dtype=bool)
        for values, taken in zip(keys, self.taken):
            alive &= ~np.isin(values, taken)
        kept = np.zeros(n, dtype=bool)
        while alive.any():
            candidates = np.nonzero(alive)[0]
            first = np.ones(candidates.shape[0], dtype=bool)
            for values in keys:
                leaders = np.zeros(candidates.shape[0], dtype=bool)
                leaders[np.unique(values[candidates], return_index=True)[1]] = True
                first &= leaders
            won = candidates[first]
            kept[won] = True
            for values in keys:
                alive &= ~np.isin(values, values[won])
        self.taken = [np.union1d(taken, values[kept]) for values, taken in zip(keys, self.taken)]
        return rows[self.backend.xp.asarray(np.sort(order[kept]))]

    def _rank(self, column: np.ndarray, type: str) -> np.ndarray:
        """The order candidates are taken in, column by column: values, but the program's
        symbol constants before the other symbols."""
        if type != "symbol":
            return column
        return column.astype(np.int64) + np.where(np.isin(column, self.constants), 0, 1 << 32)


def _key(columns: list[np.ndarray]) -> np.ndarray:
    """One comparable value per row for the key ``columns`` (uint32 each)."""
    if len(columns) == 1:
        return columns[0].astype(np.uint64)
    if len(columns) == 2:
        return (columns[0].astype(np.uint64) << np.uint64(32)) | columns[1].astype(np.uint64)
    table = np.ascontiguousarray(np.stack(columns, axis=1).astype(np.uint32))
    return table.view(np.dtype((np.void, 4 * len(columns)))).reshape(-1)
