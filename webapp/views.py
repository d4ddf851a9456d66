"""What the page shows, as pure functions of the session state: figure, findings panel, info lines.

No Gradio here: the UI module wires these to components. Everything a person reads that came
from a model, a manifest or an upload is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import plotly.graph_objects as go

from model_backend.types import Report, Study
from webapp.compare import align_findings, alignment_headers, alignment_table
from webapp.viewer import (
    FindingLayer,
    build_figure,
    layers_from_report,
    reference_layers,
    render_base,
    with_visibility,
)

DEMO_NOTICE = "Demo model — trained on synthetic phantoms, not for clinical or research conclusions"
DISCLAIMER = "Research use only. Not for clinical use: outputs are not medical advice and must not guide patient care."


@dataclass
class ViewOptions:
    """Display settings that change the picture without calling the model."""

    window: tuple[float, float] | None = None
    invert: bool = False
    opacity: float = 0.15
    line_width: float = 2.0
    show_reference: bool = True
    hidden: set[str] = field(default_factory=set)
    highlight: str | None = None


def finding_layers(reports: Sequence[Report]) -> list[FindingLayer]:
    """Layers of several reports (one dash style per context; labels name the context when several)."""
    layers: list[FindingLayer] = []
    for index, report in enumerate(reports):
        for layer in layers_from_report(report, context_index=index):
            layers.append(replace(layer, label=f"{report.context.name} {layer.label}") if len(reports) > 1 else layer)
    return layers


def study_figure(study: Study, reports: Sequence[Report], options: ViewOptions, height: int = 720) -> go.Figure:
    """The frontal image (downscaled, windowed) with every visible finding's image-frame boxes."""
    layers = finding_layers(reports)
    if options.show_reference:
        layers += reference_layers(study.reference_boxes)
    rendered = render_base(study.frontal, options.window, options.invert)
    figure = build_figure(
        rendered,
        study.frontal.width,
        study.frontal.height,
        with_visibility(layers, options.hidden),
        opacity=options.opacity,
        line_width=options.line_width,
        highlight=options.highlight,
    )
    figure.update_layout(height=height)
    return figure


def findings_html(report: Report | None, *, streaming: bool = False) -> str:
    """Numbered sentences in their box colours; ungrounded ones marked; warnings listed."""
    if report is None:
        return "<p class='muted'>No report yet. Press <b>Generate</b>.</p>"
    layers = layers_from_report(report)
    items = []
    for finding, layer in zip(report.findings, layers, strict=True):
        n_boxes = len(finding.model_boxes or ())
        badge = (
            f"<span class='badge'>{n_boxes} box{'es' if n_boxes != 1 else ''}</span>"
            if n_boxes
            else "<span class='badge ungrounded'>ungrounded</span>"
        )
        items.append(f"<li style='--c:{layer.colour}'>{html.escape(finding.text) or '<i>(empty)</i>'} {badge}</li>")
    body = f"<ol class='findings'>{''.join(items)}</ol>" if items else "<p class='muted'>No findings.</p>"
    status = ""
    if streaming:
        status = "<p class='muted'>generating…</p>"
    elif not report.complete:
        status = "<p class='warn'>Output incomplete or malformed — see warnings below.</p>"
    demo = f"<p class='demo'>{DEMO_NOTICE}</p>" if report.backend.is_demo else ""
    return demo + body + status


def report_details(report: Report | None) -> str:
    """Raw output, warnings, backend, model id, device and timings (markdown-safe plain text)."""
    if report is None:
        return ""
    timings = ", ".join(f"{k} {v:g}" for k, v in report.timings)
    warnings = "\n".join(f"- {w}" for w in report.warnings) or "- none"
    info = report.backend
    return (
        f"backend: {info.name} | model: {info.model_id} | device: {info.device} ({info.dtype}) | {timings}\n"
        f"report id: {report.report_id} | task: {report.task} | complete: {report.complete}\n"
        f"warnings:\n{warnings}\n\nraw output:\n{report.raw_text}"
    )


def toggle_choices(report: Report | None) -> list[tuple[str, str]]:
    """(label, key) pairs for the per-finding visibility checkboxes."""
    if report is None:
        return []
    return [(layer.label[:90], layer.key) for layer in layers_from_report(report)]


def study_header(study: Study, n_total: int, position: int | None) -> str:
    views = ["frontal"] + (["lateral"] if study.lateral else []) + (["prior"] if study.prior_frontal else [])
    where = f"{position + 1} / {n_total} · " if position is not None else ""
    size = f"{study.frontal.width}×{study.frontal.height} {study.frontal.source_format}"
    credit = f"<div class='credit'>{html.escape(study.attribution)}</div>" if study.attribution else ""
    return (
        f"<div class='study-head'><b>{html.escape(study.study_id)}</b> · {where}{size}, {study.frontal.bits_stored}-bit"
        f" · views: {', '.join(views)} · reference boxes: {len(study.reference_boxes)}{credit}</div>"
    )


def comparison_table(reports: Sequence[Report]) -> tuple[list[str], list[list[str]]]:
    rows = align_findings(reports)
    return alignment_headers(reports), alignment_table(rows, reports)


def comparison_columns_html(reports: Sequence[Report]) -> str:
    """Findings of each context in its own column, rows aligned, unique findings highlighted."""
    rows = align_findings(reports)
    head = "".join(f"<th>{html.escape(r.context.name)}</th>" for r in reports)
    body = []
    for row in rows:
        cells = []
        for report, cell in zip(reports, row.cells, strict=True):
            if cell is None:
                cells.append("<td class='missing'>—</td>")
                continue
            finding = report.findings[cell]
            grounded = "" if finding.model_boxes else " <span class='badge ungrounded'>ungrounded</span>"
            cells.append(f"<td>{cell + 1}. {html.escape(finding.text)}{grounded}</td>")
        body.append(f"<tr class='{row.status}'>{''.join(cells)}</tr>")
    return f"<table class='compare'><tr>{head}</tr>{''.join(body)}</table>"
