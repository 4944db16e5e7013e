"""The Python API: one entry point, ``Program``.

    from dask_datalog.cluster import Program
    result = Program.from_file("examples/reach.dl").run(facts={"edge": "graph.tsv"})
    result.sizes["path"]; result.pandas("path"); result.numpy("path")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import facts as factio
from ..engine.backend import BackendName, get_backend
from ..engine.frontend import load_program
from ..engine.ir import Program as ProgramIR
from ..engine.job import FactSource, RunOutput, run_program, write_outputs

if TYPE_CHECKING:
    import pandas as pd


class Result:
    """Every relation of a finished run, decoded on demand."""

    def __init__(self, run: RunOutput):
        self._run = run

    @property
    def sizes(self) -> dict[str, int]:
        return {name: self._run.size(name) for name in self._run.packed}

    @property
    def stats(self) -> dict[str, Any]:
        return self._run.stats

    def _relation(self, name: str) -> tuple[np.ndarray, Any]:
        if name not in self._run.packed:
            raise KeyError(f"no relation '{name}' in this program")
        return self._run.rows(name), self._run.program.relations[name]

    def numpy(self, name: str) -> np.ndarray:
        """(n, arity) rows in output order: int64, or object when a column is a symbol."""
        rows, relation = self._relation(name)
        return factio.to_numpy(rows, relation, self._run.symbols)

    def pandas(self, name: str) -> pd.DataFrame:
        rows, relation = self._relation(name)
        return factio.to_pandas(rows, relation, self._run.symbols)

    def tuples(self, name: str) -> set[tuple]:
        """Decoded Python tuples (convenient for tests and small results)."""
        rows, relation = self._relation(name)
        columns = factio.decode_columns(rows, relation, self._run.symbols)
        return set(zip(*(c.tolist() for c in columns))) if columns else ({()} if rows.shape[0] else set())

    def write(self, output_dir: str | Path | None, stdout: Any) -> None:
        """What the CLI does with ``-D``: ``.output`` files and ``.printsize`` lines."""
        write_outputs(self._run, output_dir, stdout)


class Program:
    """A checked Datalog program; ``run`` evaluates it to its fixpoint."""

    def __init__(self, text: str, filename: str = "<string>"):
        self.ir: ProgramIR = load_program(text, filename)

    @classmethod
    def from_file(cls, path: str | Path) -> Program:
        path = Path(path)
        return cls(path.read_text(encoding="utf-8"), str(path))

    def run(
        self,
        fact_dir: str | Path | None = None,
        facts: Mapping[str, FactSource] | None = None,
        backend: BackendName = "auto",
        on_iteration: Callable[[int, int, dict[str, int]], None] | None = None,
        chunk_rows: int | None = None,
    ) -> Result:
        """Evaluate in this process. ``facts`` maps relation names to fact-file paths or to
        (n, arity) array-likes / DataFrames and overrides ``.input`` files. ``chunk_rows``
        caps the join output materialised at once (memory); the default suits the backend."""
        return Result(run_program(self.ir, get_backend(backend), fact_dir, facts, on_iteration, chunk_rows))
