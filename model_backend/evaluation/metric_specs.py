"""The metrics the CLI reports: for each, how a study's row becomes sufficient statistics and their value.

Families: box metrics (not applicable to ungrounded contexts, box-annotated studies only), text
metrics (studies with reference text), and the model-based CheXbert, RadGraph and entailment
families, present only when their row keys were added (`Metric.needs`). The statistics feed
`model_backend.paired_stats`: a mean over studies is rows [v, 1], a micro ratio [hits, total],
BLEU-4 its sacrebleu counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from model_backend.evaluation.bleu import bleu_from_statistics
from model_backend.evaluation.chexbert_labels import CHEXPERT_5, CHEXPERT_CLASSES, f1_counts
from model_backend.paired_stats import ValueFn, ratio

BOX, TEXT, CHEXBERT, RADGRAPH, ENTAILMENT = "box", "text", "chexbert", "radgraph", "entailment"

Row = dict[str, Any]
Stats = Callable[[Row], Sequence[float] | None]


@dataclass(frozen=True)
class Metric:
    """A named metric: how one study's row becomes sufficient statistics, and their value function."""

    key: str
    label: str
    family: str
    stats: Stats
    definition: str
    value_fn: ValueFn = ratio
    needs: str | None = None  # row key whose presence means the family was computed


def _mean(key: str) -> Stats:
    return lambda row: None if row.get(key) is None else (row[key], 1.0)


def _annotated(stats: Stats) -> Stats:
    """Box metrics count box-annotated studies only (a study without reference boxes may be unannotated)."""
    return lambda row: stats(row) if row.get("n_ref_boxes", 0) > 0 else None


def _with_reference_text(stats: Stats) -> Stats:
    return lambda row: stats(row) if row.get("reference_text", "").strip() else None


def chexbert_stats(classes: Sequence[str]) -> Stats:
    """[2 TP, 2 TP + FP + FN] of a study's CheXbert labels over the classes (micro F1 statistics)."""

    def stats(row: Row) -> tuple[float, float] | None:
        if row.get("chexbert_generated") is None:
            return None
        tp, fp, fn = f1_counts(row["chexbert_generated"], row["chexbert_reference"], classes)
        return 2.0 * tp, 2.0 * tp + fp + fn

    return stats


_RADFACT = "RadFact ({}): mean over studies of the per-study fraction of {} phrases with boxes {}"
METRICS: tuple[Metric, ...] = (
    Metric(
        "precision",
        "box precision (best single ref)",
        BOX,
        _annotated(lambda r: (r["precision_hits"], r["n_pred_boxes"])),
        "micro: generated boxes lying > 50% inside one reference box, over generated boxes (224 grid, cell centres)",
    ),
    Metric(
        "recall",
        "box recall (best single ref)",
        BOX,
        _annotated(lambda r: (r["recall_hits"], r["n_ref_boxes"])),
        "micro: reference boxes > 50% covered by one generated box, over reference boxes",
    ),
    Metric("union_iou", "union IoU", BOX, _annotated(_mean("union_iou")), "mean over studies of union-mask IoU"),
    Metric(
        "radfact_spatial_precision",
        "RadFact spatial precision",
        BOX,
        _annotated(_mean("radfact_spatial_precision")),
        _RADFACT.format("generated phrases", "generated", "entailed and > 50% inside the union of evidence boxes"),
    ),
    Metric(
        "radfact_spatial_recall",
        "RadFact spatial recall",
        BOX,
        _annotated(_mean("radfact_spatial_recall")),
        _RADFACT.format("reference phrases", "reference", "entailed and > 50% inside the union of evidence boxes"),
    ),
    Metric(
        "radfact_grounding_precision",
        "RadFact grounding precision",
        BOX,
        _annotated(_mean("radfact_grounding_precision")),
        _RADFACT.format("generated phrases", "logically entailed generated", "> 50% inside their evidence boxes"),
    ),
    Metric(
        "radfact_grounding_recall",
        "RadFact grounding recall",
        BOX,
        _annotated(_mean("radfact_grounding_recall")),
        _RADFACT.format("reference phrases", "logically entailed reference", "> 50% inside their evidence boxes"),
    ),
    Metric("rouge_l", "ROUGE-L", TEXT, _with_reference_text(_mean("rouge_l")), "mean ROUGE-L F1 (rouge-score)"),
    Metric(
        "bleu4",
        "BLEU-4",
        TEXT,
        _with_reference_text(lambda r: r["bleu_stats"]),
        "corpus BLEU-4 (sacrebleu, 13a, lowercase) in [0, 1]",
        value_fn=bleu_from_statistics,
    ),
    Metric(
        "chexbert_f1_14",
        "CheXpert F1-14 (micro)",
        CHEXBERT,
        chexbert_stats(CHEXPERT_CLASSES),
        "micro F1 of CheXbert labels over 14 observations, generated vs reference findings",
        needs="chexbert_generated",
    ),
    Metric(
        "chexbert_f1_5",
        "CheXpert F1-5 (micro)",
        CHEXBERT,
        chexbert_stats(CHEXPERT_5),
        "micro F1 of CheXbert labels over the 5 observations of CheXpert's competition set",
        needs="chexbert_generated",
    ),
    *(
        Metric(
            f"radgraph_f1_{level}",
            f"RadGraph-F1 ({level})",
            RADGRAPH,
            _mean(f"radgraph_f1_{level}"),
            f"mean over studies of the RadGraph {level} reward (F1 of entities{note})",
            needs=f"radgraph_f1_{level}",
        )
        for level, note in (
            ("simple", ""),
            ("partial", " with 'has a relation'"),
            ("complete", " with their relations"),
        )
    ),
    Metric(
        "logical_precision",
        "RadFact logical precision",
        ENTAILMENT,
        _mean("logical_precision"),
        "mean over studies of the fraction of generated sentences the reference entails (LLM judge)",
        needs="logical_precision",
    ),
    Metric(
        "logical_recall",
        "RadFact logical recall",
        ENTAILMENT,
        _mean("logical_recall"),
        "mean over studies of the fraction of reference sentences the generated report entails (LLM judge)",
        needs="logical_recall",
    ),
)
BOX_CLASS_METRICS = tuple(m for m in METRICS if m.family == BOX and m.key != "union_iou")
CHEXBERT_CLASS_METRIC = "chexbert_f1"


def computed_metrics(rows: Iterable[Row]) -> tuple[Metric, ...]:
    """The metrics whose inputs some row carries (model-based families only when they were run)."""
    rows = list(rows)
    return tuple(m for m in METRICS if m.needs is None or any(m.needs in r for r in rows))
