"""Writing the ``.output`` relations of a distributed run from the shards, over any transport.

The rows are range-partitioned (splitters from samples every shard sees), so shard k holds the
k-th range of the sorted relation; CSV parts are written at their offsets into the one file,
byte for byte what a single process writes, and Parquet parts become the dataset's part files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dask_datalog.engine import ir

from dask_datalog.engine.formats import relation_output
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition.shard_exchange import Transport

from dask_datalog.spmd.shard import Shard

SAMPLES_PER_SHARD = 64  # per shard and destination, to split sorted output into even ranges


def write_outputs(transport: Transport, shard: Shard, output_dir: str, fmt: str) -> dict[str, bytes]:
    """Write every ``.output`` relation into ``output_dir`` (``fmt`` csv or parquet). With
    ``output_dir == "-"`` nothing is written: each shard returns its CSV parts (stdout is the
    client's), by relation."""
    written: dict[str, bytes] = {}
    for spec in shard.program.outputs:
        relation = shard.program.relations[spec.relation]
        rows = sorted_range(transport, shard.host_rows(spec.relation))
        if fmt == "parquet":
            _write_parquet_part(transport, Path(output_dir) / spec.relation, rows, relation, shard.symbols)
            continue
        if output_dir == "-":
            written[spec.relation] = relation_output.format_relation(rows, relation, shard.symbols, spec.delimiter)
            continue
        target = Path(output_dir) / (spec.filename or f"{spec.relation}.csv")
        _write_at_offset(transport, target, rows, relation, shard.symbols, spec.delimiter)
    return written


def sorted_range(transport: Transport, rows: np.ndarray) -> np.ndarray:
    """This shard's range of a relation in output order, from its sorted encoded host rows
    (any shard may hold none). Symbol ids are in text order (``SymbolTable.sorted_union``), so
    packed order is output order."""
    size = transport.size
    if rows.shape[1] == 0:  # nullary: at most one tuple, written by shard 0
        gathered = transport.allgather(rows)
        return np.concatenate(gathered)[:1] if transport.rank == 0 else rows[:0]
    first = rows[:, 0]
    step = max(1, first.shape[0] // (SAMPLES_PER_SHARD * size))
    samples = np.sort(np.concatenate(transport.allgather(first[::step])))
    if samples.shape[0]:
        cut = np.asarray([samples[samples.shape[0] * k // size] for k in range(1, size)], dtype=np.uint32)
    else:  # the relation is empty on every shard
        cut = np.zeros(size - 1, dtype=np.uint32)
    bounds = [0, *np.searchsorted(first, cut, side="left").tolist(), first.shape[0]]
    parts = transport.alltoall([rows[bounds[k] : bounds[k + 1]] for k in range(size)])
    mine = np.concatenate(parts)
    if len(parts) > 1 and mine.shape[0] > 1:
        mine = mine[np.lexsort(mine.T[::-1])]
    return mine


def _write_at_offset(
    transport: Transport, target: Path, rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable, delimiter: str
) -> None:
    """Every shard writes its range's text where the lower ranks' text ends; rank 0 sets the
    length. The text is formatted a chunk at a time, so a worker holds one chunk of it beside
    its rows, not its whole range's (several times the rows): the length is measured first."""
    rows = relation_output.sort_rows(rows, relation, symbols)  # a no-op check for a shard's range

    def chunks() -> Iterator[bytes | np.ndarray]:
        return relation_output.format_chunks(rows, relation, symbols, delimiter, in_order=True)

    whole = b"".join(chunks()) if len(rows) <= relation_output.FORMAT_CHUNK_ROWS else None
    length = len(whole) if whole is not None else relation_output.text_length(rows, relation, symbols, delimiter)
    lengths = transport.allgather(length)
    offset = sum(lengths[: transport.rank])
    if transport.rank == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
    transport.allgather(None)  # the directory exists before anyone opens the file
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if transport.rank == 0:
            os.ftruncate(fd, sum(lengths))
        for chunk in [whole] if whole is not None else chunks():
            os.pwrite(fd, chunk, offset)
            offset += len(chunk)
    finally:
        os.close(fd)
    if offset != sum(lengths[: transport.rank + 1]):
        raise AssertionError(f"{target}: shard {transport.rank} wrote up to byte {offset}, not where the next range starts")


def _write_parquet_part(
    transport: Transport, dataset: Path, rows: np.ndarray, relation: ir.Relation, symbols: SymbolTable
) -> None:
    if transport.rank == 0:
        relation_output.clear_parquet_parts(dataset)
    transport.allgather(None)  # stale parts are gone before anyone writes
    part = dataset / relation_output.parquet_part_name(transport.rank)
    relation_output.write_parquet_part(part, rows, relation, symbols)
