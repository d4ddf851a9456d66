"""The real app (`python app.py`) on loopback: who may call `POST /score`, and when it is not served at all."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests

from app import scoring_refusal
from model_backend.scoring import is_loopback
from tests.app_process import running_app

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "samples" / "nih_cxr14_bbox" / "00016487_002.png"
pytestmark = pytest.mark.slow


def score_body() -> str:
    image = base64.b64encode(SAMPLE.read_bytes()).decode()
    return json.dumps({"input_data": {"columns": ["frontal_image"], "data": [[image]]}, "params": {}})


def test_auth_alone_protects_score_and_the_login_opens_it(tmp_path: Path) -> None:
    with running_app(["--auth", "alice:pa55", "--auth", "bob:x"], tmp_path) as app:
        app.wait_for_log("scoring endpoint: POST")
        url = f"{app.url}score"
        anonymous = requests.post(url, data=score_body(), timeout=60)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["message"].startswith("missing or wrong API key or login")
        assert requests.post(url, data=score_body(), auth=("alice", "nope"), timeout=60).status_code == 401
        answer = requests.post(url, data=score_body(), auth=("alice", "pa55"), timeout=300)
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.json()[0]["output"])  # the demo model's findings
        assert "refused a request without valid credentials" in app.log_text()


def test_an_open_non_loopback_server_does_not_serve_score(tmp_path: Path) -> None:
    with running_app(["--host", "0.0.0.0"], tmp_path) as app:
        app.wait_for_log("POST /score is NOT served")
        answer = requests.post(f"{app.url}score", data=score_body(), timeout=60)
        assert answer.status_code in (404, 405)  # no such route: Gradio answers for unknown paths


def test_the_refusal_rule() -> None:
    assert scoring_refusal("127.0.0.1", False, None, []) is None
    assert scoring_refusal("localhost", False, None, []) is None
    assert scoring_refusal("::1", False, None, []) is None
    assert scoring_refusal("127.0.0.1", True, None, []) is not None  # a share link reaches the internet
    assert scoring_refusal("0.0.0.0", False, None, []) is not None
    assert scoring_refusal("0.0.0.0", False, "key", []) is None
    assert scoring_refusal("10.1.2.3", False, None, [("u", "p")]) is None
    assert not is_loopback("example.org")
