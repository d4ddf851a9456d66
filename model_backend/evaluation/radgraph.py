"""RadGraph entities and relations from a local radgraph archive, and the RadGraph-F1 rewards.

The `radgraph` package does not run on transformers 5 (its bundled AllenNLP calls the removed
`encode_plus`), so this module runs the same DyGIE model (Wadden et al. 2019; RadGraph, Jain et
al. 2021) itself, from the archive the package uses: a folder with `config.json` (AllenNLP),
`vocabulary/` and `weights.th`, i.e. `radgraph.tar.gz` / `radgraph-xl.tar.gz` of
`StanfordAIMI/RRG_scorers`, extracted. The BERT encoder's configuration and tokenizer come from
the model name in `config.json`, offline (a local folder or the Hugging Face cache); its weights
come from `weights.th`. Inference, as the package runs it:

1. words: the package's preprocessing per model type (`radgraph_rewards.words_of`); the whole
   report is one sentence;
2. wordpieces per word between the tokenizer's special tokens (longer than `max_length`: folded
   into segments, each with its own special tokens), BERT's last hidden state, a word = the mean
   of its wordpieces;
3. every span of up to `max_span_width` words = [first word, last word, width embedding];
4. NER: a feed-forward scorer per span, the null label scored 0, argmax;
5. relations: the top ceil(words x spans_per_word) spans by a mention scorer, pairs scored on
   [a, b, a * b] plus both mention scores, the null label scored 0, argmax;
6. entities in span order, each with its relations to other entities (`radgraph.utils.get_entity`).

Word splitting and the RadGraph-F1 rewards: `model_backend.evaluation.radgraph_rewards`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from model_backend.evaluation.radgraph_rewards import MODEL_TYPES, Annotation, words_of

_IGNORED_MODULES = ("_coref.", "_events.")  # DyGIE tasks RadGraph does not use (loss weight 0)
_UNUSED_ENCODER_KEYS = ("position_ids", "pooler.dense.weight", "pooler.dense.bias")  # saved or not, never used


class FeedForward(nn.Module):
    """AllenNLP's FeedForward as DyGIE builds it: Linear -> ReLU (-> dropout) per layer."""

    def __init__(self, input_dim: int, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self._linear_layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise([input_dim, *hidden_dims]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._linear_layers:
            x = torch.relu(layer(x))
        return x


@dataclass(frozen=True)
class DyGIEConfig:
    """What inference needs from the archive's AllenNLP `config.json`."""

    model_name: str
    max_length: int | None
    reader_max_span_width: int
    max_span_width: int
    feature_size: int
    hidden_dims: tuple[int, ...]
    spans_per_word: float

    @classmethod
    def from_archive(cls, config: dict[str, Any]) -> DyGIEConfig:
        model, reader = config["model"], config["dataset_reader"]
        bert = model["embedder"]["token_embedders"]["bert"]
        modules = model.get("modules", {})
        if modules.get("coref", {}).get("coref_prop", 0) or model.get("loss_weights", {}).get("events", 0):
            raise ValueError("coreference propagation and event extraction are not supported (RadGraph uses neither)")
        ff = model["feedforward_params"]
        hidden = ff["hidden_dims"]
        hidden_dims = tuple(hidden) if isinstance(hidden, list) else (int(hidden),) * int(ff["num_layers"])
        return cls(
            model_name=str(bert["model_name"]),
            max_length=bert.get("max_length"),
            reader_max_span_width=int(reader["max_span_width"]),
            max_span_width=int(model["max_span_width"]),
            feature_size=int(model["feature_size"]),
            hidden_dims=hidden_dims,
            spans_per_word=float(modules["relation"]["spans_per_word"]),
        )


def read_vocabulary(folder: Path, suffix: str) -> tuple[str, list[str]]:
    """(namespace, labels) of the one `*{suffix}` label namespace in an AllenNLP vocabulary folder."""
    files = sorted(folder.glob(f"*{suffix}.txt"))
    if len(files) != 1:
        raise ValueError(f"{folder}: expected one *{suffix}.txt vocabulary, found {[f.name for f in files]}")
    labels = re.split(r"\r\n|\n", files[0].read_text(encoding="utf-8"))
    if labels and labels[-1] == "":
        labels = labels[:-1]
    namespace = files[0].name.removesuffix(".txt")
    padded = _namespace_padded(folder, namespace)
    return namespace, (["@@PADDING@@", *labels] if padded else labels)


def _namespace_padded(folder: Path, namespace: str) -> bool:
    """AllenNLP pads every namespace not matched by `non_padded_namespaces.txt` ("*x" matches a suffix)."""
    path = folder / "non_padded_namespaces.txt"
    patterns = [p.strip() for p in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    return not any(namespace.endswith(p[1:]) if p.startswith("*") else namespace == p for p in patterns if p)


class DyGIE(nn.Module):
    """The inference path of DyGIE with RadGraph's tasks (NER and relations); weights from `weights.th`."""

    def __init__(self, config: DyGIEConfig, bert: nn.Module, ner_labels: Sequence[str], relation_labels: Sequence[str]):
        super().__init__()
        self.config = config
        self.ner_labels = list(ner_labels)
        self.relation_labels = list(relation_labels)
        if not self.ner_labels or self.ner_labels[0] != "":
            raise ValueError("the NER vocabulary must start with the null label ''")
        self.bert = bert
        hidden = bert.config.hidden_size
        span_dim = 2 * hidden + config.feature_size
        out = config.hidden_dims[-1]
        self.span_width_embedding = nn.Embedding(config.max_span_width, config.feature_size)
        self.ner_ff, self.ner_out = FeedForward(span_dim, config.hidden_dims), nn.Linear(out, len(ner_labels) - 1)
        self.mention_ff, self.mention_out = FeedForward(span_dim, config.hidden_dims), nn.Linear(out, 1)
        self.relation_ff = FeedForward(3 * span_dim, config.hidden_dims)
        self.relation_out = nn.Linear(out, len(relation_labels))

    def load_allennlp_state(self, state: dict[str, torch.Tensor], ner_namespace: str, relation_namespace: str) -> None:
        """Load an AllenNLP DyGIE state dict; every weight must be used (`ValueError` otherwise)."""
        prefixes = {
            "_embedder.token_embedder_bert._matched_embedder.transformer_model.": "bert.",
            "_endpoint_span_extractor._span_width_embedding.": "span_width_embedding.",
            f"_ner._ner_scorers.{ner_namespace}.0._module.": "ner_ff.",
            f"_ner._ner_scorers.{ner_namespace}.1._module.": "ner_out.",
            f"_relation._mention_pruners.{relation_namespace}._scorer.0._module.": "mention_ff.",
            f"_relation._mention_pruners.{relation_namespace}._scorer.1._module.": "mention_out.",
            f"_relation._relation_feedforwards.{relation_namespace}.": "relation_ff.",
            f"_relation._relation_scorers.{relation_namespace}.": "relation_out.",
        }
        mapped, unused = {}, []
        for key, value in state.items():
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix is not None:
                mapped[prefixes[prefix] + key[len(prefix) :]] = value
            elif not key.startswith(_IGNORED_MODULES):
                unused.append(key)
        mapped = {k: v for k, v in mapped.items() if not k.endswith(_UNUSED_ENCODER_KEYS)}
        result = self.load_state_dict(mapped, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith(_UNUSED_ENCODER_KEYS)]
        if missing or result.unexpected_keys or unused:
            raise ValueError(
                f"weights do not fit the DyGIE/RadGraph architecture: missing {missing[:5]}, "
                f"unexpected {(result.unexpected_keys + unused)[:5]}"
            )

    def spans(self, n_words: int) -> list[tuple[int, int]]:
        """AllenNLP's `enumerate_spans`: (start, end) inclusive, by start then end."""
        width = self.config.reader_max_span_width
        return [(s, e) for s in range(n_words) for e in range(s, min(s + width, n_words))]

    @torch.inference_mode()
    def predict(self, word_embeddings: torch.Tensor) -> tuple[list[tuple[int, int, str]], list[tuple[Any, ...]]]:
        """Word embeddings (n_words, hidden) -> NER [(start, end, label)] and relations [(span_a, span_b, label)]."""
        spans = self.spans(len(word_embeddings))
        index = torch.tensor(spans, dtype=torch.long)
        width = self.span_width_embedding(index[:, 1] - index[:, 0])
        span_emb = torch.cat([word_embeddings[index[:, 0]], word_embeddings[index[:, 1]], width], dim=-1)

        ner_scores = self.ner_out(self.ner_ff(span_emb))
        ner_scores = torch.cat([ner_scores.new_zeros(len(spans), 1), ner_scores], dim=-1)
        ner_pred = ner_scores.argmax(dim=-1).tolist()
        entities = [(s, e, self.ner_labels[label]) for (s, e), label in zip(spans, ner_pred, strict=True) if label]

        mention = self.mention_out(self.mention_ff(span_emb)).squeeze(-1)
        keep = min(max(math.ceil(len(word_embeddings) * self.config.spans_per_word), 1), len(spans))
        top = torch.sort(mention.topk(keep).indices).values
        a = span_emb[top].unsqueeze(1).expand(-1, keep, -1)
        b = span_emb[top].unsqueeze(0).expand(keep, -1, -1)
        scores = self.relation_out(self.relation_ff(torch.cat([a, b, a * b], dim=-1)))
        scores = scores + mention[top][:, None, None] + mention[top][None, :, None]
        scores = torch.cat([scores.new_zeros(keep, keep, 1), scores], dim=-1)
        labels = scores.argmax(dim=-1) - 1
        top_spans = [spans[i] for i in top.tolist()]
        relations = [
            (top_spans[i], top_spans[j], self.relation_labels[int(labels[i, j])])
            for i, j in (labels >= 0).nonzero().tolist()
        ]
        return entities, relations


class RadGraphAnnotator:
    """Reports -> RadGraph annotations (the radgraph package's output format), from a local archive folder."""

    def __init__(
        self, model: DyGIE, tokenizer: PreTrainedTokenizerBase, model_type: str = "radgraph", device: str = "cpu"
    ) -> None:
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model type must be one of {MODEL_TYPES}, got {model_type!r}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_type = model_type
        self.device = device
        with_special = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(with_special)) if with_special[i : i + len(plain)] == plain)
        self._start, self._end = with_special[:at], with_special[at + len(plain) :]

    @classmethod
    def from_folder(
        cls, folder: Path, model_type: str = "radgraph", bert: str | None = None, device: str = "cpu"
    ) -> RadGraphAnnotator:
        """Build from an extracted archive (config.json, vocabulary/, weights.th); BERT files offline."""
        config = DyGIEConfig.from_archive(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        name = bert or config.model_name
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(name, local_files_only=True))
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        ner_namespace, ner_labels = read_vocabulary(folder / "vocabulary", "__ner_labels")
        relation_namespace, relation_labels = read_vocabulary(folder / "vocabulary", "__relation_labels")
        model = DyGIE(config, encoder, ner_labels, relation_labels)
        state = torch.load(folder / "weights.th", map_location="cpu", weights_only=True)
        model.load_allennlp_state(state, ner_namespace, relation_namespace)
        return cls(model, tokenizer, model_type, device)

    def _word_embeddings(self, words: Sequence[str]) -> torch.Tensor:
        pieces = [self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
        flat = [p for word in pieces for p in word]
        max_length = self.model.config.max_length
        limit = max(max_length - len(self._start) - len(self._end) if max_length else len(flat), 1)
        segments = [flat[i : i + limit] for i in range(0, max(len(flat), 1), limit)]
        hidden = []
        for n, segment in enumerate(segments):
            ids = torch.tensor([[*self._start, *segment, *self._end]], device=self.device)
            out = self.model.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            first = 0 if n == 0 else len(self._start)
            last = len(out) if n == len(segments) - 1 else len(out) - len(self._end)
            hidden.append(out[first:last])
        states = torch.cat(hidden)  # [start tokens] + every wordpiece + [end tokens]
        embeddings, position = [], len(self._start)
        for word in pieces:
            chunk = states[position : position + len(word)]
            embeddings.append(chunk.mean(dim=0) if len(word) else states.new_zeros(states.shape[-1]))
            position += len(word)
        return torch.stack(embeddings)

    @torch.inference_mode()
    def annotate(self, report: str) -> Annotation:
        """One report -> {"text", "entities"} as `radgraph.RadGraph` returns it per report."""
        words = words_of(report, self.model_type)
        if not words:
            return {"text": "", "entities": {}}
        ner, relations = self.model.predict(self._word_embeddings(words))
        spans = [(s, e) for s, e, _ in ner]
        entities: dict[str, Any] = {}
        for number, (start, end, label) in enumerate(ner, start=1):
            links = [[rel, str(spans.index(b) + 1)] for a, b, rel in relations if a == (start, end) and b in spans]
            entities[str(number)] = {
                "tokens": " ".join(words[start : end + 1]),
                "label": label,
                "start_ix": start,
                "end_ix": end,
                "relations": links,
            }
        return {"text": " ".join(words), "entities": entities}
