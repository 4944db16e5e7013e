"""Writing a run's ``.output`` relations from its shards, over any transport: the one writer,
for a run in process (a group of one) and on a cluster alike.

Each relation's packed rows are range-partitioned by their first column (splitters from samples
every shard sees), so shard k ends with the k-th range of the sorted relation: the k-way merge
of the sorted blocks it received. CSV: every shard formats its range a chunk at a time and
writes it where the lower ranks' text ends (the lengths they measured first), so the file is
byte for byte what one process writes and no shard holds more than a chunk of text (compressed:
a gzip member per shard, held whole); Parquet: a part file per shard, in rank order the sorted
relation; stdout (``IO=stdout``, or every output with ``-D -``): each range's text, returned to
the caller, which prints them in rank order.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
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
) -> dict[int, bytes]:
    """Write every ``.output`` relation into ``output_dir`` (``fmt`` csv or parquet) and return
    this shard's text of each one that goes to stdout, by its index in ``program.outputs``:
    those with ``IO=stdout``, or all with ``output_dir`` "-" (``effective``). ``written(relation,
    n)``: this shard's bytes of a CSV file written so far, after each chunk. Collective."""
    check_output_format(output_dir, fmt)
    backend = get_backend(shard.backend)
    symbols = shard.symbols
    remap = None
    if not symbols.text_ordered:  # strings appended during evaluation: re-encode in text order
        mapping, symbols = symbols.reordered()
        remap = backend.xp.asarray(mapping)
    text: dict[int, bytes] = {}
    ordered: tuple[str, PackedRows] | None = None  # the last relation's range, for its next output
    for index, written_spec in enumerate(shard.program.outputs):
        spec = effective(written_spec, output_dir)
        if spec.io == "stdoutprintsize":
            continue
        relation = shard.program.relations[spec.relation]
        if ordered is None or ordered[0] != spec.relation:
            packed = shard.rows[spec.relation]
            if remap is not None and "symbol" in relation.types:
                packed = _in_text_order(packed, relation, remap, backend)
            ordered = (
                spec.relation,
                PackedRows(sorted_range(transport, packed, relation.arity, backend), relation.arity, backend),
            )
        rows = ordered[1]
        if spec.io in ("json", "jsonfile"):
            from dask_datalog.engine.formats import json_text  # only JSON output needs it (and json)

            elements = json_text.format_rows(np.asarray(rows), relation, symbols, spec.objects)
            if spec.io == "json":
                text[index] = elements
            else:
                _write_json(transport, Path(output_dir) / file_name(spec), elements)
        elif spec.io == "stdout":
            text[index] = relation_output.format_relation(rows, relation, symbols, spec.delimiter, rfc4180=spec.rfc4180)
        elif fmt == "parquet":
            _write_parquet_part(transport, Path(output_dir) / spec.relation, rows, relation, symbols)
        else:
            progress = None if written is None else (lambda n, name=spec.relation: written(name, n))
            _write_csv(transport, Path(output_dir) / file_name(spec), rows, relation, symbols, spec, progress)
    return text


def effective(spec: ir.OutputSpec, output_dir: str) -> ir.OutputSpec:
    """An output as a run writes it: with ``-D -`` every one is printed with its header, as
    Soufflé does (IODefaults.h)."""
    return replace(spec, io="stdout", headers=True) if output_dir == STDOUT else spec


def file_name(spec: ir.OutputSpec) -> str:
    """Where an output file goes in the output directory: its ``filename``, else named after
    it (``.csv``, ``.csv.gz`` compressed, ``.json``)."""
    if spec.io == "jsonfile":
        return spec.filename or f"{spec.title}.json"
    return spec.filename or f"{spec.title}.csv{'.gz' * spec.compress}"


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
    return sets.sort_unique(pack(columns, int(packed.shape[0]), xp), backend)


def _write_csv(
    transport: Transport,
    target: Path,
    rows: PackedRows,
    relation: ir.Relation,
    symbols: SymbolTable,
    spec: ir.OutputSpec,
    written: Callable[[int], None] | None,
) -> None:
    """Every shard writes its range's text where the lower ranks' text ends; rank 0 empties the
    file first and writes the header. The text is formatted a chunk at a time, so a shard holds
    a chunk of it beside its rows (two while one is written behind: ``_write_behind``); every
    shard but the last measures its length first (counted from the digits for numbers,
    formatted once when the range is one chunk).
    Compressed, each shard's text is one gzip member, made whole before its length is known
    (a gzip file may hold several members one after another)."""
    rank, size = transport.rank, transport.size
    header = f"{spec.header_line(relation)}\n".encode() if spec.headers and rank == 0 else b""

    def chunks() -> Iterator[bytes | memoryview]:
        if header:
            yield header
        yield from relation_output.format_chunks(rows, relation, symbols, spec.delimiter, in_order=True, rfc4180=spec.rfc4180)

    whole: bytes | None = None
    length = 0
    if spec.compress:
        whole = _gzip(chunks()) if rank == 0 or len(rows) else b""  # an empty relation is an empty member
        length = len(whole)
    elif rank < size - 1:
        if len(rows) <= relation_output.FORMAT_CHUNK_ROWS:
            whole = b"".join(chunks())
            length = len(whole)
        else:
            length = len(header) + relation_output.text_length(rows, relation, symbols, spec.delimiter, rfc4180=spec.rfc4180)
    lengths = transport.allgather(length)
    offset = sum(lengths[:rank])
    if rank == 0:
        _io(target, lambda: _create_empty(target))
    transport.allgather(None)  # the file exists, empty, before anyone writes into it
    fd = _io(target, lambda: os.open(target, os.O_WRONLY))

    def write_at(chunk: bytes | memoryview, at: int) -> int:
        return int(_io(target, lambda: os.pwrite(fd, chunk, at)))

    # A single chunk has nothing to overlap with, and a thread's hand-offs cost ~1 ms.
    behind = whole is None and len(rows) > relation_output.FORMAT_CHUNK_ROWS
    pieces: Iterator[bytes | memoryview] = iter([whole]) if whole is not None else chunks()
    start = offset
    try:
        for offset in (_write_behind if behind else _write_in_turn)(pieces, write_at, start):
            if written is not None:
                written(offset - start)
    finally:
        os.close(fd)
    if rank < size - 1 and offset != sum(lengths[: rank + 1]):
        raise AssertionError(f"{target}: shard {rank} wrote up to byte {offset}, not where the next range starts")


WriteAt = Callable[[bytes | memoryview, int], int]


def _write_in_turn(pieces: Iterator[bytes | memoryview], write_at: WriteAt, offset: int) -> Iterator[int]:
    """Writes ``pieces`` one after another from ``offset`` on; yields the offset after each."""
    for chunk in pieces:
        write_at(chunk, offset)
        offset += len(chunk)
        yield offset


def _write_behind(pieces: Iterator[bytes | memoryview], write_at: WriteAt, offset: int) -> Iterator[int]:
    """``_write_in_turn`` with each piece written on a helper thread while the caller's thread
    formats the next (``pwrite`` and the format kernel both release the GIL), for one more
    chunk of text held (``FORMAT_CHUNK_ROWS`` is sized for two). The helper only writes: a
    thread that formatted allocated from its own malloc arena, whose freed chunks glibc kept
    apart (crdt 10x: 26 MB more peak RSS)."""

    def write(piece: bytes | memoryview, at: int) -> int:
        write_at(piece, at)
        return at + len(piece)

    with ThreadPoolExecutor(1, thread_name_prefix="dask-datalog-write") as pool:
        pending: Future[int] | None = None
        for chunk in pieces:
            if pending is not None:
                yield pending.result()
            pending = pool.submit(write, chunk, offset)
            offset += len(chunk)
        if pending is not None:
            yield pending.result()


def _write_json(transport: Transport, target: Path, elements: bytes) -> None:
    """Shard 0 writes the document of every shard's elements, in rank order (JSON outputs are
    read by people and small programs: they are gathered rather than written side by side)."""
    parts = transport.allgather(elements)
    if transport.rank == 0:
        _io(target, lambda: _create_empty(target))
        from dask_datalog.engine.formats import json_text  # loaded by the shard's JSON elements already

        _io(target, lambda: target.write_bytes(json_text.document(b"".join(parts))))


def _gzip(chunks: Iterator[bytes | memoryview]) -> bytes:
    """The chunks as one gzip member."""
    compressor = zlib.compressobj(wbits=31)
    return b"".join([*(compressor.compress(chunk) for chunk in chunks), compressor.flush()])


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


def print_outputs(
    stream: TextIO | None, program: ir.Program, output_dir: str, texts: Mapping[int, bytes], size: Callable[[str], int]
) -> None:
    """What a run prints, relation by relation in name order, as Soufflé prints it: each output
    that goes to stdout (``texts``, by index in ``program.outputs``) framed under its name and,
    with headers, its attribute names; then the relation's size for ``IO=stdoutprintsize`` and
    ``.printsize``. Sizes need ``stream`` (the API prints them only when given one), tables go
    to stdout without it."""
    out = stream or sys.stdout
    printsizes = set(program.printsizes)
    for name in sorted({spec.relation for spec in program.outputs} | printsizes):
        for index, spec in enumerate(program.outputs):
            spec = effective(spec, output_dir)
            if spec.relation != name:
                continue
            if spec.io == "json":
                from dask_datalog.engine.formats import json_text  # loaded by the shard's JSON elements already

                out.write(json_text.document(texts[index]).decode("utf-8", "surrogateescape"))
            elif spec.io == "stdout":
                header = f"{spec.header_line(program.relations[name])}\n" if spec.headers else ""
                out.write(
                    f"---------------\n{spec.title}\n{header}===============\n{texts[index].decode('utf-8')}===============\n"
                )
            elif spec.io == "stdoutprintsize" and stream is not None:
                stream.write(f"{spec.title}\t{size(name)}\n")
        if name in printsizes and stream is not None:
            stream.write(f"{name}\t{size(name)}\n")
