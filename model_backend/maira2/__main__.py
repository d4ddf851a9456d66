"""`python -m model_backend.maira2 --check SNAPSHOT`: load a MAIRA-2 snapshot and print what it is.

Prints parameter counts (total, vision, projector, language), dtype, device, image geometry,
image tokens per image (and the vision tower's actual feature count), vocabulary size, the
grounding tokens, whether the chat template renders the MAIRA-2 prompt, and a one-step smoke
forward. Exits 1 with a message on the first failed check.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_backend.maira2.modeling import Maira2ForConditionalGeneration, default_device_and_dtype, load_model
from model_backend.maira2.processing import Maira2Processor
from model_backend.maira2.snapshot import GROUNDING_TOKENS

EXPECTED_PROMPT_START = (
    "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  USER:  "
    "Given the current frontal image only<image>"
)
EXPECTED_PROMPT_END = "  ASSISTANT: "

Facts = list[tuple[str, str]]


class CheckError(RuntimeError):
    """A snapshot failed a check; the message says which and why."""


def load(path: str, device: str | None, dtype: str | None) -> tuple[Maira2ForConditionalGeneration, Maira2Processor]:
    local = Path(path).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        raise CheckError(f"{path} is a folder but not a MAIRA-2 snapshot: it has no config.json")
    if path.startswith(("/", ".", "~")) and not local.exists():
        raise CheckError(f"the snapshot folder {path} does not exist")
    auto_device, auto_dtype = default_device_and_dtype()
    torch_dtype = auto_dtype if dtype is None else getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise CheckError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    try:
        processor = Maira2Processor.from_pretrained(path)
        model = load_model(path, torch_dtype, torch.device(device) if device else auto_device)
    except (OSError, ValueError) as err:
        raise CheckError(f"cannot load {path}: {err}") from err
    return model, processor


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_facts(model: Maira2ForConditionalGeneration, processor: Maira2Processor) -> Facts:
    vision, text = model.config.vision_config, model.config.text_config
    prep = processor.image_preprocessing
    parts = [
        ("vision tower", model.vision_tower, f"{vision.model_type}, {vision.num_hidden_layers} layers"),
        ("projector", model.multi_modal_projector, f"{model.config.projector_n_layers} layers"),
        ("language model", model.language_model, f"{text.model_type}, {text.num_hidden_layers} layers"),
    ]
    geometry = f"{vision.image_size} / {vision.patch_size}"
    crop = f"processor crop {prep.crop_width}x{prep.crop_height}, patch {processor.patch_size}"
    vocab = f"{len(processor.tokenizer)} tokens, {model.get_input_embeddings().num_embeddings} embeddings"
    return [
        ("parameters", f"{count_parameters(model):,}"),
        *[(f"  {name}", f"{count_parameters(module):,} ({what})") for name, module, what in parts],
        ("dtype", str(model.dtype).removeprefix("torch.")),
        ("device", str(model.device)),
        ("image size / patch", f"{geometry} ({crop})"),
        ("image tokens per image", str(processor.num_image_tokens)),
        ("vocab size", vocab),
    ]


def check_vocabulary(model: Maira2ForConditionalGeneration, processor: Maira2Processor) -> Facts:
    vocab = processor.tokenizer.get_vocab()
    missing = [t for t in GROUNDING_TOKENS if t not in vocab]
    if missing:
        raise CheckError(f"{len(missing)} grounding tokens are missing from the tokenizer, e.g. {missing[:5]}")
    if max(vocab.values()) >= model.get_input_embeddings().num_embeddings:
        raise CheckError("the tokenizer has token ids beyond the model's embedding table")
    if processor.image_token_id != model.config.image_token_index:
        raise CheckError(
            f"<image> is token {processor.image_token_id} in the tokenizer but {model.config.image_token_index} "
            "in config.json"
        )
    return [("grounding tokens", f"all {len(GROUNDING_TOKENS)} present")]


def smoke_image(width: int = 600, height: int = 500) -> Image.Image:
    """A synthetic non-square grayscale picture (bright disc on a ramp)."""
    yy, xx = np.mgrid[0:height, 0:width]
    picture = xx / width * 120 + 100 * ((xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (height / 4) ** 2)
    return Image.fromarray(picture.astype(np.uint8))


def check_prompt(processor: Maira2Processor) -> Facts:
    text, _ = processor.format_reporting_input(smoke_image(), None, None, None, None, None, None)
    if not text.startswith(EXPECTED_PROMPT_START) or not text.endswith(EXPECTED_PROMPT_END):
        raise CheckError(f"the chat template renders an unexpected prompt: {text[:160]!r} ... {text[-40:]!r}")
    return [("chat template", "renders the MAIRA-2 prompt (system, USER, images, ASSISTANT)")]


def check_forward(model: Maira2ForConditionalGeneration, processor: Maira2Processor) -> Facts:
    """One forward pass of a frontal-only phrase-grounding prompt; logits must be finite."""
    start = time.perf_counter()
    inputs = processor.format_and_preprocess_phrase_grounding_input(smoke_image(), "pleural effusion")
    with torch.inference_mode():
        features = model.get_image_features(inputs["pixel_values"])
        if features.shape[1] != processor.num_image_tokens:
            raise CheckError(
                f"the vision tower gives {features.shape[1]} features per image but the processor inserts "
                f"{processor.num_image_tokens} image tokens"
            )
        ids = inputs["input_ids"].to(model.device)
        embeds = model.embed_prompt(ids, features)
        logits = model.language_model(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"].to(model.device), logits_to_keep=1
        ).logits
    if not torch.isfinite(logits).all():
        raise CheckError("the smoke forward produced non-finite logits")
    next_token = processor.tokenizer.convert_ids_to_tokens(int(logits[0, -1].argmax()))
    return [
        ("vision features per image", str(features.shape[1])),
        ("smoke forward", f"{ids.shape[1]} tokens in {time.perf_counter() - start:.2f} s, next token {next_token!r}"),
    ]


def check_snapshot(path: str, device: str | None = None, dtype: str | None = None, forward: bool = True) -> Facts:
    """Load and check a snapshot; facts as (name, value) rows; raises CheckError on the first failure."""
    model, processor = load(path, device, dtype)
    facts = [("snapshot", path), *model_facts(model, processor)]
    facts += check_vocabulary(model, processor) + check_prompt(processor)
    if forward:
        facts += check_forward(model, processor)
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_backend.maira2", description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="SNAPSHOT", required=True, help="snapshot folder or hub id")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--no-forward", action="store_true", help="skip the smoke forward pass")
    args = parser.parse_args(argv)
    try:
        facts = check_snapshot(args.check, args.device, args.dtype, forward=not args.no_forward)
    except CheckError as err:
        print(f"check failed: {err}", file=sys.stderr)
        return 1
    width = max(len(name) for name, _ in facts)
    for name, value in facts:
        print(f"{name.ljust(width)}  {value}")
    print("OK: the snapshot loads and behaves like MAIRA-2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
