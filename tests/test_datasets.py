"""model_backend.datasets: the bundled manifest, path confinement, per-row errors, CSV/JSONL parity, box frames."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_backend.datasets import (
    Dataset,
    DatasetError,
    ManifestBox,
    bundled_samples_path,
    load_manifest,
)
from model_backend.types import Box

CSV_COLUMNS = [
    "study_id",
    "frontal",
    "lateral",
    "prior_frontal",
    "indication",
    "technique",
    "comparison",
    "prior_report",
    "reference_findings",
    "reference_boxes",
    "attribution",
]


def write_png(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)).save(path)


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def samples() -> Dataset:
    return load_manifest(bundled_samples_path())


# --- the bundled samples ---------------------------------------------------------------------


def test_bundled_manifest_is_complete_and_clean(samples: Dataset) -> None:
    assert samples.errors == []
    ids = [e.study_id for e in samples.entries]
    assert len(ids) == len(set(ids)) == 13
    assert samples.root == bundled_samples_path().parent.resolve()
    assert all(e.attribution for e in samples.entries)


def test_bundled_studies_load_with_priors_laterals_and_references(samples: Dataset) -> None:
    current = samples.load_study("nih_00016987_022")
    assert current.prior_frontal is not None and current.lateral is None
    assert current.context.technique == "PA chest radiograph." and current.context.comparison
    hannover = samples.load_study("hannover_a361d7b7")
    assert (hannover.frontal.width, hannover.frontal.height) == (640, 639)
    assert (hannover.prior_frontal.width, hannover.prior_frontal.height) == (640, 600)
    pcp = samples.load_study("radiopaedia_pcp_2")
    assert pcp.lateral is not None and (pcp.lateral.width, pcp.lateral.height) == (906, 907)
    assert pcp.reference_findings[2] == "No pleural effusion." and len(pcp.reference_findings) == 4
    assert "NON-COMMERCIAL" in pcp.attribution
    rg1 = samples.load_study("dicom_nema_rg1_j2k")
    assert (rg1.frontal.width, rg1.frontal.height) == (1841, 1955)


def test_bundled_nih_boxes_are_converted_from_xywh(samples: Dataset) -> None:
    nodule = samples.load_study("nih_00016487_002").reference_boxes
    assert [(b.label, b.source) for b in nodule] == [("Nodule", "NIH")]
    # BBox_List_2017: 640.406349206349, 692.419047619048, w 87.7714285714286, h 79.1026455026455
    assert nodule[0].image_box.as_tuple() == pytest.approx((640.41, 692.42, 728.18, 771.52), abs=0.01)
    sources = [b.source for b in samples.load_study("nih_00005066_030").reference_boxes]
    assert sources.count("NIH") == 3 and sources.count("RSNA") == 2


def test_search_is_case_insensitive_over_ids_sections_and_references(samples: Dataset) -> None:
    assert [e.study_id for e in samples.search("PNEUMATOCOELES")] == ["radiopaedia_pcp_2"]
    assert {e.study_id for e in samples.search("nodule")} == {"nih_00016487_002"}
    assert {e.study_id for e in samples.search("hannover covid")} == {"hannover_a361d7b7"}
    assert len(samples.search("")) == 13
    assert samples.search("no such words anywhere") == []


# --- manifests written by users --------------------------------------------------------------


def test_paths_must_stay_inside_the_dataset_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png(root / "ok.png", 100, 100)
    write_png(tmp_path / "outside.png", 100, 100)
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    manifest = write_jsonl(
        root / "studies.jsonl",
        [
            {"study_id": "ok", "frontal": "ok.png"},
            {"study_id": "dotdot", "frontal": "../outside.png"},
            {"study_id": "absolute", "frontal": str(tmp_path / "outside.png")},
            {"study_id": "symlink", "frontal": "link.png"},
            {"study_id": "lateral_escape", "frontal": "ok.png", "lateral": "sub/../../outside.png"},
        ],
    )
    dataset = load_manifest(manifest)
    assert [e.study_id for e in dataset.entries] == ["ok"]
    messages = {e.line: e.message for e in dataset.errors}
    assert set(messages) == {2, 3, 4, 5}
    assert "outside the dataset folder" in messages[2]
    assert "must be relative" in messages[3]
    assert "outside the dataset folder" in messages[4]
    assert "lateral" in messages[5] and "outside the dataset folder" in messages[5]
    with pytest.raises(DatasetError):
        dataset.resolve("../outside.png")


def test_malformed_rows_are_reported_while_the_others_load(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 120, 100)
    manifest = write_jsonl(
        tmp_path / "studies.jsonl",
        [
            {"study_id": "first", "frontal": "a.png"},
            '{"study_id": "broken", "frontal": ',
            {"study_id": "no_frontal"},
            {"study_id": "missing_file", "frontal": "nope.png"},
            {"study_id": "bad_box", "frontal": "a.png", "reference_boxes": [{"label": "x", "x_min": 5, "y_min": 1}]},
            {
                "study_id": "bad_frame",
                "frontal": "a.png",
                "reference_boxes": [
                    {"label": "x", "x_min": 0.1, "y_min": 0.1, "x_max": 2, "y_max": 0.5, "frame": "normalized"}
                ],
            },
            {"study_id": 7, "frontal": "a.png"},
            "[1, 2]",
            {"study_id": "first", "frontal": "a.png"},
            {"study_id": "last", "frontal": "a.png", "indication": "Cough."},
        ],
    )
    dataset = load_manifest(manifest)
    assert [e.study_id for e in dataset.entries] == ["first", "last"]
    errors = {e.line: e.message for e in dataset.errors}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "not valid JSON" in errors[2]
    assert "frontal image path is missing" in errors[3]
    assert "not found" in errors[4]
    assert "lacks x_max" in errors[5]
    assert "above 1" in errors[6]
    assert "study_id must be text" in errors[7]
    assert "JSON object" in errors[8]
    assert "duplicate study_id 'first'" in errors[9] and "line 1" in errors[9]
    assert str(dataset.errors[0]).startswith("line 2: ")
    assert dataset.load_study("last").context.indication == "Cough."


def test_csv_and_jsonl_manifests_give_the_same_studies(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "f.png", 300, 200, seed=1)
    write_png(tmp_path / "img" / "l.png", 200, 300, seed=2)
    boxes = [{"label": "Nodule", "x_min": 10, "y_min": 20, "x_max": 50, "y_max": 60, "frame": "pixel", "source": "NIH"}]
    rows = [
        {
            "study_id": "s1",
            "frontal": "img/f.png",
            "lateral": "img/l.png",
            "prior_frontal": "img/f.png",
            "indication": "Dyspnoea.",
            "technique": "PA and lateral.",
            "comparison": "Prior.",
            "prior_report": "Clear lungs.",
            "reference_findings": ["Small nodule.", "No effusion."],
            "reference_boxes": boxes,
            "attribution": "Test data",
        },
        {"study_id": "s2", "frontal": "img/f.png", "reference_findings": ["One, two.", "Three."]},
    ]
    jsonl = load_manifest(write_jsonl(tmp_path / "studies.jsonl", rows))
    with (tmp_path / "studies.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS)
        writer.writeheader()
        first = dict(
            rows[0], reference_findings=" | ".join(rows[0]["reference_findings"]), reference_boxes=json.dumps(boxes)
        )
        writer.writerow(first)
        writer.writerow(dict(rows[1], reference_findings=json.dumps(rows[1]["reference_findings"])))
    from_csv = load_manifest(tmp_path / "studies.csv")
    assert jsonl.errors == from_csv.errors == []
    assert jsonl.entries == from_csv.entries
    assert jsonl.entries[0].reference_boxes == (ManifestBox("Nodule", Box(10, 20, 50, 60), "pixel", "NIH"),)
    assert jsonl.entries[1].lateral is None and jsonl.entries[1].indication is None


def test_csv_row_errors_carry_their_line_numbers(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 100, 100)
    (tmp_path / "studies.csv").write_text(
        'study_id,frontal,reference_boxes\ngood,a.png,\nbad,a.png,"[{""label"": 1"\nextra,a.png,,surplus\n',
        encoding="utf-8",
    )
    dataset = load_manifest(tmp_path)
    assert [e.study_id for e in dataset.entries] == ["good"]
    assert [(e.line, e.message.split(" (")[0]) for e in dataset.errors] == [
        (3, "reference_boxes is not a JSON list"),
        (4, "more cells than header columns"),
    ]


def test_normalized_reference_boxes_become_pixels_of_a_non_square_frontal(tmp_path: Path) -> None:
    write_png(tmp_path / "wide.png", 200, 100)
    norm = {"label": "Opacity", "x_min": 0.1, "y_min": 0.2, "x_max": 0.5, "y_max": 0.9, "frame": "normalized"}
    pixel = {"label": "Mass", "x_min": 20, "y_min": 10, "x_max": 40, "y_max": 30, "source": "RSNA"}
    write_jsonl(
        tmp_path / "studies.jsonl", [{"study_id": "w", "frontal": "wide.png", "reference_boxes": [norm, pixel]}]
    )
    study = load_manifest(tmp_path).load_study("w")
    opacity, mass = study.reference_boxes
    assert opacity.image_box.as_tuple() == pytest.approx((20.0, 20.0, 100.0, 90.0))
    assert (opacity.label, opacity.source) == ("Opacity", "reference")
    assert mass.image_box == Box(20, 10, 40, 30) and mass.source == "RSNA"


def test_study_cache_is_least_recently_used(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_png(tmp_path / f"{name}.png", 100, 100, seed=ord(name))
    write_jsonl(tmp_path / "studies.jsonl", [{"study_id": n, "frontal": f"{n}.png"} for n in ("a", "b")])
    dataset = load_manifest(tmp_path, cache_size=1)
    first = dataset.load_study("a")
    assert dataset.load_study("a") is first
    dataset.load_study("b")
    assert dataset.load_study("a") is not first
    assert dataset.load_study("a") == first  # same content, re-decoded


def test_manifest_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"studies\.jsonl or studies\.csv"):
        load_manifest(tmp_path)
    with pytest.raises(DatasetError, match="Cannot read"):
        load_manifest(tmp_path / "absent.jsonl")
    with pytest.raises(DatasetError, match=r"\.jsonl or \.csv"):
        load_manifest(tmp_path / "studies.txt")
    write_png(tmp_path / "a.png", 100, 100)
    write_jsonl(tmp_path / "studies.jsonl", [{"study_id": "a", "frontal": "a.png"}])
    with pytest.raises(DatasetError, match="'zzz' is not in dataset"):
        load_manifest(tmp_path).load_study("zzz")


# --- hostile rows: reported and skipped, never fatal ------------------------------------------


def hostile_manifest(tmp_path: Path, suffix: str) -> Path:
    write_png(tmp_path / "ok.png", 80, 70)
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    rows = [
        {"study_id": "good", "frontal": "ok.png"},
        {"study_id": "long", "frontal": "d/" * 3000 + "x.png"},
        {"study_id": "loop", "frontal": "loop_a"},
        {"study_id": "nulpath", "frontal": "ok\x00.png"},
        {"study_id": "nultext", "frontal": "ok.png", "indication": "cough\x00"},
        {"study_id": "x" * 300, "frontal": "ok.png"},
    ]
    if suffix == ".jsonl":
        return write_jsonl(tmp_path / "studies.jsonl", rows)
    path = tmp_path / "studies.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_hostile_rows_are_reported_with_study_and_field_and_the_rest_loads(tmp_path: Path, suffix: str) -> None:
    dataset = load_manifest(hostile_manifest(tmp_path, suffix))
    assert [e.study_id for e in dataset.entries] == ["good"]
    messages = [e.message for e in dataset.errors]
    assert len(messages) == 5
    long, loop, nul_path, nul_text, long_id = messages
    assert long.startswith("study 'long': frontal: path 'd/d/") and "6,005 characters long" in long
    assert loop == "study 'loop': frontal: path 'loop_a' is a symbolic link loop"
    assert nul_path == "study 'nulpath': frontal contains a NUL character at position 2"
    assert nul_text == "study 'nultext': indication contains a NUL character at position 5"
    assert long_id.startswith("study_id 'xxx") and "longer than 200 characters" in long_id
    assert all(len(m) < 300 for m in messages)
    assert dataset.load_study("good").frontal.width == 80
