"""One shard's run, the same in a process of its own and on a Dask worker: the one start
sequence (``evaluate_shard``) over a ``Transport``, and what it leaves (``Shard``).

Start from the latest checkpoint or from the inputs (every shard reads its part, all agree on
one symbol table and on the input sizes), place the plan over the shards, load or restore the
relations, run the engine's fixpoint, keep the rows this shard accounts for. A run in process
is this with ``LocalTransport``; Dask tasks hand in the phase's worker-to-worker transport,
tests hand in threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dask_datalog.engine import checkpoint, ir, memory
from dask_datalog.engine.backend import Backend, get_backend
from dask_datalog.engine.checkpoint import CheckpointOptions, ShardControl
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.execution.control import Position
from dask_datalog.engine.execution.exchange import Exchange, LocalExchange
from dask_datalog.engine.execution.fixpoint import Fixpoint, OnIteration
from dask_datalog.engine.execution.shard_store import ShardStore
from dask_datalog.engine.formats.relation_output import host_rows
from dask_datalog.engine.plan import expiring, plan_program
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition import REPLICATE_BELOW
from dask_datalog.partition.placement import place
from dask_datalog.partition.shard_exchange import ShardExchange
from dask_datalog.partition.transport import Transport
from dask_datalog.spmd.inputs import Inputs, Start, agree

if TYPE_CHECKING:  # only a run with --profile or --stats imports profile.py
    from dask_datalog.engine.execution.profile import Profile


@dataclass(frozen=True)
class Steering:
    """What steers a shard's run besides its program and inputs: checkpoints (and where it
    starts), a memory budget in bytes for this shard's data (None: ``memory.default_budget``),
    and two callables asked at the loop's boundaries: ``stop_requested()`` (checkpoint, then
    stop: SIGTERM) and ``interrupted()`` (raises to stop now: a time limit, a stopped run);
    ``profile``: keep a per rule version profile (execution/profile.py) in the statistics;
    ``keep``: the relations the caller reads after the run (None: all); the others are freed
    once no later stratum reads them (a checkpoint records their sizes)."""

    checkpoint: CheckpointOptions | None = None
    memory_budget: int | None = None
    stop_requested: Callable[[], bool] = lambda: False
    interrupted: Callable[[], None] = lambda: None
    profile: bool = False
    keep: frozenset[str] | None = None


@dataclass
class Shard:
    """One shard's part of a finished run: the packed rows it accounts for per relation (its
    part of a partitioned relation, all of a replicated one on rank 0), sorted, on its
    backend; the run's symbol table; its statistics."""

    rank: int
    size: int
    program: ir.Program
    symbols: SymbolTable
    backend: str  # by name: a Shard travels between processes
    rows: dict[str, Any]
    stats: dict[str, Any]

    def host_rows(self, name: str) -> np.ndarray:
        """(n, arity) encoded uint32 rows on the host, sorted."""
        return host_rows(self.rows[name], self.program.relations[name].arity, get_backend(self.backend))


def evaluate_shard(
    transport: Transport,
    program: ir.Program,
    backend: Backend,
    inputs: Inputs = Inputs(),
    steering: Steering = Steering(),
    chunk_rows: int | None = None,
    replicate_below: int = REPLICATE_BELOW,
    on_iteration: OnIteration | None = None,
) -> Shard:
    """Shard ``transport.rank``'s whole run (see the module docstring)."""
    t0 = time.perf_counter()
    rank, size = transport.rank, transport.size

    def fingerprint() -> dict[str, Any]:
        return checkpoint.fingerprint(program, inputs.file_names(program), inputs.digests())

    manifest, restored = checkpoint.start(steering.checkpoint, rank, size, transport.allgather, fingerprint)
    if manifest is None:
        start = agree(transport, program, inputs)
    else:
        start = Start(checkpoint.restored_symbols(manifest), {}, manifest.input_sizes)
    t_load = time.perf_counter() - t0
    control = _control(steering, backend, transport, manifest, start, fingerprint, t0)
    plan = place(plan_program(program), size, start.sizes, replicate_below)
    exchange: Exchange = LocalExchange() if size == 1 else ShardExchange(transport, backend.xp)
    relations = ShardStore(plan, backend, exchange)
    if manifest is None:
        relations.load(start.inputs)  # takes them: the stores hold them packed from here
    else:
        relations.restore(manifest.position, restored, manifest.dropped)
    chunk_rows = chunk_rows or memory.chunk_rows_for(control.memory_budget or memory.default_budget(backend), backend)
    profile: Profile | None = None
    if steering.profile:
        from dask_datalog.engine.execution.profile import Profile  # only a profiled run needs it

        profile = Profile(plan)
    keep = steering.keep
    if manifest is not None and manifest.dropped and (keep is None or keep & manifest.dropped.keys()):
        lost = sorted(manifest.dropped if keep is None else keep & manifest.dropped.keys())
        raise DatalogError(
            None,
            f"the checkpoint {manifest.name} no longer holds {', '.join(lost)}, which this run keeps: "
            "resume it keeping what the run that wrote it kept (the command keeps the outputs)",
        )
    drop_after = expiring(plan, keep) if keep is not None else ()
    fixpoint = Fixpoint(plan, backend, start.symbols, relations, chunk_rows, control, profile, drop_after)
    evaluation = fixpoint.run(manifest.position if manifest is not None else Position(0, 0), on_iteration)
    stats = {
        **evaluation.to_json(),
        "load_s": round(t_load, 6),
        "checkpoints": control.written,
        "exchange": {"transport": transport.kind, **transport.stats.snapshot()},
        "placement": {
            name: {"replicated": layout.replicated, "keys": [list(k) for k in layout.copies], "why": layout.reason}
            for name, layout in plan.layouts.items()
        },
        "local_sizes": {name: relations.local_size(name) for name in program.relations},
        "dropped": sorted(relations.dropped),
    }
    if profile is not None:
        stats["profile"] = profile.to_json()
    rows = {name: relations.final_rows(name) for name in program.relations if name not in relations.dropped}
    return Shard(rank, size, program, start.symbols, backend.name, rows, stats)


def _control(
    steering: Steering,
    backend: Backend,
    transport: Transport,
    manifest: checkpoint.Manifest | None,
    start: Start,
    fingerprint: Callable[[], dict[str, Any]],
    t0: float,
) -> ShardControl:
    """The ``ShardControl`` of this shard. A run that started from a checkpoint carries its
    fingerprint and elapsed time on; a fresh one computes its fingerprint (hashing the input
    files) when it writes its first checkpoint. Without a memory budget the shard gets the
    default share of the machine (or GPU)."""
    known: list[dict[str, Any]] = [manifest.fingerprint] if manifest is not None else []
    before = manifest.seconds if manifest is not None else 0.0

    def describe() -> tuple[dict[str, int], dict[str, Any], SymbolTable]:
        if not known:
            known.append(fingerprint())
        return start.sizes, known[0], start.symbols

    return ShardControl(
        transport.rank,
        transport.size,
        transport.allgather,
        steering.checkpoint,
        describe,
        lambda: before + time.perf_counter() - t0,
        steering.stop_requested,
        steering.interrupted,
        steering.memory_budget or memory.default_budget(backend),
    )
