"""How the world outside steers a running loop: checkpoints at iteration boundaries, a stop
at the next boundary (SIGTERM before a walltime), a stop now (timeout, cancel, a memory budget).

The loop (evaluate.py) calls a ``Control`` at three declared points and nowhere else:

- ``requests()`` at the end of every iteration, before its route: what this shard asks for
  (``SAVE``, ``STOP``). The route ORs the requests of all shards, so every shard sees the same
  answer in the same iteration and a checkpoint is consistent without an extra round.
- ``save(position, rows, dropped)`` at the boundary where a request was seen, on every shard
  (collective): the rows every shard accounts for, full and delta, per relation, and the
  sizes of the relations it freed.
- ``check(held)`` between rule versions and join chunks: raise to stop now. ``held()`` says
  what each of this shard's relations takes, so a memory budget can end the run with a
  message naming the relation.

``checkpoint.ShardControl`` is the implementation that writes checkpoints; ``NO_CONTROL``
steers nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

SAVE = 1  # write a checkpoint at this boundary
STOP = 2  # write a checkpoint at this boundary, then stop (raise errors.Suspended)


@dataclass(frozen=True, order=True)
class Position:
    """An iteration boundary: ``iteration`` iterations of ``stratum`` are done (0: the stratum
    has not started; ``stratum == len(strata)``: the evaluation is complete)."""

    stratum: int
    iteration: int

    def __str__(self) -> str:
        if self.iteration == 0:
            return f"at the start of stratum {self.stratum}"
        return f"in stratum {self.stratum} after iteration {self.iteration}"


class Control(Protocol):
    def requests(self) -> int:
        """``SAVE | STOP`` bits this shard asks for at the boundary now ending."""
        ...

    def save(self, position: Position, rows: dict[str, tuple[list[Any], Any]], dropped: dict[str, int]) -> None:
        """Write a checkpoint: ``rows[name] = (full's runs, delta)``, host arrays of the packed
        rows this shard accounts for; ``dropped``: the tuples it accounted for in each relation
        it freed (ShardStore.drop). Collective: every shard calls it at the same boundary."""
        ...

    def check(self, held: Callable[[], dict[str, int]]) -> None:
        """Raise to stop the run now; ``held()``: bytes each relation takes on this shard."""
        ...


class _NoControl:
    def requests(self) -> int:
        return 0

    def save(self, position: Position, rows: dict[str, tuple[list[Any], Any]], dropped: dict[str, int]) -> None:
        raise AssertionError("a checkpoint was requested without a Control that writes them")

    def check(self, held: Callable[[], dict[str, int]]) -> None:
        return None


NO_CONTROL: Control = _NoControl()
