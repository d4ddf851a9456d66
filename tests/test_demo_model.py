"""The bundled demo model: it grounds fresh phantoms through the public API, and its trainer still runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model_backend.backends import DEMO_MODEL_PATH, load_backend
from model_backend.backends.local import LocalBackend
from model_backend.demo_model.dataset import FINDING_TYPES, Mix, collate, make_record, patch_targets, sample_example
from model_backend.demo_model.evaluate import evaluate, finding_type, phantom_study
from model_backend.demo_model.phantoms import KINDS, PhantomFinding, render_phantom
from model_backend.demo_model.train import TrainConfig, build_processor, train
from model_backend.types import Box, PromptContext


@pytest.fixture(scope="module")
def demo_backend():
    if not (DEMO_MODEL_PATH / "config.json").exists():
        pytest.skip(
            f"the demo model is absent from {DEMO_MODEL_PATH}; build it with python -m model_backend.demo_model.train"
        )
    return load_backend("demo")


def _phantom_seed_with(predicate, start: int = 20_000_000) -> int:
    return next(seed for seed in range(start, start + 500) if predicate(render_phantom(seed)))


def test_finding_type_reads_kind_and_side():
    assert finding_type("There is a new nodule in the left upper zone.") == ("nodule", "left")
    assert finding_type("The right pleural effusion has increased.") == ("effusion", "right")
    assert finding_type("The heart remains enlarged.") == ("cardiomegaly", None)
    assert finding_type("There is no pleural effusion.") is None
    assert finding_type("The heart size is normal.") is None
    assert finding_type("There is a mass.") is None  # no side: not a finding type


# The demo-model issue's bar on 20 fresh phantoms (the shipped snapshot measured F1 0.92, IoU 0.62 on these).
SHIPPED_F1_FLOOR = 0.8
SHIPPED_IOU_FLOOR = 0.4


def test_shipped_demo_model_grounds_fresh_phantoms(demo_backend):
    results = evaluate(demo_backend, n=20, seed=5_000)
    assert results["micro_f1"] >= SHIPPED_F1_FLOOR, results
    assert results["mean_iou"] >= SHIPPED_IOU_FLOOR, results
    assert results["complete"] >= 0.9, results
    assert demo_backend.info.is_demo


def test_demo_model_prior_context_changes_the_report(demo_backend):
    seed = _phantom_seed_with(lambda p: p.prior_frontal is not None and any(f.status == "new" for f in p.findings))
    study = phantom_study(seed, render_phantom(seed))
    with_prior, without_prior = demo_backend.generate(
        study, [study.context, PromptContext(name="B", indication=study.context.indication, use_prior=False)]
    )
    assert with_prior.raw_text != without_prior.raw_text
    assert not any("new" in f.text.split() for f in without_prior.findings)


def test_demo_model_grounds_a_typed_phrase(demo_backend):
    seed = _phantom_seed_with(lambda p: any(f.kind == "effusion" for f in p.findings))
    phantom = render_phantom(seed)
    effusion = next(f for f in phantom.findings if f.kind == "effusion")
    report = demo_backend.ground_phrase(phantom_study(seed, phantom), f"{effusion.side} pleural effusion")
    assert report.task == "phrase_grounding"
    assert report.findings and report.findings[0].grounded, report.raw_text


def test_training_labels_cover_exactly_the_target():
    config = TrainConfig()
    processor = build_processor(config)
    record = make_record(3, processor, size=(300, 400))  # also checks tokens against the official processor call
    rng = np.random.default_rng(0)
    examples = [sample_example(record, processor, rng, Mix()) for _ in range(6)]
    grid = config.image_size // config.patch_size
    batch = collate(examples, [record] * 6, processor.tokenizer.pad_token_id, processor.image_preprocessing, grid)
    assert batch.pixel_values.shape[0] == sum(len(e.views) for e in examples)
    for row, example in enumerate(examples):
        labelled = batch.labels[row][batch.labels[row] != -100].tolist()
        assert labelled == example.input_ids[example.target_start :]
        assert labelled[-1] == processor.tokenizer.eos_token_id


def test_patch_targets_on_a_portrait_image():
    """400 x 600 image: the model sees the central 400 x 400 (rows 100-500), a 4 x 4 grid of 100 px patches."""
    nodule = PhantomFinding("nodule", "left", "middle", Box(110, 220, 140, 250), "")  # inside patch (row 1, col 1)
    consolidation = PhantomFinding("consolidation", "right", "upper", Box(0, 100, 250, 300), "")  # rows 0-1, cols 0-2.5
    targets = patch_targets([nodule, consolidation], 400, 600, grid=4).reshape(4, 4, -1)
    expected_nodule = np.zeros((4, 4))
    expected_nodule[1, 1] = 0.09  # a 30 x 30 px box covers 9 % of that 100 x 100 px patch
    np.testing.assert_allclose(targets[..., KINDS.index("nodule")], expected_nodule, atol=1e-6)
    expected_consolidation = np.zeros((4, 4))
    expected_consolidation[:2, :2] = 1.0
    expected_consolidation[:2, 2] = 0.5  # half of those patches' width is covered
    np.testing.assert_allclose(targets[..., KINDS.index("consolidation")], expected_consolidation, atol=1e-6)
    present = {FINDING_TYPES[i] for i in np.flatnonzero(targets[0, 0, len(KINDS) :])}
    assert present == {("nodule", "left"), ("consolidation", "right")}
    assert np.all(targets[..., len(KINDS) :] == targets[:1, :1, len(KINDS) :])  # image-level: the same in every patch


def test_two_training_steps_write_a_loadable_deterministic_snapshot(tmp_path):
    lines: list[str] = []
    settings = {"steps": 2, "vision_steps": 2, "n_phantoms": 4, "batch_size": 4, "log_every": 1}
    out = train(out=tmp_path / "a", log=lines.append, **settings)
    again = train(out=tmp_path / "b", log=lambda line: None, **settings)
    assert any(line.startswith("step 2/2") for line in lines)
    assert json.loads((out / "training.json").read_text())["steps_done"] == 2
    assert "Not a medical model" in (out / "README.md").read_text()
    weights, weights_again = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert weights.keys() == weights_again.keys()
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    backend = LocalBackend(str(out))
    seed = _phantom_seed_with(lambda p: p.lateral is None and p.prior_frontal is None)
    study = phantom_study(seed, render_phantom(seed))
    (report,) = backend.generate(study, [study.context])
    assert report.image_width == study.frontal.width
    assert report.task == "reporting"
