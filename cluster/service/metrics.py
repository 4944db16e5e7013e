"""``/metrics``: the service in Prometheus' text format (prometheus_client, the reference
client: its exposition and parser are the format's own). Every figure is read from the job
records at the scrape, so the counts agree with the API's and survive a restart; the records
are never deleted, so the totals only grow (as counters must)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.concurrency import run_in_threadpool

from dask_datalog.cluster.service import figures
from dask_datalog.cluster.service.jobs import JobService
from dask_datalog.cluster.service.openapi import errors
from dask_datalog.cluster.service.store import State

# Seconds from submission to the end: a small job takes a fraction of a second, a large one hours.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


class JobCollector(Collector):
    def __init__(self, service: JobService):
        self.service = service
        self.exchanged: dict[str, int] = {}  # a SUCCEEDED job's bytes never change: read its figures once

    def collect(self) -> Iterator[Metric]:
        rows = self.service.store.figures()
        by_state = dict.fromkeys(State, 0)
        for _, state, *_ in rows:
            by_state[state] += 1
        jobs = GaugeMetricFamily("datalog_jobs", "Jobs by state", labels=["state"])
        for state, n in by_state.items():
            jobs.add_metric([state.value], n)
        yield jobs
        yield GaugeMetricFamily("datalog_jobs_running", "Jobs running now", by_state[State.RUNNING])
        yield GaugeMetricFamily("datalog_queue_length", "Jobs waiting for a slot (PENDING)", by_state[State.PENDING])
        yield CounterMetricFamily("datalog_iterations", "Iterations the jobs ran", sum(r[4] for r in rows))
        yield CounterMetricFamily("datalog_tuples_derived", "Tuples the jobs derived", sum(r[5] for r in rows))
        for job, state, *_ in rows:
            if state is State.SUCCEEDED and job not in self.exchanged:
                self.exchanged[job] = figures.bytes_exchanged(self.service.jobs_dir / job) or 0
        yield CounterMetricFamily(
            "datalog_bytes_exchanged", "Bytes the workers of SUCCEEDED jobs sent each other", sum(self.exchanged.values())
        )
        latencies = [ended - submitted for _, state, submitted, ended, *_ in rows if state.final and ended is not None]
        buckets = [(str(bound), sum(1 for s in latencies if s <= bound)) for bound in LATENCY_BUCKETS]
        yield HistogramMetricFamily(
            "datalog_job_latency_seconds",
            "Seconds from a job's submission to its end (STOPPED, SUCCEEDED or FAILED)",
            buckets=[*buckets, ("+Inf", len(latencies))],
            sum_value=sum(latencies),
        )


def registry(service: JobService) -> CollectorRegistry:
    """The service's own registry (not the process' global one: two apps in one process, as
    in the tests, each count their own jobs)."""
    found = CollectorRegistry()
    found.register(JobCollector(service))
    ProcessCollector(registry=found)  # the service process' CPU, memory and open files
    return found


def add_metrics(app: FastAPI, service: JobService, user: Callable[..., Any] | None) -> None:
    """``GET /metrics``; with ``user``, only for a valid bearer token (any user's: the figures
    are totals, no job's own), else open (``serve --open-metrics``)."""
    found = registry(service)

    async def metrics() -> Response:
        return Response(await run_in_threadpool(generate_latest, found), media_type=CONTENT_TYPE_LATEST)

    dependencies = [Depends(user)] if user is not None else []
    responses = {200: {"content": {"text/plain": {}}}, **(errors() if user is not None else {})}
    app.get(
        "/metrics",
        response_class=Response,
        dependencies=dependencies,
        summary="Prometheus metrics (text format)",
        responses=responses,
    )(metrics)
