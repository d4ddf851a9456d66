"""Summaries: not applicable is not zero, per-class tables, context differences, flags, CSV/JSON outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from model_backend.boxes import image_to_model_box
from model_backend.degenerate import REPETITION, TRUNCATED, Flag
from model_backend.evaluation.bleu import bleu_from_statistics, bleu_statistics
from model_backend.evaluation.report import format_summary
from model_backend.evaluation.summary import NO_DATA, NOT_APPLICABLE, flags_by_study, summarise
from model_backend.metrics import aggregate, corpus_bleu4, main, study_row
from model_backend.types import Box, Finding, ReferenceBox

SIDE = 224
NODULE = Box(20, 20, 60, 60)


def _row(study: str, context: str, hit: bool, grounded: bool = True, flags: tuple = ()) -> dict:
    """One study with a reference nodule; the generated nodule box hits it or lies elsewhere (or is absent)."""
    box = NODULE if hit else Box(150, 150, 190, 190)
    boxes = (image_to_model_box(box, SIDE, SIDE),) if grounded else None
    findings = [Finding("Right upper zone nodule.", boxes), Finding("No effusion.")]
    reference = [ReferenceBox("Nodule", NODULE)]
    text = ["Right upper zone nodule.", "No pleural effusion."]
    return study_row(study, context, findings, SIDE, SIDE, reference, text, grounded=grounded, flags=flags)


def _rows() -> list[dict]:
    """40 studies: A finds the nodule in all, B (same prompt minus the prior) in 28, C is ungrounded."""
    rows = [_row(f"s{i}", "A", hit=True) for i in range(40)]
    rows += [_row(f"s{i}", "B", hit=i >= 12) for i in range(40)]
    rows += [_row(f"s{i}", "C", hit=False, grounded=False) for i in range(40)]
    return rows


def test_box_metrics_are_not_applicable_for_an_ungrounded_context() -> None:
    summary = summarise(_rows(), n_resamples=300)
    c = summary.contexts["C"]
    assert not c.grounded and c.counts["n_pred_boxes"] == 0
    study = next(r for r in _rows() if r["context"] == "C")  # per study too: counts stay, values are None
    assert study["recall"] is None and study["radfact_spatial_recall"] is None and study["n_ref_boxes"] == 1
    assert study["per_class"]["Nodule"]["radfact_spatial_recall"] is None
    for key in ("precision", "recall", "union_iou", "radfact_spatial_precision", "radfact_grounding_recall"):
        assert (c.metrics[key].value, c.metrics[key].note) == (None, NOT_APPLICABLE), key
    assert c.per_class["Nodule"] and all(e.note == NOT_APPLICABLE for e in c.per_class["Nodule"].values())
    assert c.metrics["rouge_l"].value is not None  # text metrics still apply
    flat = aggregate([r for r in _rows() if r["context"] == "C"], n_resamples=100)
    assert flat["recall"] is None and flat["recall_note"] == NOT_APPLICABLE and flat["rouge_l"] > 0
    assert all(summary.pairs[i].metrics["recall"] is None for i in (1, 2))  # A-C and B-C: n/a, not a number
    table = format_summary(summary)
    recall_line = next(line for line in table.splitlines() if line.startswith("box recall"))
    assert recall_line.split()[-1] == "n/a" and "0.000 [0.000, 0.000]" not in recall_line


def test_known_difference_between_contexts() -> None:
    summary = summarise(_rows(), n_resamples=1000)
    (a_b,) = [p for p in summary.pairs if (p.a, p.b) == ("A", "B")]
    diff = a_b.metrics["recall"]
    assert a_b.n_studies == 40 and diff.difference == pytest.approx(28 / 40 - 1.0)
    assert diff.lo <= -0.3 <= diff.hi < 0 and diff.p_value < 0.01
    assert a_b.metrics["rouge_l"].difference == 0.0 and a_b.metrics["rouge_l"].p_value == 1.0
    assert a_b.per_class["Nodule"]["recall"].difference == pytest.approx(-0.3)
    assert summary.contexts["B"].metrics["recall"].value == pytest.approx(0.7)
    assert summary.contexts["B"].per_class["Nodule"]["recall"].value == pytest.approx(0.7)


def test_pairs_use_the_studies_both_contexts_have() -> None:
    rows = [_row(f"s{i}", "A", hit=True) for i in range(10)] + [_row(f"s{i}", "B", hit=False) for i in range(4, 10)]
    (pair,) = summarise(rows, n_resamples=100).pairs
    assert pair.n_studies == 6 and pair.metrics["recall"].difference == -1.0


def test_no_data_is_not_zero() -> None:
    rows = [study_row("s1", "A", [Finding("Clear.")], SIDE, SIDE, [], [])]  # no reference boxes, no reference text
    metrics = summarise(rows, n_resamples=50).contexts["A"].metrics
    assert (metrics["recall"].value, metrics["recall"].note) == (None, NO_DATA)
    assert (metrics["rouge_l"].value, metrics["bleu4"].value) == (None, None)


def test_bleu_from_summed_statistics_equals_corpus_bleu() -> None:
    preds = ["The heart is normal in size.", "Small left effusion.", "No pneumothorax is seen today."]
    refs = ["Heart size is normal.", "Small left pleural effusion.", "No pneumothorax."]
    sums = np.sum([bleu_statistics(p, r) for p, r in zip(preds, refs, strict=True)], axis=0)
    assert bleu_from_statistics(sums)[0] == pytest.approx(corpus_bleu4(preds, refs))
    assert np.isnan(bleu_from_statistics(np.zeros(10))[0])


def test_flags_are_counted_per_context() -> None:
    looping = (Flag(REPETITION, "'x' repeated 9 times (9 findings)"), Flag(TRUNCATED, "cut"))
    rows = [_row("s1", "A", True, flags=looping), _row("s2", "A", True), _row("s1", "B", True)]
    summary = summarise(rows, n_resamples=50)
    assert summary.contexts["A"].flags[REPETITION] == 1 and summary.contexts["B"].flags[REPETITION] == 0
    assert flags_by_study(rows) == {("s1", "A"): {REPETITION: looping[0].reason, TRUNCATED: "cut"}}
    assert "repetition         1/2" in format_summary(summary)


def test_context_order_follows_the_results() -> None:
    rows = [_row("s1", "zeta", True), _row("s1", "alpha", True)]
    summary = summarise(rows, n_resamples=50)
    assert list(summary.contexts) == ["zeta", "alpha"] and (summary.pairs[0].a, summary.pairs[0].b) == ("zeta", "alpha")


def test_cli_writes_summary_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps(
            {
                "study_id": "s1",
                "reference_findings": ["Right upper zone nodule."],
                "reference_boxes": [{"label": "Nodule", "x_min": 20, "y_min": 20, "x_max": 60, "y_max": 60}],
            }
        )
        + "\n",
        encoding="utf-8",
    )
    model_box = list(image_to_model_box(NODULE, SIDE, SIDE).as_tuple())
    lines = [
        {"study_id": "s1", "context": {"name": "A", "grounded": True}, "output": [["Nodule.", [model_box]]]},
        {"study_id": "s1", "context": {"name": "B", "grounded": False}, "output": [["Nodule.", None]] * 3},
    ]
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps({**x, "image_width": SIDE, "image_height": SIDE}) + "\n" for x in lines))
    argv = [str(results), "--data", str(manifest), "--summary-csv", str(tmp_path / "s.csv"), "--json"]
    assert main([*argv, str(tmp_path / "s.json"), "--resamples", "50", "--no-model-metrics"]) == 0
    out = capsys.readouterr().out
    assert "Not computed:" in out and "--no-model-metrics" in out and "RadFact logical" in out
    with (tmp_path / "s.csv").open(encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    by_key = {(r["section"], r["context"], r["context_b"], r["class"], r["metric"]): r for r in records}
    assert by_key[("context", "A", "", "", "recall")]["value"] == "1.0"
    assert by_key[("context", "B", "", "", "recall")]["note"] == NOT_APPLICABLE
    assert by_key[("context", "B", "", "", "recall")]["value"] == ""
    assert by_key[("difference", "A", "B", "", "recall")]["note"] == NOT_APPLICABLE
    assert by_key[("flags", "B", "", "", "repetition")]["value"] == "1"
    assert by_key[("context", "A", "", "Nodule", "radfact_spatial_precision")]["value"] == "1.0"
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["contexts"]["B"]["metrics"]["precision"]["note"] == NOT_APPLICABLE
    assert data["contexts"]["B"]["flags"]["repetition"] == 1 and data["settings"]["n_resamples"] == 50
    assert [s["study_id"] for s in data["studies"]] == ["s1", "s1"] and "radfact_spatial_precision" in data["metrics"]
