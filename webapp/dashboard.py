"""Dashboard over a batch results file: metric distributions, box positions, per-context comparison.

Every number comes from `model_backend.metrics` (the same code as the metrics CLI); boxes are
mapped to the image frame with `model_backend.boxes.model_to_image_box`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from model_backend.boxes import model_to_image_box, normalise_image_box
from model_backend.metrics import aggregate, evaluate_results
from model_backend.protocol import decode_output

TABLE_COLUMNS = ["study_id", "context", "precision", "recall", "union_iou", "rouge_l", "n_pred_boxes", "n_ref_boxes"]
METRICS = ("precision", "recall", "union_iou", "rouge_l")
HEAT_BINS = 20


@dataclass(frozen=True)
class DashboardData:
    """Per-(study, context) metric rows, per-context summaries and normalised box centres."""

    rows: list[dict[str, Any]]
    summaries: dict[str, dict[str, Any]]
    box_centres: dict[str, np.ndarray]  # context -> (n, 2) centres in [0, 1] of the whole image
    findings_per_study: dict[str, list[int]]


def load_dashboard(results_path: Path, manifest_path: Path) -> DashboardData:
    """Compute everything the dashboard shows from a results JSONL and its manifest."""
    rows = evaluate_results(results_path, manifest_path)
    contexts = sorted({r["context"] for r in rows})
    summaries = {c: aggregate([r for r in rows if r["context"] == c]) for c in contexts}
    centres: dict[str, list[tuple[float, float]]] = {c: [] for c in contexts}
    counts: dict[str, list[int]] = {c: [] for c in contexts}
    for line in results_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("error") or "output" not in record:
            continue
        context = record["context"]["name"] if isinstance(record["context"], dict) else str(record["context"])
        width, height = record["image_width"], record["image_height"]
        findings = decode_output(record["output"])
        counts.setdefault(context, []).append(len(findings))
        for _, model_boxes in findings:
            for model_box in model_boxes or ():
                box = normalise_image_box(model_to_image_box(model_box, width, height), width, height)
                centres.setdefault(context, []).append(((box.x_min + box.x_max) / 2, (box.y_min + box.y_max) / 2))
    return DashboardData(
        rows=rows,
        summaries=summaries,
        box_centres={c: np.asarray(v, dtype=float).reshape(-1, 2) for c, v in centres.items()},
        findings_per_study=counts,
    )


def metrics_table(data: DashboardData) -> list[list[Any]]:
    """Rows for a sortable table (rounded); the first column is the study id to open."""
    out = []
    for row in data.rows:
        out.append([round(row[c], 3) if isinstance(row[c], float) else row[c] for c in TABLE_COLUMNS])
    return out


def summary_markdown(data: DashboardData) -> str:
    lines = [
        "| context | studies | precision (95% CI) | recall (95% CI) | mean IoU | ROUGE-L | BLEU-4 |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(summary: dict[str, Any], name: str) -> str:
        value = summary.get(name)
        if value is None:
            return "–"
        low, high = summary.get(f"{name}_lo"), summary.get(f"{name}_hi")
        return f"{value:.3f} ({low:.3f}–{high:.3f})" if low is not None else f"{value:.3f}"

    for context, s in data.summaries.items():
        bleu = "–" if s.get("bleu4") is None else f"{s['bleu4']:.3f}"
        lines.append(
            f"| {context} | {s['n_studies']} | {fmt(s, 'precision')} | {fmt(s, 'recall')} | "
            f"{fmt(s, 'union_iou')} | {fmt(s, 'rouge_l')} | {bleu} |"
        )
    return "\n".join(lines)


def distributions_figure(data: DashboardData) -> go.Figure:
    """Per-metric box plots (points = studies), one colour per context."""
    figure = go.Figure()
    for context in data.summaries:
        rows = [r for r in data.rows if r["context"] == context]
        for metric in METRICS:
            values = [r[metric] for r in rows if r[metric] is not None]
            ids = [r["study_id"] for r in rows if r[metric] is not None]
            figure.add_trace(
                go.Box(
                    y=values,
                    x=[metric] * len(values),
                    name=context,
                    legendgroup=context,
                    boxpoints="all",
                    text=ids,
                    hovertemplate="%{text}: %{y:.3f}",
                    showlegend=metric == METRICS[0],
                )
            )
    figure.update_layout(
        boxmode="group",
        height=360,
        margin={"l": 40, "r": 10, "t": 30, "b": 40},
        title="Per-study metrics by context",
        yaxis={"range": [0, 1.05]},
    )
    return figure


def heatmap_figure(data: DashboardData) -> go.Figure:
    """Where generated box centres fall on the (normalised) image, all contexts together."""
    centres = np.concatenate([v for v in data.box_centres.values()] or [np.zeros((0, 2))])
    grid, _, _ = np.histogram2d(centres[:, 1], centres[:, 0], bins=HEAT_BINS, range=[[0, 1], [0, 1]])
    axis = (np.arange(HEAT_BINS) + 0.5) / HEAT_BINS
    figure = go.Figure(go.Heatmap(z=grid, x=axis, y=axis, colorscale="Viridis", colorbar={"title": "boxes"}))
    figure.update_layout(
        title=f"Box centres over the image ({len(centres)} boxes)",
        height=360,
        yaxis={"autorange": "reversed", "scaleanchor": "x"},
        margin={"l": 40, "r": 10, "t": 30, "b": 40},
    )
    return figure


def findings_count_figure(data: DashboardData) -> go.Figure:
    figure = go.Figure()
    for context, counts in data.findings_per_study.items():
        figure.add_trace(go.Histogram(x=counts, name=context, opacity=0.7))
    figure.update_layout(
        barmode="overlay", title="Findings per study", height=300, margin={"l": 40, "r": 10, "t": 30, "b": 40}
    )
    return figure
