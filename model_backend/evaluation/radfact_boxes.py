"""RadFact's box definitions: spatial and grounding precision/recall over phrases and evidence boxes.

From RadFact (Bannur et al. 2024, "MAIRA-2"; microsoft/RadFact `metric/box_metrics.py` and
`metric/radfact.py`), read and rewritten here:

- Boxes are normalised to [0, 1] and drawn on a 224 x 224 boolean mask the way RadFact draws them:
  corners times 224 truncated to integers, the cells [int(x_min*224), int(x_max*224)) x
  [int(y_min*224), int(y_max*224)) set (no cell centres, unlike `model_backend.metrics`).
- A phrase with boxes is *spatially entailed* when it is logically entailed and more than half of
  the mask of its boxes lies inside the mask of the *union* of its evidence phrases' boxes
  (|P ∩ E| / |P| > 0.5). No evidence boxes: not spatially entailed.
- One direction (generated phrases judged against the reference for precision, reference phrases
  against the generated report for recall), per study:
  spatial = spatially entailed / phrases with boxes;
  grounding = spatially entailed / logically entailed phrases with boxes.
  A zero denominator leaves the fraction undefined (None; RadFact's NaN), and a dataset's value is
  the mean of the defined per-study fractions (RadFact's nanmean), not a micro ratio.

Which phrases entail which is an input (`Phrase.classes`): `model_backend.metrics` builds the
phrases from a manifest, where reference boxes carry class labels rather than sentences, so the
logical status there is class agreement. Boxes are normalised over the whole frontal image
(generated boxes go through `model_to_image_box` first) and clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model_backend.boxes import clip_box
from model_backend.types import Box

MASK_SIZE = 224
SUPPORT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Phrase:
    """A phrase, its normalised boxes (None: no boxes) and the classes it asserts (its logical content)."""

    text: str
    boxes: tuple[Box, ...] | None
    classes: frozenset[str]


@dataclass(frozen=True)
class OneWay:
    """Counts of one direction (phrases judged against the other report's phrases)."""

    n_phrases: int = 0
    n_with_boxes: int = 0
    n_entailed_with_boxes: int = 0
    n_spatially_entailed: int = 0

    @property
    def spatial(self) -> float | None:
        return self.n_spatially_entailed / self.n_with_boxes if self.n_with_boxes else None

    @property
    def grounding(self) -> float | None:
        return self.n_spatially_entailed / self.n_entailed_with_boxes if self.n_entailed_with_boxes else None


@dataclass(frozen=True)
class RadFactBoxScores:
    """Precision (generated -> reference) and recall (reference -> generated) directions, overall and per class."""

    precision: OneWay
    recall: OneWay
    per_class: dict[str, tuple[OneWay, OneWay]] = field(default_factory=dict)

    def as_row(self) -> dict[str, float | None]:
        """The four per-study fractions, keyed as in the metrics output."""
        return fractions(self.precision, self.recall)


def fractions(precision: OneWay, recall: OneWay) -> dict[str, float | None]:
    """RadFact's spatial and grounding precision/recall of one study from its two directions."""
    return {
        "radfact_spatial_precision": precision.spatial,
        "radfact_spatial_recall": recall.spatial,
        "radfact_grounding_precision": precision.grounding,
        "radfact_grounding_recall": recall.grounding,
    }


def radfact_mask(boxes: Sequence[Box], size: int = MASK_SIZE) -> np.ndarray:
    """Normalised boxes -> RadFact's (size, size) mask, indexed [x, y] as RadFact indexes it."""
    mask = np.zeros((size, size), dtype=bool)
    for box in boxes:
        b = clip_box(box)
        x0, y0, x1, y1 = (int(v * size) for v in b.as_tuple())
        mask[x0:x1, y0:y1] = True
    return mask


def boxes_supported(boxes: Sequence[Box], evidence_boxes: Sequence[Box]) -> bool:
    """True when more than half of the boxes' mask lies inside the union mask of the evidence boxes."""
    if not evidence_boxes:
        return False
    mask = radfact_mask(boxes)
    area = int(mask.sum())
    return area > 0 and int((mask & radfact_mask(evidence_boxes)).sum()) / area > SUPPORT_THRESHOLD


def one_way(phrases: Sequence[Phrase], premises: Sequence[Phrase], only: str | None = None) -> OneWay:
    """Judge `phrases` against `premises`: a phrase is entailed by the premises sharing one of its
    classes (its evidence); `only` restricts both sides and the evidence to one class."""
    if only is not None:
        phrases = [p for p in phrases if only in p.classes]
    n_with_boxes = n_entailed = n_spatial = 0
    for phrase in phrases:
        if not phrase.boxes:
            continue
        n_with_boxes += 1
        wanted = {only} if only is not None else phrase.classes
        evidence = [p for p in premises if p.classes & wanted]
        if not evidence:
            continue
        n_entailed += 1
        n_spatial += boxes_supported(phrase.boxes, [b for p in evidence for b in p.boxes or ()])
    return OneWay(len(phrases), n_with_boxes, n_entailed, n_spatial)


def radfact_box_scores(generated: Sequence[Phrase], reference: Sequence[Phrase]) -> RadFactBoxScores:
    """Both directions overall and for every class named by a reference phrase."""
    classes = sorted({c for p in reference for c in p.classes})
    return RadFactBoxScores(
        precision=one_way(generated, reference),
        recall=one_way(reference, generated),
        per_class={c: (one_way(generated, reference, c), one_way(reference, generated, c)) for c in classes},
    )
