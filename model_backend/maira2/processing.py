"""MAIRA-2 processor: prompt formatting, image preprocessing and output parsing.

Public method names and results follow the official `Maira2Processor`
(`format_reporting_input`, `format_phrase_grounding_input`,
`format_and_preprocess_reporting_input`, `format_and_preprocess_phrase_grounding_input`,
`convert_output_to_plaintext_or_grounded_sequence`), without `trust_remote_code`.

Image pipeline (official): grayscale, min-max to uint8 by truncation, RGB, shortest edge ->
`size` bicubic, centre crop, rescale 1/255, normalise with mean 0.5307 / std 0.2583.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from model_backend.boxes import model_to_image_box
from model_backend.maira2.parsing import StrictResult, parse_strict
from model_backend.types import Box

IMAGE_TOKEN = "<image>"
SYSTEM_PROMPT = "You are an expert radiology assistant tasked with interpreting a chest X-ray study."
# Renders: SYSTEM + "  USER:  " + user content + "  ASSISTANT: " (+ assistant text + eos when training).
CHAT_TEMPLATE = (
    "{{- '" + SYSTEM_PROMPT + " ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- ' USER:  ' -}}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}{%- elif item['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- endif -%}{%- endfor -%}{{- ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ASSISTANT: ' -}}"
    "{%- for item in message['content'] -%}{{- item['text'] -}}{%- endfor -%}{{- eos_token -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT: ' -}}{%- endif -%}"
)
ChatMessages = list[dict[str, Any]]


class ConstantImageError(ValueError):
    """Raised for an image whose pixels are all equal: min-max normalisation is undefined (0/0)."""


@dataclass(frozen=True)
class ImagePreprocessing:
    """The image half of the processor, as read from `preprocessor_config.json`."""

    shortest_edge: int = 518
    crop_height: int = 518
    crop_width: int = 518
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = (0.5307, 0.5307, 0.5307)
    image_std: tuple[float, ...] = (0.2583, 0.2583, 0.2583)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImagePreprocessing:
        size = config.get("size", {})
        crop = config.get("crop_size", {})
        edge = size.get("shortest_edge", size.get("height", 518)) if isinstance(size, dict) else int(size)
        crop_h = crop.get("height", edge) if isinstance(crop, dict) else int(crop)
        crop_w = crop.get("width", edge) if isinstance(crop, dict) else int(crop)
        return cls(
            shortest_edge=int(edge),
            crop_height=int(crop_h),
            crop_width=int(crop_w),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            image_mean=tuple(config.get("image_mean", cls.image_mean)),
            image_std=tuple(config.get("image_std", cls.image_std)),
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "image_processor_type": "BitImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": True,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shortest-edge resize (long side truncated, as transformers does)."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One normalised L image -> float32 (3, crop_h, crop_w)."""
        rgb = image.convert("RGB")
        resized = np.asarray(rgb.resize(self.resized_size(*rgb.size), resample=self.resample, reducing_gap=None))
        height, width = resized.shape[:2]
        top, left = (height - self.crop_height) // 2, (width - self.crop_width) // 2
        cropped = resized[top : top + self.crop_height, left : left + self.crop_width]
        scaled = (cropped.astype(np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        return ((scaled - mean) / std).transpose(2, 0, 1).copy()


class Maira2Processor:
    """Tokenizer + image preprocessing + MAIRA-2 prompt templates, loadable from a snapshot."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_preprocessing: ImagePreprocessing | None = None,
        patch_size: int = 14,
        vision_feature_select_strategy: str = "default",
        num_additional_image_tokens: int = 1,
        chat_template: str | None = None,
        num_box_coord_bins: int = 100,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_preprocessing = image_preprocessing or ImagePreprocessing()
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        self.num_box_coord_bins = num_box_coord_bins
        self.image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    # ----------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, path: str | Path, **hub_kwargs: Any) -> Maira2Processor:
        """Read an official-layout snapshot folder (or hub id): tokenizer, preprocessor, processor, chat template."""
        tokenizer = AutoTokenizer.from_pretrained(str(path), **hub_kwargs)
        preprocessor = _read_json(path, "preprocessor_config.json", hub_kwargs) or {}
        processor_cfg = _read_json(path, "processor_config.json", hub_kwargs) or {}
        template_cfg = _read_json(path, "chat_template.json", hub_kwargs) or {}
        # Official snapshots omit num_additional_image_tokens; Dinov2 adds exactly one (CLS), and the
        # "default" strategy drops it again. Defaulting to 0 (as transformers >= 4.47 does) loses one token.
        return cls(
            tokenizer=tokenizer,
            image_preprocessing=ImagePreprocessing.from_config(preprocessor),
            patch_size=int(processor_cfg.get("patch_size", 14)),
            vision_feature_select_strategy=processor_cfg.get("vision_feature_select_strategy", "default"),
            num_additional_image_tokens=int(processor_cfg.get("num_additional_image_tokens", 1)),
            chat_template=template_cfg.get("chat_template"),
            num_box_coord_bins=int(processor_cfg.get("num_box_coord_bins", 100)),
        )

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the official file layout (tokenizer files + three processor JSON files)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(out))
        (out / "preprocessor_config.json").write_text(
            json.dumps({**self.image_preprocessing.to_config(), "processor_class": "Maira2Processor"}, indent=2)
        )
        processor_cfg = {
            "processor_class": "Maira2Processor",
            "patch_size": self.patch_size,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "num_box_coord_bins": self.num_box_coord_bins,
            "auto_map": {"AutoProcessor": "processing_maira2.Maira2Processor"},
        }
        (out / "processor_config.json").write_text(json.dumps(processor_cfg, indent=2))
        (out / "chat_template.json").write_text(json.dumps({"chat_template": self.chat_template}, indent=2))

    # ----------------------------------------------------------------- images
    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens per image = features the vision tower yields for one image."""
        prep = self.image_preprocessing
        patches = (prep.crop_height // self.patch_size) * (prep.crop_width // self.patch_size)
        extra = self.num_additional_image_tokens - (1 if self.vision_feature_select_strategy == "default" else 0)
        return patches + extra

    @staticmethod
    def _normalize_image(image: Image.Image) -> Image.Image:
        """Official min-max normalisation to uint8 (truncating); a constant image is an error."""
        array = np.array(image.convert("L")).astype(float)
        span = array.max() - array.min()
        if span == 0:
            raise ConstantImageError("the image is blank (all pixels have the same value); nothing to normalise")
        array = (array - array.min()) / span * 255
        return Image.fromarray(array.astype(np.uint8)).convert("L")

    def _normalize_and_stack_images(
        self, current_frontal: Image.Image, current_lateral: Image.Image | None, prior_frontal: Image.Image | None
    ) -> list[Image.Image]:
        images = [current_frontal, current_lateral, prior_frontal]
        return [self._normalize_image(img) for img in images if img is not None]

    def preprocess_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Already-normalised images -> pixel_values (n, 3, crop_h, crop_w)."""
        return torch.from_numpy(np.stack([self.image_preprocessing(img) for img in images]))

    # ----------------------------------------------------------------- prompts
    @staticmethod
    def _get_section_text_or_missing_text(section: str | None) -> str:
        return section if isinstance(section, str) and len(section) > 0 else "N/A"

    @staticmethod
    def _construct_image_chat_messages_for_reporting(has_prior: bool, has_lateral: bool) -> list[dict[str, Any]]:
        pieces: list[str]
        if not has_prior and not has_lateral:
            pieces = ["Given the current frontal image only"]
        elif has_prior:
            pieces = ["Given the current frontal image"]
            if has_lateral:
                pieces.append(" the current lateral image")
            pieces.append(" and the prior frontal image")
        else:
            pieces = ["Given the current frontal image", " and the current lateral image"]
        messages: list[dict[str, Any]] = []
        for index, piece in enumerate(pieces):
            messages += [
                {"index": None, "text": piece, "type": "text"},
                {"index": index, "text": None, "type": "image"},
            ]
        return messages

    def _construct_chat_messages_reporting(
        self,
        has_prior: bool,
        has_lateral: bool,
        indication: str | None,
        technique: str | None,
        comparison: str | None,
        prior_report: str | None,
        get_grounding: bool = False,
        assistant_text: str | None = None,
    ) -> ChatMessages:
        indication, technique, comparison, prior_report = (
            self._get_section_text_or_missing_text(s) for s in (indication, technique, comparison, prior_report)
        )
        prompt = self._construct_image_chat_messages_for_reporting(has_prior=has_prior, has_lateral=has_lateral)
        if has_prior:
            prompt.append({"index": None, "text": f" PRIOR_REPORT: {prior_report}", "type": "text"})
        instruction = (
            " Provide a structured description of the findings in the radiology study in comparison to the "
            "prior frontal image."
        )
        if get_grounding:
            instruction += (
                " Each finding should be described as a self-contained plain-text sentence."
                " If the finding is groundable, locate the finding in the current frontal chest X-ray image, "
                "with bounding boxes indicating all locations where it can be seen in the current frontal "
                "image. Otherwise, generate just the ungrounded finding without bounding boxes."
            )
        instruction += f" INDICATION: {indication} TECHNIQUE: {technique} COMPARISON: {comparison}"
        prompt.append({"index": None, "text": instruction, "type": "text"})
        return self._with_assistant([{"content": prompt, "role": "user"}], assistant_text)

    @staticmethod
    def _with_assistant(messages: ChatMessages, assistant_text: str | None) -> ChatMessages:
        if assistant_text is not None:
            messages.append({"content": [{"index": None, "text": assistant_text, "type": "text"}], "role": "assistant"})
        return messages

    def _construct_chat_messages_phrase_grounding(self, phrase: str, assistant_text: str | None = None) -> ChatMessages:
        prompt = [
            {"index": None, "text": "Given the current frontal image", "type": "text"},
            {"index": 0, "text": None, "type": "image"},
            {
                "index": None,
                "text": " Repeat the following finding as a grounded phrase with bounding boxes indicating all "
                f"locations where it can be seen in the given chest X-ray image. Finding: {phrase}",
                "type": "text",
            },
        ]
        return self._with_assistant([{"content": prompt, "role": "user"}], assistant_text)

    def _render(self, messages: ChatMessages, assistant_text: str | None) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=assistant_text is None, tokenize=False
        )

    def format_reporting_input(
        self,
        current_frontal: Image.Image,
        current_lateral: Image.Image | None,
        prior_frontal: Image.Image | None,
        indication: str | None,
        technique: str | None,
        comparison: str | None,
        prior_report: str | None,
        get_grounding: bool = False,
        assistant_text: str | None = None,
    ) -> tuple[str, list[Image.Image]]:
        """Prompt text and normalised images (frontal, lateral, prior) for (grounded) reporting."""
        images = self._normalize_and_stack_images(current_frontal, current_lateral, prior_frontal)
        messages = self._construct_chat_messages_reporting(
            has_prior=prior_frontal is not None,
            has_lateral=current_lateral is not None,
            indication=indication,
            technique=technique,
            comparison=comparison,
            prior_report=prior_report,
            get_grounding=get_grounding,
            assistant_text=assistant_text,
        )
        return self._render(messages, assistant_text), images

    def format_phrase_grounding_input(
        self, frontal_image: Image.Image, phrase: str, assistant_text: str | None = None
    ) -> tuple[str, list[Image.Image]]:
        """Prompt text and normalised frontal image for phrase grounding."""
        images = self._normalize_and_stack_images(frontal_image, None, None)
        messages = self._construct_chat_messages_phrase_grounding(phrase, assistant_text)
        return self._render(messages, assistant_text), images

    def format_and_preprocess_reporting_input(
        self,
        current_frontal: Image.Image,
        current_lateral: Image.Image | None,
        prior_frontal: Image.Image | None,
        indication: str | None,
        technique: str | None,
        comparison: str | None,
        prior_report: str | None,
        get_grounding: bool = False,
        assistant_text: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        text, images = self.format_reporting_input(
            current_frontal, current_lateral, prior_frontal, indication, technique, comparison, prior_report,
            get_grounding=get_grounding, assistant_text=assistant_text,
        )  # fmt: skip
        return self(text=text, images=images, **kwargs)

    def format_and_preprocess_phrase_grounding_input(
        self, frontal_image: Image.Image, phrase: str, assistant_text: str | None = None, **kwargs: Any
    ) -> BatchFeature:
        text, images = self.format_phrase_grounding_input(frontal_image, phrase, assistant_text=assistant_text)
        return self(text=text, images=images, **kwargs)

    # ----------------------------------------------------------------- tokenising
    def expand_image_tokens(self, text: str) -> str:
        """Repeat each `<image>` so that it matches the vision tower's feature count."""
        return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.num_image_tokens)

    def __call__(
        self, text: str | list[str], images: list[Image.Image] | None = None, return_tensors: str = "pt", **kwargs: Any
    ) -> BatchFeature:
        """Tokenise (with expanded image tokens) and preprocess already-normalised images."""
        texts = [text] if isinstance(text, str) else text
        n_placeholders = sum(t.count(IMAGE_TOKEN) for t in texts)
        n_images = len(images or [])
        if n_placeholders != n_images:
            raise ValueError(f"text has {n_placeholders} {IMAGE_TOKEN} placeholders but {n_images} images were given")
        encoded = self.tokenizer([self.expand_image_tokens(t) for t in texts], return_tensors=return_tensors, **kwargs)
        data = dict(encoded)
        if images:
            data["pixel_values"] = self.preprocess_images(images)
        return BatchFeature(data=data)

    def decode(self, token_ids: Any, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def convert_output_to_plaintext_or_grounded_sequence(self, text: str) -> StrictResult:
        """Official parse of decoded output (strict; see `parsing.parse_tolerant` for the safe one)."""
        return parse_strict(text, self.num_box_coord_bins)

    @staticmethod
    def adjust_box_for_original_image_size(
        box: tuple[float, float, float, float], width: int, height: int
    ) -> tuple[float, float, float, float]:
        """Official helper, normalised to the original image; uses `boxes.model_to_image_box`."""
        image_box = model_to_image_box(Box(*box), width, height)
        return (image_box.x_min / width, image_box.y_min / height, image_box.x_max / width, image_box.y_max / height)


def _read_json(path: str | Path, name: str, hub_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    local = Path(path)
    if local.is_dir():
        file = local / name
        return json.loads(file.read_text()) if file.exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(str(path), name, **hub_kwargs)).read_text())
    except EntryNotFoundError:
        return None
