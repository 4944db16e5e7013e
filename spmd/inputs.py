"""A run's inputs: the fact files it reads, this shard's part of them, and the one symbol table
every shard agrees on before evaluation (``values.SymbolTable`` says the policy)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.formats import fact_input
from dask_datalog.engine.values import RecordTable, SymbolBatch, SymbolTable
from dask_datalog.partition.transport import Transport

FactSource = str | Path | Any  # a path, or array-like rows / a DataFrame


STDIN = "<stdin>"  # where facts read from standard input (``.input r(IO=stdin)``) come from


@dataclass(frozen=True)
class Inputs:
    """Where a run's facts come from: ``fact_dir`` holds the ``.input`` files; ``facts`` maps
    relations to a fact file (replacing their ``.input`` files; every shard reads its byte
    range) or to this shard's rows (an (n, arity) array-like or a DataFrame: the caller split
    them); ``stdin``: what the run's standard input held, for ``IO=stdin`` inputs (read once by
    the process that started the run: workers have none of their own). ``array_digests``:
    digests of whole input arrays, for a checkpoint's fingerprint."""

    fact_dir: str | Path | None = None
    facts: Mapping[str, FactSource] = field(default_factory=dict)
    array_digests: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes | None = None

    def files(self, program: ir.Program) -> list[tuple[str, Path | None, fact_input.FactFormat, ir.Pos | None]]:
        """(relation, path, format, position of its .input) per fact file; path None for
        standard input."""
        files: list[tuple[str, Path | None, fact_input.FactFormat, ir.Pos | None]] = []
        directory = Path(self.fact_dir) if self.fact_dir is not None else Path(".")
        for spec in program.inputs:
            if spec.relation not in self.facts:
                default = f"{spec.relation}.json" if spec.io == "jsonfile" else f"{spec.relation}.facts"
                path = None if spec.io in ("stdin", "json") else directory / (spec.filename or default)
                files.append((spec.relation, path, fact_input.FactFormat.of(spec), spec.pos))
        for name, source in self.facts.items():
            if isinstance(source, (str, Path)):
                spec = next((s for s in program.inputs if s.relation == name), ir.InputSpec(name))
                files.append((name, Path(source), fact_input.FactFormat.of(replace(spec, io="file")), None))
        return files

    def file_names(self, program: ir.Program) -> dict[str, list[str]]:
        """The fact files a run reads, by relation (what a checkpoint's fingerprint covers)."""
        out: dict[str, list[str]] = {}
        for name, path, _, _ in self.files(program):
            if path is not None:
                out.setdefault(name, []).append(str(path))
        return out

    def digests(self) -> dict[str, str]:
        """Digests of the inputs that are no files: the arrays', standard input's."""
        out = dict(self.array_digests)
        if self.stdin is not None:
            out[STDIN] = hashlib.blake2b(self.stdin, digest_size=16).hexdigest()
        return out

    def arrays(self) -> dict[str, Any]:
        """The relations given as rows rather than files."""
        return {name: source for name, source in self.facts.items() if not isinstance(source, (str, Path))}


def check_fact_names(program: ir.Program, facts: Mapping[str, object]) -> None:
    for name in facts:
        if name not in program.relations:
            raise DatalogError(None, f"facts given for '{name}', which the program does not declare")


def read_part(
    program: ir.Program, symbols: SymbolTable, inputs: Inputs, part: int = 0, n_parts: int = 1
) -> dict[str, np.ndarray]:
    """Encoded rows per input relation, this shard's part: every file is read in its byte range
    ``part`` of ``n_parts``, standard input by part 0; rows handed over as arrays are taken
    whole. Symbols are interned in ``symbols`` in reading order, the files' all at once (a
    ``SymbolBatch``: one lookup in the table, not one per column)."""
    check_fact_names(program, inputs.facts)
    read: dict[str, list[np.ndarray]] = {}
    batch = SymbolBatch(symbols)
    stdin = inputs.stdin or b""
    for name, path, fmt, pos in inputs.files(program):
        relation = program.relations[name]
        if path is not None:
            rows = fact_input.read_facts_range(path, relation, batch, fmt, pos, part, n_parts)
        else:  # standard input, read by part 0; the first IO=stdin input takes all of it, as in Soufflé
            rows = fact_input.read_text(stdin if part == 0 else b"", STDIN, relation, batch, fmt)
            stdin = b""
        read.setdefault(name, []).append(rows)
    batch.intern()  # fills in the symbol columns of the blocks read: only then are they joined
    loaded = {name: blocks[0] if len(blocks) == 1 else np.concatenate(blocks) for name, blocks in read.items()}
    for name, source in inputs.arrays().items():
        loaded[name] = fact_input.encode_rows(source, program.relations[name], symbols, origin=f"facts['{name}']")
    return loaded


@dataclass(frozen=True)
class Start:
    """Where a shard's run starts: the agreed symbol table, this shard's input rows encoded in
    it (none when it starts from a checkpoint; ``ShardStore.load`` takes them) and every input
    relation's total size."""

    symbols: SymbolTable
    inputs: dict[str, np.ndarray]
    sizes: dict[str, int]


def agree(transport: Transport, program: ir.Program, inputs: Inputs) -> Start:
    """This shard's part of the inputs, re-encoded in the tables all shards agree on (their
    strings and the program's constants, in text order; their records and the program's, by
    ``RecordTable.agreed``), and every input relation's size. One round, whatever the number
    of shards."""
    local = SymbolTable()
    rows = read_part(program, local, inputs, transport.rank, transport.size)
    counts = {name: int(r.shape[0]) for name, r in rows.items()}
    texts = local.texts()  # NumPy arrays: no Python string per symbol
    agreed = transport.allgather((texts, counts, local.records if len(local.records) else None))
    # remaps[1 + r]: shard r's symbol ids (its reading table's, whose texts it sent) -> the agreed ones
    symbols, remaps = SymbolTable.sorted_union_maps([sorted(ir.symbol_constants(program)), *(sent for sent, _, _ in agreed)])
    readers = [rank for rank, (_, _, records) in enumerate(agreed) if records is not None]
    sources = [(agreed[r][2], remaps[1 + r]) for r in readers]
    constants = RecordTable.of_constants(ir.record_constants(program), symbols)
    symbols.records, maps = RecordTable.agreed([*sources, (constants, None)])
    if len(local) or len(local.records):
        mapping = remaps[1 + transport.rank]
        mine = maps[readers.index(transport.rank)] if len(local.records) else None
        for name, block in rows.items():
            for j, a in enumerate(program.relations[name].attributes):
                if a.type == "symbol":
                    block[:, j] = mapping[block[:, j]]
                elif a.type == "record" and mine is not None:
                    block[:, j] = mine[block[:, j]]
    sizes: dict[str, int] = {}
    for _, theirs, _ in agreed:
        for name, n in theirs.items():
            sizes[name] = sizes.get(name, 0) + n
    if "pyarrow" in sys.modules:  # its CSV reader read quoted fields or floats
        from dask_datalog.engine import text

        text.release_unused()
    return Start(symbols, rows, sizes)
