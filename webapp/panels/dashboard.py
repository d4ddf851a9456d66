"""The Dashboard tab: metrics of a batch results file; a study's row or point opens it in Review with
that context's batch report (imported into the report store at start-up, so no model call)."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from webapp.dashboard import (
    TABLE_COLUMNS,
    distributions_figure,
    findings_count_figure,
    heatmap_figure,
    load_dashboard,
    metrics_table,
    summary_markdown,
)
from webapp.panels.review import ReviewPanel
from webapp.services import AppServices
from webapp.state import nav_value


def build(services: AppServices, review: ReviewPanel, tabs: gr.Tabs, demo: gr.Blocks) -> None:
    """Lay out the Dashboard tab and wire it to the Review tab (call inside its `gr.Tab`)."""
    summary = gr.Markdown()
    with gr.Row():
        dist = gr.Plot(label="Metric distributions (click a point to open its study)", elem_id="dash-dist")
        heat = gr.Plot(label="Box positions")
    counts = gr.Plot(label="Findings per study")
    gr.Markdown("Click a row to open that study in Review with this context's batch report. Columns sort by header.")
    table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="dash-table")
    pick = gr.Textbox(elem_id="dash-pick", container=False, elem_classes=["hidden-field"])  # app.js sets it

    def show() -> tuple[Any, ...]:
        if services.results_path is None or services.dataset.manifest_path is None:
            message = (
                "No results file. Run `python -m model_backend.batch ...` and start the app with `--results FILE`."
            )
            return message, None, None, None, []
        try:
            data = load_dashboard(services.results_path, services.dataset.manifest_path)
        except (OSError, ValueError) as err:
            return f"Cannot read the results file {services.results_path.name}: {err}", None, None, None, []
        return (
            summary_markdown(data),
            distributions_figure(data),
            heatmap_figure(data),
            findings_count_figure(data),
            metrics_table(data),
        )

    def open_in_review(study_id: str, context_name: str | None) -> tuple[Any, ...]:
        if study_id not in services.dataset:
            return gr.update(), gr.update()
        query = f"study={study_id}"
        stored = (
            services.reports.find_batch_report(services.dataset.name, study_id, context_name) if context_name else None
        )
        if stored is not None:
            query += f"&report={stored.report_id}"
        return nav_value(query, push=True, nonce=str(time.monotonic_ns())), gr.Tabs(selected="review")

    def from_table(event: gr.SelectData) -> tuple[Any, ...]:
        row = event.row_value or []
        return open_in_review(str(row[0]) if row else "", str(row[1]) if len(row) > 1 else None)

    def from_plot(value: str) -> tuple[Any, ...]:
        study_id, _, context_name = (value or "").partition("|")
        return open_in_review(study_id, context_name or None)

    demo.load(show, None, [summary, dist, heat, counts, table])
    table.select(from_table, None, [review.nav_target, tabs])
    pick.change(from_plot, pick, [review.nav_target, tabs])
