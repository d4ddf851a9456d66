"""CheXbert from local files: a tiny model of the real architecture, designed so its labels are known by hand.

The tiny BERT (hidden size 8, one layer) is set up so that [CLS] ends up holding the mean of the
word embeddings: attention is uniform (zero query/key weights), values and the attention output
are identities, the feed-forward block is zero. Words have orthogonal zero-mean embeddings
(Walsh vectors), so a head reading one direction fires exactly when its word is in the report:

    effusion -> Pleural Effusion positive; + "no" -> negative; + "possible" -> uncertain (margins: biases)
    edema -> Edema positive; normal -> No Finding positive; every other head: blank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertTokenizer

from model_backend.evaluation.chexbert import CheXbertLabeler, CheXbertModel
from model_backend.evaluation.chexbert_labels import (
    CHEXPERT_5,
    CHEXPERT_CLASSES,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    binary_labels,
    micro_f1,
)
from model_backend.metrics import main

REPO = Path(__file__).resolve().parents[1]
WORDS = ["effusion", "possible", "edema", "no", "normal", "small", "left", "pleural", "mild", "study", "."]
WALSH = torch.tensor(
    [
        [1, 1, 1, 1, -1, -1, -1, -1],  # every other token
        [1, -1, 1, -1, 1, -1, 1, -1],  # effusion
        [1, 1, -1, -1, 1, 1, -1, -1],  # possible
        [1, -1, -1, 1, 1, -1, -1, 1],  # edema
        [1, 1, -1, -1, -1, -1, 1, 1],  # no
        [1, -1, 1, -1, -1, 1, -1, 1],  # normal
    ],
    dtype=torch.float32,
)
EFFUSION, EDEMA, NO_FINDING = (CHEXPERT_CLASSES.index(c) for c in ("Pleural Effusion", "Edema", "No Finding"))
SCALE = 1000.0  # large enough for one word among 512 tokens to fire its head
# (generated, reference) findings and the labels the designed model must give them.
STUDIES = [
    ("Small left pleural effusion.", "Small left pleural effusion. Mild edema."),
    ("Possible effusion.", "No effusion."),
    ("Mild edema.", "Mild edema."),
    ("Normal study.", "No effusion."),
]


def labels_with(*positive: int) -> list[int]:
    return [int(i in positive) for i in range(len(CHEXPERT_CLASSES))]


def designed_model(config: BertConfig) -> CheXbertModel:
    model = CheXbertModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        bert = model.bert
        embeddings = WALSH[0].repeat(config.vocab_size, 1)
        for word, row in zip(["effusion", "possible", "edema", "no", "normal"], WALSH[1:], strict=True):
            embeddings[5 + WORDS.index(word)] = row
        bert.embeddings.word_embeddings.weight.copy_(embeddings)
        for norm in (bert.embeddings.LayerNorm, *(m for m in bert.modules() if isinstance(m, torch.nn.LayerNorm))):
            norm.weight.fill_(1.0)
        layer = bert.encoder.layer[0]
        layer.attention.self.value.weight.copy_(torch.eye(8))
        layer.attention.output.dense.weight.copy_(torch.eye(8))
        for head in model.linear_heads:
            head.bias[0] = 1.0  # blank unless a word fires
        model.linear_heads[EFFUSION].bias[NEGATIVE] = model.linear_heads[EFFUSION].bias[UNCERTAIN] = -5.0
        effusion, possible, edema, no, normal = (SCALE * WALSH[i] for i in range(1, 6))
        heads = model.linear_heads
        heads[EFFUSION].weight[POSITIVE] = effusion
        heads[EFFUSION].weight[NEGATIVE] = effusion + no
        heads[EFFUSION].weight[UNCERTAIN] = effusion + possible
        heads[EDEMA].weight[POSITIVE] = edema
        heads[NO_FINDING].weight[1] = normal
    return model


@pytest.fixture(scope="module")
def chexbert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(chexbert.pth, BERT folder) in the published layout: DataParallel "module." keys, an old position_ids buffer."""
    root = tmp_path_factory.mktemp("chexbert")
    bert_dir = root / "bert"
    bert_dir.mkdir()
    (bert_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=4, max_position_embeddings=64,
    )  # fmt: skip
    config.save_pretrained(bert_dir)
    state = {f"module.{k}": v for k, v in designed_model(config).state_dict().items()}
    state["module.bert.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save({"epoch": 7, "model_state_dict": state}, root / "chexbert.pth")
    return root / "chexbert.pth", bert_dir


def test_label_arithmetic() -> None:
    heads = [0] * 14
    heads[EFFUSION], heads[EDEMA], heads[1], heads[NO_FINDING] = UNCERTAIN, POSITIVE, NEGATIVE, POSITIVE
    assert binary_labels(heads) == labels_with(EFFUSION, EDEMA, NO_FINDING)
    assert binary_labels(heads, uncertain="negative") == labels_with(EDEMA, NO_FINDING)
    with pytest.raises(ValueError, match="uncertain must be"):
        binary_labels(heads, uncertain="ignore")
    pairs = [(labels_with(EFFUSION), labels_with(EFFUSION, EDEMA)), (labels_with(NO_FINDING), labels_with())]
    assert micro_f1(pairs, CHEXPERT_CLASSES) == pytest.approx(2 / (2 + 1 + 1))  # TP 1, FP 1 (No Finding), FN 1
    assert micro_f1(pairs, CHEXPERT_5) == pytest.approx(2 / (2 + 0 + 1))
    assert micro_f1([(labels_with(), labels_with())], CHEXPERT_5) is None


def test_designed_model_labels_by_hand(chexbert_files: tuple[Path, Path]) -> None:
    labeler = CheXbertLabeler.from_files(*chexbert_files)
    texts = [text for study in STUDIES for text in study]
    expected = [
        labels_with(EFFUSION), labels_with(EFFUSION, EDEMA),
        labels_with(EFFUSION), labels_with(),  # possible effusion (uncertain -> positive); no effusion (negative)
        labels_with(EDEMA), labels_with(EDEMA),
        labels_with(NO_FINDING), labels_with(),
    ]  # fmt: skip
    assert labeler.labels(texts) == expected
    heads = labeler.head_classes(["Possible effusion.", "No effusion."])
    assert (heads[0][EFFUSION], heads[1][EFFUSION]) == (UNCERTAIN, NEGATIVE)
    assert labeler.labels(["Possible effusion."], uncertain="negative") == [labels_with()]
    # Padding in a batch changes nothing; an empty or very long report still gets labels.
    assert [labeler.labels([t])[0] for t in texts] == expected
    long = "Small left pleural effusion. " + "Mild edema. " * 400
    assert labeler.labels(["", long]) == [labels_with(), labels_with(EFFUSION, EDEMA)]


def test_checkpoint_must_fit(chexbert_files: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, bert_dir = chexbert_files
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    del state["module.linear_heads.13.weight"]
    torch.save({"model_state_dict": state}, tmp_path / "chexbert.pth")
    with pytest.raises(ValueError, match=r"missing .*linear_heads\.13\.weight"):
        CheXbertLabeler.from_files(tmp_path / "chexbert.pth", bert_dir)


def test_cli_f1_14_and_f1_5(chexbert_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint, bert_dir = chexbert_files
    manifest, results = tmp_path / "m.jsonl", tmp_path / "r.jsonl"
    manifest.write_text("".join(json.dumps({"study_id": f"s{i}", "reference_findings": [ref]}) + "\n"
                                for i, (_, ref) in enumerate(STUDIES)))  # fmt: skip
    results.write_text("".join(json.dumps({"study_id": f"s{i}", "context": "A", "output": [[gen, None]],
                                           "image_width": 10, "image_height": 10}) + "\n"
                               for i, (gen, _) in enumerate(STUDIES)))  # fmt: skip
    argv = [str(results), "--data", str(manifest), "--chexbert", str(checkpoint), "--chexbert-bert", str(bert_dir)]
    assert main([*argv, "--json", str(tmp_path / "s.json"), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "s.json").read_text())["contexts"]["A"]["metrics"]
    # By hand: s1 Effusion TP, Edema FN; s2 Effusion FP (uncertain counts as positive); s3 Edema TP; s4 No Finding FP.
    assert metrics["chexbert_f1_14"]["value"] == pytest.approx(4 / 7)  # 2 TP, 2 FP, 1 FN
    assert metrics["chexbert_f1_5"]["value"] == pytest.approx(4 / 6)  # No Finding is not among the 5
    assert "CheXpert F1-14 (micro)" in out and "uncertain positive" in out and "RadGraph-F1: no radgraph.tar.gz" in out
    per_class = json.loads((tmp_path / "s.json").read_text())["contexts"]["A"]["per_class"]
    assert per_class["Pleural Effusion"]["chexbert_f1"]["value"] == pytest.approx(2 / 3)
    assert main([*argv, "--chexbert-uncertain", "negative", "--json", str(tmp_path / "n.json")]) == 0
    negative = json.loads((tmp_path / "n.json").read_text())["contexts"]["A"]["metrics"]
    assert negative["chexbert_f1_14"]["value"] == pytest.approx(4 / 6) and negative["chexbert_f1_5"]["value"] == 0.8


def test_missing_weights_are_named(
    chexbert_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, results = tmp_path / "m.jsonl", tmp_path / "r.jsonl"
    manifest.write_text(json.dumps({"study_id": "s1", "reference_findings": ["Mild edema."]}) + "\n")
    line = {"study_id": "s1", "context": "A", "output": [["Mild edema.", None]], "image_width": 10, "image_height": 10}
    results.write_text(json.dumps(line) + "\n")
    argv = [str(results), "--data", str(manifest), "--resamples", "20"]
    assert main([*argv, "--chexbert", str(tmp_path / "nowhere")]) == 0
    out = capsys.readouterr().out
    assert "CheXpert F1-14 / F1-5: --chexbert " in out and "no chexbert.pth there" in out and "ROUGE-L" in out
    (tmp_path / "chexbert.pth").write_bytes(b"")
    assert main([*argv, "--chexbert", str(tmp_path), "--chexbert-bert", str(tmp_path / "no-bert")]) == 0
    assert "pass --chexbert-bert DIR" in capsys.readouterr().out
    (tmp_path / "chexbert.pth").write_bytes(b"not a checkpoint")
    assert main([*argv, "--chexbert", str(tmp_path), "--chexbert-bert", str(chexbert_files[1])]) == 0
    out = capsys.readouterr().out
    assert "CheXpert F1-14 / F1-5: cannot load the weights" in out and "ROUGE-L" in out


def test_checkpoint_found_in_the_hugging_face_cache(chexbert_files: tuple[Path, Path], tmp_path: Path) -> None:
    """No --chexbert: the CLI finds chexbert.pth in the HF cache (offline), as `huggingface-cli download` leaves it."""
    checkpoint, bert_dir = chexbert_files
    repo = tmp_path / "hub" / "models--StanfordAIMI--RRG_scorers"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "chexbert.pth").write_bytes(checkpoint.read_bytes())
    manifest, results = tmp_path / "m.jsonl", tmp_path / "r.jsonl"
    manifest.write_text(json.dumps({"study_id": "s1", "reference_findings": ["Mild edema."]}) + "\n")
    line = {"study_id": "s1", "context": "A", "output": [["Mild edema.", None]], "image_width": 10, "image_height": 10}
    results.write_text(json.dumps(line) + "\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "model_backend.metrics", str(results), "--data", str(manifest)]
    command += ["--chexbert-bert", str(bert_dir), "--resamples", "20"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"snapshots/{revision}/chexbert.pth" in done.stdout
    f1_line = next(line for line in done.stdout.splitlines() if line.startswith("CheXpert F1-14"))
    assert f1_line.split()[-3] == "1.000"  # edema vs edema
