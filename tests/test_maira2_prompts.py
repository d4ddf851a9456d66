"""MAIRA-2 prompt text: every image/grounding/section combination against literal expected strings.

The expected strings are assembled here from literal pieces copied from the official processor,
never by calling the code under test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_backend.maira2.processing import Maira2Processor

HEAD = "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  USER:  "
TAIL = "  ASSISTANT: "
FINDINGS = (
    " Provide a structured description of the findings in the radiology study in comparison to the prior frontal image."
)
GROUNDING = (
    " Each finding should be described as a self-contained plain-text sentence."
    " If the finding is groundable, locate the finding in the current frontal chest X-ray image,"
    " with bounding boxes indicating all locations where it can be seen in the current frontal image."
    " Otherwise, generate just the ungrounded finding without bounding boxes."
)
SECTIONS = {
    "missing": dict.fromkeys(("indication", "technique", "comparison", "prior_report")),
    "empty": dict.fromkeys(("indication", "technique", "comparison", "prior_report"), ""),
    "present": {
        "indication": "Dyspnea, rule out effusion.",
        "technique": "PA and lateral views of the chest.",
        "comparison": "Chest radiograph from last week.",
        "prior_report": "Small left pleural effusion.",
    },
}


@pytest.fixture(scope="module")
def processor(tiny_snapshot: Path) -> Maira2Processor:
    return Maira2Processor.from_pretrained(tiny_snapshot)


def gradient(width: int, height: int, offset: int) -> Image.Image:
    """Distinct images: a ramp starting at `offset` (so each normalises to a different picture)."""
    ramp = (np.add.outer(np.arange(height), np.arange(width)) * 3 + offset) % 256
    ramp[0, 0], ramp[-1, -1] = 0, 255
    return Image.fromarray(ramp.astype(np.uint8))


def expected_image_part(has_lateral: bool, has_prior: bool) -> str:
    if not has_lateral and not has_prior:
        return "Given the current frontal image only<image>"
    if has_prior and has_lateral:
        return (
            "Given the current frontal image<image> the current lateral image<image> and the prior frontal image<image>"
        )
    if has_prior:
        return "Given the current frontal image<image> and the prior frontal image<image>"
    return "Given the current frontal image<image> and the current lateral image<image>"


def expected_reporting_prompt(has_lateral: bool, has_prior: bool, grounded: bool, sections: dict) -> str:
    shown = {k: v if v else "N/A" for k, v in sections.items()}
    text = expected_image_part(has_lateral, has_prior)
    if has_prior:
        text += " PRIOR_REPORT: " + shown["prior_report"]
    text += FINDINGS
    if grounded:
        text += GROUNDING
    text += " INDICATION: " + shown["indication"]
    text += " TECHNIQUE: " + shown["technique"]
    text += " COMPARISON: " + shown["comparison"]
    return HEAD + text + TAIL


def test_expected_strings_are_the_documented_ones() -> None:
    """Guard the test's own literals on one fully spelled-out case (frontal only, findings, all missing)."""
    assert expected_reporting_prompt(False, False, False, SECTIONS["missing"]) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  USER:  "
        "Given the current frontal image only<image> Provide a structured description of the findings in the "
        "radiology study in comparison to the prior frontal image. INDICATION: N/A TECHNIQUE: N/A COMPARISON: N/A"
        "  ASSISTANT: "
    )


@pytest.mark.parametrize(
    ("has_lateral", "has_prior", "grounded", "state"),
    list(itertools.product((False, True), (False, True), (False, True), SECTIONS)),
)
def test_reporting_prompt(
    processor: Maira2Processor, has_lateral: bool, has_prior: bool, grounded: bool, state: str
) -> None:
    frontal, lateral, prior = gradient(60, 70, 0), gradient(80, 64, 90), gradient(66, 60, 170)
    text, images = processor.format_reporting_input(
        current_frontal=frontal,
        current_lateral=lateral if has_lateral else None,
        prior_frontal=prior if has_prior else None,
        get_grounding=grounded,
        **SECTIONS[state],
    )
    assert text == expected_reporting_prompt(has_lateral, has_prior, grounded, SECTIONS[state])
    expected_sizes = [(60, 70)] + [(80, 64)] * has_lateral + [(66, 60)] * has_prior
    assert [img.size for img in images] == expected_sizes  # frontal, lateral, prior: the prompt's order
    assert all(img.mode == "L" for img in images)


def test_prior_report_is_dropped_without_a_prior_image(processor: Maira2Processor) -> None:
    text, _ = processor.format_reporting_input(gradient(60, 70, 0), None, None, "a", "b", "c", "OLD REPORT")
    assert "PRIOR_REPORT" not in text and "OLD REPORT" not in text


def test_phrase_grounding_prompt(processor: Maira2Processor) -> None:
    text, images = processor.format_phrase_grounding_input(gradient(60, 70, 0), "right pleural effusion")
    assert text == (
        HEAD + "Given the current frontal image<image> Repeat the following finding as a grounded phrase with bounding "
        "boxes indicating all locations where it can be seen in the given chest X-ray image. "
        "Finding: right pleural effusion" + TAIL
    )
    assert [img.size for img in images] == [(60, 70)]


def test_assistant_text_closes_the_turn_with_eos(processor: Maira2Processor) -> None:
    """Training prompts (assistant_text given): no generation prompt, the answer, then the eos token."""
    answer = "<obj>The lungs are clear.</obj>"
    text, _ = processor.format_reporting_input(gradient(60, 70, 0), None, None, None, None, None, None,
                                               get_grounding=True, assistant_text=answer)  # fmt: skip
    prompt = expected_reporting_prompt(False, False, True, SECTIONS["missing"])
    assert text == prompt + answer + processor.tokenizer.eos_token
    grounding_text, _ = processor.format_phrase_grounding_input(gradient(60, 70, 0), "effusion", assistant_text=answer)
    assert grounding_text.endswith(TAIL + answer + processor.tokenizer.eos_token)


def test_tokenised_prompt_has_one_block_of_image_tokens_per_image(processor: Maira2Processor) -> None:
    images = (gradient(60, 70, 0), gradient(80, 64, 90), gradient(66, 60, 170))
    batch = processor.format_and_preprocess_reporting_input(*images, "Dyspnea.", None, None, "Clear.")
    ids = batch["input_ids"][0].tolist()
    is_image = [t == processor.image_token_id for t in ids]
    starts = [i for i, flag in enumerate(is_image) if flag and (i == 0 or not is_image[i - 1])]
    assert len(starts) == 3
    assert sum(is_image) == 3 * processor.num_image_tokens
    assert all(all(is_image[s : s + processor.num_image_tokens]) for s in starts)
    assert tuple(batch["pixel_values"].shape) == (3, 3, 56, 56)
    assert ids[0] == processor.tokenizer.bos_token_id
    assert processor.tokenizer.decode(ids[: starts[0]], skip_special_tokens=True).endswith(
        "Given the current frontal image"
    )


def test_placeholder_and_image_count_must_agree(processor: Maira2Processor) -> None:
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        processor(text="<image><image>", images=[gradient(60, 70, 0)])
