"""The service's operations on jobs, with their checks, for the REST app and the tests alike:
submit (uploads saved into the job's folder, named paths confined to the roots), see, list,
stop, read logs and results. Every refusal is a ``Refused`` with its HTTP status."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distributed

from dask_datalog.cluster.api import Program
from dask_datalog.cluster.service.auth import PathRefused, Roots, User
from dask_datalog.cluster.service.convert import Unconvertible, to_csv, to_parquet
from dask_datalog.cluster.service.queue import JobQueue, Stop
from dask_datalog.cluster.service.runner import CHECKPOINT, run_job
from dask_datalog.cluster.service.store import JobRecord, JobStore, State
from dask_datalog.engine.checkpoint import Checkpoints
from dask_datalog.spmd.inputs import Inputs
from dask_datalog.spmd.writer import file_name

_INCLUDE = re.compile(r"^\s*(#\s*include|\.include)\b", re.MULTILINE)  # the preprocessor's and Soufflé's


class Refused(Exception):
    """A request the service will not do: ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Submission:
    """A job as submitted: the program's text and name, its facts as uploads (file name to
    bytes) or a folder the cluster can read, where its outputs go (None: the job's folder),
    and the reliability options the run API takes."""

    program: str
    program_name: str = "program.dl"
    facts: dict[str, bytes] | None = None
    fact_dir: str | None = None
    output_dir: str | None = None
    format: str = "csv"
    macros: dict[str, str] | None = None
    retries: int = 2
    timeout: float | None = None
    memory_limit: int | None = None
    checkpoint: bool = False
    checkpoint_every: float | None = None


class JobService:
    """Jobs of the service whose records are in ``state_dir/jobs.sqlite`` and whose folders
    (program, uploaded facts, default outputs, checkpoints) are under ``state_dir/jobs``;
    jobs with at most ``local_below`` bytes of facts run in this process (``serve`` with its
    embedded cluster: local.py; 0: none)."""

    def __init__(self, state_dir: Path, client: Any, max_jobs: int, roots: Roots, local_below: int = 0):
        self.state_dir = state_dir.resolve()
        self.jobs_dir = self.state_dir / "jobs"
        self.store = JobStore(self.state_dir / "jobs.sqlite")
        self.roots = roots
        self.client = client
        self.local, self.local_below = threading.Lock(), local_below  # small jobs in this process, one at a time
        self.signalled = threading.Event()  # set by serve on its SIGINT or SIGTERM: the jobs' stop follows
        self.queue = JobQueue(self.store, self._run, max_jobs)
        failed, pending = self.store.recover(self._checkpoint)
        self.recovered = failed
        for job in pending:
            self.queue.submit(job)

    def _checkpoint(self, record: JobRecord) -> str | None:
        """Where the job's run had last checkpointed (its folder's checkpoint), or None."""
        manifest = Checkpoints(self.jobs_dir / record.id / CHECKPOINT).latest() if record.arguments.get("checkpoint") else None
        if manifest is None:
            return None
        return f"(stratum {manifest.position.stratum + 1}, after iteration {manifest.position.iteration})"

    def _run(self, record: JobRecord, stop: Stop) -> None:
        folder = self.jobs_dir / record.id
        # The job's own folder is a root too (its uploads, its outputs); other jobs' are not.
        confine = functools.partial(_confine_program, Roots([*self.roots.roots, folder]))
        # The span tags every task the job submits (this thread's): the dashboard groups them.
        with distributed.span(span_name(record.id)):
            run_job(record, self.client, self.store, folder, stop, confine, self.signalled, self.local, self.local_below)

    def submit(self, user: User, job: Submission) -> JobRecord:
        if job.facts is not None and job.fact_dir is not None:
            raise Refused(400, "give facts as uploads or as fact_dir, not both")
        if job.format not in ("csv", "parquet"):
            raise Refused(400, f"format must be csv or parquet, not {job.format!r}")
        try:
            fact_dir = self.roots.confine(job.fact_dir, "fact_dir") if job.fact_dir is not None else None
            output_dir = self.roots.confine(job.output_dir, "output_dir") if job.output_dir is not None else None
        except PathRefused as refused:
            raise Refused(403, refused.message) from None
        if _INCLUDE.search(job.program):
            raise Refused(400, "the service takes one program text: #include and .include would read the service's files")
        for name in job.facts or {}:
            if Path(name).name != name or name in ("", ".", ".."):
                raise Refused(400, f"fact upload name {name!r} must be a plain file name")
        job_id = uuid.uuid4().hex[:12]
        folder = self.jobs_dir / job_id
        (folder / "facts").mkdir(parents=True)
        for name, data in (job.facts or {}).items():
            (folder / "facts" / name).write_bytes(data)
        arguments = {
            "program": job.program,
            "fact_dir": fact_dir or str(folder / "facts"),
            "output_dir": output_dir or str(folder / "out"),
            "format": job.format,
            "macros": job.macros or {},
            "uploads": sorted(job.facts or {}),
            "retries": job.retries,
            "timeout": job.timeout,
            "memory_limit": job.memory_limit,
            "checkpoint": job.checkpoint,
            "checkpoint_every": job.checkpoint_every,
        }
        record = JobRecord(
            id=job_id,
            owner=user.name,
            program_name=job.program_name,
            program_digest=hashlib.sha256(job.program.encode()).hexdigest(),
            arguments=arguments,
            output_dir=output_dir or str(folder / "out"),
        )
        self.store.insert(record)
        self.store.log(job_id, f"submitted by {user.name}: {job.program_name}")
        self.queue.submit(job_id)
        return record

    def get(self, user: User, job: str) -> JobRecord:
        """The job, if ``user`` may see it: another user's job is as absent as a missing one."""
        record = self.store.get(job)
        if record is None or not user.may_see(record.owner):
            raise Refused(404, f"no job {job}")
        return record

    def visible(self, user: User) -> list[JobRecord]:
        return self.store.select(None if user.admin else user.name)

    def stop(self, user: User, job: str) -> JobRecord:
        """Stop the job: its record after the request (a running job's ends a moment later)."""
        if not self.get(user, job).state.final:
            self.queue.stop(job)
        return self.get(user, job)

    def logs(self, user: User, job: str, offset: int, limit: int) -> list[str]:
        self.get(user, job)
        return self.store.logs(job, offset, limit)

    def result(self, user: User, job: str, relation: str) -> tuple[Path, str]:
        """Where the relation's output is (a CSV file, or a Parquet dataset's folder) and its
        format. A relation the job did not write, or removed since, is refused."""
        record = self.get(user, job)
        if record.state is not State.SUCCEEDED:
            raise Refused(409, f"job {job} is {record.state}: results come with SUCCEEDED")
        if relation not in record.results:
            raise Refused(404, f"job {job} wrote no relation {relation} (it wrote: {', '.join(record.results) or 'none'})")
        written = record.results[relation]
        path = Path(written["path"])
        if not path.exists():
            raise Refused(410, f"job {job}'s output of {relation}, {path}, is no longer there")
        return path, written["format"]

    def converted(self, user: User, job: str, relation: str) -> tuple[bytes, str]:
        """The relation's output in the format the job did not write it in (CSV as one Parquet
        file, Parquet as the CSV file, gzipped where its ``.output`` says ``compress``), read with
        its declared types and ``.output`` dialect, and its media type; 409 for a dialect that
        does not read back (quoted symbols, a multi-byte delimiter)."""
        path, written = self.result(user, job, relation)
        record = self.get(user, job)
        program = Program(record.arguments["program"], record.program_name, macros=record.arguments.get("macros") or {}).ir
        spec = next(s for s in program.outputs if s.relation == relation and s.io == "file")
        if written == "csv":
            convert, media = to_parquet, "application/vnd.apache.parquet"
        else:
            convert, media = to_csv, "application/gzip" if spec.compress else "text/csv"
        try:
            return convert(path, program.relations[relation], spec), media
        except Unconvertible as why:
            raise Refused(409, f"job {job}'s {relation} cannot be converted from {written}: {why}") from None

    def close(self) -> None:
        self.queue.close()
        self.store.close()


def span_name(job: str) -> str:
    """The Dask span of the job's tasks, as the dashboard shows it."""
    return f"datalog-job-{job}"


def _confine_program(roots: Roots, program: Program, fact_dir: str, output_dir: str) -> None:
    """Every file the program reads or writes, which ``.input``/``.output`` may name by an
    absolute or ``..`` path, inside ``roots`` (else the job fails with ``PathRefused``)."""
    for relation, path, _, _ in Inputs(fact_dir).files(program.ir):
        if path is not None:
            roots.confine(path, f"the fact file of {relation}")
    for spec in program.ir.outputs:
        if spec.io == "file":
            roots.confine(Path(output_dir) / file_name(spec), f"the output file of {spec.relation}")


def parquet_file(path: Path) -> bytes:
    """A Parquet dataset (a part per worker) as one file."""
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pq.read_table(path), out)
    return out.getvalue()


def decode_upload(name: str, text: str) -> bytes:
    """An upload's bytes from its base64 text; Refused (400) when it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"fact upload {name!r} is not base64") from None
