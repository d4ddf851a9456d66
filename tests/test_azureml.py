"""AzureML backend against a scripted scoring server on loopback: request form, retries, errors, chunking.

The real-endpoint round trip (this app's own `/score` served by uvicorn) is in test_scoring.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from model_backend.backends import load_backend
from model_backend.backends.azureml import AzureMLBackend
from model_backend.backends.base import BackendError
from model_backend.images import load_image_bytes
from model_backend.protocol import decode_request
from model_backend.types import Box, PromptContext, Study
from tests.conftest import random_study, xray_from_array

KEY = "test-key-123"
ENV = "TEST_AZUREML_KEY"


@dataclass
class Answer:
    """A scripted HTTP answer; `body=None` echoes one finding per request row."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    """A request as the server received it."""

    headers: dict[str, str]
    body: dict
    at: float


class ScriptedServer:
    """ThreadingHTTPServer on 127.0.0.1 answering POSTs from a script (last answer repeats)."""

    def __init__(self) -> None:
        self.script: list[Answer] = [Answer()]
        self.seen: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                server.seen.append(Seen(dict(self.headers), body, time.monotonic()))
                answer = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                time.sleep(answer.delay)
                payload = answer.body if answer.body is not None else echo(body)
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def echo(request: dict) -> bytes:
    """One finding per row naming the row index and its indication, with a model-frame box."""
    data = request["input_data"]
    column = data["columns"].index("indication") if "indication" in data["columns"] else None
    out = []
    for index, row in zip(data["index"], data["data"], strict=True):
        text = f"row {index}: {row[column] if column is not None else None}"
        out.append({"output": json.dumps([[text, [[0.105, 0.205, 0.505, 0.605]]], ["No effusion.", None]])})
    return json.dumps(out).encode()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    yield srv
    srv.close()


@pytest.fixture
def make_backend(monkeypatch: pytest.MonkeyPatch, server: ScriptedServer) -> Callable[..., AzureMLBackend]:
    monkeypatch.setenv(ENV, KEY)

    def make(**options) -> AzureMLBackend:
        return AzureMLBackend(server.url, api_key_env=ENV, **{"backoff": 0.05, **options})

    return make


@pytest.fixture
def study() -> Study:
    """Images big enough for `load_image_bytes` (sides >= 64), as a server decodes them."""
    rng = np.random.default_rng(3)
    frontal, lateral, prior = (xray_from_array(rng.integers(0, 256, shape)) for shape in ((90, 80), (70, 96), (80, 66)))
    return Study("s3", frontal, lateral, prior, random_study(3).context)


def test_request_form_and_report_mapping(server: ScriptedServer, make_backend, study: Study) -> None:
    full = replace(study.context, name="full")
    frontal_only = PromptContext(name="frontal", indication="Cough.", use_lateral=False, use_prior=False)
    reports = make_backend().generate(study, [full, frontal_only])
    (seen,) = server.seen
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    rows = decode_request(seen.body)
    assert [r.indication for r in rows] == ["Dyspnea.", "Cough."]
    assert (rows[0].lateral_image is not None, rows[0].prior_image is not None) == (True, True)
    assert (rows[1].lateral_image, rows[1].prior_image) == (None, None)
    assert rows[0].technique == "PA and lateral views." and rows[1].technique is None
    for sent, image in ((rows[0].frontal_image, study.frontal), (rows[0].lateral_image, study.lateral)):
        assert sent.startswith(b"\x89PNG") and load_image_bytes(sent) == image  # same display pixels
    assert [r.findings[0].text for r in reports] == ["row 0: Dyspnea.", "row 1: Cough."]
    assert reports[0].findings[0].model_boxes == (Box(0.105, 0.205, 0.505, 0.605),)
    assert reports[0].findings[1].model_boxes is None
    assert reports[1].context == frontal_only
    assert (reports[0].image_width, reports[0].image_height) == (study.frontal.width, study.frontal.height)
    assert reports[0].backend.name == "azureml" and reports[0].backend.model_id == server.url
    assert reports[0].complete and reports[0].timing("seconds") is not None


def test_more_than_ten_contexts_are_chunked(server: ScriptedServer, make_backend, study: Study) -> None:
    contexts = [PromptContext(name=f"c{i}", indication=f"Reason {i}.") for i in range(12)]
    reports = make_backend().generate(study, contexts)
    assert [len(s.body["input_data"]["data"]) for s in server.seen] == [10, 2]
    assert [r.context.name for r in reports] == [c.name for c in contexts]
    assert reports[11].findings[0].text == "row 11: Reason 11."  # row index = position among all contexts


def test_429_then_200_honours_retry_after(server: ScriptedServer, make_backend, study: Study) -> None:
    server.script = [Answer(429, b'{"error": "slow down"}', {"Retry-After": "1"}), Answer()]
    (report,) = make_backend().generate(study, [study.context])
    assert len(server.seen) == 2
    assert server.seen[1].at - server.seen[0].at >= 0.95
    assert report.findings[0].text == "row 0: Dyspnea."


def test_5xx_is_retried_with_backoff_then_gives_up(server: ScriptedServer, make_backend, study: Study) -> None:
    server.script = [Answer(503, b"busy"), Answer(502, b"busy"), Answer()]
    assert make_backend(retries=3).generate(study, [study.context])[0].findings
    assert len(server.seen) == 3
    server.seen.clear()
    server.script = [Answer(500, b'{"error": {"message": "CUDA out of memory"}}')]
    with pytest.raises(BackendError, match="HTTP 500: CUDA out of memory"):
        make_backend(retries=2).generate(study, [study.context])
    assert len(server.seen) == 3


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_is_not_retried(server: ScriptedServer, make_backend, study: Study, status: int) -> None:
    server.script = [Answer(status, b'{"error": "invalid key"}')]
    with pytest.raises(BackendError, match=rf"the endpoint rejected the key from \${ENV} \(HTTP {status}\)"):
        make_backend().generate(study, [study.context])
    assert len(server.seen) == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (Answer(200, b"<html>gateway</html>"), "answer is not JSON"),
        (Answer(200, b'{"output": "x"}'), "unexpected answer"),
        (Answer(200, b"[]"), "sent 1 rows but the endpoint answered 0"),
        (Answer(400, b'{"error": {"message": "row 0, column \'frontal_image\': bad"}}'), "HTTP 400: row 0"),
    ],
)
def test_bad_answers_are_clear_errors(server, make_backend, study: Study, answer: Answer, message: str) -> None:
    server.script = [answer]
    with pytest.raises(BackendError, match=message):
        make_backend().generate(study, [study.context])


def test_timeout(server: ScriptedServer, make_backend, study: Study) -> None:
    server.script = [Answer(delay=1.5)]
    with pytest.raises(BackendError, match=r"did not answer within 0\.3 s"):
        make_backend(timeout=0.3).generate(study, [study.context])


def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, study: Study) -> None:
    monkeypatch.setenv(ENV, KEY)
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = AzureMLBackend(f"http://127.0.0.1:{port}/score", api_key_env=ENV, retries=2, backoff=0.01)
    with pytest.raises(BackendError, match=r"cannot reach .* after 3 attempts"):
        backend.generate(study, [study.context])


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(BackendError, match=f"set the environment variable {ENV}"):
        AzureMLBackend("https://example.invalid/score", api_key_env=ENV)
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(BackendError, match="expected an http"):
        AzureMLBackend("ftp://example.invalid/score", api_key_env=ENV)


def test_stream_phrase_grounding_and_ungrounded_contexts(server: ScriptedServer, make_backend, study: Study) -> None:
    backend = make_backend()
    assert not backend.info.can_ground_phrases
    with pytest.raises(BackendError, match="no phrase grounding"):
        backend.ground_phrase(study, "effusion")
    (report,) = list(backend.stream(study, replace(study.context, grounded=False)))
    assert any("always writes a grounded report" in w for w in report.warnings)


def test_load_backend_dispatches_azureml_specs(monkeypatch: pytest.MonkeyPatch, server: ScriptedServer) -> None:
    monkeypatch.setenv("AZUREML_API_KEY", KEY)
    backend = load_backend(f"azureml:{server.url}")
    assert isinstance(backend, AzureMLBackend) and backend.info.model_id == server.url
