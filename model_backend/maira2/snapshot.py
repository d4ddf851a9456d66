"""Build MAIRA-2 snapshots in the official folder layout: tokenizer, processor files, config, weights.

Used by the tests (a tiny randomly initialised snapshot), the demo-model trainer and the
full-size load benchmark (random weights streamed into sharded safetensors). The files and key
names match `microsoft/maira-2`, so loading goes through exactly the same code as the real
checkpoint.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
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
# Rows of the official embedding and LM head: Vicuna's 32,000 tokens + the 204 grounding tokens +
# `<image>` and two more image tokens of the official tokenizer (ids 32204-32206).
OFFICIAL_VOCAB_SIZE = 32207
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A small Llama-style (metaspace BPE) tokenizer with MAIRA-2's grounding and image tokens.

    Grounding tokens are added as normal (non-special) tokens, so `skip_special_tokens=True`
    keeps them in the decoded text, as with the official tokenizer; `<image>` is special.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = [chr(c) for c in range(32, 127)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
    )
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
    _finish_snapshot(out, processor)
    return out


def write_random_snapshot(
    out_dir: str | Path,
    config: Maira2Config,
    processor: Maira2Processor,
    *,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 5 * 10**9,
    seed: int = 0,
) -> Path:
    """A randomly initialised snapshot of any size, as `model-0000i-of-0000n.safetensors` shards plus
    `model.safetensors.index.json` (the hub's layout for large checkpoints).

    The model is built on the meta device for its key names and shapes only; each tensor is then
    drawn and written on its own, so memory never holds more than one tensor. Norm weights and layer
    scales are 1, biases 0, everything else N(0, 0.02) (the configs' `initializer_range`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = Maira2ForConditionalGeneration(config)
    shapes = [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]
    shards = _split_shards(shapes, dtype.itemsize, max_shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(out / name, shard, dtype, lambda key, shape: _random_tensor(key, shape, dtype, generator))
        weight_map.update(dict.fromkeys((key for key, _ in shard), name))
    total = sum(math.prod(shape) for _, shape in shapes) * dtype.itemsize
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    model.config.dtype = dtype
    model.config.save_pretrained(out)
    tokenizer = processor.tokenizer
    model.generation_config.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.generation_config.save_pretrained(out)
    _finish_snapshot(out, processor)
    return out


def _finish_snapshot(out: Path, processor: Maira2Processor) -> None:
    """Processor files, and the official `architectures` and `auto_map` in config.json."""
    processor.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["Maira2ForConditionalGeneration"]
    config["auto_map"] = {
        "AutoConfig": "configuration_maira2.Maira2Config",
        "AutoModelForCausalLM": "modeling_maira2.Maira2ForConditionalGeneration",
    }
    config_path.write_text(json.dumps(config, indent=2))


Shapes = list[tuple[str, tuple[int, ...]]]


def _split_shards(shapes: Shapes, itemsize: int, max_shard_bytes: int) -> list[Shapes]:
    """Consecutive tensors grouped into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[Shapes] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _write_safetensors(
    path: Path, shapes: Shapes, dtype: torch.dtype, make: Callable[[str, tuple[int, ...]], torch.Tensor]
) -> None:
    """A safetensors file written tensor by tensor: the header (names, shapes, offsets) first, then
    each tensor's bytes as `make` returns it."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes:
            tensor = make(name, shape)
            file.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    module, _, leaf = name.rpartition(".")
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    if leaf == "lambda1" or (leaf == "weight" and "norm" in module.rpartition(".")[2]):
        return torch.ones(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)


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
