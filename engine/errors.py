"""Every way a run ends without its result, under one base, ``DatalogError``: what went wrong
(``message``; ``pos`` where a program or file says it) and the command's exit status. The CLI
prints ``str(error)`` (``file:line:col: error: message``) and exits with ``exit_status``; the
Dask runtime passes them from workers to the client as they are (each pickles intact).

Anything else that escapes the engine is a bug and crashes loudly: in particular an
``OSError`` is never taken for the user's I/O error; the code that reads or writes the user's
files turns its failures into ``DatalogError``s naming the file.

    DatalogError               the program, a fact file, an output directory, an option    1
      MemoryBudgetExceeded     a shard's relations outgrew its memory budget               1
      ClusterError             the cluster cannot run it (no workers, scheduler lost)      1
      WorkerLost               a worker was lost and no retry was left                     1
      Stopped                  the run stopped on request
        Suspended              ... at a checkpoint, to be resumed                          75
        RunTimeout             ... at its time limit                                       124
        Terminated             ... without a checkpoint of where it was                    143
        Aborted                ... because another shard failed or the client stopped it
          PeerLost             ... because a peer's connection closed
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the CLI's parser reads the exit statuses without the engine
    from dask_datalog.engine.execution.control import Position
    from dask_datalog.engine.ir import Pos

EXIT_ERROR = 1
EXIT_SUSPENDED = 75  # EX_TEMPFAIL: stopped at a checkpoint, to be resumed (a SLURM script requeues on it)
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped without a checkpoint to resume from


class DatalogError(Exception):
    exit_status = EXIT_ERROR

    def __init__(self, pos: Pos | None, message: str):
        super().__init__(message)
        self.pos = pos
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable, so an error raised on a Dask worker reaches the client intact."""
        return (type(self), (self.pos, self.message))

    def __str__(self) -> str:
        where = f"{self.pos}: " if self.pos is not None else ""
        return f"{where}error: {self.message}"


class Diagnostics:
    """The checks of one phase, each run to its first problem, and the earliest problem
    raised at the end. Soufflé's checker reports every problem, sorted by file, line and
    column (problems it reports without a place last): the first line it prints is the
    earliest, whichever check found it, so the line we name is the one Soufflé names."""

    def __init__(self) -> None:
        self._found: list[tuple[bool, DatalogError]] = []

    @contextmanager
    def check(self, unplaced: bool = False) -> Iterator[None]:
        """Run one independent check; ``unplaced`` for the problems Soufflé reports without a
        place (sorted after the others there) though ours still name one."""
        try:
            yield
        except DatalogError as error:
            self._found.append((unplaced, error))

    def note(self, error: DatalogError) -> None:
        self._found.append((False, error))

    def raise_first(self) -> None:
        if self._found:
            raise min(self._found, key=lambda found: _order(*found))[1]


def _order(unplaced: bool, error: DatalogError) -> tuple[bool, str, int, int]:
    pos = error.pos
    if unplaced or pos is None:
        return (True, "", 0, 0)
    return (False, pos.file, pos.line, pos.col)


class MemoryBudgetExceeded(DatalogError):
    """The relations of one shard outgrew its memory budget: the run cannot finish there."""

    def __init__(self, sizes: dict[str, int], budget: int, rank: int, size: int):
        largest = max(sizes, key=sizes.__getitem__)
        where = "in this process" if size == 1 else f"on worker {rank} of {size}"
        super().__init__(
            None,
            f"out of memory budget: relation {largest} holds {human_bytes(sizes[largest])} {where} "
            f"({human_bytes(sum(sizes.values()))} for all relations), over the budget of {human_bytes(budget)}"
            + (" per worker" if size > 1 else "")
            + "; use more workers, a machine (or GPU) with more memory, or raise --memory-limit",
        )
        self.sizes, self.budget, self.rank, self.size = sizes, budget, rank, size

    def __reduce__(self) -> tuple[Any, ...]:
        return (MemoryBudgetExceeded, (self.sizes, self.budget, self.rank, self.size))


class ClusterError(DatalogError):
    """The Dask cluster cannot run the job: it has no workers, its scheduler went away, or the
    embedded one did not start."""

    def __init__(self, message: str):
        super().__init__(None, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


class WorkerLost(DatalogError):
    """A worker of a running run left the cluster (its process died, the scheduler lost it) or
    stopped sending heartbeats (``how``), and no retry was left: the run was stopped on the
    other workers and its tasks released."""

    def __init__(self, address: str, rank: int, where: str, retries: int = 0, how: str = "was lost"):
        self.address, self.rank, self.where, self.retries, self.how = address, rank, where, retries, how
        after = f" (after {retries} {'retry' if retries == 1 else 'retries'})" if retries else ""
        super().__init__(None, f"worker {address} (rank {rank}) {how} {where}; the run was stopped{after}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerLost, (self.address, self.rank, self.where, self.retries, self.how))


class Stopped(DatalogError):
    """The run stopped because it was asked to (or a peer stopped), not because of its input."""

    def __init__(self, message: str):
        super().__init__(None, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))

    def __str__(self) -> str:
        return self.message


class Suspended(Stopped):
    """The run stopped at a checkpoint because it was asked to (SIGTERM before a walltime)."""

    exit_status = EXIT_SUSPENDED

    def __init__(self, position: Position, directory: str | None = None):
        super().__init__(f"stopped {position} after writing a checkpoint")
        self.position = position
        self.directory = directory

    def __reduce__(self) -> tuple[Any, ...]:
        return (Suspended, (self.position, self.directory))


class RunTimeout(Stopped):
    """The run went past its time limit and was stopped (on every worker)."""

    exit_status = EXIT_TIMEOUT

    def __str__(self) -> str:
        return f"error: {self.message}"


class Terminated(Stopped):
    """The run was asked to stop (SIGTERM) and stopped without a checkpoint of where it was:
    there was no checkpoint directory, a second request said stop at once, or a worker was
    lost before the run had checkpointed. An earlier checkpoint of the run still resumes."""

    exit_status = EXIT_TERMINATED


class Aborted(Stopped):
    """This shard stopped because the run was stopped elsewhere: another shard failed, or the
    client stopped the run. Never the error a user sees: the client raises the cause."""


class PeerLost(Aborted):
    """A peer's connection closed mid-run (it failed or was stopped)."""


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
