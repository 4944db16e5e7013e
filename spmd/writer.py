"""Writing a run's ``.output`` relations from its shards, over any transport: the one writer,
for a run in process (a group of one) and on a cluster alike.

Each relation's packed rows are range-partitioned by their first column (splitters from samples
every shard sees), so shard k ends with the k-th range of the sorted relation: the k-way merge
of the sorted blocks it received. CSV: every shard formats its range a chunk at a time and
writes it where the lower ranks' text ends (the lengths they measured first), so the file is
byte for byte what one process writes and no shard holds more than a chunk of text; Parquet: a
part file per shard, in rank order the sorted relation; stdout: each range's text, returned to
the caller, which prints them in rank order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.backend import Backend, get_backend
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats import relation_output
from dask_datalog.engine.formats.relation_output import PackedRows
from dask_datalog.engine.storage import sets
from dask_datalog.engine.storage.hisa import pack, unpack
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition.transport import Transport
from dask_datalog.spmd.shard import Shard

SAMPLES_PER_SHARD = 64  # per shard and destination, to split sorted output into even ranges
STDOUT = "-"


def check_output_format(output_dir: str, fmt: str) -> None:
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown output format {fmt!r}: expected csv or parquet")
    if output_dir == STDOUT and fmt != "csv":
        raise ValueError("only CSV output can go to stdout")


def write_outputs(
    transport: Transport, shard: Shard, output_dir: str, fmt: str, written: Callable[[str, int], None] | None = None
) -> dict[str, bytes]:
    """Write every ``.output`` relation into ``output_dir`` (``fmt`` csv or parquet); with
    ``output_dir`` "-" nothing is written and this shard's text of each relation is returned.
    ``written(relation, n)``: this shard's bytes of a CSV file written so far, after each chunk.
    Collective."""
    check_output_format(output_dir, fmt)
    backend = get_backend(shard.backend)
    symbols = shard.symbols
    remap = None
    if not symbols.text_ordered:  # strings appended during evaluation: re-encode in text order
        mapping, symbols = symbols.reordered()
        remap = backend.xp.asarray(mapping)
    text: dict[str, bytes] = {}
    for spec in shard.program.outputs:
        relation = shard.program.relations[spec.relation]
        packed = shard.rows[spec.relation]
        if remap is not None and "symbol" in relation.types:
            packed = _in_text_order(packed, relation, remap, backend)
        rows = PackedRows(sorted_range(transport, packed, relation.arity, backend), relation.arity, backend)
        if fmt == "parquet":
            _write_parquet_part(transport, Path(output_dir) / spec.relation, rows, relation, symbols)
        elif output_dir == STDOUT:
            text[spec.relation] = relation_output.format_relation(rows, relation, symbols, spec.delimiter)
        else:
            progress = None if written is None else (lambda n, name=spec.relation: written(name, n))
            target = Path(output_dir) / (spec.filename or f"{spec.relation}.csv")
            _write_csv(transport, target, rows, relation, symbols, spec.delimiter, progress)
    return text


def sorted_range(transport: Transport, packed: Any, arity: int, backend: Backend) -> Any:
    """This shard's range of a relation in output order, from its sorted packed rows (any shard
    may hold none): one round of samples, one all-to-all of blocks, a k-way merge."""
    size = transport.size
    if size == 1:
        return packed
    xp = backend.xp
    if arity == 0:  # at most one tuple, written by shard 0
        held = any(transport.allgather(int(packed.shape[0]) > 0))
        return xp.zeros((1, 1), dtype=xp.uint64) if held and transport.rank == 0 else packed[:0]
    first = unpack(packed, 0, xp)
    step = max(1, int(first.shape[0]) // (SAMPLES_PER_SHARD * size))
    samples = np.sort(np.concatenate(transport.allgather(backend.asnumpy(first[::step]))))
    if samples.shape[0]:
        cut = xp.asarray(np.asarray([samples[samples.shape[0] * k // size] for k in range(1, size)], dtype=np.uint32))
    else:  # the relation is empty on every shard
        cut = xp.zeros(size - 1, dtype=xp.uint32)
    bounds = [0, *backend.asnumpy(xp.searchsorted(first, cut, side="left")).tolist(), int(packed.shape[0])]
    parts = transport.alltoall([packed[bounds[k] : bounds[k + 1]] for k in range(size)])
    blocks = [xp.asarray(p) for p in parts if p.shape[0]]
    return sets.merge_all(blocks, backend) if blocks else packed[:0]


def _in_text_order(packed: Any, relation: ir.Relation, remap: Any, backend: Backend) -> Any:
    """Rows re-encoded by ``remap`` (``SymbolTable.reordered``: ids in text order), sorted."""
    xp = backend.xp
    columns = [unpack(packed, j, xp) for j in range(relation.arity)]
    columns = [remap[c] if t == "symbol" else c for c, t in zip(columns, relation.types)]
    return sets.sort_unique(pack(columns, int(packed.shape[0]), xp), xp)


def _write_csv(
    transport: Transport,
    target: Path,
    rows: PackedRows,
    relation: ir.Relation,
    symbols: SymbolTable,
    delimiter: str,
    written: Callable[[int], None] | None,
) -> None:
    """Every shard writes its range's text where the lower ranks' text ends; rank 0 empties the
    file first. The text is formatted a chunk at a time, so a shard holds one chunk of it beside
    its rows; every shard but the last measures its length first (counted from the digits for
    numbers, formatted once when the range is one chunk)."""
    rank, size = transport.rank, transport.size

    def chunks() -> Iterator[bytes | memoryview]:
        return relation_output.format_chunks(rows, relation, symbols, delimiter, in_order=True)

    whole: bytes | None = None
    length = 0
    if rank < size - 1:
        if len(rows) <= relation_output.FORMAT_CHUNK_ROWS:
            whole = b"".join(chunks())
            length = len(whole)
        else:
            length = relation_output.text_length(rows, relation, symbols, delimiter)
    lengths = transport.allgather(length)
    offset = sum(lengths[:rank])
    if rank == 0:
        _io(target, lambda: _create_empty(target))
    transport.allgather(None)  # the file exists, empty, before anyone writes into it
    fd = _io(target, lambda: os.open(target, os.O_WRONLY))

    def write_at(chunk: bytes | memoryview, at: int) -> int:
        return int(_io(target, lambda: os.pwrite(fd, chunk, at)))

    try:
        for chunk in [whole] if whole is not None else chunks():
            write_at(chunk, offset)
            offset += len(chunk)
            if written is not None:
                written(offset - sum(lengths[:rank]))
    finally:
        os.close(fd)
    if rank < size - 1 and offset != sum(lengths[: rank + 1]):
        raise AssertionError(f"{target}: shard {rank} wrote up to byte {offset}, not where the next range starts")


def _create_empty(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))


def _io(path: Path, operation: Callable[[], Any]) -> Any:
    """``operation()`` on the user's output ``path``; its failure is the user's error, named."""
    try:
        return operation()
    except OSError as error:
        raise DatalogError(None, f"cannot write {path}: {error.strerror or error}") from None


def _write_parquet_part(
    transport: Transport, dataset: Path, rows: PackedRows, relation: ir.Relation, symbols: SymbolTable
) -> None:
    if transport.rank == 0:
        _io(dataset, lambda: relation_output.clear_parquet_parts(dataset))
    transport.allgather(None)  # stale parts are gone before anyone writes
    part = dataset / relation_output.parquet_part_name(transport.rank)
    _io(part, lambda: relation_output.write_parquet_part(part, np.asarray(rows), relation, symbols))


def print_relations(stream: TextIO | None, program: ir.Program, texts: Mapping[str, bytes]) -> None:
    """The ``.output`` relations' CSV text on stdout as Soufflé prints them for ``-D -``: by
    name, each framed, under its name and its attribute names."""
    out = stream or sys.stdout
    for name in sorted(texts):
        header = "\t".join(a.name for a in program.relations[name].attributes)
        out.write(f"---------------\n{name}\n{header}\n===============\n{texts[name].decode('utf-8')}===============\n")


def print_sizes(stream: TextIO, program: ir.Program, size: Callable[[str], int]) -> None:
    """The ``.printsize`` lines: ``name<TAB>count``."""
    for name in program.printsizes:
        stream.write(f"{name}\t{size(name)}\n")
