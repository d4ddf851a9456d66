"""RadGraph from a local archive: a tiny DyGIE of the real architecture, weights designed so entities are known by hand.

The archive is written in the radgraph package's layout (AllenNLP config.json, vocabulary/,
weights.th with AllenNLP parameter names). Its BERT passes word embeddings through unchanged
(zero attention values and feed-forward), words have orthogonal zero-mean embeddings, and the
DyGIE scorers are hand-set: a one-word span of "left" is Anatomy, of "effusion" or "edema" an
Observation; both are kept by the relation pruner, and an observation is `located_at` "left".
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from model_backend.evaluation.radgraph import RadGraphAnnotator
from model_backend.evaluation.radgraph_rewards import rewards, words_of
from model_backend.metrics import main

WORDS = ["left", "effusion", "edema", "small", "there", "is", "a", "and", "mild", "."]
WALSH = torch.tensor(
    [
        [1, 1, 1, 1, -1, -1, -1, -1],  # every other token
        [1, -1, 1, -1, 1, -1, 1, -1],  # left
        [1, 1, -1, -1, 1, 1, -1, -1],  # effusion
        [1, -1, -1, 1, 1, -1, -1, 1],  # edema
    ],
    dtype=torch.float32,
)
NER = ["", "ANAT-DP", "OBS-DP", "OBS-U"]
RELATIONS = ["located_at", "modify", "suggestive_of"]
NS_NER, NS_REL = "radgraph__ner_labels", "radgraph__relation_labels"
SPAN_DIM = 8 + 8 + 2


def _word_features(direction: torch.Tensor, offset: int = 0, size: int = SPAN_DIM) -> torch.Tensor:
    """Weights of a unit seeing the span embedding at `offset` of its input: 8 + 8 - 15 = 1 after its bias for
    a one-word span whose word points along `direction`, negative otherwise."""
    row = torch.zeros(size)
    row[offset : offset + 8] = direction
    row[offset + 8 : offset + 16] = direction
    row[offset + 16] = -100.0  # width embedding: 0 for one word, [1, 0] for longer spans
    return row


def designed_weights(bert_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """weights.th: AllenNLP names, as DyGIE and its modules register them."""
    left, effusion, edema = WALSH[1], WALSH[2], WALSH[3]
    span_ff = torch.stack([_word_features(d) for d in (left, effusion, edema)] + [torch.zeros(SPAN_DIM)])
    relation_ff = torch.zeros(4, 3 * SPAN_DIM)
    for unit, observation in enumerate((effusion, edema)):  # a = observation span, b = "left" span
        relation_ff[unit] = _word_features(observation, 0, 3 * SPAN_DIM) + _word_features(left, SPAN_DIM, 3 * SPAN_DIM)
    width = torch.zeros(3, 2)
    width[1:, 0] = 1.0
    state = {f"_embedder.token_embedder_bert._matched_embedder.transformer_model.{k}": v for k, v in bert_state.items()}
    state |= {
        "_endpoint_span_extractor._span_width_embedding.weight": width,
        f"_ner._ner_scorers.{NS_NER}.0._module._linear_layers.0.weight": span_ff,
        f"_ner._ner_scorers.{NS_NER}.0._module._linear_layers.0.bias": torch.tensor([-15.0, -15.0, -15.0, 0.0]),
        f"_ner._ner_scorers.{NS_NER}.1._module.weight": torch.tensor([[10.0, 0, 0, 0], [0, 10, 10, 0], [0, 0, 0, 0]]),
        f"_ner._ner_scorers.{NS_NER}.1._module.bias": torch.tensor([-1.0, -1.0, -1.0]),
        f"_relation._mention_pruners.{NS_REL}._scorer.0._module._linear_layers.0.weight": span_ff,
        f"_relation._mention_pruners.{NS_REL}._scorer.0._module._linear_layers.0.bias": torch.tensor([-15.0] * 3 + [0]),
        f"_relation._mention_pruners.{NS_REL}._scorer.1._module.weight": torch.tensor([[10.0, 10, 10, 0]]),
        f"_relation._mention_pruners.{NS_REL}._scorer.1._module.bias": torch.tensor([-25.0]),
        f"_relation._relation_feedforwards.{NS_REL}._linear_layers.0.weight": relation_ff,
        f"_relation._relation_feedforwards.{NS_REL}._linear_layers.0.bias": torch.tensor([-31.0, -31.0, 0, 0]),
        f"_relation._relation_scorers.{NS_REL}.weight": torch.tensor([[100.0, 100, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
        f"_relation._relation_scorers.{NS_REL}.bias": torch.zeros(3),
        "_coref._antecedent_feedforward._module._linear_layers.0.weight": torch.randn(4, 4),  # unused task
    }
    return state


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("radgraph")
    bert_dir, folder = root / "bert", root / "radgraph"
    bert_dir.mkdir()
    (bert_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=4, max_position_embeddings=64,
    )  # fmt: skip
    config.save_pretrained(bert_dir)
    bert = BertModel(config)
    with torch.no_grad():
        for parameter in bert.parameters():
            parameter.zero_()
        embeddings = WALSH[0].repeat(config.vocab_size, 1)
        for index, word in enumerate(("left", "effusion", "edema"), start=1):
            embeddings[5 + WORDS.index(word)] = WALSH[index]
        bert.embeddings.word_embeddings.weight.copy_(embeddings)
        for norm in (m for m in bert.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.fill_(1.0)
    (folder / "vocabulary").mkdir(parents=True)
    (folder / "vocabulary" / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    (folder / "vocabulary" / f"{NS_NER}.txt").write_text("\n".join(NER) + "\n")
    (folder / "vocabulary" / f"{NS_REL}.txt").write_text("\n".join(RELATIONS) + "\n")
    bert_config = {"type": "pretrained_transformer_mismatched", "model_name": str(bert_dir), "max_length": 16}
    config_json = {
        "dataset_reader": {"type": "dygie", "max_span_width": 3, "token_indexers": {"bert": bert_config}},
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": bert_config}},
            "feature_size": 2,
            "feedforward_params": {"num_layers": 1, "hidden_dims": 4, "dropout": 0.4},
            "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "max_span_width": 3,
            "modules": {"coref": {"coref_prop": 0}, "ner": {}, "relation": {"spans_per_word": 0.5}, "events": {}},
            "target_task": "relation",
        },
    }
    (folder / "config.json").write_text(json.dumps(config_json))
    torch.save(designed_weights(bert.state_dict()), folder / "weights.th")
    return folder


def entity(tokens: str, label: str, start: int, relations: list | None = None) -> dict:
    return {"tokens": tokens, "label": label, "start_ix": start, "end_ix": start, "relations": relations or []}


def test_words_as_the_package_splits_them() -> None:
    assert words_of("Mild cardiomegaly/edema, no effusion.(left)") == [
        "Mild", "cardiomegaly", "/", "edema", ",", "no", "effusion", ".", "(", "left", ")",
    ]  # fmt: skip
    assert words_of("Effusion 5%. No change.", "radgraph-xl") == ["Effusion", "5", "%", ".", "No", "change", "."]
    with pytest.raises(ValueError, match="model type"):
        words_of("x", "echograph")


def test_reward_arithmetic() -> None:
    hyp = {"entities": {"1": entity("effusion", "OBS-DP", 0)}}
    ref = {"entities": {"1": entity("Left", "ANAT-DP", 0), "2": entity("effusion", "OBS-DP", 1, [["located_at", "1"]])}}
    # simple: {effusion} vs {left, effusion}: P 1, R 1/2; partial, complete: the relation is missing, nothing shared.
    assert rewards(hyp, ref) == {"simple": pytest.approx(2 / 3), "partial": 0.0, "complete": 0.0}
    both = {"entities": {**ref["entities"], "3": entity("edema", "OBS-DP", 2, [["located_at", "1"]])}}
    # partial: (edema, OBS-DP, True) is one fact; complete: one fact per relation.
    assert rewards(ref, both) == {"simple": pytest.approx(0.8), "partial": pytest.approx(0.8), "complete": 0.8}
    assert rewards({"entities": {}}, ref) == {"simple": 0.0, "partial": 0.0, "complete": 0.0}
    # Tokens are compared lowercased; radgraph <= 0.1.18 compared them as written outside relation facts.
    upper = {"entities": {"1": entity("Left", "ANAT-DP", 0)}}
    lower = {"entities": {"1": entity("left", "ANAT-DP", 0)}}
    assert rewards(upper, lower)["simple"] == 1.0 and rewards(upper, lower, legacy_case=True)["simple"] == 0.0


def test_designed_model_entities_by_hand(archive: Path) -> None:
    annotator = RadGraphAnnotator.from_folder(archive)
    small_left = annotator.annotate("There is a small left effusion.")
    assert small_left == {
        "text": "There is a small left effusion .",
        "entities": {"1": entity("left", "ANAT-DP", 4), "2": entity("effusion", "OBS-DP", 5, [["located_at", "1"]])},
    }
    both = annotator.annotate("Left effusion and mild edema.")["entities"]
    assert both == {
        "1": entity("Left", "ANAT-DP", 0),
        "2": entity("effusion", "OBS-DP", 1, [["located_at", "1"]]),
        "3": entity("edema", "OBS-DP", 4, [["located_at", "1"]]),
    }
    # ceil(2 words x 0.5) = 1 span kept for relations: "effusion" alone, no relation.
    assert annotator.annotate("Effusion.")["entities"] == {"1": entity("Effusion", "OBS-DP", 0)}
    assert annotator.annotate("") == {"text": "", "entities": {}}
    # 20 words fold into two BERT segments of max_length 16 (this BERT is position-independent): same entities.
    long = annotator.annotate("There is a small " * 4 + "left effusion.")["entities"]
    assert [(e["tokens"], e["start_ix"], e["relations"]) for e in long.values()] == [
        ("left", 16, []), ("effusion", 17, [["located_at", "1"]]),
    ]  # fmt: skip


def test_weights_must_fit(archive: Path, tmp_path: Path) -> None:
    state = torch.load(archive / "weights.th", weights_only=True)
    state["_ner._ner_scorers.other__ner_labels.1._module.weight"] = torch.zeros(1)
    folder = tmp_path / "radgraph"
    folder.mkdir()
    for name in ("config.json", "vocabulary"):
        (folder / name).symlink_to(archive / name)
    torch.save(state, folder / "weights.th")
    with pytest.raises(ValueError, match=r"unexpected .*other__ner_labels"):
        RadGraphAnnotator.from_folder(folder)


def test_cli_radgraph_f1_from_folder_and_archive(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    studies = [("Effusion.", "Left effusion."), ("Small left effusion.", "Left effusion."), ("", "Left effusion.")]
    manifest, results = tmp_path / "m.jsonl", tmp_path / "r.jsonl"
    manifest.write_text("".join(json.dumps({"study_id": f"s{i}", "reference_findings": [ref]}) + "\n"
                                for i, (_, ref) in enumerate(studies)))  # fmt: skip
    results.write_text("".join(json.dumps({"study_id": f"s{i}", "context": "A", "output": [[gen, None]] if gen else [],
                                           "image_width": 10, "image_height": 10}) + "\n"
                               for i, (gen, _) in enumerate(studies)))  # fmt: skip
    with tarfile.open(tmp_path / "radgraph.tar.gz", "w:gz") as tar:
        for path in sorted(archive.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(archive)), recursive=False)
    for source in (archive, tmp_path / "radgraph.tar.gz"):
        out_json = tmp_path / "s.json"
        argv = [str(results), "--data", str(manifest), "--radgraph", str(source), "--json", str(out_json)]
        assert main([*argv, "--resamples", "100"]) == 0
        metrics = json.loads(out_json.read_text())["contexts"]["A"]["metrics"]
        # s1: 2/3, 0, 0 (see test_reward_arithmetic); s2: identical facts, 1 each; s3: empty report, 0.
        assert metrics["radgraph_f1_simple"]["value"] == pytest.approx((2 / 3 + 1 + 0) / 3)
        assert metrics["radgraph_f1_partial"]["value"] == pytest.approx(1 / 3)
        assert metrics["radgraph_f1_complete"]["value"] == pytest.approx(1 / 3)
        assert "RadGraph-F1 (partial)" in capsys.readouterr().out
