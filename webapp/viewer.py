"""Finding layers and colours, and the pictures the browser viewer shows (window/level rendering).

Frames: reports carry boxes in the model frame; `layers_from_report` converts them once with
`model_backend.boxes.model_to_image_box`, and everything after that is in image-frame pixels.
The browser stretches the downscaled picture over the image frame (0..W, 0..H), so boxes need no
further transform (`webapp.viewer_payload`, `assets/static/workstation.js`).
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import cv2
import numpy as np

from model_backend.boxes import centre_crop_square, model_to_image_box
from model_backend.images import downscale_for_display, window_display
from model_backend.types import Box, ReferenceBox, Report, XrayImage

# Okabe-Ito (black dropped) followed by Paul Tol's "light" set: colour-blind friendly and bright
# enough on a dark radiograph. White/grey are left out: they belong to reference boxes.
PALETTE: tuple[str, ...] = (
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#D55E00",
    "#CC79A7",
    "#44BB99",
    "#FFAABB",
    "#BBCC33",
    "#9988DD",
    "#EE8866",
    "#3377BB",
)
JPEG_QUALITIES = (90, 80, 70, 60)
MAX_IMAGE_BYTES = 220_000  # encoded picture; its base64 data URI is 4/3 of this
PNG_FLAT_FRACTION = 0.5  # try PNG only when this share of neighbouring pixels are equal
CROP_OUTLINE_RGB = (240, 228, 66)
CROP_DIM = 0.35
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class FindingLayer:
    """One finding (or reference label) as drawn: its image-frame boxes and colour.

    `label` is the numbered sentence shown to people ("<index + 1>. <sentence>") or
    "Reference: <label> (<source>)". A layer with no boxes is an ungrounded finding: it has a
    colour for the findings list but draws nothing.
    """

    label: str
    colour: str
    image_boxes: tuple[Box, ...]


@dataclass(frozen=True)
class RenderedImage:
    """A downscaled, windowed, encoded picture of an image; `scale` = display px per image px."""

    data_uri: str
    width: int
    height: int
    scale: float


def finding_colour(index: int, palette: Sequence[str] = PALETTE) -> str:
    """The colour of finding `index` (box, legend and findings list alike); cycles after the palette."""
    return palette[index % len(palette)]


def layers_from_report(report: Report, palette: Sequence[str] = PALETTE) -> list[FindingLayer]:
    """One layer per finding, boxes converted to the image frame (the one place that happens for the viewer)."""
    layers = []
    for index, finding in enumerate(report.findings):
        image_boxes = tuple(
            model_to_image_box(model_box, report.image_width, report.image_height)
            for model_box in finding.model_boxes or ()
        )
        layers.append(
            FindingLayer(
                label=f"{index + 1}. {finding.text}", colour=finding_colour(index, palette), image_boxes=image_boxes
            )
        )
    return layers


def reference_layers(study_reference_boxes: Sequence[ReferenceBox]) -> list[FindingLayer]:
    """Reference boxes (already image frame) grouped by (label, source), one layer each (drawn white, dotted)."""
    groups: dict[tuple[str, str], list[Box]] = {}
    for ref in study_reference_boxes:
        groups.setdefault((ref.label, ref.source), []).append(ref.image_box)
    return [
        FindingLayer(label=f"Reference: {label} ({source})", colour="#FFFFFF", image_boxes=tuple(image_boxes))
        for (label, source), image_boxes in groups.items()
    ]


# --- rendering the picture ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Downscaled:
    image: XrayImage  # same content key, `pixels` and `display` downscaled
    inverted: bool  # True when `display` is the inverse of a plain window of `pixels` (MONOCHROME1)
    width: int  # of the original image


class DisplayImageCache:
    """Renders pictures for the viewer and keeps the last few, so re-opening or re-windowing is cheap.

    Rendered pictures are keyed by (content_key, window, invert, max_side); the downscaled source
    arrays by (content_key, max_side), so a window change only re-runs the LUT and the encoder, and
    an image opened recently can be re-windowed by its content key alone (`render_window`).
    Safe to share between Gradio's worker threads.
    """

    def __init__(self, max_rendered: int = 16, max_sources: int = 4) -> None:
        self._rendered: OrderedDict[tuple, RenderedImage] = OrderedDict()
        self._sources: OrderedDict[tuple[str, int], _Downscaled] = OrderedDict()
        self._max_rendered = max_rendered
        self._max_sources = max_sources
        self._lock = threading.Lock()

    def render_base(
        self, image: XrayImage, window: tuple[float, float] | None, invert: bool, max_side: int = 1024
    ) -> RenderedImage:
        """The picture of `image` at most `max_side` px long: its default display (`window` None) or
        its original pixels through the (centre, width) window; `invert` flips it relative to the
        default display (a MONOCHROME1 image stays the right way up under any window)."""
        return self._render(self._downscaled(image, max_side), window, invert, max_side)

    def render_window(
        self, content_key: str, window: tuple[float, float] | None, max_side: int = 1024, invert: bool = False
    ) -> RenderedImage:
        """`render_base` for an image rendered at `max_side` recently; KeyError when it is no longer cached."""
        with self._lock:
            source = _lru_get(self._sources, (content_key, max_side))
        if source is None:
            raise KeyError(content_key)
        return self._render(source, window, invert, max_side)

    def prepare(self, image: XrayImage, max_side: int) -> None:
        """Keep `image` downscaled to `max_side`, ready for `render_window` (no picture is encoded)."""
        self._downscaled(image, max_side)

    def _render(
        self, source: _Downscaled, window: tuple[float, float] | None, invert: bool, max_side: int
    ) -> RenderedImage:
        key = (source.image.content_key, None if window is None else (float(window[0]), float(window[1])), invert,
               max_side)  # fmt: skip
        with self._lock:
            cached = _lru_get(self._rendered, key)
        if cached is not None:
            return cached
        if window is None:
            gray = source.image.display
            gray = np.subtract(255, gray, dtype=np.uint8) if invert else gray
        else:
            gray = window_display(source.image, window[0], window[1], invert=invert != source.inverted)
        rendered = RenderedImage(
            data_uri=encode_data_uri(gray),
            width=int(gray.shape[1]),
            height=int(gray.shape[0]),
            scale=gray.shape[1] / source.width,
        )
        with self._lock:
            _lru_put(self._rendered, key, rendered, self._max_rendered)
        return rendered

    def _downscaled(self, image: XrayImage, max_side: int) -> _Downscaled:
        key = (image.content_key, max_side)
        with self._lock:
            cached = _lru_get(self._sources, key)
        if cached is not None:
            return cached
        small = replace(
            image,
            pixels=downscale_for_display(image.pixels, max_side),
            display=downscale_for_display(image.display, max_side),
        )
        source = _Downscaled(small, _display_is_inverted(small), image.width)
        with self._lock:
            _lru_put(self._sources, key, source, self._max_sources)
        return source


def _display_is_inverted(image: XrayImage) -> bool:
    """Whether `display` runs opposite to `pixels` (MONOCHROME1), judged against the default window."""
    if image.default_window is None:
        return False
    plain = window_display(image, *image.default_window).astype(np.int16)
    display = image.display.astype(np.int16)
    return int(np.abs(plain - display).sum()) > int(np.abs(255 - plain - display).sum())


def _lru_get(cache: OrderedDict[K, V], key: K) -> V | None:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)


def encode_data_uri(gray: np.ndarray, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """uint8 picture -> data URI: JPEG at the first quality in JPEG_QUALITIES under `max_bytes`
    (PNG instead when the picture is mostly flat and PNG comes out smaller)."""
    if gray.dtype != np.uint8:
        raise ValueError(f"expected a uint8 picture, got {gray.dtype}")
    for quality in JPEG_QUALITIES:
        ok, jpeg = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        if len(jpeg) <= max_bytes:
            break
    payload, mime = jpeg.tobytes(), "image/jpeg"
    if gray.shape[1] > 1 and np.mean(gray[:, 1:] == gray[:, :-1]) >= PNG_FLAT_FRACTION:
        ok, png = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if ok and len(png) < len(payload):
            payload, mime = png.tobytes(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


# --- upload preview ----------------------------------------------------------------------------


def crop_outline_image(image: XrayImage, max_side: int = 512) -> np.ndarray:
    """RGB preview of "what the model sees": the display image with everything outside the model's
    centre-crop square dimmed and the square outlined."""
    small = downscale_for_display(image.display, max_side)
    sx, sy = small.shape[1] / image.width, small.shape[0] / image.height
    x_off, y_off, side = centre_crop_square(image.width, image.height)
    x0, y0 = round(x_off * sx), round(y_off * sy)
    x1, y1 = round((x_off + side) * sx) - 1, round((y_off + side) * sy) - 1
    rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB)
    inside = rgb[y0 : y1 + 1, x0 : x1 + 1].copy()
    rgb = (rgb * CROP_DIM).astype(np.uint8)
    rgb[y0 : y1 + 1, x0 : x1 + 1] = inside
    thickness = max(1, round(max(small.shape) / 256))
    for t in range(thickness):  # drawn inside the square, so its outer edge is the crop edge
        cv2.rectangle(rgb, (x0 + t, y0 + t), (x1 - t, y1 - t), CROP_OUTLINE_RGB, 1)
    return rgb
