"""RadFact's box definitions (union of evidence boxes, 224 x 224 truncated masks) next to the best-single-box one."""

from __future__ import annotations

import pytest

from model_backend.boxes import image_to_model_box
from model_backend.evaluation.radfact_boxes import Phrase, boxes_supported, one_way, radfact_box_scores, radfact_mask
from model_backend.evaluation.summary import summarise
from model_backend.metrics import study_row
from model_backend.types import Box, Finding, ReferenceBox

SIDE = 256  # normalised coordinates px / 256 are exact, and px / 256 * 224 is exact for multiples of 8


def finding(text: str, *image_boxes: Box) -> Finding:
    return Finding(text, tuple(image_to_model_box(b, SIDE, SIDE) for b in image_boxes) or None)


def refs(label: str, *boxes: Box) -> list[ReferenceBox]:
    return [ReferenceBox(label, b) for b in boxes]


def row(findings: list[Finding], reference: list[ReferenceBox], study_id: str = "s1") -> dict:
    return study_row(study_id, "A", findings, SIDE, SIDE, reference, [])


def test_mask_is_drawn_as_radfact_draws_it() -> None:
    mask = radfact_mask([Box(0.1, 0.1, 0.2, 0.2)])  # 22.4 -> 22, 44.8 -> 44: cells 22..43
    assert mask.sum() == 22 * 22 and mask[22, 22] and mask[43, 43] and not mask[44, 22] and not mask[21, 30]
    assert radfact_mask([Box(-0.2, 0.5, 1.3, 1.0)]).sum() == 224 * 112  # clipped to the image first
    assert radfact_mask([Box(0.5, 0.5, 0.5, 0.9)]).sum() == 0


def test_support_is_more_than_half_inside_the_union_of_evidence() -> None:
    left, right = Box(0.0, 0.0, 0.5, 0.5), Box(0.5, 0.0, 1.0, 0.5)
    straddling = Box(0.25, 0.0, 0.75, 0.5)
    assert boxes_supported([straddling], [left, right])
    assert not boxes_supported([straddling], [left]) and not boxes_supported([straddling], [right])  # exactly half
    assert not boxes_supported([straddling], [])


def test_box_split_across_two_touching_reference_boxes() -> None:
    """Today's metric needs one reference box to hold > 50% of the generated box; RadFact takes their union."""
    reference = refs("Effusion", Box(0, 0, 128, 128), Box(128, 0, 256, 128))
    r = row([finding("Left pleural effusion.", Box(64, 0, 192, 128))], reference)
    assert (r["precision_hits"], r["precision"]) == (0, 0.0)  # 50% inside each reference box: no hit
    assert (r["recall_hits"], r["recall"]) == (0, 0.0)  # each reference box half covered
    assert r["radfact_spatial_precision"] == 1.0 and r["radfact_grounding_precision"] == 1.0
    # The reference phrase (both boxes) lies half inside the generated box: not supported either way.
    assert r["radfact_spatial_recall"] == 0.0 and r["radfact_grounding_recall"] == 0.0
    assert r["per_class"]["Effusion"]["radfact_spatial_precision"] == 1.0


def test_box_on_target_but_naming_another_finding() -> None:
    """Today's metric is class-agnostic; RadFact needs the sentence to be entailed (here: name the class)."""
    reference = refs("Nodule", Box(32, 32, 96, 96))
    r = row([finding("Right upper zone mass.", Box(32, 32, 96, 96))], reference)
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["radfact_spatial_precision"] == 0.0 and r["radfact_grounding_precision"] is None  # not entailed
    assert r["radfact_spatial_recall"] == 0.0 and r["radfact_grounding_recall"] is None


def test_ungrounded_evidence_and_unannotated_studies() -> None:
    reference = refs("Effusion", Box(0, 128, 64, 256))
    r = row([finding("Small left effusion.")], reference)  # entailed, no boxes to support the reference box
    assert r["radfact_spatial_precision"] is None and r["radfact_grounding_precision"] is None
    assert r["radfact_spatial_recall"] == 0.0 and r["radfact_grounding_recall"] == 0.0
    unannotated = row([finding("Small left effusion.", Box(0, 128, 64, 256))], [])
    assert unannotated["radfact_spatial_precision"] is None and unannotated["n_ref_boxes"] == 0


def test_directions_and_classes() -> None:
    generated = [
        Phrase("effusion", (Box(0.0, 0.0, 0.2, 0.2),), frozenset({"Effusion"})),
        Phrase("nodule", (Box(0.6, 0.6, 0.7, 0.7),), frozenset({"Nodule"})),
        Phrase("clear", None, frozenset()),
    ]
    reference = [
        Phrase("Effusion", (Box(0.0, 0.0, 0.25, 0.25),), frozenset({"Effusion"})),
        Phrase("Nodule", (Box(0.1, 0.6, 0.2, 0.7),), frozenset({"Nodule"})),
    ]
    scores = radfact_box_scores(generated, reference)
    assert scores.precision == one_way(generated, reference)
    precision = scores.precision
    assert (precision.n_phrases, precision.n_with_boxes, precision.n_spatially_entailed) == (3, 2, 1)
    # Precision: the effusion box (44 x 44 cells) lies inside the reference (56 x 56), the nodule box misses.
    # Recall: the reference effusion is 1936 / 3136 = 62% inside the generated one; the reference nodule is missed.
    assert scores.as_row() == {
        "radfact_spatial_precision": 0.5,
        "radfact_spatial_recall": 0.5,
        "radfact_grounding_precision": 0.5,
        "radfact_grounding_recall": 0.5,
    }
    effusion_precision, effusion_recall = scores.per_class["Effusion"]
    assert effusion_precision.spatial == 1.0 and (effusion_recall.n_with_boxes, effusion_recall.spatial) == (1, 1.0)
    nodule_precision, _ = scores.per_class["Nodule"]
    assert nodule_precision.spatial == 0.0 and nodule_precision.grounding == 0.0


def test_dataset_value_is_the_mean_of_study_fractions() -> None:
    """RadFact averages per-study fractions (nanmean); today's box precision is a micro ratio."""
    target = Box(0, 0, 64, 64)
    good = row([finding("Effusion.", target)], refs("Effusion", target), "s1")  # 1 of 1
    misses = [finding("Effusion.", Box(128, 128, 192, 192))] * 3
    bad = row(misses, refs("Effusion", target), "s2")  # 0 of 3
    context = summarise([good, bad], n_resamples=200).contexts["A"]
    assert context.metrics["radfact_spatial_precision"].value == pytest.approx(0.5)
    assert context.metrics["precision"].value == pytest.approx(0.25)
