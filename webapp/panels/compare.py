"""The Compare tab: up to four prompt contexts of the Review tab's study, side by side.

The study is shown as soon as the tab opens, with each context's stored report when there is one
(no model call). "Run comparison" generates only the contexts without a stored report, together
in one backend call that shares the image prefix; "Regenerate all" runs every enabled context.
Findings are coloured by aligned row (the same finding has the same colour in every context; a
finding unique to one context has its own colour and is marked); each context has its own line
style, none of them the dotted white of the reference boxes. The address holds the contexts
(`?view=compare&B=1&B.prior=0&C.indication=cough`), so a comparison can be shared as a link.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from model_backend.backends.base import BackendError
from model_backend.degenerate import degenerate_flags
from model_backend.images import ImageLoadError
from model_backend.prompt_limits import MAX_SECTION_CHARS, SECTIONS
from model_backend.types import PromptContext, Report, Study
from webapp.compare import align_findings, context_difference, row_colours
from webapp.panels.components import workstation
from webapp.panels.review import ReviewPanel
from webapp.report_store import StoredReport
from webapp.services import AppServices, StudyUnavailable
from webapp.state import TabState
from webapp.viewer import PALETTE
from webapp.viewer_payload import report_payload, study_payload, without_pictures

NAMES = ("A", "B", "C", "D")
DASHES = {"A": "", "B": "9 5", "C": "12 4 3 4", "D": "18 6"}  # reference boxes: white "2 3" dots
STYLE_NAMES = {"A": "solid", "B": "dashed", "C": "dash-dot", "D": "long dash"}
FLAGS = (("lateral", "use_lateral"), ("prior", "use_prior"), ("grounded", "grounded"))


@dataclass(frozen=True)
class ContextInputs:
    """The inputs of one context column."""

    enabled: gr.Checkbox
    sections: list[gr.Textbox]
    flags: list[gr.Checkbox]

    def all(self) -> list[Any]:
        return [self.enabled, *self.sections, *self.flags]


def contexts_from(values: Sequence[Any], study: Study) -> list[PromptContext]:
    """The enabled contexts (named A-D) from the columns' values, switches off where the study lacks the view."""
    contexts = []
    width = 1 + len(SECTIONS) + len(FLAGS)
    for n, name in enumerate(NAMES):
        enabled, *rest = values[n * width : (n + 1) * width]
        if not enabled:
            continue
        texts, flags = rest[: len(SECTIONS)], rest[len(SECTIONS) :]
        context = PromptContext(
            name=name,
            **{f: (t or "").strip() or None for f, t in zip(SECTIONS, texts, strict=True)},
            **{field: bool(v) for (_, field), v in zip(FLAGS, flags, strict=True)},
        )
        contexts.append(study.effective_context(context))
    return contexts


def address_params(contexts: Sequence[PromptContext], study: Study) -> dict[str, Any]:
    """Address parameters that restore these contexts on this study (only what differs from its own sections)."""
    params: dict[str, Any] = {"view": "compare"}
    for context in contexts:
        params[context.name] = 1
        for field in SECTIONS:
            value = getattr(context, field)
            if value != getattr(study.context, field):
                params[f"{context.name}.{field}"] = value or ""
        for key, field in FLAGS:
            if not getattr(context, field):
                params[f"{context.name}.{key}"] = 0
    return params


def columns_from_address(params: dict[str, str], study: Study) -> list[Any] | None:
    """Column values (as `contexts_from` reads them) from address parameters; None when the address names none."""
    if not any(params.get(name) == "1" for name in NAMES):
        return None
    values: list[Any] = []
    for name in NAMES:
        values.append(params.get(name) == "1")
        for field in SECTIONS:
            values.append(params.get(f"{name}.{field}", getattr(study.context, field) or "")[:MAX_SECTION_CHARS])
        values += [params.get(f"{name}.{key}", "1") != "0" for key, _ in FLAGS]
    return values


def default_columns(study: Study) -> list[Any]:
    """A: the study's own sections; B: the same with one thing taken away (the prior if the study has one,
    else the lateral, else the indication); C, D: off (same as A when enabled)."""
    own = [getattr(study.context, f) or "" for f in SECTIONS]
    values: list[Any] = []
    for n in range(len(NAMES)):
        texts, flags = list(own), [True, True, True]
        if n == 1:
            if study.prior_frontal is not None:
                flags[1] = False
            elif study.lateral is not None:
                flags[0] = False
            else:
                texts[0] = ""
        values += [n < 2, *texts, *flags]
    return values


def columns_html(stored: Sequence[StoredReport], colours: list[list[str]]) -> str:
    """The aligned findings as a table: one row per aligned finding, a column per context labelled with
    what it changes from A; unique findings marked."""
    reports = [s.report for s in stored]
    rows = align_findings(reports)
    base = reports[0].context
    head = "".join(
        f"<th>{html.escape(r.context.name)}: {html.escape(context_difference(base, r.context) if k else 'base')}"
        f" <span class='dash-sample dash-{r.context.name}'></span>{_flags_html(r)}</th>"
        for k, r in enumerate(reports)
    )
    body = []
    for row in rows:
        cells = []
        for k, index in enumerate(row.cells):
            if index is None:
                cells.append("<td class='missing'>—</td>")
                continue
            finding = reports[k].findings[index]
            badge = "" if finding.model_boxes else " <span class='badge ungrounded'>ungrounded</span>"
            only = f" <span class='badge unique'>only in {html.escape(reports[k].context.name)}</span>" if (
                row.status == "unique" and sum(c is not None for c in row.cells) == 1) else ""  # fmt: skip
            cells.append(
                f"<td><span class='swatch' style='background:{colours[k][index]}'></span>"
                f"{index + 1}. {html.escape(finding.text)}{badge}{only}</td>"
            )
        body.append(f"<tr class='{row.status}'>{''.join(cells)}</tr>")
    return f"<table class='compare'><tr>{head}</tr>{''.join(body)}</table>"


def _flags_html(report: Report) -> str:
    flags = degenerate_flags(report)
    if not flags:
        return ""
    return "<div class='flags'>⚠ " + " · ".join(html.escape(f"{f.name}: {f.reason}") for f in flags) + "</div>"


def combined_payload(stored: Sequence[StoredReport], colours: list[list[str]]) -> dict[str, Any]:
    """All contexts' findings as one list for the combined view: "B 2. …", row colour, context line style."""
    first = stored[0].report
    payload = report_payload(first)
    findings = []
    for item, report_colours in zip(stored, colours, strict=True):
        part = report_payload(item.report, colours=report_colours, dash=DASHES[item.report.context.name])
        for f in part["findings"]:
            findings.append({**f, "index": len(findings), "text": f"{item.report.context.name} {f['index'] + 1}. "
                             f"{f['text']}"})  # fmt: skip
    payload.update(findings=findings, context="all contexts", report_id=None, raw_text="", warnings=[], timings={})
    return payload


def build(services: AppServices, review: ReviewPanel, tab: gr.Tab) -> None:
    """Lay out the Compare tab (call inside `tab`)."""
    styles = ", ".join(f"{n} {STYLE_NAMES[n]}" for n in NAMES)
    gr.Markdown(
        f"Up to four prompt contexts of the study open in Review. Line style per context: {styles}; reference "
        "(radiologist) boxes are white dots. Colour = aligned finding: the same finding has the same colour in "
        "every context. Stored reports show at once; **Run comparison** generates only the missing contexts, "
        "in one backend call that shares the image prefix.",
        elem_id="compare-help",
    )
    columns: list[ContextInputs] = []
    with gr.Row():
        for n, name in enumerate(NAMES):
            with gr.Column(min_width=200):
                enabled = gr.Checkbox(label=f"Context {name}", value=n < 2, elem_id=f"ctx-{name}-on")
                sections = [
                    gr.Textbox(label=label, lines=1, max_length=MAX_SECTION_CHARS, elem_id=f"ctx-{name}-{field}")
                    for label, field in zip(("Indication", "Technique", "Comparison", "Prior report"), SECTIONS,
                                            strict=True)
                ]  # fmt: skip
                with gr.Row():
                    flags = [
                        gr.Checkbox(label=key.capitalize(), value=not (n == 1 and key == "prior"),
                                    elem_id=f"ctx-{name}-{key}", min_width=60)
                        for key, _ in FLAGS
                    ]  # fmt: skip
                columns.append(ContextInputs(enabled, sections, flags))
    with gr.Row():
        run_btn = gr.Button("Run comparison", variant="primary", elem_id="run-compare")
        regenerate_btn = gr.Button("Regenerate all", elem_id="regenerate-compare")
    table = gr.HTML(elem_id="compare-columns")
    combined = workstation(elem_id="compare-combined", mode="compare")
    with gr.Row():
        views = [workstation(elem_id=f"compare-{name}", mode="compare", visible=n < 2) for n, name in enumerate(NAMES)]
    inputs = [i for c in columns for i in c.all()]
    shown = gr.State("")  # images key of the study whose columns were filled in, per tab

    def show(tab: TabState, values: Sequence[Any], run: str, study_value: dict | None = None) -> tuple[Any, ...]:
        """The enabled contexts' reports: stored ones at once; `run` "missing" / "all" calls the model first.
        `study_value` (a study payload) also sends the picture, for a study the views have not shown yet."""
        try:
            ref, study = services.open_study(tab.ref)
            contexts = contexts_from(values, study)
            if not contexts:
                raise ValueError("Enable at least one context.")
            stored = {c.name: services.stored_report(ref, study, c) for c in contexts}
            todo = [c for c in contexts if run == "all" or (run == "missing" and stored[c.name] is None)]
            if todo:  # (two contexts with the same settings get the same stored report)
                for context, item in zip(todo, services.compare(ref, study, todo), strict=True):
                    stored[context.name] = item
            # A stored report keeps the context name it was made under ("A" in Review, "default" in a batch
            # run): show it under this column's name (same settings, same prompt, same report id).
            stored = {c.name: None if stored[c.name] is None else as_column(stored[c.name], c) for c in contexts}
        except (StudyUnavailable, BackendError, ImageLoadError, ValueError) as err:
            return (f"<div class='error-box'>{html.escape(str(err))}</div>", gr.update(), *[gr.update()] * len(NAMES))
        ready = [stored[c.name] for c in contexts if stored[c.name] is not None]
        missing = [c.name for c in contexts if stored[c.name] is None]
        colours = row_colours(align_findings([s.report for s in ready]), [s.report for s in ready], PALETTE)
        by_name = {s.report.context.name: (s, c) for s, c in zip(ready, colours, strict=True)}
        address = {
            "params": {"study": study.study_id if ref.kind == "dataset" else None,
                       "upload": ref.key if ref.kind == "upload" else None, **address_params(contexts, study)},
            "push": False, "nonce": time.monotonic_ns(),
        }  # fmt: skip
        extra = {} if study_value is None else {"value": study_value}
        combined_update = gr.HTML(report=combined_payload(ready, colours) if ready else None, address=address, **extra)
        shared = {} if study_value is None else {"value": without_pictures(study_value)}
        enabled = {c.name for c in contexts}
        view_updates = []
        for name in NAMES:
            item = by_name.get(name)
            report = None if item is None else report_payload(
                item[0].report, report_id=item[0].report_id, created=item[0].created, source=item[0].source,
                colours=item[1], dash=DASHES[name],
            )  # fmt: skip
            view_updates.append(gr.HTML(visible=name in enabled, report=report, **shared))
        return (_table(study, ready, colours, missing), combined_update, *view_updates)

    def columns_for(tab: TabState, known: str, params: dict[str, str] | None) -> tuple[Any, ...]:
        """Fill the columns for the Review tab's study (from address `params` when given, else the study's own
        sections) and show it with every stored report (no model call). With `params` None and the same study
        as before (`known`), nothing changes: the columns and reports on screen are already this study's."""
        unchanged = (known, *[gr.update()] * len(inputs), *[gr.update()] * len(outputs))
        try:
            _, study = services.open_study(tab.ref)
        except StudyUnavailable as err:
            return (known, *[gr.update()] * len(inputs), f"<div class='muted'>{html.escape(str(err))}</div>",
                    *[gr.update()] * (len(outputs) - 1))  # fmt: skip
        key = study.images_key()
        if params is None and key == known:
            return unchanged
        values = tuple((columns_from_address(params, study) if params else None) or default_columns(study))
        return (key, *values, *show(tab, values, "none", study_payload(study)))

    def on_page_load(tab: TabState, known: str, request: gr.Request) -> tuple[Any, ...]:
        return columns_for(tab, known, dict(request.query_params) if request is not None else {})

    def on_tab_select(tab: TabState, known: str) -> tuple[Any, ...]:
        return columns_for(tab, known, None)

    outputs = [table, combined, *views]
    run_btn.click(lambda tab, *v: show(tab, v, "missing"), [review.state, *inputs], outputs)
    regenerate_btn.click(lambda tab, *v: show(tab, v, "all"), [review.state, *inputs], outputs)
    for column in columns:
        column.enabled.input(lambda tab, *v: show(tab, v, "none"), [review.state, *inputs], outputs)
    review.opened.then(on_page_load, [review.state, shown], [shown, *inputs, *outputs])
    tab.select(on_tab_select, [review.state, shown], [shown, *inputs, *outputs])


def as_column(item: StoredReport, context: PromptContext) -> StoredReport:
    """`item` labelled with a comparison column's context (which has the same prompt settings)."""
    return replace(item, report=replace(item.report, context=context))


def _table(study: Study, ready: Sequence[StoredReport], colours: list[list[str]], missing: Sequence[str]) -> str:
    summary = " · ".join(f"{s.report.context.name}: {len(s.report.findings)} findings" for s in ready)
    head = f"<p class='muted'>{html.escape(study.study_id)} · {summary}</p>" if ready else ""
    note = (f"<p class='muted'>No stored report for context(s) {', '.join(missing)} yet: press "
            "<b>Run comparison</b>.</p>") if missing else ""  # fmt: skip
    return head + note + (columns_html(ready, colours) if ready else "")
