"""A finished run, whatever ran it: the ``Run`` protocol the API's ``Result`` reads, its
implementation for a run in this process (``LocalRun``: one ``Shard``), and the statistics of a
run added up from its shards' (the same shape for one shard and for many)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.execution.phases import PHASES
from dask_datalog.engine.values import SymbolTable
from dask_datalog.partition import REPLICATE_BELOW
from dask_datalog.partition.transport import LocalTransport
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.shard import Shard, Steering, evaluate_shard
from dask_datalog.spmd.writer import print_outputs, write_outputs

if TYPE_CHECKING:
    import dask.dataframe as dd

    from dask_datalog.engine.execution.fixpoint import OnIteration


class Run(Protocol):
    """A finished run: its program, statistics and relation sizes here; its rows where they
    were computed until asked for."""

    program: ir.Program

    @property
    def stats(self) -> dict[str, Any]: ...

    @property
    def sizes(self) -> dict[str, int]: ...

    @property
    def symbols(self) -> SymbolTable: ...

    def rows(self, name: str) -> np.ndarray:
        """All of relation ``name`` here, (n, arity) encoded uint32, in output order."""
        ...

    def frame(self, name: str) -> dd.DataFrame:
        """A Dask DataFrame of relation ``name``, a partition per shard, made where it is."""
        ...

    def write(self, output_dir: str, fmt: str, stream: TextIO | None, written: Callable[[str, int], None] | None) -> None:
        """The ``.output`` relations into ``output_dir`` (csv or parquet), or to ``stream``
        (default stdout) with "-" or ``IO=stdout``; ``.printsize`` lines to ``stream`` when one
        is given."""
        ...

    def close(self) -> None:
        """Free the relations (on the workers, for a run on a cluster)."""
        ...


class LocalRun:
    """A run in this process: one shard over a ``LocalTransport``."""

    def __init__(self, shard: Shard):
        self.shard = shard
        self.program = shard.program
        self.stats = combine_stats([shard.stats])
        self.sizes = dict(self.stats["sizes"])

    @property
    def symbols(self) -> SymbolTable:
        return self.shard.symbols

    def rows(self, name: str) -> np.ndarray:
        return self.shard.host_rows(name)

    def frame(self, name: str) -> dd.DataFrame:
        import dask.dataframe as dd

        from dask_datalog.engine.formats import relation_output

        relation = self.program.relations[name]
        return dd.from_pandas(relation_output.to_pandas(self.rows(name), relation, self.symbols), npartitions=1)

    def write(
        self,
        output_dir: str,
        fmt: str = "csv",
        stream: TextIO | None = None,
        written: Callable[[str, int], None] | None = None,
    ) -> None:
        texts = write_outputs(LocalTransport(), self.shard, output_dir, fmt, written)
        print_outputs(stream, self.program, output_dir, texts, self.sizes.__getitem__)

    def close(self) -> None:
        self.shard.rows = {}


def run_in_process(
    program: ir.Program,
    backend: Backend,
    inputs: Inputs,
    steering: Steering = Steering(),
    chunk_rows: int | None = None,
    on_iteration: OnIteration | None = None,
) -> LocalRun:
    """The program evaluated in this process: one shard of one."""
    shard = evaluate_shard(LocalTransport(), program, backend, inputs, steering, chunk_rows, REPLICATE_BELOW, on_iteration)
    return LocalRun(shard)


def combine_stats(per_shard: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A run's statistics from its shards': each shard's kept as it is (``per_worker``), plus
    the sums and maxima a reader wants first; with a profile, the shards' added up
    (``profile``) instead of one in each worker's."""
    sizes = {name: sum(s["local_sizes"][name] for s in per_shard) for name in per_shard[0]["local_sizes"]}
    exchange = [s["exchange"] for s in per_shard]
    combined = {
        "workers": len(per_shard),
        "backend": per_shard[0]["backend"],
        "total_s": max(s["total_s"] for s in per_shard),
        "load_s": max(s["load_s"] for s in per_shard),
        "sizes": sizes,
        "bytes_exchanged": sum(e["bytes_sent"] for e in exchange),
        "coordination_s": max(e["wait_s"] for e in exchange),
        "placement": per_shard[0]["placement"],
        "checkpoints": per_shard[0]["checkpoints"],
        "resumed_from": per_shard[0].get("resumed_from"),
        "dropped": per_shard[0]["dropped"],
        "strata": _combined_strata(per_shard),
        "per_worker": [{key: value for key, value in s.items() if key != "profile"} for s in per_shard],
    }
    if "profile" in per_shard[0]:
        from dask_datalog.engine.execution import profile  # only a profiled run needs it

        combined["profile"] = profile.combine([s["profile"] for s in per_shard])
    return combined


def _combined_strata(per_shard: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The strata as the whole run saw them: shards run the same iterations, so each
    iteration's new tuples are summed over shards, its times and buffers are the slowest or
    largest shard's. One shard's are its own (no copy: a long fixpoint has many)."""
    if len(per_shard) == 1:
        return list(per_shard[0]["strata"])
    strata = []
    for parts in zip(*(s["strata"] for s in per_shard)):
        iterations = []
        for its in zip(*(p["iterations"] for p in parts)):
            record: dict[str, Any] = {"delta": {r: sum(i["delta"][r] for i in its) for r in its[0]["delta"]}}
            record.update({key: max(i[key] for i in its) for key in (*PHASES, "buffered_rows", "time_s")})
            iterations.append(record)
        strata.append(
            {
                "relations": parts[0]["relations"],
                "recursive": parts[0]["recursive"],
                "iterations": iterations,
                "sizes": {r: sum(p["sizes"][r] for p in parts) for r in parts[0]["sizes"]},
                "time_s": max(p["time_s"] for p in parts),
                "join_orders": parts[0]["join_orders"],
            }
        )
    return strata
