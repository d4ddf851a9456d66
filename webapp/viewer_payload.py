"""What the browser viewer component receives: JSON-ready dicts built from studies and reports.

The component (`assets/static/workstation.js`) draws exactly what it gets, in IMAGE-frame pixels
of the original frontal image: the display picture is stretched over (0, 0)-(width, height), and
every finding box has been mapped from the model frame once, by `layers_from_report`
(`model_backend.boxes.model_to_image_box`). Reference boxes are image frame already.

The server sends a study payload when a study is opened, a report payload when a report arrives
(or grows while streaming), and a fresh picture when window/level changes (`window_render`);
display state (visibility, isolate, hover, zoom, opacity) never leaves the browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model_backend.degenerate import degenerate_flags
from model_backend.types import Report, Study, XrayImage
from webapp.reviews import FindingVerdict, ReportVerdict
from webapp.viewer import DisplayImageCache, layers_from_report, reference_layers

FRONTAL_SIDE = 1024  # longest side of the frontal picture sent to the browser
THUMB_SIDE = 320  # lateral / prior thumbnails; enlarged views ask for `FRONTAL_SIDE` renders
PRESET_PERCENTILES = {  # projection radiographs have no Hounsfield scale: presets follow this image's histogram
    "lung": (2.0, 60.0),
    "soft tissue": (25.0, 95.0),
    "bone": (60.0, 99.8),
}
DISPLAY_CACHE = DisplayImageCache(max_rendered=48, max_sources=48)


def window_ranges(image: XrayImage) -> dict[str, Any]:
    """Slider ranges, the default window and presets, in the image's own pixel units. The ranges cover
    the pixel values AND the default window (a DICOM VOI window may be wider than the data)."""
    pixels = image.pixels
    lo, hi = float(pixels.min()), float(pixels.max())
    default = image.default_window or ((lo + hi + 1.0) / 2.0, hi - lo + 1.0)
    centre, width = float(default[0]), float(default[1])
    sample = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)]
    presets = {"auto": [centre, width]}
    for name, (p_lo, p_hi) in PRESET_PERCENTILES.items():
        a, b = (float(v) for v in np.percentile(sample, [p_lo, p_hi]))
        presets[name] = [(a + b + 1.0) / 2.0, max(2.0, b - a + 1.0)]
    return {
        "min": min(lo, centre),
        "max": max(hi, centre),
        "width_max": max(2.0, hi - lo + 1.0, width),
        "default": [centre, width],
        "presets": presets,
        "voi": image.source_format == "dicom" and image.default_window is not None,
    }


def image_payload(image: XrayImage, max_side: int) -> dict[str, Any]:
    """One image: its content key, original size, a downscaled picture and its window ranges. The image
    is also kept ready for `window_render` at `FRONTAL_SIDE` (thumbnails are enlarged at that size)."""
    DISPLAY_CACHE.prepare(image, FRONTAL_SIDE)
    rendered = DISPLAY_CACHE.render_base(image, None, False, max_side)
    return {
        "key": image.content_key,
        "src": rendered.data_uri,
        "width": image.width,
        "height": image.height,
        "bits": image.bits_stored,
        "format": image.source_format,
        "window": window_ranges(image),
    }


def study_payload(study: Study, position: str = "", upload: bool = False) -> dict[str, Any]:
    """Everything the viewer draws for a newly opened study (about 250-350 KB with thumbnails)."""
    reference = [
        {"label": layer.label, "boxes": [list(b.as_tuple()) for b in layer.image_boxes]}
        for layer in reference_layers(study.reference_boxes)
    ]
    return {
        "study_id": study.study_id,
        "images_key": study.images_key(),
        "upload": upload,
        "position": position,
        "attribution": study.attribution,
        "frontal": image_payload(study.frontal, FRONTAL_SIDE),
        "lateral": None if study.lateral is None else image_payload(study.lateral, THUMB_SIDE),
        "prior": None if study.prior_frontal is None else image_payload(study.prior_frontal, THUMB_SIDE),
        "reference": reference,
    }


def without_pictures(payload: dict[str, Any]) -> dict[str, Any]:
    """A study payload for a second viewer on the same page: pictures left out (`shared_pictures`), the
    browser takes them from the first viewer that received them."""
    views = {v: None if payload[v] is None else {**payload[v], "src": None} for v in ("frontal", "lateral", "prior")}
    return {**payload, **views, "shared_pictures": True}


def window_render(content_key: str, centre: float, width: float, max_side: int = FRONTAL_SIDE) -> str:
    """A new picture of an image opened recently, through a (centre, width) window; raises KeyError
    when the image is no longer in memory."""
    return DISPLAY_CACHE.render_window(content_key, (float(centre), max(1.0, float(width))), max_side).data_uri


def verdict_payload(verdict: FindingVerdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {
        "text": verdict.text_verdict,
        "significance": verdict.significance,
        "box": verdict.box_verdict,
        "comment": verdict.comment,
    }


def report_verdict_payload(verdict: ReportVerdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {"omissions": [o.text for o in verdict.omissions], "rating": verdict.rating, "comment": verdict.comment}


def report_payload(
    report: Report,
    *,
    report_id: str | None = None,
    created: str = "",
    source: str = "",
    streaming: bool = False,
    verdicts: Mapping[int, FindingVerdict] | None = None,
    report_verdict: ReportVerdict | None = None,
    colours: Sequence[str] | None = None,
    dash: str = "",
) -> dict[str, Any]:
    """A report as the viewer lists and draws it: numbered findings, colours, image-frame boxes, verdicts.

    `report_id` is set only for a stored report: verdicts can be recorded on it. `colours` (one
    per finding) overrides the default palette, e.g. to colour by aligned row in a comparison; `dash`
    is an SVG dash pattern for every box (a comparison's line style per context)."""
    layers = layers_from_report(report)
    verdicts = verdicts or {}
    findings = []
    for index, (finding, layer) in enumerate(zip(report.findings, layers, strict=True)):
        findings.append(
            {
                "index": index,
                "text": finding.text,
                "colour": colours[index] if colours else layer.colour,
                "grounded": finding.model_boxes is not None and len(finding.model_boxes) > 0,
                "boxes": [list(b.as_tuple()) for b in layer.image_boxes],
                "dash": dash,
                "verdict": verdict_payload(verdicts.get(index)),
            }
        )
    return {
        "report_id": report_id,
        "study_id": report.study_id,
        "task": report.task,
        "model": report.backend.label,
        "backend": report.backend.name,
        "weights": report.backend.weights_hash,
        "demo": report.backend.is_demo,
        "created": created,
        "source": source,
        "context": context_summary(report),
        "complete": report.complete,
        "streaming": streaming,
        "warnings": list(report.warnings),
        "flags": [] if streaming else [f"{f.name}: {f.reason}" for f in degenerate_flags(report)],
        "raw_text": report.raw_text,
        "timings": dict(report.timings),
        "image_width": report.image_width,
        "image_height": report.image_height,
        "findings": findings,
        "report_verdict": report_verdict_payload(report_verdict),
    }


def context_summary(report: Report) -> str:
    """One line naming the prompt settings a report was generated with (plain text: the browser shows it as text)."""
    c = report.context
    parts = [f"{name}: {value[:60]}{'…' if len(value) > 60 else ''}" for name, value in (
        ("indication", c.indication), ("technique", c.technique), ("comparison", c.comparison),
        ("prior report", c.prior_report)) if value]  # fmt: skip
    parts.append("lateral " + ("on" if c.use_lateral else "off"))
    parts.append("prior " + ("on" if c.use_prior else "off"))
    parts.append("grounded" if c.grounded else "not grounded")
    return " · ".join(parts)
