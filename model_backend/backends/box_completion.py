"""Box completion: the sentences are given, the model writes only their boxes.

MAIRA-2's grounded output is, per finding, `<obj>SENTENCE</obj>` or
`<obj>SENTENCE<box><xA><yB><xC><yD></box>…</obj>` (one `<box>…</box>` per location). A
`BoxCompletion` walks that grammar over a list of sentences. Forced (never asked of the model):
`<obj>`, the sentence's tokens, and `</box>` after a box's fourth coordinate. Chosen by the model
(greedy over the allowed tokens only):

- after a sentence or a `</box>`: `<box>` (one more box) or `</obj>` (close the finding);
- inside a box, in order: an x bin, a y bin, an x bin >= the first, a y bin >= the second
  (so every box is well formed: x_min <= x_max, y_min <= y_max).

The output therefore never holds free text. A finding that reaches `max_boxes` boxes is closed
without asking the model (and recorded in `capped`). The state machine knows nothing about models:
the caller feeds `pending` tokens, scores `allowed()` and calls `choose`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model_backend.backends.base import BackendError
from model_backend.maira2.parsing import BOX_END, BOX_START, PHRASE_END, PHRASE_START

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class GroundingTokens:
    """Token ids of MAIRA-2's grounding vocabulary: `<obj>`, `</obj>`, `<box>`, `</box>`, `<x0>`…, `<y0>`…."""

    obj: int
    obj_end: int
    box: int
    box_end: int
    x_bins: tuple[int, ...]
    y_bins: tuple[int, ...]
    bin_of: dict[int, int] = field(repr=False, compare=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, num_bins: int) -> GroundingTokens:
        names = [PHRASE_START, PHRASE_END, BOX_START, BOX_END]
        names += [f"<x{i}>" for i in range(num_bins)] + [f"<y{i}>" for i in range(num_bins)]
        ids = tokenizer.convert_tokens_to_ids(names)
        missing = [n for n, i in zip(names, ids, strict=True) if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise BackendError(
                f"the model's tokenizer lacks MAIRA-2's grounding tokens ({', '.join(missing[:4])}, …); "
                "box completion needs a grounded MAIRA-2 model"
            )
        x_bins, y_bins = tuple(ids[4 : 4 + num_bins]), tuple(ids[4 + num_bins :])
        bin_of = {token: index for bins in (x_bins, y_bins) for index, token in enumerate(bins)}
        return cls(*ids[:4], x_bins=x_bins, y_bins=y_bins, bin_of=bin_of)

    def sentence_ids(self, tokenizer: PreTrainedTokenizerBase, sentence: str) -> list[int]:
        """The sentence's tokens as they follow `<obj>` in a grounded report.

        Tokenised in place (`<obj>sentence</obj>`), not alone: a Llama-style tokenizer starts a text
        with a word-boundary marker that the same words after `<obj>` do not get.
        """
        ids = tokenizer(f"{PHRASE_START}{sentence}{PHRASE_END}", add_special_tokens=False)["input_ids"]
        inner = ids[1:-1]
        if len(ids) < 3 or ids[0] != self.obj or ids[-1] != self.obj_end or set(inner) & self._markers():
            raise BackendError(
                f"cannot force the finding {sentence!r}: a sentence for box completion must be non-empty plain "
                "text without grounding tokens (<obj>, <box>, <x…>, <y…>)"
            )
        return inner

    def _markers(self) -> set[int]:
        return {self.obj, self.obj_end, self.box, self.box_end, *self.bin_of}


class BoxCompletion:
    """One row's walk through the grammar: all tokens so far (forced and chosen), the boxes per finding.

    `tokens[fed:]` are the tokens the model has not seen yet (the caller tracks `fed`); when
    `finished` is False the next model step must choose one of `allowed()`.
    """

    def __init__(self, vocab: GroundingTokens, sentences: Sequence[Sequence[int]], max_boxes: int) -> None:
        if not sentences or max_boxes < 1:
            raise ValueError("box completion needs at least one sentence and max_boxes >= 1")
        self.vocab = vocab
        self.sentences = sentences
        self.max_boxes = max_boxes
        self.tokens: list[int] = [vocab.obj, *sentences[0]]
        self.boxes: list[list[tuple[int, int, int, int]]] = [[]]  # bins (x_min, y_min, x_max, y_max) per finding
        self.capped: list[int] = []  # findings closed at max_boxes
        self.choices = 0  # tokens the model chose
        self.finished = False
        self._coords: list[int] | None = None  # bins of the open box; None outside a box

    def allowed(self) -> tuple[int, ...]:
        """The tokens the model may choose next (in a fixed order, so ties go to the first)."""
        if self.finished:
            return ()
        if self._coords is None:
            return (self.vocab.box, self.vocab.obj_end)
        bins = self.vocab.x_bins if len(self._coords) % 2 == 0 else self.vocab.y_bins
        lowest = self._coords[len(self._coords) - 2] if len(self._coords) >= 2 else 0
        return bins[lowest:]

    def choose(self, token: int) -> None:
        """Take the model's choice (one of `allowed()`) and append it plus whatever is forced after it."""
        if token not in self.allowed():
            raise ValueError(f"token {token} is not allowed here")
        self.choices += 1
        if token == self.vocab.obj_end:
            self._close_finding()
        elif token == self.vocab.box:
            self.tokens.append(token)
            self._coords = []
        else:
            self._add_coordinate(token)

    def _add_coordinate(self, token: int) -> None:
        assert self._coords is not None
        self.tokens.append(token)
        self._coords.append(self.vocab.bin_of[token])
        if len(self._coords) < 4:
            return
        self.tokens.append(self.vocab.box_end)
        x_min, y_min, x_max, y_max = self._coords
        self.boxes[-1].append((x_min, y_min, x_max, y_max))
        self._coords = None
        if len(self.boxes[-1]) >= self.max_boxes:
            self.capped.append(len(self.boxes) - 1)
            self._close_finding()

    def _close_finding(self) -> None:
        self.tokens.append(self.vocab.obj_end)
        if len(self.boxes) == len(self.sentences):
            self.finished = True
            return
        self.tokens += [self.vocab.obj, *self.sentences[len(self.boxes)]]
        self.boxes.append([])
