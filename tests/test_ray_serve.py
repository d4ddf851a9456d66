"""The scoring service on Ray Serve (`python -m model_backend.serve`) with the bundled demo model.

A local Ray cluster (2 CPUs) runs the service, started by its CLI on a free loopback port with an
API key; the app (`python app.py --model http://127.0.0.1:PORT/score`, key in
$CXR_REMOTE_API_KEY) runs as a real process beside it. Concurrent requests get the in-process
backend's answers, bad bodies get the app's 4xx JSON, and the app and the batch runner generate
through the service. `generate_together` (how a replica runs a batch) is checked without Ray.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")

from model_backend.backends import REMOTE_KEY_ENV, load_backend  # noqa: E402
from model_backend.backends.base import Backend, BackendError  # noqa: E402
from model_backend.batch import ContextSpec, run_batch  # noqa: E402
from model_backend.datasets import load_manifest  # noqa: E402
from model_backend.protocol import report_to_output  # noqa: E402
from model_backend.ray_cluster import local_cluster  # noqa: E402
from model_backend.scoring import score  # noqa: E402
from model_backend.serve import generate_together  # noqa: E402
from model_backend.types import PromptContext  # noqa: E402
from tests.conftest import random_study, xray_from_array  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets" / "samples"
KEY = "serve-test-key"
START_TIMEOUT_S = 300
IMAGES = sorted((SAMPLES / "nih_cxr14_bbox").glob("*.png"))[:6]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll `url` until it answers 200; fail with the log when the process exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(command: list[str], url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """`command` as a process in the repository, once `url` answers; SIGTERM (then SIGKILL) on exit."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until_up(url, process, log)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def body(image: Path, indication: str | None, index: int = 0) -> dict:
    data = [[base64.encodebytes(image.read_bytes()).decode("utf-8"), indication]]
    return {"input_data": {"columns": ["frontal_image", "indication"], "index": [index], "data": data}, "params": {}}


def post(url: str, payload: dict | bytes) -> requests.Response:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return requests.post(url, data=data, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs for the whole module; yields its address."""
    with local_cluster(num_cpus=2, object_store_mb=256) as address:
        yield address


@pytest.fixture(scope="module")
def service(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m model_backend.serve` on the module's cluster: one replica, batches of up to 4; yields its URL."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    command = [
        sys.executable, "-m", "model_backend.serve", "--model", "demo", "--address", cluster, "--port", str(port),
        "--api-key", KEY, "--max-batch-size", "4", "--batch-wait-s", "0.5",
    ]  # fmt: skip
    with running(command, f"http://127.0.0.1:{port}/health", log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def app(service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py --model http://.../score` with the key in $CXR_REMOTE_API_KEY; yields its URL."""
    workdir = tmp_path_factory.mktemp("app_on_serve")
    port, log = free_port(), workdir / "app.log"
    env = {**os.environ, REMOTE_KEY_ENV: KEY, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("CXR_REVIEW_API_KEY", None)  # the app's own /score stays open here
    command = [
        sys.executable, "app.py", "--model", f"{service}/score", "--port", str(port),
        "--db", str(workdir / "reviews.sqlite"),
    ]  # fmt: skip
    with running(command, f"http://127.0.0.1:{port}/", log, env):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def demo() -> Backend:
    """The demo model in this process: the reference answers."""
    return load_backend("demo")


def health(service: str) -> dict:
    return requests.get(f"{service}/health", timeout=30).json()


@pytest.mark.slow
def test_twelve_concurrent_requests_match_the_in_process_backend(service: str, demo: Backend) -> None:
    bodies = [body(IMAGES[i % 6], f"Reason {i // 6}.", index=i) for i in range(12)]  # 6 images x 2 indications
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: post(f"{service}/score", b), bodies))
    for sent, answer in zip(bodies, answers, strict=True):
        assert (answer.status_code, answer.json()) == score(json.dumps(sent).encode(), demo)
    assert any(json.loads(a.json()[0]["output"]) for a in answers)
    stats = health(service)
    assert stats["calls"] >= 12 and stats["largest_batch"] >= 2  # requests were batched across


@pytest.mark.slow
def test_bad_bodies_get_the_same_4xx_json_as_the_app(service: str, app: str) -> None:
    good = body(IMAGES[0], "Cough.")
    bad_bodies = [
        b"{not json",
        {"data": []},
        {**good, "input_data": {**good["input_data"], "columns": ["frontal_image", "colour"]}},
        {**good, "input_data": {**good["input_data"], "data": [["@@not base64@@", None]]}},
        {**good, "input_data": {**good["input_data"], "data": good["input_data"]["data"] * 11, "index": None}},
        body(SAMPLES / "ATTRIBUTION.md", None),
    ]
    for bad in bad_bodies:
        from_service, from_app = post(f"{service}/score", bad), post(f"{app}/score", bad)
        assert 400 <= from_service.status_code < 500
        assert (from_service.status_code, from_service.json()) == (from_app.status_code, from_app.json())
    without_key = requests.post(f"{service}/score", json=good, timeout=60)
    assert without_key.status_code == 401 and "API key" in without_key.json()["error"]["message"]


@pytest.mark.slow
def test_the_app_generates_through_the_service(service: str, app: str, demo: Backend) -> None:
    calls_before = health(service)["calls"]
    sent = body(IMAGES[1], "Shortness of breath.")
    answer = post(f"{app}/score", sent)
    assert answer.status_code == 200, answer.text
    assert answer.json() == score(json.dumps(sent).encode(), demo)[1]
    assert health(service)["calls"] == calls_before + 1  # the app's backend called the service once


@pytest.mark.slow
def test_the_batch_runner_generates_through_the_service(
    service: str, demo: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = load_manifest(SAMPLES / "studies.jsonl")
    monkeypatch.delenv(REMOTE_KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=f"wants a key .*set \\${REMOTE_KEY_ENV}"):
        load_backend(f"{service}/score").generate(dataset.load_study(dataset.entries[0].study_id), [PromptContext()])
    monkeypatch.setenv(REMOTE_KEY_ENV, KEY)
    out = tmp_path / "results.jsonl"
    summary = run_batch(dataset, [ContextSpec("default")], load_backend(f"{service}/score"), out, limit=2)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert summary.errors == 0 and [r["backend"] for r in records] == ["remote", "remote"]
    for record, entry in zip(records, dataset.entries, strict=False):
        (report,) = demo.generate(dataset.load_study(entry.study_id), [entry.context()])
        assert record["output"] == report_to_output(report) and record["output"]


def test_generate_together_equals_one_call_per_request(tiny_backend: Backend) -> None:
    first, second = random_study(1), random_study(2)
    same_images = replace(first, study_id="first-again")
    a, b, c = (PromptContext(name=n, indication=f"Reason {n}.", use_prior=False) for n in "abc")
    calls = [(first, [a]), (second, [b]), (same_images, [c, a])]
    outcomes = generate_together(tiny_backend, calls)
    for (study, contexts), outcome in zip(calls, outcomes, strict=True):
        assert not isinstance(outcome, Exception)
        alone = tiny_backend.generate(study, contexts)
        assert [(r.study_id, r.context, r.findings, r.raw_text) for r in outcome] == [
            (r.study_id, r.context, r.findings, r.raw_text) for r in alone
        ]


def test_generate_together_hands_each_failure_to_its_own_call(tiny_backend: Backend) -> None:
    blank = replace(random_study(3), frontal=xray_from_array(np.full((70, 60), 128)), study_id="blank")
    calls = [(blank, [PromptContext()]), (random_study(4), [PromptContext()]), (blank, [PromptContext(name="b")])]
    outcomes = generate_together(tiny_backend, calls)
    assert isinstance(outcomes[0], BackendError) and isinstance(outcomes[2], BackendError)
    assert not isinstance(outcomes[1], Exception) and outcomes[1][0].study_id == "study-4"
