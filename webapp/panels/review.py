"""The Review tab: study list and navigation, prompt context, the workstation (viewer + findings +
verdicts), phrase grounding, export and agreement.

Opening a study shows its latest stored report for the current context at once (no model call),
with the reviewer's verdicts; Generate / Regenerate streams a new report and stores it. The
current list (search, "only unreviewed") drives ←/→, Prev/Next and "next unreviewed". Every
callback answers with a sentence on the page when something cannot be done; none raises.
"""

from __future__ import annotations

import html
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from model_backend.backends.base import BOX_COMPLETION, REPORTING, BackendError
from model_backend.images import ImageLoadError
from model_backend.prompt_limits import MAX_SECTION_CHARS
from model_backend.types import PromptContext, Report, Study
from webapp.panels.components import message, study_list, workstation
from webapp.report_store import StoredReport
from webapp.services import AppServices, StudyRef, StudyUnavailable, Switches
from webapp.state import Address, TabState, parse_address, parse_nav_value
from webapp.viewer_payload import report_payload, study_payload, window_render

log = logging.getLogger(__name__)
LIST_WINDOW = 400  # rows of the study list sent to the browser around the open study


@dataclass
class ReviewPanel:
    """The Review tab's components other panels connect to."""

    state: gr.State
    nav_target: gr.Textbox  # write `webapp.state.nav_value(...)` here to open something in this tab
    opened: Any  # the page-load event after the first study is open (other panels chain `.then` on it)


def reviewer_of(name: str, request: gr.Request | None, auth_enabled: bool) -> str:
    """The reviewer: the login name when the app has one, else the name typed on the page."""
    if auth_enabled and request is not None and request.username:
        return request.username
    return (name or "").strip()[:200]


def build(services: AppServices, demo: gr.Blocks, tabs: gr.Tabs) -> ReviewPanel:
    """Lay out the Review tab and wire its events (call inside its `gr.Tab` of `tabs`, in `demo`)."""
    auth = services.auth_enabled

    # ------------------------------------------------------------ server functions (called by the viewer)
    def render_window(payload: dict) -> dict:
        try:
            src = window_render(str(payload.get("key")), float(payload["centre"]), float(payload["width"]))
        except KeyError:
            return {"error": "This image is no longer in the server's memory; open the study again."}
        except (TypeError, ValueError):
            return {"error": "The window values must be numbers."}
        return {"src": src}

    def save_verdict(payload: dict, request: gr.Request) -> dict:
        reviewer = reviewer_of(str(payload.get("reviewer") or ""), request, auth)
        result = services.save_finding_verdict(
            reviewer, payload.get("report_id"), payload.get("finding_index"), payload.get("sentence"),
            text_verdict=payload.get("text_verdict"), significance=payload.get("significance"),
            box_verdict=payload.get("box_verdict"), comment=str(payload.get("comment") or ""),
        )  # fmt: skip
        return _save_answer(result)

    def undo_verdict(payload: dict, request: gr.Request) -> dict:
        reviewer = reviewer_of(str(payload.get("reviewer") or ""), request, auth)
        return _save_answer(
            services.undo_finding_verdict(reviewer, payload.get("report_id"), payload.get("finding_index"))
        )

    def save_report_verdict(payload: dict, request: gr.Request) -> dict:
        reviewer = reviewer_of(str(payload.get("reviewer") or ""), request, auth)
        result = services.save_report_verdict(
            reviewer, payload.get("report_id"), payload.get("omissions"), payload.get("rating"), payload.get("comment")
        )
        answer = _save_answer(result)
        answer["report_verdict"] = None if result.report_verdict is None else {
            "omissions": [o.text for o in result.report_verdict.omissions],
            "rating": result.report_verdict.rating,
            "comment": result.report_verdict.comment,
        }  # fmt: skip
        return answer

    # ------------------------------------------------------------ layout
    state = gr.State(TabState())
    with gr.Row(elem_id="review-row", equal_height=False):
        with gr.Column(scale=0, min_width=230, elem_id="review-left"):
            reviewer = gr.Textbox(label="Reviewer", placeholder="your name", elem_id="reviewer", max_length=200,
                                  interactive=not auth, info="your login" if auth else None)  # fmt: skip
            reviewer_store = gr.BrowserState("", storage_key="cxr-reviewer")
            search = gr.Textbox(label="Search studies (Enter)", placeholder="id, finding, label…", elem_id="search",
                                max_length=500)  # fmt: skip
            unreviewed_only = gr.Checkbox(label="Only studies I have not reviewed", value=False, elem_id="unreviewed")
            with gr.Row(elem_id="nav-row"):
                prev_btn = gr.Button("←", elem_id="prev-study", size="sm", min_width=40)
                next_btn = gr.Button("→", elem_id="next-study", size="sm", min_width=40)
                unreviewed_btn = gr.Button("Next unreviewed", elem_id="next-unreviewed", size="sm")
            studies = study_list(elem_id="study-list")
            progress = gr.HTML("", elem_id="progress")
            with gr.Accordion("Prompt context", open=True, elem_id="context-box"):
                sections = [
                    gr.Textbox(label=label, lines=1, max_lines=4, max_length=MAX_SECTION_CHARS, elem_id=f"ctx-{key}")
                    for label, key in (("Indication", "indication"), ("Technique", "technique"),
                                       ("Comparison", "comparison"), ("Prior report", "prior_report"))
                ]  # fmt: skip
                task_mode = gr.Radio(
                    [("Generate a report", REPORTING), ("Complete boxes for the reference sentences", BOX_COMPLETION)],
                    value=REPORTING, label="Task", elem_id="task-mode",
                )  # fmt: skip
                with gr.Row():
                    use_lateral = gr.Checkbox(label="Lateral", value=True, elem_id="use-lateral", min_width=60)
                    use_prior = gr.Checkbox(label="Prior", value=True, elem_id="use-prior", min_width=60)
                    grounded = gr.Checkbox(label="Grounded", value=True, elem_id="use-grounded", min_width=60)
            nav_target = gr.Textbox(elem_id="nav-target", container=False, elem_classes=["hidden-field"])
        with gr.Column(scale=1, elem_id="review-main"):
            ws = workstation(
                elem_id="workstation", mode="review",
                server_functions=[render_window, save_verdict, undo_verdict, save_report_verdict],
            )  # fmt: skip
            with gr.Accordion("Export verdicts, agreement between reviewers", open=False, elem_id="export-box"):
                with gr.Row():
                    export_fmt = gr.Radio(["csv", "jsonl"], value="csv", label="Export format")
                    export_btn = gr.Button("Export verdicts", elem_id="export")
                    agreement_btn = gr.Button("Agreement between reviewers", elem_id="agreement")
                export_files = gr.File(label="Export (finding and report verdicts)", file_count="multiple",
                                       elem_id="export-file")  # fmt: skip
                agreement_table = gr.Dataframe(
                    headers=["#", "finding", "verdicts", "text agree", "box agree"], interactive=False,
                    elem_id="agreement-table",
                )  # fmt: skip
    switch_boxes = [use_lateral, use_prior, grounded]

    # ------------------------------------------------------------ helpers
    def listing_payload(tab: TabState, reviewer_name: str) -> dict:
        listing = tab.listing
        current = tab.dataset_study
        done = services.reviewed(reviewer_name)
        index = listing.index(current) if current in listing else None
        start = max(0, (index or 0) - LIST_WINDOW // 2)
        window = listing[start : start + LIST_WINDOW]
        if index is not None:
            counter = f"{index + 1} / {len(listing)}"
        elif tab.ref and tab.ref.kind == "upload":
            counter = f"uploaded study · list of {len(listing)}"
        else:
            counter = f"not in this list · {len(listing)} studies"
        if len(listing) < len(services.study_ids):
            counter += f" (of {len(services.study_ids)})"
        items = [{"id": s, "current": s == current, "reviewed": s in done} for s in window]
        return {"items": items, "counter": counter}

    def progress_text(reviewer_name: str) -> str:
        if not reviewer_name:
            return "Enter your name to record verdicts."
        done, total = services.reviews.progress(services.dataset.name, reviewer_name, services.study_ids)
        return f"<b>{html.escape(reviewer_name)}</b>: {done} / {total} studies reviewed"

    def stored_payload(stored: StoredReport, reviewer_name: str) -> dict:
        return report_payload(
            stored.report, report_id=stored.report_id, created=stored.created, source=stored.source,
            verdicts=services.verdicts(stored, reviewer_name),
            report_verdict=services.report_verdict(stored, reviewer_name),
        )  # fmt: skip

    def address(tab: TabState, context: PromptContext | None, pinned: str | None, push: bool) -> dict:
        """The `address` prop: what the address bar must say now (`push`: a new history entry)."""
        return {"params": address_params(tab, context, pinned), "push": push, "nonce": time.monotonic_ns()}

    def address_params(tab: TabState, context: PromptContext | None, pinned: str | None) -> dict:
        ref = tab.ref
        params: dict[str, Any] = {"study": None, "upload": None, "report": pinned}
        if ref is not None:
            params["study" if ref.kind == "dataset" else "upload"] = ref.key
        if context is not None:
            params.update(lateral=int(context.use_lateral), prior=int(context.use_prior),
                          grounded=int(context.grounded))  # fmt: skip
        params["task"] = tab.task if tab.task != REPORTING else None
        return params

    def open_outputs(
        tab: TabState, study: Study | None, context: PromptContext | None, stored: StoredReport | None,
        reviewer_name: str, *, push: bool, pinned: str | None = None, note: str = "",
    ) -> tuple[Any, ...]:  # fmt: skip
        """Everything that changes when a study is opened (or cannot be)."""
        tab.report_id = stored.report_id if stored else None
        if study is None:
            value: dict[str, Any] = {"message": note or "Open a study."}
        else:
            position = ""
            if tab.dataset_study in tab.listing:
                position = f"{tab.listing.index(tab.dataset_study) + 1} / {len(tab.listing)}"
            value = study_payload(study, position, upload=tab.ref is not None and tab.ref.kind == "upload")
        report = stored_payload(stored, reviewer_name) if stored else None
        ws_update = gr.HTML(
            value=value, report=report, grounding=None, reviewer=reviewer_name, task=tab.task,
            address=address(tab, context, pinned, push), message=message(note, "warn"),  # "" clears the last one
        )  # fmt: skip
        sections = context_fields(study, context)
        return (tab, ws_update, *sections, *switch_updates(study, tab.switches), tab.task,
                listing_payload(tab, reviewer_name))  # fmt: skip

    def context_fields(study: Study | None, context: PromptContext | None) -> list[Any]:
        if study is None or context is None:
            return [gr.update()] * 4
        return [context.indication or "", context.technique or "", context.comparison or "", context.prior_report or ""]

    def switch_updates(study: Study | None, switches: Switches) -> list[Any]:
        if study is None:
            return [gr.update()] * 3
        return [
            gr.Checkbox(value=switches.use_lateral and study.lateral is not None, interactive=study.lateral is not None,
                        label="Lateral" if study.lateral is not None else "Lateral (none)"),
            gr.Checkbox(value=switches.use_prior and study.prior_frontal is not None,
                        interactive=study.prior_frontal is not None,
                        label="Prior" if study.prior_frontal is not None else "Prior (none)"),
            gr.Checkbox(value=switches.grounded),
        ]  # fmt: skip

    def open_ref(
        tab: TabState, ref: StudyRef, reviewer_name: str, *, push: bool, pinned: str | None = None, note: str = ""
    ) -> tuple[Any, ...]:
        tab.ref = ref
        try:
            study = services.load(ref)
        except StudyUnavailable as err:
            return open_outputs(tab, None, None, None, reviewer_name, push=push, note=str(err))
        stored = services.reports.get(pinned) if pinned else None
        if pinned and (stored is None or stored.report.study_id != study.study_id):
            stored = None
            note = "The report in this address is not stored for this study; showing its latest report."
        if stored is not None:
            context = stored.report.context
            tab.task = stored.report.task
            tab.switches = Switches(context.use_lateral or tab.switches.use_lateral,
                                    context.use_prior or tab.switches.use_prior, context.grounded)  # fmt: skip
        else:
            pinned = None
            context = services.default_context(study, tab.switches)
            stored = services.stored_report(ref, study, context, tab.task)
        if stored is None or pinned is None:
            services.follow(ref, tab.listing, tab.switches)
        return open_outputs(tab, study, context, stored, reviewer_name, push=push, pinned=pinned, note=note)

    # ------------------------------------------------------------ events: opening and navigation
    open_outputs_list = [state, ws, *sections, *switch_boxes, task_mode, studies]
    unchanged = (gr.update(),) * len(open_outputs_list)

    def open_address(address: Address, tab: TabState, name: str, request: gr.Request | None):
        reviewer_name = reviewer_of(name, request, auth)
        if not tab.listing and not tab.query and not tab.unreviewed_only:
            tab.listing = list(services.study_ids)
        tab.switches, tab.task = address.switches, address.task
        if address.upload:
            return open_ref(tab, StudyRef("upload", address.upload), reviewer_name, push=address.push)
        study_id = address.study
        note = ""
        if study_id is not None and study_id not in services.dataset:
            note = f"Study {study_id[:100]!r} is not in this dataset; opened the first study of the list instead."
            study_id = None
        if study_id is None:
            if not tab.listing:
                return open_outputs(
                    tab, None, None, None, reviewer_name, push=False, note="The dataset has no studies."
                )
            study_id = tab.listing[0]
        return open_ref(
            tab, StudyRef("dataset", study_id), reviewer_name, push=address.push, pinned=address.report, note=note
        )

    def on_load(tab: TabState, name: str, request: gr.Request):
        params = dict(request.query_params) if request is not None else {}
        address = parse_address(params, push=False)
        return (*open_address(address, tab, name, request), progress_text(reviewer_of(name, request, auth)),
                gr.Tabs(selected=address.view))  # fmt: skip

    def on_nav(value: str, tab: TabState, name: str, request: gr.Request):
        address = parse_nav_value(value)
        if address is None:
            return unchanged
        return open_address(address, tab, name, request)

    def on_pick(tab: TabState, name: str, event: gr.EventData, request: gr.Request):
        study_id = str(getattr(event, "study_id", "") or "")
        if study_id not in services.dataset:
            return unchanged
        return open_ref(tab, StudyRef("dataset", study_id), reviewer_of(name, request, auth), push=True)

    def step(delta: int) -> Callable[..., tuple[Any, ...]]:
        def handler(tab: TabState, name: str, request: gr.Request):
            if not tab.listing:
                gr.Info("No study matches the current search and filters.")
                return unchanged
            current = tab.dataset_study
            if current in tab.listing:
                target = tab.listing[(tab.listing.index(current) + delta) % len(tab.listing)]
            else:
                target = tab.listing[0 if delta > 0 else -1]
            return open_ref(tab, StudyRef("dataset", target), reviewer_of(name, request, auth), push=True)

        return handler

    def next_unreviewed(tab: TabState, name: str, request: gr.Request):
        reviewer_name = reviewer_of(name, request, auth)
        if not reviewer_name:
            gr.Info("Enter your reviewer name first.")
            return unchanged
        current = tab.dataset_study
        target = services.reviews.next_unreviewed(services.dataset.name, reviewer_name, tab.listing, current)
        if target is None:
            gr.Info("Every study in the current list has a verdict from you.")
            return unchanged
        return open_ref(tab, StudyRef("dataset", target), reviewer_name, push=True)

    def refilter(query: str, unreviewed: bool, tab: TabState, name: str, request: gr.Request):
        reviewer_name = reviewer_of(name, request, auth)
        tab.query, tab.unreviewed_only = (query or "")[:500], bool(unreviewed)
        tab.listing = services.listing(tab.query, tab.unreviewed_only, reviewer_name)
        if not tab.listing:
            gr.Info("No study matches; ← → do nothing until the search or filter changes.")
        return tab, listing_payload(tab, reviewer_name)

    # ------------------------------------------------------------ events: context and reports
    def on_context(tab: TabState, name: str, request: gr.Request, *values: Any):
        """Switches, sections or the task changed: show the stored report for them (or none)."""
        *texts, lateral, prior, ground, task = values
        tab.task = task if task in (REPORTING, BOX_COMPLETION) else REPORTING
        tab.switches = replace(tab.switches, grounded=bool(ground),
                               use_lateral=bool(lateral) if lateral is not None else tab.switches.use_lateral,
                               use_prior=bool(prior) if prior is not None else tab.switches.use_prior)  # fmt: skip
        try:
            ref, study = services.open_study(tab.ref)
        except StudyUnavailable:
            return tab, gr.update()
        context = services.context_for(study, texts, tab.switches)
        stored = services.stored_report(ref, study, context, tab.task)
        tab.report_id = stored.report_id if stored else None
        reviewer_name = reviewer_of(name, request, auth)
        report = stored_payload(stored, reviewer_name) if stored else None
        return tab, gr.HTML(report=report, task=tab.task, address=address(tab, context, None, False))

    def on_generate(tab: TabState, name: str, request: gr.Request, *values: Any) -> Iterator[tuple[Any, ...]]:
        *texts, lateral, prior, ground, task = values
        reviewer_name = reviewer_of(name, request, auth)
        try:
            ref, study = services.open_study(tab.ref)
            context = services.context_for(study, texts, Switches(bool(lateral), bool(prior), bool(ground)))
            if task == BOX_COMPLETION:
                stored = services.complete_boxes(ref, study, context)
                tab.report_id = stored.report_id
                yield tab, gr.HTML(report=stored_payload(stored, reviewer_name), message=message("", "info"))
                return
            for item in services.generate(ref, study, context):
                if isinstance(item, Report):
                    yield tab, gr.HTML(report=report_payload(item, streaming=True))
                else:
                    tab.report_id = item.report_id
                    yield tab, gr.HTML(report=stored_payload(item, reviewer_name), message=message("", "info"))
        except (StudyUnavailable, BackendError, ImageLoadError, ValueError) as err:
            log.info("generation failed: %s", err)
            yield tab, gr.HTML(message=message(f"Generation failed: {err}", "error"))

    def on_ground(tab: TabState, event: gr.EventData):
        phrase = str(getattr(event, "phrase", "") or "")
        try:
            ref, study = services.open_study(tab.ref)
            stored = services.ground(ref, study, phrase)
        except (StudyUnavailable, BackendError, ImageLoadError, ValueError) as err:
            return gr.HTML(grounding={"phrase": phrase, "report": None, "error": f"Phrase grounding failed: {err}"})
        return gr.HTML(
            grounding={"phrase": phrase, "report": report_payload(stored.report, report_id=stored.report_id)}
        )

    def on_reviewer(name: str, tab: TabState, request: gr.Request):
        reviewer_name = reviewer_of(name, request, auth)
        if tab.unreviewed_only:
            tab.listing = services.listing(tab.query, True, reviewer_name)
        report = None
        if tab.report_id:
            stored = services.reports.get(tab.report_id)
            report = stored_payload(stored, reviewer_name) if stored else None
        update = gr.HTML(reviewer=reviewer_name, report=report) if tab.report_id else gr.HTML(reviewer=reviewer_name)
        return tab, update, listing_payload(tab, reviewer_name), progress_text(reviewer_name)

    def after_verdict(tab: TabState, name: str, request: gr.Request):
        reviewer_name = reviewer_of(name, request, auth)
        return listing_payload(tab, reviewer_name), progress_text(reviewer_name)

    # ------------------------------------------------------------ events: export and agreement
    def export(fmt: str, name: str, request: gr.Request) -> list[str]:
        reviewer_name = reviewer_of(name, request, auth) or None
        folder = Path(tempfile.mkdtemp(prefix="cxr-export-"))
        paths = []
        for level in ("finding", "report"):
            out = folder / f"{level}_verdicts.{fmt}"
            services.reviews.export(out, fmt, dataset=None, reviewer=reviewer_name, level=level)  # type: ignore[arg-type]
            paths.append(str(out))
        return paths

    def agreement(tab: TabState) -> list[list[Any]]:
        stored = services.reports.get(tab.report_id) if tab.report_id else None
        if stored is None:
            gr.Info("Open a study with a stored report first.")
            return []
        rows = []
        for row in services.reviews.agreement(stored.dataset, stored.report.study_id, stored.report_id):
            verdicts = "; ".join(f"{who}: {v['text_verdict'] or '—'}/{v['box_verdict'] or '—'}"
                                 for who, v in row["reviewers"].items())  # fmt: skip
            rows.append([row["finding_index"] + 1, row["finding_text"], verdicts, _agree(row["text_agree"]),
                         _agree(row["box_agree"])])  # fmt: skip
        return rows

    # ------------------------------------------------------------ wiring
    context_inputs = [*sections, *switch_boxes, task_mode]
    loaded = demo.load(lambda saved: saved, reviewer_store, reviewer)
    opened = loaded.then(on_load, [state, reviewer], [*open_outputs_list, progress, tabs])
    reviewer.change(lambda name: name, reviewer, reviewer_store)
    reviewer.change(on_reviewer, [reviewer, state], [state, ws, studies, progress])
    nav_target.change(on_nav, [nav_target, state, reviewer], open_outputs_list)
    studies.open(on_pick, [state, reviewer], open_outputs_list)
    prev_btn.click(step(-1), [state, reviewer], open_outputs_list)
    next_btn.click(step(+1), [state, reviewer], open_outputs_list)
    unreviewed_btn.click(next_unreviewed, [state, reviewer], open_outputs_list)
    search.submit(refilter, [search, unreviewed_only, state, reviewer], [state, studies])
    unreviewed_only.input(refilter, [search, unreviewed_only, state, reviewer], [state, studies])
    for box in [*switch_boxes, task_mode]:
        box.input(on_context, [state, reviewer, *context_inputs], [state, ws])
    for field in sections:  # Enter in a section shows that context's stored report (Generate reads them anyway)
        field.submit(on_context, [state, reviewer, *context_inputs], [state, ws])
    ws.generate(on_generate, [state, reviewer, *context_inputs], [state, ws], concurrency_limit=None)
    ws.ground(on_ground, [state], [ws])
    ws.verdict_saved(after_verdict, [state, reviewer], [studies, progress])
    export_btn.click(export, [export_fmt, reviewer], export_files)
    agreement_btn.click(agreement, state, agreement_table)
    return ReviewPanel(state, nav_target, opened)


def _agree(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def _save_answer(result: Any) -> dict:
    verdicts = {
        str(index): {"text": v.text_verdict, "significance": v.significance, "box": v.box_verdict, "comment": v.comment}
        for index, v in result.verdicts.items()
    }
    return {"ok": result.ok, "message": result.message, "verdicts": verdicts}
