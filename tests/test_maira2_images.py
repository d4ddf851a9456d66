"""MAIRA-2 image side: token counts, pixel values against transformers' own pipeline, normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, BitImageProcessorPil

from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import ConstantImageError, ImagePreprocessing, Maira2Processor
from model_backend.maira2.snapshot import tiny_config

# The official microsoft/maira-2 processor files (num_additional_image_tokens is absent there).
OFFICIAL_PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 518, "width": 518},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.2583, 0.2583, 0.2583],
    "processor_class": "Maira2Processor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 518},
}
OFFICIAL_PROCESSOR_CONFIG = {
    "auto_map": {"AutoProcessor": "processing_maira2.Maira2Processor"},
    "num_box_coord_bins": 100,
    "patch_size": 14,
    "processor_class": "Maira2Processor",
    "vision_feature_select_strategy": "default",
}


def smooth_image(width: int, height: int, seed: int) -> Image.Image:
    """A radiograph-like 8-bit image: smooth structure plus noise, full 0..255 range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.sin(xx / (width / 7)) * np.cos(yy / (height / 5)) + rng.normal(0, 0.3, (height, width))
    scaled = (base - base.min()) / (base.max() - base.min()) * 255
    return Image.fromarray(scaled.astype(np.uint8))


@pytest.fixture(scope="module")
def tiny_processor(tiny_snapshot: Path) -> Maira2Processor:
    return Maira2Processor.from_pretrained(tiny_snapshot)


@pytest.fixture(scope="module")
def official_shape_folder(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tokenizer with the official 518 px processor files, exactly as on the hub."""
    folder = tmp_path_factory.mktemp("official_processor")
    AutoTokenizer.from_pretrained(str(tiny_snapshot)).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(OFFICIAL_PREPROCESSOR_CONFIG))
    (folder / "processor_config.json").write_text(json.dumps(OFFICIAL_PROCESSOR_CONFIG))
    return folder


@pytest.fixture(scope="module")
def model_518(tiny_processor: Maira2Processor) -> Maira2ForConditionalGeneration:
    """A 1-layer, hidden-16 Dinov2 at 518 px / patch 14 (the real vision geometry), tiny everything else."""
    tokenizer = tiny_processor.tokenizer
    config = tiny_config(
        len(tokenizer), tiny_processor.image_token_id, image_size=518, patch_size=14, vision_hidden=16,
        vision_layers=1, text_hidden=16, text_layers=1, heads=2, projector_n_layers=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return Maira2ForConditionalGeneration(config).eval()


def test_tiny_snapshot_token_count_matches_vision_features(tiny_snapshot: Path, tiny_processor) -> None:
    model = Maira2ForConditionalGeneration.from_pretrained(str(tiny_snapshot)).eval()
    pixel_values = tiny_processor.preprocess_images([smooth_image(70, 60, 0), smooth_image(60, 80, 1)])
    with torch.inference_mode():
        features = model.get_image_features(pixel_values)
    assert features.shape[:2] == (2, tiny_processor.num_image_tokens)
    assert tiny_processor.num_image_tokens == (56 // 14) ** 2


def test_official_geometry_gives_1369_tokens_per_image(official_shape_folder: Path, model_518) -> None:
    """518 / 14 = 37 x 37 = 1369 features; the processor (official files) expands `<image>` to as many."""
    processor = Maira2Processor.from_pretrained(official_shape_folder)
    assert processor.num_image_tokens == 1369
    batch = processor(text="Given the current frontal image only<image>", images=[smooth_image(700, 500, 2)])
    assert tuple(batch["pixel_values"].shape) == (1, 3, 518, 518)
    with torch.inference_mode():
        features = model_518.get_image_features(batch["pixel_values"])
        embeds = model_518.embed_prompt(batch["input_ids"], features)  # raises if the counts disagree
    assert features.shape[1] == 1369
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 1369
    assert embeds.shape[1] == batch["input_ids"].shape[1]


def test_missing_num_additional_image_tokens_is_not_off_by_one(official_shape_folder: Path) -> None:
    """transformers >= 4.47 defaults the missing key to 0 and yields 1368; Dinov2's CLS makes it 1."""
    assert "num_additional_image_tokens" not in json.loads(
        (official_shape_folder / "processor_config.json").read_text()
    )
    processor = Maira2Processor.from_pretrained(official_shape_folder)
    assert processor.num_additional_image_tokens == 1
    assert processor.num_image_tokens == 1369


def test_prompt_and_features_disagreeing_is_a_clear_error(model_518) -> None:
    ids = torch.full((1, 1368), model_518.config.image_token_index)
    with pytest.raises(ValueError, match="1368 <image> tokens but the images give 1369 features"):
        model_518.embed_prompt(ids, torch.zeros(1, 1369, 16))


@pytest.mark.parametrize("size", [(700, 500), (500, 700), (1841, 1955), (519, 1001), (400, 400)])
def test_pixel_values_match_transformers_bit_image_processor(size: tuple[int, int]) -> None:
    reference = BitImageProcessorPil(
        do_resize=True, size={"shortest_edge": 518}, resample=Image.Resampling.BICUBIC, do_center_crop=True,
        crop_size={"height": 518, "width": 518}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5307] * 3, image_std=[0.2583] * 3, do_convert_rgb=True,
    )  # fmt: skip
    image = smooth_image(*size, seed=sum(size))
    expected = reference(image, return_tensors="np")["pixel_values"][0]
    ours = ImagePreprocessing()(image)
    assert ours.shape == expected.shape == (3, 518, 518)
    assert ours.dtype == np.float32
    assert float(np.abs(ours - expected).max()) < 1e-6


def test_preprocessing_from_the_official_file_is_the_default() -> None:
    assert ImagePreprocessing.from_config(OFFICIAL_PREPROCESSOR_CONFIG) == ImagePreprocessing()


def test_min_max_normalisation_truncates(tiny_processor: Maira2Processor) -> None:
    """(20 - 10) / 100 * 255 = 25.5 -> 25 and 127.5 -> 127 (truncation, not rounding)."""
    pixels = np.full((40, 40), 60, dtype=np.uint8)
    pixels[0, 0], pixels[0, 1], pixels[0, 2] = 10, 20, 110
    _, images = tiny_processor.format_reporting_input(Image.fromarray(pixels), None, None, None, None, None, None)
    normalised = np.asarray(images[0])
    assert normalised.dtype == np.uint8
    assert (normalised[0, 0], normalised[0, 1], normalised[0, 2], normalised[5, 5]) == (0, 25, 255, 127)


def test_narrow_range_is_stretched_to_full_range(tiny_processor: Maira2Processor) -> None:
    """An 8-bit image spanning 100..200 is stretched to the full 0..255 range."""
    pixels = np.linspace(100, 200, 50 * 50).reshape(50, 50).astype(np.uint8)
    _, images = tiny_processor.format_reporting_input(Image.fromarray(pixels), None, None, None, None, None, None)
    normalised = np.asarray(images[0])
    assert (normalised.min(), normalised.max()) == (0, 255)


@pytest.mark.parametrize("which", ["frontal", "lateral", "prior"])
def test_constant_image_raises_instead_of_nan(tiny_processor: Maira2Processor, which: str) -> None:
    good, black = smooth_image(60, 70, 3), Image.fromarray(np.zeros((70, 60), dtype=np.uint8))
    images = {"frontal": good, "lateral": good, "prior": good, which: black}
    with pytest.raises(ConstantImageError, match="blank"):
        tiny_processor.format_and_preprocess_reporting_input(
            images["frontal"], images["lateral"], images["prior"], None, None, None, None
        )
