"""The Gradio Blocks app: study browser, viewer, findings, phrase grounding, comparison, upload, reviews.

Only wiring lives here; what is shown is computed in `webapp.views`, pictures in
`webapp.viewer`. Model calls go through the `Backend` protocol; every callback turns errors
into a message on the page, so the server keeps serving.
"""

from __future__ import annotations

import html
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from model_backend.backends.base import Backend, BackendError
from model_backend.datasets import Dataset
from model_backend.images import ImageLoadError, load_image_bytes
from model_backend.types import PromptContext, Report, Study
from webapp.dashboard import (
    TABLE_COLUMNS,
    distributions_figure,
    findings_count_figure,
    heatmap_figure,
    load_dashboard,
    metrics_table,
    summary_markdown,
)
from webapp.prefetch import Prefetcher
from webapp.reviews import BOX_VERDICTS, SIGNIFICANCES, TEXT_VERDICTS, FindingVerdict, ReportVerdict, ReviewStore
from webapp.viewer import crop_outline_image
from webapp.views import (
    DEMO_NOTICE,
    DISCLAIMER,
    ViewOptions,
    comparison_columns_html,
    comparison_table,
    findings_html,
    report_details,
    study_figure,
    study_header,
    toggle_choices,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "assets" / "static"
CONTEXT_NAMES = ("A", "B", "C", "D")
URL_JS = (
    "(s, l, p, g) => { const u = new URL(window.location); if (s) u.searchParams.set('study', s);"
    " u.searchParams.set('lateral', l ? '1' : '0'); u.searchParams.set('prior', p ? '1' : '0');"
    " u.searchParams.set('grounded', g ? '1' : '0'); window.history.replaceState(null, '', u); }"
)
HELP = """
**Keyboard** (when not typing in a field): <kbd>←</kbd>/<kbd>→</kbd> previous/next study ·
<kbd>1</kbd>–<kbd>9</kbd> toggle finding N · <kbd>a</kbd> all boxes · <kbd>n</kbd> no boxes ·
<kbd>c</kbd> mark correct · <kbd>x</kbd> mark false finding · <kbd>Enter</kbd> save verdict and next finding ·
<kbd>?</kbd> this help.

**Frames**: boxes are generated on the model's square centre crop and drawn on the full image after one
conversion (`model_backend.boxes.model_to_image_box`). Reference (radiologist) boxes are white dotted.

**Links**: the address bar always holds `?study=…` (and the context switches); copy it to reopen this view.
"""


@dataclass
class AppContext:
    """Server-side singletons shared by all sessions."""

    backend: Backend
    dataset: Dataset
    reviews: ReviewStore
    auth_enabled: bool = False
    results_path: Path | None = None  # batch results JSONL for the dashboard
    manifest_path: Path | None = None


@dataclass
class Session:
    """Per-browser-tab state: the open study, its current report and display options."""

    study_id: str | None = None
    upload: Study | None = None
    report: Report | None = None
    compare_reports: tuple[Report, ...] = ()
    options: ViewOptions | None = None

    def view(self) -> ViewOptions:
        if self.options is None:
            self.options = ViewOptions()
        return self.options


def _error_html(message: str) -> str:
    return f"<div class='error-box'>{html.escape(message)}</div>"


def _context_from(
    name: str,
    indication: str,
    technique: str,
    comparison: str,
    prior_report: str,
    lateral: bool,
    prior: bool,
    grounded: bool,
) -> PromptContext:
    return PromptContext(
        name=name,
        indication=indication or None,
        technique=technique or None,
        comparison=comparison or None,
        prior_report=prior_report or None,
        use_lateral=lateral,
        use_prior=prior,
        grounded=grounded,
    )


def build_app(ctx: AppContext) -> gr.Blocks:
    """Build the Blocks app (call `.launch(...)` on it; see app.py for launch settings)."""
    dataset, backend, reviews = ctx.dataset, ctx.backend, ctx.reviews
    prefetcher = Prefetcher(backend)
    study_ids = [e.study_id for e in dataset.entries]

    def current_study(session: Session) -> Study:
        if session.upload is not None:
            return session.upload
        if session.study_id is None:
            raise gr.Error("open a study first")
        return dataset.load_study(session.study_id)

    def position(session: Session) -> int | None:
        return study_ids.index(session.study_id) if session.upload is None and session.study_id in study_ids else None

    # ---------------------------------------------------------------- rendering
    def render(session: Session) -> tuple[Any, ...]:
        """Figure, header, findings, details, toggles for the session's study and report."""
        try:
            study = current_study(session)
        except (ImageLoadError, BackendError, ValueError) as err:
            return None, _error_html(f"cannot open study: {err}"), "", "", gr.update(choices=[], value=[])
        reports = [session.report] if session.report else []
        figure = study_figure(study, reports, session.view())
        choices = toggle_choices(session.report)
        visible = [key for _, key in choices if key not in session.view().hidden]
        header = study_header(study, len(study_ids), position(session))
        return (
            figure,
            header,
            findings_html(session.report),
            report_details(session.report),
            gr.update(choices=choices, value=visible),
        )

    def context_fields(study: Study) -> list[Any]:
        c = study.context
        return [c.indication or "", c.technique or "", c.comparison or "", c.prior_report or ""]

    def open_study(study_id: str, session: Session) -> tuple[Any, ...]:
        session = Session(study_id=study_id, options=ViewOptions())
        try:
            study = dataset.load_study(study_id)
        except Exception as err:  # a bad manifest row must not take the page down
            log.warning("cannot open study %s: %s", study_id, type(err).__name__)
            return (
                session,
                None,
                _error_html(f"cannot open study {study_id}: {err}"),
                "",
                "",
                gr.update(choices=[], value=[]),
                "",
                "",
                "",
                "",
                "",
            )
        prefetcher.request(study)
        return (session, *render(session), *context_fields(study), progress_text(session))

    # ---------------------------------------------------------------- generation
    def generate(session: Session, *fields: Any):
        try:
            study = current_study(session)
            context = _context_from("A", *fields)
            session.view().hidden = set()
            session.view().highlight = None
            for partial in backend.stream(study, context):
                session.report = partial
                figure, _, _, details, toggles = render(session)
                yield session, figure, findings_html(partial, streaming=not partial.complete), details, toggles
            figure, _, findings, details, toggles = render(session)
            yield session, figure, findings, details, toggles
        except (BackendError, ImageLoadError, ValueError) as err:
            yield session, gr.update(), _error_html(f"generation failed: {err}"), "", gr.update()

    def ground(phrase: str, session: Session) -> tuple[Any, ...]:
        try:
            study = current_study(session)
            session.report = backend.ground_phrase(study, phrase)
            session.view().hidden = set()
            session.view().highlight = None
        except (BackendError, ImageLoadError, ValueError) as err:
            return session, gr.update(), _error_html(f"phrase grounding failed: {err}"), "", gr.update()
        figure, _, findings, details, toggles = render(session)
        return session, figure, findings, details, toggles

    def reground_choices(session: Session) -> Any:
        return gr.update(choices=[f.text for f in (session.report.findings if session.report else ())], value=None)

    # ---------------------------------------------------------------- display-only changes
    def set_visible(visible: list[str], session: Session) -> tuple[Any, ...]:
        keys = {key for _, key in toggle_choices(session.report)}
        session.view().hidden = keys - set(visible or [])
        return session, render(session)[0]

    def show_all(session: Session) -> tuple[Any, ...]:
        session.view().hidden = set()
        return session, *render(session)[::4]

    def show_none(session: Session) -> tuple[Any, ...]:
        session.view().hidden = {key for _, key in toggle_choices(session.report)}
        return session, *render(session)[::4]

    def set_focus(focus: str | None, session: Session) -> tuple[Any, ...]:
        session.view().highlight = focus or None
        return session, render(session)[0]

    def set_display(
        centre: float,
        width: float,
        use_window: bool,
        invert: bool,
        opacity: float,
        line_width: float,
        show_reference: bool,
        session: Session,
    ) -> tuple[Any, ...]:
        options = session.view()
        options.window = (float(centre), max(1.0, float(width))) if use_window else None
        options.invert, options.opacity, options.line_width = bool(invert), float(opacity), float(line_width)
        options.show_reference = bool(show_reference)
        return session, render(session)[0]

    def window_defaults(session: Session) -> tuple[Any, ...]:
        try:
            study = current_study(session)
        except (gr.Error, ImageLoadError, ValueError):
            return gr.update(), gr.update()
        lo, hi = float(study.frontal.pixels.min()), float(study.frontal.pixels.max())
        centre, width = study.frontal.default_window or ((lo + hi) / 2, hi - lo + 1)
        return (gr.update(minimum=lo, maximum=hi, value=centre), gr.update(minimum=1, maximum=hi - lo + 1, value=width))

    # ---------------------------------------------------------------- navigation
    def step(session: Session, delta: int) -> str:
        index = position(session)
        index = 0 if index is None else (index + delta) % len(study_ids)
        return study_ids[index]

    def filter_list(query: str, unreviewed_only: bool, name: str, request: gr.Request) -> Any:
        matches = [e.study_id for e in dataset.search(query or "")]
        reviewer = reviewer_name(name, request)
        if unreviewed_only and reviewer:
            done = reviews.reviewed_study_ids(dataset.name, reviewer)
            matches = [m for m in matches if m not in done]
        if not matches:
            gr.Info("no study matches; showing all studies")
        return gr.update(choices=matches or study_ids)

    def progress_text(session: Session, reviewer: str = "") -> str:
        if not reviewer:
            return ""
        done, total = reviews.progress(dataset.name, reviewer, study_ids)
        return f"{reviewer}: {done} / {total} studies reviewed"

    def next_unreviewed(session: Session, reviewer: str) -> Any:
        if not reviewer:
            raise gr.Error("enter your reviewer name first")
        target = reviews.next_unreviewed(dataset.name, reviewer, study_ids, session.study_id)
        if target is None:
            gr.Info("every study has a verdict from you")
            return gr.update()
        return target

    # ---------------------------------------------------------------- deep links
    def from_url(request: gr.Request) -> tuple[Any, ...]:
        params = dict(request.query_params) if request else {}
        study_id = params.get("study")
        if study_id not in study_ids:
            if study_id:
                gr.Warning(f"study {html.escape(repr(study_id[:100]))} is not in this dataset; opened the first study")
            study_id = study_ids[0] if study_ids else None
        flag = lambda name: params.get(name, "1") != "0"  # noqa: E731
        tab = params.get("view") if params.get("view") in ("compare", "dashboard", "upload") else "review"
        return study_id, flag("lateral"), flag("prior"), flag("grounded"), gr.Tabs(selected=tab)

    # ---------------------------------------------------------------- upload
    def read_upload(path: str | None, required: bool, label: str) -> tuple[Any, str]:
        if not path:
            if required:
                raise ImageLoadError("missing", f"The {label} image is required.")
            return None, ""
        data = Path(path).read_bytes()
        return load_image_bytes(data, name=Path(path).name), ""

    def preview(path: str | None) -> Any:
        if not path:
            return None
        try:
            return crop_outline_image(load_image_bytes(Path(path).read_bytes(), name=Path(path).name))
        except ImageLoadError as err:
            gr.Warning(html.escape(str(err)))
            return None

    def open_upload(frontal, lateral, prior, indication, technique, comparison, prior_report, session: Session):
        try:
            front, _ = read_upload(frontal, True, "frontal")
            lat, _ = read_upload(lateral, False, "lateral")
            pri, _ = read_upload(prior, False, "prior frontal")
        except ImageLoadError as err:
            return session, _error_html(f"upload rejected: {err}"), gr.update(), gr.update()
        context = _context_from("A", indication, technique, comparison, prior_report, True, True, True)
        study = Study(
            study_id=f"upload-{front.content_key[:8]}", frontal=front, lateral=lat, prior_frontal=pri, context=context
        )
        session = Session(upload=study, options=ViewOptions())
        prefetcher.request(study)
        opened = "<p>Opened the uploaded study in the Review tab.</p>"
        return session, opened, gr.Tabs(selected="review"), gr.update(value=None)  # no dataset study is open

    def after_upload(session: Session) -> tuple[Any, ...]:
        if session.upload is None:
            return (gr.update(),) * 9
        return (*render(session), *context_fields(session.upload))

    # ---------------------------------------------------------------- comparison
    def compare_defaults(session: Session) -> list[Any]:
        """Every comparison context starts from the study's own sections."""
        try:
            fields = context_fields(current_study(session))
        except (gr.Error, ImageLoadError, ValueError):
            fields = [""] * 4
        return fields * len(CONTEXT_NAMES)

    def compare_error(session: Session, message: str) -> tuple[Any, ...]:
        hidden = [gr.update(value=None, visible=False)] * len(CONTEXT_NAMES)
        return session, None, _error_html(message), gr.update(value=[]), *hidden

    def run_compare(session: Session, *values: Any):
        contexts = []
        for i, name in enumerate(CONTEXT_NAMES):
            enabled, *fields = values[i * 8 : (i + 1) * 8]
            if enabled:
                contexts.append(_context_from(name, *fields))
        if len(contexts) < 2:
            return compare_error(session, "enable at least two contexts")
        try:
            study = current_study(session)
            reports = backend.generate(study, contexts)
        except (BackendError, ImageLoadError, ValueError, gr.Error) as err:
            return compare_error(session, f"comparison failed: {err}")
        session.compare_reports = tuple(reports)
        options = replace(session.view(), hidden=set(), highlight=None)
        combined = study_figure(study, reports, options)
        # narrow columns: a shorter figure keeps the picture square above its legend (no black bands)
        per_context = [
            gr.update(
                value=study_figure(study, [r], options, height=480), visible=True, label=f"Context {r.context.name}"
            )
            for r in reports
        ]
        per_context += [gr.update(value=None, visible=False)] * (len(CONTEXT_NAMES) - len(reports))
        headers, rows = comparison_table(reports)
        timing = " · ".join(f"{r.context.name}: {len(r.findings)} findings" for r in reports)
        demo = f"<p class='demo'>{DEMO_NOTICE}</p>" if backend.info.is_demo else ""
        table = gr.update(value=rows, headers=headers)
        return (
            session,
            combined,
            demo + comparison_columns_html(reports) + f"<p class='muted'>{timing}</p>",
            table,
            *per_context,
        )

    # ---------------------------------------------------------------- reviews
    def reviewer_name(name: str, request: gr.Request) -> str:
        if ctx.auth_enabled and request is not None and request.username:
            return request.username
        return (name or "").strip()

    def finding_choices(session: Session) -> Any:
        report = session.report
        choices = [(f"{i + 1}. {f.text[:80]}", i) for i, f in enumerate(report.findings)] if report else []
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def load_verdict(index: int | None, name: str, session: Session, request: gr.Request) -> tuple[Any, ...]:
        reviewer = reviewer_name(name, request)
        blank = (None, None, None, "")
        if session.report is None or index is None or not reviewer:
            return blank
        study = current_study(session)
        saved = reviews.finding_verdicts(dataset.name, study.study_id, session.report.report_id, reviewer)
        verdict = saved.get(int(index))
        if verdict is None:
            return blank
        return verdict.text_verdict, verdict.significance, verdict.box_verdict, verdict.comment

    def save_verdict(index, text_v, significance, box_v, comment, name, session: Session, request: gr.Request):
        reviewer = reviewer_name(name, request)
        if not reviewer:
            return gr.update(), _error_html("enter your reviewer name (top left) before saving"), gr.update()
        if session.report is None or index is None:
            return gr.update(), _error_html("generate a report and pick a finding first"), gr.update()
        try:
            study = current_study(session)
            significance = significance if text_v not in (None, "correct") else None
            verdict = FindingVerdict.for_finding(
                session.report,
                int(index),
                text_verdict=text_v,
                significance=significance,
                box_verdict=box_v,
                comment=comment or "",
            )
            reviews.save_finding_verdict(
                reviewer, dataset.name, study.study_id, session.report.report_id, int(index), verdict
            )
        except ValueError as err:
            return gr.update(), _error_html(f"not saved: {err}"), gr.update()
        n = len(session.report.findings)
        next_index = (int(index) + 1) % n if n else None
        return (
            gr.update(value=next_index),
            f"<p>Saved verdict on finding {int(index) + 1}.</p>",
            verdicts_table(session, name, request),
        )

    def verdicts_table(session: Session, name: str, request: gr.Request) -> Any:
        reviewer = reviewer_name(name, request)
        if session.report is None or not reviewer:
            return []
        study = current_study(session)
        saved = reviews.finding_verdicts(dataset.name, study.study_id, session.report.report_id, reviewer)
        rows = []
        for i, finding in enumerate(session.report.findings):
            v = saved.get(i)
            rows.append(
                [
                    i + 1,
                    finding.text,
                    v.text_verdict if v else "",
                    v.significance if v else "",
                    v.box_verdict if v else "",
                    v.comment if v else "",
                ]
            )
        return rows

    def save_report(omissions: str, rating, comment: str, name: str, session: Session, request: gr.Request):
        reviewer = reviewer_name(name, request)
        if not reviewer or session.report is None:
            return _error_html("enter your reviewer name and generate a report first")
        try:
            study = current_study(session)
            missed = [
                {"text": line.strip(), "significance": None} for line in (omissions or "").splitlines() if line.strip()
            ]
            verdict = ReportVerdict(omissions=missed, rating=int(rating) if rating else None, comment=comment or "")
            reviews.save_report_verdict(reviewer, dataset.name, study.study_id, session.report.report_id, verdict)
        except ValueError as err:
            return _error_html(f"not saved: {err}")
        return "<p>Saved report verdict.</p>"

    def export(fmt: str, name: str, request: gr.Request) -> Any:
        reviewer = reviewer_name(name, request) or None
        out = Path(tempfile.mkdtemp(prefix="cxr-export-")) / f"verdicts.{fmt}"
        count = reviews.export(out, fmt, dataset=dataset.name, reviewer=reviewer)
        gr.Info(f"exported {count} verdicts")
        return str(out)

    def agreement(session: Session) -> Any:
        if session.report is None:
            return []
        study = current_study(session)
        rows = []
        for row in reviews.agreement(dataset.name, study.study_id, session.report.report_id):
            verdicts = "; ".join(
                f"{name}: {v['text_verdict'] or '—'}/{v['box_verdict'] or '—'}" for name, v in row["reviewers"].items()
            )
            rows.append(
                [row["finding_index"] + 1, row["finding_text"], verdicts, str(row["text_agree"]), str(row["box_agree"])]
            )
        return rows

    # ---------------------------------------------------------------- dashboard
    def dashboard() -> tuple[Any, ...]:
        if ctx.results_path is None or ctx.manifest_path is None:
            message = (
                "No results file. Run `python -m model_backend.batch ...` and start the app with `--results FILE`."
            )
            return message, None, None, None, []
        try:
            data = load_dashboard(ctx.results_path, ctx.manifest_path)
        except (OSError, ValueError) as err:
            return f"Cannot read {ctx.results_path}: {err}", None, None, None, []
        return (
            summary_markdown(data),
            distributions_figure(data),
            heatmap_figure(data),
            findings_count_figure(data),
            metrics_table(data),
        )

    def open_picked(study_id: str) -> tuple[Any, ...]:
        if study_id not in study_ids:
            return gr.update(), gr.update()
        return study_id, gr.Tabs(selected="review")

    def open_from_table(event: gr.SelectData) -> tuple[Any, ...]:
        row = event.row_value or []
        study_id = row[0] if row else None
        if study_id not in study_ids:
            return gr.update(), gr.update()
        return study_id, gr.Tabs(selected="review")

    # ================================================================= layout
    with gr.Blocks(title="CXR grounding review", analytics_enabled=False) as demo:
        session = gr.State(Session())
        gr.HTML(f"<div class='disclaimer'><b>{html.escape(DISCLAIMER)}</b></div>")
        with gr.Row():
            gr.Markdown(
                f"### CXR grounding review · backend `{backend.info.name}` · model `{backend.info.label}` "
                f"(weights {backend.info.weights_hash or 'unknown'}) · "
                f"{backend.info.device} · dataset `{dataset.name}` ({len(study_ids)} studies)"
            )
            help_toggle = gr.Button("? Help", elem_id="help-toggle", size="sm", scale=0)
        if backend.info.is_demo:
            gr.HTML(f"<p class='demo'>{DEMO_NOTICE}</p>")
        help_panel = gr.Markdown(HELP, visible=False, elem_id="help-panel")
        if dataset.errors:
            gr.HTML(
                _error_html(
                    f"{len(dataset.errors)} manifest rows could not be read: "
                    + "; ".join(str(e) for e in dataset.errors[:5])
                )
            )
        with gr.Tabs() as tabs:
            with gr.Tab("Review", id="review"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=240):
                        reviewer = gr.Textbox(label="Reviewer", placeholder="your name", elem_id="reviewer")
                        reviewer_store = gr.BrowserState("", storage_key="cxr-reviewer")
                        search = gr.Textbox(label="Search studies", placeholder="id, finding, label… (Enter)")
                        unreviewed_only = gr.Checkbox(label="Only studies I have not reviewed", value=False)
                        study_list = gr.Dropdown(study_ids, label="Study", filterable=True, elem_id="study-list")
                        with gr.Row():
                            prev_btn = gr.Button("← Prev", elem_id="prev-study", size="sm")
                            next_btn = gr.Button("Next →", elem_id="next-study", size="sm")
                        unreviewed_btn = gr.Button("Next unreviewed", size="sm")
                        progress = gr.Markdown("")
                        with gr.Accordion("Display", open=False):
                            use_window = gr.Checkbox(label="Window/level", value=False)
                            centre = gr.Slider(0, 255, 128, label="Window centre")
                            width = gr.Slider(1, 256, 256, label="Window width")
                            invert = gr.Checkbox(label="Invert", value=False)
                            opacity = gr.Slider(0, 0.6, 0.15, step=0.05, label="Box fill opacity")
                            line_width = gr.Slider(0.5, 6, 2, step=0.5, label="Box line width")
                            show_reference = gr.Checkbox(label="Reference boxes", value=True)
                    with gr.Column(scale=3):
                        header = gr.HTML()
                        figure = gr.Plot(label="Frontal image", elem_id="viewer")
                    with gr.Column(scale=2, min_width=320):
                        with gr.Accordion("Prompt context", open=True):
                            indication = gr.Textbox(label="Indication", lines=1)
                            technique = gr.Textbox(label="Technique", lines=1)
                            comparison = gr.Textbox(label="Comparison", lines=1)
                            prior_report = gr.Textbox(label="Prior report", lines=2)
                            with gr.Row():
                                use_lateral = gr.Checkbox(label="Lateral", value=True)
                                use_prior = gr.Checkbox(label="Prior", value=True)
                                grounded = gr.Checkbox(label="Grounded", value=True)
                        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        findings = gr.HTML(findings_html(None), elem_id="findings")
                        toggles = gr.CheckboxGroup(label="Visible findings", elem_id="finding-toggles")
                        with gr.Row():
                            all_btn = gr.Button("All", size="sm", elem_id="show-all")
                            none_btn = gr.Button("None", size="sm", elem_id="show-none")
                        focus = gr.Dropdown(label="Isolate finding", choices=[], elem_id="focus")
                        with gr.Accordion("Phrase grounding", open=False):
                            phrase = gr.Textbox(
                                label="Finding to ground", placeholder="right pleural effusion", elem_id="phrase"
                            )
                            ground_btn = gr.Button("Ground phrase", elem_id="ground")
                            reground = gr.Dropdown(label="Re-ground a generated sentence", choices=[])
                        with gr.Accordion("Raw output, warnings, timings", open=False):
                            details = gr.Textbox(label="Details", lines=8, interactive=False, elem_id="details")
                with gr.Accordion("Review verdicts", open=True), gr.Row():
                    with gr.Column(scale=2):
                        finding_pick = gr.Dropdown(label="Finding", choices=[], elem_id="finding-pick")
                        text_verdict = gr.Radio(
                            list(TEXT_VERDICTS), label="Text verdict (c / x)", elem_id="text-verdict"
                        )
                        significance = gr.Radio(list(SIGNIFICANCES), label="Significance (errors only)")
                        box_verdict = gr.Radio(list(BOX_VERDICTS), label="Box verdict", elem_id="box-verdict")
                        comment = gr.Textbox(label="Comment", lines=2, elem_id="comment")
                        save_btn = gr.Button("Save and next finding (Enter)", elem_id="save-next")
                        review_msg = gr.HTML()
                    with gr.Column(scale=2):
                        verdicts = gr.Dataframe(
                            headers=["#", "finding", "text", "significance", "box", "comment"],
                            label="Your verdicts on this report",
                            interactive=False,
                            elem_id="verdicts",
                        )
                        omissions = gr.Textbox(label="Omissions (one missed finding per line)", lines=2)
                        rating = gr.Slider(0, 5, 0, step=1, label="Overall rating (0 = none)")
                        report_comment = gr.Textbox(label="Report comment", lines=1)
                        save_report_btn = gr.Button("Save report verdict")
                        with gr.Row():
                            export_fmt = gr.Radio(["csv", "jsonl"], value="csv", label="Export format")
                            export_btn = gr.Button("Export verdicts", elem_id="export")
                        export_file = gr.File(label="Export", elem_id="export-file")
                        agreement_btn = gr.Button("Agreement between reviewers", size="sm")
                        agreement_table = gr.Dataframe(
                            headers=["#", "finding", "verdicts", "text agree", "box agree"], interactive=False
                        )
            with gr.Tab("Compare contexts", id="compare"):
                gr.Markdown(
                    "Edit up to four prompt contexts; they run together in one backend call that shares "
                    "the image prefix. Rows align the same or similar sentence; unique findings are "
                    "highlighted. Line style per context: A solid, B dashed, C dotted, D dash-dot."
                )
                compare_inputs: list[Any] = []
                compare_sections: list[Any] = []  # the four text sections of each context, prefilled per study
                with gr.Row():
                    for i, name in enumerate(CONTEXT_NAMES):
                        with gr.Column(min_width=200):
                            enabled = gr.Checkbox(label=f"Context {name}", value=i < 2)
                            fields = [
                                gr.Textbox(label="Indication", lines=1),
                                gr.Textbox(label="Technique", lines=1),
                                gr.Textbox(label="Comparison", lines=1),
                                gr.Textbox(label="Prior report", lines=1),
                                gr.Checkbox(label="Lateral", value=True),
                                gr.Checkbox(label="Prior", value=i != 1),
                                gr.Checkbox(label="Grounded", value=True),
                            ]
                            compare_inputs += [enabled, *fields]
                            compare_sections += fields[:4]
                compare_btn = gr.Button("Run comparison", variant="primary", elem_id="run-compare")
                compare_columns = gr.HTML(elem_id="compare-columns")
                compare_figure = gr.Plot(label="All contexts", elem_id="compare-figure")
                with gr.Accordion("Aligned findings as a table (sort, copy)", open=False):
                    compare_table = gr.Dataframe(label="Aligned findings", interactive=False)
                with gr.Row():
                    context_figures = [gr.Plot(label=f"Context {n}", visible=False) for n in CONTEXT_NAMES]
            with gr.Tab("Upload study", id="upload"):
                gr.Markdown(
                    "PNG, JPEG (8/16-bit) or DICOM. The outlined square is what the model sees; "
                    "the dimmed margins are cropped away."
                )
                with gr.Row():
                    up_frontal = gr.File(label="Frontal (required)", type="filepath", elem_id="up-frontal")
                    up_lateral = gr.File(label="Lateral", type="filepath", elem_id="up-lateral")
                    up_prior = gr.File(label="Prior frontal", type="filepath", elem_id="up-prior")
                with gr.Row():
                    pv_frontal = gr.Image(label="Frontal: model crop", interactive=False)
                    pv_lateral = gr.Image(label="Lateral: model crop", interactive=False)
                    pv_prior = gr.Image(label="Prior: model crop", interactive=False)
                up_fields = [gr.Textbox(label=s) for s in ("Indication", "Technique", "Comparison", "Prior report")]
                up_open = gr.Button("Open as study", variant="primary", elem_id="open-upload")
                up_msg = gr.HTML(elem_id="upload-msg")

            with gr.Tab("Dashboard", id="dashboard"):
                dash_summary = gr.Markdown()
                with gr.Row():
                    dash_dist = gr.Plot(
                        label="Metric distributions (click a point to open its study)", elem_id="dash-dist"
                    )
                    dash_heat = gr.Plot(label="Box positions")
                dash_counts = gr.Plot(label="Findings per study")
                gr.Markdown("Click a row to open that study in the viewer. Columns sort by clicking their header.")
                dash_table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="dash-table")
                dash_pick = gr.Textbox(elem_id="dash-pick", container=False)  # hidden (css); app.js sets it on a click

        view_outputs = [figure, header, findings, details, toggles]
        section_fields = [indication, technique, comparison, prior_report]
        context_inputs = [*section_fields, use_lateral, use_prior, grounded]

        # ------------------------------------------------------------ events
        opened = demo.load(from_url, None, [study_list, use_lateral, use_prior, grounded, tabs])
        demo.load(lambda saved: saved, reviewer_store, reviewer)
        reviewer.change(lambda name: name, reviewer, reviewer_store)
        reviewer.change(progress_text, [session, reviewer], progress)
        help_toggle.click(lambda: gr.update(visible=True), None, help_panel).then(
            None, None, None, js="() => { const p = document.getElementById('help-panel'); if (p) p.scrollIntoView(); }"
        )

        def then_open(event: Any) -> None:
            """After `event` set the study id: open it, reset the window sliders, update the URL."""
            event.then(open_study, [study_list, session], [session, *view_outputs, *section_fields, progress]).then(
                window_defaults, session, [centre, width]
            ).then(compare_defaults, session, compare_sections).then(
                None, [study_list, use_lateral, use_prior, grounded], None, js=URL_JS
            )

        then_open(opened)
        demo.load(dashboard, None, [dash_summary, dash_dist, dash_heat, dash_counts, dash_table])
        then_open(dash_table.select(open_from_table, None, [study_list, tabs]))
        then_open(dash_pick.change(open_picked, dash_pick, [study_list, tabs]))
        then_open(study_list.input(lambda: None, None, None))
        then_open(prev_btn.click(lambda s: step(s, -1), session, study_list))
        then_open(next_btn.click(lambda s: step(s, +1), session, study_list))
        then_open(unreviewed_btn.click(next_unreviewed, [session, reviewer], study_list))
        for flag in (use_lateral, use_prior, grounded):
            flag.input(None, [study_list, use_lateral, use_prior, grounded], None, js=URL_JS)
        search.submit(filter_list, [search, unreviewed_only, reviewer], study_list)
        unreviewed_only.input(filter_list, [search, unreviewed_only, reviewer], study_list)

        generate_btn.click(generate, [session, *context_inputs], [session, figure, findings, details, toggles]).then(
            lambda s: gr.update(choices=toggle_choices(s.report), value=None), session, focus
        ).then(reground_choices, session, reground).then(finding_choices, session, finding_pick).then(
            verdicts_table, [session, reviewer], verdicts
        )
        ground_btn.click(ground, [phrase, session], [session, figure, findings, details, toggles])
        reground.input(lambda text: text, reground, phrase).then(
            ground, [phrase, session], [session, figure, findings, details, toggles]
        )
        toggles.input(set_visible, [toggles, session], [session, figure])
        all_btn.click(show_all, session, [session, figure, toggles])
        none_btn.click(show_none, session, [session, figure, toggles])
        focus.input(set_focus, [focus, session], [session, figure])
        display_inputs = [centre, width, use_window, invert, opacity, line_width, show_reference, session]
        for control in (use_window, invert, show_reference):
            control.change(set_display, display_inputs, [session, figure])
        for control in (centre, width, opacity, line_width):
            control.release(set_display, display_inputs, [session, figure])

        finding_pick.change(
            load_verdict, [finding_pick, reviewer, session], [text_verdict, significance, box_verdict, comment]
        )
        save_btn.click(
            save_verdict,
            [finding_pick, text_verdict, significance, box_verdict, comment, reviewer, session],
            [finding_pick, review_msg, verdicts],
        ).then(progress_text, [session, reviewer], progress)
        save_report_btn.click(save_report, [omissions, rating, report_comment, reviewer, session], review_msg)
        export_btn.click(export, [export_fmt, reviewer], export_file)
        agreement_btn.click(agreement, session, agreement_table)

        compare_btn.click(
            run_compare,
            [session, *compare_inputs],
            [session, compare_figure, compare_columns, compare_table, *context_figures],
        ).then(
            None,
            None,
            None,
            js="() => { const u = new URL(window.location); u.searchParams.set('view', 'compare');"
            " window.history.replaceState(null, '', u); }",
        )

        up_frontal.change(preview, up_frontal, pv_frontal)
        up_lateral.change(preview, up_lateral, pv_lateral)
        up_prior.change(preview, up_prior, pv_prior)
        up_open.click(
            open_upload, [up_frontal, up_lateral, up_prior, *up_fields, session], [session, up_msg, tabs, study_list]
        ).then(after_upload, session, [*view_outputs, *section_fields]).then(
            compare_defaults, session, compare_sections
        )
    return demo


def launch_settings() -> dict[str, Any]:
    """Launch keyword arguments shared by app.py and tests: static assets, privacy defaults."""
    return {
        "css_paths": [STATIC / "app.css"],
        "head": f"<script>{(STATIC / 'app.js').read_text()}</script>",
        "enable_monitoring": False,
        "show_error": False,
        "footer_links": ["gradio"],
    }
