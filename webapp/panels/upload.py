"""The Upload tab: frontal (required), lateral and prior frontal as PNG/JPEG/DICOM, opened in the Review tab.

An opened upload is kept in memory (`webapp.services.UploadRegistry`) under its images key, so
the address `?upload=<key>` reopens it while the server runs.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import gradio as gr

from model_backend.images import ImageLoadError, load_image_bytes
from model_backend.prompt_limits import MAX_SECTION_CHARS, SECTIONS
from model_backend.types import PromptContext, Study, XrayImage
from webapp.panels.review import ReviewPanel
from webapp.services import AppServices
from webapp.state import nav_value
from webapp.viewer import crop_outline_image


def read_image(path: str | None, label: str, required: bool = False) -> XrayImage | None:
    """An uploaded file -> XrayImage; `ImageLoadError` with a sentence naming the view when it cannot be used."""
    if not path:
        if required:
            raise ImageLoadError("missing", f"The {label} image is required.")
        return None
    try:
        return load_image_bytes(Path(path).read_bytes(), name=Path(path).name)
    except ImageLoadError as err:
        raise ImageLoadError(err.reason, f"{label.capitalize()} image: {err.message}") from err


def build(services: AppServices, review: ReviewPanel, tabs: gr.Tabs) -> None:
    """Lay out the Upload tab and wire it to the Review tab (call inside its `gr.Tab`)."""
    gr.Markdown(
        "PNG, JPEG (8/16-bit) or DICOM. The outlined square is what the model sees; the dimmed margins are "
        "cropped away. Uploads stay in this server's memory only (the newest few), never on disk."
    )
    with gr.Row():
        files = [
            gr.File(label=label, type="filepath", elem_id=f"up-{key}")
            for label, key in (("Frontal (required)", "frontal"), ("Lateral", "lateral"), ("Prior frontal", "prior"))
        ]
    with gr.Row():
        previews = [
            gr.Image(label=f"{name}: model crop", interactive=False) for name in ("Frontal", "Lateral", "Prior")
        ]
    sections = [
        gr.Textbox(label=label, max_length=MAX_SECTION_CHARS)
        for label in ("Indication", "Technique", "Comparison", "Prior report")
    ]
    open_button = gr.Button("Open as study", variant="primary", elem_id="open-upload")
    status = gr.HTML(elem_id="upload-msg")

    def preview(path: str | None) -> Any:
        if not path:
            return None
        try:
            image = read_image(path, "this")
        except ImageLoadError as err:
            gr.Warning(err.message.replace("<", "‹").replace(">", "›"))
            return None
        return None if image is None else crop_outline_image(image)

    def open_upload(frontal: str | None, lateral: str | None, prior: str | None, *texts: str) -> tuple[Any, ...]:
        try:
            study = Study(
                study_id="upload",
                frontal=read_image(frontal, "frontal", required=True),  # type: ignore[arg-type]
                lateral=read_image(lateral, "lateral"),
                prior_frontal=read_image(prior, "prior frontal"),
                context=PromptContext(**dict(zip(SECTIONS, (t.strip() or None for t in texts), strict=True))),
            )
        except ImageLoadError as err:
            return gr.update(), gr.update(), _error(f"Upload rejected: {err.message}")
        key = services.uploads.add(study)
        target = nav_value(f"upload={key}", push=True, nonce=str(time.monotonic_ns()))
        return target, gr.Tabs(selected="review"), "<p>Opened the uploaded study in the Review tab.</p>"

    for file, image in zip(files, previews, strict=True):
        file.change(preview, file, image)
    open_button.click(open_upload, [*files, *sections], [review.nav_target, tabs, status])


def _error(text: str) -> str:
    return f"<div class='error-box'>{html.escape(text)}</div>"
