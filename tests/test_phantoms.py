"""The procedural chest phantoms the demo model is trained and evaluated on."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from model_backend.boxes import centre_crop_square
from model_backend.demo_model.phantoms import (
    COMPARISONS_WITH_PRIOR,
    HEART_NORMAL,
    INDICATIONS,
    KINDS,
    LUNGS_CLEAR,
    NO_COMPARISON,
    NO_CONSOLIDATION,
    NO_EFFUSION,
    NO_PNEUMOTHORAX,
    SIDES,
    TECHNIQUE_FRONTAL,
    TECHNIQUE_WITH_LATERAL,
    Phantom,
    PhantomFinding,
    all_template_sentences,
    render_phantom,
    report_findings,
    sentence_for,
    to_png_bytes,
)
from model_backend.types import Box


@dataclass(frozen=True)
class _Record:
    """A rendered phantom without its pixels (200 full-size studies would not fit in memory)."""

    seed: int
    shape: tuple[int, ...]
    dtype: np.dtype
    prior_shape: tuple[int, ...] | None
    phantom: Phantom


@pytest.fixture(scope="module")
def records() -> list[_Record]:
    out = []
    for seed in range(200):
        ph = render_phantom(seed, with_lateral=False)  # the lateral view adds pixels, no findings or text
        prior_shape = None if ph.prior_frontal is None else ph.prior_frontal.shape
        empty = np.zeros((1, 1), ph.frontal.dtype)
        light = Phantom(
            empty, None, None, ph.findings, ph.normal_sentences, ph.prior_findings,
            ph.indication, ph.technique, ph.comparison, ph.prior_report,
        )  # fmt: skip
        out.append(_Record(seed, ph.frontal.shape, ph.frontal.dtype, prior_shape, light))
    return out


def _sentences(ph: Phantom) -> list[str]:
    """Every sentence a phantom can contribute to a prompt or a target."""
    out = [s for with_prior in (False, True) for s, _ in report_findings(ph, with_prior)]
    out += [f.sentence for f in (*ph.findings, *ph.prior_findings)]
    out += [ph.indication, ph.technique, ph.comparison]
    if ph.prior_report:
        out += [s if s.endswith(".") else s + "." for s in ph.prior_report.split(". ")]
    return out


def test_same_seed_same_phantom_and_different_seeds_differ() -> None:
    a = render_phantom(7, with_lateral=True, with_prior=True, size=(400, 480))
    b = render_phantom(7, with_lateral=True, with_prior=True, size=(400, 480))
    for x, y in ((a.frontal, b.frontal), (a.lateral, b.lateral), (a.prior_frontal, b.prior_frontal)):
        assert x is not None and y is not None
        np.testing.assert_array_equal(x, y)
    assert (a.findings, a.prior_findings, a.normal_sentences) == (b.findings, b.prior_findings, b.normal_sentences)
    assert (a.indication, a.technique, a.comparison, a.prior_report) == (
        b.indication, b.technique, b.comparison, b.prior_report,
    )  # fmt: skip
    c = render_phantom(8, with_lateral=True, with_prior=True, size=(400, 480))
    assert not np.array_equal(a.frontal, c.frontal)


def test_overriding_one_option_leaves_the_rest_as_drawn() -> None:
    drawn = render_phantom(11)
    shown = render_phantom(11, with_prior=True, with_lateral=True)
    hidden = render_phantom(11, with_prior=False, with_lateral=False)
    np.testing.assert_array_equal(drawn.frontal, shown.frontal)
    np.testing.assert_array_equal(drawn.frontal, hidden.frontal)
    assert [(f.kind, f.side, f.zone, f.image_box) for f in shown.findings] == [
        (f.kind, f.side, f.zone, f.image_box) for f in hidden.findings
    ]
    assert hidden.lateral is None and hidden.prior_frontal is None and hidden.prior_report is None
    assert shown.lateral is not None and shown.prior_frontal is not None
    deep = render_phantom(11, bit_depth=16, size=(500, 400))
    assert deep.frontal.dtype == np.uint16 and deep.frontal.shape == (400, 500)


def test_sizes_aspect_ratios_and_bit_depths(records: list[_Record]) -> None:
    depths = set()
    for rec in records[:50]:
        h, w = rec.shape
        assert 384 <= min(w, h) <= 1024
        assert 0.75 <= w / h <= 1.33
        assert rec.prior_shape in (None, rec.shape)
        depths.add(rec.dtype)
    assert depths == {np.dtype(np.uint8), np.dtype(np.uint16)}
    laterals = [render_phantom(seed, with_prior=False, size=(384, 400)).lateral for seed in range(8)]
    assert all(a is None or a.shape == (400, 384) for a in laterals)
    assert any(a is None for a in laterals) and any(a is not None for a in laterals)
    assert any(r.prior_shape for r in records[:50]) and any(r.prior_shape is None for r in records[:50])


def test_sixteen_bit_uses_the_range_above_a_detector_offset() -> None:
    img = render_phantom(3, bit_depth=16, size=(384, 384)).frontal
    assert 200 < int(img.min()) < 6000 and int(img.max()) > 45000


def test_boxes_lie_inside_the_centre_crop_with_a_margin(records: list[_Record]) -> None:
    for rec in records:
        h, w = rec.shape
        x0, y0, side = centre_crop_square(w, h)
        margin = 0.02 * side
        for f in rec.phantom.findings:
            b = f.image_box
            assert b.width >= 2 and b.height >= 2, (rec.seed, f)
            assert x0 + margin <= b.x_min and b.x_max <= x0 + side - margin, (rec.seed, f)
            assert y0 + margin <= b.y_min and b.y_max <= y0 + side - margin, (rec.seed, f)
        for f in rec.phantom.prior_findings:
            b = f.image_box
            assert 0 <= b.x_min < b.x_max <= w and 0 <= b.y_min < b.y_max <= h, (rec.seed, f)


def test_finding_counts_kinds_and_uniqueness(records: list[_Record]) -> None:
    counts = [len(r.phantom.findings) for r in records]
    assert max(counts) <= 3
    assert 0.12 < counts.count(0) / len(counts) < 0.4
    kinds = {f.kind for r in records for f in r.phantom.findings}
    assert kinds == set(KINDS)
    for rec in records:
        keys = [(f.kind, f.side) for f in rec.phantom.findings]
        assert len(keys) == len(set(keys)), rec.seed
        for f in rec.phantom.findings:
            assert (f.side is None) == (f.kind == "cardiomegaly")
            assert (f.zone is not None) == (f.kind in ("nodule", "mass", "consolidation", "effusion", "pneumothorax"))


def test_laterality_and_zone_follow_the_box(records: list[_Record]) -> None:
    zone_rows: dict[str, list[float]] = {"upper": [], "middle": [], "lower": []}
    for rec in records:
        h, w = rec.shape
        x0, y0, side = centre_crop_square(w, h)
        for f in rec.phantom.findings:
            if f.side is None:
                continue
            cx = ((f.image_box.x_min + f.image_box.x_max) / 2 - x0) / side
            # radiological convention: the patient's right lung is on the image left
            assert (cx < 0.5) == (f.side == "right"), (rec.seed, f)
            if f.kind in ("nodule", "mass", "consolidation"):
                zone_rows[f.zone or ""].append(((f.image_box.y_min + f.image_box.y_max) / 2 - y0) / side)
            elif f.kind == "effusion":
                assert f.zone == "lower" and (f.image_box.y_max - y0) / side > 0.6
            else:
                assert f.zone == "upper" and (f.image_box.y_min - y0) / side < 0.25
    upper, middle, lower = (zone_rows[z] for z in ("upper", "middle", "lower"))
    assert max(upper) < min(middle) + 0.05 and max(middle) < min(lower) + 0.05
    assert statistics.mean(upper) < statistics.mean(middle) < statistics.mean(lower)


def test_report_order_is_abnormal_by_kind_then_normal_statements(records: list[_Record]) -> None:
    for rec in records:
        ph = rec.phantom
        report = report_findings(ph, with_prior=False)
        grounded = [b for _, b in report if b is not None]
        assert len(grounded) == len(ph.findings) and all(b is not None for _, b in report[: len(grounded)])
        assert [s for s, b in report if b is None] == list(ph.normal_sentences)
        order = [(KINDS.index(f.kind), SIDES.index(f.side) if f.side else 0) for f in ph.findings]
        assert order == sorted(order), rec.seed


def _expected_normals(kinds: set[str]) -> set[str]:
    focal = kinds & {"nodule", "mass", "consolidation"}
    out = {LUNGS_CLEAR} if not focal else ({NO_CONSOLIDATION} if "consolidation" not in kinds else set())
    out |= {NO_EFFUSION} if "effusion" not in kinds else set()
    out |= {NO_PNEUMOTHORAX} if "pneumothorax" not in kinds else set()
    out |= {HEART_NORMAL} if "cardiomegaly" not in kinds else set()
    return out


def test_normal_statements_never_contradict_the_findings(records: list[_Record]) -> None:
    seen = set()
    for rec in records:
        ph = rec.phantom
        kinds = {f.kind for f in ph.findings}
        assert set(ph.normal_sentences) == _expected_normals(kinds), rec.seed
        seen |= set(ph.normal_sentences)
        if ph.prior_report is not None:
            prior_kinds = {f.kind for f in ph.prior_findings}
            for sentence in _expected_normals(prior_kinds):
                assert sentence in ph.prior_report
            for f in ph.prior_findings:
                assert f.sentence in ph.prior_report
    assert seen == {LUNGS_CLEAR, NO_CONSOLIDATION, NO_EFFUSION, NO_PNEUMOTHORAX, HEART_NORMAL}


def test_sentences_depend_on_whether_the_prior_is_shown(records: list[_Record]) -> None:
    statuses = set()
    for rec in records:
        ph = rec.phantom
        plain = [s for s, _ in report_findings(ph, with_prior=False)]
        if ph.prior_report is None:
            assert ph.comparison == NO_COMPARISON and not ph.prior_findings
            assert all(f.status is None for f in ph.findings)
            assert plain == [s for s, _ in report_findings(ph, with_prior=True)]
            continue
        assert ph.comparison in COMPARISONS_WITH_PRIOR
        with_prior = [s for s, _ in report_findings(ph, with_prior=True)]
        for f, s_plain, s_prior in zip(ph.findings, plain, with_prior, strict=False):
            assert f.status is not None
            statuses.add(f.status)
            assert s_plain == sentence_for(f, with_prior=False) and "new" not in s_plain.split()
            assert s_prior == sentence_for(f, with_prior=True) == f.sentence and s_prior != s_plain
            words = {"new": ("new", "newly"), "unchanged": ("unchanged", "remains"), "increased": ("increased",)}[
                f.status
            ]
            assert any(word in s_prior.rstrip(".").split() for word in words), s_prior
            on_prior = [p for p in ph.prior_findings if (p.kind, p.side) == (f.kind, f.side)]
            assert len(on_prior) == (0 if f.status == "new" else 1), rec.seed
            if f.status == "increased" and f.kind in ("nodule", "mass", "consolidation", "cardiomegaly"):
                assert on_prior[0].image_box.width * on_prior[0].image_box.height < (
                    f.image_box.width * f.image_box.height
                )
    assert statuses == {"new", "unchanged", "increased"}


def test_examples_of_the_templates() -> None:
    box = Box(1, 2, 3, 4)
    nodule = PhantomFinding("nodule", "right", "upper", box, "", "new")
    assert sentence_for(nodule, with_prior=False) == "There is a nodule in the right upper zone."
    assert sentence_for(nodule, with_prior=True) == "There is a new nodule in the right upper zone."
    effusion = PhantomFinding("effusion", "left", "lower", box, "", "unchanged")
    assert sentence_for(effusion, with_prior=True) == "The left pleural effusion is unchanged."
    grown = PhantomFinding("effusion", "right", "lower", box, "", "increased")
    assert sentence_for(grown, with_prior=True) == "The right pleural effusion has increased."
    mass = PhantomFinding("mass", "left", "middle", box, "", None)
    assert sentence_for(mass, with_prior=True) == "There is a large mass in the left middle zone."
    ptx = PhantomFinding("pneumothorax", "right", "upper", box, "", None)
    assert sentence_for(ptx, with_prior=False) == "There is a right apical pneumothorax."
    heart = PhantomFinding("cardiomegaly", None, None, box, "", None)
    assert sentence_for(heart, with_prior=False) == "The heart is enlarged."


def test_every_emitted_text_is_in_the_fixed_vocabulary(records: list[_Record]) -> None:
    vocabulary = all_template_sentences()
    assert len(vocabulary) == len(set(vocabulary)) and len(vocabulary) < 200
    known = set(vocabulary)
    for rec in records:
        for sentence in _sentences(rec.phantom):
            assert sentence in known, (rec.seed, sentence)
    assert {*INDICATIONS, TECHNIQUE_FRONTAL, TECHNIQUE_WITH_LATERAL, NO_COMPARISON} <= known


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int32) - b.astype(np.int32)).astype(np.float64)


def test_boxes_are_tight_around_what_was_drawn() -> None:
    checked: dict[str, int] = {}
    for seed in range(70):
        ph = render_phantom(seed, with_lateral=False, with_prior=False, size=(448, 512), bit_depth=8)
        if not ph.findings:
            continue
        clean = render_phantom(
            seed, with_lateral=False, with_prior=False, size=(448, 512), bit_depth=8, draw_findings=False
        )
        assert not clean.findings
        diff = _diff(ph.frontal, clean.frontal)
        union = np.zeros(diff.shape, bool)
        for f in ph.findings:
            b = f.image_box
            union[int(b.y_min) : int(b.y_max), int(b.x_min) : int(b.x_max)] = True
        # nothing visible changes outside the boxes (ill-defined consolidation leaves a faint sub-threshold halo)
        assert diff[~union].mean() < 0.08, seed
        for f in ph.findings:
            x0, y0, x1, y1 = (int(v) for v in f.image_box.as_tuple())
            inside = diff[y0:y1, x0:x1]
            assert inside.mean() > 1.0 and inside.mean() > 20 * diff[~union].mean() + 0.5, (seed, f)
            if len(ph.findings) == 1 and f.kind != "cardiomegaly":
                # every side of the box touches the lesion, and two pixels further out it has faded
                for strip in (inside[:2], inside[-2:], inside[:, :2], inside[:, -2:]):
                    assert strip.max() >= 2, (seed, f)
                ring = diff[max(0, y0 - 5) : y1 + 5, max(0, x0 - 5) : x1 + 5].copy()
                ring[3:-3, 3:-3] = 0
                assert ring.max() <= max(4.0, 0.25 * inside.max()), (seed, f)
            checked[f.kind] = checked.get(f.kind, 0) + 1
    assert set(checked) == set(KINDS)


def test_findings_show_on_the_prior_and_lateral_views() -> None:
    seed = next(
        s for s in range(200)
        if any(f.kind == "effusion" and f.status == "unchanged" for f in render_phantom(s, with_prior=True).findings)
    )  # fmt: skip
    opts = {"with_prior": True, "with_lateral": True, "size": (448, 448), "bit_depth": 8}
    ph, clean = render_phantom(seed, **opts), render_phantom(seed, draw_findings=False, **opts)
    assert ph.prior_frontal is not None and clean.prior_frontal is not None
    assert ph.lateral is not None and clean.lateral is not None
    prior_effusion = next(f for f in ph.prior_findings if f.kind == "effusion")
    b = prior_effusion.image_box
    prior_diff = _diff(ph.prior_frontal, clean.prior_frontal)
    assert prior_diff[int(b.y_min) : int(b.y_max), int(b.x_min) : int(b.x_max)].mean() > 3 * prior_diff.mean()
    # on the lateral view fluid collects in the posterior costophrenic sulcus: lower, image right
    lateral_diff = _diff(ph.lateral, clean.lateral)
    assert lateral_diff[280:400, 224:400].mean() > 3 * lateral_diff[:200, :224].mean() + 0.5


def test_images_look_like_a_chest_radiograph() -> None:
    for seed in range(12):
        ph = render_phantom(seed, with_lateral=True, with_prior=False, bit_depth=8, size=(640, 512),
                            draw_findings=False)  # fmt: skip
        img = ph.frontal.astype(np.float64)

        def at(u: float, v: float, img: np.ndarray = img) -> float:
            """Mean of a 16 px patch at crop coordinates (u, v); the crop is the central 512 px square."""
            x, y = 64 + int(u * 512), int(v * 512)
            return float(img[y - 8 : y + 8, max(0, x - 8) : x + 8].mean())

        lungs = (at(0.3, 0.45) + at(0.7, 0.45)) / 2
        assert lungs + 40 < at(0.5, 0.45)  # mediastinum / spine
        assert lungs + 40 < at(0.5, 0.92)  # below the diaphragm
        assert at(-0.12, 0.5) + 40 < at(0.1, 0.5)  # air outside the body, soft tissue of the chest wall
        assert at(0.62, 0.66) > lungs + 30  # heart shadow, left of the patient = image right
        assert ph.lateral is not None and not np.array_equal(ph.lateral, img)
        noise = np.std(cv2.Laplacian(img[240:272, 204:236], cv2.CV_64F))
        assert 0.3 < noise < 20  # noisy like a detector, not a flat cartoon and not snow


def test_png_bytes_round_trip_for_both_depths() -> None:
    for depth in (8, 16):
        img = render_phantom(5, size=(400, 390), bit_depth=depth, with_lateral=False, with_prior=False).frontal
        decoded = cv2.imdecode(np.frombuffer(to_png_bytes(img), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == img.dtype
        np.testing.assert_array_equal(decoded, img)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32), np.zeros(4, np.uint16), [[0, 1]]],
)
def test_png_bytes_rejects_what_is_not_a_grayscale_image(bad: object) -> None:
    with pytest.raises(ValueError, match="2-D uint8 or uint16"):
        to_png_bytes(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "non-negative"),
        ({"seed": 1.5}, "non-negative"),
        ({"seed": 1, "bit_depth": 12}, "8 or 16"),
        ({"seed": 1, "size": (100, 512)}, "width, height"),
        ({"seed": 1, "size": (512,)}, "width, height"),
    ],
)
def test_bad_arguments_get_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_phantom(**kwargs)
