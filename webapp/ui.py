"""The Gradio Blocks app: the header and four tabs, each built by its panel module.

`webapp.panels.review` (study list, prompt context, viewer + findings + verdicts), `compare`
(contexts side by side), `upload` and `dashboard`. The panels share `AppServices` (server-side,
all tabs) and talk to each other only through the Review tab's navigation field: writing an
address into it opens that study (or upload, or stored report) in Review.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from webapp.panels import compare, dashboard, review, upload
from webapp.panels.components import STATIC
from webapp.services import AppServices

DEMO_NOTICE = "Demo model — trained on synthetic phantoms, not for clinical or research conclusions"
DISCLAIMER = "Research use only. Not for clinical use: outputs are not medical advice and must not guide patient care."


def build_app(services: AppServices) -> gr.Blocks:
    """Build the Blocks app (call `.launch(...)` on it; see app.py for launch settings)."""
    info = services.backend.info
    with gr.Blocks(title="CXR grounding review", analytics_enabled=False) as demo:
        with gr.Row(elem_id="app-head"):
            gr.HTML(
                f"<div class='app-title'><b>CXR grounding review</b> · model <code>{html.escape(info.label)}</code>"
                f" (weights {html.escape(info.weights_hash or 'unknown')}, {html.escape(info.name)},"
                f" {html.escape(info.device)}) · dataset <code>{html.escape(services.dataset.name)}</code>"
                f" ({len(services.study_ids)} studies)</div>"
                f"<div class='disclaimer'>{html.escape(DISCLAIMER)}"
                + (f" <span class='demo'>{DEMO_NOTICE}</span>" if info.is_demo else "")
                + "</div>",
                elem_id="app-title",
            )
        if services.dataset.errors:
            skipped = "; ".join(str(e) for e in services.dataset.errors[:5])
            gr.HTML(
                f"<div class='error-box'>{len(services.dataset.errors)} manifest rows were skipped: "
                f"{html.escape(skipped)}</div>"
            )
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Review", id="review"):
                review_panel = review.build(services, demo, tabs)
            with gr.Tab("Compare contexts", id="compare") as compare_tab:
                compare.build(services, review_panel, compare_tab)
            with gr.Tab("Upload study", id="upload"):
                upload.build(services, review_panel, tabs)
            with gr.Tab("Dashboard", id="dashboard"):
                dashboard.build(services, review_panel, tabs, demo)
    return demo


def launch_settings() -> dict[str, Any]:
    """Launch keyword arguments shared by app.py and tests: static assets, privacy defaults."""
    return {
        "css_paths": [STATIC / "app.css", STATIC / "workstation.css"],
        "head": f"<script>{(STATIC / 'app.js').read_text()}</script>",
        "enable_monitoring": False,
        "show_error": False,
        "footer_links": ["gradio"],
    }
