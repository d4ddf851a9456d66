"""Native MAIRA-2 for transformers 5: Dinov2 backbone -> MLP projector -> Llama causal LM.

Module attribute names reproduce the official checkpoint's key prefixes exactly
(`vision_tower.`, `multi_modal_projector.layers.N.`, `language_model.model.`,
`language_model.lm_head.`), so official `model.safetensors` shards load without renaming and
without `trust_remote_code`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import AutoBackbone, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from model_backend.maira2.configuration import Maira2Config


class Maira2MultiModalProjector(nn.Module):
    """Linear, then (activation, Linear) x (n - 1); biases on. Keys: `layers.0`, `layers.2`, ..."""

    def __init__(self, config: Maira2Config) -> None:
        super().__init__()
        if config.projector_n_layers < 1:
            raise ValueError(f"projector_n_layers must be >= 1, got {config.projector_n_layers}")
        text_hidden = config.text_config.hidden_size
        modules: list[nn.Module] = [nn.Linear(config.vision_config.hidden_size, text_hidden, bias=True)]
        for _ in range(config.projector_n_layers - 1):
            modules += [ACT2FN[config.projector_hidden_act], nn.Linear(text_hidden, text_hidden, bias=True)]
        self.layers = nn.Sequential(*modules)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.layers(image_features)


class Maira2ForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """MAIRA-2: image features replace the `<image>` placeholder embeddings of the prompt."""

    config_class = Maira2Config
    config: Maira2Config
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules: ClassVar[list[str]] = ["LlamaDecoderLayer", "Dinov2Layer"]

    def __init__(self, config: Maira2Config) -> None:
        super().__init__(config)
        self.vision_tower = AutoBackbone.from_config(config.vision_config)
        self.multi_modal_projector = Maira2MultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n_images, 3, H, W) -> (n_images, n_patches, text_hidden).

        Uses the backbone's `feature_maps` (hidden states after its final layernorm); the
        "default" strategy drops the CLS token.
        """
        strategy = self.config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"unknown vision_feature_select_strategy {strategy!r}")
        pixel_values = pixel_values.to(device=self.device, dtype=self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values)
        features = outputs.feature_maps[self.config.vision_feature_layer]
        if strategy == "default":
            features = features[:, 1:]
        return self.multi_modal_projector(features)

    def embed_prompt(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with each `<image>` placeholder replaced by one image feature, in order."""
        embeds = self.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.config.image_token_index
        n_placeholders = int(image_mask.sum())
        n_features = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_placeholders != n_features:
            raise ValueError(
                f"prompt has {n_placeholders} <image> tokens but the images give {n_features} features; "
                "the processor and the vision tower disagree on the image token count"
            )
        if n_features:
            flat = image_features.reshape(-1, image_features.shape[-1]).to(embeds.dtype)
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), flat)
        return embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            image_features = self.get_image_features(pixel_values) if pixel_values is not None else None
            if image_features is None and input_ids is not None and (input_ids == self.config.image_token_index).any():
                raise ValueError("the prompt contains <image> tokens but no pixel_values were given")
            inputs_embeds = self.embed_prompt(input_ids, image_features)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


def load_model(path: str, dtype: torch.dtype, device: torch.device) -> Maira2ForConditionalGeneration:
    """A snapshot's model in `dtype` on `device`, in eval mode, holding the weights once.

    It loads in the checkpoint's own dtype first: safetensors shards are memory-mapped, so those
    weights are used in place, without a copy. A cast (bf16 -> fp32 on a CPU) then goes module by
    module, in the shards' order, and each shard's mapping is released once its tensors are cast:
    the peak is the cast weights plus one shard. (Asked for fp32 directly, transformers keeps every
    shard mapped while it converts: the cast weights plus the whole checkpoint.)
    """
    model = Maira2ForConditionalGeneration.from_pretrained(path, dtype="auto")
    return model.to(device=device, dtype=dtype).eval()


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """fp32 on CPU, bf16 on CUDA."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32
