"""The Dashboard tab: metrics of a batch results file per context, with 95% CIs and context differences.

A row of the per-study table or a point of the distributions opens that study in Review with that
(task, context)'s batch report, imported into the report store at start-up, so no model call; the
page scrolls to the viewer. The flag filter narrows the figures and the per-study table to reports
with a degenerate-output flag; the summary tables always cover every report.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from webapp.dashboard import (
    TABLE_COLUMNS,
    DashboardData,
    classes_html,
    dashboard_for,
    distributions_figure,
    filter_rows,
    findings_figure,
    flag_choices,
    flags_html,
    heatmap_figure,
    pairs_html,
    study_table,
    summary_html,
)
from webapp.panels.review import ReviewPanel
from webapp.services import AppServices
from webapp.state import nav_value

# Bring the Review tab's viewer into view once the Review tab is shown (the dashboard may be scrolled far down).
SCROLL_TO_VIEWER = """() => {
  requestAnimationFrame(() => {
    const viewer = document.querySelector('#workstation');
    if (viewer) viewer.scrollIntoView({ block: 'start' });
  });
}"""
WIDTHS = ["12%", "10%", "8%", "9%", "8%", "8%", "8%", "10%", "10%", "8%", "9%"]  # TABLE_COLUMNS
STYLE = """<style>
#dashboard-tab .dash-table { border-collapse: collapse; font-size: 13px; margin: 4px 0 12px; }
#dashboard-tab .dash-table caption { text-align: left; font-weight: 600; padding: 4px 0; }
#dashboard-tab .dash-table th, #dashboard-tab .dash-table td { border-bottom: 1px solid #ddd; padding: 3px 10px;
  text-align: left; white-space: nowrap; font-variant-numeric: tabular-nums; }
#dashboard-tab .dash-table td.na { color: #888; }
#dashboard-tab .dash-swatch { display: inline-block; width: 11px; height: 11px; margin-right: 5px;
  vertical-align: -1px; border-radius: 2px; }
#dashboard-tab .dash-scroll { overflow-x: auto; }
</style>"""


def build(services: AppServices, review: ReviewPanel, tabs: gr.Tabs, demo: gr.Blocks) -> None:
    """Lay out the Dashboard tab and wire it to the Review tab (call inside its `gr.Tab`)."""
    with gr.Column(elem_id="dashboard-tab"):
        gr.HTML(STYLE, padding=False)
        status = gr.Markdown(elem_id="dash-status")
        summary = gr.HTML(elem_id="dash-summary", elem_classes=["dash-scroll"])
        pairs = gr.HTML(elem_id="dash-pairs", elem_classes=["dash-scroll"])
        flag_counts = gr.HTML(elem_id="dash-flags", elem_classes=["dash-scroll"])
        flag_filter = gr.CheckboxGroup(
            label="Show only reports flagged as (figures and per-study table)", elem_id="dash-flag-filter"
        )
        shown = gr.Markdown(elem_id="dash-shown")
        dist = gr.Plot(label="Metric distributions (click a point to open its report in Review)", elem_id="dash-dist")
        heat = gr.Plot(label="Box centres in the model frame (the square crop the model sees)", elem_id="dash-heat")
        counts = gr.Plot(label="Findings per report", elem_id="dash-counts")
        gr.Markdown("Click a row to open that study in Review with this context's batch report. Headers sort.")
        table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="dash-table", column_widths=WIDTHS)
        with gr.Accordion("Per class", open=False, elem_id="dash-classes-box"):
            classes = gr.HTML(elem_id="dash-classes", elem_classes=["dash-scroll"])
        pick = gr.Textbox(elem_id="dash-pick", container=False, elem_classes=["hidden-field"])  # app.js sets it

    def data() -> DashboardData:
        if services.results_path is None:
            raise FileNotFoundError(
                "No results file. Run `python -m model_backend.batch ...` and start the app with `--results FILE`."
            )
        return dashboard_for(services.results_path, services.dataset)

    def filtered(flags: list[str]) -> tuple[Any, ...]:
        loaded = data()
        rows = filter_rows(loaded.rows, flags)
        note = f"Showing {len(rows)} of {len(loaded.rows)} reports"
        note += f" flagged {', '.join(flags)}." if flags else "."
        return (
            note,
            distributions_figure(loaded, rows),
            heatmap_figure(loaded, rows),
            findings_figure(loaded, rows),
            study_table(loaded, rows),
        )

    def show() -> tuple[Any, ...]:
        try:
            loaded = data()
        except (OSError, ValueError) as err:
            name = services.results_path.name if services.results_path else ""
            message = str(err) if isinstance(err, FileNotFoundError) else f"Cannot read the results file {name}: {err}"
            return (message, "", "", "", gr.CheckboxGroup(choices=[]), "", None, None, None, [], "")
        n_studies = len({r["study_id"] for r in loaded.rows})
        head = (
            f"**{services.results_path.name}**: {len(loaded.rows)} reports of {n_studies} studies, "
            f"{len(loaded.series)} contexts. Summary tables cover every report; the flag filter narrows the figures "
            "and the per-study table."
        )
        return (
            head,
            summary_html(loaded),
            pairs_html(loaded),
            flags_html(loaded),
            gr.CheckboxGroup(choices=flag_choices(loaded), value=[]),
            *filtered([]),
            classes_html(loaded),
        )

    def open_in_review(study_id: str, context_name: str, task: str) -> tuple[Any, ...]:
        if study_id not in services.dataset:
            return gr.update(), gr.update()
        query = f"study={study_id}"
        stored = services.reports.find_batch_report(services.dataset.name, study_id, context_name, task)
        if stored is not None:
            query += f"&report={stored.report_id}"
        return nav_value(query, push=True, nonce=str(time.monotonic_ns())), gr.Tabs(selected="review")

    def from_table(event: gr.SelectData) -> tuple[Any, ...]:
        row = [str(v) for v in event.row_value or []]
        if len(row) < 3:
            return gr.update(), gr.update()
        return open_in_review(row[0], row[1], row[2])

    def from_plot(value: str) -> tuple[Any, ...]:
        parts = (value or "").split("|")
        if len(parts) != 3:
            return gr.update(), gr.update()
        return open_in_review(*parts)

    outputs = [status, summary, pairs, flag_counts, flag_filter, shown, dist, heat, counts, table, classes]
    demo.load(show, None, outputs)
    flag_filter.change(filtered, flag_filter, [shown, dist, heat, counts, table])
    table.select(from_table, None, [review.nav_target, tabs]).then(None, js=SCROLL_TO_VIEWER)
    pick.change(from_plot, pick, [review.nav_target, tabs]).then(None, js=SCROLL_TO_VIEWER)
