"""Box math: MAIRA-2 coordinate bins, the model-frame -> image-frame conversion, clipping, IoU.

MAIRA-2's processor resizes the shortest edge and centre-crops a square. Boxes are generated
normalised to that square (*model frame*). `model_to_image_box` is the single place where a
model-frame box becomes a box in pixels of the original image (*image frame*): every viewer,
metric, export and comparison calls it.
"""

from __future__ import annotations

from collections.abc import Iterable

from model_backend.types import Box

NUM_BINS = 100


def bin_to_coord(index: int, num_bins: int = NUM_BINS) -> float:
    """Bin index -> normalised coordinate at the bin centre, (i + 0.5) / num_bins."""
    return (index + 0.5) / num_bins


def coord_to_bin(value: float, num_bins: int = NUM_BINS) -> int:
    """Normalised coordinate -> the bin that contains it (clamped to [0, num_bins - 1])."""
    return min(num_bins - 1, max(0, int(value * num_bins)))


def box_to_bins(model_box: Box, num_bins: int = NUM_BINS) -> tuple[int, int, int, int]:
    """Model-frame box -> (x_min, y_min, x_max, y_max) bin indices."""
    return tuple(coord_to_bin(v, num_bins) for v in model_box.as_tuple())  # type: ignore[return-value]


def bins_to_box(bins: Iterable[int], num_bins: int = NUM_BINS) -> Box:
    """(x_min, y_min, x_max, y_max) bin indices -> model-frame box at bin centres."""
    x0, y0, x1, y1 = (bin_to_coord(b, num_bins) for b in bins)
    return Box(x0, y0, x1, y1)


def centre_crop_square(width: int, height: int) -> tuple[float, float, float]:
    """The processor's square crop of an image, in image pixels: (x_offset, y_offset, side).

    The shortest side is kept whole and the longer one is cropped symmetrically.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    side = float(min(width, height))
    return (width - side) / 2.0, (height - side) / 2.0, side


def model_to_image_box(model_box: Box, width: int, height: int) -> Box:
    """Model-frame box (normalised to the centre crop) -> image-frame box in pixels.

    Exact continuous geometry of the centre crop; agrees with the official
    `adjust_box_for_original_image_size` (which truncates to integer pixels) within one pixel.
    """
    x_off, y_off, side = centre_crop_square(width, height)
    return Box(
        x_off + model_box.x_min * side,
        y_off + model_box.y_min * side,
        x_off + model_box.x_max * side,
        y_off + model_box.y_max * side,
    )


def image_to_model_box(image_box: Box, width: int, height: int) -> Box:
    """Inverse of `model_to_image_box` (used to train/evaluate the demo model on known boxes)."""
    x_off, y_off, side = centre_crop_square(width, height)
    return Box(
        (image_box.x_min - x_off) / side,
        (image_box.y_min - y_off) / side,
        (image_box.x_max - x_off) / side,
        (image_box.y_max - y_off) / side,
    )


def normalise_image_box(image_box: Box, width: int, height: int) -> Box:
    """Image-frame pixels -> [0, 1] relative to the whole image (for size-independent plots)."""
    return Box(image_box.x_min / width, image_box.y_min / height, image_box.x_max / width, image_box.y_max / height)


def clip_box(box: Box, x_max: float = 1.0, y_max: float = 1.0) -> Box:
    """Clip a box to [0, x_max] x [0, y_max] and order its corners."""
    x0, x1 = sorted((box.x_min, box.x_max))
    y0, y1 = sorted((box.y_min, box.y_max))
    return Box(min(max(x0, 0.0), x_max), min(max(y0, 0.0), y_max), min(max(x1, 0.0), x_max), min(max(y1, 0.0), y_max))


def area(box: Box) -> float:
    return max(0.0, box.x_max - box.x_min) * max(0.0, box.y_max - box.y_min)


def intersection(a: Box, b: Box) -> float:
    w = min(a.x_max, b.x_max) - max(a.x_min, b.x_min)
    h = min(a.y_max, b.y_max) - max(a.y_min, b.y_min)
    return max(0.0, w) * max(0.0, h)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes in the same frame; 0 when both are empty."""
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0
