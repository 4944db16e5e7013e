"""One shard of a distributed run, over any transport: load this shard's part of the inputs,
agree with the peers on one symbol table and on the placement, run the engine's loop with a
``ShardExchange``, and keep the rows this shard accounts for. Nothing here knows Dask: the Dask
task (``tasks.py``) hands in the job's worker-to-worker transport, tests hand in threads
(``threads.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dask_datalog.engine import checkpoint, ir

from dask_datalog.engine.storage import sets
from dask_datalog.engine.backend import Backend, get_backend
from dask_datalog.engine.storage.hisa import pack, unpack
from dask_datalog.spmd.job import FactSource, Shape, Start, Steering, evaluate, host_rows, input_files, load_inputs
from dask_datalog.engine.plan import plan_program
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition.shard_exchange import ShardExchange, Transport
from dask_datalog.partition.placement import REPLICATE_BELOW, place


@dataclass
class Shard:
    """One shard's part of a finished run: packed rows it accounts for per relation (its part
    of a partitioned relation, all of a replicated one on rank 0), on the backend."""

    rank: int
    program: ir.Program
    symbols: SymbolTable
    backend: str
    rows: dict[str, Any]
    stats: dict[str, Any]

    def host_rows(self, name: str) -> np.ndarray:
        """(n, arity) encoded uint32 rows on the host, sorted."""
        return host_rows(self.rows[name], self.program.relations[name].arity, get_backend(self.backend))


def evaluate_shard(
    transport: Transport,
    program: ir.Program,
    backend: Backend,
    fact_dir: str | Path | None = None,
    facts: Mapping[str, FactSource] | None = None,
    chunk_rows: int | None = None,
    replicate_below: int = REPLICATE_BELOW,
    on_iteration: Callable[[int, int, dict[str, int]], None] | None = None,
    steering: Steering = Steering(),
    array_digests: Mapping[str, str] | None = None,
) -> Shard:
    """Shard ``transport.rank``'s whole run. ``facts``: relation -> a fact file (each shard
    reads its byte range) or this shard's rows (array or DataFrame, split by the caller).
    ``steering.checkpoint`` may start it from a checkpoint written by any number of shards;
    ``array_digests``: the fingerprints of whole input arrays (the caller split them)."""
    def load(manifest: checkpoint.Manifest | None, restored: Any) -> Start:
        if manifest is None:
            return _load(transport, program, fact_dir, facts)
        symbols = SymbolTable.sorted_union([sorted(ir.symbol_constants(program)), manifest.symbols])
        _remap_checkpoint(restored, program, SymbolTable.in_order(manifest.symbols), symbols)
        return Start(symbols, {}, manifest.input_sizes)

    shape = Shape(
        transport.rank,
        transport.size,
        transport.allgather,
        lambda: checkpoint.fingerprint(program, input_files(program, fact_dir, facts), dict(array_digests or {})),
        load,
        lambda sizes: place(plan_program(program), transport.size, sizes, replicate_below),
        ShardExchange(transport, backend.xp),
    )
    evaluator, start, stats = evaluate(shape, backend, steering, chunk_rows, on_iteration)
    stats["exchange"] = transport.stats.snapshot()
    stats["placement"] = {
        name: {"replicated": l.replicated, "keys": [list(k) for k in l.copies], "why": l.reason}
        for name, l in evaluator.plan.layouts.items()
    }
    stats["local_sizes"] = {name: evaluator.local_size(name) for name in program.relations}
    rows = {name: evaluator.local_rows(name) for name in program.relations}
    return Shard(transport.rank, program, start.symbols, backend.name, rows, stats)


def _load(transport: Transport, program: ir.Program, fact_dir: str | Path | None, facts: Mapping[str, FactSource] | None) -> Start:
    """This shard's part of the inputs, re-encoded with the symbol table all shards agree on,
    and every input relation's total size."""
    local = SymbolTable()
    inputs = load_inputs(program, local, fact_dir, facts, transport.rank, transport.size)
    counts = {name: int(rows.shape[0]) for name, rows in inputs.items()}
    agreed = transport.allgather((local.strings, counts))
    symbols = SymbolTable.sorted_union([sorted(ir.symbol_constants(program))] + [strings for strings, _ in agreed])
    _remap_symbols(inputs, program, local, symbols)
    sizes: dict[str, int] = {}
    for _, theirs in agreed:
        for name, n in theirs.items():
            sizes[name] = sizes.get(name, 0) + n
    return Start(symbols, inputs, sizes)


def _remap_checkpoint(
    rows: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], program: ir.Program, saved: SymbolTable, symbols: SymbolTable
) -> None:
    """A checkpoint's packed rows re-encoded in ``symbols``, whose ids are in text order as the
    shards' output needs (a checkpoint written in process has them in reading order, without
    the constants not yet used)."""
    if saved.strings == symbols.strings[: len(saved)]:  # the same ids
        return
    mapping = saved.remap_to(symbols)
    for name, blocks in rows.items():
        relation = program.relations[name]
        columns = [j for j, t in enumerate(relation.types) if t == "symbol"]
        if not columns:
            continue
        for kind in blocks:
            for i, packed in enumerate(kind):
                unpacked = [unpack(packed, j, np) for j in range(relation.arity)]
                for j in columns:
                    unpacked[j] = mapping[unpacked[j]]
                kind[i] = sets.sort_unique(pack(unpacked, packed.shape[0], np), np)  # blocks stay sorted


def _remap_symbols(inputs: dict[str, np.ndarray], program: ir.Program, local: SymbolTable, symbols: SymbolTable) -> None:
    """This shard's symbol ids (in the order it read them) -> the agreed ids."""
    if not len(local):
        return
    mapping = local.remap_to(symbols)
    for name, rows in inputs.items():
        for j, t in enumerate(program.relations[name].types):
            if t == "symbol":
                rows[:, j] = mapping[rows[:, j]]
