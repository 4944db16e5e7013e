"""The Python API: one entry point, ``Program``.

from dask_datalog.cluster import Program
result = Program.from_file("examples/reach.dl").run(facts={"edge": "graph.tsv"})
result.sizes["path"]; result.pandas("path"); result.numpy("path")

# on a Dask cluster: one shard per worker, tuples exchanged worker to worker
result = Program.from_file("examples/reach.dl").run(fact_dir="facts", client=client)
result.dataframe("path")  # a Dask DataFrame, one partition per worker
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from dask_datalog.engine.backend import Backend, BackendName, get_backend
from dask_datalog.engine.checkpoint import CheckpointOptions, array_digest
from dask_datalog.engine.errors import RunTimeout, Terminated
from dask_datalog.engine.formats import relation_output
from dask_datalog.engine.frontend import load_program, load_program_file
from dask_datalog.engine.functors import DEFAULT_LIBRARIES, DEFAULT_LIBRARY_DIRS
from dask_datalog.engine.ir import Program as ProgramIR
from dask_datalog.partition import REPLICATE_BELOW
from dask_datalog.spmd.inputs import FactSource, Inputs, check_fact_names
from dask_datalog.spmd.options import ExchangeKind, RunOptions
from dask_datalog.spmd.run import Run, run_in_process
from dask_datalog.spmd.shard import Steering

if TYPE_CHECKING:  # distributed is imported only when a run uses a cluster
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client

    from dask_datalog.cluster.runtime.coordinator import ProgressHandler
    from dask_datalog.engine.execution.fixpoint import OnIteration


class Result:
    """Every relation of a finished run, decoded on demand. The run (``spmd.run.Run``) is in
    this process or spread over a Dask cluster's workers: then ``numpy``/``pandas``/``tuples``
    gather the asked relation here, ``dataframe`` does not, and ``write`` has the workers write
    the outputs."""

    def __init__(self, run: Run):
        self._run = run

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self._run.sizes)

    @property
    def stats(self) -> dict[str, Any]:
        return self._run.stats

    @property
    def profile(self) -> dict[str, Any] | None:
        """The per rule version profile of a run with ``RunOptions(profile=True)`` (its
        schema: docs/architecture.md, "Profiles"), None without."""
        profile: dict[str, Any] | None = self._run.stats.get("profile")
        return profile

    def _check_held(self, name: str) -> None:
        if name not in self._run.program.relations:
            raise KeyError(f"no relation '{name}' in this program")
        if name in self._run.stats.get("dropped", ()):
            raise KeyError(f"relation '{name}' was freed during the run: RunOptions.keep did not name it")

    def _relation(self, name: str) -> tuple[np.ndarray, Any]:
        self._check_held(name)
        return self._run.rows(name), self._run.program.relations[name]

    def numpy(self, name: str) -> np.ndarray:
        """(n, arity) rows in output order: int64, or object when a column is a symbol."""
        rows, relation = self._relation(name)
        return relation_output.to_numpy(rows, relation, self._run.symbols)

    def pandas(self, name: str) -> pd.DataFrame:
        rows, relation = self._relation(name)
        return relation_output.to_pandas(rows, relation, self._run.symbols)

    def tuples(self, name: str) -> set[tuple]:
        """Decoded Python tuples (convenient for tests and small results)."""
        rows, relation = self._relation(name)
        columns = relation_output.decode_columns(rows, relation, self._run.symbols)
        return set(zip(*(c.tolist() for c in columns))) if columns else ({()} if rows.shape[0] else set())

    def dataframe(self, name: str) -> dd.DataFrame:
        """A Dask DataFrame of the relation: one partition per shard, built where the shards
        are (nothing passes through this process for a run on a cluster)."""
        self._check_held(name)
        return self._run.frame(name)

    def write(
        self,
        output_dir: str | Path,
        format: str = "csv",
        stream: TextIO | None = None,
        written: Callable[[str, int], None] | None = None,
    ) -> None:
        """What the CLI does with ``-D``: the ``.output`` relations as CSV files (or Parquet
        datasets with ``format="parquet"``) in ``output_dir``, or printed to ``stream``
        (default stdout) when it is "-"; ``.printsize`` lines go to ``stream`` if given.
        ``written(relation, n)`` hears the bytes of each CSV file written so far (in process;
        on a cluster the workers write their parts side by side)."""
        target = str(output_dir) if str(output_dir) == "-" else str(Path(output_dir).resolve())
        self._run.write(target, format, stream, written)

    def close(self) -> None:
        """Free the relations (on the workers, for a run on a cluster)."""
        self._run.close()


class Program:
    """A checked Datalog program; ``run`` evaluates it to its fixpoint."""

    def __init__(
        self,
        text: str,
        filename: str = "<string>",
        include_dirs: Sequence[str | Path] = (),
        macros: Mapping[str, str] | None = None,
        preprocessor: bool = True,
        functors: Mapping[str, Callable[..., Any]] | None = None,
        libraries: Sequence[str] = DEFAULT_LIBRARIES,
        library_dirs: Sequence[str | Path] = DEFAULT_LIBRARY_DIRS,
    ):
        """``include_dirs``, ``macros``, ``preprocessor``: the C preprocessor's -I, -M and
        --no-preprocessor, as Soufflé takes them. ``functors``: Python functions computing
        ``.functor`` declarations by name (one NumPy array per argument in, one array of the
        result type back: engine/user_functors.py); the other functors called are C
        functions of ``libraries`` (Soufflé's -l) looked for in ``library_dirs`` (its -L)."""
        self.ir: ProgramIR = load_program(text, filename, include_dirs, macros, preprocessor)
        self.ir = _bind(self.ir, functors, libraries, library_dirs)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        include_dirs: Sequence[str | Path] = (),
        macros: Mapping[str, str] | None = None,
        preprocessor: bool = True,
        functors: Mapping[str, Callable[..., Any]] | None = None,
        libraries: Sequence[str] = DEFAULT_LIBRARIES,
        library_dirs: Sequence[str | Path] = DEFAULT_LIBRARY_DIRS,
    ) -> Program:
        """The program in a file, through the front end's file loader: a byte-order mark is
        skipped, and an unreadable or non-UTF-8 file is a DatalogError like any other."""
        program = cls.__new__(cls)
        loaded = load_program_file(path, include_dirs, macros, preprocessor)
        program.ir = _bind(loaded, functors, libraries, library_dirs)
        return program

    def run(
        self,
        fact_dir: str | Path | None = None,
        facts: Mapping[str, FactSource] | None = None,
        backend: BackendName | str | Backend = "auto",
        on_iteration: OnIteration | None = None,
        chunk_rows: int | None = None,
        client: Client | None = None,
        progress: ProgressHandler | None = None,
        replicate_below: int = REPLICATE_BELOW,
        options: RunOptions = RunOptions(),
        exchange: str = "auto",
        stdin: bytes | None = None,
    ) -> Result:
        """Evaluate to the fixpoint. ``facts`` maps relation names to fact-file paths or to
        (n, arity) array-likes / DataFrames and overrides ``.input`` files. ``chunk_rows``
        caps the join output materialised at once (memory); the default suits the backend
        and the memory budget.

        Without ``client`` the run is in this process (``on_iteration`` sees every
        iteration). With a ``distributed.Client`` every worker of its cluster holds one shard
        and reads its part of each fact file (paths must be visible to the workers);
        ``progress`` receives the workers' progress events, ``replicate_below`` is the size in
        bytes under which static relations are copied to every worker, ``exchange`` how the
        workers exchange tuples ("mesh", "comm" or "auto": cluster/runtime/phase.py). ``options``:
        checkpoints, resuming, retries after lost workers, a time limit, a memory budget, a
        suspend request and a stop request (``RunOptions``; retries need a cluster). Raises ``Suspended`` when
        the run stopped at a checkpoint on request, ``RunTimeout`` past its time limit,
        ``MemoryBudgetExceeded`` when its relations outgrow the budget (engine/errors.py).
        ``stdin``: what ``.input r(IO=stdin)`` reads; by default this process's standard
        input, read to its end when the program has such an input."""
        if options.keep is not None and (unknown := sorted(options.keep - self.ir.relations.keys())):
            raise ValueError(f"RunOptions.keep names no relation of this program: {', '.join(unknown)}")
        if stdin is None and any(spec.io == "stdin" for spec in self.ir.inputs):
            stdin = sys.stdin.buffer.read()
        if client is not None:
            from dask_datalog.cluster.runtime.coordinator import run_job

            if on_iteration is not None:
                raise ValueError("on_iteration is for in-process runs; pass progress= with a client")
            name = backend.name if isinstance(backend, Backend) else backend  # workers build their own
            run = run_job(
                client,
                self.ir,
                fact_dir,
                facts,
                name,
                chunk_rows,
                replicate_below,
                progress,
                options,
                ExchangeKind(exchange),
                stdin,
            )
            return Result(run)
        check_fact_names(self.ir, dict(facts or {}))
        inputs = Inputs(fact_dir, dict(facts or {}), _array_digests(facts, options), stdin)
        return Result(run_in_process(self.ir, get_backend(backend), inputs, _steering(options), chunk_rows, on_iteration))


def _bind(
    program: ProgramIR,
    functors: Mapping[str, Callable[..., Any]] | None,
    libraries: Sequence[str],
    library_dirs: Sequence[str | Path],
) -> ProgramIR:
    """``program`` with its user functors bound (``user_functors.bind``); a program that declares
    none and is given none is bound as it is, without importing that module."""
    if not functors and not program.functors:
        return program
    from dask_datalog.engine import user_functors  # only programs with functors need it

    return user_functors.bind(program, functors, libraries, [str(d) for d in library_dirs])


def _array_digests(facts: Mapping[str, FactSource] | None, options: RunOptions) -> dict[str, str]:
    """Digests of the input arrays for checkpoints' fingerprints (only when checkpointing)."""
    if options.checkpoint_dir is None:
        return {}
    return {name: array_digest(source) for name, source in (facts or {}).items() if not isinstance(source, (str, Path))}


def _steering(options: RunOptions) -> Steering:
    """``options`` for a run in this process: the same checkpoints, resume, time limit, budget
    and suspend request as on a cluster (no worker to lose: no retries)."""
    checkpoint = None
    if options.checkpoint_dir is not None:
        resume = "" if options.resume else None
        checkpoint = CheckpointOptions(
            options.checkpoint_dir, options.checkpoint_every, resume, options.resume, f"run-{os.urandom(6).hex()}"
        )
    deadline = time.monotonic() + options.timeout if options.timeout is not None else None
    suspend, stop = options.suspend, options.stop

    def interrupted() -> None:
        if stop is not None and stop.is_set():
            raise Terminated("the run was stopped on request")
        if deadline is not None and time.monotonic() > deadline:
            raise RunTimeout(f"the run went past its time limit of {options.timeout:g} s and was stopped")
        if suspend is not None and suspend.is_set() and checkpoint is None:
            raise Terminated("the run was stopped without a checkpoint (no checkpoint directory)")

    return Steering(
        checkpoint,
        options.memory_limit,
        suspend.is_set if suspend is not None else (lambda: False),
        interrupted,
        options.profile,
        options.keep,
    )
