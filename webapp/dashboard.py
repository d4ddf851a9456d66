"""What the Dashboard tab shows of a batch results file: tables, figures and the per-study table.

Every number comes from `model_backend.metrics.evaluate_results` and
`model_backend.evaluation.summary.summarise` (the metrics CLI's code). A *series* is one (task,
context) group of the results file, in file order; it keeps one colour (`PALETTE`) in every
figure and table, and every figure's legend lists every series. A metric that does not apply to
a series (box metrics of an ungrounded context, text metrics of box completion) is written "n/a"
and never drawn or tabulated as a number. Generated boxes are read in the model frame (the square
centre crop the model sees, 0..1) and drawn over the mean of the studies' centre crops. Text from
the files (context names, study ids) is HTML-escaped wherever it is rendered, Plotly labels included.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from model_backend.backends.base import REPORTING
from model_backend.boxes import centre_crop_square
from model_backend.datasets import Dataset
from model_backend.evaluation.metric_specs import METRICS, Metric
from model_backend.evaluation.report import Table, class_table, context_table, flags_table, pairs_table
from model_backend.evaluation.summary import Summary, group_label, not_applicable, summarise
from model_backend.images import load_image_path
from model_backend.metrics import evaluate_results
from model_backend.paired_stats import N_RESAMPLES

Row = dict[str, Any]

# Tableau 10: one colour per series, in results-file order (an 11th series reuses the first colour).
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac")
DIST_METRICS = ("precision", "recall", "union_iou", "radfact_spatial_precision", "radfact_spatial_recall", "rouge_l")
N_BINS = 10  # metric distributions: the same ten bins of width 0.1 over [0, 1] for every series
HEAT_BINS = 20  # box centres: 20 x 20 cells over the model frame
HEAT_COLUMNS = 5  # heat map panels per row
MEAN_SIDE = 128  # the mean crop image, pixels a side
MEAN_MAX_STUDIES = 200  # studies averaged into it (evenly spaced over the results file)
TABLE_METRICS = ("precision", "recall", "union_iou", "radfact_spatial_precision", "radfact_spatial_recall", "rouge_l")
TABLE_COLUMNS = ["study", "context", "task", "flags", "box prec.", "box rec.", "union IoU",
                 "RadFact sp. P", "RadFact sp. R", "ROUGE-L", "boxes g/r"]  # fmt: skip
NA, NO_VALUE = "n/a", "–"  # per-study cells: not applicable / no data (sorted after every number)
_METRICS = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Series:
    """One (task, context) group of the results file as the dashboard draws it."""

    label: str
    task: str
    grounded: bool
    colour: str

    def note(self, metric: Metric) -> str | None:
        """Why `metric` is not applicable to this series ("n/a: ..."), or None when it is."""
        return not_applicable(metric, self.task, self.grounded)

    @property
    def legend(self) -> str:
        """Its legend entry: the label, plus what is not applicable to it."""
        if self.task != REPORTING:
            return f"{self.label} · text metrics n/a"
        return self.label if self.grounded else f"{self.label} · ungrounded: box metrics n/a"


@dataclass(frozen=True)
class DashboardData:
    """Per-study rows (one per results line), their summary, the series and the mean crop image."""

    rows: list[Row]
    summary: Summary
    series: tuple[Series, ...]
    mean_crop: np.ndarray | None  # (MEAN_SIDE, MEAN_SIDE) uint8; None when no image could be read

    def series_of(self, row: Row) -> Series:
        return next(s for s in self.series if s.label == row_label(row))


def row_label(row: Row) -> str:
    """The series label of a per-study row."""
    return group_label(row["context"], row.get("task", REPORTING))


def rows_of(rows: Sequence[Row], series: Series) -> list[Row]:
    """The rows of one series."""
    return [r for r in rows if row_label(r) == series.label]


def load_dashboard(results_path: Path, dataset: Dataset, n_resamples: int = N_RESAMPLES) -> DashboardData:
    """Evaluate a results file against the dataset's manifest, summarise it, average the studies' crops."""
    if dataset.manifest_path is None:
        raise ValueError(f"the dataset {dataset.name!r} has no manifest file to read the references from")
    rows = evaluate_results(results_path, dataset.manifest_path)
    summary = summarise(rows, n_resamples=n_resamples)
    series = tuple(
        Series(c.label, c.task, c.grounded, PALETTE[i % len(PALETTE)]) for i, c in enumerate(summary.contexts.values())
    )
    study_ids = list(dict.fromkeys(r["study_id"] for r in rows))
    return DashboardData(rows, summary, series, mean_crop(dataset, study_ids))


@lru_cache(maxsize=4)
def _cached(path: Path, stamp: tuple[int, int], dataset: Dataset) -> DashboardData:
    return load_dashboard(path, dataset)


def dashboard_for(results_path: Path, dataset: Dataset) -> DashboardData:
    """`load_dashboard`, computed once per version (size, modification time) of the results file."""
    stat = results_path.stat()
    return _cached(results_path.resolve(), (stat.st_size, stat.st_mtime_ns), dataset)


def mean_crop(dataset: Dataset, study_ids: Sequence[str]) -> np.ndarray | None:
    """Mean of the studies' frontal centre crops, MEAN_SIDE square (at most MEAN_MAX_STUDIES, evenly spaced;
    unreadable images are left out)."""
    step = max(1, math.ceil(len(study_ids) / MEAN_MAX_STUDIES))
    total, count = np.zeros((MEAN_SIDE, MEAN_SIDE)), 0
    for study_id in study_ids[::step]:
        try:
            image = load_image_path(dataset.resolve(dataset.entry(study_id).frontal))
        except ValueError:  # DatasetError, ImageLoadError
            continue
        total += centre_crop_pixels(image.display)
        count += 1
    return (total / count).astype(np.uint8) if count else None


def centre_crop_pixels(display: np.ndarray) -> np.ndarray:
    """An image's square centre crop (as the processor takes it), min-max normalised to 0..255, MEAN_SIDE square."""
    height, width = display.shape
    x, y, side = (round(v) for v in centre_crop_square(width, height))
    crop = display[y : y + side, x : x + side].astype(float)
    low, span = crop.min(), crop.max() - crop.min()
    crop = (crop - low) * (255.0 / span) if span else np.zeros_like(crop)
    resized = Image.fromarray(crop.astype(np.uint8)).resize((MEAN_SIDE, MEAN_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=float)


def filter_rows(rows: Sequence[Row], flags: Sequence[str]) -> list[Row]:
    """The rows (reports) carrying at least one of `flags`; all rows when no flag is chosen."""
    wanted = set(flags)
    return [r for r in rows if not wanted or wanted & set(r.get("flags", {}))]


def flag_choices(data: DashboardData) -> list[tuple[str, str]]:
    """(label with its count, flag) for each degenerate-output flag raised at least once."""
    counts = Counter(flag for r in data.rows for flag in r.get("flags", {}))
    return [(f"{flag} ({n})", flag) for flag, n in counts.items()]


# ---------------------------------------------------------------- figures


def bin_index(value: float) -> int:
    """Which of the N_BINS equal bins over [0, 1] holds `value` (1.0 in the last; no float drift at edges)."""
    return min(max(math.floor(value * N_BINS + 1e-9), 0), N_BINS - 1)


def dot_positions(values: Sequence[float], slot: int, n_slots: int) -> tuple[list[float], list[int]]:
    """A dot histogram: x inside the value's bin (series `slot` of `n_slots` side by side), y stacked 1, 2, ..."""
    heights: Counter[int] = Counter()
    xs, ys = [], []
    for value in values:
        index = bin_index(value)
        heights[index] += 1
        xs.append((index + (slot + 0.5) / n_slots) / N_BINS)
        ys.append(heights[index])
    return xs, ys


def _legend(data: DashboardData) -> list[go.Scatter]:
    """One legend entry per series, always all of them (a series may have nothing to draw in a figure)."""
    return [
        go.Scatter(x=[None], y=[None], mode="markers", name=html.escape(s.legend), legendgroup=s.label,
                   marker={"color": s.colour, "size": 11, "symbol": "square"}, hoverinfo="skip")
        for s in data.series
    ]  # fmt: skip


def _axis(index: int) -> str:
    """Plotly's name of the index-th (1-based) subplot's x axis suffix: '', '2', '3', ..."""
    return "" if index == 1 else str(index)


def na_note(series: Sequence[Series], metric: Metric) -> str:
    """'n/a for <series>: <why>' lines (each in its series' colour) for the series `metric` does not apply to."""
    return "<br>".join(
        f"<span style='color:{s.colour}'>n/a for {html.escape(s.label)}: {html.escape(note[len('n/a: ') :])}</span>"
        for s in series
        if (note := s.note(metric))
    )


def _study_points(data: DashboardData, rows: Sequence[Row], metric: Metric, slot: int, series: Series) -> go.Scatter:
    """One series' studies in one metric's dot histogram; a click gives (study, context, task) to open."""
    mine = [r for r in rows_of(rows, series) if r.get(metric.key) is not None]
    values = [float(r[metric.key]) for r in mine]
    xs, ys = dot_positions(values, slot, len(data.series))
    label = html.escape(series.label)
    return go.Scatter(
        x=xs, y=ys, mode="markers", legendgroup=series.label, showlegend=False, name=label, hoverinfo="text",
        marker={"color": series.colour, "size": 8, "line": {"width": 0.5, "color": "white"}},
        customdata=[[r["study_id"], r["context"], r.get("task", REPORTING)] for r in mine],
        hovertext=[f"{html.escape(r['study_id'])} · {label}: {v:.3f}" for r, v in zip(mine, values, strict=True)],
    )  # fmt: skip


def distributions_figure(data: DashboardData, rows: Sequence[Row]) -> go.Figure:
    """Per-study values of each metric in `DIST_METRICS` as dot histograms: the same bins for every series,
    one dot per (study, series) in the series' colour; not-applicable series are named, not drawn."""
    metrics = [_METRICS[key] for key in DIST_METRICS]
    figure = make_subplots(rows=2, cols=3, subplot_titles=[f"{m.label}, per study" for m in metrics],
                           vertical_spacing=0.2, horizontal_spacing=0.05)  # fmt: skip
    for index, metric in enumerate(metrics, start=1):
        row, col = (index - 1) // 3 + 1, (index - 1) % 3 + 1
        for slot, series in enumerate(data.series):
            if series.note(metric) is None:
                figure.add_trace(_study_points(data, rows, metric, slot, series), row=row, col=col)
        figure.update_xaxes(range=[0, 1], dtick=1 / N_BINS, showgrid=True, gridcolor="#ccc", row=row, col=col,
                            title={"text": na_note(data.series, metric), "font": {"size": 11}})  # fmt: skip
        figure.update_yaxes(title_text="studies" if col == 1 else None, row=row, col=col)
    tallest = max([3, *(y for trace in figure.data for y in trace.y)])
    figure.update_yaxes(range=[0, tallest + 0.8], **count_ticks(tallest))  # one scale for every metric
    figure.add_traces(_legend(data))
    figure.update_layout(height=700, margin={"l": 50, "r": 10, "t": 60, "b": 30}, plot_bgcolor="white",
                         legend={"orientation": "h", "y": -0.12}, clickmode="event")  # fmt: skip
    return figure


def count_ticks(top: int) -> dict[str, Any]:
    """Axis settings for counts up to `top`: whole numbers only (every one up to 10)."""
    return {"tickformat": "d", "dtick": 1} if top <= 10 else {"tickformat": "d"}


def box_centres(rows: Sequence[Row]) -> np.ndarray:
    """(n, 2) centres (x, y) of the rows' generated boxes in the model frame."""
    boxes = np.asarray([b for r in rows for b in r.get("generated_boxes", ())], dtype=float).reshape(-1, 4)
    return np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2])


def _png_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_figure(data: DashboardData, rows: Sequence[Row]) -> go.Figure:
    """Where each series' box centres fall in the model frame: one panel per series, equal axes over [0, 1]
    (y down, as in the image), HEAT_BINS x HEAT_BINS cells shaded in the series' colour, over the mean crop."""
    n = len(data.series)
    n_rows, n_cols = math.ceil(n / HEAT_COLUMNS), min(n, HEAT_COLUMNS)
    grids = {s.label: _centre_grid(rows_of(rows, s)) for s in data.series}
    peak = max([1.0, *(g.max() for g in grids.values())])
    titles = [f"{html.escape(s.label)} ({int(grids[s.label].sum())} boxes)" for s in data.series]
    figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles, horizontal_spacing=0.04,
                           vertical_spacing=0.08)  # fmt: skip
    background = None if data.mean_crop is None else _png_data_uri(data.mean_crop)
    centres = (np.arange(HEAT_BINS) + 0.5) / HEAT_BINS
    for index, series in enumerate(data.series, start=1):
        row, col = (index - 1) // n_cols + 1, (index - 1) % n_cols + 1
        suffix = _axis(index)
        grid = grids[series.label]
        figure.add_trace(
            go.Heatmap(
                z=np.where(grid > 0, grid, np.nan), x=centres, y=centres, zmin=0, zmax=peak, showscale=False,
                colorscale=[[0, _rgba(series.colour, 0.3)], [1, _rgba(series.colour, 0.95)]],
                hovertemplate="x %{x:.3f}, y %{y:.3f}: %{z} boxes<extra>" + html.escape(series.label) + "</extra>",
                name=html.escape(series.label), legendgroup=series.label, showlegend=False,
            ),
            row=row, col=col,
        )  # fmt: skip
        if background is not None:
            figure.add_layout_image(source=background, xref=f"x{suffix}", yref=f"y{suffix}", x=0, y=0, sizex=1,
                                    sizey=1, xanchor="left", yanchor="top", sizing="stretch", opacity=0.45,
                                    layer="below")  # fmt: skip
        if not series.grounded:
            figure.add_annotation(text="n/a: ungrounded context (no boxes)", xref=f"x{suffix} domain",
                                  yref=f"y{suffix} domain", x=0.5, y=0.5, showarrow=False,
                                  bgcolor="rgba(255,255,255,0.85)")  # fmt: skip
        figure.update_xaxes(range=[0, 1], constrain="domain", dtick=0.25, row=row, col=col)
        figure.update_yaxes(range=[1, 0], constrain="domain", dtick=0.25, scaleanchor=f"x{suffix}", scaleratio=1,
                            row=row, col=col)  # fmt: skip
    figure.add_traces(_legend(data))
    figure.update_layout(height=80 + 320 * n_rows, margin={"l": 40, "r": 10, "t": 60, "b": 10}, plot_bgcolor="white",
                         legend={"orientation": "h", "y": -0.1 / n_rows, "yanchor": "top"})  # fmt: skip
    return figure


def _centre_grid(rows: Sequence[Row]) -> np.ndarray:
    """(HEAT_BINS, HEAT_BINS) counts of box centres, indexed [y, x], over [0, 1] x [0, 1] of the model frame."""
    centres = box_centres(rows)
    grid, _, _ = np.histogram2d(centres[:, 1], centres[:, 0], bins=HEAT_BINS, range=[[0, 1], [0, 1]])
    return grid


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def findings_figure(data: DashboardData, rows: Sequence[Row]) -> go.Figure:
    """Findings per generated report: one bar per count 0..max (the same bins for every series) in each series'
    colour. Box completion is given its findings: its series is named n/a, not drawn."""
    generated = [s for s in data.series if s.task == REPORTING]
    counts = {s.label: Counter(len(r["generated_sentences"]) for r in rows_of(rows, s)) for s in generated}
    bins = list(range(max([0, *(k for c in counts.values() for k in c)]) + 1))
    figure = go.Figure(
        [go.Bar(x=bins, y=[counts[s.label][b] for b in bins], marker_color=s.colour, name=html.escape(s.label),
                legendgroup=s.label, hovertemplate="%{x} findings: %{y} reports") for s in generated]
    )  # fmt: skip
    figure.add_traces(
        [go.Bar(x=[None], y=[None], marker_color=s.colour, name=html.escape(f"{s.label} · n/a: findings given"))
         for s in data.series if s.task != REPORTING]
    )  # fmt: skip
    top = max([1, *(n for c in counts.values() for n in c.values())])
    figure.update_layout(barmode="group", height=300, margin={"l": 50, "r": 10, "t": 50, "b": 40}, plot_bgcolor="white",
                         xaxis={"title": "findings in the report", "dtick": 1},
                         yaxis={"title": "reports", **count_ticks(top)})  # fmt: skip
    return figure


# ---------------------------------------------------------------- tables


def metric_cell(row: Row, series: Series, key: str) -> str:
    """A per-study metric as the table shows it: '0.250', 'n/a' (not applicable) or '–' (no data)."""
    if series.note(_METRICS[key]):
        return NA
    value = row.get(key)
    return NO_VALUE if value is None else f"{value:.3f}"


def study_table(data: DashboardData, rows: Sequence[Row]) -> list[list[Any]]:
    """One line per (study, series) in `TABLE_COLUMNS` order. Metric cells are three-decimal strings of values
    in [0, 1] (text order = numeric order), or "n/a" / "–", which the table sorts apart from the numbers."""
    table = []
    for row in rows:
        series = data.series_of(row)
        table.append([
            row["study_id"], row["context"], row.get("task", REPORTING), ", ".join(row.get("flags", {})),
            *(metric_cell(row, series, key) for key in TABLE_METRICS),
            f"{row['n_pred_boxes']}/{row['n_ref_boxes']}",
        ])  # fmt: skip
    return table


def html_table(table: Table, series: Sequence[Series] = (), caption: str = "") -> str:
    """A table as HTML, every cell escaped; a header naming a series gets its colour; n/a cells are greyed."""
    header, body = table
    colours = {s.label: s.colour for s in series}

    def head(cell: str) -> str:
        swatch = f"<span class='dash-swatch' style='background:{colours[cell]}'></span>" if cell in colours else ""
        return f"<th>{swatch}{html.escape(cell)}</th>"

    def cell(value: str) -> str:
        return f"<td class='na'>{html.escape(value)}</td>" if value in (NA, "-") else f"<td>{html.escape(value)}</td>"

    lines = [f"<p class='dash-caption'>{html.escape(caption)}</p>" if caption else "", "<table class='dash-table'>"]
    lines.append("<thead><tr>" + "".join(head(h) for h in header) + "</tr></thead><tbody>")
    lines += ["<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in body]
    return "".join(lines) + "</tbody></table>"


def summary_html(data: DashboardData) -> str:
    """Counts and every metric with its 95% CI per series."""
    n = data.summary.settings.get("n_resamples")
    caption = f"Metrics per context: value [95% CI], percentile bootstrap over studies ({n} resamples)"
    return html_table(context_table(data.summary), data.series, caption)


def pairs_html(data: DashboardData) -> str:
    """Paired differences B - A of every metric, per pair of contexts of the same task."""
    if not data.summary.pairs:
        return "<p>One context per task: no differences to show.</p>"
    caption = "Differences between contexts: B - A over the studies of both (n), paired bootstrap 95% CI, p"
    return html_table(pairs_table(data.summary), caption=caption)


def flags_html(data: DashboardData) -> str:
    """Reports flagged per degenerate-output flag and series."""
    return html_table(flags_table(data.summary), data.series, "Degenerate outputs: reports flagged / reports")


def classes_html(data: DashboardData) -> str:
    """The per-class breakdown (classes of the reference box labels; CheXpert classes when computed)."""
    table = class_table(data.summary)
    if not table[1]:
        return "<p>No per-class values (no reference box labels of a known class).</p>"
    return html_table(table, data.series, "Per class: value [95% CI]")
