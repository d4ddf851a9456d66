"""Official snapshot layout: key prefixes, save -> load round trip, inert `auto_map`, plain generate() parity."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.maira2.__main__ import main as cli_main
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import Maira2Processor
from model_backend.maira2.snapshot import GROUNDING_TOKENS, write_snapshot
from model_backend.types import PromptContext, Study, XrayImage

OFFICIAL_PREFIX = re.compile(
    r"^(language_model\.model\.|language_model\.lm_head\.|vision_tower\.|multi_modal_projector\.layers\.\d+\.)"
)


def load_pair(folder: Path) -> tuple[Maira2ForConditionalGeneration, Maira2Processor]:
    model = Maira2ForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, Maira2Processor.from_pretrained(folder)


def config_without_path(model: Maira2ForConditionalGeneration) -> dict:
    return {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}


def test_snapshot_has_the_official_files(tiny_snapshot: Path) -> None:
    names = {p.name for p in tiny_snapshot.iterdir()}
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json"}
    assert expected | {"tokenizer.json", "tokenizer_config.json", "chat_template.json"} <= names
    config = json.loads((tiny_snapshot / "config.json").read_text())
    assert config["model_type"] == "maira2"
    assert config["architectures"] == ["Maira2ForConditionalGeneration"]
    assert config["vision_config"]["model_type"] == "dinov2" and config["text_config"]["model_type"] == "llama"


def test_safetensors_keys_use_the_official_prefixes(tiny_snapshot: Path) -> None:
    with safe_open(str(tiny_snapshot / "model.safetensors"), framework="pt") as file:
        keys = list(file.keys())
    assert keys
    assert [k for k in keys if not OFFICIAL_PREFIX.match(k)] == []
    for prefix in ("language_model.model.", "language_model.lm_head.", "vision_tower.", "multi_modal_projector."):
        assert any(k.startswith(prefix) for k in keys), prefix
    projector_layers = {int(k.split(".")[2]) for k in keys if k.startswith("multi_modal_projector.")}
    assert projector_layers == {0, 2, 4, 6}  # 4 Linear layers with GELU between them, as in the official model
    assert "language_model.model.embed_tokens.weight" in keys and "language_model.lm_head.weight" in keys


def test_save_load_round_trip(tiny_snapshot: Path, tmp_path: Path) -> None:
    model, processor = load_pair(tiny_snapshot)
    copy = write_snapshot(tmp_path / "copy", model, processor)
    model2, processor2 = load_pair(copy)
    state, state2 = model.state_dict(), model2.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert config_without_path(model2) == config_without_path(model)
    assert processor2.num_image_tokens == processor.num_image_tokens
    assert processor2.image_preprocessing == processor.image_preprocessing
    assert processor2.chat_template == processor.chat_template
    text = "<obj>Nodule.<box><x1><y2><x3><y4></box></obj>"
    assert processor2.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]


def test_grounding_tokens_are_single_tokens_kept_by_decode(tiny_snapshot: Path) -> None:
    processor = Maira2Processor.from_pretrained(tiny_snapshot)
    vocab = processor.tokenizer.get_vocab()
    assert all(token in vocab for token in GROUNDING_TOKENS) and len(GROUNDING_TOKENS) == 204
    ids = [vocab[t] for t in ("<obj>", "<box>", "<x12>", "<y3>", "<x99>", "<y99>", "</box>", "</obj>")]
    assert processor.decode(ids) == "<obj><box><x12><y3><x99><y99></box></obj>"


def test_auto_map_is_never_executed(tiny_snapshot: Path, tmp_path: Path) -> None:
    """A bogus remote-code module in `auto_map` does not matter: nothing from the snapshot is imported."""
    folder = Path(shutil.copytree(tiny_snapshot, tmp_path / "bogus"))
    bogus = {"AutoConfig": "no_such_module_xyz.Config", "AutoModelForCausalLM": "no_such_module_xyz.Model"}
    for name in ("config.json", "processor_config.json"):
        data = json.loads((folder / name).read_text())
        data["auto_map"] = bogus
        (folder / name).write_text(json.dumps(data))
    model, processor = load_pair(folder)
    assert model.config.auto_map is None
    assert processor.num_image_tokens == 16
    budget = GenerationSettings(4, 4, 4)
    assert LocalBackend(str(folder), device="cpu", dtype="float32", settings=budget).info.model_id == str(folder)


def plain_generate(model, processor, study: Study, context: PromptContext, max_new_tokens: int) -> tuple[str, int]:
    """The official usage: format_and_preprocess_reporting_input + model.generate (greedy)."""

    def image(xray: XrayImage | None) -> Image.Image | None:
        return None if xray is None else Image.fromarray(xray.display)

    inputs = processor.format_and_preprocess_reporting_input(
        current_frontal=image(study.frontal),
        current_lateral=image(study.lateral) if context.use_lateral else None,
        prior_frontal=image(study.prior_frontal) if context.use_prior else None,
        indication=context.indication,
        technique=context.technique,
        comparison=context.comparison,
        prior_report=context.prior_report,
        get_grounding=context.grounded,
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    if processor.tokenizer.eos_token_id in new_tokens:
        new_tokens = new_tokens[: new_tokens.index(processor.tokenizer.eos_token_id)]
    return processor.decode(new_tokens, skip_special_tokens=True), len(new_tokens)


CONTEXTS = [
    PromptContext(name="full", indication="Dyspnea.", technique="PA and lateral.", prior_report="Clear lungs."),
    PromptContext(name="frontal", use_lateral=False, use_prior=False, grounded=False, comparison="None."),
    PromptContext(name="prior", use_lateral=False, indication="Fever."),
]


@pytest.mark.parametrize("context", CONTEXTS, ids=[c.name for c in CONTEXTS])
def test_backend_matches_plain_generate(tiny_snapshot: Path, tiny_backend, tiny_study: Study, context) -> None:
    """The backend's shared-prefix + tail decoding gives exactly the tokens of a plain generate() call."""
    model, processor = load_pair(tiny_snapshot)
    budget = tiny_backend.settings.budget(context, "reporting")
    text, count = plain_generate(model, processor, tiny_study, context, budget)
    report = tiny_backend.generate(tiny_study, [context])[0]
    assert report.raw_text == text
    assert report.timing("new_tokens") == count
    assert count > 0


def test_check_cli_on_the_tiny_snapshot(tiny_snapshot: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "model_backend.maira2", "--check", str(tiny_snapshot)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    facts = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines()[:-1])
    assert facts["image tokens per image"] == facts["vision features per image"] == "16"
    assert facts["grounding tokens"] == "all 204 present"
    assert facts["dtype"] == "float32" and facts["device"] == "cpu"
    assert facts["image size / patch"].startswith("56 / 14")
    parts = [int(facts[name].split()[0].replace(",", "")) for name in ("vision tower", "projector", "language model")]
    assert sum(parts) == int(facts["parameters"].replace(",", ""))
    assert facts["chat template"].startswith("renders the MAIRA-2 prompt")
    assert "smoke forward" in facts
    assert result.stdout.splitlines()[-1].startswith("OK")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("chat_template", "chat template renders an unexpected prompt"),
        ("image_token_index", "<image> is token"),
        ("no_config", "no config.json"),
    ],
)
def test_check_cli_fails_clearly(tiny_snapshot: Path, tmp_path: Path, capsys, breakage: str, message: str) -> None:
    folder = Path(shutil.copytree(tiny_snapshot, tmp_path / "broken"))
    if breakage == "chat_template":
        template = "{{ 'SYSTEM: ' }}{% for m in messages %}{{ m['role'] }}{% endfor %}"
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    elif breakage == "image_token_index":
        config = json.loads((folder / "config.json").read_text())
        config["image_token_index"] = 5
        (folder / "config.json").write_text(json.dumps(config))
    else:
        (folder / "config.json").unlink()
    assert cli_main(["--check", str(folder), "--no-forward"]) == 1
    assert message in capsys.readouterr().err
