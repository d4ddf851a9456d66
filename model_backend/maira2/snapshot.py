"""Build MAIRA-2 snapshots in the official folder layout: tokenizer, processor files, config, weights.

Used by the tests (a tiny randomly initialised snapshot) and by the demo-model trainer. The
files and key names match `microsoft/maira-2`, so loading goes through exactly the same code
as the real checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from model_backend.maira2.configuration import Maira2Config
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import CHAT_TEMPLATE, IMAGE_TOKEN, ImagePreprocessing, Maira2Processor

GROUNDING_TOKENS = (
    ["<obj>", "</obj>", "<box>", "</box>"] + [f"<x{i}>" for i in range(100)] + [f"<y{i}>" for i in range(100)]
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A small Llama-style (metaspace BPE) tokenizer with MAIRA-2's grounding and image tokens.

    Grounding tokens are added as normal (non-special) tokens, so `skip_special_tokens=True`
    keeps them in the decoded text, as with the official tokenizer; `<image>` is special.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = [chr(c) for c in range(32, 127)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in GROUNDING_TOKENS])
    tokenizer.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def tiny_config(
    vocab_size: int,
    image_token_index: int,
    *,
    image_size: int = 56,
    patch_size: int = 14,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    heads: int = 4,
    projector_n_layers: int = 4,
    vision_heads: int | None = None,
    vision_intermediate: int | None = None,
    text_intermediate: int | None = None,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 3,
) -> Maira2Config:
    """A Maira2Config of the official shape (Dinov2 backbone, 4-layer projector, Llama); small by default.
    The vision tower has `heads` heads unless `vision_heads` says otherwise; MLP widths default to
    4x the hidden size."""
    return Maira2Config(
        vision_config={
            "model_type": "dinov2",
            "hidden_size": vision_hidden,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads or heads,
            "intermediate_size": vision_intermediate or vision_hidden * 4,
            "image_size": image_size,
            "patch_size": patch_size,
            "out_features": [f"stage{vision_layers}"],
            "reshape_hidden_states": False,
            "apply_layernorm": True,
            "layerscale_value": 1.0,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": text_hidden,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "intermediate_size": text_intermediate or text_hidden * 4,
            "vocab_size": vocab_size,
            "max_position_embeddings": 4096,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "tie_word_embeddings": False,
        },
        image_token_index=image_token_index,
        projector_n_layers=projector_n_layers,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(image_size // patch_size) ** 2,
    )


def make_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> Maira2Processor:
    prep = ImagePreprocessing(shortest_edge=image_size, crop_height=image_size, crop_width=image_size)
    return Maira2Processor(tokenizer, prep, patch_size=patch_size, chat_template=CHAT_TEMPLATE)


def write_snapshot(out_dir: str | Path, model: Maira2ForConditionalGeneration, processor: Maira2Processor) -> Path:
    """Save weights + config + processor files; config.json gets an official-style `auto_map`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["Maira2ForConditionalGeneration"]
    config["auto_map"] = {
        "AutoConfig": "configuration_maira2.Maira2Config",
        "AutoModelForCausalLM": "modeling_maira2.Maira2ForConditionalGeneration",
    }
    config_path.write_text(json.dumps(config, indent=2))
    return out


def default_corpus() -> list[str]:
    """Prompt and report text that a tiny tokenizer should cover."""
    return [
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.",
        "Given the current frontal image only Given the current frontal image the current lateral image"
        " and the prior frontal image and the current lateral image PRIOR_REPORT: N/A",
        "Provide a structured description of the findings in the radiology study in comparison to the prior"
        " frontal image. Each finding should be described as a self-contained plain-text sentence. If the finding"
        " is groundable, locate the finding in the current frontal chest X-ray image, with bounding boxes indicating"
        " all locations where it can be seen in the current frontal image. Otherwise, generate just the ungrounded"
        " finding without bounding boxes. INDICATION: TECHNIQUE: COMPARISON: None. Dyspnea. PA and lateral views.",
        "Repeat the following finding as a grounded phrase with bounding boxes indicating all locations where it can"
        " be seen in the given chest X-ray image. Finding: right pleural effusion",
        "There is a nodule in the right upper zone. The heart size is normal. There is no pneumothorax."
        " The lungs are clear. There is a left pleural effusion. Cardiomegaly. Consolidation.",
    ]


def build_tiny_snapshot(out_dir: str | Path, *, seed: int = 0, image_size: int = 56, patch_size: int = 14) -> Path:
    """A randomly initialised tiny MAIRA-2 snapshot in the official layout (for tests, offline)."""
    tokenizer = build_tokenizer(default_corpus(), vocab_size=400)
    processor = make_processor(tokenizer, image_size, patch_size)
    config = tiny_config(
        vocab_size=len(tokenizer),
        image_token_index=processor.image_token_id,
        image_size=image_size,
        patch_size=patch_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Maira2ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return write_snapshot(out_dir, model, processor)
