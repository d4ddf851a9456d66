"""Per-study text and box metrics of generated reports, and the metrics CLI over a results file.

Box metrics live in the IMAGE frame (pixels of the frontal image). Generated boxes arrive in the
model frame and are converted with `model_backend.boxes.model_to_image_box`, then every box is
clipped to the image. Boxes are rasterised on a 224 x 224 grid laid over the whole image (x
scaled by 224 / width, y by 224 / height); a grid cell belongs to a box when the cell centre lies
inside it (half-open: x_min <= centre < x_max, same for y). On that grid (today's metric, "best
single reference box"):

- a generated box g is a *precision hit* when max over reference boxes r of |g ∩ r| / |g| > 0.5
  (more than half of g lies inside one reference box); box precision = hits / generated boxes;
- a reference box r is a *recall hit* when max over generated boxes g of |g ∩ r| / |r| > 0.5
  (one generated box covers more than half of r); box recall = hits / reference boxes;
- union IoU compares the union mask of all generated boxes with that of all reference boxes.

Exactly 0.5 is not a hit. A box that covers no cell centre (zero area after rasterisation) is
counted and never a hit, and the counts of such boxes are reported. All of this is class-agnostic;
per-class counts use `CLASS_KEYWORDS` (see `classes_in_sentence`).

Next to it, RadFact's own definitions (`model_backend.evaluation.radfact_boxes`): a phrase's boxes
are supported when more than half of them lie inside the *union* of its evidence boxes, reported
as spatial and grounding precision/recall. Here a generated sentence's evidence is the reference
boxes of the classes it names, and a reference class's evidence is the generated sentences naming it.

Text: ROUGE-L F1 from `rouge-score` (its tokenizer, Porter stemmer on) and corpus BLEU-4 from
`sacrebleu` (default 13a tokenisation, lowercase=True), reported in [0, 1] (sacrebleu's score / 100).
Every row also carries its task, its context's `grounded` setting and its degenerate-output flags
(`model_backend.degenerate`).

Box completion (results lines with "task": "box_completion", `python -m model_backend.batch --task
box-completion`): the model was given the manifest's reference findings and wrote only their boxes,
so such a line gets the box metrics above (the model card's Box-Completion precision/recall are box
precision/recall here, with RADFact's definitions beside them) and no text metrics: ROUGE-L, BLEU-4
and the model-based text metrics are not applicable (`summary.TEXT_GIVEN`). A results file may mix
both tasks; lines are keyed by (task, study, context). Summaries, intervals and context differences:
`model_backend.evaluation.summary`; model-based metrics (CheXbert, RadGraph, LLM entailment):
`model_backend.evaluation.model_metrics`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from model_backend.backends.base import BOX_COMPLETION, REPORTING
from model_backend.boxes import clip_box, model_to_image_box, normalise_image_box
from model_backend.degenerate import Flag, degenerate_flags
from model_backend.evaluation.bleu import bleu_statistics
from model_backend.evaluation.metric_specs import computed_metrics
from model_backend.evaluation.model_metrics import add_model_arguments, add_model_metrics
from model_backend.evaluation.radfact_boxes import Phrase, fractions, radfact_box_scores
from model_backend.evaluation.report import format_summary, write_json, write_rows_csv, write_summary_csv
from model_backend.evaluation.summary import flat_estimates, summarise, summarise_context
from model_backend.paired_stats import N_RESAMPLES, bootstrap_interval
from model_backend.protocol import ProtocolError, decode_output
from model_backend.types import BackendInfo, Box, Finding, PromptContext, ReferenceBox, Report

GRID = 224
HIT_THRESHOLD = 0.5

# Class name -> regexes (matched case-insensitively at a word start) naming it in a sentence.
# Covers NIH ChestX-ray14 box labels, RSNA "Lung Opacity" and the demo phantom kinds.
# Negation is not handled: negated sentences ("No effusion.") carry no boxes, so they add nothing.
CLASS_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Atelectasis": (r"atelecta",),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"heart is enlarged",
        r"enlarged heart",
        r"cardiac silhouette is enlarged",
        r"enlarged cardiac silhouette",
        r"heart size is enlarged",
        r"cardiac enlargement",
    ),
    "Effusion": (r"effusion",),
    "Infiltrate": (r"infiltrat",),
    "Mass": (r"mass(es)?\b",),
    "Nodule": (r"nodul",),
    "Pneumonia": (r"pneumonia",),
    "Pneumothorax": (r"pneumothora",),
    "Lung Opacity": (r"opacit", r"consolidat", r"infiltrat", r"airspace", r"air space", r"pneumonia"),
    "Consolidation": (r"consolidat",),
}
_LABEL_ALIASES = {"infiltration": "Infiltrate", "pleural effusion": "Effusion", "opacity": "Lung Opacity"}
_CLASS_PATTERNS = {
    name: re.compile("|".join(rf"\b(?:{k})" for k in keywords), re.IGNORECASE)
    for name, keywords in CLASS_KEYWORDS.items()
}


class MetricsInputError(ValueError):
    """A results or manifest file the metrics CLI cannot use."""


def classes_in_sentence(text: str) -> set[str]:
    """The `CLASS_KEYWORDS` classes a sentence names (a set, possibly several or none)."""
    return {name for name, pattern in _CLASS_PATTERNS.items() if pattern.search(text)}


def canonical_class(label: str) -> str | None:
    """A reference label ("effusion", "Infiltration", "Lung Opacity") -> its class name, or None."""
    key = label.strip().lower()
    for name in CLASS_KEYWORDS:
        if name.lower() == key:
            return name
    return _LABEL_ALIASES.get(key)


def rasterise(image_boxes: Sequence[Box], width: int, height: int) -> np.ndarray:
    """Image-frame boxes -> boolean masks of shape (n, GRID, GRID), indexed [box, y, x]; clips first."""
    centres = np.arange(GRID) + 0.5
    masks = np.zeros((len(image_boxes), GRID, GRID), dtype=bool)
    for i, box in enumerate(image_boxes):
        b = clip_box(box, float(width), float(height))
        x_in = (centres >= b.x_min * GRID / width) & (centres < b.x_max * GRID / width)
        y_in = (centres >= b.y_min * GRID / height) & (centres < b.y_max * GRID / height)
        masks[i] = y_in[:, None] & x_in[None, :]
    return masks


def pixel_precision(pred_boxes: Sequence[Box], ref_boxes: Sequence[Box], width: int, height: int) -> float | None:
    """|pred ∩ ref| / |pred| on the grid, over the union masks of image-frame boxes; None if pred is empty.

    Swap the arguments for pixel recall (|pred ∩ ref| / |ref|).
    """
    pred = rasterise(pred_boxes, width, height).any(axis=0)
    ref = rasterise(ref_boxes, width, height).any(axis=0)
    n_pred = int(pred.sum())
    return int((pred & ref).sum()) / n_pred if n_pred else None


@dataclass(frozen=True)
class BoxCounts:
    """Box hit counts of one study (optionally restricted to one class)."""

    n_pred_boxes: int
    n_ref_boxes: int
    n_empty_pred_boxes: int
    n_empty_ref_boxes: int
    precision_hits: int
    recall_hits: int

    @property
    def precision(self) -> float | None:
        return self.precision_hits / self.n_pred_boxes if self.n_pred_boxes else None

    @property
    def recall(self) -> float | None:
        return self.recall_hits / self.n_ref_boxes if self.n_ref_boxes else None


@dataclass(frozen=True)
class StudyBoxMetrics(BoxCounts):
    """Class-agnostic box metrics of one study plus per-class counts (classes in the reference labels).

    `union_iou` is None when both union masks are empty; `pixel_precision` / `pixel_recall` are
    RadFact's union-mask ratios (None when the denominator mask is empty).
    """

    union_iou: float | None = None
    pixel_precision: float | None = None
    pixel_recall: float | None = None
    per_class: dict[str, BoxCounts] = field(default_factory=dict)


def _box_counts(pred_masks: np.ndarray, ref_masks: np.ndarray) -> BoxCounts:
    pred_flat = pred_masks.reshape(len(pred_masks), GRID * GRID)
    ref_flat = ref_masks.reshape(len(ref_masks), GRID * GRID)
    pred_area, ref_area = pred_flat.sum(axis=1), ref_flat.sum(axis=1)
    inter = pred_flat.astype(np.int32) @ ref_flat.T.astype(np.int32)  # |g ∩ r| for every pair
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.where(pred_area[:, None] > 0, inter / pred_area[:, None], 0.0)  # fraction of g inside r
        covered = np.where(ref_area[None, :] > 0, inter / ref_area[None, :], 0.0)  # fraction of r covered by g
    return BoxCounts(
        n_pred_boxes=len(pred_masks),
        n_ref_boxes=len(ref_masks),
        n_empty_pred_boxes=int((pred_area == 0).sum()),
        n_empty_ref_boxes=int((ref_area == 0).sum()),
        precision_hits=int((inside > HIT_THRESHOLD).any(axis=1).sum()),
        recall_hits=int((covered > HIT_THRESHOLD).any(axis=0).sum()),
    )


def study_box_metrics(
    findings: Sequence[Finding], image_width: int, image_height: int, reference_boxes: Sequence[ReferenceBox]
) -> StudyBoxMetrics:
    """Box metrics of one study: generated model-frame boxes vs image-frame reference boxes."""
    pred_boxes: list[Box] = []
    pred_classes: list[set[str]] = []
    for finding in findings:
        names = classes_in_sentence(finding.text)
        for model_box in finding.model_boxes or ():
            pred_boxes.append(model_to_image_box(model_box, image_width, image_height))
            pred_classes.append(names)
    pred_masks = rasterise(pred_boxes, image_width, image_height)
    ref_masks = rasterise([r.image_box for r in reference_boxes], image_width, image_height)
    counts = _box_counts(pred_masks, ref_masks)

    pred_union, ref_union = pred_masks.any(axis=0), ref_masks.any(axis=0)
    inter, union = int((pred_union & ref_union).sum()), int((pred_union | ref_union).sum())
    n_pred_px, n_ref_px = int(pred_union.sum()), int(ref_union.sum())

    ref_classes = [canonical_class(r.label) for r in reference_boxes]
    per_class = {}
    for name in sorted({c for c in ref_classes if c is not None}):
        pred_sel = [i for i, names in enumerate(pred_classes) if name in names]
        ref_sel = [i for i, c in enumerate(ref_classes) if c == name]
        per_class[name] = _box_counts(pred_masks[pred_sel], ref_masks[ref_sel])
    return StudyBoxMetrics(
        **vars(counts),
        union_iou=inter / union if union else None,
        pixel_precision=inter / n_pred_px if n_pred_px else None,
        pixel_recall=inter / n_ref_px if n_ref_px else None,
        per_class=per_class,
    )


@cache
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 of one generated report against its reference (rouge-score, stemmer on)."""
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


def corpus_bleu4(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 1] (sacrebleu, 13a tokenisation, lowercase), one reference per prediction."""
    if len(preds) != len(refs) or not preds:
        raise ValueError(f"need equal, non-zero numbers of predictions and references, got {len(preds)}/{len(refs)}")
    return min(1.0, sacrebleu.corpus_bleu(list(preds), [list(refs)], lowercase=True).score / 100.0)


def bootstrap_ci(
    values: Sequence[float],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
    weights: Sequence[float] | None = None,
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap interval of the (weighted) mean, resampling studies.

    With `weights` the statistic is sum(w * v) / sum(w), e.g. a micro ratio of hits over boxes
    when v = per-study ratio and w = per-study box count (weights must be positive).
    """
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    if v.size == 0 or v.shape != w.shape:
        raise ValueError(f"need a non-empty list of values (and matching weights), got {v.size} values")
    if np.any(w <= 0):
        raise ValueError("bootstrap weights must be positive")
    interval = bootstrap_interval(np.column_stack([v * w, w]), n_resamples=n_resamples, seed=seed, alpha=alpha)
    return interval.value, interval.lo, interval.hi  # type: ignore[return-value]


def radfact_phrases(
    findings: Sequence[Finding], image_width: int, image_height: int, reference_boxes: Sequence[ReferenceBox]
) -> tuple[list[Phrase], list[Phrase]]:
    """(generated, reference) phrases for RadFact's box metrics, boxes normalised over the whole image.

    Generated: one per finding, asserting the classes its sentence names. Reference: one per box
    label (canonical class, else the label as written) holding all boxes of that label.
    """

    def normalised(image_box: Box) -> Box:
        return normalise_image_box(image_box, image_width, image_height)

    generated = [
        Phrase(
            f.text,
            tuple(normalised(model_to_image_box(b, image_width, image_height)) for b in f.model_boxes)
            if f.model_boxes
            else None,
            frozenset(classes_in_sentence(f.text)),
        )
        for f in findings
    ]
    groups: dict[str, list[Box]] = {}
    for ref in reference_boxes:
        groups.setdefault(canonical_class(ref.label) or ref.label, []).append(normalised(ref.image_box))
    reference = [Phrase(label, tuple(boxes), frozenset({label})) for label, boxes in groups.items()]
    return generated, reference


def study_row(
    study_id: str,
    context: str,
    findings: Sequence[Finding],
    image_width: int,
    image_height: int,
    reference_boxes: Sequence[ReferenceBox],
    reference_findings: Sequence[str],
    *,
    grounded: bool = True,
    flags: Sequence[Flag] = (),
    task: str = REPORTING,
) -> dict[str, Any]:
    """All per-study numbers for one (task, study, context), as a flat dict (the per-study CSV row).

    `grounded` is the context's setting: box metric values of an ungrounded context are None (not
    applicable; box counts stay); `flags` are the report's degenerate-output flags. For the
    box-completion task `findings` are the reference findings with the model's boxes, and the text
    metrics are None (not applicable: the text was given).
    """
    box = study_box_metrics(findings, image_width, image_height, reference_boxes)
    radfact = radfact_box_scores(*radfact_phrases(findings, image_width, image_height, reference_boxes))
    box_values = {
        "precision": box.precision,
        "recall": box.recall,
        "union_iou": box.union_iou,
        "pixel_precision": box.pixel_precision,
        "pixel_recall": box.pixel_recall,
        **(radfact.as_row() if reference_boxes else dict.fromkeys(radfact.as_row())),
    }
    per_class = {name: vars(c) for name, c in box.per_class.items()}
    for name, (precision, recall) in radfact.per_class.items():
        if name in per_class:
            per_class[name].update(fractions(precision, recall) if grounded else dict.fromkeys(radfact.as_row()))
    generated_text = " ".join(f.text for f in findings)
    reference_text = " ".join(reference_findings)
    scores_text = bool(reference_text.strip()) and task != BOX_COMPLETION
    return {
        "study_id": study_id,
        "context": context,
        "task": task,
        "grounded": grounded,
        "flags": {flag.name: flag.reason for flag in flags},
        "n_pred_boxes": box.n_pred_boxes,
        "n_ref_boxes": box.n_ref_boxes,
        "n_empty_pred_boxes": box.n_empty_pred_boxes,
        "n_empty_ref_boxes": box.n_empty_ref_boxes,
        "precision_hits": box.precision_hits,
        "recall_hits": box.recall_hits,
        **(box_values if grounded else dict.fromkeys(box_values)),  # not applicable, not 0
        "per_class": per_class,
        "rouge_l": rouge_l(generated_text, reference_text) if scores_text else None,
        "bleu_stats": bleu_statistics(generated_text, reference_text) if scores_text else None,
        "generated_text": generated_text,
        "reference_text": reference_text,
        "generated_sentences": [f.text for f in findings],
        "reference_sentences": list(reference_findings),
        "generated_boxes": [list(b.as_tuple()) for f in findings for b in f.model_boxes or ()],
    }


def aggregate(per_study: list[dict], n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Flat summary of one context's `study_row` dicts: counts, flag counts and every computed metric.

    Each metric appears as `name`, `name_lo`, `name_hi` (95% bootstrap interval over studies) and
    `name_note` (None, or why there is no value: not applicable to an ungrounded context, no data);
    `per_class` maps class -> the same keys. Box metrics cover the box-annotated studies (at least
    one reference box): a study without reference boxes may simply be unannotated, so its
    generated boxes are only counted, in `n_pred_boxes_unannotated`. Box precision/recall are
    micro (hits over all boxes), union IoU, ROUGE-L and RadFact's fractions means over studies,
    BLEU-4 a corpus score. See `model_backend.evaluation.summary` for all contexts and their differences.
    """
    name = per_study[0]["context"] if per_study else ""
    context = summarise_context(name, per_study, computed_metrics(per_study), n_resamples, seed)
    out: dict[str, Any] = {**context.counts, "grounded": context.grounded, "flags": context.flags}
    out.update(flat_estimates(context.metrics))
    out["per_class"] = {cls: flat_estimates(metrics) for cls, metrics in context.per_class.items()}
    return out


# ---------------------------------------------------------------- CLI


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise MetricsInputError(f"cannot read {path}: {exc}") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetricsInputError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise MetricsInputError(f"{path}:{number}: expected a JSON object per line")
        records.append((number, record))
    return records


def _reference_box(raw: Any, width: int, height: int, where: str) -> ReferenceBox:
    try:
        coords = [float(raw[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        frame = raw.get("frame", "pixel")
        label = str(raw.get("label", ""))
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise MetricsInputError(f"{where}: a reference box needs numeric x_min, y_min, x_max, y_max") from exc
    if frame == "normalized":
        coords = [coords[0] * width, coords[1] * height, coords[2] * width, coords[3] * height]
    elif frame != "pixel":
        raise MetricsInputError(f'{where}: reference box frame must be "pixel" or "normalized", got {frame!r}')
    return ReferenceBox(label=label, image_box=Box(*coords))


def load_manifest_references(path: Path) -> dict[str, dict]:
    """Manifest JSONL -> {study_id: {"reference_findings": [...], "reference_boxes": [raw dicts], "line": n}}.

    Only the fields the metrics need are read: `study_id`, `reference_findings` (list of str) and
    `reference_boxes` (list of {label, x_min, y_min, x_max, y_max, frame: "pixel"|"normalized"};
    normalized boxes are scaled by the image size of each result line).
    """
    references: dict[str, dict] = {}
    for number, record in _read_jsonl(path):
        study_id = record.get("study_id")
        findings = record.get("reference_findings") or []
        boxes = record.get("reference_boxes") or []
        if not isinstance(study_id, str | int) or isinstance(study_id, bool):
            raise MetricsInputError(f"{path}:{number}: missing study_id")
        if not isinstance(findings, list) or not all(isinstance(s, str) for s in findings):
            raise MetricsInputError(f"{path}:{number}: reference_findings must be a list of strings")
        if not isinstance(boxes, list):
            raise MetricsInputError(f"{path}:{number}: reference_boxes must be a list")
        if str(study_id) in references:
            raise MetricsInputError(f"{path}:{number}: duplicate study_id {study_id!r}")
        references[str(study_id)] = {"reference_findings": findings, "reference_boxes": boxes, "line": number}
    return references


def _report(record: dict, study_id: str, context: str, findings: list[Finding], width: int, height: int) -> Report:
    """A results line as a `Report` (for the degenerate-output flags)."""
    return Report(
        study_id=study_id,
        context=PromptContext(name=context),
        findings=tuple(findings),
        image_width=width,
        image_height=height,
        raw_text=str(record.get("raw_text") or ""),
        complete=bool(record.get("complete", True)),
        backend=BackendInfo(name=str(record.get("backend") or "recorded"), model_id=str(record.get("model_id") or "")),
        warnings=tuple(str(w) for w in record.get("warnings") or ()),
    )


def _context_of(record: dict, task: str) -> tuple[str, bool]:
    """(context name, grounded) of a results line; box completion always runs on the grounded prompt."""
    raw = record["context"]
    if not isinstance(raw, dict):
        return str(raw), True
    return str(raw["name"]), task == BOX_COMPLETION or raw.get("grounded", True) is not False


def _check_completed_findings(findings: Sequence[Finding], reference: Sequence[str], where: str) -> None:
    """A box-completion line must hold the manifest's reference findings (else it was run on another manifest)."""
    if [f.text.strip() for f in findings] != [s.strip() for s in reference]:
        raise MetricsInputError(
            f"{where}: a box-completion line whose findings are not the manifest's reference_findings "
            "(results of another manifest?)"
        )


def evaluate_results(results_path: Path, manifest_path: Path) -> list[dict[str, Any]]:
    """Results JSONL + manifest JSONL -> `study_row` dicts, one per (task, study, context) line.

    A results line holds `study_id`, `context` (a name, or an object with a "name" and optionally
    "grounded"; a bare name counts as grounded), `output` (protocol findings: list or JSON
    string) and `image_width` / `image_height`; `task` ("reporting" when absent, or
    "box_completion"); `raw_text`, `complete` and `warnings` (as the batch runner writes them) feed
    the degenerate-output flags, recomputed from the line.
    """
    references = load_manifest_references(manifest_path)
    rows, seen = [], set()
    for number, record in _read_jsonl(results_path):
        where = f"{results_path}:{number}"
        if record.get("error"):  # a study the batch runner could not process: it has no output to score
            continue
        missing = [k for k in ("study_id", "context", "output", "image_width", "image_height") if k not in record]
        if missing:
            raise MetricsInputError(f"{where}: missing {', '.join(missing)}")
        task = record.get("task") or REPORTING
        if task not in (REPORTING, BOX_COMPLETION):
            raise MetricsInputError(f"{where}: unknown task {task!r} (expected {REPORTING!r} or {BOX_COMPLETION!r})")
        study_id = str(record["study_id"])
        context, grounded = _context_of(record, task)
        width, height = record["image_width"], record["image_height"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            raise MetricsInputError(f"{where}: image_width and image_height must be positive integers")
        if study_id not in references:
            raise MetricsInputError(f"{where}: study {study_id!r} is not in the manifest {manifest_path}")
        key = (task, study_id, context)
        if key in seen:
            raise MetricsInputError(f"{where}: a second line for study {study_id!r}, context {context!r} ({task})")
        seen.add(key)
        try:
            decoded = decode_output(record["output"])
        except ProtocolError as exc:
            raise MetricsInputError(f"{where}: {exc}") from exc
        findings = [Finding(text, None if boxes is None else tuple(boxes)) for text, boxes in decoded]
        ref = references[study_id]
        if task == BOX_COMPLETION:
            _check_completed_findings(findings, ref["reference_findings"], where)
        flags = degenerate_flags(_report(record, study_id, context, findings, width, height))
        ref_boxes = [_reference_box(b, width, height, f"{manifest_path}:{ref['line']}") for b in ref["reference_boxes"]]
        rows.append(
            study_row(study_id, context, findings, width, height, ref_boxes, ref["reference_findings"],
                      grounded=grounded, flags=flags, task=task)
        )  # fmt: skip
    if not rows:
        raise MetricsInputError(f"{results_path}: no result lines")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_backend.metrics",
        description="Grounding, text and clinical metrics of generated reports, per context and between contexts.",
    )
    parser.add_argument("results", type=Path, help="results JSONL (study_id, context, output, image_width/height)")
    parser.add_argument("--data", type=Path, required=True, help="manifest JSONL with reference findings/boxes")
    parser.add_argument("--out", type=Path, default=None, help="per-study CSV to write")
    parser.add_argument("--summary-csv", type=Path, default=None, help="summary CSV (long form) to write")
    parser.add_argument("--json", type=Path, default=None, help="summary JSON (with the per-study rows) to write")
    parser.add_argument("--resamples", type=int, default=N_RESAMPLES, help="bootstrap and randomisation resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error("--resamples must be at least 1")
    try:
        rows = evaluate_results(args.results, args.data)
    except MetricsInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = add_model_metrics([r for r in rows if r["task"] == REPORTING], args)  # box completion: text given
    summary = summarise(rows, args.resamples, args.seed, skipped=run.skipped, models=run.settings)
    print(format_summary(summary))
    if args.out is not None:
        write_rows_csv(rows, args.out)
        print(f"per-study metrics: {args.out}")
    if args.summary_csv is not None:
        write_summary_csv(summary, args.summary_csv)
        print(f"summary: {args.summary_csv}")
    if args.json is not None:
        write_json(summary, rows, args.json)
        print(f"summary JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
