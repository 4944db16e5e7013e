"""One single-shard run end to end: inputs in, plan, fixpoint, relations out. The Dask layer
reuses the pieces; the CLI and the Python API call ``run_program`` for in-process runs."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dask_datalog.engine import checkpoint, memory

from dask_datalog.engine.formats import fact_input

from dask_datalog.engine.formats import relation_output

from dask_datalog.engine.storage import sets
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.checkpoint import CheckpointOptions
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.execution.evaluate import Evaluator
from dask_datalog.engine.storage.hisa import unpack
from dask_datalog.engine.ir import Pos, Program
from dask_datalog.engine.plan import plan_program
from dask_datalog.engine.values import SymbolTable

FactSource = str | Path | Any  # a path, or array-like rows / a DataFrame


@dataclass
class RunOutput:
    """A finished run. Relations stay packed where they were computed (on the GPU for CuPy)
    until someone asks for their rows: moving 1.7 G tuples to the host is not part of
    reaching the fixpoint, and often (sizes, a few relations) not needed at all."""

    program: Program
    symbols: SymbolTable
    backend: Backend
    packed: dict[str, Any]  # name -> (n, w) packed rows, canonical order, on the backend
    stats: dict[str, Any]
    _rows: dict[str, np.ndarray] = field(default_factory=dict)

    def size(self, name: str) -> int:
        return int(self.packed[name].shape[0])

    def write(
        self,
        output_dir: str | Path,
        format: str = "csv",
        stream: Any | None = None,
        written: Callable[[str, int], None] | None = None,
    ) -> None:
        write_outputs(self, output_dir, format, stream, written)

    def rows(self, name: str) -> np.ndarray:
        """(n, arity) encoded uint32 on the host, canonical order (decoded once, cached)."""
        if name not in self._rows:
            self._rows[name] = host_rows(self.packed[name], self.program.relations[name].arity, self.backend)
        return self._rows[name]


def host_rows(packed: Any, arity: int, backend: Backend) -> np.ndarray:
    """Packed rows on the backend -> (n, arity) encoded uint32 rows on the host, same order,
    filled a column at a time (no column-sized temporaries on the CPU)."""
    rows = np.empty((packed.shape[0], arity), dtype=np.uint32)
    for j in range(arity):
        rows[:, j] = backend.asnumpy(unpack(packed, j, backend.xp))
    return rows


@dataclass(frozen=True)
class PackedRows:
    """A relation's packed rows as (n, arity) host rows that are copied a slice at a time:
    writing a numeric relation, already in output order, then holds one chunk beside the
    relation rather than a second copy of it. ``np.asarray`` makes the whole copy."""

    packed: Any
    arity: int
    backend: Backend

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.arity

    def __getitem__(self, rows: slice) -> np.ndarray:
        return host_rows(self.packed[rows], self.arity, self.backend)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return host_rows(self.packed, self.arity, self.backend)

    def in_order(self) -> bool:
        """True: the engine keeps every relation sorted and duplicate-free, which in packed
        words (column 0 highest) is output order for numbers. Checked on the packed words a
        chunk at a time; a relation that is not is an engine bug, never sorted over quietly."""
        step = relation_output.FORMAT_CHUNK_ROWS
        for start in range(0, max(len(self) - 1, 0), step):
            if not sets.is_sorted_unique(self.packed[start : start + step + 1], self.backend.xp):
                raise AssertionError(f"a relation of {len(self)} rows is not sorted and duplicate-free near row {start}")
        return True


def load_inputs(
    program: Program,
    symbols: SymbolTable,
    fact_dir: str | Path | None,
    facts: Mapping[str, FactSource] | None,
    part: int = 0,
    n_parts: int = 1,
) -> dict[str, np.ndarray]:
    """Encoded rows per input relation: ``facts`` entries win over ``.input`` files. With
    ``n_parts`` > 1 (a worker of a distributed run) every file is read in its byte range
    ``part``; arrays and DataFrames in ``facts`` are taken whole (the caller split them)."""
    facts = dict(facts or {})
    check_fact_names(program, facts)
    loaded: dict[str, np.ndarray] = {}
    for relation_name, path, delimiter, pos in _input_files(program, fact_dir, facts):
        relation = program.relations[relation_name]
        rows = fact_input.read_facts_range(path, relation, symbols, delimiter, pos, part, n_parts)
        loaded[relation_name] = _append(loaded.get(relation_name), rows)
    for name, source in facts.items():
        if not isinstance(source, (str, Path)):
            loaded[name] = fact_input.encode_rows(source, program.relations[name], symbols, origin=f"facts['{name}']")
    return loaded


def input_files(program: Program, fact_dir: str | Path | None, facts: Mapping[str, FactSource] | None) -> dict[str, list[str]]:
    """The fact files a run reads, by relation (what a checkpoint's fingerprint covers)."""
    files: dict[str, list[str]] = {}
    for name, path, _, _ in _input_files(program, fact_dir, dict(facts or {})):
        files.setdefault(name, []).append(str(path))
    return files


def _input_files(
    program: Program, fact_dir: str | Path | None, facts: Mapping[str, FactSource]
) -> list[tuple[str, Path, str, Pos | None]]:
    """(relation, path, delimiter, position of its .input) per fact file: ``facts`` paths
    replace the relation's ``.input`` files."""
    files = []
    directory = Path(fact_dir) if fact_dir is not None else Path(".")
    for spec in program.inputs:
        if spec.relation not in facts:
            files.append((spec.relation, directory / (spec.filename or f"{spec.relation}.facts"), spec.delimiter, spec.pos))
    for name, source in facts.items():
        if isinstance(source, (str, Path)):
            delimiter = next((s.delimiter for s in program.inputs if s.relation == name), "\t")
            files.append((name, Path(source), delimiter, None))
    return files


def check_fact_names(program: Program, facts: Mapping[str, object]) -> None:
    for name in facts:
        if name not in program.relations:
            raise DatalogError(None, f"facts given for '{name}', which the program does not declare")


def _append(old: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    return rows if old is None else np.concatenate([old, rows])


@dataclass(frozen=True)
class Steering:
    """What steers a run besides its program and inputs: checkpoints (and where it starts),
    a memory budget in bytes for this shard's data (None: ``memory.default_budget``), and two
    callables asked at the loop's boundaries:
    ``stop_requested()`` (checkpoint, then stop: SIGTERM) and ``interrupted()`` (raises to
    stop now: a timeout, a cancelled job)."""

    checkpoint: CheckpointOptions | None = None
    memory_budget: int | None = None
    stop_requested: Callable[[], bool] = lambda: False
    interrupted: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Start:
    """Where a shard's run starts: the symbol table, this shard's input rows (none when it
    starts from a checkpoint) and every input relation's total size."""

    symbols: SymbolTable
    inputs: dict[str, np.ndarray]
    sizes: dict[str, int]


@dataclass(frozen=True)
class Shape:
    """One shard's place in a run of ``size`` shards and how the run varies there: ``allgather``
    (the shards' collective), ``fingerprint()`` (of the program and inputs, for checkpoints),
    ``load(manifest, restored)`` (the ``Start``: from the inputs when ``manifest`` is None,
    else from that checkpoint's ``restored`` rows, which it may re-encode in place),
    ``plan(sizes)`` and ``exchange`` (None for a single shard)."""

    rank: int
    size: int
    allgather: Callable[[Any], list[Any]]
    fingerprint: Callable[[], dict[str, Any]]
    load: Callable[[checkpoint.Manifest | None, Any], Start]
    plan: Callable[[dict[str, int]], Any]
    exchange: Any | None = None


def evaluate(
    shape: Shape,
    backend: Backend,
    steering: Steering,
    chunk_rows: int | None,
    on_iteration: Callable[[int, int, dict[str, int]], None] | None,
) -> tuple[Evaluator, Start, dict[str, Any]]:
    """One shard's run from its start (inputs or checkpoint) to the fixpoint, the same for a
    run in process and a shard of a cluster: the evaluator, where it started, its statistics."""
    t0 = time.perf_counter()
    manifest, restored = checkpoint.start(steering.checkpoint, shape.rank, shape.size, shape.allgather, shape.fingerprint)
    start = shape.load(manifest, restored)
    t_load = time.perf_counter() - t0
    control = _job_control(steering, backend, shape, manifest, start, t0)
    chunk_rows = chunk_rows or memory.chunk_rows_for(control.memory_budget, backend)
    evaluator = Evaluator(shape.plan(start.sizes), backend, start.symbols, start.inputs, chunk_rows, shape.exchange, control)
    if manifest is not None:
        evaluator.restore(manifest.position, restored)
    stats = evaluator.run(on_iteration)
    stats["load_s"] = round(t_load, 6)
    stats["checkpoints"] = control.written
    return evaluator, start, stats


def run_program(
    program: Program,
    backend: Backend,
    fact_dir: str | Path | None = None,
    facts: Mapping[str, FactSource] | None = None,
    on_iteration: Callable[[int, int, dict[str, int]], None] | None = None,
    chunk_rows: int | None = None,
    steering: Steering = Steering(),
) -> RunOutput:
    def fingerprint() -> dict[str, Any]:
        arrays = {n: checkpoint.array_digest(src) for n, src in (facts or {}).items() if not isinstance(src, (str, Path))}
        return checkpoint.fingerprint(program, input_files(program, fact_dir, facts), arrays)

    def load(manifest: checkpoint.Manifest | None, restored: Any) -> Start:
        if manifest is not None:
            return Start(SymbolTable.in_order(manifest.symbols), {}, manifest.input_sizes)
        symbols = SymbolTable()
        inputs = load_inputs(program, symbols, fact_dir, facts)
        return Start(symbols, inputs, {name: int(rows.shape[0]) for name, rows in inputs.items()})

    shape = Shape(0, 1, lambda part: [part], fingerprint, load, lambda _sizes: plan_program(program))
    evaluator, start, stats = evaluate(shape, backend, steering, chunk_rows, on_iteration)
    packed = {name: store.full for name, store in evaluator.stores.items()}
    stats["sizes"] = {name: int(rows.shape[0]) for name, rows in packed.items()}
    return RunOutput(program, start.symbols, backend, packed, stats)


def _job_control(
    steering: Steering, backend: Backend, shape: Shape, manifest: checkpoint.Manifest | None, start: Start, t0: float
) -> checkpoint.JobControl:
    """The ``JobControl`` of one shard. A run that started from a checkpoint carries its
    fingerprint and elapsed time on; a fresh one computes its fingerprint (hashing the
    input files) when it writes its first checkpoint. Without a memory budget the shard gets
    the default share of the machine (or GPU)."""
    known: list[dict[str, Any]] = [manifest.fingerprint] if manifest is not None else []
    before = manifest.seconds if manifest is not None else 0.0

    def describe() -> tuple[dict[str, int], dict[str, Any], list[str]]:
        if not known:
            known.append(shape.fingerprint())
        return start.sizes, known[0], start.symbols.strings

    return checkpoint.JobControl(
        shape.rank,
        shape.size,
        shape.allgather,
        steering.checkpoint,
        describe,
        lambda: before + time.perf_counter() - t0,
        steering.stop_requested,
        steering.interrupted,
        steering.memory_budget or memory.default_budget(backend),
    )


def write_outputs(
    run: RunOutput,
    output_dir: str | Path,
    fmt: str = "csv",
    stream: Any | None = None,
    written: Callable[[str, int], None] | None = None,
) -> None:
    """``.output`` relations to ``<output_dir>/<name>.csv``, or with ``fmt="parquet"`` to the
    dataset ``<output_dir>/<name>/`` (one part here); ``output_dir`` "-" prints them to
    ``stream`` (default stdout). ``.printsize`` lines go to ``stream`` when one is given.
    ``written(relation, n)``: the bytes of a CSV file written so far, after each chunk."""
    to_stdout = str(output_dir) == "-"
    check_output_format(to_stdout, fmt)
    for spec in run.program.outputs:
        relation = run.program.relations[spec.relation]
        rows = PackedRows(run.packed[spec.relation], relation.arity, run.backend)
        if to_stdout:
            data = relation_output.format_relation(rows, relation, run.symbols, spec.delimiter)
            print_relation(stream or sys.stdout, spec.relation, data)
        elif fmt == "parquet":
            dataset = Path(output_dir) / spec.relation
            relation_output.clear_parquet_parts(dataset)
            part = dataset / relation_output.parquet_part_name(0)
            relation_output.write_parquet_part(part, np.asarray(rows), relation, run.symbols)
        else:
            directory = Path(output_dir)
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / (spec.filename or f"{spec.relation}.csv")
            progress = None if written is None else functools.partial(written, spec.relation)
            relation_output.write_relation(target, rows, relation, run.symbols, spec.delimiter, written=progress)
    if stream is not None:
        print_sizes(stream, run.program, run.size)


def check_output_format(to_stdout: bool, fmt: str) -> None:
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown output format {fmt!r}: expected csv or parquet")
    if to_stdout and fmt != "csv":
        raise ValueError("only CSV output can go to stdout")


def print_sizes(stream: Any, program: Program, size: Callable[[str], int]) -> None:
    """The ``.printsize`` lines: ``name<TAB>count``."""
    for name in program.printsizes:
        stream.write(f"{name}\t{size(name)}\n")


def print_relation(stdout: Any, name: str, data: bytes) -> None:
    """One relation's CSV on stdout in Soufflé's framing for ``-D -``, so several relations
    stay readable."""
    stdout.write(f"---------------\n{name}\n===============\n{data.decode('utf-8')}===============\n")
