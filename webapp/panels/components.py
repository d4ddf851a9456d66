"""The two browser components, as `gr.HTML` with their JavaScript (no front-end build step).

Why `gr.HTML` and not a Gradio custom component: the viewer is one plain-JS file
(`assets/static/workstation.js`) run by `js_on_load` with Gradio's `props`, `watch`, `trigger` and
`server`; a custom component would need a Svelte/npm build in CI for the same behaviour. The
template is a constant (`<div>`), so Gradio never re-renders the DOM the script builds: the script
redraws only what changed when `value` (a study) or a prop (`report`, `grounding`, `reviewer`,
`message`) arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

STATIC = Path(__file__).resolve().parents[2] / "assets" / "static"


def workstation(
    *, elem_id: str, mode: str, server_functions: Sequence[Callable[..., Any]] = (), **props: Any
) -> gr.HTML:
    """The grounding viewer + findings list (`mode` "review": with Generate and verdicts; "compare": read-only)."""
    return _scripted(
        "workstation.js", elem_id, elem_classes=["workstation"], server_functions=list(server_functions) or None,
        view_mode=mode, report=None, grounding=None, reviewer="", message=None, address=None, task="reporting",
        **props,
    )  # fmt: skip


def study_list(*, elem_id: str) -> gr.HTML:
    """The current list of studies; a click triggers its `open` event with `{"study_id": ...}`."""
    return _scripted("studylist.js", elem_id)


def _scripted(script: str, elem_id: str, **options: Any) -> gr.HTML:
    """A `gr.HTML` with a constant template whose DOM is built by `assets/static/<script>`."""
    return gr.HTML(
        None,
        html_template="<div></div>",
        js_on_load=(STATIC / script).read_text(encoding="utf-8"),
        apply_default_css=False,
        elem_id=elem_id,
        **options,
    )


def message(text: str, kind: str = "info") -> dict[str, Any]:
    """A `message` prop for the workstation (shown as a sentence inside it; never an error state)."""
    return {"text": text, "kind": kind, "nonce": time.monotonic_ns()}
