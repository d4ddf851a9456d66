"""`write_random_snapshot` (the full-size load benchmark's writer) on the tiny config: the hub's sharded
layout, the same keys and shapes as a saved model, and a snapshot that loads and checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.maira2.__main__ import check_snapshot
from model_backend.maira2.configuration import Maira2Config
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import Maira2Processor
from model_backend.maira2.snapshot import write_random_snapshot
from model_backend.types import Study


@pytest.fixture(scope="module")
def sharded(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny snapshot's config and processor, random bf16 weights in shards of at most 50 kB."""
    config = Maira2Config.from_pretrained(tiny_snapshot)
    processor = Maira2Processor.from_pretrained(tiny_snapshot)
    return write_random_snapshot(tmp_path_factory.mktemp("sharded"), config, processor, max_shard_bytes=50_000)


def test_index_names_every_key_of_a_saved_model_with_its_shard(tiny_snapshot: Path, sharded: Path) -> None:
    reference = Maira2ForConditionalGeneration.from_pretrained(str(tiny_snapshot)).state_dict()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 2
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert list(index["weight_map"]) == list(reference)  # official key names, in the saved model's order
    stored = {}
    for name in shards:
        with safe_open(str(sharded / name), framework="pt") as file:
            stored.update({key: (name, file.get_tensor(key)) for key in file.keys()})  # noqa: SIM118
    assert stored.keys() == reference.keys()
    assert all(index["weight_map"][key] == name for key, (name, _) in stored.items())
    assert all(t.dtype == torch.bfloat16 and t.shape == reference[k].shape for k, (_, t) in stored.items())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for _, t in stored.values())
    assert not (sharded / "model.safetensors").exists()


def test_random_weights_follow_the_init_rules(sharded: Path) -> None:
    model = Maira2ForConditionalGeneration.from_pretrained(str(sharded), dtype=torch.bfloat16)
    state = model.state_dict()
    assert torch.all(state["language_model.model.norm.weight"] == 1)
    assert torch.all(state["vision_tower.encoder.layer.0.layer_scale1.lambda1"] == 1)
    assert torch.all(state["multi_modal_projector.layers.0.bias"] == 0)
    weight = state["language_model.model.layers.0.self_attn.q_proj.weight"].float()
    assert 0.015 < weight.std() < 0.025 and abs(weight.mean()) < 0.005


def test_loads_without_missing_keys_and_passes_the_check(sharded: Path, tiny_study: Study) -> None:
    config = json.loads((sharded / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["architectures"] == ["Maira2ForConditionalGeneration"]
    _, info = Maira2ForConditionalGeneration.from_pretrained(str(sharded), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    facts = dict(check_snapshot(str(sharded), device="cpu", dtype="bfloat16"))
    assert facts["dtype"] == "bfloat16" and facts["image tokens per image"] == facts["vision features per image"]
    backend = LocalBackend(str(sharded), device="cpu", dtype="bfloat16", settings=GenerationSettings(3, 3, 3))
    assert backend.generate(tiny_study, [tiny_study.context])[0].study_id == tiny_study.study_id
