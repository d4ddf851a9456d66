"""RadFact-style logical precision/recall against a real loopback HTTP server speaking chat completions.

The server's judge is rule-based and deterministic: a hypothesis is entailed when every content
word of it occurs in one reference sentence (that sentence is the evidence). A hypothesis
containing "[fail]" gets HTTP 500, one containing "[garbled]" an answer that is not JSON, one
containing "[no-evidence]" an entailment without evidence.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from model_backend.evaluation.entailment import (
    EntailmentJudge,
    JudgeError,
    Judgement,
    add_logical_scores,
    parse_answer,
)
from model_backend.metrics import main

KEY = "test-key"
STOP = {"there", "is", "are", "a", "an", "the", "of", "in", "and", "seen", "at"}


def content_words(sentence: str) -> set[str]:
    return set(re.findall(r"[a-z]+", sentence.lower())) - STOP


def judge_answer(reference: list[str], hypothesis: str) -> str:
    if "[garbled]" in hypothesis:
        return "I think so."
    if "[no-evidence]" in hypothesis:
        return json.dumps({"status": "entailment", "evidence": []})
    evidence = [s for s in reference if content_words(hypothesis) <= content_words(s)]
    status = "entailment" if evidence else "neutral"  # RadFact's three-way states are accepted too
    return "```json\n" + json.dumps({"status": status, "evidence": evidence}) + "\n```"


class ChatServer(ThreadingHTTPServer):
    requests_seen: list[dict]


class Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests_seen.append(request)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": {"message": "bad key"}})
        query = json.loads(request["messages"][-1]["content"])
        if "[fail]" in query["hypothesis"]:
            return self._send(500, {"error": {"message": "model overloaded"}})
        content = judge_answer(query["reference"], query["hypothesis"])
        self._send(200, {"object": "chat.completion", "model": request["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}]})  # fmt: skip


@pytest.fixture
def server() -> Iterator[ChatServer]:
    httpd = ChatServer(("127.0.0.1", 0), Handler)
    httpd.requests_seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server: ChatServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def row(generated: list[str], reference: list[str]) -> dict:
    return {"generated_sentences": generated, "reference_sentences": reference}


def test_parse_answer() -> None:
    assert parse_answer('{"status": "entailment", "evidence": ["A."]}') == Judgement(True, ("A.",))
    assert parse_answer('Sure: {"status": "contradiction", "evidence": ["A."]}') == Judgement(False, ("A.",))
    for bad in ("yes", '{"status": "maybe", "evidence": []}', '{"status": "entailment", "evidence": []}', "{oops}"):
        with pytest.raises(JudgeError):
            parse_answer(bad)


def test_logical_precision_and_recall_both_ways(server: ChatServer) -> None:
    judge = EntailmentJudge(url(server), "judge-1", api_key=KEY, retries=0)
    rows = [
        row(["Small left pleural effusion.", "No pneumothorax.", "Cardiomegaly."],
            ["Small left pleural effusion.", "No pneumothorax.", "Heart size is normal."]),
        row([], ["Clear lungs."]),  # nothing generated: precision undefined, recall 0 without a call
        row(["Clear lungs."], []),  # no reference: not scored
    ]  # fmt: skip
    add_logical_scores(rows, judge)
    assert (rows[0]["logical_precision"], rows[0]["logical_recall"]) == (2 / 3, 2 / 3)
    assert (rows[0]["n_entailment_judgements"], rows[0]["n_entailment_failures"]) == (6, 0)
    assert (rows[1]["logical_precision"], rows[1]["logical_recall"]) == (None, 0.0)
    assert (rows[2]["logical_precision"], rows[2]["logical_recall"], rows[2]["n_entailment_judgements"]) == (
        None, None, 0,
    )  # fmt: skip
    assert len(server.requests_seen) == 6 and judge.n_requests == 6
    request = server.requests_seen[0]
    assert request["model"] == "judge-1" and request["temperature"] == 0
    assert request["messages"][0]["role"] == "system" and "entail" in request["messages"][0]["content"]


def test_failures_are_counted_not_taken_as_not_entailed(server: ChatServer) -> None:
    judge = EntailmentJudge(url(server), "judge-1", api_key=KEY, retries=0)
    rows = [row(["Left effusion.", "Left effusion [fail].", "Left effusion [garbled].", "Left [no-evidence]."],
                ["Left effusion."])]  # fmt: skip
    add_logical_scores(rows, judge)
    assert rows[0]["logical_precision"] == 1.0  # 1 judged, entailed; 3 failures left out (not 1/4)
    assert rows[0]["n_entailment_failures"] == 3 and rows[0]["logical_recall"] == 1.0
    wrong_key = EntailmentJudge(url(server), "judge-1", api_key="nope", retries=2)
    with pytest.raises(JudgeError, match="HTTP 401"):
        wrong_key.judge(["Left effusion."], "Left effusion.")
    assert wrong_key.n_requests == 1  # a client error is not retried
    flaky = EntailmentJudge(url(server), "judge-1", api_key=KEY, retries=1)
    with pytest.raises(JudgeError, match="HTTP 500"):
        flaky.judge(["Left effusion."], "Effusion [fail].")
    assert flaky.n_requests == 2  # a server error is retried


def test_answers_are_cached_per_hypothesis_and_premise(server: ChatServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    rows = [row(["Left effusion.", "Left effusion [fail]."], ["Left effusion.", "Mild edema."])]
    add_logical_scores(rows, EntailmentJudge(url(server), "judge-1", api_key=KEY, cache_path=cache, retries=0))
    first = len(server.requests_seen)
    assert first == 4 and len(cache.read_text().splitlines()) == 3  # the failure is not cached
    again = EntailmentJudge(url(server), "judge-1", api_key=KEY, cache_path=cache, retries=0)
    add_logical_scores(rows, again)
    assert again.n_cached == 3 and len(server.requests_seen) == first + 1  # only the failure is asked again
    query = (["Left effusion.", "Mild edema."], "Left effusion.")
    cache.write_text(cache.read_text() + '{"key": "torn')  # an interrupted run's last line is skipped
    reread = EntailmentJudge(url(server), "judge-1", api_key=KEY, cache_path=cache)
    assert reread.judge(*query) == Judgement(True, ("Left effusion.",)) and reread.n_cached == 1
    assert len(server.requests_seen) == first + 1
    other_model = EntailmentJudge(url(server), "judge-2", api_key=KEY, cache_path=cache, retries=0)
    other_model.judge(*query)
    assert len(server.requests_seen) == first + 2  # the key includes the model


def test_cli_with_an_endpoint(server: ChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    manifest, results = tmp_path / "m.jsonl", tmp_path / "r.jsonl"
    manifest.write_text(json.dumps({"study_id": "s1", "reference_findings": ["Left effusion.", "Mild edema."]}) + "\n")
    outputs = {"A": [["Left effusion.", None], ["Mild edema.", None]], "B": [["Left effusion.", None]]}
    results.write_text("".join(json.dumps({"study_id": "s1", "context": name, "output": output,
                                           "image_width": 10, "image_height": 10}) + "\n"
                               for name, output in outputs.items()))  # fmt: skip
    argv = [str(results), "--data", str(manifest), "--entailment-url", url(server), "--entailment-model", "judge-1"]
    argv += ["--entailment-key-env", "JUDGE_KEY", "--no-model-metrics", "--json", str(tmp_path / "s.json")]
    assert main([*argv, "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "RadFact logical precision" in out
    assert re.search(r"entailment judgements \(failed\)\s+4 \(0\)\s+3 \(0\)", out)
    contexts = json.loads((tmp_path / "s.json").read_text())["contexts"]
    assert contexts["A"]["metrics"]["logical_recall"]["value"] == 1.0
    assert contexts["B"]["metrics"]["logical_recall"]["value"] == 0.5
    assert (tmp_path / "r.jsonl.entailment-cache.jsonl").exists()
    assert main([*argv[:5], "--no-model-metrics", "--resamples", "20"]) == 0
    assert "--entailment-url needs --entailment-model" in capsys.readouterr().out
