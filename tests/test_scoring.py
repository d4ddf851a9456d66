"""`POST /score` on a real uvicorn server (loopback) with the tiny local model behind it.

Covers the protocol both ways: requests of 1 / 10 / 11 rows, all image columns, each validation
error as JSON with a 4xx status, the API key, the body limit, the AzureML backend reproducing
the local backend's findings through this endpoint, and a second request answered while the
first is still generating.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests
import uvicorn
from fastapi import FastAPI
from PIL import Image

from model_backend.backends.azureml import AzureMLBackend
from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.images import load_image_bytes
from model_backend.protocol import decode_output, report_to_output
from model_backend.scoring import RouteAccess, make_router, score
from model_backend.types import PromptContext, Report, Study
from tests.conftest import TINY_MAX_NEW_TOKENS

KEY = "s3cret-key"
SMALL_LIMIT = 4000


def png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, width)[None, :] + rng.integers(0, 60, (height, width))
    buffer = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


FRONTAL, LATERAL, PRIOR = png(100, 80, 1), png(72, 90, 2), png(90, 96, 3)


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("utf-8")


def request_body(columns: Sequence[str], data: list[list], index: list | None = None) -> dict:
    input_data: dict = {"columns": list(columns), "data": data}
    if index is not None:
        input_data["index"] = index
    return {"input_data": input_data, "params": {}}


class GatedBackend:
    """The tiny local backend behind a gate: `generate` waits until the test opens it."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.info = inner.info
        self.entered = threading.Event()
        self.gate = threading.Event()

    def generate(self, study: Study, contexts: Sequence[PromptContext]) -> list[Report]:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.generate(study, contexts)


@pytest.fixture(scope="module")
def backend(tiny_snapshot: Path) -> LocalBackend:
    budget = TINY_MAX_NEW_TOKENS
    return LocalBackend(str(tiny_snapshot), device="cpu", settings=GenerationSettings(budget, budget, budget))


@pytest.fixture(scope="module")
def gated(backend: LocalBackend) -> GatedBackend:
    return GatedBackend(backend)


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """`app` on a real uvicorn server on a free loopback port, for the duration of the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def base_url(backend: LocalBackend, gated: GatedBackend) -> Iterator[str]:
    app = FastAPI()
    app.include_router(make_router(backend, KEY))
    app.include_router(make_router(backend, KEY, max_bytes=SMALL_LIMIT), prefix="/small")
    app.include_router(make_router(gated, KEY), prefix="/gated")  # type: ignore[arg-type]
    with serve(app) as url:
        yield url


def post(url: str, body: dict | bytes, headers: dict | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers={"Authorization": f"Bearer {KEY}", **(headers or {})}, timeout=60)


def local_outputs(backend: LocalBackend, study: Study, contexts: list[PromptContext]) -> list[list]:
    return [report_to_output(r) for r in backend.generate(study, contexts)]


def test_one_row(base_url: str, backend: LocalBackend) -> None:
    answer = post(f"{base_url}/score", request_body(["frontal_image", "indication"], [[b64(FRONTAL), "Cough."]]))
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()
    assert isinstance(item["output"], str)  # the JSON-encoded string form, as the hosted model writes
    study = Study("x", load_image_bytes(FRONTAL))
    expected = local_outputs(backend, study, [PromptContext(indication="Cough.", grounded=True)])
    assert json.loads(item["output"]) == expected[0]
    decode_output(item["output"])


def test_ten_rows_keep_their_order(base_url: str, backend: LocalBackend) -> None:
    indications = [f"Reason {i}." if i % 3 else None for i in range(10)]
    images = [FRONTAL if i % 2 else PRIOR for i in range(10)]
    body = request_body(
        ["frontal_image", "indication"],
        [[b64(img), ind] for img, ind in zip(images, indications, strict=True)],
        index=[f"r{i}" for i in range(10)],
    )
    answer = post(f"{base_url}/score", body)
    assert answer.status_code == 200, answer.text
    outputs = [json.loads(item["output"]) for item in answer.json()]
    assert len(outputs) == 10
    for i in (0, 1, 5, 9):
        study = Study("x", load_image_bytes(images[i]))
        assert outputs[i] == local_outputs(backend, study, [PromptContext(indication=indications[i])])[0]


def test_frontal_lateral_prior_and_all_sections(base_url: str, backend: LocalBackend) -> None:
    columns = ["frontal_image", "lateral_image", "prior_image", "indication", "technique", "comparison", "prior_report"]
    row = [b64(FRONTAL), b64(LATERAL), b64(PRIOR), "Dyspnea.", "PA and lateral.", "Prior from 2020.", "Clear lungs."]
    answer = post(f"{base_url}/score", request_body(columns, [row]))
    assert answer.status_code == 200, answer.text
    study = Study("x", load_image_bytes(FRONTAL), load_image_bytes(LATERAL), load_image_bytes(PRIOR))
    context = PromptContext(
        indication="Dyspnea.", technique="PA and lateral.", comparison="Prior from 2020.", prior_report="Clear lungs."
    )
    assert json.loads(answer.json()[0]["output"]) == local_outputs(backend, study, [context])[0]


NOT_IMAGE = b64(b"hello, this is text and not a radiograph")
TRUNCATED_PNG = b64(FRONTAL[:200])


@pytest.mark.parametrize(
    ("body", "row", "column", "message"),
    [
        (request_body(["frontal_image"], [["@@not base64@@"]]), 0, "frontal_image", "invalid base64"),
        (request_body(["frontal_image"], [[NOT_IMAGE]], index=["a"]), "a", "frontal_image", "not a PNG, JPEG"),
        (request_body(["frontal_image"], [[TRUNCATED_PNG]]), 0, "frontal_image", "truncated or corrupt"),
        (request_body(["frontal_image"], [[b64(png(40, 30, 4))]]), 0, "frontal_image", "at least 64 pixels"),
        (request_body(["frontal_image", "lateral_image"], [[b64(FRONTAL), NOT_IMAGE]]), 0, "lateral_image", "PNG"),
        (request_body(["frontal_image", "colour"], [[b64(FRONTAL), "x"]]), None, "colour", "unknown column"),
        (request_body(["indication"], [["x"]]), None, "frontal_image", "required"),
        (request_body(["frontal_image"], [[""]]), 0, "frontal_image", "frontal image is empty"),
        (request_body(["frontal_image", "indication"], [[b64(FRONTAL)]]), 0, None, "1 cells for 2 columns"),
        (request_body(["frontal_image", "indication"], [[b64(FRONTAL), 5]]), 0, "indication", "expected text"),
        (request_body(["frontal_image"], []), None, None, "no rows"),
        (request_body(["frontal_image"], [[b64(FRONTAL)]] * 11), None, None, "11 rows, at most 10 per request"),
        ({"data": []}, None, None, "expected a JSON object"),
        (b"{not json", None, None, "not valid JSON"),
    ],
)
def test_validation_errors_name_row_and_column(base_url: str, body, row, column, message: str) -> None:
    answer = post(f"{base_url}/score", body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert message in error["message"]
    assert (error["row"], error["column"]) == (row, column)


def test_oversized_bodies_get_413(base_url: str) -> None:
    big = request_body(["frontal_image"], [[b64(FRONTAL)]])
    assert len(json.dumps(big)) > SMALL_LIMIT
    answer = post(f"{base_url}/small/score", big)
    assert answer.status_code == 413 and "larger than the limit" in answer.json()["error"]["message"]
    chunks = iter([json.dumps(big).encode()[:3000], json.dumps(big).encode()[3000:]])  # no Content-Length
    answer = requests.post(f"{base_url}/small/score", data=chunks, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 413
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))).save(buffer, format="PNG")
    small = request_body(["frontal_image"], [[b64(buffer.getvalue())]])
    assert len(json.dumps(small)) < SMALL_LIMIT
    assert post(f"{base_url}/small/score", small).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"api-key": "nope"}],
)
def test_missing_or_wrong_key_is_401(base_url: str, headers: dict) -> None:
    body = json.dumps(request_body(["frontal_image"], [[b64(FRONTAL)]]))
    answer = requests.post(f"{base_url}/score", data=body, headers=headers, timeout=30)
    assert answer.status_code == 401
    assert "API key" in answer.json()["error"]["message"]
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_api_key_header_is_accepted(base_url: str) -> None:
    body = json.dumps(request_body(["frontal_image"], [[b64(FRONTAL)]]))
    assert requests.post(f"{base_url}/score", data=body, headers={"api-key": KEY}, timeout=60).status_code == 200


def test_azureml_backend_reproduces_local_findings(
    base_url: str, backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SCORING_KEY", KEY)
    remote = AzureMLBackend(f"{base_url}/score", api_key_env="TEST_SCORING_KEY")
    study = Study(
        "s1",
        load_image_bytes(FRONTAL),
        load_image_bytes(LATERAL),
        load_image_bytes(PRIOR),
        PromptContext(indication="Dyspnea.", technique="PA and lateral.", prior_report="Clear lungs."),
    )
    contexts = [
        replace(study.context, name="full"),
        PromptContext(name="frontal", indication="Fever.", use_lateral=False, use_prior=False),
    ]
    remote_reports = remote.generate(study, contexts)
    local_reports = backend.generate(study, contexts)
    assert [r.findings for r in remote_reports] == [r.findings for r in local_reports]
    assert all(r.findings for r in remote_reports)
    assert remote_reports[0].backend.name == "azureml"


def test_second_request_answers_while_the_first_is_generating(base_url: str, gated: GatedBackend) -> None:
    body = request_body(["frontal_image"], [[b64(FRONTAL)]])
    first: dict = {}
    thread = threading.Thread(target=lambda: first.setdefault("answer", post(f"{base_url}/gated/score", body)))
    thread.start()
    try:
        assert gated.entered.wait(30), "the first request never reached the backend"
        started = time.monotonic()
        second = post(f"{base_url}/score", body)
        assert second.status_code == 200 and time.monotonic() - started < 20
        assert thread.is_alive() and "answer" not in first  # the first one is still waiting at the gate
    finally:
        gated.gate.set()
        thread.join(60)
    assert first["answer"].status_code == 200
    assert first["answer"].json() == second.json()


def test_score_function_without_http(backend: LocalBackend) -> None:
    status, payload = score(json.dumps(request_body(["frontal_image"], [[b64(FRONTAL)]])).encode(), backend)
    assert status == 200 and len(payload) == 1
    status, payload = score(b"[]", backend)
    assert status == 400 and "input_data" in payload["error"]["message"]


def test_empty_api_key_is_refused(backend: LocalBackend) -> None:
    with pytest.raises(ValueError, match="API key is empty"):
        make_router(backend, " ")


def random_text(n_chars: int, seed: int = 0) -> str:
    """Text that tokenises to about one token per character with the tiny tokenizer."""
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789 .,;"), n_chars))


@pytest.mark.parametrize(
    ("size", "message"),
    [(1_000_000, "1,000,000 characters long; the limit is 10,000"), (40_000, "40,000 characters long")],
)
def test_huge_indications_are_a_fast_400_and_the_server_keeps_serving(base_url: str, size: int, message: str) -> None:
    body = request_body(["frontal_image", "indication"], [[b64(FRONTAL), "x" * size]], index=["big"])
    started = time.monotonic()
    answer = post(f"{base_url}/score", body)
    assert answer.status_code == 400
    assert time.monotonic() - started < 10  # refused before any model work (a loose bound: shared machine)
    error = answer.json()["error"]
    assert message in error["message"] and (error["row"], error["column"]) == ("big", "indication")
    normal = post(f"{base_url}/score", request_body(["frontal_image"], [[b64(FRONTAL)]]))
    assert normal.status_code == 200


def test_a_prompt_past_the_models_positions_is_a_400_naming_the_longest_section(base_url: str) -> None:
    columns = ["frontal_image", "indication", "technique"]
    long_text = random_text(9_000)  # under the character cap, but ~8,600 tokens > 4,096 positions
    body = request_body(columns, [[b64(FRONTAL), "Cough.", None], [b64(FRONTAL), "Cough.", long_text]], ["ok", "x"])
    answer = post(f"{base_url}/score", body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["row"], error["column"]) == ("x", "technique")
    assert "4,096 positions" in error["message"] and "technique, is 9,000 characters" in error["message"]


def test_the_generation_budget_never_runs_past_the_models_positions(tiny_snapshot: Path) -> None:
    backend = LocalBackend(str(tiny_snapshot), device="cpu", settings=GenerationSettings(10_000, 10_000, 10_000))
    study = Study("s", load_image_bytes(FRONTAL))
    context = PromptContext(indication=random_text(3_900))
    room = backend.max_positions - len(backend._reporting_prompt(study, context).token_ids)
    assert 32 <= room < 400
    (report,) = backend.generate(study, [context])
    assert report.timing("new_tokens") == room  # the random model never stops by itself: it is cut exactly there
    assert not report.complete


DEEP = "[" * 1200 + "]" * 1200
SURROGATE = "\\ud800"


@pytest.mark.parametrize(
    ("raw", "row", "column", "message"),
    [
        ('{"input_data": {"columns": ["frontal_image"], "data": [[' + DEEP + "]]}}", None, None, "nested too deeply"),
        (
            '{"input_data": {"columns": ["frontal_image", "indication"], "data": [["IMG", ' + "9" * 5000 + "]]}}",
            0, "indication", "an integer of 5000 digits",
        ),
        (
            '{"input_data": {"columns": ["frontal_image"], "index": [' + "7" * 4400 + '], "data": [["IMG"]]}}',
            None, None, "an integer of 4400 digits",
        ),
        (
            '{"input_data": {"columns": ["frontal_image", "indication"], "data": [["IMG", "a' + SURROGATE + 'b"]]}}',
            0, "indication", "lone surrogate",
        ),
        (
            '{"input_data": {"columns": ["frontal_image"], "index": ["r' + SURROGATE + '"], "data": [["IMG"]]}}',
            None, None, "index strings must be valid text",
        ),
        (
            '{"input_data": {"columns": ["frontal_image", "c' + SURROGATE + '"], "data": [["IMG", "x"]]}}',
            None, "c\\ud800", "unknown column",
        ),
    ],
)  # fmt: skip
def test_hostile_bodies_get_a_json_400(base_url: str, raw: str, row, column, message: str) -> None:
    answer = post(f"{base_url}/score", raw.replace("IMG", b64(FRONTAL).replace("\n", "")).encode())
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert message in error["message"] and (error["row"], error["column"]) == (row, column)


def test_login_credentials_open_the_route_as_http_basic(backend: LocalBackend) -> None:
    app = FastAPI()
    app.include_router(make_router(backend, RouteAccess(credentials=(("alice", "pw:1"), ("bob", "x")))))
    with serve(app) as url:
        body = json.dumps(request_body(["frontal_image"], [[b64(FRONTAL)]]))
        refused = requests.post(f"{url}/score", data=body, timeout=30)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Basic realm="cxr-review"'
        assert "HTTP Basic" in refused.json()["error"]["message"]
        for auth in (("alice", "wrong"), ("carol", "x"), ("alice", "pw")):
            assert requests.post(f"{url}/score", data=body, auth=auth, timeout=30).status_code == 401
        assert requests.post(f"{url}/score", data=body, auth=("alice", "pw:1"), timeout=60).status_code == 200
        assert requests.post(f"{url}/score", data=body, auth=("bob", "x"), timeout=60).status_code == 200
        bearer = {"Authorization": "Bearer pw:1"}
        assert requests.post(f"{url}/score", data=body, headers=bearer, timeout=30).status_code == 401
