"""Checkpoints of a run on disk, when to write them, and ``ShardControl``, the
``control.Control`` that writes them.

A checkpoint is taken at an iteration boundary that every shard reached (control.py says how
they agree without an extra round). Layout of a checkpoint directory::

    DIR/latest                      name of the newest complete checkpoint
    DIR/<name>/manifest.json        position, shards, input sizes, fingerprint, symbols, records
    DIR/<name>/part-<rank>/<relation>.npz   arrays full_0 .. full_k (full's runs), delta

Each shard writes its part (the rows it accounts for: its hash partition, all of a replicated
relation on rank 0) as raw arrays of packed rows, full's sorted runs as they are (so writing a
checkpoint merges nothing the run goes on with): no encoding step, and a reader with any number
of shards can re-route them (``ShardStore.restore`` restores through its exchange). After
every shard wrote, rank 0 writes the manifest, then replaces ``latest`` atomically and removes
the previous checkpoint, so ``latest`` always names a complete one.

The fingerprint (a digest of the program's meaning, of every input file's bytes and of input
arrays) is how ``--resume`` refuses a changed program or input.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.errors import DatalogError, MemoryBudgetExceeded
from dask_datalog.engine.execution.control import SAVE, STOP, Position
from dask_datalog.engine.ir import Program
from dask_datalog.engine.values import RecordTable, SymbolTable

# 2: full's runs as separate arrays, the symbol table's text-ordered prefix; 3: records; 4: the
# sizes of the relations freed before it (an older reader would take them as empty)
FORMAT_VERSION = 4
MIN_INTERVAL_S = 30.0  # the default schedule's shortest interval between checkpoints
MEASURE_EVERY_S = 0.02  # how often check() sums what the relations hold (relations grow at merges)
MEASURE_SHARE = 0.01  # ... at most: the sum (0.3-0.5 ms over doop's hundred relations) takes 1% of the run
# ... and at least this often whatever the sum cost: one slow sum must not leave a run unchecked
# (a loaded machine's 20 ms held() put the next check 2 s away, past a 1.5 s run's end).
MEASURE_AT_LEAST_S = 0.25
COST_FACTOR = 9.0  # default schedule: wait 9x the last checkpoint's cost, so they take <= 10% of the run


@dataclass(frozen=True)
class Manifest:
    """What a complete checkpoint says about itself (``manifest.json``)."""

    name: str
    position: Position
    shards: int
    input_sizes: dict[str, int]  # tuples per input relation, for placing the resumed run
    fingerprint: dict[str, Any]
    symbols: list[str]  # the run's symbol table, in id order
    symbols_ordered: int  # how many of them are in text order (values.SymbolTable)
    records: list[list[Any]]  # the run's record table: [kinds, ids, element rows] per part
    relations: dict[str, int]  # tuples per relation at the checkpoint
    seconds: float  # wall time the run had spent when it was written, resumes included
    dropped: dict[str, int] = field(default_factory=dict)  # tuples per relation the run had freed: no rows here

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "position": [self.position.stratum, self.position.iteration],
            "shards": self.shards,
            "input_sizes": self.input_sizes,
            "fingerprint": self.fingerprint,
            "symbols": self.symbols,
            "symbols_ordered": self.symbols_ordered,
            "records": self.records,
            "relations": self.relations,
            "seconds": self.seconds,
            "dropped": self.dropped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"checkpoint format {data.get('format')!r}, this version reads {FORMAT_VERSION}")
        return cls(
            name=data["name"],
            position=Position(*data["position"]),
            shards=data["shards"],
            input_sizes=data["input_sizes"],
            fingerprint=data["fingerprint"],
            symbols=data["symbols"],
            symbols_ordered=data["symbols_ordered"],
            records=data["records"],
            relations=data["relations"],
            seconds=data["seconds"],
            dropped=data["dropped"],
        )


def restored_symbols(manifest: Manifest) -> SymbolTable:
    """The run's symbol table (its records too) as the checkpoint saved it."""
    symbols = SymbolTable.in_order(manifest.symbols, manifest.symbols_ordered)
    symbols.records = RecordTable.restored((tuple(kinds), np.array(ids), np.array(rows)) for kinds, ids, rows in manifest.records)
    return symbols


class Checkpoints:
    """One checkpoint directory (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def latest_name(self) -> str | None:
        """The newest complete checkpoint's name (what ``latest`` points to), or None."""
        try:
            return (self.directory / "latest").read_text().strip()
        except FileNotFoundError:
            return None

    def latest(self) -> Manifest | None:
        """The newest complete checkpoint, or None when there is none."""
        name = self.latest_name()
        if name is None:
            return None
        import json  # only runs that checkpoint or resume need it

        try:
            data = json.loads((self.directory / name / "manifest.json").read_text())
            return Manifest.from_json(data)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DatalogError(None, f"the checkpoint {self.directory / name} cannot be read: {error}") from None

    def write_part(self, name: str, rank: int, rows: Mapping[str, tuple[list[np.ndarray], np.ndarray]]) -> int:
        """This shard's rows (host arrays: full's runs, the delta) into checkpoint ``name``;
        bytes written."""
        part = self.directory / f"{name}.tmp" / f"part-{rank:05d}"
        written = 0
        try:
            part.mkdir(parents=True, exist_ok=True)
            for relation, (runs, delta) in rows.items():
                arrays: dict[str, Any] = {"delta": np.ascontiguousarray(delta)}
                arrays.update((f"full_{k}", np.ascontiguousarray(run)) for k, run in enumerate(runs))
                np.savez(part / f"{relation}.npz", **arrays)
                written += int(delta.nbytes) + sum(int(run.nbytes) for run in runs)
        except OSError as error:
            raise DatalogError(None, f"cannot write a checkpoint into {self.directory}: {error.strerror or error}") from None
        return written

    def commit(self, manifest: Manifest) -> None:
        """Rank 0, after every shard wrote its part: the manifest, then ``latest``."""
        import json  # only runs that checkpoint or resume need it

        staging = self.directory / f"{manifest.name}.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        (staging / "manifest.json").write_text(json.dumps(manifest.to_json()))
        staging.rename(self.directory / manifest.name)
        previous = self.latest()
        pointer = self.directory / "latest.tmp"
        pointer.write_text(manifest.name + "\n")
        os.replace(pointer, self.directory / "latest")
        if previous is not None and previous.name != manifest.name:
            shutil.rmtree(self.directory / previous.name, ignore_errors=True)

    def read(self, manifest: Manifest, parts: Sequence[int]) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
        """The rows of the given parts: relation -> (full blocks, delta blocks)."""
        out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {name: ([], []) for name in manifest.relations}
        for rank in parts:
            part = self.directory / manifest.name / f"part-{rank:05d}"
            for relation, (full, delta) in out.items():
                try:
                    with np.load(part / f"{relation}.npz", allow_pickle=False) as arrays:
                        runs = sorted((k for k in arrays.files if k.startswith("full_")), key=lambda k: int(k[5:]))
                        full.extend(arrays[k] for k in runs)
                        delta.append(arrays["delta"])
                except (OSError, ValueError, KeyError) as error:
                    raise DatalogError(None, f"the checkpoint {part} cannot be read: {error}") from None
        return out

    def remove_staging(self) -> None:
        """Parts of checkpoints that were never committed (a run stopped while writing one)."""
        if self.directory.is_dir():
            for stale in self.directory.glob("*.tmp"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)


@dataclass(frozen=True)
class CheckpointOptions:
    """Where and when a run checkpoints, and where it starts. ``resume``: None starts from the
    inputs; "" from the latest checkpoint in ``directory``, which must exist; any other string
    from the latest checkpoint if its name starts with it (a retry of a run after a lost
    worker takes up its own checkpoints, never an older run's), else from the inputs.
    ``verify``: the checkpoint's fingerprint must match this program and these inputs."""

    directory: str
    every: float | None = None
    resume: str | None = None
    verify: bool = False
    attempt: str = "run"  # prefix of this attempt's checkpoint names (run id and attempt number)


def find_checkpoint(
    options: CheckpointOptions,
    rank: int,
    size: int,
    allgather: Callable[[Any], list[Any]],
    current: Callable[[], dict[str, Any]],
) -> Manifest | None:
    """The checkpoint a run starts from (None: its inputs), agreed by all shards: rank 0 reads
    it and checks the fingerprint (``current()``) when asked to; every shard must see the
    directory (a probe file rank 0 writes, when there are several), else the run stops with
    a message saying so. Collective."""
    checkpoints = Checkpoints(options.directory)
    answer: tuple[str, Any] = ("ok", None)
    probe = checkpoints.directory / f".probe-{options.attempt}"
    if rank == 0:
        try:
            checkpoints.directory.mkdir(parents=True, exist_ok=True)
            if size > 1:
                probe.write_text(options.attempt)
            checkpoints.remove_staging()
            manifest = checkpoints.latest()
            if options.resume == "":
                if options.verify:
                    check_resumable(options.directory, manifest, current())
                elif manifest is None:
                    raise DatalogError(None, f"cannot resume: no complete checkpoint in {options.directory}")
            elif options.resume is None or manifest is None or not manifest.name.startswith(options.resume):
                manifest = None
            answer = ("ok", manifest)
        except (DatalogError, OSError) as error:
            answer = ("error", str(error.message if isinstance(error, DatalogError) else error))
    kind, value = allgather(answer)[0]
    if kind == "error":
        raise DatalogError(None, value)
    if size == 1:  # one process sees what it wrote: no probe, no round
        return value
    seen = probe.exists() and (value is None or (checkpoints.directory / value.name / "manifest.json").exists())
    blind = [r for r, ok in enumerate(allgather(seen)) if not ok]
    if rank == 0:
        probe.unlink(missing_ok=True)
    if blind:
        raise DatalogError(
            None,
            f"the checkpoint directory {options.directory} is not visible from worker {blind[0]}: "
            "give --checkpoint a directory on a file system every worker shares",
        )
    return value


def start(
    options: CheckpointOptions | None,
    rank: int,
    size: int,
    allgather: Callable[[Any], list[Any]],
    current: Callable[[], dict[str, Any]],
) -> tuple[Manifest | None, dict[str, tuple[list[np.ndarray], list[np.ndarray]]]]:
    """Where a run starts: (the agreed checkpoint, the rows of this shard's share of its
    parts), or (None, {}) to start from the inputs. Collective."""
    if options is None:
        return None, {}
    manifest = find_checkpoint(options, rank, size, allgather, current)
    if manifest is None:
        return None, {}
    share = [k for k in range(manifest.shards) if k % size == rank]
    return manifest, Checkpoints(options.directory).read(manifest, share)


@dataclass
class Schedule:
    """When a checkpoint is due: every ``every`` seconds, or by default when the time since the
    last one is at least MIN_INTERVAL_S and COST_FACTOR times what the last one cost."""

    every: float | None = None
    last: float = field(default_factory=time.monotonic)
    cost: float = 0.0

    def due(self) -> bool:
        interval = self.every if self.every is not None else max(MIN_INTERVAL_S, COST_FACTOR * self.cost)
        return time.monotonic() - self.last >= interval

    def saved(self, cost: float) -> None:
        self.cost = cost
        self.last = time.monotonic()


class ShardControl:
    """The ``Control`` of one shard of a run: checkpoints as ``options`` say (none without
    them) and when ``stop_requested()``; ``interrupted()`` raises when the run must
    stop now (timeout, cancel); ``memory_budget`` (bytes per shard) ends a run whose relations
    outgrow it. ``allgather`` is the shards' collective (one shard: ``lambda x: [x]``);
    ``describe()`` gives the manifest's input sizes, fingerprint and symbols."""

    def __init__(
        self,
        rank: int,
        size: int,
        allgather: Callable[[Any], list[Any]],
        options: CheckpointOptions | None,
        describe: Callable[[], tuple[dict[str, int], dict[str, Any], SymbolTable]],
        elapsed: Callable[[], float],
        stop_requested: Callable[[], bool] = lambda: False,
        interrupted: Callable[[], None] = lambda: None,
        memory_budget: int | None = None,
    ):
        self.rank, self.size, self.allgather = rank, size, allgather
        self.checkpoints = Checkpoints(options.directory) if options is not None else None
        self.schedule = Schedule(options.every if options is not None else None)
        self.attempt = options.attempt if options is not None else ""
        self.describe, self.elapsed = describe, elapsed
        self.stop_requested, self.interrupted = stop_requested, interrupted
        self.memory_budget = memory_budget
        self.written: list[dict[str, Any]] = []  # one record per checkpoint, for the statistics
        self.measured = 0.0  # when held() was last summed
        self.measure_cost = 0.0  # how long that took

    def requests(self) -> int:
        if self.checkpoints is None:
            return 0
        return (STOP if self.stop_requested() else 0) | (SAVE if self.schedule.due() else 0)

    def save(self, position: Position, rows: dict[str, tuple[list[Any], Any]], dropped: dict[str, int]) -> None:
        assert self.checkpoints is not None, "a checkpoint was requested without a directory"
        t0 = time.perf_counter()
        name = f"{self.attempt}-{len(self.written):05d}"
        written = self.checkpoints.write_part(name, self.rank, rows)
        counts = {relation: sum(int(run.shape[0]) for run in runs) for relation, (runs, _) in rows.items()}
        gathered = self.allgather((written, counts, dropped))
        if self.rank == 0:
            sizes, fingerprint, symbols = self.describe()
            relations = {r: sum(c[r] for _, c, _ in gathered) for r in counts}
            manifest = Manifest(
                name,
                position,
                self.size,
                sizes,
                fingerprint,
                symbols.strings,
                symbols.ordered,
                [[list(kinds), ids.tolist(), rows.tolist()] for kinds, ids, rows in symbols.records.parts()],
                relations,
                round(self.elapsed(), 3),
                {r: sum(d[r] for _, _, d in gathered) for r in dropped},
            )
            self.checkpoints.commit(manifest)
        cost = time.perf_counter() - t0
        self.schedule.saved(cost)
        self.written.append(
            {
                "position": [position.stratum, position.iteration],
                "seconds": round(cost, 6),
                "bytes": sum(w for w, _, _ in gathered),
            }
        )

    def check(self, held: Callable[[], dict[str, int]]) -> None:
        self.interrupted()
        now = time.monotonic()
        wait = min(max(MEASURE_EVERY_S, self.measure_cost / MEASURE_SHARE), MEASURE_AT_LEAST_S)
        if self.memory_budget is None or now - self.measured < wait:
            return
        spent = time.thread_time()  # the sum's own cost: time this thread was descheduled is not it
        sizes = held()
        self.measure_cost = time.thread_time() - spent
        self.measured = time.monotonic()
        total = sum(sizes.values())
        if total > self.memory_budget:
            raise MemoryBudgetExceeded(sizes, self.memory_budget, self.rank, self.size)


# -- fingerprints ---------------------------------------------------------------------------------


def program_digest(program: Program) -> str:
    """A digest of what the program means: its canonical form (``ir.canonical``: positions
    never take part) without the file name, so reformatting or moving the file does not
    change it."""
    meaning = ir.canonical(replace(program, source=""))
    return hashlib.blake2b(repr(meaning).encode(), digest_size=16).hexdigest()


def file_digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def array_digest(data: Any) -> str:
    """A digest of array-like or DataFrame input rows (handed through the API)."""
    h = hashlib.blake2b(digest_size=16)
    if hasattr(data, "to_numpy") and hasattr(data, "columns"):
        for column in data.columns:
            h.update(np.asarray(data[column].astype(str) if data[column].dtype == object else data[column]).tobytes())
        return h.hexdigest()
    rows = np.asarray(data)
    h.update(str(rows.dtype).encode() + repr(rows.shape).encode())
    h.update(np.ascontiguousarray(rows).tobytes() if rows.dtype != object else repr(rows.tolist()).encode())
    return h.hexdigest()


def fingerprint(program: Program, files: Mapping[str, Sequence[str]], arrays: Mapping[str, str]) -> dict[str, Any]:
    """The program's digest, each input file's path and digest, and input arrays' digests."""
    return {
        "program": program_digest(program),
        "files": {relation: [[str(p), file_digest(p)] for p in paths] for relation, paths in files.items()},
        "arrays": dict(arrays),
    }


def check_resumable(directory: str | Path, manifest: Manifest | None, current: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint of another program or of other inputs, saying which."""
    if manifest is None:
        raise DatalogError(None, f"cannot resume: no complete checkpoint in {directory}")
    saved = manifest.fingerprint
    if saved["program"] != current["program"]:
        raise DatalogError(None, f"cannot resume from {directory}: the program is not the one that was checkpointed")
    for relation in sorted(set(saved["files"]) | set(current["files"]) | set(saved["arrays"]) | set(current["arrays"])):
        before = [digest for _, digest in saved["files"].get(relation, [])], saved["arrays"].get(relation)
        now = [digest for _, digest in current["files"].get(relation, [])], current["arrays"].get(relation)
        if before != now:
            paths = ", ".join(p for p, _ in current["files"].get(relation, [])) or "the given rows"
            raise DatalogError(
                None,
                f"cannot resume from {directory}: the input of {relation} ({paths}) changed since the checkpoint was written",
            )
