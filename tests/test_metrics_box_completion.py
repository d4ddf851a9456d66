"""Box completion in the metrics: box metrics against the reference boxes, no text metrics, per (task, context)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from model_backend.boxes import image_to_model_box
from model_backend.evaluation.summary import NOT_APPLICABLE, TEXT_GIVEN, summarise
from model_backend.metrics import evaluate_results, main
from model_backend.types import Box
from tests.test_evaluation_entailment import KEY, ChatServer, server, url  # noqa: F401 (server: the fixture)

SIDE = 224
NODULE = Box(20, 20, 60, 60)
ELSEWHERE = Box(150, 150, 190, 190)
REFERENCE = ["Right upper zone nodule.", "No pleural effusion."]
PAIRS = [("reporting", "A", "B"), ("box_completion", "A", "B")]


def _model_box(box: Box) -> list[float]:
    return list(image_to_model_box(box, SIDE, SIDE).as_tuple())


def _line(study: str, context: str, task: str, output: list) -> dict:
    return {"study_id": study, "context": {"name": context, "grounded": True}, "task": task, "output": output,
            "image_width": SIDE, "image_height": SIDE}  # fmt: skip


def _completion(study: str, context: str, box: Box) -> dict:
    """A box-completion line: the reference findings, the model's box on the nodule sentence."""
    return _line(study, context, "box_completion", [[REFERENCE[0], [_model_box(box)]], [REFERENCE[1], None]])


def _report(study: str, context: str, text: str, box: Box) -> dict:
    return _line(study, context, "reporting", [[text, [_model_box(box)]]])


def _write(tmp_path: Path, lines: list[dict]) -> tuple[Path, Path]:
    manifest, results = tmp_path / "m.jsonl", tmp_path / "r.jsonl"
    box = {"label": "Nodule", "x_min": 20, "y_min": 20, "x_max": 60, "y_max": 60}
    studies = [{"study_id": s, "reference_findings": REFERENCE, "reference_boxes": [box]} for s in ("s1", "s2")]
    manifest.write_text("".join(json.dumps(s) + "\n" for s in studies), encoding="utf-8")
    results.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return results, manifest


def _mixed() -> list[dict]:
    """Report generation under A and B, box completion under A and B, same study ids and context names.

    Box completion puts the nodule box right in s1 under both contexts and in s2 under B only."""
    return [
        _report("s1", "A", "Right upper zone nodule.", NODULE),
        _report("s2", "A", "Left lower zone mass.", ELSEWHERE),
        _report("s1", "B", "Right upper zone nodule.", ELSEWHERE),
        _report("s2", "B", "Right upper zone nodule.", NODULE),
        _completion("s1", "A", NODULE),
        _completion("s2", "A", ELSEWHERE),
        _completion("s1", "B", NODULE),
        _completion("s2", "B", NODULE),
    ]


def test_box_completion_gets_box_metrics_and_no_text_metrics(tmp_path: Path) -> None:
    rows = evaluate_results(*_write(tmp_path, _mixed()))
    completion = [r for r in rows if r["task"] == "box_completion"]
    assert len(rows) == 8 and len(completion) == 4  # the same (study, context) under two tasks is no duplicate
    assert all(r["rouge_l"] is None and r["bleu_stats"] is None for r in completion)
    assert all(r["rouge_l"] is not None for r in rows if r["task"] == "reporting")
    assert [(r["precision"], r["recall"]) for r in completion] == [(1.0, 1.0), (0.0, 0.0), (1.0, 1.0), (1.0, 1.0)]
    assert completion[0]["radfact_spatial_precision"] == 1.0 and completion[1]["radfact_spatial_precision"] == 0.0

    summary = summarise(rows, n_resamples=50)
    assert list(summary.contexts) == ["A", "B", "A (box completion)", "B (box completion)"]
    a_boxes = summary.contexts["A (box completion)"]
    assert a_boxes.task == "box_completion" and a_boxes.metrics["recall"].value == 0.5
    assert a_boxes.metrics["precision"].value == 0.5 and a_boxes.metrics["precision"].note is None
    for key in ("rouge_l", "bleu4"):
        assert (a_boxes.metrics[key].value, a_boxes.metrics[key].note) == (None, TEXT_GIVEN), key
    assert summary.contexts["A"].metrics["rouge_l"].value is not None

    pairs = {(p.task, p.a, p.b): p for p in summary.pairs}
    assert set(pairs) == set(PAIRS)  # never across tasks
    boxes_pair = pairs[("box_completion", "A", "B")]
    assert boxes_pair.metrics["recall"].difference == pytest.approx(0.5)
    assert boxes_pair.metrics["rouge_l"] is None and boxes_pair.note == TEXT_GIVEN
    assert pairs[("reporting", "A", "B")].note == NOT_APPLICABLE


def test_cli_names_the_task_in_its_output_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results, manifest = _write(tmp_path, _mixed())
    per_study, summary_csv, summary_json = tmp_path / "p.csv", tmp_path / "s.csv", tmp_path / "s.json"
    argv = [str(results), "--data", str(manifest), "--out", str(per_study), "--summary-csv", str(summary_csv)]
    assert main([*argv, "--json", str(summary_json), "--resamples", "50", "--no-model-metrics"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("metric "))
    assert header.split()[1:] == ["A", "B", "A", "(box", "completion)", "B", "(box", "completion)"]
    assert re.search(r"^ROUGE-L\s+[\d.]+ \[.*\]\s+[\d.]+ \[.*\]\s+n/a\s+n/a$", out, re.MULTILINE)
    assert re.search(r"^box recall \(best single ref\)\s+.*\s+0\.500 \[.*\]\s+1\.000 \[.*\]$", out, re.MULTILINE)
    assert "B (box completion) - A (box completion) (2)" in out and "B - A (2)" in out

    with per_study.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["task"] for r in rows] == ["reporting"] * 4 + ["box_completion"] * 4
    assert rows[4]["rouge_l"] == "" and rows[4]["precision"] == "1.0"
    with summary_csv.open(encoding="utf-8") as handle:
        records = {
            (r["section"], r["context"], r["context_b"], r["task"], r["metric"]): r for r in csv.DictReader(handle)
        }
    assert records[("context", "A", "", "box_completion", "rouge_l")]["note"] == TEXT_GIVEN
    assert records[("context", "A", "", "box_completion", "recall")]["value"] == "0.5"
    assert records[("difference", "A", "B", "box_completion", "recall")]["value"] == "0.5"
    assert not any(k[0] == "difference" and k[3] == "box_completion" and k[1:3] == ("A", "A") for k in records)
    data = json.loads(summary_json.read_text())
    assert data["contexts"]["A (box completion)"]["task"] == "box_completion"
    assert data["contexts"]["A (box completion)"]["metrics"]["bleu4"]["note"] == TEXT_GIVEN
    assert {(p["task"], p["a"], p["b"]) for p in data["pairs"]} == {
        ("reporting", "A", "B"),
        ("box_completion", "A", "B"),
    }
    assert data["studies"][4]["task"] == "box_completion"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([_completion("s1", "A", NODULE), _completion("s1", "A", ELSEWHERE)], "a second line for study 's1'"),
        ([_line("s1", "A", "box_completion", [["A mass.", None]])], "not the manifest's reference_findings"),
        ([_line("s1", "A", "phrase_grounding", [["A mass.", None]])], "unknown task 'phrase_grounding'"),
    ],
)
def test_cli_rejects_bad_box_completion_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[dict], message: str
) -> None:
    results, manifest = _write(tmp_path, lines)
    assert main([str(results), "--data", str(manifest), "--no-model-metrics"]) == 2
    assert message in capsys.readouterr().err


def test_model_based_text_metrics_skip_box_completion(
    server: ChatServer,  # noqa: F811 (the imported fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The entailment judge (a real loopback server) is asked about the generated report only."""
    monkeypatch.setenv("JUDGE_KEY", KEY)
    results, manifest = _write(tmp_path, [_report("s1", "A", REFERENCE[0], NODULE), _completion("s1", "A", NODULE)])
    argv = [str(results), "--data", str(manifest), "--entailment-url", url(server), "--entailment-model", "judge"]
    assert main([*argv, "--entailment-key-env", "JUDGE_KEY", "--no-model-metrics", "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"entailment judgements \(failed\)\s+3 \(0\)\s+0 \(0\)$", out, re.MULTILINE)
    assert re.search(r"^RadFact logical recall\s+0\.500 \[.*\]\s+n/a$", out, re.MULTILINE)
    assert len(server.requests_seen) == 3
