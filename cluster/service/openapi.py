"""The refusals in the OpenAPI description: their body and the statuses each route answers, so
that the description lists every response a client may get (tests/test_service_rest.py checks
it does)."""

from typing import Any

from pydantic import BaseModel, Field


class Error(BaseModel):
    """Every refusal's body (FastAPI's own 422 aside, which lists the fields at fault)."""

    detail: str = Field(description="why, in one line")


_WHY = {
    400: "a request the service will not run (upload names, base64, #include, both facts and fact_dir)",
    401: "no or an unknown bearer token",
    403: "a path outside the service's roots",
    404: "no such job (another user's is as absent), or no such output relation",
    409: "the job has not SUCCEEDED, or its output cannot be converted to the format asked",
    410: "the output was removed since the job wrote it",
    413: "the request is larger than --max-request-size",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The refusals a route may answer, for its OpenAPI description: 401 on every route."""
    return {status: {"model": Error, "description": _WHY[status]} for status in (401, *statuses)}
