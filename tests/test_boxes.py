"""Model frame -> image frame: against the official formula, the processor's real crop, and round trips."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_backend.boxes import (
    bins_to_box,
    box_to_bins,
    clip_box,
    coord_to_bin,
    image_to_model_box,
    iou,
    model_to_image_box,
)
from model_backend.maira2.processing import ImagePreprocessing
from model_backend.types import Box

SIZES = [(1841, 1955), (700, 500), (400, 640), (1024, 1024)]  # (width, height)
BIN_CENTRES = [(i + 0.5) / 100 for i in range(100)]


def official_adjust_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    """`Maira2Processor.adjust_box_for_original_image_size`, transcribed literally from the official code."""
    crop_width = crop_height = min(width, height)
    x_offset = (width - crop_width) // 2
    y_offset = (height - crop_height) // 2
    norm_x_min, norm_y_min, norm_x_max, norm_y_max = box
    abs_x_min = int(norm_x_min * crop_width + x_offset)
    abs_x_max = int(norm_x_max * crop_width + x_offset)
    abs_y_min = int(norm_y_min * crop_height + y_offset)
    abs_y_max = int(norm_y_max * crop_height + y_offset)
    return (abs_x_min / width, abs_y_min / height, abs_x_max / width, abs_y_max / height)


def processor_crop_to_original(u: float, v: float, width: int, height: int, size: int = 518) -> tuple[float, float]:
    """A point of the processor's crop (normalised) -> original pixels, by transformers' actual geometry:
    shortest edge -> `size` with the long side truncated to int, then a centre crop offset by `(long - size) // 2`."""
    if width <= height:
        resized_w, resized_h = size, int(size * height / width)
    else:
        resized_w, resized_h = int(size * width / height), size
    left, top = (resized_w - size) // 2, (resized_h - size) // 2
    return (left + u * size) * width / resized_w, (top + v * size) * height / resized_h


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_agrees_with_the_official_formula_within_one_pixel(width: int, height: int) -> None:
    model_boxes = [
        Box(x, y, min(x + 0.3, 0.995), min(y + 0.2, 0.995)) for x, y in itertools.product(BIN_CENTRES, repeat=2)
    ]
    ours = np.array([model_to_image_box(b, width, height).as_tuple() for b in model_boxes])
    official = np.array([official_adjust_box(b.as_tuple(), width, height) for b in model_boxes])
    official_pixels = official * np.array([width, height, width, height])
    worst = int(np.abs(ours - official_pixels).max(axis=1).argmax())
    assert np.abs(ours - official_pixels).max() <= 1.0, (model_boxes[worst], ours[worst], official_pixels[worst])


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_processor_adjust_box_matches_the_official_helper(width: int, height: int) -> None:
    from model_backend.maira2.processing import Maira2Processor

    for x, y in itertools.product(BIN_CENTRES[::7], repeat=2):
        box = (x, y, 0.995, 0.995)
        ours = Maira2Processor.adjust_box_for_original_image_size(box, width, height)
        official = official_adjust_box(box, width, height)
        scale = np.array([width, height, width, height])
        assert np.all(np.abs(np.subtract(ours, official)) * scale <= 1 + 1e-9), (box, ours, official)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_agrees_with_the_processors_real_crop_within_one_pixel(width: int, height: int) -> None:
    for u, v in itertools.product([0.0, *BIN_CENTRES, 1.0], repeat=2):
        image_box = model_to_image_box(Box(u, v, u, v), width, height)
        x, y = processor_crop_to_original(u, v, width, height)
        assert abs(image_box.x_min - x) <= 1.0 and abs(image_box.y_min - y) <= 1.0, (u, v, image_box, x, y)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_a_marker_lands_where_the_box_says(width: int, height: int) -> None:
    """Run a bright square through the real preprocessing, find it in the crop, map back to the original."""
    image_box = Box(0.3 * width, 0.55 * height, 0.3 * width + 0.08 * min(width, height), 0.55 * height + 40)
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[int(image_box.y_min) : int(image_box.y_max), int(image_box.x_min) : int(image_box.x_max)] = 255
    from PIL import Image

    crop = ImagePreprocessing()(Image.fromarray(pixels))[0]
    rows, cols = np.nonzero(crop > crop.mean() + 0.5 * (crop.max() - crop.mean()))
    found_model_box = Box(cols.min() / 518, rows.min() / 518, (cols.max() + 1) / 518, (rows.max() + 1) / 518)
    found = model_to_image_box(found_model_box, width, height)
    one_crop_pixel = min(width, height) / 518
    tolerance = 1.0 + 1.5 * one_crop_pixel  # the edge is located to within a crop pixel, plus bicubic spread
    assert np.allclose(found.as_tuple(), image_box.as_tuple(), atol=tolerance), (found, image_box)


@pytest.mark.parametrize(("width", "height"), SIZES)
@given(coords=st.tuples(*[st.floats(0.0, 1.0)] * 4))
def test_image_model_round_trip(width: int, height: int, coords: tuple[float, float, float, float]) -> None:
    model_box = Box(*coords)
    back = image_to_model_box(model_to_image_box(model_box, width, height), width, height)
    assert np.allclose(back.as_tuple(), model_box.as_tuple(), atol=1e-9)
    image_box = Box(coords[0] * width, coords[1] * height, coords[2] * width, coords[3] * height)
    again = model_to_image_box(image_to_model_box(image_box, width, height), width, height)
    assert np.allclose(again.as_tuple(), image_box.as_tuple(), atol=1e-6)


def test_bins_round_trip_at_bin_centres() -> None:
    for bins in itertools.product(range(0, 100, 9), repeat=4):
        model_box = bins_to_box(bins)
        assert box_to_bins(model_box) == bins
        assert model_box.x_min == (bins[0] + 0.5) / 100
    assert coord_to_bin(-0.2) == 0 and coord_to_bin(1.0) == 99 and coord_to_bin(0.999) == 99


def test_invalid_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        model_to_image_box(Box(0, 0, 1, 1), 0, 100)


def test_clip_and_iou() -> None:
    assert clip_box(Box(0.9, -0.1, 0.2, 1.3)) == Box(0.2, 0.0, 0.9, 1.0)
    assert iou(Box(0, 0, 2, 2), Box(1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert iou(Box(0, 0, 0, 0), Box(0, 0, 0, 0)) == 0.0
