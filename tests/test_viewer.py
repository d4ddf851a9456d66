"""What the browser viewer receives: image-frame layers, colours, pictures, window ranges, payload sizes,
crop preview."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from model_backend.boxes import model_to_image_box
from model_backend.datasets import bundled_samples_path, load_manifest
from model_backend.types import BackendInfo, Box, Finding, PromptContext, ReferenceBox, Report, XrayImage
from webapp import viewer
from webapp.viewer import (
    CROP_OUTLINE_RGB,
    PALETTE,
    DisplayImageCache,
    crop_outline_image,
    finding_colour,
    layers_from_report,
    reference_layers,
)
from webapp.viewer_payload import report_payload, study_payload, window_ranges, window_render, without_pictures

REPO = Path(__file__).resolve().parents[1]
NIH_SAMPLE_NAME = "00005066_030.png"
NIH_SAMPLE_CANDIDATES = (
    REPO / "assets" / "samples" / NIH_SAMPLE_NAME,
    Path("/work/shared/samples/nih_cxr14_bbox") / NIH_SAMPLE_NAME,
)


def make_image(pixels: np.ndarray, display: np.ndarray | None = None, window=None) -> XrayImage:
    if display is None:
        lo, hi = float(pixels.min()), float(pixels.max())
        display = np.rint((pixels.astype(np.float64) - lo) / (hi - lo) * 255).astype(np.uint8)
    return XrayImage(
        pixels=pixels,
        display=display,
        source_format="test",
        bits_stored=pixels.dtype.itemsize * 8,
        content_key=hashlib.sha256(pixels.tobytes() + display.tobytes()).hexdigest(),
        default_window=window,
    )


def gradient_image(width: int, height: int) -> XrayImage:
    """16-bit image, brighter to the right and down (no two rows or columns alike)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return make_image((xx * 20 + yy * 7).astype(np.uint16))


def make_report(findings: tuple[Finding, ...], width: int = 700, height: int = 500, name: str = "A") -> Report:
    return Report(
        study_id="s1",
        context=PromptContext(name=name),
        findings=findings,
        image_width=width,
        image_height=height,
        raw_text="",
        complete=True,
        backend=BackendInfo(name="replay", model_id="test"),
    )


def decode(data_uri: str) -> np.ndarray:
    header, payload = data_uri.split(",", 1)
    assert header in ("data:image/jpeg;base64", "data:image/png;base64")
    return cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_UNCHANGED)


FINDINGS = (
    Finding("There is a nodule in the left upper lobe.", (Box(0.1, 0.2, 0.5, 0.6),)),
    Finding("The heart size is normal."),
    Finding("Bilateral effusions.", (Box(0.05, 0.6, 0.3, 0.9), Box(0.7, 0.6, 0.95, 0.9))),
)


@pytest.fixture(scope="module")
def wide() -> XrayImage:
    return gradient_image(700, 500)


def test_boxes_land_on_image_frame_pixels(wide: XrayImage) -> None:
    report = make_report(FINDINGS)
    layers = layers_from_report(report)
    # 700x500: the crop is the 500 px square starting at x_off = 100.
    assert layers[0].image_boxes == (model_to_image_box(FINDINGS[0].model_boxes[0], 700, 500),)
    assert layers[0].image_boxes[0].as_tuple() == pytest.approx((150, 100, 350, 300))
    payload = report_payload(report, report_id="r1")
    first = payload["findings"][0]
    assert first["boxes"] == [pytest.approx([150, 100, 350, 300])]
    assert (first["index"], first["text"], first["grounded"]) == (0, FINDINGS[0].text, True)
    assert payload["findings"][1]["boxes"] == [] and not payload["findings"][1]["grounded"]
    assert len(payload["findings"][2]["boxes"]) == 2
    assert (payload["image_width"], payload["image_height"]) == (700, 500)


def test_a_portrait_image_maps_with_a_vertical_offset() -> None:
    report = make_report(FINDINGS, width=500, height=700)
    (box,) = report_payload(report)["findings"][0]["boxes"]
    assert box == pytest.approx([50, 200, 250, 400])  # the crop is the 500 px square starting at y_off = 100


def test_colours_follow_the_finding_index_unless_the_caller_gives_them() -> None:
    assert len(set(PALETTE)) == len(PALETTE) == 12
    assert finding_colour(12) == finding_colour(0) != finding_colour(1)
    payload = report_payload(make_report(FINDINGS))
    assert [f["colour"] for f in payload["findings"]] == [finding_colour(i) for i in range(3)]
    given = report_payload(make_report(FINDINGS), colours=["#111111", "#222222", "#333333"], dash="9 5")
    assert [f["colour"] for f in given["findings"]] == ["#111111", "#222222", "#333333"]
    assert {f["dash"] for f in given["findings"]} == {"9 5"}


def test_reference_layers_are_grouped_and_white() -> None:
    refs = (
        ReferenceBox("Nodule", Box(10, 20, 30, 40), "NIH"),
        ReferenceBox("Effusion", Box(50, 60, 70, 80), "NIH"),
        ReferenceBox("Nodule", Box(100, 120, 130, 140), "NIH"),
    )
    layers = reference_layers(refs)
    assert [layer.label for layer in layers] == ["Reference: Nodule (NIH)", "Reference: Effusion (NIH)"]
    assert layers[0].image_boxes == (Box(10, 20, 30, 40), Box(100, 120, 130, 140))  # image frame: no conversion
    assert all(layer.colour not in PALETTE for layer in layers)


def test_render_cache_hit_returns_the_same_picture(wide: XrayImage) -> None:
    cache = DisplayImageCache(max_rendered=2)
    first = cache.render_base(wide, (5000.0, 8000.0), False)
    assert cache.render_base(wide, (5000, 8000), False) is first
    other = cache.render_base(wide, (4000.0, 8000.0), False)
    assert other.data_uri != first.data_uri
    cache.render_base(wide, None, False)  # evicts the oldest entry
    again = cache.render_base(wide, (5000.0, 8000.0), False)
    assert again is not first and again.data_uri == first.data_uri


def test_render_downscales_and_windows(wide: XrayImage) -> None:
    rendered = DisplayImageCache().render_base(wide, (float(wide.pixels.max()), 2.0), False, max_side=350)
    picture = decode(rendered.data_uri)
    assert picture.shape == (250, 350) == (rendered.height, rendered.width)
    assert rendered.scale == pytest.approx(0.5)
    # A window of width 2 at the maximum leaves everything but the brightest corner black.
    assert picture[:200, :300].max() < 20
    inverted = decode(DisplayImageCache().render_base(wide, None, True, max_side=350).data_uri)
    plain = decode(DisplayImageCache().render_base(wide, None, False, max_side=350).data_uri)
    assert np.abs(inverted.astype(int) + plain.astype(int) - 255).mean() < 3


def test_windowing_keeps_monochrome1_the_right_way_round() -> None:
    pixels = (np.mgrid[0:300, 0:400][1] * 100).astype(np.uint16)  # bright to the right in raw values
    window = (20000.0, 40000.0)
    display = (255 - np.clip((pixels / 40000.0) * 255, 0, 255)).astype(np.uint8)  # MONOCHROME1: shown inverted
    image = make_image(pixels, display, window)
    shown = decode(DisplayImageCache().render_base(image, window, False).data_uri)
    assert shown[:, :40].mean() > 200 and shown[:, -40:].mean() < 60
    assert np.abs(shown.astype(int) - display).mean() < 4


def test_large_image_is_never_embedded_at_full_resolution() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:2500, 0:3000]
    pixels = (xx * 5 + yy * 3 + rng.normal(0, 300, (2500, 3000)).clip(-900, 900) + 1000).astype(np.uint16)
    rendered = DisplayImageCache().render_base(make_image(pixels), None, False)
    assert (rendered.width, rendered.height) == (1024, 853)
    assert len(rendered.data_uri) * 3 / 4 <= viewer.MAX_IMAGE_BYTES + 3


@pytest.mark.parametrize(("width", "height"), [(700, 500), (500, 700)])
def test_crop_outline_marks_the_centre_square(width: int, height: int) -> None:
    flat = np.full((height, width), 200, np.uint8)
    image = make_image(flat, flat)
    rgb = crop_outline_image(image, max_side=700)
    assert rgb.shape == (height, width, 3)
    along = rgb[height // 2] if width > height else rgb[:, width // 2]
    assert tuple(along[100]) == CROP_OUTLINE_RGB and tuple(along[599]) == CROP_OUTLINE_RGB
    assert tuple(along[300]) == (200, 200, 200)  # inside: untouched
    assert tuple(along[50]) == tuple(along[650]) == (70, 70, 70)  # outside: dimmed


def test_crop_outline_scales_with_the_preview() -> None:
    flat = np.full((500, 700), 200, np.uint8)
    rgb = crop_outline_image(make_image(flat, flat), max_side=350)
    assert rgb.shape == (250, 350, 3)
    row = rgb[125]
    assert tuple(row[50]) == CROP_OUTLINE_RGB and tuple(row[299]) == CROP_OUTLINE_RGB
    assert tuple(row[49]) == (70, 70, 70) and tuple(row[300]) == (70, 70, 70)


@pytest.fixture(scope="module")
def samples():
    return load_manifest(bundled_samples_path())


def test_every_bundled_study_payload_fits_the_browser_budget(samples) -> None:
    """Frontal picture, lateral and prior thumbnails and boxes: at most 400 KB per study opened."""
    sizes = {}
    for entry in samples.entries:
        payload = study_payload(samples.load_study(entry.study_id))
        sizes[entry.study_id] = len(json.dumps(payload).encode())
        assert max(decode(payload["frontal"]["src"]).shape[:2]) <= 1024
    assert max(sizes.values()) <= 400_000, sizes
    shared = without_pictures(study_payload(samples.load_study("radiopaedia_pcp_2")))
    assert shared["frontal"]["src"] is None and shared["lateral"]["src"] is None and shared["shared_pictures"]


def test_window_ranges_come_from_the_image(samples) -> None:
    j2k = samples.load_study("dicom_nema_rg1_j2k").frontal
    ranges = window_ranges(j2k)
    assert ranges["min"] <= float(j2k.pixels.min()) and ranges["max"] >= float(j2k.pixels.max())
    assert ranges["max"] > 255 and ranges["voi"]
    assert ranges["default"] == list(j2k.default_window) == [15000.0, 30000.0]
    assert ranges["width_max"] >= 30000 > float(j2k.pixels.max() - j2k.pixels.min())  # the VOI window is wider
    for centre, width in ranges["presets"].values():
        assert ranges["min"] <= centre <= ranges["max"] + 1 and 1 <= width <= ranges["width_max"]
    png = samples.entries[0]
    eight_bit = window_ranges(samples.load_study(png.study_id).frontal)
    assert eight_bit["max"] <= 255 and eight_bit["width_max"] <= 256 and not eight_bit["voi"]


def test_a_window_render_by_content_key(samples) -> None:
    image = samples.load_study("dicom_nema_rg1_j2k").frontal
    study_payload(samples.load_study("dicom_nema_rg1_j2k"))  # opening it keeps it ready
    lo, hi = window_ranges(image)["min"], window_ranges(image)["max"]
    at_top = decode(window_render(image.content_key, hi, 2)).astype(float)
    at_bottom = decode(window_render(image.content_key, lo, 2)).astype(float)
    assert abs(at_top.mean() - at_bottom.mean()) > 200  # (MONOCHROME1: the top of the range is shown dark)
    with pytest.raises(KeyError):
        window_render("no-such-image", 100, 10)
