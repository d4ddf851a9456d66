"""In-process MAIRA-2 backend: one shared image prefix, K prompt tails decoded together.

In MAIRA-2's prompt the images come first (system text + up to three blocks of image tokens);
prompt contexts differ only in the short tail after the last image. So this backend

1. computes vision features once per distinct image (LRU keyed by image content),
2. runs the prompt prefix up to the last image token once and keeps its KV cache (LRU keyed
   by the prefix tokens and image content), and
3. decodes the K context tails as one batch against that one cache: the prefix keys/values are
   shared by all rows, never copied per row (`shared_prefix.py`), only the tails are cached per row.

A single context follows the same path (prefix + tail), so running contexts one by one or
together gives the same greedy tokens.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from PIL import Image
from transformers.cache_utils import DynamicCache

from model_backend.backends.base import BOX_COMPLETION, BackendError, PromptError, UnsupportedTaskError
from model_backend.backends.box_completion import BoxCompletion, GroundingTokens
from model_backend.backends.shared_prefix import ATTENTION_NAME, SharedPrefixState, shared_prefix
from model_backend.boxes import bins_to_box
from model_backend.maira2.modeling import Maira2ForConditionalGeneration, default_device_and_dtype
from model_backend.maira2.parsing import parse_tolerant
from model_backend.maira2.processing import ConstantImageError, Maira2Processor
from model_backend.prompt_limits import MIN_REPORT_TOKENS, SECTIONS, check_context, check_text
from model_backend.types import BackendInfo, Finding, PromptContext, Report, Study, XrayImage
from model_backend.weights_digest import weights_digest

PHRASE_CONTEXT = PromptContext(name="phrase", use_lateral=False, use_prior=False, grounded=True)


@dataclass(frozen=True)
class GenerationSettings:
    """Greedy decoding budgets per task (DESIGN.md); overridable."""

    max_new_tokens_findings: int = 300
    max_new_tokens_grounded: int = 450
    max_new_tokens_phrase: int = 150
    max_boxes_per_finding: int = 10  # box completion: a finding is closed after this many boxes

    def budget(self, context: PromptContext, task: str) -> int:
        if task == "phrase_grounding":
            return self.max_new_tokens_phrase
        return self.max_new_tokens_grounded if context.grounded else self.max_new_tokens_findings


class LRUCache:
    """A small thread-unsafe LRU map (callers hold the backend lock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Any) -> Any | None:
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return None

    def put(self, key: Any, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)


@dataclass
class _Prompt:
    """One context's prompt: token ids, its images, where the image prefix ends."""

    context: PromptContext
    task: str
    token_ids: list[int]
    images: list[XrayImage]
    split: int  # index just after the last <image> token

    @property
    def prefix_key(self) -> tuple:
        return (tuple(img.content_key for img in self.images), tuple(self.token_ids[: self.split]))


@dataclass
class _Prefix:
    """KV cache of a prompt prefix (batch 1), per layer (keys, values)."""

    length: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _TailBatch:
    """Rows decoding on one shared prefix: their tails' KV cache and mask, and each row's next position."""

    prefix: _Prefix
    mask: torch.Tensor  # (rows, tail tokens so far); 0 = padding
    next_positions: list[int]
    cache: DynamicCache = field(default_factory=DynamicCache)  # the tails only; the prefix is shared

    def keep(self, slots: list[int]) -> None:
        """Drop every row but `slots` (indices into the current rows, in order)."""
        if len(slots) == len(self.next_positions):
            return
        index = torch.tensor(slots, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_positions = [self.next_positions[s] for s in slots]


@dataclass
class _Row:
    """Decoding state of one context in a batch."""

    prompt: _Prompt
    budget: int
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    truncated: bool = False


class LocalBackend:
    """MAIRA-2 in this process, from a snapshot folder or hub id (`microsoft/maira-2` layout)."""

    def __init__(
        self,
        model_path: str,
        *,
        name: str = "local",
        is_demo: bool = False,
        device: str | None = None,
        dtype: str | None = None,
        settings: GenerationSettings | None = None,
        cache_size: int = 8,
    ) -> None:
        auto_device, auto_dtype = default_device_and_dtype()
        self.device = torch.device(device) if device else auto_device
        self.dtype = getattr(torch, dtype) if dtype else auto_dtype
        _check_local_snapshot(model_path)
        try:
            self.processor = Maira2Processor.from_pretrained(model_path)
            model = Maira2ForConditionalGeneration.from_pretrained(model_path, dtype=self.dtype)
        except (OSError, ValueError) as err:
            raise BackendError(
                f"cannot load a MAIRA-2 snapshot from {model_path!r}: {err}. For microsoft/maira-2, request access "
                "on the Hugging Face hub, log in, download it, then pass the folder or hub id with --model."
            ) from err
        self.model = model.to(self.device).eval()
        # SDPA everywhere, except inside `shared_prefix(...)` blocks where rows share the prefix cache.
        self.model.language_model.config._attn_implementation = ATTENTION_NAME
        self.settings = settings or GenerationSettings()
        self.info = BackendInfo(
            name=name, model_id=model_path, device=str(self.device), dtype=str(self.dtype).removeprefix("torch."),
            is_demo=is_demo, weights_hash=_weights_hash(model_path),
        )  # fmt: skip
        self.eos_id = self.processor.tokenizer.eos_token_id
        self.pad_id = self.processor.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self._lock = threading.RLock()
        self._features = LRUCache(cache_size * 3)
        self._prefixes = LRUCache(cache_size)

    # ------------------------------------------------------------------ public API
    def generate(self, study: Study, contexts: Sequence[PromptContext]) -> list[Report]:
        """One report per context; contexts sharing images share vision features and the prefix."""
        if not contexts:
            return []
        prompts = [self._reporting_prompt(study, c) for c in contexts]
        return self._run(study, prompts)

    def stream(self, study: Study, context: PromptContext) -> Iterator[Report]:
        """Partial reports whenever a new finding appears, then the final report."""
        yield from self._run_streaming(study, [self._reporting_prompt(study, context)])

    def ground_phrase(self, study: Study, phrase: str) -> Report:
        phrase = phrase.strip()
        if not phrase:
            raise BackendError("type a finding to ground, e.g. 'right pleural effusion'")
        prompt = self._phrase_prompt(study, phrase)
        return self._run(study, [prompt])[0]

    def complete_boxes(self, study: Study, findings: Sequence[str], contexts: Sequence[PromptContext]) -> list[Report]:
        """Box completion under each (grounded) context: `findings` are forced in order on the grounded
        reporting prompt and the model only chooses their boxes (`box_completion.py`). Contexts that
        share the study's images share the prefix and are decoded together."""
        ungrounded = [c.name for c in contexts if not c.grounded]
        if ungrounded:
            names = ", ".join(ungrounded)
            raise UnsupportedTaskError(f"box completion uses the grounded prompt; context(s) {names} have grounded off")
        if isinstance(findings, str):
            raise BackendError("box completion takes a list of sentences, not one string")
        sentences = [s.strip() for s in findings]
        if not sentences:
            raise BackendError("no findings to complete boxes for (the study has no reference findings)")
        vocab = self._grounding_tokens
        forced = [vocab.sentence_ids(self.processor.tokenizer, s) for s in sentences]
        prompts = [replace(self._reporting_prompt(study, c), task=BOX_COMPLETION) for c in contexts]
        reports: list[Report | None] = [None] * len(prompts)
        for group in self._groups(prompts):
            start = time.perf_counter()
            rows = [BoxCompletion(vocab, forced, self.settings.max_boxes_per_finding) for _ in group]
            self._complete([prompts[i] for i in group], rows)
            elapsed = time.perf_counter() - start
            for index, row in zip(group, rows, strict=True):
                reports[index] = self._box_report(study, prompts[index], sentences, row, elapsed)
        return [r for r in reports if r is not None]

    def prefetch(self, study: Study) -> None:
        """Warm the caches for `study` before anyone asks: vision features of all its images and
        the prompt prefix with all of them (what the default context uses). The prefix ends at the
        last image, so every context with the same images then starts warm."""
        prompt = self._reporting_prompt(study, PromptContext(name="prefetch"))
        with self._lock:
            self._prefix(prompt)

    @cached_property
    def _grounding_tokens(self) -> GroundingTokens:
        return GroundingTokens.from_tokenizer(self.processor.tokenizer, self.processor.num_box_coord_bins)

    def cache_stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "feature_hits": self._features.hits,
                "feature_misses": self._features.misses,
                "prefix_hits": self._prefixes.hits,
                "prefix_misses": self._prefixes.misses,
            }

    # ------------------------------------------------------------------ prompts
    def _reporting_prompt(self, study: Study, context: PromptContext) -> _Prompt:
        check_context(context)
        lateral = study.lateral if context.use_lateral else None
        prior = study.prior_frontal if context.use_prior else None
        messages = self.processor._construct_chat_messages_reporting(
            has_prior=prior is not None,
            has_lateral=lateral is not None,
            indication=context.indication,
            technique=context.technique,
            comparison=context.comparison,
            prior_report=context.prior_report,
            get_grounding=context.grounded,
        )
        images = [img for img in (study.frontal, lateral, prior) if img is not None]
        return self._tokenise(context, "reporting", self.processor._render(messages, None), images)

    def _phrase_prompt(self, study: Study, phrase: str) -> _Prompt:
        check_text("phrase", phrase, PHRASE_CONTEXT.name)
        messages = self.processor._construct_chat_messages_phrase_grounding(phrase)
        text = self.processor._render(messages, None)
        context = replace(PHRASE_CONTEXT, indication=phrase)
        return self._tokenise(context, "phrase_grounding", text, [study.frontal])

    def _tokenise(self, context: PromptContext, task: str, text: str, images: list[XrayImage]) -> _Prompt:
        ids = self.processor.tokenizer(self.processor.expand_image_tokens(text))["input_ids"]
        if len(ids) + MIN_REPORT_TOKENS > self.max_positions:
            raise self._too_long(context, task, len(ids), len(images))
        image_positions = [i for i, t in enumerate(ids) if t == self.processor.image_token_id]
        return _Prompt(context, task, ids, images, image_positions[-1] + 1)

    @property
    def max_positions(self) -> int:
        """Positions the language model was built for (its `max_position_embeddings`)."""
        return int(self.model.config.text_config.max_position_embeddings)

    def _too_long(self, context: PromptContext, task: str, n_tokens: int, n_images: int) -> PromptError:
        """The error for a prompt of `n_tokens` that leaves no room for the report, naming its longest section."""
        fields = {"phrase": context.indication} if task == "phrase_grounding" else {
            name: getattr(context, name) for name in SECTIONS
        }  # fmt: skip
        counts = {
            name: len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
            for name, text in fields.items()
            if text
        }
        longest = max(counts, key=counts.__getitem__, default=None)
        detail = (
            f"; the longest section, {longest.replace('_', ' ')}, is {len(fields[longest]):,} characters "
            f"({counts[longest]:,} tokens): shorten it"
            if longest
            else ""
        )
        return PromptError(
            f"the prompt is {n_tokens:,} tokens ({n_images} image(s) included), but the model has "
            f"{self.max_positions:,} positions and the report needs at least {MIN_REPORT_TOKENS}{detail}",
            field=longest,
            context_name=context.name,
        )

    # ------------------------------------------------------------------ model steps
    def _image_features(self, images: list[XrayImage]) -> torch.Tensor:
        """(n_images * tokens_per_image, hidden), computing only images not in the cache."""
        missing = [img for img in dict.fromkeys(images) if self._features.get(img.content_key) is None]
        if missing:
            try:
                pil = [self.processor._normalize_image(Image.fromarray(img.display)) for img in missing]
            except ConstantImageError as err:
                raise BackendError(str(err)) from err
            pixel_values = self.processor.preprocess_images(pil)
            with torch.inference_mode():
                features = self.model.get_image_features(pixel_values)
            for img, feats in zip(missing, features, strict=True):
                self._features.put(img.content_key, feats)
        return torch.cat([self._features._data[img.content_key] for img in images])

    def _prefix(self, prompt: _Prompt) -> _Prefix:
        cached = self._prefixes.get(prompt.prefix_key)
        if cached is not None:
            return cached
        features = self._image_features(prompt.images)
        ids = torch.tensor([prompt.token_ids[: prompt.split]], device=self.device)
        with torch.inference_mode():
            embeds = self.model.embed_prompt(ids, features.unsqueeze(0))
            cache = DynamicCache()
            self.model.language_model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        prefix = _Prefix(prompt.split, [(layer.keys, layer.values) for layer in cache.layers])
        self._prefixes.put(prompt.prefix_key, prefix)
        return prefix

    def _step(self, batch: _TailBatch, chunks: list[list[int]]) -> torch.Tensor:
        """Feed each row its next tokens (left-padded to one width) after its cached tail; the last logits."""
        width = max(len(chunk) for chunk in chunks)
        pads = [width - len(chunk) for chunk in chunks]
        starts = batch.next_positions
        ids = [[self.pad_id] * pad + chunk for pad, chunk in zip(pads, chunks, strict=True)]
        step_mask = [[0] * pad + [1] * len(chunk) for pad, chunk in zip(pads, chunks, strict=True)]
        positions = [
            [start] * pad + list(range(start, start + len(chunk)))
            for pad, chunk, start in zip(pads, chunks, starts, strict=True)
        ]
        batch.mask = torch.cat([batch.mask, torch.tensor(step_mask, device=self.device)], dim=1)
        batch.next_positions = [start + len(chunk) for start, chunk in zip(starts, chunks, strict=True)]
        state = SharedPrefixState(batch.prefix.layers, batch.mask)
        with self._lock, torch.inference_mode(), shared_prefix(state):
            out = self.model.language_model(
                input_ids=torch.tensor(ids, device=self.device), attention_mask=batch.mask,
                position_ids=torch.tensor(positions, device=self.device), past_key_values=batch.cache,
                use_cache=True, logits_to_keep=1,
            )  # fmt: skip
        return out.logits[:, -1]

    def _tail_batch(self, prompts: list[_Prompt]) -> _TailBatch:
        """Empty tails for `prompts` (which share one prefix) on that prefix, computed or cached."""
        with self._lock:
            prefix = self._prefix(prompts[0])
        mask = torch.zeros((len(prompts), 0), dtype=torch.long, device=self.device)
        return _TailBatch(prefix, mask, [prefix.length] * len(prompts))

    def _decode(self, prompts: list[_Prompt]) -> Iterator[list[_Row]]:
        """Greedy decoding of prompts sharing one prefix; yields the rows after every step (never past the
        model's last position)."""
        batch = self._tail_batch(prompts)
        rows = [_Row(p, min(self.settings.budget(p.context, p.task), self.max_positions - len(p.token_ids)))
                for p in prompts]  # fmt: skip
        chunks = [p.token_ids[p.split :] for p in prompts]
        active = list(range(len(rows)))
        while active:
            next_tokens = self._step(batch, chunks).argmax(-1).tolist()
            keep = []
            for slot, (row_index, token) in enumerate(zip(active, next_tokens, strict=True)):
                row = rows[row_index]
                if token == self.eos_id:
                    row.finished = True
                    continue
                row.generated.append(token)
                if len(row.generated) >= row.budget:
                    row.finished = row.truncated = True
                else:
                    keep.append(slot)
            yield rows
            if not keep:
                break
            batch.keep(keep)
            active = [active[s] for s in keep]
            chunks = [[rows[r].generated[-1]] for r in active]

    def _complete(self, prompts: list[_Prompt], rows: list[BoxCompletion]) -> None:
        """Constrained greedy decoding of prompts sharing one prefix: each step feeds every unfinished row
        the tokens it has not fed yet (forced ones included) and lets it choose among its allowed tokens."""
        batch = self._tail_batch(prompts)
        chunks = [p.token_ids[p.split :] + row.tokens for p, row in zip(prompts, rows, strict=True)]
        fed = [len(row.tokens) for row in rows]
        active = list(range(len(rows)))
        while active:
            logits = self._step(batch, chunks)
            for slot, row_index in enumerate(active):
                allowed = rows[row_index].allowed()
                rows[row_index].choose(allowed[int(logits[slot, list(allowed)].argmax())])
            keep = [slot for slot, row_index in enumerate(active) if not rows[row_index].finished]
            if not keep:
                break
            batch.keep(keep)
            active = [active[s] for s in keep]
            chunks = [rows[r].tokens[fed[r] :] for r in active]
            fed = [len(row.tokens) for row in rows]

    # ------------------------------------------------------------------ orchestration
    def _groups(self, prompts: list[_Prompt]) -> list[list[int]]:
        groups: dict[tuple, list[int]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault(prompt.prefix_key, []).append(index)
        return list(groups.values())

    def _run(self, study: Study, prompts: list[_Prompt]) -> list[Report]:
        reports: list[Report | None] = [None] * len(prompts)
        for group in self._groups(prompts):
            start = time.perf_counter()
            *_, rows = self._decode([prompts[i] for i in group])
            elapsed = time.perf_counter() - start
            for index, row in zip(group, rows, strict=True):
                reports[index] = self._report(study, row, elapsed)
        return [r for r in reports if r is not None]

    def _run_streaming(self, study: Study, prompts: list[_Prompt]) -> Iterator[Report]:
        start = time.perf_counter()
        seen = -1
        rows: list[_Row] = []
        for rows in self._decode(prompts):
            row = rows[0]
            if row.finished:
                break
            partial = self._report(study, row, time.perf_counter() - start, partial=True)
            closed = sum(1 for _ in partial.findings) - (0 if partial.complete else 1)
            if closed > seen:
                seen = closed
                yield partial
        yield self._report(study, rows[0], time.perf_counter() - start)

    def _box_report(
        self, study: Study, prompt: _Prompt, sentences: list[str], row: BoxCompletion, elapsed: float
    ) -> Report:
        text = self.processor.decode(row.tokens, skip_special_tokens=True)
        warnings = [f"finding {i + 1}: closed after {row.max_boxes} box(es), the limit per finding" for i in row.capped]
        decoded = [f.text for f in parse_tolerant(text).findings]
        warnings += [
            f"finding {i + 1} does not survive tokenisation verbatim: the model read {seen!r}"
            for i, (sentence, seen) in enumerate(zip(sentences, decoded, strict=True))
            if seen != sentence
        ]
        return Report(
            study_id=study.study_id,
            context=prompt.context,
            findings=_box_findings(sentences, row),
            image_width=study.frontal.width,
            image_height=study.frontal.height,
            raw_text=text,
            complete=not row.capped,
            backend=self.info,
            images_key=study.images_key(),
            warnings=tuple(warnings),
            timings=(("seconds", round(elapsed, 4)), ("new_tokens", float(len(row.tokens))),
                     ("model_choices", float(row.choices))),
            task=prompt.task,
        )  # fmt: skip

    def _report(self, study: Study, row: _Row, elapsed: float, partial: bool = False) -> Report:
        text = self.processor.decode(row.generated, skip_special_tokens=True)
        parsed = parse_tolerant(text, truncated=row.truncated)
        return Report(
            study_id=study.study_id,
            context=row.prompt.context,
            findings=parsed.findings,
            image_width=study.frontal.width,
            image_height=study.frontal.height,
            raw_text=text,
            complete=parsed.complete and not partial,
            backend=self.info,
            images_key=study.images_key(),
            warnings=parsed.warnings,
            timings=(("seconds", round(elapsed, 4)), ("new_tokens", float(len(row.generated)))),
            task=row.prompt.task,
        )


def _weights_hash(model_path: str) -> str:
    """`weights_digest` of a local folder or of the hub cache's copy of a hub id ("" if neither is found)."""
    local = Path(model_path).expanduser()
    if not local.is_dir():
        try:
            local = Path(snapshot_download(model_path, local_files_only=True))
        except Exception:  # not in the cache in a form we can find: the header shows no hash
            return ""
    return weights_digest(local)


def _box_findings(sentences: list[str], row: BoxCompletion) -> tuple[Finding, ...]:
    return tuple(
        Finding(sentence, tuple(bins_to_box(b) for b in boxes) or None)
        for sentence, boxes in zip(sentences, row.boxes, strict=True)
    )


def _check_local_snapshot(model_path: str) -> None:
    """Clear errors for a folder that is not a snapshot, before transformers reads it as a hub id."""
    local = Path(model_path).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        raise BackendError(f"{model_path!r} is a folder but not a MAIRA-2 snapshot: it has no config.json")
    if model_path.startswith(("/", ".", "~")) and not local.exists():
        raise BackendError(f"the model folder {model_path!r} does not exist")
