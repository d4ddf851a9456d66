"""MAIRA-2 configuration: a Llava configuration with a deeper projector, registered as `maira2`."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlavaConfig


@strict
class Maira2Config(LlavaConfig):
    """Llava config (Dinov2 vision backbone + Llama text model) plus `projector_n_layers`.

    Official `config.json` files carry an `auto_map` pointing at remote code; it is dropped on
    load, so nothing from the checkpoint repository is ever executed.
    """

    model_type = "maira2"

    projector_n_layers: int = 4
    vision_feature_layer: int | list[int] = -1

    def __post_init__(self, **kwargs):
        kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)
        self.auto_map = None

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        config_dict = {k: v for k, v in config_dict.items() if k != "auto_map"}
        return super().from_dict(config_dict, **kwargs)


AutoConfig.register("maira2", Maira2Config, exist_ok=True)
