"""The metrics CLI's outputs: tables (printed here, drawn by the dashboard), the per-study CSV, the summary CSV
(long form) and JSON."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_backend.degenerate import FLAGS
from model_backend.evaluation.metric_specs import CHEXBERT_CLASS_METRIC
from model_backend.evaluation.summary import RECORD_FIELDS, Estimate, Summary, is_not_applicable
from model_backend.paired_stats import PairedDifference

# In the JSON rows, not the per-study CSV: BLEU's sufficient statistics, sentence lists (the texts are there),
# the generated model-frame boxes.
_INTERNAL_KEYS = ("bleu_stats", "generated_sentences", "reference_sentences", "generated_boxes")


Table = tuple[list[str], list[list[str]]]  # header, body: every cell a string


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_estimate(e: Estimate) -> str:
    """'0.512 [0.401, 0.623]', 'n/a' (not applicable) or '-' (no data)."""
    if e.value is None:
        return "n/a" if is_not_applicable(e.note) else "-"
    return f"{e.value:.3f} [{e.lo:.3f}, {e.hi:.3f}]" if e.lo is not None else f"{e.value:.3f}"


def format_difference(d: PairedDifference | None) -> str:
    """'-0.070 [-0.120, -0.020] p=0.004', 'n/a' (a side not applicable) or '-' (no data)."""
    if d is None:
        return "n/a"
    if d.difference is None:
        return "-"
    return f"{d.difference:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] p={d.p_value:.3f}"


def context_table(summary: Summary) -> Table:
    """Counts and every metric (value [95% CI]) per context (per task and context)."""
    contexts = list(summary.contexts.values())
    counts = [
        ["studies", *(str(c.counts["n_studies"]) for c in contexts)],
        ["box-annotated studies", *(str(c.counts["n_box_studies"]) for c in contexts)],
        ["boxes generated/reference", *(f"{c.counts['n_pred_boxes']}/{c.counts['n_ref_boxes']}" for c in contexts)],
        ["studies with reference text", *(str(c.counts["n_text_studies"]) for c in contexts)],
    ]
    if any(m.key == "logical_precision" for m in summary.metrics):
        counts.append(
            [
                "entailment judgements (failed)",
                *(f"{c.counts['n_entailment_judgements']} ({c.counts['n_entailment_failures']})" for c in contexts),
            ]
        )
    metric_rows = [[m.label, *(format_estimate(c.metrics[m.key]) for c in contexts)] for m in summary.metrics]
    return ["metric", *summary.contexts], counts + metric_rows


def flags_table(summary: Summary) -> Table:
    """Studies flagged / studies, per degenerate-output flag and context."""
    contexts = list(summary.contexts.values())
    body = [[f, *(f"{c.flags[f]}/{c.counts['n_studies']}" for c in contexts)] for f in FLAGS]
    return ["flag", *summary.contexts], body


def pairs_table(summary: Summary) -> Table:
    """Every metric's difference B - A [95% CI] p, per pair of contexts of the same task."""
    body = [[m.label, *(format_difference(p.metrics[m.key]) for p in summary.pairs)] for m in summary.metrics]
    return ["metric", *(p.label for p in summary.pairs)], body


def class_table(summary: Summary) -> Table:
    """Per class and metric, value [95% CI] per context; rows where no context has a value are left out."""
    contexts = list(summary.contexts.values())
    labels = {m.key: m.label for m in summary.metrics} | {CHEXBERT_CLASS_METRIC: "CheXpert F1"}
    body = []
    for cls in sorted({cls for c in contexts for cls in c.per_class}):
        for key in dict.fromkeys(k for c in contexts for k in c.per_class.get(cls, {})):
            estimates = [c.per_class.get(cls, {}).get(key) for c in contexts]
            cells = ["-" if e is None else format_estimate(e) for e in estimates]
            if any(cell not in ("-", "n/a") for cell in cells):
                body.append([f"{cls} / {labels[key]}", *cells])
    return ["class / metric", *summary.contexts], body


def format_summary(summary: Summary) -> str:
    """All sections of the CLI's printed output."""
    n_resamples = summary.settings.get("n_resamples")
    parts = [
        f"Metrics per context: value [95% CI], percentile bootstrap over studies ({n_resamples} resamples)",
        _table(*context_table(summary)),
        "",
        "Degenerate outputs: studies flagged",
        _table(*flags_table(summary)),
    ]
    if summary.pairs:
        parts += [
            "",
            "Differences between contexts: B - A over the studies of both (n), paired bootstrap 95% CI, "
            "approximate-randomisation p",
            _table(*pairs_table(summary)),
        ]
    header, class_rows = class_table(summary)
    if class_rows:
        parts += ["", "Per class: value [95% CI]", _table(header, class_rows)]
    for family, setting in summary.settings.get("models", {}).items():
        parts.append(f"{family}: " + ", ".join(f"{k} {v}" for k, v in setting.items()))
    if summary.skipped:
        parts += ["", "Not computed:", *(f"  {family}: {reason}" for family, reason in summary.skipped.items())]
    return "\n".join(parts)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, dict | list | tuple) else value


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Per-study rows -> CSV (dict and list values as JSON; missing values empty)."""
    fields = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in _INTERNAL_KEYS]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in fields})


def write_summary_csv(summary: Summary, path: Path) -> None:
    """`Summary.records` -> CSV: one line per context estimate, flag count and context difference."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RECORD_FIELDS))
        writer.writeheader()
        for record in summary.records():
            writer.writerow({k: _cell(v) for k, v in record.items()})


def write_json(summary: Summary, rows: list[dict[str, Any]], path: Path) -> None:
    """The nested summary plus the per-study rows."""
    path.write_text(json.dumps({**summary.to_dict(), "studies": rows}, indent=1), encoding="utf-8")
