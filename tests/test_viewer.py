"""The image + boxes figure: frames, layers, colours, rendering cache, JSON size, crop preview."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from model_backend.boxes import model_to_image_box
from model_backend.images import load_image_path
from model_backend.types import BackendInfo, Box, Finding, PromptContext, ReferenceBox, Report, XrayImage
from webapp import viewer
from webapp.viewer import (
    CROP_OUTLINE_RGB,
    PALETTE,
    DisplayImageCache,
    FigureSizeError,
    build_figure,
    crop_outline_image,
    figure_json_size,
    finding_colour,
    layers_from_report,
    reference_layers,
    with_visibility,
)

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


def box_traces(fig, key: str) -> list:
    return [t for t in fig.data if t.type == "scatter" and t.legendgroup == key]


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
    fig = build_figure(DisplayImageCache().render_base(wide, None, False), 700, 500, layers)
    (trace,) = box_traces(fig, "A:0")
    assert trace.x == pytest.approx([150, 350, 350, 150, 150])
    assert trace.y == pytest.approx([100, 100, 300, 300, 100])
    assert trace.fill == "toself"
    assert "nodule in the left upper lobe" in trace.hovertext
    assert trace.name.startswith("1. There is a nodule")


def test_figure_axes_are_image_pixels(wide: XrayImage) -> None:
    rendered = DisplayImageCache().render_base(wide, None, False, max_side=256)
    fig = build_figure(rendered, 700, 500, [])
    image = fig.data[0]
    assert image.type == "image"
    assert image.x0 - image.dx / 2 == pytest.approx(0)
    assert image.x0 + (rendered.width - 0.5) * image.dx == pytest.approx(700)
    assert image.y0 + (rendered.height - 0.5) * image.dy == pytest.approx(500)
    assert list(fig.layout.xaxis.range) == [0, 700]
    assert list(fig.layout.yaxis.range) == [500, 0]
    assert fig.layout.yaxis.scaleanchor == "x"
    assert fig.layout.uirevision == wide.content_key


def test_ungrounded_finding_has_a_layer_but_no_trace(wide: XrayImage) -> None:
    layers = layers_from_report(make_report(FINDINGS))
    assert [layer.key for layer in layers] == ["A:0", "A:1", "A:2"]
    assert layers[1].image_boxes == ()
    fig = build_figure(DisplayImageCache().render_base(wide, None, False), 700, 500, layers)
    assert box_traces(fig, "A:1") == []
    assert [t.showlegend for t in box_traces(fig, "A:2")] == [True, False]


def test_hidden_layers_stay_in_legend(wide: XrayImage) -> None:
    layers = with_visibility(layers_from_report(make_report(FINDINGS)), {"A:2"})
    fig = build_figure(DisplayImageCache().render_base(wide, None, False), 700, 500, layers)
    assert {t.visible for t in box_traces(fig, "A:2")} == {"legendonly"}
    assert {t.visible for t in box_traces(fig, "A:0")} == {True}


def test_highlight_shows_one_layer_and_dims_the_rest(wide: XrayImage) -> None:
    layers = with_visibility(layers_from_report(make_report(FINDINGS)), {"A:2"})
    rendered = DisplayImageCache().render_base(wide, None, False)
    fig = build_figure(rendered, 700, 500, layers, highlight="A:2", line_width=2.0)
    assert {t.visible for t in box_traces(fig, "A:2")} == {True}
    assert [t.line.width for t in box_traces(fig, "A:2")] == pytest.approx([3.2, 3.2])
    assert [t.opacity for t in box_traces(fig, "A:0")] == pytest.approx([0.3])


def test_colours_follow_the_finding_index() -> None:
    assert len(set(PALETTE)) == len(PALETTE) == 12
    assert finding_colour(12) == finding_colour(0) != finding_colour(1)
    a = layers_from_report(make_report(FINDINGS, name="A"), context_index=0)
    b = layers_from_report(make_report(FINDINGS, name="B"), context_index=1)
    assert [layer.colour for layer in a] == [finding_colour(i) for i in range(3)]
    assert [layer.colour for layer in a] == [layer.colour for layer in b]
    assert {layer.dash for layer in a} == {"solid"} and {layer.dash for layer in b} == {"dash"}


def test_trace_colours_match_layer_colours(wide: XrayImage) -> None:
    layers = layers_from_report(make_report(FINDINGS))
    fig = build_figure(DisplayImageCache().render_base(wide, None, False), 700, 500, layers, opacity=0.2)
    for layer in layers:
        r, g, b = (int(layer.colour[i : i + 2], 16) for i in (1, 3, 5))
        for trace in box_traces(fig, layer.key):
            assert trace.line.color == layer.colour
            assert trace.fillcolor == f"rgba({r},{g},{b},0.2)"


def test_reference_layers_are_grouped_and_styled_apart(wide: XrayImage) -> None:
    refs = (
        ReferenceBox("Nodule", Box(10, 20, 30, 40), "NIH"),
        ReferenceBox("Effusion", Box(50, 60, 70, 80), "NIH"),
        ReferenceBox("Nodule", Box(100, 120, 130, 140), "NIH"),
    )
    layers = reference_layers(refs)
    assert [layer.label for layer in layers] == ["Reference: Nodule (NIH)", "Reference: Effusion (NIH)"]
    assert layers[0].image_boxes == (Box(10, 20, 30, 40), Box(100, 120, 130, 140))
    assert all(layer.colour not in PALETTE and layer.dash == "dot" for layer in layers)
    findings = layers_from_report(make_report(FINDINGS))
    fig = build_figure(DisplayImageCache().render_base(wide, None, False), 700, 500, [*findings, *layers])
    (ref_trace, _) = box_traces(fig, layers[0].key)
    (finding_trace,) = box_traces(fig, "A:0")
    assert ref_trace.x == pytest.approx([10, 30, 30, 10, 10])  # image frame already: no conversion
    assert ref_trace.line.width < finding_trace.line.width
    assert ref_trace.fillcolor.endswith(",0)")


def test_size_mismatch_is_a_typed_error(wide: XrayImage) -> None:
    rendered = DisplayImageCache().render_base(wide, None, False)
    with pytest.raises(FigureSizeError, match="700x500"):
        build_figure(rendered, 500, 700, [])


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


def test_figure_json_is_small_for_a_1024_sample() -> None:
    path = next((p for p in NIH_SAMPLE_CANDIDATES if p.exists()), None)
    if path is None:
        pytest.skip(f"sample {NIH_SAMPLE_NAME} not available")
    image = load_image_path(path)
    assert (image.width, image.height) == (1024, 1024)
    findings = tuple(
        Finding(f"Finding number {i} with a fairly long sentence about the lungs.", (Box(0.1, 0.1, 0.4, 0.5),) * 2)
        for i in range(8)
    )
    layers = layers_from_report(make_report(findings, 1024, 1024))
    fig = build_figure(DisplayImageCache().render_base(image, None, False), 1024, 1024, layers)
    size = figure_json_size(fig)
    assert size == len(fig.to_json().encode())
    assert size < 400_000
    assert max(decode(fig.data[0].source).shape) <= 1024
    assert json.loads(fig.to_json())["layout"]["dragmode"] == "zoom"


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
