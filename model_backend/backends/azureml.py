"""A remote CXRReportGen scoring endpoint: Azure ML online endpoint, `/score` of this app or of
`python -m model_backend.serve` (Ray Serve).

Each context of a study becomes one request row (frontal image, plus lateral / prior when the
context uses them, plus its text sections); up to `MAX_ROWS` rows go in one POST. Images travel
as PNG of the study's 8-bit display rendition; the endpoint normalises them again as MAIRA-2
does. The key comes from an environment variable (never from the command line) and is sent as
`Authorization: Bearer KEY`; Azure ML endpoints always need one, a self-hosted endpoint may be
open (`key_required=False`: no key, no header). 429 and 5xx answers and connection failures are
retried with exponential backoff, honouring `Retry-After`.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import os
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

import cv2
import requests

from model_backend.backends.base import BackendError, UnsupportedTaskError
from model_backend.protocol import MAX_ROWS, ProtocolError, ScoringRow, decode_response, encode_request
from model_backend.types import BackendInfo, Finding, PromptContext, Report, Study, XrayImage

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_WAIT = 60.0
CONNECT_TIMEOUT = 10.0


class AzureMLBackend:
    """CXRReportGen over HTTP; boxes come back in the model frame, exactly as the endpoint sends them."""

    def __init__(
        self,
        url: str,
        *,
        api_key_env: str = "AZUREML_API_KEY",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        name: str = "azureml",
        key_required: bool = True,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BackendError(f"{name}: expected an http(s) scoring URL, got {url!r}")
        key = os.environ.get(api_key_env, "").strip()
        if not key and key_required:
            raise BackendError(f"{name}: set the environment variable {api_key_env} to the endpoint's key")
        self.url = url
        self.api_key_env = api_key_env
        self.has_key = bool(key)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session = requests.Session()
        self._session.headers.update({"Content-Type": "application/json"})
        if key:
            self._session.headers.update({"Authorization": f"Bearer {key}"})
        self.info = BackendInfo(
            name=name,
            model_id=f"{parts.scheme}://{parts.netloc}{parts.path}",
            device="remote",
            dtype="remote",
            can_ground_phrases=False,
        )

    def generate(self, study: Study, contexts: Sequence[PromptContext]) -> list[Report]:
        """One report per context; contexts are sent as rows, `MAX_ROWS` per request."""
        png: dict[str, bytes] = {}
        rows = [self._row(index, study, context, png) for index, context in enumerate(contexts)]
        reports: list[Report] = []
        for start in range(0, len(rows), MAX_ROWS):
            chunk = rows[start : start + MAX_ROWS]
            began = time.perf_counter()
            outputs = self._post(chunk)
            elapsed = time.perf_counter() - began
            for context, (raw, findings) in zip(contexts[start : start + MAX_ROWS], outputs, strict=True):
                reports.append(self._report(study, context, raw, findings, elapsed))
        return reports

    def stream(self, study: Study, context: PromptContext) -> Iterator[Report]:
        """The endpoint answers whole reports only, so the one report is the final one."""
        yield self.generate(study, [context])[0]

    def prefetch(self, study: Study) -> None:
        """Nothing to warm here: the endpoint keeps no state between requests."""

    def ground_phrase(self, study: Study, phrase: str) -> Report:
        raise BackendError("the CXRReportGen endpoint has no phrase grounding; use a local MAIRA-2 model for that")

    def complete_boxes(self, study: Study, findings: Sequence[str], contexts: Sequence[PromptContext]) -> list[Report]:
        raise UnsupportedTaskError(
            f"box completion is not supported by the {self.info.name} backend: the CXRReportGen endpoint writes whole "
            "reports and cannot be given the sentences; use a local MAIRA-2 model for that"
        )

    # ------------------------------------------------------------------ request
    def _row(self, index: int, study: Study, context: PromptContext, png: dict[str, bytes]) -> ScoringRow:
        lateral = study.lateral if context.use_lateral else None
        prior = study.prior_frontal if context.use_prior else None
        return ScoringRow(
            index=index,
            frontal_image=_png(study.frontal, png),
            lateral_image=None if lateral is None else _png(lateral, png),
            prior_image=None if prior is None else _png(prior, png),
            indication=context.indication,
            technique=context.technique,
            comparison=context.comparison,
            prior_report=context.prior_report,
        )

    def _post(self, rows: list[ScoringRow]) -> list[tuple[str, list]]:
        """POST one request with retries; returns (raw output text, decoded findings) per row."""
        body = json.dumps(encode_request(rows)).encode()
        for attempt in itertools.count():
            last_try = attempt >= self.retries
            try:
                response = self._session.post(self.url, data=body, timeout=(CONNECT_TIMEOUT, self.timeout))
            except requests.exceptions.ReadTimeout as exc:
                raise BackendError(f"{self.info.name}: the endpoint did not answer within {self.timeout:g} s") from exc
            except requests.exceptions.ConnectionError as exc:
                if last_try:
                    raise BackendError(
                        f"{self.info.name}: cannot reach {self.info.model_id} after {attempt + 1} attempts ({exc})"
                    ) from exc
                time.sleep(self.backoff * 2**attempt)
                continue
            if response.status_code in RETRY_STATUSES and not last_try:
                wait = _retry_after(response)
                time.sleep(self.backoff * 2**attempt if wait is None else wait)
                continue
            return self._parse(response, rows)

    def _parse(self, response: requests.Response, rows: list[ScoringRow]) -> list[tuple[str, list]]:
        status = response.status_code
        if status in (401, 403):
            if not self.has_key:
                raise BackendError(
                    f"{self.info.name}: the endpoint wants a key (HTTP {status}); set ${self.api_key_env} to it"
                )
            raise BackendError(
                f"{self.info.name}: the endpoint rejected the key from ${self.api_key_env} (HTTP {status}); "
                "check the key and that it belongs to this endpoint"
            )
        if status != 200:
            raise BackendError(f"{self.info.name}: the endpoint answered HTTP {status}: {_error_message(response)}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise BackendError(f"{self.info.name}: the endpoint's answer is not JSON: {response.text[:200]!r}") from exc
        if not isinstance(payload, list):
            raise BackendError(
                f"{self.info.name}: unexpected answer from the endpoint: expected a JSON list, got {payload!r:.200}"
            )
        try:
            decoded = decode_response(payload)
        except ProtocolError as exc:
            raise BackendError(f"{self.info.name}: unexpected answer from the endpoint: {exc}") from exc
        if len(decoded) != len(rows):
            raise BackendError(f"{self.info.name}: sent {len(rows)} rows but the endpoint answered {len(decoded)}")
        raw = [item["output"] if isinstance(item["output"], str) else json.dumps(item["output"]) for item in payload]
        return list(zip(raw, decoded, strict=True))

    def _report(self, study: Study, context: PromptContext, raw: str, findings: list, elapsed: float) -> Report:
        warnings = () if context.grounded else ("the CXRReportGen endpoint always writes a grounded report",)
        return Report(
            study_id=study.study_id,
            context=context,
            findings=tuple(Finding(text, tuple(boxes) if boxes else None) for text, boxes in findings),
            image_width=study.frontal.width,
            image_height=study.frontal.height,
            raw_text=raw,
            complete=True,
            backend=self.info,
            images_key=study.images_key(),
            warnings=warnings,
            timings=(("seconds", round(elapsed, 4)),),
        )


def _png(image: XrayImage, cache: dict[str, bytes]) -> bytes:
    """PNG bytes of the image's 8-bit display rendition (encoded once per call)."""
    if image.content_key not in cache:
        ok, buffer = cv2.imencode(".png", image.display)
        if not ok:
            raise BackendError("could not encode the image as PNG for the scoring endpoint")
        cache[image.content_key] = buffer.tobytes()
    return cache[image.content_key]


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header (delta seconds or HTTP date), capped at `MAX_RETRY_WAIT`."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_WAIT)


def _error_message(response: requests.Response) -> str:
    """The `error.message` of a JSON error body, else the start of the text."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:200] or response.reason
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message", payload["error"]))
    return json.dumps(payload)[:200]
