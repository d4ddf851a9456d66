"""Every metric per context and per class with bootstrap 95% intervals, and paired differences between contexts.

Input: the per-study rows of `model_backend.metrics.evaluate_results` (one dict per study and
context; model-based metrics add their keys to the same rows). Each `Metric` turns a row into
sufficient statistics (`model_backend.paired_stats`), so a micro ratio stays a micro ratio and
corpus BLEU stays a corpus score under resampling. Intervals resample studies; differences pair
the studies present in both contexts (B - A for contexts A, B in results-file order).

Rows are grouped by (task, context): a results file may hold report generation ("reporting") and
box completion ("box_completion") lines under the same context names. Each group is named by
`group_label`; differences pair groups of the same task only (box completion is given the text,
report generation writes it: their difference measures the task, not the context).

Not applicable is not zero: box metrics of an ungrounded context (its `grounded` setting false)
get no value and the note `NOT_APPLICABLE`; text and text-based metrics of box completion (the
text is the reference, given to the model) get the note `TEXT_GIVEN`; a metric without data (no
box-annotated studies, no reference text) gets no value and the note `NO_DATA`. Families whose inputs were not computed
at all (no CheXbert weights, no entailment endpoint) are left out and listed in `Summary.skipped`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from typing import Any

import numpy as np

from model_backend.backends.base import BOX_COMPLETION, REPORTING
from model_backend.degenerate import FLAGS
from model_backend.evaluation.chexbert_labels import CHEXPERT_CLASSES
from model_backend.evaluation.metric_specs import (
    BOX,
    BOX_CLASS_METRICS,
    CHEXBERT,
    CHEXBERT_CLASS_METRIC,
    Metric,
    Row,
    chexbert_stats,
    computed_metrics,
)
from model_backend.paired_stats import (
    N_RESAMPLES,
    Interval,
    PairedDifference,
    ValueFn,
    bootstrap_interval,
    paired_difference,
)

NOT_APPLICABLE = "n/a: ungrounded context"
TEXT_GIVEN = "n/a: box completion (the text is given)"
NO_DATA = "no data"


def is_not_applicable(note: str | None) -> bool:
    """Whether an estimate's note means "not applicable" (as opposed to no data)."""
    return note is not None and note.startswith("n/a")


def not_applicable(metric: Metric, task: str, grounded: bool) -> str | None:
    """The reason `metric` does not apply to a group of this task and grounding, or None when it does."""
    if metric.family == BOX:
        return None if grounded or task == BOX_COMPLETION else NOT_APPLICABLE
    return TEXT_GIVEN if task == BOX_COMPLETION else None


def group_label(context: str, task: str = REPORTING) -> str:
    """A (task, context) group's name in tables: the context name, with the task unless it is reporting."""
    return context if task == REPORTING else f"{context} ({task.replace('_', ' ')})"


@dataclass(frozen=True)
class Estimate:
    """A metric's value with its bootstrap interval (None when not applicable or without data)."""

    value: float | None
    lo: float | None
    hi: float | None
    n_studies: int
    note: str | None = None


@dataclass(frozen=True)
class ContextSummary:
    """One context of one task: counts, degenerate-output flag counts, metrics and per-class metrics."""

    name: str
    task: str
    grounded: bool
    counts: dict[str, int]
    flags: dict[str, int]
    metrics: dict[str, Estimate]
    per_class: dict[str, dict[str, Estimate]]

    @property
    def label(self) -> str:
        return group_label(self.name, self.task)


@dataclass(frozen=True)
class PairSummary:
    """Differences B - A over the studies of both contexts of one task (None where the metric is not
    applicable: `note` says why)."""

    a: str
    b: str
    task: str
    n_studies: int
    metrics: dict[str, PairedDifference | None]
    per_class: dict[str, dict[str, PairedDifference | None]]

    @property
    def note(self) -> str:
        """Why a None difference is not applicable: text given (box completion), else a side ungrounded."""
        return TEXT_GIVEN if self.task == BOX_COMPLETION else NOT_APPLICABLE

    @property
    def label(self) -> str:
        """'B - A (n)' with the groups' labels."""
        return f"{group_label(self.b, self.task)} - {group_label(self.a, self.task)} ({self.n_studies})"


@dataclass(frozen=True)
class Summary:
    """Everything the metrics CLI prints and writes; see `to_dict` and `records` for plain forms."""

    contexts: dict[str, ContextSummary]  # by `ContextSummary.label`
    pairs: list[PairSummary]
    metrics: tuple[Metric, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested form."""
        return {
            "settings": self.settings,
            "metrics": {m.key: _describe(m) for m in self.metrics},
            "skipped": self.skipped,
            "contexts": {name: asdict(c) for name, c in self.contexts.items()},
            "pairs": [
                {
                    "a": p.a,
                    "b": p.b,
                    "task": p.task,
                    "n_studies": p.n_studies,
                    "metrics": {k: _pair_dict(v, p.note) for k, v in p.metrics.items()},
                    "per_class": {c: {k: _pair_dict(v, p.note) for k, v in m.items()} for c, m in p.per_class.items()},
                }
                for p in self.pairs
            ],
        }

    def records(self) -> list[dict[str, Any]]:
        """Long form, one record per number (the summary CSV): context and pair estimates, flag counts."""
        out: list[dict[str, Any]] = []
        for c in self.contexts.values():
            n_studies = c.counts["n_studies"]
            for flag, count in c.flags.items():
                out.append(_record("flags", c.name, None, c.task, None, flag, count, n_studies=n_studies))
            for cls, metrics in [(None, c.metrics), *c.per_class.items()]:
                for key, e in metrics.items():
                    values = (e.value, e.lo, e.hi, None, e.n_studies, e.note)
                    out.append(_record("context", c.name, None, c.task, cls, key, *values))
        for pair in self.pairs:
            for cls, diffs in [(None, pair.metrics), *pair.per_class.items()]:
                for key, d in diffs.items():
                    values = (None,) * 4 if d is None else (d.difference, d.lo, d.hi, d.p_value)
                    n_studies = pair.n_studies if d is None else d.n_studies
                    note = pair.note if d is None else None
                    out.append(_record("difference", pair.a, pair.b, pair.task, cls, key, *values, n_studies, note))
        return out


RECORD_FIELDS = (
    "section", "context", "context_b", "task", "class", "metric", "value", "lo", "hi", "p_value", "n_studies", "note"
)  # fmt: skip


def _record(*values: Any, **named: Any) -> dict[str, Any]:
    """A summary CSV record from positional values in `RECORD_FIELDS` order (missing ones None)."""
    record = dict.fromkeys(RECORD_FIELDS)
    record.update(zip(RECORD_FIELDS, values, strict=False))
    record.update(named)
    return record


def _describe(metric: Metric) -> dict[str, str]:
    return {"label": metric.label, "family": metric.family, "definition": metric.definition}


def _pair_dict(diff: PairedDifference | None, note: str) -> dict[str, Any]:
    return {"note": note} if diff is None else asdict(diff)


def _stats_matrix(rows: Sequence[Row], stats: Callable[[Row], Sequence[float] | None]) -> np.ndarray | None:
    """(n_rows, k) statistics, zero rows where undefined; None when no row defines the metric."""
    values = [stats(row) for row in rows]
    width = next((len(v) for v in values if v is not None), None)
    if width is None:
        return None
    return np.array([np.zeros(width) if v is None else np.asarray(v, dtype=float) for v in values])


def _estimate(matrix: np.ndarray | None, value_fn: ValueFn, n_resamples: int, seed: int) -> Estimate:
    if matrix is None:
        return Estimate(None, None, None, 0, NO_DATA)
    interval: Interval = bootstrap_interval(matrix, value_fn, n_resamples=n_resamples, seed=seed)
    note = None if interval.value is not None else NO_DATA
    return Estimate(interval.value, interval.lo, interval.hi, interval.n_studies, note)


def _class_metric(metric: Metric, cls: str) -> Metric:
    """A box metric restricted to one class (the per-class counts of box-annotated studies)."""

    def stats(row: Row) -> Sequence[float] | None:
        counts = row.get("per_class", {}).get(cls)
        return None if counts is None or row.get("n_ref_boxes", 0) == 0 else metric.stats(counts)

    return replace(metric, stats=stats)


def _class_metrics(metrics: Sequence[Metric], rows: Sequence[Row]) -> dict[str, tuple[Metric, ...]]:
    """class -> its metrics: box metrics for the reference box labels, CheXpert F1 for the 14 observations."""
    out: dict[str, tuple[Metric, ...]] = {}
    for cls in sorted({c for row in rows for c in row.get("per_class", {})}):
        out[cls] = tuple(_class_metric(m, cls) for m in BOX_CLASS_METRICS if m in metrics)
    if any(m.family == CHEXBERT for m in metrics):
        for cls in CHEXPERT_CLASSES:
            chexbert = Metric(CHEXBERT_CLASS_METRIC, "CheXpert F1", CHEXBERT, chexbert_stats((cls,)), f"F1 of {cls}")
            out[cls] = (*out.get(cls, ()), chexbert)
    return out


def context_counts(rows: Sequence[Row]) -> dict[str, int]:
    """Study and box counts of one context's rows (box counts over box-annotated studies)."""
    annotated = [r for r in rows if r["n_ref_boxes"] > 0]
    return {
        "n_studies": len(rows),
        "n_box_studies": len(annotated),
        "n_pred_boxes": sum(r["n_pred_boxes"] for r in annotated),
        "n_ref_boxes": sum(r["n_ref_boxes"] for r in annotated),
        "n_empty_pred_boxes": sum(r["n_empty_pred_boxes"] for r in annotated),
        "n_pred_boxes_unannotated": sum(r["n_pred_boxes"] for r in rows if r["n_ref_boxes"] == 0),
        "n_text_studies": sum(1 for r in rows if r["reference_text"].strip()),
        "n_entailment_failures": sum(r.get("n_entailment_failures", 0) for r in rows),
        "n_entailment_judgements": sum(r.get("n_entailment_judgements", 0) for r in rows),
    }


def task_of(rows: Sequence[Row]) -> str:
    """The task of one group's rows (rows without a "task" key are report generation)."""
    return rows[0].get("task", REPORTING) if rows else REPORTING


def summarise_context(
    name: str, rows: Sequence[Row], metrics: Sequence[Metric], n_resamples: int = N_RESAMPLES, seed: int = 0
) -> ContextSummary:
    """One context's (one task's) counts, flag counts, metrics and per-class metrics with bootstrap intervals."""
    grounded = all(r.get("grounded", True) for r in rows)
    task = task_of(rows)

    def estimate(metric: Metric) -> Estimate:
        note = not_applicable(metric, task, grounded)
        if note is not None:
            return Estimate(None, None, None, 0, note)
        return _estimate(_stats_matrix(rows, metric.stats), metric.value_fn, n_resamples, seed)

    per_class = {
        cls: {m.key: estimate(m) for m in class_metrics} for cls, class_metrics in _class_metrics(metrics, rows).items()
    }
    return ContextSummary(
        name=name,
        task=task,
        grounded=grounded,
        counts=context_counts(rows),
        flags={flag: sum(1 for r in rows if flag in r.get("flags", {})) for flag in FLAGS},
        metrics={m.key: estimate(m) for m in metrics},
        per_class=per_class,
    )


def summarise_pair(
    a: ContextSummary,
    b: ContextSummary,
    rows_a: Sequence[Row],
    rows_b: Sequence[Row],
    metrics: Sequence[Metric],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> PairSummary:
    """Paired differences B - A of every metric (and per class) over the studies both contexts have."""
    by_study_b = {r["study_id"]: r for r in rows_b}
    paired_a = [r for r in rows_a if r["study_id"] in by_study_b]
    paired_b = [by_study_b[r["study_id"]] for r in paired_a]

    def difference(metric: Metric) -> PairedDifference | None:
        if not_applicable(metric, a.task, a.grounded) or not_applicable(metric, b.task, b.grounded):
            return None
        ma, mb = _stats_matrix(paired_a, metric.stats), _stats_matrix(paired_b, metric.stats)
        if ma is None or mb is None:
            return PairedDifference(None, None, None, None, 0)
        return paired_difference(ma, mb, metric.value_fn, n_resamples=n_resamples, seed=seed)

    per_class = {
        cls: {m.key: difference(m) for m in class_metrics}
        for cls, class_metrics in _class_metrics(metrics, paired_a + paired_b).items()
    }
    return PairSummary(a.name, b.name, a.task, len(paired_a), {m.key: difference(m) for m in metrics}, per_class)


def summarise(
    rows: Sequence[Row],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    skipped: dict[str, str] | None = None,
    models: dict[str, Any] | None = None,
) -> Summary:
    """All (task, context) groups (in order of first appearance) and all pairs of contexts of the same task.

    `skipped`: metric families not computed, with the reason; `models`: what the model-based ones ran with.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.get("task", REPORTING), row["context"]), []).append(row)
    metrics = computed_metrics(rows)
    summaries = {key: summarise_context(key[1], group, metrics, n_resamples, seed) for key, group in groups.items()}
    pairs = [
        summarise_pair(summaries[a], summaries[b], groups[a], groups[b], metrics, n_resamples, seed)
        for a, b in combinations(groups, 2)
        if a[0] == b[0]
    ]
    contexts = {c.label: c for c in summaries.values()}
    settings = {"n_resamples": n_resamples, "seed": seed, "interval": "percentile bootstrap 95% over studies"}
    if models:
        settings["models"] = models
    return Summary(contexts, pairs, metrics, dict(skipped or {}), settings)


def flat_estimates(estimates: dict[str, Estimate]) -> dict[str, Any]:
    """{key: Estimate} -> {key, key_lo, key_hi, key_note: ...} (the flat form of `model_backend.metrics.aggregate`)."""
    out: dict[str, Any] = {}
    for key, e in estimates.items():
        out[key], out[f"{key}_lo"], out[f"{key}_hi"], out[f"{key}_note"] = e.value, e.lo, e.hi, e.note
    return out


def flags_by_study(rows: Iterable[Row]) -> dict[tuple[str, str], dict[str, str]]:
    """(study_id, group label) -> {flag name: reason} for the flagged rows only."""
    return {
        (r["study_id"], group_label(r["context"], r.get("task", REPORTING))): dict(r["flags"])
        for r in rows
        if r.get("flags")
    }
