"""The service's web page: the job list and a page per job, static files (``static/``, package
data: no build step, nothing from a CDN) whose script reads the REST API with the bearer token
the user enters once (kept in the tab's sessionStorage, sent as the Authorization header: no
cookie, so no request forged from another site carries it). The pages hold no data themselves
and need no token; the two routes the script adds to the API do."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dask_datalog.cluster.runtime import dask_adapter
from dask_datalog.cluster.service import figures
from dask_datalog.cluster.service.auth import User
from dask_datalog.cluster.service.jobs import JobService, Refused, span_name
from dask_datalog.cluster.service.openapi import errors

WEB = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page runs its own script only, talks to its own origin only, and is framed by nobody: an
# injected tag, should escaping ever miss one, can neither run nor send anything away.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Cluster(BaseModel):
    dashboard: str | None = Field(description="the Dask dashboard of the service's cluster (the client's dashboard_link)")
    workers: int


class Point(BaseModel):
    stratum: int
    iteration: int
    delta: int = Field(description="new tuples of the iteration, over every worker")
    found: int | None = Field(None, description="tuples found so far (points reached while running)")
    time_s: float | None = Field(None, description="the iteration's time on its slowest worker (complete figures)")


class Worker(BaseModel):
    rank: int
    total_s: float
    load_s: float
    phases: dict[str, float] = Field(description="seconds per evaluation phase (join, dedup, difference, merge)")
    exchange: dict[str, Any] = Field(description="the worker's transport: rounds, send_s, wait_s, bytes_sent, bytes_received")


class Figures(BaseModel):
    complete: bool = Field(description="the run's statistics (SUCCEEDED); else the iterations reached so far")
    span: str = Field(description="the Dask span the job's tasks are tagged with")
    iterations: list[Point]
    workers: list[Worker]
    bytes_exchanged: int | None
    total_s: float | None


def add_pages(app: FastAPI, service: JobService, user: Callable[..., User]) -> None:
    Caller = Annotated[User, Depends(user)]

    @app.get("/", include_in_schema=False)
    async def jobs_page() -> FileResponse:
        return FileResponse(WEB / "index.html", headers=HEADERS)

    @app.get("/jobs/{job}", include_in_schema=False)
    async def job_page(job: str) -> FileResponse:
        return FileResponse(WEB / "job.html", headers=HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise Refused(404, f"no file {name}")
        return FileResponse(WEB / name, media_type=ASSETS[name], headers=HEADERS)

    @app.get(
        "/api/cluster", response_model=Cluster, summary="the service's cluster: its dashboard and workers", responses=errors()
    )
    async def cluster(caller: Caller) -> Cluster:
        def read() -> Cluster:
            return Cluster(dashboard=service.client.dashboard_link, workers=len(dask_adapter.scheduler_workers(service.client)))

        return await run_in_threadpool(read)

    @app.get(
        "/api/jobs/{job}/figures",
        response_model=Figures,
        summary="the job's per-iteration deltas and per-worker figures",
        responses=errors(404),
    )
    async def job_figures(job: str, caller: Caller) -> Figures:
        service.get(caller, job)
        found = await run_in_threadpool(figures.read, service.jobs_dir / job)
        return Figures(**found, span=span_name(job))
