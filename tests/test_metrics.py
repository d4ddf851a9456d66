"""Box and text metrics: hand-computed cases on the 224 x 224 grid, bootstrap, and the CLI."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model_backend.boxes import image_to_model_box
from model_backend.metrics import (
    aggregate,
    bootstrap_ci,
    canonical_class,
    classes_in_sentence,
    corpus_bleu4,
    main,
    pixel_precision,
    rasterise,
    rouge_l,
    study_box_metrics,
    study_row,
)
from model_backend.types import Box, Finding, ReferenceBox

SIDE = 224  # a 224 x 224 image: one grid cell per pixel, so areas are easy to count by hand


def _finding(text: str, *image_boxes: Box, width: int = SIDE, height: int = SIDE) -> Finding:
    """A finding whose model-frame boxes are built from known image-frame boxes."""
    return Finding(text, tuple(image_to_model_box(b, width, height) for b in image_boxes))


def _ref(*boxes: Box, label: str = "") -> list[ReferenceBox]:
    return [ReferenceBox(label=label, image_box=b) for b in boxes]


def test_rasterise_uses_cell_centres_half_open() -> None:
    (mask,) = rasterise([Box(0, 0, 100, 50)], SIDE, SIDE)
    assert mask.sum() == 100 * 50 and mask[49, 99] and not mask[50, 0] and not mask[0, 100]
    (mask,) = rasterise([Box(0.4, 0, 1.6, 1)], SIDE, SIDE)  # centres 0.5 and 1.5, not 2.5
    assert mask[0, :3].tolist() == [True, True, False]
    (mask,) = rasterise([Box(0, 0, 700, 500)], 700, 500)  # whole non-square image -> whole grid
    assert mask.all()


def test_identical_boxes_score_one() -> None:
    box = Box(20, 30, 120, 150)
    m = study_box_metrics([_finding("Opacity.", box)], SIDE, SIDE, _ref(box))
    assert (m.precision, m.recall, m.union_iou) == (1.0, 1.0, 1.0)
    assert (m.precision_hits, m.recall_hits, m.n_pred_boxes, m.n_ref_boxes) == (1, 1, 1, 1)
    assert (m.pixel_precision, m.pixel_recall) == (1.0, 1.0)


def test_disjoint_boxes_score_zero() -> None:
    m = study_box_metrics([_finding("Opacity.", Box(0, 0, 50, 50))], SIDE, SIDE, _ref(Box(100, 100, 150, 150)))
    assert (m.precision, m.recall, m.union_iou) == (0.0, 0.0, 0.0)


def test_exactly_half_overlap_is_not_a_hit_and_slightly_more_is() -> None:
    ref = _ref(Box(0, 0, 100, 100))
    half = study_box_metrics([_finding("Opacity.", Box(50, 0, 150, 100))], SIDE, SIDE, ref)
    assert (half.precision_hits, half.recall_hits) == (0, 0)
    assert half.union_iou == pytest.approx(5000 / 15000)
    more = study_box_metrics([_finding("Opacity.", Box(49, 0, 149, 100))], SIDE, SIDE, ref)  # 51 of 100 columns
    assert (more.precision_hits, more.recall_hits) == (1, 1)
    assert more.union_iou == pytest.approx(5100 / 14900)


def test_nested_boxes() -> None:
    big, small = Box(0, 0, 200, 200), Box(50, 50, 100, 100)  # small covers 2500 / 40000 of big
    m = study_box_metrics([_finding("Nodule.", small)], SIDE, SIDE, _ref(big))
    assert (m.precision, m.recall) == (1.0, 0.0)
    assert m.union_iou == pytest.approx(2500 / 40000)
    m = study_box_metrics([_finding("Mass.", big)], SIDE, SIDE, _ref(small))
    assert (m.precision, m.recall) == (0.0, 1.0)


def test_one_generated_box_can_recall_several_references_and_best_match_counts() -> None:
    refs = _ref(Box(0, 0, 50, 50), Box(60, 0, 110, 50), Box(200, 200, 220, 220))
    m = study_box_metrics([_finding("Opacities.", Box(0, 0, 110, 50))], SIDE, SIDE, refs)
    # The generated box lies 2500/5500 inside each of the first two references: not a precision hit.
    assert (m.precision_hits, m.recall_hits, m.recall) == (0, 2, pytest.approx(2 / 3))


def test_zero_area_generated_box_is_counted_and_never_a_hit() -> None:
    ref = _ref(Box(0, 0, 100, 100))
    flat = Finding("Line.", (image_to_model_box(Box(10, 10, 10, 90), SIDE, SIDE),))
    tiny = Finding("Speck.", (image_to_model_box(Box(20, 20, 20.4, 20.4), SIDE, SIDE),))  # misses every centre
    good = _finding("Opacity.", Box(0, 0, 100, 100))
    m = study_box_metrics([flat, tiny, good], SIDE, SIDE, ref)
    assert (m.n_pred_boxes, m.n_empty_pred_boxes, m.precision_hits, m.precision) == (3, 2, 1, pytest.approx(1 / 3))
    assert m.recall == 1.0
    empty_ref = study_box_metrics([good], SIDE, SIDE, _ref(Box(5, 5, 5, 50)))
    assert (empty_ref.n_empty_ref_boxes, empty_ref.recall, empty_ref.precision) == (1, 0.0, 0.0)


def test_boxes_outside_the_image_are_clipped() -> None:
    ref = _ref(Box(0, 0, 100, 100))
    m = study_box_metrics([Finding("Opacity.", (Box(-0.5, -0.5, 100 / SIDE, 100 / SIDE),))], SIDE, SIDE, ref)
    assert (m.precision, m.recall, m.union_iou) == (1.0, 1.0, 1.0)
    m = study_box_metrics([Finding("Opacity.", (Box(1.2, 1.2, 1.5, 1.5),))], SIDE, SIDE, ref)  # wholly outside
    assert (m.n_empty_pred_boxes, m.precision) == (1, 0.0)
    m = study_box_metrics([_finding("Opacity.", Box(0, 0, 100, 100))], SIDE, SIDE, _ref(Box(-40, -40, 100, 100)))
    assert m.union_iou == 1.0


def test_non_square_image_goes_through_the_model_to_image_mapping() -> None:
    width, height = 700, 500  # crop: x offset 100, side 500
    image_box = Box(500, 100, 600, 200)
    model_box = image_to_model_box(image_box, width, height)
    assert model_box == Box(0.8, 0.2, 1.0, 0.4)
    m = study_box_metrics([Finding("Nodule.", (model_box,))], width, height, _ref(image_box))
    assert (m.precision, m.recall) == (1.0, 1.0)
    assert m.union_iou == pytest.approx(1.0)
    # Reading the model box as a fraction of the whole image (560..700 x 100..200) would miss:
    naive = Box(0.8 * width, 0.2 * height, 1.0 * width, 0.4 * height)
    assert pixel_precision([naive], [image_box], width, height) < 0.5


def test_pixel_precision_over_union_masks() -> None:
    assert pixel_precision([Box(0, 0, 100, 100), Box(100, 0, 200, 100)], [Box(0, 0, 100, 100)], SIDE, SIDE) == 0.5
    assert pixel_precision([], [Box(0, 0, 100, 100)], SIDE, SIDE) is None


def test_empty_studies() -> None:
    m = study_box_metrics([Finding("Normal.", None)], SIDE, SIDE, [])
    assert (m.precision, m.recall, m.union_iou, m.per_class) == (None, None, None, {})
    m = study_box_metrics([], SIDE, SIDE, _ref(Box(0, 0, 10, 10)))
    assert (m.precision, m.recall, m.union_iou) == (None, 0.0, 0.0)


def test_class_keywords() -> None:
    assert classes_in_sentence("Moderate left pleural effusion.") == {"Effusion"}
    assert classes_in_sentence("The heart is enlarged.") == {"Cardiomegaly"}
    assert classes_in_sentence("Right lower lobe consolidation.") == {"Lung Opacity", "Consolidation"}
    assert classes_in_sentence("A 2 cm nodular opacity.") == {"Nodule", "Lung Opacity"}
    assert classes_in_sentence("Masses in both lungs.") == {"Mass"}
    assert classes_in_sentence("Massive pneumothorax.") == {"Pneumothorax"}
    assert classes_in_sentence("Heart size is normal.") == set()
    assert canonical_class("Infiltration") == "Infiltrate"
    assert canonical_class("lung opacity") == "Lung Opacity"
    assert canonical_class("effusion") == "Effusion"
    assert canonical_class("Fracture") is None


def test_per_class_counts_only_sentences_naming_the_class() -> None:
    refs = _ref(Box(0, 0, 100, 100), label="Effusion") + _ref(Box(120, 120, 200, 200), label="Nodule")
    findings = [
        _finding("Small left pleural effusion.", Box(0, 0, 100, 100)),
        _finding("Opacity in the right lower zone.", Box(120, 120, 200, 200)),  # names neither class
    ]
    m = study_box_metrics(findings, SIDE, SIDE, refs)
    assert (m.precision, m.recall) == (1.0, 1.0)
    assert set(m.per_class) == {"Effusion", "Nodule"}
    eff, nod = m.per_class["Effusion"], m.per_class["Nodule"]
    assert (eff.n_pred_boxes, eff.precision, eff.recall) == (1, 1.0, 1.0)
    assert (nod.n_pred_boxes, nod.precision, nod.recall) == (0, None, 0.0)


def test_text_metrics() -> None:
    assert rouge_l("heart size small lungs", "heart size normal lungs") == pytest.approx(0.75)
    assert rouge_l("The lungs are clear.", "the lungs are clear") == pytest.approx(1.0)
    preds = ["The heart is normal in size.", "No pleural effusion is seen."]
    assert corpus_bleu4(preds, [p.upper() for p in preds]) == pytest.approx(1.0)
    assert corpus_bleu4(["alpha beta gamma delta"], ["one two three four"]) == 0.0
    with pytest.raises(ValueError, match="equal"):
        corpus_bleu4(["a"], [])


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.7] * 20) == (pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.7))
    mean, lo, hi = bootstrap_ci([0.0, 1.0] * 50, n_resamples=2000)
    assert mean == 0.5 and 0.38 < lo < 0.43 and 0.57 < hi < 0.62  # normal approx: 0.5 +- 1.96 * 0.05
    assert bootstrap_ci([0.0, 1.0] * 50, seed=3) == bootstrap_ci([0.0, 1.0] * 50, seed=3)
    assert bootstrap_ci([0.0, 1.0] * 50, seed=3) != bootstrap_ci([0.0, 1.0] * 50, seed=4)
    mean, lo, hi = bootstrap_ci([1.0, 0.0], weights=[3, 1])  # micro ratio: 3 hits of 4
    assert mean == 0.75 and 0.0 <= lo <= mean <= hi <= 1.0
    with pytest.raises(ValueError):
        bootstrap_ci([])


def _row(study_id: str, findings: list[Finding], refs: list[ReferenceBox], ref_text: list[str]) -> dict:
    return study_row(study_id, "A", findings, SIDE, SIDE, refs, ref_text)


def test_aggregate_is_micro_over_annotated_studies() -> None:
    rows = [
        _row(
            "s1", [_finding("Effusion.", Box(0, 0, 100, 100), Box(150, 150, 200, 200))], _ref(Box(0, 0, 100, 100)), []
        ),
        _row("s2", [_finding("Nodule.", Box(0, 0, 50, 50))], _ref(Box(0, 0, 50, 50), Box(100, 100, 150, 150)), []),
        _row("s3", [_finding("Mass.", Box(0, 0, 50, 50))], [], ["No acute findings."]),  # not box-annotated
    ]
    summary = aggregate(rows)
    assert (summary["n_studies"], summary["n_box_studies"], summary["n_pred_boxes_unannotated"]) == (3, 2, 1)
    assert summary["precision"] == pytest.approx(2 / 3)  # 2 hits of 3 generated boxes
    assert summary["recall"] == pytest.approx(2 / 3)  # 2 of 3 reference boxes
    assert summary["union_iou"] == pytest.approx((10000 / 12500 + 2500 / 5000) / 2)
    assert summary["precision_lo"] <= summary["precision"] <= summary["precision_hi"]
    assert summary["n_text_studies"] == 1 and summary["rouge_l"] == 0.0 and summary["bleu4"] == 0.0


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_cli_prints_table_and_writes_csv(tmp_path: Path) -> None:
    width, height = 700, 500
    model_box = image_to_model_box(Box(500, 100, 600, 200), width, height)
    manifest = _write_jsonl(
        tmp_path / "manifest.jsonl",
        [
            {
                "study_id": "s1",
                "reference_findings": ["Left upper zone nodule."],
                "reference_boxes": [
                    {
                        "label": "Nodule",
                        "x_min": 500 / 700,
                        "y_min": 0.2,
                        "x_max": 600 / 700,
                        "y_max": 0.4,
                        "frame": "normalized",
                    }
                ],
            },
            {"study_id": "s2", "reference_findings": [], "reference_boxes": []},
        ],
    )
    output = [["Left upper zone nodule.", [list(model_box.as_tuple())]]]
    results = _write_jsonl(
        tmp_path / "results.jsonl",
        [
            {
                "study_id": "s1",
                "context": "A",
                "output": json.dumps(output),
                "image_width": width,
                "image_height": height,
            },
            {
                "study_id": "s1",
                "context": {"name": "B"},
                "output": [["Normal.", None]],
                "image_width": width,
                "image_height": height,
            },
            {"study_id": "s2", "context": "A", "output": [], "image_width": 300, "image_height": 300},
        ],
    )
    out_csv = tmp_path / "metrics.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "model_backend.metrics", str(results), "--data", str(manifest), "--out", str(out_csv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    table = _table(proc.stdout, "Metrics per context")
    assert table["metric"] == ["A", "B"]
    assert table["studies"] == ["2", "1"] and table["box-annotated studies"] == ["1", "1"]
    assert table["box precision (best single ref)"] == ["1.000 [1.000, 1.000]", "-"]  # B generated no box
    assert table["box recall (best single ref)"] == ["1.000 [1.000, 1.000]", "0.000 [0.000, 0.000]"]
    assert _table(proc.stdout, "Per class")["Nodule / box precision (best single ref)"][0] == "1.000 [1.000, 1.000]"
    assert "B - A (1)" in _table(proc.stdout, "Differences between contexts")["metric"]
    with out_csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["study_id"], r["context"]) for r in rows] == [("s1", "A"), ("s1", "B"), ("s2", "A")]
    assert rows[0]["precision"] == "1.0" and rows[0]["union_iou"] == "1.0" and rows[0]["rouge_l"] == "1.0"
    assert rows[1]["recall"] == "0.0" and rows[1]["precision"] == ""
    assert json.loads(rows[0]["per_class"])["Nodule"]["recall_hits"] == 1


def _table(stdout: str, title: str) -> dict[str, list[str]]:
    """A printed table (the block after the line starting with `title`) as {first cell: other cells}."""
    block = stdout.split(title, 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows = [re.split(r"\s{2,}", line.strip()) for line in block if not line.startswith("-")]
    return {row[0]: row[1:] for row in rows}


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (
            [{"study_id": "zz", "context": "A", "output": [], "image_width": 10, "image_height": 10}],
            "not in the manifest",
        ),
        ([{"study_id": "s1", "context": "A", "output": []}], "missing image_width, image_height"),
        ([{"study_id": "s1", "context": "A", "output": "[[1]]", "image_width": 10, "image_height": 10}], "finding 0"),
        ([{"study_id": "s1", "context": "A", "output": [], "image_width": 0, "image_height": 10}], "positive integers"),
        (
            [{"study_id": "s1", "context": "A", "output": [], "image_width": 10, "image_height": 10}] * 2,
            "a second line",
        ),
    ],
)
def test_cli_rejects_bad_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], results: list[dict], message: str
) -> None:
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"study_id": "s1", "reference_findings": ["x"]}])
    path = _write_jsonl(tmp_path / "r.jsonl", results)
    assert main([str(path), "--data", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert message in err and "r.jsonl:" in err


def test_cli_rejects_bad_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _write_jsonl(
        tmp_path / "r.jsonl", [{"study_id": "s1", "context": "A", "output": [], "image_width": 10, "image_height": 10}]
    )
    bad_frame = {"study_id": "s1", "reference_boxes": [{"x_min": 0, "y_min": 0, "x_max": 1, "y_max": 1, "frame": "mm"}]}
    for manifest_lines, message in [
        ([bad_frame], 'must be "pixel" or "normalized"'),
        ([{"study_id": "s1", "reference_boxes": [{"x_min": 0}]}], "needs numeric"),
        ([{"study_id": "s1"}, {"study_id": "s1"}], "duplicate study_id"),
    ]:
        manifest = _write_jsonl(tmp_path / "m.jsonl", manifest_lines)
        assert main([str(results), "--data", str(manifest)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "m.jsonl").write_text('{"study_id": "s1"}\n{oops\n', encoding="utf-8")
    assert main([str(results), "--data", str(tmp_path / "m.jsonl")]) == 2
    assert "m.jsonl:2: not valid JSON" in capsys.readouterr().err


def test_error_lines_from_the_batch_runner_are_skipped(tmp_path: Path) -> None:
    from model_backend.metrics import evaluate_results

    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"study_id": "s1"}, {"study_id": "s2"}])
    good = {"study_id": "s1", "context": "A", "output": [["Clear.", None]], "image_width": 10, "image_height": 10}
    failed = {"study_id": "s2", "context": "A", "output": None, "image_width": None, "error": "blank image"}
    rows = evaluate_results(_write_jsonl(tmp_path / "r.jsonl", [good, failed]), manifest)
    assert [r["study_id"] for r in rows] == ["s1"]
