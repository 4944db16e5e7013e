"""The job service's REST API under attack and in its corners, in process (FastAPI's ASGI test
client, no socket): schemathesis generates requests from the service's own OpenAPI description
(valid ones and not) with a valid token, and every response must be no 500 and match that
description; then targeted checks of tokens, owners, paths, sizes, malformed bodies, and the
results' conversion between CSV and Parquet (compared with the one-shot ``run``'s outputs).

The default fuzz is small and derandomized (seconds); ``pytest -m fuzz`` runs a longer one."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import schemathesis
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_service import COUNT, EXAMPLES, TOKENS, call, one_shot, submit, uploads, wait

from dask_datalog.cluster.service.app import create_app
from dask_datalog.cluster.service.auth import Roots, Tokens
from dask_datalog.cluster.service.jobs import JobService

LIMIT = 2**16  # the app's request limit here: small, so that the fuzz meets 413 too
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Every output option the conversion reads: symbols, floats, unsigned, a header, a delimiter, gzip.
TYPED = """
.decl t(name: symbol, n: number, u: unsigned, f: float)
t("a b", -3, 4, 0.1). t("c", 7, 0, -2.5). t("d", 1, 123456789, 12345.678).
.output t
.decl h(name: symbol, n: number)
h(x, n) :- t(x, n, _, _).
.output h(headers=true, delimiter=",", compress=true)
.decl e()
e() :- t("c", _, _, _).
.output e
.decl s(x: symbol)
s(""). s("z").
.output s
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roots")


@pytest.fixture(scope="module")
def served(cluster: Client, roots: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, JobService]]:
    service = JobService(tmp_path_factory.mktemp("state"), cluster, max_jobs=2, roots=Roots([roots]))
    tokens = Tokens(TOKENS["tokens"], set(TOKENS["admins"]))  # type: ignore[arg-type]
    with TestClient(create_app(service, tokens, max_request_bytes=LIMIT)) as http:
        yield http, service
    service.close()


@pytest.fixture(scope="module")
def done(served: tuple[TestClient, JobService]) -> str:
    """A SUCCEEDED job of alice's, for the fuzz's requests that name a real job."""
    http, _ = served
    job = submit(http, "alice-token", program=TYPED, program_name="typed.dl")
    assert wait(http, "alice-token", job)["state"] == "SUCCEEDED"
    return job


@pytest.fixture(scope="module")
def api(served: tuple[TestClient, JobService]) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", served[0].app)


def _fuzz(api: Any, job: str, examples: int) -> None:
    """Every operation, ``examples`` generated requests each (half of those naming a job name
    ``job``, which exists), as alice; every failure of every check is reported at the end."""
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert {"POST /api/jobs", "GET /api/jobs/{job}/results/{relation}"} <= {op.label for op in operations}
    for operation in operations:

        @given(case=operation.as_strategy(), real=st.booleans())
        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any, real: bool) -> None:
            if real and "job" in (case.path_parameters or {}):
                case.path_parameters["job"] = job
            case.call_and_validate(headers={"Authorization": "Bearer alice-token"}, checks=CHECKS)

        try:
            check()
        except Exception as error:  # each operation's failures, gathered so that one run shows them all
            failures.append(f"{operation.label}: {error}")
    assert not failures, "\n\n".join(failures)


def test_fuzz_the_api_over_its_openapi_description(api: Any, done: str) -> None:
    _fuzz(api, done, examples=25)


@pytest.mark.fuzz
def test_fuzz_the_api_longer(api: Any, done: str) -> None:
    _fuzz(api, done, examples=400)


def test_every_route_needs_a_valid_token(served: tuple[TestClient, JobService], done: str) -> None:
    http, _ = served
    schema = call(http, None, "GET", "/openapi.json").json()
    routes = [(method.upper(), path) for path, methods in schema["paths"].items() for method in methods]
    assert {("POST", "/api/jobs"), ("GET", "/metrics"), ("GET", "/api/jobs/{job}/logs/stream")} <= set(routes)
    for token in (None, "wrong-token", ""):
        for method, path in routes:
            body = {"json": {"program": COUNT}} if method == "POST" and path == "/api/jobs" else {}
            refused = call(http, token, method, path.replace("{job}", done).replace("{relation}", "t"), **body)
            assert refused.status_code == 401, (token, method, path, refused.text)
            assert refused.json() == {"detail": "a valid bearer token is needed (Authorization: Bearer <token>)"}
    basic = http.get("/api/jobs", headers={"Authorization": "Basic YWxpY2U6YWxpY2UtdG9rZW4="})
    assert basic.status_code == 401


def test_another_users_job_is_invisible_and_unstoppable_an_admin_sees_and_stops_it(
    served: tuple[TestClient, JobService],
) -> None:
    http, _ = served
    job = submit(http, "alice-token", program=COUNT)
    wait(http, "alice-token", job, states=("RUNNING",))
    for method, path in (("GET", ""), ("POST", "/stop"), ("GET", "/logs"), ("GET", "/logs/stream"), ("GET", "/results/n")):
        hidden = call(http, "bob-token", method, f"/api/jobs/{job}{path}")
        assert hidden.status_code == 404 and hidden.json() == {"detail": f"no job {job}"}, path
    assert call(http, "alice-token", "GET", f"/api/jobs/{job}").json()["state"] == "RUNNING"  # bob's stop did nothing
    assert job not in [j["id"] for j in call(http, "bob-token", "GET", "/api/jobs").json()]
    assert call(http, "root-token", "GET", f"/api/jobs/{job}").json()["owner"] == "alice"
    assert call(http, "root-token", "POST", f"/api/jobs/{job}/stop").status_code == 200
    assert wait(http, "alice-token", job)["state"] == "STOPPED"


def test_paths_outside_the_roots_are_403_naming_the_roots(served: tuple[TestClient, JobService], roots: Path) -> None:
    http, _ = served
    for body in ({"fact_dir": "/"}, {"output_dir": "/tmp"}, {"fact_dir": str(roots / ".." / roots.name / ".." / "x")}):
        refused = call(http, "alice-token", "POST", "/api/jobs", json={"program": COUNT, **body})
        assert refused.status_code == 403, body
        assert refused.json()["detail"].endswith(f"is outside the service's roots ({roots})"), refused.json()


def test_oversized_and_malformed_requests_are_4xx_saying_why(served: tuple[TestClient, JobService]) -> None:
    http, service = served
    before = len(service.store.select())
    big = {"program": COUNT, "facts": {"edge.facts": base64.b64encode(b"1\t2\n" * LIMIT).decode()}}
    too_large = call(http, "alice-token", "POST", "/api/jobs", json=big)
    assert too_large.status_code == 413 and too_large.json() == {
        "detail": f"the request is larger than the service's limit of {LIMIT} bytes"
    }
    alice = {"Authorization": "Bearer alice-token"}
    malformed = http.post("/api/jobs", content=b'{"program": "a', headers={**alice, "Content-Type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["msg"] == "JSON decode error", malformed.text
    files = {"program": ("p.dl", COUNT.encode(), "text/plain")}
    multipart = http.post("/api/jobs", files=files, headers=alice)
    assert multipart.status_code == 422, multipart.text
    assert "valid dictionary" in multipart.json()["detail"][0]["msg"], multipart.text  # the body must be a JSON object
    wrong = call(http, "alice-token", "POST", "/api/jobs", json=["program"])
    assert wrong.status_code == 422 and "valid dictionary" in wrong.json()["detail"][0]["msg"]
    missing = call(http, "alice-token", "POST", "/api/jobs", json={"facts": {}})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "program"]
    assert len(service.store.select()) == before  # nothing refused left a record


# -- results converted between CSV and Parquet --------------------------------------------------------


def _table(data: bytes) -> Any:
    return pq.read_table(io.BytesIO(data))


def test_a_csv_jobs_result_as_parquet_and_a_parquet_jobs_as_csv(
    served: tuple[TestClient, JobService], done: str, tmp_path: Path
) -> None:
    http, _ = served
    facts = EXAMPLES / "facts" / "reach"
    program = (EXAMPLES / "reach.dl").read_text()
    as_csv = submit(http, "alice-token", program=program, facts=uploads(facts))
    as_parquet = submit(http, "alice-token", program=program, facts=uploads(facts), format="parquet")
    typed_parquet = submit(http, "alice-token", program=TYPED, format="parquet")
    for job in (as_csv, as_parquet, typed_parquet):
        assert wait(http, "alice-token", job)["state"] == "SUCCEEDED"

    def get(job: str, relation: str, fmt: str | None = None) -> Any:
        got = call(http, "alice-token", "GET", f"/api/jobs/{job}/results/{relation}", params={"format": fmt} if fmt else {})
        assert got.status_code == 200, got.text
        return got

    # CSV -> Parquet: the table a parquet job gives, its columns named and typed alike.
    for csv_job, parquet_job, relation in ((as_csv, as_parquet, "path"), (done, typed_parquet, "t"), (done, typed_parquet, "s")):
        converted = get(csv_job, relation, "parquet")
        assert converted.headers["content-type"] == "application/vnd.apache.parquet"
        assert _table(converted.content).equals(_table(get(parquet_job, relation).content)), relation
    # Parquet -> CSV: the bytes the one-shot run writes (and a CSV job serves).
    want = one_shot(EXAMPLES / "reach.dl", facts, tmp_path / "reach")
    converted = get(as_parquet, "path", "csv")
    assert converted.headers["content-type"].startswith("text/csv")
    assert converted.content == (want / "path.csv").read_bytes() == get(as_csv, "path", "csv").content
    (tmp_path / "typed.dl").write_text(TYPED)
    typed = one_shot(tmp_path / "typed.dl", tmp_path, tmp_path / "typed")
    assert get(typed_parquet, "t", "csv").content == (typed / "t.csv").read_bytes()
    assert get(typed_parquet, "e", "csv").content == (typed / "e.csv").read_bytes() == b"()\n"
    assert get(typed_parquet, "s", "csv").content == (typed / "s.csv").read_bytes() == b"\nz\n"
    # A header, a comma and gzip: written, and read back, as the .output says.
    header = get(typed_parquet, "h", "csv")
    assert header.headers["content-type"] == "application/gzip" and header.content[:2] == b"\x1f\x8b"
    assert _gunzip(header.content) == _gunzip((typed / "h.csv.gz").read_bytes())
    assert _table(get(done, "h", "parquet").content).equals(_table(get(typed_parquet, "h").content))
    assert _table(get(done, "e", "parquet").content).equals(_table(get(typed_parquet, "e").content))


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


def test_an_output_that_does_not_read_back_is_409_saying_why(served: tuple[TestClient, JobService]) -> None:
    http, _ = served
    quoted = '.decl q(s: symbol)\nq("x\\"y").\n.output q(rfc4180=true)\n'
    job = submit(http, "alice-token", program=quoted)
    assert wait(http, "alice-token", job)["state"] == "SUCCEEDED"
    refused = call(http, "alice-token", "GET", f"/api/jobs/{job}/results/q", params={"format": "parquet"})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"job {job}'s q cannot be converted from csv: its CSV quotes symbols (rfc4180): submit the job with the format wanted"
    )
    # A symbol holding the delimiter: its CSV line has a column too many, said as such.
    tabbed = '.decl s(a: symbol, b: number)\ns("x\\ty", 1).\n.output s\n'
    job = submit(http, "alice-token", program=tabbed)
    assert wait(http, "alice-token", job)["state"] == "SUCCEEDED"
    refused = call(http, "alice-token", "GET", f"/api/jobs/{job}/results/s", params={"format": "parquet"})
    assert refused.status_code == 409 and "does not read back as s's columns" in refused.json()["detail"]


def test_a_log_offset_past_sqlites_integers_is_422_not_a_500(served: tuple[TestClient, JobService], done: str) -> None:
    """Found by the fuzz: an offset of 2**63 or more failed the SQLite query (OverflowError, 500)."""
    http, _ = served
    for path in (f"/api/jobs/{done}/logs", f"/api/jobs/{done}/logs/stream"):
        refused = call(http, "alice-token", "GET", path, params={"offset": 2**63})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "offset"], refused.text
    last = call(http, "alice-token", "GET", f"/api/jobs/{done}/logs", params={"offset": 2**63 - 1}).json()
    assert last == {"lines": [], "next": 2**63 - 1, "final": True}
    assert call(http, "alice-token", "GET", f"/api/jobs/{done}/logs/stream", params={"offset": 2**63 - 1}).text == ""
