"""CheXbert labeller from local files: BERT + 14 linear heads on the [CLS] token (Smit et al. 2020).

The architecture is the one `f1chexbert` and CheXbert's `bert_labeler` define: a BertModel with
its pooler (bert-base-uncased shape), dropout, 13 heads of 4 classes (blank, positive, negative,
uncertain) and one of 2 (blank, positive) for "No Finding", all reading the last hidden state
of [CLS]. The checkpoint is `chexbert.pth` (a dict whose "model_state_dict" has keys prefixed
"module."). The BERT configuration and tokenizer come from `bert` (default "bert-base-uncased")
with `local_files_only`: a folder, or the Hugging Face cache. Nothing is downloaded.

Text goes in as `f1chexbert` sends it: stripped, newlines and runs of whitespace collapsed to one
space, wordpieces between [CLS] and [SEP], at most 512 tokens (or the model's position limit). Label arithmetic:
`model_backend.evaluation.chexbert_labels`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from model_backend.evaluation.chexbert_labels import CHEXPERT_CLASSES, binary_labels

CHECKPOINT = "chexbert.pth"
DEFAULT_BERT = "bert-base-uncased"
MAX_TOKENS = 512
_IGNORED_KEYS = {"bert.embeddings.position_ids"}  # a buffer older transformers saved; rebuilt on load


class CheXbertModel(nn.Module):
    """BERT + one linear head per CheXpert observation on the [CLS] hidden state."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(0.1)
        hidden = config.hidden_size
        heads = [nn.Linear(hidden, 4) for _ in CHEXPERT_CLASSES[:-1]] + [nn.Linear(hidden, 2)]
        self.linear_heads = nn.ModuleList(heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.dropout(self.bert(input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])
        return [head(cls) for head in self.linear_heads]


def load_state(model: nn.Module, checkpoint: Path) -> None:
    """Load `chexbert.pth` into `model`; every weight must be present (`ValueError` otherwise)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = saved.get("model_state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint} is not a CheXbert checkpoint (no state dict)")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    result = model.load_state_dict({k: v for k, v in state.items() if k not in _IGNORED_KEYS}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint} does not fit the CheXbert architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


class CheXbertLabeler:
    """Reports -> CheXbert head outputs -> binary CheXpert labels, in batches, on one device."""

    def __init__(
        self, model: CheXbertModel, tokenizer: PreTrainedTokenizerBase, device: str = "cpu", batch_size: int = 16
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.max_tokens = min(MAX_TOKENS, model.bert.config.max_position_embeddings)

    @classmethod
    def from_files(cls, checkpoint: Path, bert: str | Path = DEFAULT_BERT, device: str = "cpu") -> CheXbertLabeler:
        """Build from a `chexbert.pth` and a BERT folder or cached hub id (offline)."""
        config = AutoConfig.from_pretrained(str(bert), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(bert), local_files_only=True)
        model = CheXbertModel(config)
        load_state(model, checkpoint)
        return cls(model, tokenizer, device)

    def _ids(self, text: str) -> list[int]:
        text = re.sub(r"\s+", " ", text.strip().replace("\n", " ")).strip()
        pieces = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text))[: self.max_tokens - 2]
        return [self.tokenizer.cls_token_id, *pieces, self.tokenizer.sep_token_id]

    @torch.inference_mode()
    def head_classes(self, texts: Sequence[str]) -> list[list[int]]:
        """Per report, the argmax class of each of the 14 heads."""
        out: list[list[int]] = []
        for start in range(0, len(texts), self.batch_size):
            ids = [self._ids(t) for t in texts[start : start + self.batch_size]]
            width = max(len(i) for i in ids)
            pad = self.tokenizer.pad_token_id or 0
            input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
            logits = self.model(input_ids, mask)
            out.extend(torch.stack([h.argmax(dim=1) for h in logits], dim=1).tolist())
        return out

    def labels(self, texts: Sequence[str], uncertain: str = "positive") -> list[list[int]]:
        """Per report, 14 binary labels (see `chexbert_labels.binary_labels`)."""
        return [binary_labels(classes, uncertain) for classes in self.head_classes(texts)]
