"""Job records and their logs in SQLite (the standard library's, in WAL mode, so readers never
wait for the job threads' writes): the service's one memory that survives a restart."""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


class State(enum.StrEnum):
    """A job's state, as Ray Jobs names them; the last three are final."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self in (State.STOPPED, State.SUCCEEDED, State.FAILED)


@dataclass
class JobRecord:
    """One job: who submitted what (``arguments``: everything the run needs, the program text
    included, so a queued job can start after a restart), where it is, what it found."""

    id: str
    owner: str
    program_name: str
    program_digest: str
    arguments: dict[str, Any]
    state: State = State.PENDING
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    iterations: int = 0
    tuples: int = 0
    error: str | None = None
    output_dir: str | None = None
    results: dict[str, Any] = field(default_factory=dict)  # relation -> {"path", "format"}

    def public(self) -> dict[str, Any]:
        """The record as the API shows it: without the program text and uploads."""
        record = asdict(self)
        record["arguments"] = {k: v for k, v in self.arguments.items() if k not in ("program", "facts")}
        return record


_JSON = ("arguments", "results")
_COLUMNS = tuple(f.name for f in fields(JobRecord))
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs ({", ".join(f"{c} {'TEXT PRIMARY KEY' if c == 'id' else ''}" for c in _COLUMNS)});
CREATE TABLE IF NOT EXISTS logs (job TEXT, seq INTEGER, time REAL, line TEXT, PRIMARY KEY (job, seq));
"""


class JobStore:
    """The records in ``path``; one connection shared by the service's threads under a lock
    (SQLite serialises writers anyway, and the writes are small)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # A commit is then written to the WAL file without waiting for the disk (fsync only at
        # checkpoints): it survives the service's crash (kill -9: the OS has the file's pages),
        # and a crash of the machine itself loses the last commits, never the database.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()
        self.listeners: list[Callable[[str], None]] = []  # told each job whose final state is committed

    def listen(self, ended: Callable[[str], None]) -> None:
        """Call ``ended(job)`` once a job's final state is committed (on the writer's thread)."""
        self.listeners.append(ended)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def insert(self, record: JobRecord) -> None:
        row = [_encode(c, getattr(record, c)) for c in _COLUMNS]
        with self._transaction() as db:
            db.execute(f"INSERT INTO jobs VALUES ({', '.join('?' * len(_COLUMNS))})", row)

    def update(self, job: str, **values: Any) -> None:
        assert values and set(values) <= set(_COLUMNS), values
        with self._transaction() as db:
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in values)} WHERE id = ?",
                [*(_encode(c, v) for c, v in values.items()), job],
            )
        if "state" in values and State(values["state"]).final:
            for ended in self.listeners:
                ended(job)

    def get(self, job: str) -> JobRecord | None:
        with self.lock:
            row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job,)).fetchone()
        return _decode(row) if row is not None else None

    def select(self, owner: str | None = None, states: tuple[State, ...] = ()) -> list[JobRecord]:
        """Every job (of ``owner``, in ``states``), oldest first."""
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self.lock:
            rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs{clause} ORDER BY submitted, rowid", args).fetchall()
        return [_decode(r) for r in rows]

    def figures(self) -> list[tuple[str, State, float, float | None, int, int]]:
        """Every job's id, state, submission and end, iterations and tuples (what /metrics
        counts), without reading the records' JSON."""
        with self.lock:
            rows = self.db.execute("SELECT id, state, submitted, ended, iterations, tuples FROM jobs").fetchall()
        return [
            (job, State(state), submitted, ended, iterations, tuples) for job, state, submitted, ended, iterations, tuples in rows
        ]

    def log(self, job: str, line: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO logs VALUES (?, (SELECT COALESCE(MAX(seq), -1) + 1 FROM logs WHERE job = ?), ?, ?)",
                (job, job, time.time(), line),
            )

    def logs(self, job: str, offset: int = 0, limit: int = 1000) -> list[str]:
        """Lines ``offset`` to ``offset + limit`` of the job's log."""
        with self.lock:
            rows = self.db.execute(
                "SELECT line FROM logs WHERE job = ? AND seq >= ? ORDER BY seq LIMIT ?", (job, offset, limit)
            ).fetchall()
        return [r[0] for r in rows]

    def recover(self, checkpoint: Callable[[JobRecord], str | None]) -> tuple[list[str], list[str]]:
        """At the service's start, for the jobs a service that stopped left RUNNING (their run
        went with it): one whose run had checkpointed (``checkpoint(record)`` says where it
        was) is PENDING again, to resume from there; the others are FAILED, saying why. Returns
        (failed ids, pending ids in submission order, the resumed among them)."""
        why = "the service stopped while the job ran, before the run had a checkpoint to resume from"
        failed = []
        for record in self.select(states=(State.RUNNING,)):
            position = checkpoint(record)
            if position is None:
                self.update(record.id, state=State.FAILED, ended=time.time(), error=why)
                self.log(record.id, f"FAILED: {why}")
                failed.append(record.id)
            else:
                arguments = {**record.arguments, "resume": True}
                self.update(record.id, state=State.PENDING, started=None, arguments=arguments)
                self.log(
                    record.id, f"the service stopped while the job ran: queued again, to resume from its checkpoint {position}"
                )
        return failed, [r.id for r in self.select(states=(State.PENDING,))]

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _encode(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSON else value


def _decode(row: tuple[Any, ...]) -> JobRecord:
    values = {c: (json.loads(v) if c in _JSON else v) for c, v in zip(_COLUMNS, row)}
    values["state"] = State(values["state"])
    return JobRecord(**values)
