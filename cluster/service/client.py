"""``ServiceClient``: the job service from Python (what ``dask-datalog job`` uses).

from dask_datalog.cluster.service.client import ServiceClient
jobs = ServiceClient("http://127.0.0.1:8780", token)
job = jobs.submit("examples/reach.dl", facts="graph/")     # uploads graph/'s files
jobs.wait(job)["state"]; jobs.result(job, "path")           # SUCCEEDED; the CSV's bytes
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from dask_datalog.engine.errors import DatalogError

ADDRESS_ENV, TOKEN_ENV = "DASK_DATALOG_SERVICE", "DASK_DATALOG_TOKEN"
DEFAULT_ADDRESS = "http://127.0.0.1:8780"
DEFAULT_STATE = Path.home() / ".dask-datalog" / "service"  # serve's --state-dir default
FINAL = ("STOPPED", "SUCCEEDED", "FAILED")


class ServiceError(DatalogError):
    """The service refused a request (its status and its one-line reason), or is unreachable."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(None, message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.status))


def default_token() -> str | None:
    """$DASK_DATALOG_TOKEN, else the one token of the token file a local ``serve`` made."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    made = DEFAULT_STATE / "tokens.json"
    if made.is_file():
        tokens = json.loads(made.read_text()).get("tokens", {})
        if len(tokens) == 1:
            return str(next(iter(tokens)))
    return None


class ServiceClient:
    """The service at ``address`` (default $DASK_DATALOG_SERVICE, else http://127.0.0.1:8780)
    as ``token``'s user; ``verify``: a CA file (PEM) for an https service with a private CA."""

    def __init__(self, address: str | None = None, token: str | None = None, verify: str | bool = True, timeout: float = 30.0):
        self.address = (address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS).rstrip("/")
        token = token or default_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        context = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        self.http = httpx.Client(base_url=self.address, headers=headers, verify=context, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ServiceError(f"cannot reach the job service at {self.address}: {error}") from None
        _check(response)
        return response

    def submit(
        self,
        program: str | Path,
        facts: str | Path | None = None,
        fact_dir: str | None = None,
        output_dir: str | None = None,
        **options: Any,
    ) -> str:
        """Submit the program in file ``program``; its facts are the files of the local folder
        ``facts`` (uploaded) or the service-side folder ``fact_dir``; ``output_dir``: a
        service-side folder for the outputs; ``options``: ``SubmitRequest``'s other fields
        (format, macros, retries, timeout, memory_limit, checkpoint, checkpoint_every). The job's id."""
        path = Path(program)
        try:
            body: dict[str, Any] = {"program": path.read_text(), "program_name": str(program), **options}
            if facts is not None:
                body["facts"] = {
                    f.name: base64.b64encode(f.read_bytes()).decode() for f in sorted(Path(facts).iterdir()) if f.is_file()
                }
        except (OSError, UnicodeDecodeError) as error:
            raise ServiceError(
                f"cannot read {getattr(error, 'filename', None) or program}: {getattr(error, 'strerror', None) or error}"
            ) from None
        if fact_dir is not None:
            body["fact_dir"] = fact_dir
        if output_dir is not None:
            body["output_dir"] = output_dir
        return str(self._call("POST", "/api/jobs", json=body).json()["id"])

    def status(self, job: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/jobs/{job}").json())

    def list(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/jobs").json())

    def stop(self, job: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/jobs/{job}/stop").json())

    def logs(self, job: str, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        """A page of the log: ``lines``, ``next`` (the next page's offset), ``final``."""
        return dict(self._call("GET", f"/api/jobs/{job}/logs", params={"offset": offset, "limit": limit}).json())

    def follow(self, job: str, offset: int = 0) -> Iterator[str]:
        """The log's lines from ``offset`` as they are written, until the job ends."""
        try:
            with self.http.stream("GET", f"/api/jobs/{job}/logs/stream", params={"offset": offset}, timeout=None) as response:
                if response.is_error:
                    response.read()
                    _check(response)
                yield from response.iter_lines()
        except httpx.HTTPError as error:
            raise ServiceError(f"lost the job service at {self.address}: {error}") from None

    def wait(self, job: str, poll_s: float = 0.05, timeout: float | None = None) -> dict[str, Any]:
        """The job's record once it is final; a ServiceError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            record = self.status(job)
            if record["state"] in FINAL:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise ServiceError(f"job {job} is still {record['state']} after {timeout:g} s")
            time.sleep(poll_s)

    def result(self, job: str, relation: str, format: str | None = None) -> bytes:
        """The relation's output, as the job wrote it or converted to ``format`` (csv, parquet)."""
        params = {"format": format} if format else {}
        return self._call("GET", f"/api/jobs/{job}/results/{relation}", params=params).content

    def close(self) -> None:
        self.http.close()


def _check(response: httpx.Response) -> None:
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ServiceError(f"the job service answered {response.status_code}: {detail}", response.status_code)
