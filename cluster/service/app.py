"""The REST API (FastAPI: the OpenAPI description at /openapi.json comes from these typed
models; docs/service.md says why this framework). Routes under /api/jobs follow Ray Jobs'
(submit, list, get, logs, stop) plus result downloads; every route needs a bearer token. The
web page's routes (web.py) and /metrics (metrics.py) are added from their modules."""

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dask_datalog.cluster.service.auth import Tokens, User
from dask_datalog.cluster.service.jobs import JobService, Refused, Submission, decode_upload, parquet_file
from dask_datalog.cluster.service.metrics import add_metrics
from dask_datalog.cluster.service.openapi import errors
from dask_datalog.cluster.service.store import JobRecord, State
from dask_datalog.cluster.service.web import add_pages

FOLLOW_POLL_S = 0.1  # how often a followed log looks for new lines
# A log offset is an SQLite INTEGER: past 2**63 - 1 the query would fail (a 500), not find nothing.
Offset = Annotated[int, Query(ge=0, le=2**63 - 1, description="the first line's number, from 0")]


class SubmitRequest(BaseModel):
    """A job: the program's text; its facts uploaded (file name -> base64 of the file's bytes)
    or named by a folder the cluster can read under the service's roots; where its outputs go
    (a folder under the roots; default: the job's own, downloadable through the API)."""

    program: str = Field(description="the Datalog program's text")
    program_name: str = Field("program.dl", description="the name errors give the program (file:line:col)")
    facts: dict[str, str] | None = Field(None, description="fact files by file name, each base64 of its bytes")
    fact_dir: str | None = Field(None, description="a folder of fact files under one of the service's roots")
    output_dir: str | None = Field(None, description="a folder under the roots for the outputs (default: the job's)")
    format: Literal["csv", "parquet"] = Field("csv", description="how the outputs are written, as `run --format`")
    macros: dict[str, str] | None = Field(None, description="the C preprocessor's macros, as `run -M NAME=VALUE`")
    retries: int = Field(2, ge=0, description="lost workers the run survives")
    timeout: float | None = Field(None, gt=0, description="seconds after which the run is stopped (FAILED)")
    memory_limit: int | None = Field(None, gt=0, description="bytes of data per worker")
    checkpoint: bool = Field(
        False, description="checkpoint into the job's folder: a retry, or the service's restart, resumes there"
    )
    checkpoint_every: float | None = Field(None, ge=0, description="seconds between checkpoints")


class Job(BaseModel):
    id: str
    owner: str
    program_name: str
    program_digest: str
    arguments: dict[str, Any]
    state: State
    submitted: float
    started: float | None
    ended: float | None
    iterations: int
    tuples: int
    error: str | None
    output_dir: str | None
    results: dict[str, Any]


class Logs(BaseModel):
    lines: list[str]
    next: int = Field(description="the offset of the line after these")
    final: bool = Field(description="whether the job had ended when these were read (no more lines come)")


_RESULT_TYPES: dict[str, dict[str, Any]] = {"text/csv": {}, "application/gzip": {}, "application/vnd.apache.parquet": {}}


def _job(record: JobRecord) -> Job:
    return Job(**record.public())


class SizeLimit:
    """ASGI middleware: a request whose body passes ``limit`` bytes is answered 413, by its
    Content-Length at once, else once that many bytes arrived. The body is read here before
    the app sees it (the app would read it whole anyway, to parse its JSON): a refusal raised
    while the app reads would become FastAPI's 400 for an unreadable body."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app hears it
                return await self.app(scope, _replay([message], receive), send)
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": bytes(body), "more_body": False}], receive), send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        response = JSONResponse({"detail": f"the request is larger than the service's limit of {self.limit} bytes"}, 413)
        await response(scope, receive, send)


def _replay(messages: list[dict[str, Any]], receive: Any) -> Any:
    """An ASGI ``receive`` giving ``messages`` first, then what ``receive`` gives."""

    async def replayed() -> Any:
        return messages.pop(0) if messages else await receive()

    return replayed


def create_app(service: JobService, tokens: Tokens, max_request_bytes: int, open_metrics: bool = False) -> FastAPI:
    app = FastAPI(
        title="dask-datalog job service",
        version="1",
        description="Submit Datalog programs to a Dask cluster, watch their progress, fetch their results.",
        # No Swagger or ReDoc page: they load their scripts from a CDN, which clusters often cannot reach.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(SizeLimit, limit=max_request_bytes)
    bearer = HTTPBearer(auto_error=False)

    def user(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
        found = tokens.user(credentials.credentials) if credentials is not None else None
        if found is None:
            raise Refused(401, "a valid bearer token is needed (Authorization: Bearer <token>)")
        return found

    Caller = Annotated[User, Depends(user)]

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse({"detail": error.message}, error.status, headers=headers)

    @app.post("/api/jobs", status_code=201, response_model=Job, summary="submit a job", responses=errors(400, 403, 413))
    async def submit(request: SubmitRequest, caller: Caller) -> Job:
        facts = {n: decode_upload(n, t) for n, t in request.facts.items()} if request.facts is not None else None
        submission = Submission(**{**request.model_dump(), "facts": facts})
        return _job(await run_in_threadpool(service.submit, caller, submission))

    @app.get(
        "/api/jobs",
        response_model=list[Job],
        summary="the caller's jobs (every job for an admin), oldest first",
        responses=errors(),
    )
    async def jobs(caller: Caller) -> list[Job]:
        return [_job(r) for r in await run_in_threadpool(service.visible, caller)]

    @app.get("/api/jobs/{job}", response_model=Job, summary="one job", responses=errors(404))
    async def job(job: str, caller: Caller) -> Job:
        return _job(service.get(caller, job))

    @app.post(
        "/api/jobs/{job}/stop",
        response_model=Job,
        summary="stop a job (queued: at once; running: within a second)",
        responses=errors(404),
    )
    async def stop(job: str, caller: Caller) -> Job:
        return _job(await run_in_threadpool(service.stop, caller, job))

    @app.get("/api/jobs/{job}/logs", response_model=Logs, summary="a page of the job's log", responses=errors(404))
    async def logs(job: str, caller: Caller, offset: Offset = 0, limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> Logs:
        final = service.get(caller, job).state.final
        lines = service.logs(caller, job, offset, limit)
        return Logs(lines=lines, next=offset + len(lines), final=final)

    @app.get(
        "/api/jobs/{job}/logs/stream",
        response_class=StreamingResponse,
        summary="the job's log from offset on, as text lines while they come, until the job ends",
        responses={200: {"content": {"text/plain": {}}}, **errors(404)},
    )
    async def follow(job: str, caller: Caller, offset: Offset = 0) -> StreamingResponse:
        service.get(caller, job)

        async def lines() -> AsyncIterator[bytes]:
            at = offset
            while True:
                final = service.get(caller, job).state.final  # read first: lines written before the end are all there
                page = service.logs(caller, job, at, 1000)
                at += len(page)
                if page:
                    yield "".join(line + "\n" for line in page).encode()
                elif final:
                    return
                else:
                    await asyncio.sleep(FOLLOW_POLL_S)

        return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")

    @app.get(
        "/api/jobs/{job}/results/{relation}",
        response_class=Response,
        summary="an output relation of a SUCCEEDED job: csv, or parquet as one file (the format the job did not write "
        "is converted)",
        responses={200: {"content": _RESULT_TYPES}, **errors(404, 409, 410)},
    )
    async def result(job: str, relation: str, caller: Caller, format: Literal["csv", "parquet"] | None = None) -> Response:
        path, written = await run_in_threadpool(service.result, caller, job, relation)
        if format is not None and format != written:
            converted, media = await run_in_threadpool(service.converted, caller, job, relation)
            return Response(converted, media_type=media)
        if written == "csv":  # streamed from the file: an output may be larger than memory
            return FileResponse(path, media_type="application/gzip" if path.suffix == ".gz" else "text/csv")
        return Response(await run_in_threadpool(parquet_file, path), media_type="application/vnd.apache.parquet")

    add_pages(app, service, user)  # the web page (web.py) and /metrics (metrics.py)
    add_metrics(app, service, None if open_metrics else user)
    return app
