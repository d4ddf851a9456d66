"""The image + boxes figure: finding layers, colours, window/level rendering and the plotly figure.

Frames: reports carry boxes in the model frame; `layers_from_report` converts them once with
`model_backend.boxes.model_to_image_box`, and everything after that (layers, figure traces) is in
image-frame pixels. The figure's axes are image pixels (x 0..W, y 0..H downwards), and the picture
is a downscaled JPEG/PNG stretched over exactly that area, so boxes need no further transform.
"""

from __future__ import annotations

import base64
import html
import textwrap
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import cv2
import numpy as np
import plotly.graph_objects as go

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
DASHES: tuple[str, ...] = ("solid", "dash", "dot", "dashdot")
REFERENCE_COLOUR = "#FFFFFF"
REFERENCE_DASH = "dot"
BACKGROUND = "#111111"
LEGEND_NAME_CHARS = 40
HOVER_WRAP_CHARS = 60
JPEG_QUALITIES = (90, 80, 70, 60)
MAX_IMAGE_BYTES = 280_000  # encoded picture; its base64 data URI is 4/3 of this
PNG_FLAT_FRACTION = 0.5  # try PNG only when this share of neighbouring pixels are equal
CROP_OUTLINE_RGB = (240, 228, 66)
CROP_DIM = 0.35
K = TypeVar("K")
V = TypeVar("V")


class FigureSizeError(ValueError):
    """The rendered picture does not belong to an image of the size the report was made for."""


@dataclass(frozen=True)
class FindingLayer:
    """One finding (or reference label) as drawn: its image-frame boxes and style.

    `key` is "<context name>:<finding index>" (0-based index, as reviews key findings) or
    "ref:<n>" for reference layers; `label` is the numbered sentence shown to people
    ("<index + 1>. <sentence>"). A layer with no boxes is an ungrounded finding: it has a colour
    for the findings list but draws nothing.
    """

    key: str
    label: str
    colour: str
    image_boxes: tuple[Box, ...]
    dash: str = "solid"
    visible: bool = True
    reference: bool = False


@dataclass(frozen=True)
class RenderedImage:
    """A downscaled, windowed, encoded picture of an image; `scale` = display px per image px."""

    data_uri: str
    width: int
    height: int
    image_width: int
    image_height: int
    scale: float
    key: tuple[str, tuple[float, float] | None, bool, int]


def finding_colour(index: int, palette: Sequence[str] = PALETTE) -> str:
    """The colour of finding `index` (box, legend and findings list alike); cycles after the palette."""
    return palette[index % len(palette)]


def layers_from_report(report: Report, context_index: int = 0, palette: Sequence[str] = PALETTE) -> list[FindingLayer]:
    """One layer per finding, boxes converted to the image frame; dash style chosen by `context_index`."""
    dash = DASHES[context_index % len(DASHES)]
    layers = []
    for index, finding in enumerate(report.findings):
        image_boxes = tuple(
            model_to_image_box(model_box, report.image_width, report.image_height)
            for model_box in finding.model_boxes or ()
        )
        layers.append(
            FindingLayer(
                key=f"{report.context.name}:{index}",
                label=f"{index + 1}. {finding.text}",
                colour=finding_colour(index, palette),
                image_boxes=image_boxes,
                dash=dash,
            )
        )
    return layers


def reference_layers(study_reference_boxes: Sequence[ReferenceBox]) -> list[FindingLayer]:
    """Reference boxes (already image frame) grouped by (label, source), one dotted white layer each."""
    groups: dict[tuple[str, str], list[Box]] = {}
    for ref in study_reference_boxes:
        groups.setdefault((ref.label, ref.source), []).append(ref.image_box)
    return [
        FindingLayer(
            key=f"ref:{n}",
            label=f"Reference: {label} ({source})",
            colour=REFERENCE_COLOUR,
            image_boxes=tuple(image_boxes),
            dash=REFERENCE_DASH,
            reference=True,
        )
        for n, ((label, source), image_boxes) in enumerate(groups.items())
    ]


def with_visibility(layers: Sequence[FindingLayer], hidden_keys: Collection[str]) -> list[FindingLayer]:
    """Copies of `layers` with `visible` False exactly for the keys in `hidden_keys`."""
    return [replace(layer, visible=layer.key not in hidden_keys) for layer in layers]


# --- rendering the picture ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Downscaled:
    image: XrayImage  # same content key, `pixels` and `display` downscaled
    inverted: bool  # True when `display` is the inverse of a plain window of `pixels` (MONOCHROME1)


class DisplayImageCache:
    """Renders pictures for the figure and keeps the last few, so toggling boxes never re-encodes.

    Rendered pictures are keyed by (content_key, window, invert, max_side); the downscaled
    source arrays by (content_key, max_side), so a window change only re-runs the LUT and encoder.
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
        key = (image.content_key, None if window is None else (float(window[0]), float(window[1])), invert, max_side)
        with self._lock:
            cached = _lru_get(self._rendered, key)
        if cached is not None:
            return cached
        source = self._downscaled(image, max_side)
        if window is None:
            gray = source.image.display
            gray = np.subtract(255, gray, dtype=np.uint8) if invert else gray
        else:
            gray = window_display(source.image, window[0], window[1], invert=invert != source.inverted)
        rendered = RenderedImage(
            data_uri=encode_data_uri(gray),
            width=int(gray.shape[1]),
            height=int(gray.shape[0]),
            image_width=image.width,
            image_height=image.height,
            scale=gray.shape[1] / image.width,
            key=key,
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
        source = _Downscaled(small, _display_is_inverted(small))
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


_DEFAULT_CACHE = DisplayImageCache()


def render_base(
    image: XrayImage, window: tuple[float, float] | None, invert: bool, max_side: int = 1024
) -> RenderedImage:
    """`DisplayImageCache.render_base` on the process-wide cache."""
    return _DEFAULT_CACHE.render_base(image, window, invert, max_side)


# --- the figure --------------------------------------------------------------------------------


def build_figure(
    rendered: RenderedImage,
    image_width: int,
    image_height: int,
    layers: Sequence[FindingLayer],
    *,
    opacity: float = 0.15,
    line_width: float = 2.0,
    highlight: str | None = None,
    uirevision: str | None = None,
) -> go.Figure:
    """The picture in image-frame pixel axes with one filled rectangle trace per box.

    Hidden layers stay in the legend (`visible="legendonly"`). `highlight` (a layer key) shows that
    layer even if hidden, thicker, and dims the others. `uirevision` (default: the image's content
    key) keeps zoom and pan across re-renders of the same study.
    """
    if (rendered.image_width, rendered.image_height) != (image_width, image_height):
        raise FigureSizeError(
            f"the picture is of a {rendered.image_width}x{rendered.image_height} image, "
            f"but the boxes are for a {image_width}x{image_height} image"
        )
    dx, dy = image_width / rendered.width, image_height / rendered.height
    data: list[go.Image | go.Scatter] = [
        go.Image(source=rendered.data_uri, x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, hoverinfo="skip", name="image")
    ]
    spotlight = highlight if any(layer.key == highlight and layer.image_boxes for layer in layers) else None
    for layer in layers:
        data.extend(_layer_traces(layer, opacity, line_width, spotlight))
    axis = {"showgrid": False, "zeroline": False, "showticklabels": False, "constrain": "domain"}
    layout = go.Layout(
        xaxis={**axis, "range": [0, image_width]},
        yaxis={**axis, "range": [image_height, 0], "scaleanchor": "x", "scaleratio": 1},
        margin={"l": 0, "r": 0, "t": 0, "b": 0, "pad": 0},
        paper_bgcolor=BACKGROUND,
        plot_bgcolor=BACKGROUND,
        font={"color": "#DDDDDD", "size": 12},
        legend={"orientation": "h", "x": 0, "y": -0.01, "yanchor": "top", "bgcolor": "rgba(0,0,0,0)"},
        hovermode="closest",
        hoverlabel={"align": "left"},
        dragmode="zoom",
        uirevision=uirevision or rendered.key[0],
    )
    return go.Figure(data=data, layout=layout)


def _layer_traces(layer: FindingLayer, opacity: float, line_width: float, spotlight: str | None) -> list[go.Scatter]:
    visible: bool | str = True if layer.visible or layer.key == spotlight else "legendonly"
    width = line_width * (0.75 if layer.reference else 1.0)
    fill_alpha = 0.0 if layer.reference else opacity
    trace_opacity = 1.0
    if spotlight is not None:
        if layer.key == spotlight:
            width, fill_alpha = width * 1.6, min(1.0, opacity * 2)
        else:
            trace_opacity = 0.3
    hover = "<br>".join(html.escape(line) for line in textwrap.wrap(layer.label, HOVER_WRAP_CHARS))
    name = textwrap.shorten(layer.label, LEGEND_NAME_CHARS, placeholder="…")
    return [
        go.Scatter(
            x=[box.x_min, box.x_max, box.x_max, box.x_min, box.x_min],
            y=[box.y_min, box.y_min, box.y_max, box.y_max, box.y_min],
            mode="lines",
            fill="toself",
            fillcolor=_rgba(layer.colour, fill_alpha),
            line={"color": layer.colour, "width": width, "dash": layer.dash},
            opacity=trace_opacity,
            name=name,
            legendgroup=layer.key,
            showlegend=n == 0,
            visible=visible,
            text=hover,  # shown when hovering the fill
            hovertext=hover,  # shown when hovering the outline
            hoverinfo="text",
            hoveron="fills+points",
        )
        for n, box in enumerate(layer.image_boxes)
    ]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:g})"


def figure_json_size(fig: go.Figure) -> int:
    """Bytes of the figure's JSON (what is sent to the browser)."""
    return len(fig.to_json().encode("utf-8"))


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
