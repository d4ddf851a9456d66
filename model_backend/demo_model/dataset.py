"""Training examples for the demo model: phantoms through the app's image path, MAIRA-2 prompts, targets.

Images take exactly the route an upload takes: phantom array -> PNG bytes ->
`images.load_image_bytes` -> `XrayImage.display` -> PIL -> `Maira2Processor`. Each phantom is
rendered once; its processed images are kept as uint8 crops (the processor's pixel values are an
exact function of them, checked when cached), so training can draw a fresh prompt context for
every example without touching full-resolution pixels again.

Prompts are tokenised as the local backend tokenises them at inference (the official chat
messages rendered with the chat template, `<image>` expanded, BOS added); the target follows as
`tokenizer(target) + eos`. For grounded reporting this equals the official
`format_and_preprocess_reporting_input(..., assistant_text=target)` token for token (checked
when a phantom is cached); for plain-text targets the official call would merge the space after
`ASSISTANT:` into the first word, which the model never sees at inference, so the inference
tokenisation wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from model_backend.boxes import clip_box, image_to_model_box
from model_backend.demo_model.phantoms import (
    KINDS,
    SIDES,
    ZONES,
    Phantom,
    PhantomFinding,
    render_phantom,
    report_findings,
    to_png_bytes,
)
from model_backend.images import load_image_bytes
from model_backend.maira2.parsing import format_grounded
from model_backend.maira2.processing import ImagePreprocessing, Maira2Processor
from model_backend.types import Box

ImageReport = Sequence[tuple[str, Box | None]]  # sentences with image-frame boxes
_FOCAL_NOUNS = {"nodule": "nodule", "mass": "mass", "consolidation": "consolidation"}


@dataclass(frozen=True)
class Mix:
    """How examples are drawn: task shares and how often each optional prompt part is present."""

    grounded: float = 0.75
    findings: float = 0.125  # the rest is phrase grounding
    lateral: float = 0.5  # when the phantom has a lateral view
    prior: float = 0.6  # when the phantom has a prior
    prior_report: float = 0.75  # when the prior image is used
    section: float = 0.5  # each of indication, technique, comparison


@dataclass(frozen=True)
class PhantomRecord:
    """One rendered phantom, reduced to what training needs (no full-resolution pixels)."""

    seed: int
    width: int
    height: int
    crops: dict[str, np.ndarray]  # view -> processed uint8 crop (H, W)
    report: tuple[tuple[str, Box | None], ...]  # without prior: sentence, image-frame box
    report_with_prior: tuple[tuple[str, Box | None], ...]
    findings: tuple[PhantomFinding, ...]
    prior_findings: tuple[PhantomFinding, ...]  # boxes in the prior image's pixels
    indication: str
    technique: str
    comparison: str
    prior_report: str | None


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + target (+ eos), where the target starts, and the views in prompt order."""

    input_ids: list[int]
    target_start: int
    views: tuple[str, ...]


def phrase_variants(finding: PhantomFinding) -> list[str]:
    """Phrases a user might type to ground `finding`: a short noun phrase and the full sentence."""
    if finding.kind == "cardiomegaly":
        short = ["cardiomegaly", "enlarged heart"]
    elif finding.kind == "effusion":
        short = [f"{finding.side} pleural effusion"]
    elif finding.kind == "pneumothorax":
        short = [f"{finding.side} pneumothorax", f"{finding.side} apical pneumothorax"]
    else:
        short = [f"{_FOCAL_NOUNS[finding.kind]} in the {finding.side} {finding.zone} zone"]
    return [*short, finding.sentence.rstrip(".")]


def all_phrases() -> list[str]:
    """Every short phrase `phrase_variants` can produce (for tokenizer training)."""
    out = ["cardiomegaly", "enlarged heart"]
    for side in SIDES:
        out += [f"{side} pleural effusion", f"{side} pneumothorax", f"{side} apical pneumothorax"]
        out += [f"{noun} in the {side} {zone} zone" for noun in _FOCAL_NOUNS.values() for zone in ZONES]
    return out


def model_boxed(report: ImageReport, width: int, height: int) -> list[tuple[str, list[Box] | None]]:
    """Image-frame boxes -> model-frame boxes (snapped to bins later by `format_grounded`)."""
    return [(s, None if b is None else [image_to_model_box(b, width, height)]) for s, b in report]


def grounded_target(report: ImageReport, width: int, height: int) -> str:
    return format_grounded(model_boxed(report, width, height))


def findings_target(report: ImageReport) -> str:
    return " ".join(sentence for sentence, _ in report)


def phrase_target(phrase: str, image_box: Box, width: int, height: int) -> str:
    return format_grounded([(phrase, [image_to_model_box(image_box, width, height)])])


def phantom_images(phantom: Phantom) -> dict[str, Image.Image]:
    """The phantom's views as the app sees them: PNG bytes -> load_image_bytes -> display -> PIL."""
    arrays = {"frontal": phantom.frontal, "lateral": phantom.lateral, "prior": phantom.prior_frontal}
    return {
        view: Image.fromarray(load_image_bytes(to_png_bytes(arr), f"{view}.png").display)
        for view, arr in arrays.items()
        if arr is not None
    }


def pixels_to_crop(pixel_values: torch.Tensor, prep: ImagePreprocessing) -> np.ndarray:
    """Invert the processor's rescale + normalise on one image (3, H, W) -> uint8 crop (H, W)."""
    mean, std = prep.image_mean[0], prep.image_std[0]
    restored = (pixel_values[0].double() * std + mean) / prep.rescale_factor
    return restored.round().clamp(0, 255).to(torch.uint8).numpy()


def crop_to_pixels(crop: np.ndarray, prep: ImagePreprocessing) -> torch.Tensor:
    """uint8 crop (H, W) -> pixel values (3, H, W), computed exactly as `ImagePreprocessing` does."""
    scaled = (crop.astype(np.float64) * prep.rescale_factor).astype(np.float32)
    mean = np.float32(prep.image_mean[0])
    std = np.float32(prep.image_std[0])
    return torch.from_numpy(np.repeat(((scaled - mean) / std)[None], 3, axis=0))


def make_record(seed: int, processor: Maira2Processor, size: tuple[int, int] | None = None) -> PhantomRecord:
    """Render phantom `seed`, run its images through the app's path and the official processor call."""
    phantom = render_phantom(seed, size=size)
    images = phantom_images(phantom)
    width, height = images["frontal"].size
    with_prior = "prior" in images
    report = tuple(report_findings(phantom, with_prior=False))
    report_with_prior = tuple(report_findings(phantom, with_prior=True))
    target = grounded_target(report_with_prior if with_prior else report, width, height)
    official = processor.format_and_preprocess_reporting_input(
        images["frontal"], images.get("lateral"), images.get("prior"), phantom.indication, phantom.technique,
        phantom.comparison, phantom.prior_report, get_grounding=True, assistant_text=target,
    )  # fmt: skip
    prep = processor.image_preprocessing
    crops = {}
    for view, pixel_values in zip(images, official["pixel_values"], strict=True):
        crop = pixels_to_crop(pixel_values, prep)
        if not torch.equal(crop_to_pixels(crop, prep), pixel_values):
            raise RuntimeError(f"phantom {seed}: cached {view} crop does not reproduce the processor's pixel values")
        crops[view] = crop
    record = PhantomRecord(
        seed=seed, width=width, height=height, crops=crops, report=report, report_with_prior=report_with_prior,
        findings=phantom.findings, prior_findings=phantom.prior_findings, indication=phantom.indication,
        technique=phantom.technique, comparison=phantom.comparison, prior_report=phantom.prior_report,
    )  # fmt: skip
    mine = reporting_example(record, processor, views=tuple(images), sections=(True, True, True, True), grounded=True)
    if mine.input_ids != official["input_ids"][0].tolist():
        raise RuntimeError(f"phantom {seed}: training tokens differ from the official processor's")
    return record


def build_records(
    seeds: Sequence[int],
    processor: Maira2Processor,
    size_for: Callable[[int], tuple[int, int] | None] = lambda seed: None,
    progress: Callable[[int, int], None] | None = None,
) -> list[PhantomRecord]:
    """`make_record` for each seed, in order; `progress(done, total)` now and then."""
    records = []
    for index, seed in enumerate(seeds):
        records.append(make_record(seed, processor, size_for(seed)))
        if progress is not None and ((index + 1) % 250 == 0 or index + 1 == len(seeds)):
            progress(index + 1, len(seeds))
    return records


def _tokenise(processor: Maira2Processor, prompt: str, target: str, views: tuple[str, ...]) -> Example:
    tokenizer = processor.tokenizer
    prompt_ids = tokenizer(processor.expand_image_tokens(prompt))["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Example(prompt_ids + target_ids, len(prompt_ids), views)


def reporting_example(
    record: PhantomRecord,
    processor: Maira2Processor,
    *,
    views: tuple[str, ...],
    sections: tuple[bool, bool, bool, bool],
    grounded: bool,
) -> Example:
    """A (grounded) reporting example with the given views and prompt sections (indication,
    technique, comparison, prior report) switched on or off."""
    with_prior = "prior" in views
    indication, technique, comparison, prior_report = (
        text if on else None
        for text, on in zip(
            (record.indication, record.technique, record.comparison, record.prior_report), sections, strict=True
        )
    )
    messages = processor._construct_chat_messages_reporting(
        has_prior=with_prior, has_lateral="lateral" in views, indication=indication, technique=technique,
        comparison=comparison, prior_report=prior_report, get_grounding=grounded,
    )  # fmt: skip
    report = record.report_with_prior if with_prior else record.report
    target = grounded_target(report, record.width, record.height) if grounded else findings_target(report)
    return _tokenise(processor, processor._render(messages, None), target, views)


def phrase_example(record: PhantomRecord, processor: Maira2Processor, finding: PhantomFinding, phrase: str) -> Example:
    messages = processor._construct_chat_messages_phrase_grounding(phrase)
    target = phrase_target(phrase, finding.image_box, record.width, record.height)
    return _tokenise(processor, processor._render(messages, None), target, ("frontal",))


def sample_example(record: PhantomRecord, processor: Maira2Processor, rng: np.random.Generator, mix: Mix) -> Example:
    """A random task and prompt context for one phantom."""
    draw = rng.random()
    task = "grounded" if draw < mix.grounded else "findings" if draw < mix.grounded + mix.findings else "phrase"
    if task == "phrase" and record.findings:
        finding = record.findings[int(rng.integers(len(record.findings)))]
        phrases = phrase_variants(finding)
        return phrase_example(record, processor, finding, phrases[int(rng.integers(len(phrases)))])
    views = ["frontal"]
    if "lateral" in record.crops and rng.random() < mix.lateral:
        views.append("lateral")
    use_prior = "prior" in record.crops and rng.random() < mix.prior
    if use_prior:
        views.append("prior")
    sections = (
        bool(rng.random() < mix.section),
        bool(rng.random() < mix.section),
        bool(rng.random() < mix.section),
        bool(use_prior and rng.random() < mix.prior_report),
    )
    return reporting_example(record, processor, views=tuple(views), sections=sections, grounded=task != "findings")


FINDING_TYPES: tuple[tuple[str, str | None], ...] = (
    *((kind, side) for kind in KINDS if kind != "cardiomegaly" for side in SIDES),
    ("cardiomegaly", None),
)
N_PATCH_TARGETS = len(KINDS) + len(FINDING_TYPES)


def patch_targets(findings: Sequence[PhantomFinding], width: int, height: int, grid: int) -> np.ndarray:
    """(grid * grid, N_PATCH_TARGETS) targets per image patch (row-major, as the vision tower orders
    them): the fraction of the patch covered by the model-frame boxes of each finding kind, then
    whether each finding type (kind + side) is anywhere in the image (the same for every patch)."""
    edges = np.arange(grid + 1) / grid
    out = np.zeros((grid, grid, N_PATCH_TARGETS), dtype=np.float32)
    for finding in findings:
        box = clip_box(image_to_model_box(finding.image_box, width, height))
        cover_x = np.clip(np.minimum(edges[1:], box.x_max) - np.maximum(edges[:-1], box.x_min), 0, None) * grid
        cover_y = np.clip(np.minimum(edges[1:], box.y_max) - np.maximum(edges[:-1], box.y_min), 0, None) * grid
        kind = KINDS.index(finding.kind)
        out[:, :, kind] = np.maximum(out[:, :, kind], np.outer(cover_y, cover_x))
        side = None if finding.kind == "cardiomegaly" else finding.side
        out[:, :, len(KINDS) + FINDING_TYPES.index((finding.kind, side))] = 1.0
    return out.reshape(grid * grid, N_PATCH_TARGETS)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L), right-padded
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L): next-token targets at positions that predict the target, else -100
    pixel_values: torch.Tensor  # (n_images, 3, H, W) in prompt order, example by example
    patch_targets: torch.Tensor  # (n_images, n_patches, N_PATCH_TARGETS): see `patch_targets`
    patch_weights: torch.Tensor  # (n_images,): 1 for frontal and prior views (boxes known), 0 for lateral


def collate(
    examples: Sequence[Example], records: Sequence[PhantomRecord], pad_id: int, prep: ImagePreprocessing, grid: int
) -> Batch:
    """Right-pad a batch; `labels[b, t]` is the token at t + 1 when t + 1 is in the target.
    `grid` is the vision tower's patches per side (for the auxiliary patch targets)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    pixels, targets, weights = [], [], []
    for row, (example, record) in enumerate(zip(examples, records, strict=True)):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, example.target_start - 1 : n - 1] = ids[row, example.target_start : n]
        for view in example.views:
            pixels.append(crop_to_pixels(record.crops[view], prep))
            boxed = {"frontal": record.findings, "prior": record.prior_findings}.get(view, ())
            targets.append(torch.from_numpy(patch_targets(boxed, record.width, record.height, grid)))
            weights.append(0.0 if view == "lateral" else 1.0)
    return Batch(ids, mask, labels, torch.stack(pixels), torch.stack(targets), torch.tensor(weights))
