"""The CXRReportGen scoring service: request JSON -> backend -> response JSON, and its HTTP route.

`score` is the whole service as a function (no HTTP): decode and validate the request, decode
each row's images, run the backend, encode the answer. Rows whose images are identical go to the
backend together (one call, several contexts), so they share the image prefix. Every context is
grounded, as CXRReportGen's output always is.

`make_router` wraps `score` as `POST /score` for FastAPI (the Gradio app mounts it): access
check (`RouteAccess`: the API key as `Authorization: Bearer KEY` or `api-key: KEY`, or one of the
app's `--auth` credentials as HTTP Basic), a body size limit answered with 413 before the body is
read in full, and the blocking model call in a worker thread so the event loop keeps serving the UI.
Every error is a JSON body `{"error": {"message", "row", "column"}}`, never a plain-text 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from model_backend.backends.base import Backend, BackendError, PromptError
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

log = logging.getLogger(__name__)
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


def _row_context(row: ScoringRow, position: int) -> PromptContext:
    """The row's prompt context, named by the row's position (index values need not be distinct)."""
    return PromptContext(
        name=str(position),
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
        contexts = [_row_context(rows[p], p) for p in positions]
        for position, report in zip(positions, backend.generate(study, contexts), strict=True):
            reports[position] = report
    return [r for r in reports if r is not None]


def score(body: bytes | str | dict, backend: Backend, *, max_bytes: int = MAX_BYTES) -> tuple[int, list | dict]:
    """A scoring request -> (HTTP status, JSON answer): 200 with one `{"output": ...}` per row, else an error body."""
    rows: list[ScoringRow] = []
    try:
        rows = decode_request(body, max_bytes=max_bytes)
        reports = generate_rows(rows, backend)
    except ProtocolError as exc:
        return exc.status, error_body(exc)
    except PromptError as exc:
        position = int(exc.context_name) if (exc.context_name or "").isdigit() else None
        row = rows[position].index if position is not None and position < len(rows) else None
        column = "prior_image" if exc.field == "prior_frontal" else exc.field
        return 400, error_body(ProtocolError(str(exc), row=row, column=column))
    except BackendError as exc:
        log.warning("scoring: the backend failed: %s", exc)
        return 500, {"error": {"message": "the model failed on this request; see the server log", "row": None,
                               "column": None}}  # fmt: skip
    return 200, encode_response(reports)


@dataclass(frozen=True)
class RouteAccess:
    """Who may call the app's own HTTP routes: holders of `api_key` (Bearer / `api-key` header) and,
    when the UI has a login, the same users with HTTP Basic. Nobody configured = an open route."""

    api_key: str | None = None
    credentials: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the scoring API key is empty; give a key or None for an open endpoint")

    @property
    def open(self) -> bool:
        return self.api_key is None and not self.credentials

    def allows(self, request: Request) -> bool:
        """Constant-time checks of every presented credential (no early exit, so timing tells nothing)."""
        if self.open:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        results = []
        if self.api_key is not None:
            candidates = [request.headers.get("api-key", "")] + ([token.strip()] if scheme.lower() == "bearer" else [])
            results += [hmac.compare_digest(c.encode(), self.api_key.encode()) for c in candidates]
        if self.credentials and scheme.lower() == "basic":
            user, password = _basic_credentials(token.strip())
            results += [
                hmac.compare_digest(user.encode(), u.encode()) & hmac.compare_digest(password.encode(), p.encode())
                for u, p in self.credentials
            ]
        return any(results)

    def challenge(self) -> str:
        """What a 401 answer asks for."""
        schemes = (["Bearer"] if self.api_key is not None else []) + (["Basic"] if self.credentials else [])
        return ", ".join(f'{s} realm="cxr-review"' if s == "Basic" else s for s in schemes)

    def refusal(self) -> str:
        ways = []
        if self.api_key is not None:
            ways.append("the API key as 'Authorization: Bearer KEY' or 'api-key: KEY'")
        if self.credentials:
            ways.append("your login as HTTP Basic ('curl -u USER:PASS')")
        return "missing or wrong API key or login: send " + " or ".join(ways)


def _basic_credentials(token: str) -> tuple[str, str]:
    try:
        user, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return user, password


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


def make_router(backend: Backend, access: RouteAccess | str | None, *, max_bytes: int = MAX_BYTES) -> APIRouter:
    """`POST /score` speaking the CXRReportGen protocol; an open `RouteAccess` (or None) is for loopback only.

    A plain string is taken as the API key."""
    if not isinstance(access, RouteAccess):
        access = RouteAccess(api_key=access)
    router = APIRouter()

    @router.post("/score")
    async def score_route(request: Request) -> JSONResponse:
        if not access.allows(request):
            log.warning("scoring: refused a request without valid credentials from %s", _client(request))
            response = _error(401, access.refusal())
            response.headers["WWW-Authenticate"] = access.challenge()
            return response
        body = await _read_body(request, max_bytes)
        if body is None:
            return _error(413, f"the request body is larger than the limit of {max_bytes} bytes")
        try:
            status, payload = await run_in_threadpool(score, body, backend, max_bytes=max_bytes)
        except Exception:  # a bug must still answer JSON, and the server keeps serving
            log.exception("scoring: unexpected failure")
            return _error(500, "internal error while scoring; see the server log")
        return JSONResponse(payload, status_code=status)

    return router


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name to listen on) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client(request: Request) -> str:
    return request.client.host if request.client else "an unknown client"
