"""The CXRReportGen scoring service: request JSON -> backend -> response JSON, and its HTTP route.

`score` is the whole service as a function (no HTTP): decode and validate the request, decode
each row's images, run the backend, encode the answer. Rows whose images are identical go to the
backend together (one call, several contexts), so they share the image prefix. Every context is
grounded, as CXRReportGen's output always is.

`make_router` wraps `score` as `POST /score` for FastAPI (the Gradio app mounts it): API key
check (`Authorization: Bearer KEY` or `api-key: KEY`), a body size limit answered with 413
before the body is read in full, and the blocking model call in a worker thread so the event
loop keeps serving the UI.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from model_backend.backends.base import Backend, BackendError
from model_backend.images import ImageLoadError, load_image_bytes
from model_backend.protocol import (
    MAX_BYTES,
    ProtocolError,
    ScoringRow,
    decode_request,
    encode_response,
    error_body,
)
from model_backend.types import PromptContext, Report, Study, XrayImage

_IMAGE_FIELDS = (("frontal_image", "frontal"), ("lateral_image", "lateral"), ("prior_image", "prior_frontal"))


def _row_images(row: ScoringRow) -> dict[str, XrayImage | None]:
    images: dict[str, XrayImage | None] = {}
    for column, field_name in _IMAGE_FIELDS:
        data = getattr(row, column)
        try:
            images[field_name] = None if data is None else load_image_bytes(data, column)
        except ImageLoadError as exc:
            raise ProtocolError(exc.message, row=row.index, column=column) from exc
    return images


def _row_context(row: ScoringRow) -> PromptContext:
    return PromptContext(
        name=str(row.index),
        indication=row.indication,
        technique=row.technique,
        comparison=row.comparison,
        prior_report=row.prior_report,
        grounded=True,
    )


def generate_rows(rows: Sequence[ScoringRow], backend: Backend) -> list[Report]:
    """One report per row, in order; rows with the same images share one backend call.

    Raises `ProtocolError` for an image that cannot be decoded and `BackendError` from the backend.
    """
    groups: dict[str, tuple[Study, list[int]]] = {}
    for position, row in enumerate(rows):
        study = Study(study_id=str(row.index), **_row_images(row))
        key = study.images_key()
        if key not in groups:
            groups[key] = (study, [])
        groups[key][1].append(position)
    reports: list[Report | None] = [None] * len(rows)
    for study, positions in groups.values():
        contexts = [_row_context(rows[p]) for p in positions]
        for position, report in zip(positions, backend.generate(study, contexts), strict=True):
            reports[position] = report
    return [r for r in reports if r is not None]


def score(body: bytes | str | dict, backend: Backend, *, max_bytes: int = MAX_BYTES) -> tuple[int, list | dict]:
    """A scoring request -> (HTTP status, JSON answer): 200 with one `{"output": ...}` per row, else an error body."""
    try:
        rows = decode_request(body, max_bytes=max_bytes)
        reports = generate_rows(rows, backend)
    except ProtocolError as exc:
        return exc.status, error_body(exc)
    except BackendError as exc:
        return 500, {"error": {"message": f"the model failed: {exc}", "row": None, "column": None}}
    return 200, encode_response(reports)


def _authorised(request: Request, api_key: str) -> bool:
    expected = api_key.encode()
    bearer = request.headers.get("authorization", "")
    scheme, _, token = bearer.partition(" ")
    candidates = [request.headers.get("api-key", "")]
    if scheme.lower() == "bearer":
        candidates.append(token.strip())
    # Compare every candidate (no early exit) so timing does not tell which header was checked.
    results = [hmac.compare_digest(c.encode(), expected) for c in candidates]
    return any(results)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "row": None, "column": None}}, status_code=status)


async def _read_body(request: Request, max_bytes: int) -> bytes | None:
    """The request body, or None as soon as it grows past `max_bytes`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def make_router(backend: Backend, api_key: str | None, *, max_bytes: int = MAX_BYTES) -> APIRouter:
    """`POST /score` speaking the CXRReportGen protocol; `api_key=None` leaves it open (loopback use only)."""
    if api_key is not None and not api_key.strip():
        raise ValueError("the scoring API key is empty; give a key or None for an open endpoint")
    router = APIRouter()

    @router.post("/score")
    async def score_route(request: Request) -> JSONResponse:
        if api_key is not None and not _authorised(request, api_key):
            response = _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'api-key: KEY'")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        body = await _read_body(request, max_bytes)
        if body is None:
            return _error(413, f"the request body is larger than the limit of {max_bytes} bytes")
        status, payload = await run_in_threadpool(score, body, backend, max_bytes=max_bytes)
        return JSONResponse(payload, status_code=status)

    return router
