"""Plain frozen value types shared by every layer: studies, prompt contexts, findings, reports.

Frames: a `Finding`'s boxes are in the *model frame* (normalised to the processor's square
centre crop, exactly as generated). Reference boxes on a `Study` are in the *image frame*
(pixels of the original frontal image). `model_backend.boxes.model_to_image_box` is the one
conversion between them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (x_min, y_min, x_max, y_max); its frame is named by the variable holding it."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min


@dataclass(frozen=True, eq=False)
class XrayImage:
    """A decoded radiograph: original pixel grid plus an 8-bit display rendition.

    `pixels` keeps the source grid and depth (uint8/uint16/float32, 2-D grayscale).
    `display` is the 8-bit rendition (VOI LUT / window applied, MONOCHROME1 inverted) that the
    model sees and the viewer shows by default. `content_key` is a SHA-256 of `display`,
    used to cache vision features. No patient metadata is ever stored here.
    """

    pixels: np.ndarray
    display: np.ndarray
    source_format: str
    bits_stored: int
    content_key: str
    default_window: tuple[float, float] | None = None  # (centre, width) in `pixels` units

    @property
    def width(self) -> int:
        return int(self.display.shape[1])

    @property
    def height(self) -> int:
        return int(self.display.shape[0])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XrayImage) and other.content_key == self.content_key

    def __hash__(self) -> int:
        return hash(self.content_key)


@dataclass(frozen=True)
class PromptContext:
    """Everything in the prompt except the images themselves.

    `use_lateral` / `use_prior` switch the study's lateral / prior images on or off;
    `grounded` selects MAIRA-2's grounded-reporting prompt.
    """

    name: str = "A"
    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    prior_report: str | None = None
    use_lateral: bool = True
    use_prior: bool = True
    grounded: bool = True

    def with_name(self, name: str) -> PromptContext:
        return replace(self, name=name)

    def key(self) -> str:
        """Stable identity of the prompt settings (the name is a label, not part of the key)."""
        payload = {k: v for k, v in asdict(self).items() if k != "name"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def available_views(context: PromptContext, has_lateral: bool, has_prior: bool) -> PromptContext:
    """`context` with `use_lateral` / `use_prior` switched off when the study lacks that view."""
    return replace(context, use_lateral=context.use_lateral and has_lateral, use_prior=context.use_prior and has_prior)


@dataclass(frozen=True)
class ReferenceBox:
    """A reference (e.g. radiologist) box in the image frame, in pixels of the frontal image."""

    label: str
    image_box: Box
    source: str = "reference"


@dataclass(frozen=True)
class Study:
    """One chest X-ray study: frontal image, optional lateral and prior frontal, default context."""

    study_id: str
    frontal: XrayImage
    lateral: XrayImage | None = None
    prior_frontal: XrayImage | None = None
    context: PromptContext = field(default_factory=PromptContext)
    reference_findings: tuple[str, ...] = ()
    reference_boxes: tuple[ReferenceBox, ...] = ()
    attribution: str = ""

    def effective_context(self, context: PromptContext) -> PromptContext:
        """`context` with the lateral / prior switches off where this study has no such view, so the
        same prompt always has the same settings (and the same `PromptContext.key()`)."""
        return available_views(context, self.lateral is not None, self.prior_frontal is not None)

    def images_key(self) -> str:
        """Content hash of the images (frontal, lateral, prior), for report ids and caches."""
        keys = [img.content_key if img is not None else "-" for img in (self.frontal, self.lateral, self.prior_frontal)]
        return hashlib.sha256("|".join(keys).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Finding:
    """One generated sentence and its boxes in the model frame (None = ungrounded)."""

    text: str
    model_boxes: tuple[Box, ...] | None = None

    @property
    def grounded(self) -> bool:
        return bool(self.model_boxes)


@dataclass(frozen=True)
class BackendInfo:
    """What produced a report: backend kind, model id, device, dtype and capabilities."""

    name: str
    model_id: str
    device: str = "cpu"
    dtype: str = "float32"
    is_demo: bool = False
    can_ground_phrases: bool = True
    weights_hash: str = ""  # `model_backend.weights_digest` of the weights ("" when unknown, e.g. remote)

    @property
    def label(self) -> str:
        """The model as people should see it: a folder's name (never its path on this server), a hub id or URL."""
        if self.model_id.startswith(("/", "~", ".")) or "\\" in self.model_id:
            return Path(self.model_id).name or self.model_id
        return self.model_id


@dataclass(frozen=True)
class Report:
    """A generated report for one (study, context): findings as generated plus provenance.

    `image_width`/`image_height` are the frontal image's size, needed to map model-frame
    boxes to the image frame. `complete` is False when the output was cut off or malformed.
    """

    study_id: str
    context: PromptContext
    findings: tuple[Finding, ...]
    image_width: int
    image_height: int
    raw_text: str
    complete: bool
    backend: BackendInfo
    images_key: str = ""
    warnings: tuple[str, ...] = ()
    timings: tuple[tuple[str, float], ...] = ()
    task: str = "reporting"  # "reporting" or "phrase_grounding"

    @property
    def report_id(self) -> str:
        """Content hash of what was generated and by what: backend, model id, weights, prompt context, images,
        task and the output itself (raw text and parsed findings). Verdicts attach to it, so a verdict can only
        ever refer to exactly these findings; generating the same output again gives the same id."""
        findings = [[f.text, None if f.model_boxes is None else [b.as_tuple() for b in f.model_boxes]]
                    for f in self.findings]  # fmt: skip
        payload = [self.backend.name, self.backend.model_id, self.backend.weights_hash, self.context.key(),
                   self.images_key, self.task, self.raw_text, findings]  # fmt: skip
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    def timing(self, name: str) -> float | None:
        return dict(self.timings).get(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (boxes stay in the model frame)."""
        return {
            "study_id": self.study_id,
            "report_id": self.report_id,
            "context": asdict(self.context),
            "findings": [
                [f.text, None if f.model_boxes is None else [list(b.as_tuple()) for b in f.model_boxes]]
                for f in self.findings
            ],
            "image_width": self.image_width,
            "image_height": self.image_height,
            "raw_text": self.raw_text,
            "complete": self.complete,
            "backend": asdict(self.backend),
            "images_key": self.images_key,
            "warnings": list(self.warnings),
            "timings": dict(self.timings),
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Inverse of `to_dict` (the `report_id` key, derived, is ignored)."""
        findings = tuple(
            Finding(text, None if boxes is None else tuple(Box(*map(float, b)) for b in boxes))
            for text, boxes in data["findings"]
        )
        backend_fields = {k: v for k, v in data["backend"].items() if k in BackendInfo.__dataclass_fields__}
        return cls(
            study_id=data["study_id"],
            context=PromptContext(**data["context"]),
            findings=findings,
            image_width=int(data["image_width"]),
            image_height=int(data["image_height"]),
            raw_text=data["raw_text"],
            complete=bool(data["complete"]),
            backend=BackendInfo(**backend_fields),
            images_key=data.get("images_key", ""),
            warnings=tuple(data.get("warnings", ())),
            timings=tuple((str(k), float(v)) for k, v in data.get("timings", {}).items()),
            task=data.get("task", "reporting"),
        )
