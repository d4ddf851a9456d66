"""The Dashboard tab: metrics of a batch results file per context, with 95% CIs and context differences.

A row of the per-study table or a point of the distributions opens that study in Review with that
(task, context)'s batch report, imported into the report store at start-up, so no model call; the
page scrolls to the viewer. The flag filter narrows the figures and the per-study table to reports
with a degenerate-output flag; the summary tables always cover every report.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any
from urllib.parse import urlencode

import gradio as gr

from webapp.dashboard import (
    TABLE_COLUMNS,
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

NO_RESULTS = (
    "<p>No results file. Run <code>python -m model_backend.batch ...</code> and start the app with "
    "<code>--results FILE</code>.</p>"
)
# Bring the Review tab's viewer into view once the Review tab is shown (the dashboard may be scrolled far down).
SCROLL_TO_VIEWER = """() => {
  requestAnimationFrame(() => {
    const viewer = document.querySelector('#workstation');
    if (viewer) viewer.scrollIntoView({ block: 'start' });
  });
}"""
WIDTHS = ["12%", "10%", "8%", "9%", "8%", "8%", "8%", "10%", "10%", "8%", "9%"]  # TABLE_COLUMNS
STYLE = """<style>
#dashboard-tab .dash-table { border-collapse: collapse; font-size: 13px; margin: 0 0 12px; }
#dashboard-tab .dash-caption { font-weight: 600; margin: 8px 0 2px; }
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
        status = gr.HTML(elem_id="dash-status")  # STYLE comes with it
        summary = gr.HTML(elem_id="dash-summary", elem_classes=["dash-scroll"])
        pairs = gr.HTML(elem_id="dash-pairs", elem_classes=["dash-scroll"])
        flag_counts = gr.HTML(elem_id="dash-flags", elem_classes=["dash-scroll"])
        flag_filter = gr.CheckboxGroup(
            label="Show only reports flagged as (figures and per-study table)", elem_id="dash-flag-filter"
        )
        shown = gr.HTML(elem_id="dash-shown")
        dist = gr.Plot(label="Metric distributions (click a point to open its report in Review)", elem_id="dash-dist")
        heat = gr.Plot(label="Box centres in the model frame (the square crop the model sees)", elem_id="dash-heat")
        counts = gr.Plot(label="Findings per report", elem_id="dash-counts")
        gr.Markdown("Click a row to open that study in Review with this context's batch report. Headers sort.")
        table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="dash-table", column_widths=WIDTHS)
        with gr.Accordion("Per class", open=False, elem_id="dash-classes-box"):
            classes = gr.HTML(elem_id="dash-classes", elem_classes=["dash-scroll"])
        # app.js writes {"point": [study id, context name, task], "at": click time} here on a click on a point
        pick = gr.Textbox(elem_id="dash-pick", container=False, elem_classes=["hidden-field"])

    def filtered(flags: list[str]) -> tuple[Any, ...]:
        if services.results_path is None:
            return (gr.update(),) * 5
        loaded = dashboard_for(services.results_path, services.dataset)
        rows = filter_rows(loaded.rows, flags)
        note = f"Showing {len(rows)} of {len(loaded.rows)} reports"
        note += f" flagged {', '.join(flags)}." if flags else "."
        return (
            html.escape(note),
            distributions_figure(loaded, rows),
            heatmap_figure(loaded, rows),
            findings_figure(loaded, rows),
            study_table(loaded, rows),
        )

    def nothing(message: str) -> tuple[Any, ...]:
        return (STYLE + message, "", "", "", gr.CheckboxGroup(choices=[]), "", None, None, None, [], "")

    def show() -> tuple[Any, ...]:
        path = services.results_path
        if path is None:
            return nothing(NO_RESULTS)
        try:
            loaded = dashboard_for(path, services.dataset)
        except (OSError, ValueError) as err:
            message = html.escape(f"Cannot read the results file {path.name}: {err}")
            return nothing(f"<p class='error-box'>{message}</p>")
        n_studies = len({r["study_id"] for r in loaded.rows})
        head = STYLE + (
            f"<p><b>{html.escape(path.name)}</b>: {len(loaded.rows)} reports of {n_studies} studies, "
            f"{len(loaded.series)} contexts. The summary tables cover every report; the flag filter narrows the "
            "figures and the per-study table.</p>"
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
        params = {"study": study_id}
        stored = services.reports.find_batch_report(services.dataset.name, study_id, context_name, task)
        if stored is not None:
            params["report"] = stored.report_id
        return nav_value(urlencode(params), push=True, nonce=str(time.monotonic_ns())), gr.Tabs(selected="review")

    def from_table(event: gr.SelectData) -> tuple[Any, ...]:
        row = [str(v) for v in event.row_value or []]
        if len(row) < 3:
            return gr.update(), gr.update()
        return open_in_review(row[0], row[1], row[2])

    def from_plot(value: str) -> tuple[Any, ...]:
        try:
            study_id, context_name, task = json.loads(value)["point"]
        except (ValueError, TypeError, KeyError):
            return gr.update(), gr.update()
        return open_in_review(str(study_id), str(context_name), str(task))

    outputs = [status, summary, pairs, flag_counts, flag_filter, shown, dist, heat, counts, table, classes]
    demo.load(show, None, outputs)
    flag_filter.change(filtered, flag_filter, [shown, dist, heat, counts, table])
    table.select(from_table, None, [review.nav_target, tabs]).then(None, js=SCROLL_TO_VIEWER)
    pick.change(from_plot, pick, [review.nav_target, tabs]).then(None, js=SCROLL_TO_VIEWER)
